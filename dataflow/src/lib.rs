//! encore's incremental engine: SPEC §2 (co-listening counts, cosine similarity, per-track
//! neighbours, per-user recommendations, track statistics) maintained exactly by timely and
//! differential dataflow, for any number of workers and processes. SPEC is the contract in
//! the repository's `docs/contract.md`.
//!
//! ```text
//! source   Kafka topic (source::kafka)       JSON-lines file (source::file)
//!                    └──────────────┬──────────────┘
//!                                   ▼  parse (encore_core); invalid messages → dead letters
//! engine   history H(u) ─► similarity s(i,j) ─► neighbours N(i) ─► recommend R(u);
//!          track statistics                          (engine, installed by pipeline)
//!                                   ▼  row changes of each closed epoch, to worker 0 (sink)
//! sink     Postgres: the closed epochs in order,   or    CSV files at exit (sink::csv)
//!          with their offsets (sink::committer, sink::postgres)
//!                                   ▲
//! job      job::kafka, job::file: the threads of one process, how they start and stop
//! ```
//!
//! **The guarantee: exactly once.** With Kafka in and Postgres out, after any crash and
//! restart every table again equals its SPEC §3 definition over exactly the messages in the
//! topic: nothing lost, nothing counted twice. The protocol, and how it can fail, is stated
//! once, in [`sink::postgres`] ("Exactly once"). Whatever the input, the tables are a function
//! of the set of listens alone: arrival order, partitioning, workers and processes do not
//! change them.
//!
//! * [`source`]: [`source::kafka`] consumes the topic (after rebuilding the state of the
//!   committed offsets), [`source::file`] reads JSON lines (`encore-flow --input`);
//! * [`pipeline`] installs the same dataflow for both: inputs → [`engine`] → sink;
//! * [`engine`] builds the dataflow (its module docs hold the operator diagram);
//! * [`sink`] gathers the row changes of every closed epoch to one sink: [`sink::postgres`]
//!   (through the committer thread) or [`sink::csv`];
//! * [`job`]: [`job::kafka`] runs the Kafka job (the committer thread, the workers, the
//!   watermark poller, stopped through one [`shutdown::Shutdown`]), [`job::file`] the file job;
//! * [`tables`] says what the outputs mean as plain Rust values;
//! * [`metrics`] observes a running Kafka job;
//! * `testing` (feature `testing`): the sequential SPEC §2 (`testing::oracle`) and test helpers.
//!
//! ```no_run
//! use std::sync::Arc;
//! use encore_dataflow::job::file::{self, FileJob};
//! use encore_dataflow::sink::csv::MemorySink;
//! use encore_dataflow::source::file::Lines;
//!
//! let lines = Arc::new(vec![br#"{"user_id":1,"track_id":2,"event_timestamp":0,"event_type":"like"}"#.to_vec()]);
//! let job = FileJob {
//!     lines: Lines::Memory(lines),
//!     params: Default::default(),
//!     emit_co_listens: false,
//!     emit_events: false,
//!     epoch_events: 1000,
//!     refresh: Default::default(),
//! };
//! file::run(timely::Config::process(2), job, MemorySink::default).unwrap();
//! ```
#![warn(missing_docs)]

pub mod engine;
pub mod job;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod tables;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
