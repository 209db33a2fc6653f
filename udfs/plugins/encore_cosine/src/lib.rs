//! Arroyo UDF `encore_cosine(co BIGINT, n_i BIGINT, n_j BIGINT, precision BIGINT) -> BIGINT NULL`:
//! the SPEC §2 step 4 similarity in units of 10^-precision, computed by
//! [`encore_udfs::cosine_units`], the dataflow's own function, so both agree to the last digit.
//!
//! `NULL` when an argument is out of range: a negative argument, a zero count, a precision
//! above 18, or a result beyond `BIGINT` (only when `co` exceeds the counts).
// `#[udf]` exports `#[no_mangle] extern "C-unwind" fn __run`, which the lint counts as unsafe.
#![allow(unsafe_code)]
// The macro's generated `__run` carries no doc comment; the hand-written items all do.
#![allow(missing_docs)]

use arroyo_udf_plugin::udf;
use encore_udfs::cosine_units;

/// `floor((co·10^precision) / sqrt(n_i·n_j) + 0.5)`, or `NULL` when out of range.
#[udf]
pub fn encore_cosine(co: i64, n_i: i64, n_j: i64, precision: i64) -> Option<i64> {
    cosine_units(
        u64::try_from(co).ok()?,
        u64::try_from(n_i).ok()?,
        u64::try_from(n_j).ok()?,
        u32::try_from(precision).ok()?,
    )
}
