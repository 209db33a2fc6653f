//! Arroyo UDF `encore_event_error(payload TEXT) -> TEXT NULL`: `NULL` for a valid SPEC §1
//! message, else the one-line reason the dataflow writes to `dead_letters.error`, from the same
//! parser ([`encore_core::parse_event`]). Use it to split a raw topic into events and dead
//! letters in Arroyo SQL (`WHERE encore_event_error(value) IS NULL`).
//!
//! A `TEXT` payload is UTF-8 by construction, so the parser's "not valid UTF-8" reason cannot
//! occur here; Arroyo's raw-string format already fails on such messages.
// `#[udf]` exports `#[no_mangle] extern "C-unwind" fn __run`, which the lint counts as unsafe.
#![allow(unsafe_code)]
// The macro's generated `__run` carries no doc comment; the hand-written items all do.
#![allow(missing_docs)]

use arroyo_udf_plugin::udf;
use encore_core::parse_event;

/// `NULL` when `payload` is a valid SPEC §1 event, else why it is not.
#[udf]
pub fn encore_event_error(payload: &str) -> Option<String> {
    parse_event(payload.as_bytes()).err().map(|error| error.to_string())
}
