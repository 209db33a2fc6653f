//! Test and benchmark support (public so that integration tests and benches can use it; not
//! part of the pipeline, and only with the `testing` feature):
//!
//! * [`oracle`]: SPEC §2 as a plain sequential computation, what the dataflow is checked against;
//! * `lines`: a seeded generator of adversarial input lines ([`generate`], [`random_lines`]);
//! * `check`: lines into the tables the oracle expects, the dataflow run and compared with them
//!   after every epoch ([`check_every_epoch`]), and the assertions the tests share.
//!
//! The generator aims at the corners of SPEC §1–§2 rather than at realism:
//!
//! * **small id spaces** (5–40 users, 5–60 tracks, skewed towards low track ids) so that
//!   histories overflow small caps `K` and co-counts reach `C`; the last user and the last
//!   track of each space have id `2^63 - 1`, the largest valid id;
//! * **time**: instants drawn from a short window (10–300 s), most of them on whole seconds, so
//!   `last(u,t)` ties are common; lines arrive in random time order; 2 % of instants lie
//!   before 1970 (negative milliseconds, only expressible in the ISO form);
//! * **every timestamp form** of SPEC §1: integer milliseconds; ISO 8601 without fraction or
//!   with 1–9 fraction digits (digits beyond the millisecond are random, since they are
//!   truncated), with `Z`, with a `±hh:mm` offset (the wall-clock time shifted accordingly),
//!   or without offset. The same instant is written in different forms across lines, so ties
//!   between differently written timestamps occur;
//! * **events**: repeats of earlier (user, track) pairs, skips, likes, plays shorter and
//!   longer than 30 000 ms (and exactly at the boundary), `ms_played` absent or `null`,
//!   unknown extra fields, shuffled field order;
//! * **invalid lines** (a few percent, see [`InvalidKind`]): a random valid line broken in one
//!   of the ways SPEC §1 lists, from encore-core's one list of them (`encore_core::invalid`,
//!   which `encore-gen --invalid-rate` draws from too): bad or truncated JSON, non-UTF-8
//!   bytes, non-objects, duplicate fields, missing fields, wrong types, out-of-range ids,
//!   unparseable timestamps, unknown `event_type`.
//!
//! Every line comes with its [`Intent`]: the event it must parse to, or the kind of
//! invalidity it carries. The module's tests check the parser against those intents, so the
//! oracle tests rest on a parser that has itself been checked against an independent encoder.
//!
//! ```
//! use encore_dataflow::{tables::Params, testing};
//!
//! let lines = testing::random_lines(7, 200);
//! let (events, errors) = testing::parse_lines(&lines);
//! assert_eq!(events.len() + errors.len(), 200);
//! let per_epoch = testing::expected_after_each_epoch(&lines, &Params::default(), 64);
//! assert_eq!(per_epoch.len(), 4); // 64 + 64 + 64 + 8 lines
//! ```

pub mod oracle;

mod check;
mod lines;

pub use check::{
    assert_one_line_error, assert_success, assert_tables_eq, check_every_epoch, check_lines_every_epoch, check_lines_every_epoch_with,
    expected_after_each_epoch, parse_lines, run_snapshots, run_snapshots_with, Snapshots,
};
pub use lines::{dense_lines, generate, random_lines, write_lines, GeneratedLine, Intent, InvalidKind, LineMix, TimestampForm, Zone};
