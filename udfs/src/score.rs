//! SPEC §2 step 4: the cosine similarity of two tracks in integer units of 10^-P.
//!
//! `s(i,j) = floor( (c·10^P) / sqrt(n(i)·n(j)) + 0.5 )`, evaluated in IEEE-754 double
//! precision exactly in this order. The two products are formed exactly as `u128` integers and
//! then converted to `f64` (Rust's `as` conversion rounds to nearest, ties to even), the square
//! root is `f64::sqrt` (correctly rounded by IEEE-754), and the rest is one division, one
//! addition and `floor`. Every implementation that follows these steps (the dataflow, the
//! Arroyo UDF, a test oracle) therefore agrees to the last digit; do not "simplify" the order.

/// The largest supported precision `P`: 10^18 is the largest power of ten in an `i64`, so every
/// score with `c ≤ min(n(i), n(j))` fits the result type.
pub const MAX_PRECISION: u32 = 18;

/// SPEC §2 step 4 (see the module docs for the exact evaluation order).
///
/// Returns `None` when an argument is out of range: `n_i == 0`, `n_j == 0`,
/// `precision > 18`, or a result that does not fit an `i64` (only possible when `co` exceeds
/// the counts, which the pipeline never produces).
///
/// ```
/// use encore_udfs::cosine_units;
/// assert_eq!(cosine_units(2, 2, 2, 4), Some(10_000));
/// assert_eq!(cosine_units(2, 3, 4, 4), Some(5_774)); // 20000 / sqrt(12) = 5773.50…
/// assert_eq!(cosine_units(1, 0, 4, 4), None);
/// ```
pub fn cosine_units(co: u64, n_i: u64, n_j: u64, precision: u32) -> Option<i64> {
    if n_i == 0 || n_j == 0 || precision > MAX_PRECISION {
        return None;
    }
    // Exact: u64::MAX · 10^18 < 2^124 and u64::MAX² < 2^128.
    let scaled_co = u128::from(co) * 10u128.pow(precision);
    let count_product = u128::from(n_i) * u128::from(n_j);
    let units = ((scaled_co as f64) / (count_product as f64).sqrt() + 0.5).floor();
    // `units` is finite and ≥ 0 here; the bound check keeps the cast exact. 2^63 is exactly
    // representable, so `<` excludes everything that would saturate.
    (units < 9_223_372_036_854_775_808.0).then_some(units as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_hand_computed_values() {
        let cases: &[(u64, u64, u64, u32, Option<i64>)] = &[
            (2, 2, 2, 4, Some(10_000)),
            (2, 3, 4, 4, Some(5_774)),
            (1, 2, 2, 0, Some(1)),     // 1 / 2 + 0.5 = 1.0: half rounds up
            (1, 4, 4, 0, Some(0)),     // 0.25 + 0.5 floors to 0: such pairs are dropped
            (3, 5, 7, 4, Some(5_071)), // 30000 / sqrt(35) = 5070.93…
            (0, 5, 7, 4, Some(0)),
            (5, 5, 5, 18, Some(1_000_000_000_000_000_000)),
            (1, 1, 1, 18, Some(1_000_000_000_000_000_000)),
            (u64::MAX, u64::MAX, u64::MAX, 0, Some(1)),
            (u64::MAX, 1, 1, 18, None), // does not fit an i64
            (1, 0, 1, 4, None),
            (1, 1, 0, 4, None),
            (1, 1, 1, 19, None),
        ];
        for &(co, n_i, n_j, precision, expected) in cases {
            assert_eq!(
                cosine_units(co, n_i, n_j, precision),
                expected,
                "{co} {n_i} {n_j} {precision}"
            );
        }
    }

    #[test]
    fn products_are_exact_before_conversion() {
        // n_i · n_j = (2^32 + 1)^2 = 2^64 + 2^33 + 1 needs 65 bits: a u64 product would wrap.
        let n = (1u64 << 32) + 1;
        let expected =
            (1e4 * n as f64 / ((n as u128 * n as u128) as f64).sqrt() + 0.5).floor() as i64;
        assert_eq!(cosine_units(n, n, n, 4), Some(expected));
        assert_eq!(expected, 10_000);
    }

    proptest! {
        #[test]
        fn never_exceeds_one_when_co_is_at_most_the_counts(
            n_i in 1u64..1_000_000_000, n_j in 1u64..1_000_000_000, fraction in 0.0f64..=1.0, precision in 0u32..=18
        ) {
            let co = ((n_i.min(n_j) as f64) * fraction) as u64;
            let units = cosine_units(co, n_i, n_j, precision).expect("in range");
            prop_assert!(units >= 0);
            prop_assert!(units as u128 <= 10u128.pow(precision));
        }
    }
}
