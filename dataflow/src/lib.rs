//! encore's incremental engine: SPEC §2 (co-listening counts, cosine similarity, per-track
//! neighbours, per-user recommendations, track statistics) maintained exactly by timely and
//! differential dataflow, for any number of workers and processes.
//!
//! * [`engine`] builds the dataflow (its module docs hold the operator diagram);
//! * [`output`] gathers the row changes of every closed epoch to one sink;
//! * [`batch`] runs it over JSON lines (`encore-flow --input`), [`csv`] writes the tables;
//! * [`tables`] says what the outputs mean as plain Rust values;
//! * [`stream`] runs it from Kafka into [`postgres`], observed by [`metrics`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use encore_dataflow::batch::{self, BatchJob, Lines};
//! use encore_dataflow::csv::MemorySink;
//!
//! let lines = Arc::new(vec![br#"{"user_id":1,"track_id":2,"event_timestamp":0,"event_type":"like"}"#.to_vec()]);
//! let job = BatchJob { lines: Lines::Memory(lines), params: Default::default(), emit_co_listens: false, emit_events: false, epoch_events: 1000 };
//! batch::run(timely::Config::process(2), job, MemorySink::default).unwrap();
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod csv;
pub mod engine;
pub mod job;
pub mod metrics;
pub mod oracle;
pub mod output;
pub mod postgres;
pub mod stream;
pub mod tables;
pub mod testing;
