//! Hierarchical top-k: per key, the `k` smallest values, at a cost per change that does not
//! grow with the number of values under the key.
//!
//! A plain `reduce` keyed by track re-reads the track's whole pair list whenever any of its
//! pairs changes; for a popular track that is tens of thousands of values per change, and
//! popular tracks are exactly the ones that change in every epoch. Instead, values are
//! spread over `2^b` buckets per key by a hash of their item id, and each stage keeps the top
//! `k` of each bucket, shrinking the bucket count by `2^step` per stage:
//!
//! ```text
//!  (key, value)                       every value
//!    └─ bucket = hash(item) & (2^b0 - 1)
//!  reduce (key, bucket) → top k       ≤ k per bucket, a bucket holds ~n/2^b0 values
//!    └─ bucket &= 2^b1 - 1
//!  reduce (key, bucket) → top k       ≤ 2^(b0-b1)·k inputs per group
//!    └─ …
//!  reduce key → top k                 ≤ 2^b_last·k inputs
//! ```
//!
//! A change re-reads one group per stage, each at most `2^step · k` values (plus `n / 2^b0`
//! at the first stage), so the cost is bounded by the number of stages, not by `n`. The price
//! is memory: each stage arranges its input. Buckets are chosen per use (see the engine), so
//! that `n / 2^b0` stays small for the largest keys we expect.
//!
//! Values sort best-first (the engine wraps scores in `Reverse`), so "top" means "smallest".
//! Because the bucket of a value depends only on its item id, a value whose score changes
//! stays in its bucket; ties are broken by the value's full order, identically at every stage,
//! so the result equals a flat top-k.

use differential_dataflow::{ExchangeData, Hashable, VecCollection};

use super::Epoch;

/// Per key, the `k` smallest values of `input` (a set: each value with multiplicity one).
///
/// `bucket_bits` lists the hash bits kept at each bucketed stage, in decreasing order
/// (e.g. `&[12, 8, 4]`); an empty list gives a flat top-k. `item` names the identity of a
/// value that decides its bucket (a track id).
pub fn top_k<'scope, K, V>(
    name: &str,
    input: VecCollection<'scope, Epoch, (K, V)>,
    k: usize,
    bucket_bits: &[u32],
    item: fn(&V) -> u64,
) -> VecCollection<'scope, Epoch, (K, V)>
where
    K: ExchangeData + std::hash::Hash,
    V: ExchangeData,
{
    debug_assert!(bucket_bits.windows(2).all(|w| w[0] > w[1]), "bucket bits must decrease");
    let mut staged = input.map(move |(key, value)| {
        let bucket = item(&value).hashed();
        ((key, bucket), value)
    });
    for &bits in bucket_bits {
        let mask = (1u64 << bits) - 1;
        staged = staged
            .map(move |((key, bucket), value)| ((key, bucket & mask), value))
            .reduce_named(name, move |_group, values, top| keep_smallest(values, k, top));
    }
    staged
        .map(|((key, _bucket), value)| (key, value))
        .reduce_named(name, move |_key, values, top| keep_smallest(values, k, top))
}

/// `values` arrive sorted ascending; the first `k` present ones are the result.
fn keep_smallest<V: Clone>(values: &[(&V, isize)], k: usize, top: &mut Vec<(V, isize)>) {
    top.extend(values.iter().filter(|(_, count)| *count > 0).take(k).map(|(value, _)| ((*value).clone(), 1)));
}
