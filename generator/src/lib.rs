//! `encore-gen`'s library: a seeded music catalog and a listening-event stream with real
//! collaborative structure, for feeding and testing encore.
//!
//! * [`catalog`]: users, artists, albums and tracks as a pure function of (seed, sizes);
//!   [`pg`] writes them to Postgres with binary COPY.
//! * [`stream`]: the listening simulation, writing SPEC §1 JSON into a reused buffer, with
//!   optional malformed messages for dead-letter tests.
//! * [`run`]: the send loop (pacing with [`pace`], a JSON-lines or [`kafka`] sink, totals),
//!   shared by `encore-gen stream` and the throughput bench.
//!
//! The same seed gives the same catalog and the same bytes, on any machine, at any rate, to
//! a file or to Kafka:
//!
//! ```
//! use encore_generator::{catalog::{Catalog, CatalogSizes}, stream::EventStream};
//! let sizes = CatalogSizes::new(1_000, 100, None, 2_000).unwrap();
//! let catalog = Catalog::generate(42, sizes);
//! let mut stream = EventStream::new(&catalog, 0.0);
//! let mut payload = Vec::new();
//! stream.next_message(&mut payload);
//! assert!(payload.starts_with(br#"{"user_id":"#));
//! ```

pub mod catalog;
pub mod kafka;
pub mod pace;
pub mod pg;
pub mod run;
mod sample;
pub mod stream;
pub mod taste;
pub mod timestamp;
