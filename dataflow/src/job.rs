//! The two jobs `encore-flow` runs, each a source, the same dataflow ([`crate::pipeline`]) and
//! a sink, on the workers of one process:
//!
//! * [`file`](mod@file): `--input FILE` to a sink that receives every closed epoch (`--output-dir`);
//! * [`kafka`]: `--brokers --topic` to `--postgres`, exactly once: the committer, the
//!   workers and the watermark poller, stopped through one [`crate::shutdown::Shutdown`].

pub mod file;
pub mod kafka;
