//! Arroyo UDF `encore_cosine(co BIGINT, n_i BIGINT, n_j BIGINT, precision BIGINT, count_bits
//! BIGINT) -> BIGINT NULL`: the SPEC §2 step 4 similarity in units of 10^-precision over the
//! counts rounded down to `count_bits` significant bits (0: exact counts; encore-flow's default
//! is 5), computed by [`encore_core::rounded_cosine_units`], the dataflow's own function, so
//! both agree to the last digit. Pass the exact counts: the UDF rounds them.
//!
//! `NULL` when an argument is out of range: a negative argument, a zero count, a precision
//! above 18, or a result beyond `BIGINT` (only when `co` exceeds the counts). A `count_bits`
//! above 64 means what 64 means (no rounding of any `BIGINT`).
// `#[udf]` exports `#[no_mangle] extern "C-unwind" fn __run`, which the lint counts as unsafe.
#![allow(unsafe_code)]
// The macro's generated `__run` carries no doc comment; the hand-written items all do.
#![allow(missing_docs)]

use arroyo_udf_plugin::udf;
use encore_core::rounded_cosine_units;

/// `floor((q(co)·10^precision) / sqrt(q(n_i)·q(n_j)) + 0.5)` with `q` rounding to `count_bits`
/// significant bits, or `NULL` when out of range.
#[udf]
pub fn encore_cosine(co: i64, n_i: i64, n_j: i64, precision: i64, count_bits: i64) -> Option<i64> {
    let count_bits = u32::try_from(count_bits).ok()?.min(encore_core::MAX_COUNT_BITS);
    rounded_cosine_units(
        u64::try_from(co).ok()?,
        u64::try_from(n_i).ok()?,
        u64::try_from(n_j).ok()?,
        u32::try_from(precision).ok()?,
        count_bits,
    )
}
