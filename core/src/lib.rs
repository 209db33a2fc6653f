//! encore's per-record logic, shared by the dataflow, the generator and the Arroyo UDFs: the
//! SPEC §1 event model and its strict parser, the listen rule, and the SPEC §2 step 4 cosine
//! score. Keeping them in one dependency-light crate is what makes every consumer agree to the
//! last digit. With the `invalid` feature, [`invalid`] writes the messages SPEC §1 calls
//! invalid, one kind per rule, for the generator and the tests.
//!
//! ```
//! use encore_core::{cosine_units, parse_event, EventType};
//!
//! let event = parse_event(
//!     br#"{"user_id":7,"track_id":42,"event_timestamp":"2024-05-01T12:00:00.123+02:00",
//!          "event_type":"streaming","ms_played":31000,"device":"mobile"}"#,
//! )?;
//! assert_eq!(event.event_type, EventType::Streaming);
//! assert_eq!(event.event_time_ms, 1_714_557_600_123);
//! assert!(event.is_listen());
//! assert_eq!(event.to_json(), r#"{"user_id":7,"track_id":42,"event_timestamp":"2024-05-01T10:00:00.123Z","event_type":"streaming","ms_played":31000}"#);
//!
//! // A repeated field makes the message invalid; the reason is one line naming the field.
//! let error = parse_event(br#"{"user_id":7,"user_id":8}"#).unwrap_err();
//! assert_eq!(error.to_string(), "field `user_id` occurs more than once");
//!
//! assert_eq!(cosine_units(3, 4, 9, 4), Some(5_000));
//! # Ok::<(), encore_core::EventError>(())
//! ```
#![warn(missing_docs)]

mod event;
#[cfg(feature = "invalid")]
pub mod invalid;
mod score;
mod timestamp;

pub use event::{is_listen, parse_event, Event, EventError, EventType, LISTEN_MIN_MS_PLAYED, MAX_ID};
pub use score::{cosine_units, round_count, rounded_cosine_units, MAX_COUNT_BITS, MAX_PRECISION};
pub use timestamp::{civil_from_days, format_iso_timestamp, parse_iso_timestamp, TimestampError};
