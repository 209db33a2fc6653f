//! Where listens come from. A source feeds its worker's share of the messages into the
//! [`crate::pipeline::Inputs`] of that worker, closes epochs in order and never blocks its
//! worker, so that the dataflow keeps running between messages.
//!
//! * [`kafka`]: the Kafka job's consumers (partition `p` to worker `p mod W`, epochs of
//!   `--epoch-ms` or `--epoch-events`), the durable state loaded or the topic replayed at start;
//! * [`file`](mod@file): JSON lines (`--input`), line `i` to worker `i mod W`, epoch `i / epoch_events`.

pub mod file;
pub mod kafka;
