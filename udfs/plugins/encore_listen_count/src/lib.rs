//! Arroyo UDF `encore_listen_count(event_type TEXT, ms_played BIGINT NULL) -> BIGINT`:
//! 1 when the event is a listen by the SPEC §1 rule, else 0, so that `SUM(...)` gives a track's
//! plays. The rule itself is [`encore_core::is_listen`], the same code the dataflow runs.
//!
//! It returns `BIGINT` rather than `BOOLEAN` because arroyo-udf-plugin 0.2's macro cannot build
//! a boolean result column. An unknown `event_type` or a negative `ms_played` makes the event
//! invalid, and an invalid event is not a listen: 0. A `NULL` `event_type` gives `NULL` (the
//! plugin macro's rule for non-nullable arguments).
// `#[udf]` exports `#[no_mangle] extern "C-unwind" fn __run`, which the lint counts as unsafe.
#![allow(unsafe_code)]
// The macro's generated `__run` carries no doc comment; the hand-written items all do.
#![allow(missing_docs)]

use arroyo_udf_plugin::udf;
use encore_core::{is_listen, EventType};

/// 1 for a listen (`"like"`, or `"streaming"` with `ms_played` NULL or ≥ 30 000), else 0.
#[udf]
pub fn encore_listen_count(event_type: &str, ms_played: Option<i64>) -> i64 {
    let Some(event_type) = EventType::from_name(event_type) else {
        return 0;
    };
    let ms_played = match ms_played.map(u64::try_from) {
        None => None,
        Some(Ok(ms)) => Some(ms),
        Some(Err(_)) => return 0,
    };
    i64::from(is_listen(event_type, ms_played))
}
