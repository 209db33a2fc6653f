//! Small, exactly specified sampling primitives on top of ChaCha8.
//!
//! The generator promises byte-identical output for a seed. `rand`'s distributions may change
//! their algorithms between releases; these helpers do not, so the promise rests only on the
//! ChaCha8 key stream (specified bit for bit) and on this file.

use rand::rngs::ChaCha8Rng;
use rand::{Rng, SeedableRng};

/// What a sub-generator is used for; each purpose gets its own ChaCha stream of the seed, so
/// adding draws to one (say, user names) never shifts another (say, the event stream).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    /// Users' age, gender and country.
    Users = 1,
    /// Artists, albums and tracks (structure, not names).
    Music = 2,
    /// Fake names and titles.
    Names = 3,
    /// Taste clusters and per-user favourites.
    Taste = 4,
    /// The listening simulation.
    Listening = 5,
    /// Whether and how a message is malformed (`--invalid-rate`).
    Invalid = 6,
}

/// The ChaCha8 generator for `purpose` under `seed`.
pub(crate) fn rng_for(seed: u64, purpose: Purpose) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose as u64);
    rng
}

/// Uniform in [0, 1) with 53 random bits.
#[inline]
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform integer in [0, n) (multiply-shift; the bias is below 2^-32 for our sizes). `n > 0`.
#[inline]
pub(crate) fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    debug_assert!(n > 0);
    (((rng.next_u64() >> 32) * n as u64) >> 32) as usize
}

/// Uniform integer in [lo, hi] (inclusive).
#[inline]
pub(crate) fn between(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    lo + (unit(rng) * (hi - lo + 1) as f64) as u64
}

/// Exponentially distributed with the given mean.
#[inline]
pub(crate) fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -(1.0 - unit(rng)).ln() * mean
}

/// An index in [0, n) skewed towards 0: `floor(n · u^skew)`. With `skew` > 1 the first ranks
/// get most of the mass, like a Zipf law over a list sorted by popularity, at O(1) cost.
#[inline]
pub(crate) fn skewed_rank(rng: &mut ChaCha8Rng, n: usize, skew: f64) -> usize {
    let rank = (n as f64 * unit(rng).powf(skew)) as usize;
    rank.min(n - 1)
}

/// A discrete distribution over indices, sampled by binary search of the cumulative weights.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cdf {
    cumulative: Vec<f64>,
}

impl Cdf {
    /// A distribution proportional to `weights` (non-negative; at least one positive).
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += w.max(0.0);
                total
            })
            .collect();
        Cdf { cumulative }
    }

    /// An index drawn with probability proportional to its weight. Must not be empty.
    #[inline]
    pub(crate) fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = self.cumulative[self.cumulative.len() - 1];
        let target = unit(rng) * total;
        let index = self.cumulative.partition_point(|&c| c <= target);
        index.min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_independent_and_reproducible() {
        let a: Vec<u64> = (0..4).map(|_| rng_for(7, Purpose::Users).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(rng_for(7, Purpose::Users).next_u64(), rng_for(7, Purpose::Music).next_u64());
        assert_ne!(rng_for(7, Purpose::Users).next_u64(), rng_for(8, Purpose::Users).next_u64());
    }

    #[test]
    fn cdf_follows_weights_and_skips_zero_weights() {
        let cdf = Cdf::new([1.0, 0.0, 3.0]);
        let mut rng = rng_for(1, Purpose::Listening);
        let mut counts = [0usize; 3];
        for _ in 0..40_000 {
            counts[cdf.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        let ratio = counts[2] as f64 / counts[0] as f64;
        assert!((2.7..3.3).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut rng = rng_for(3, Purpose::Taste);
        for _ in 0..10_000 {
            assert!(below(&mut rng, 7) < 7);
            assert!((5..=9).contains(&between(&mut rng, 5, 9)));
            assert!(skewed_rank(&mut rng, 3, 2.0) < 3);
            assert!(exponential(&mut rng, 2.0) >= 0.0);
        }
    }
}
