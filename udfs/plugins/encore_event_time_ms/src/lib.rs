//! Arroyo UDF `encore_event_time_ms(ts TEXT) -> BIGINT NULL`: the event time in ms since the
//! Unix epoch of a SPEC §1 ISO 8601 timestamp (`YYYY-MM-DDTHH:MM:SS[.f][Z|±hh:mm]`, fraction
//! truncated to the millisecond, no offset = UTC), read by [`encore_core::parse_iso_timestamp`]
//! exactly as the dataflow reads it; `NULL` when the text is not such a timestamp.
// `#[udf]` exports `#[no_mangle] extern "C-unwind" fn __run`, which the lint counts as unsafe.
#![allow(unsafe_code)]
// The macro's generated `__run` carries no doc comment; the hand-written items all do.
#![allow(missing_docs)]

use arroyo_udf_plugin::udf;
use encore_core::parse_iso_timestamp;

/// Milliseconds since the epoch, or `NULL` when `ts` is not a SPEC §1 ISO 8601 timestamp.
#[udf]
pub fn encore_event_time_ms(ts: &str) -> Option<i64> {
    parse_iso_timestamp(ts).ok()
}
