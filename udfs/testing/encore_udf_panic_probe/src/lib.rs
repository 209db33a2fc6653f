//! **Test fixture, not a UDF to register.** `encore_udf_panic_probe(value BIGINT) -> BIGINT`
//! returns its argument and panics on a negative one.
//!
//! encore's real UDFs never panic on any input, so none of them can show what happens when a
//! UDF does. This crate is built with the same `#[udf]` macro and lets the tests check that the
//! plugin catches the panic and returns `RunResult::Err` to the host instead of aborting the
//! worker process.
// `#[udf]` exports `#[no_mangle] extern "C-unwind" fn __run`, which the lint counts as unsafe.
#![allow(unsafe_code)]
// The macro's generated `__run` carries no doc comment; the hand-written items all do.
#![allow(missing_docs)]

use arroyo_udf_plugin::udf;

/// Returns `value`; panics when it is negative (deliberately: see the crate docs).
#[udf]
pub fn encore_udf_panic_probe(value: i64) -> i64 {
    assert!(value >= 0, "encore_udf_panic_probe: negative input {value} (deliberate test panic)");
    value
}
