//! Where listens come from: reading only. A source feeds its worker's share of the messages
//! into the [`crate::pipeline::Inputs`] of that worker, closes epochs in order and never
//! blocks its worker, so that the dataflow keeps running between messages; the jobs
//! ([`crate::job`]) start the workers and the sinks.
//!
//! * [`kafka`]: a worker's consumer (partition `p` to worker `p mod W`, epochs of
//!   `--epoch-ms` or `--epoch-events`), after the durable state is loaded or the topic
//!   replayed;
//! * [`file`](mod@file): JSON lines (`--input`), line `i` to worker `i mod W`, epoch `i / epoch_events`.

pub mod file;
pub mod kafka;
