//! SPEC §2 step 4: the cosine similarity of two tracks in integer units of 10^-P, over counts
//! rounded to `B` significant bits.
//!
//! `s(i,j) = floor( (q(c)·10^P) / sqrt(q(n(i))·q(n(j))) + 0.5 )`, evaluated in IEEE-754 double
//! precision exactly in this order, where `q` ([`round_count`]) rounds a count down to its `B`
//! most significant binary digits (`B = 0`: exact counts). The two products are formed exactly as `u128` integers and
//! then converted to `f64` (Rust's `as` conversion rounds to nearest, ties to even), the square
//! root is `f64::sqrt` (correctly rounded by IEEE-754), and the rest is one division, one
//! addition and `floor`. Every implementation that follows these steps (the dataflow, the
//! Arroyo UDF, a test oracle) therefore agrees to the last digit; do not "simplify" the order.

/// The largest supported precision `P`: 10^18 is the largest power of ten in an `i64`, so every
/// score with `c ≤ min(n(i), n(j))` fits the result type.
pub const MAX_PRECISION: u32 = 18;

/// The largest meaningful count precision `B`: every count is a `u64`, so from 64 bits on
/// `q` is the identity.
pub const MAX_COUNT_BITS: u32 = 64;

/// `q(x)` of SPEC §2 step 4: `x` with all but its `bits` most significant binary digits
/// cleared, i.e. rounded down to `bits` significant bits; `x` itself when `bits` is 0 (exact
/// counts) or `x < 2^bits`.
///
/// Why it exists: `q(x)` changes only `2^(bits-1)` times while `x` doubles, so a similarity
/// over rounded counts changes a bounded number of times per listen however large the counts
/// grow, and a count change that leaves `q` alone needs no further work.
///
/// ```
/// use encore_core::round_count;
/// assert_eq!(round_count(99, 5), 96); // 0b1100011 → 0b1100000
/// assert_eq!(round_count(100, 5), 100); // 0b1100100: its lowest 2 bits are 0 already
/// assert_eq!(round_count(1000, 5), 992);
/// assert_eq!(round_count(31, 5), 31); // below 2^5: unchanged
/// assert_eq!(round_count(1000, 0), 1000); // B = 0: exact
/// ```
pub fn round_count(x: u64, bits: u32) -> u64 {
    let length = u64::BITS - x.leading_zeros(); // bitlen(x); 0 for x = 0
    if bits == 0 || length <= bits {
        return x;
    }
    // 1 ≤ length − bits ≤ 63 here, so the shift is in range.
    x & !((1u64 << (length - bits)) - 1)
}

/// SPEC §2 step 4 with rounded counts: [`cosine_units`] of `q(co)`, `q(n_i)`, `q(n_j)` at
/// `count_bits` significant bits ([`round_count`]). This is what the pipeline writes; `None` as
/// for [`cosine_units`].
///
/// ```
/// use encore_core::rounded_cosine_units;
/// // q(99) = 96, q(1000) = 992, q(40) = 40: 960000 / sqrt(39680) = 4819.3…
/// assert_eq!(rounded_cosine_units(99, 1000, 40, 4, 5), Some(4_819));
/// assert_eq!(rounded_cosine_units(99, 1000, 40, 4, 0), Some(4_950)); // exact: 990000 / 200
/// ```
pub fn rounded_cosine_units(co: u64, n_i: u64, n_j: u64, precision: u32, count_bits: u32) -> Option<i64> {
    cosine_units(round_count(co, count_bits), round_count(n_i, count_bits), round_count(n_j, count_bits), precision)
}

/// SPEC §2 step 4's formula over counts as given (see the module docs for the exact
/// evaluation order); [`rounded_cosine_units`] rounds them first.
///
/// Returns `None` when an argument is out of range: `n_i == 0`, `n_j == 0`,
/// `precision > 18`, or a result that does not fit an `i64` (only possible when `co` exceeds
/// the counts, which the pipeline never produces).
///
/// ```
/// use encore_core::cosine_units;
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
            assert_eq!(cosine_units(co, n_i, n_j, precision), expected, "{co} {n_i} {n_j} {precision}");
        }
    }

    #[test]
    fn products_are_exact_before_conversion() {
        // n_i · n_j = (2^32 + 1)^2 = 2^64 + 2^33 + 1 needs 65 bits: a u64 product would wrap.
        let n = (1u64 << 32) + 1;
        let expected = (1e4 * n as f64 / ((n as u128 * n as u128) as f64).sqrt() + 0.5).floor() as i64;
        assert_eq!(cosine_units(n, n, n, 4), Some(expected));
        assert_eq!(expected, 10_000);
    }

    #[test]
    fn rounding_keeps_the_leading_bits() {
        // SPEC §2 step 4's definition and examples at B = 5: the lowest bitlen(x) − 5 bits
        // cleared (100 = 0b1100100 has 7 bits, and clearing the lowest 2 leaves 100).
        assert_eq!(round_count(100, 5), 100);
        assert_eq!(round_count(100, 4), 96);
        assert_eq!(round_count(99, 5), 96);
        assert_eq!(round_count(1000, 5), 992);
        for (x, bits, expected) in [
            (0, 5, 0),
            (1, 1, 1),
            (2, 1, 2),
            (3, 1, 2),
            (7, 2, 6),
            (32, 5, 32),
            (33, 5, 32), // 0b100001: 6 bits, the lowest one cleared
            (63, 5, 62),
            (64, 5, 64),
            (65, 5, 64),
            (u64::MAX, 1, 1 << 63),
            (u64::MAX, 63, u64::MAX - 1),
            (u64::MAX, 64, u64::MAX),
            (u64::MAX, 0, u64::MAX),
            (12345, 100, 12345),
        ] {
            assert_eq!(round_count(x, bits), expected, "q({x}) at B = {bits}");
        }
    }

    #[test]
    fn rounded_cosine_rounds_all_three_counts() {
        // q(99) = 96, q(1000) = 992, q(40) = 40 at B = 5: 960000 / sqrt(39680) = 4819.3…
        assert_eq!(rounded_cosine_units(99, 1000, 40, 4, 5), Some(4_819));
        assert_eq!(rounded_cosine_units(99, 1000, 40, 4, 0), cosine_units(99, 1000, 40, 4));
        // B = 1: q(3) = 2, q(5) = 4, q(7) = 4 → 2·10^4 / sqrt(16) = 5000.
        assert_eq!(rounded_cosine_units(3, 5, 7, 4, 1), Some(5_000));
    }

    proptest! {
        /// `q(x)` has at most `B` significant bits, is at most `x` and above `x`'s lower
        /// bound `x·(1 − 2^(1−B))`, and is monotone.
        #[test]
        fn rounding_is_a_monotone_truncation(x in 0u64..u64::MAX, y in 0u64..u64::MAX, bits in 1u32..=64) {
            let q = round_count(x, bits);
            prop_assert!(q <= x);
            prop_assert!(q.count_ones() <= bits);
            prop_assert_eq!(round_count(q, bits), q);
            if x > 0 {
                prop_assert_eq!(q.leading_zeros(), x.leading_zeros());
            }
            if x <= y {
                prop_assert!(round_count(x, bits) <= round_count(y, bits));
            }
        }

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
