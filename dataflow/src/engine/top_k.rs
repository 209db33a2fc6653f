//! Top-k by weight: per key, the `k` items with the largest weight, kept at `O(log n)` per
//! change, however many items a key has. Used for the neighbour lists:
//!
//! ```text
//!  N(i)  key = track i, item = track j, weight = s(i,j)
//! ```
//!
//! Weights arrive as a stream of changes `(key, item, old, new)`, at most one per item per
//! epoch (the similarity operator emits a changed pair once), so the operator needs no map
//! of current weights (the old weight names the entry to remove) and nothing to consolidate.
//! Recommendations `R(u)` rank differently, where the users live, because a user's
//! candidates are bounded by `K·k` ([`super::recommend`]).
//!
//! ## Why one operator instead of `reduce`
//!
//! A `reduce` keyed by track re-reads the track's whole pair list whenever one pair changes,
//! and popular tracks (thousands of co-listened tracks) change in every epoch. The usual
//! differential fix is a hierarchy of bucketed reduces; that bounds the re-reading but
//! arranges (almost) every value once per stage, input and output. Measured, those copies
//! were most of the memory and time of the engine (replacing them made it about 5× faster
//! and halved its memory).
//!
//! Here each key owns, on the worker its key hashes to, one ordered set of
//! `(Reverse(weight), item)` for its items with weight > 0. A change of one item moves one
//! entry: `O(log n)`. When an epoch is complete (the input frontier has passed it), each key
//! it touched compares its first `k` entries before and after the epoch's updates and emits
//! the difference: `O(k)` per touched key, independent of how many items the key has. A
//! key also remembers its `k`-th entry, so that an epoch whose changes all rank after it
//! (a popular track whose distant partners' scores drift) skips the comparison. Ties
//! fall to the smaller item, because `(Reverse(weight), item)` orders that way, which is
//! SPEC §2's order for both lists. The state is one set entry (16 bytes plus the B-tree's
//! share) per `(key, item)` with a positive weight.
//!
//! Epochs are applied in order, each only once complete, as in [`super::history`]; the
//! output at an epoch is exactly the change of the top-k between the states before and
//! after it, so it is a correct differential collection (a set of `(key, (score, item))`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

use super::Epoch;

/// A ranked entry: best first, ties to the smaller item.
pub type Ranked = (Reverse<i64>, u64);

/// A weight change: `(key, item, old, new)`, weights not positive meaning no entry.
pub type WeightChange = (u64, u64, i64, i64);

/// Per key, the `k` best `(key, (Reverse(weight), item))` entries (ties: smaller item).
///
/// `changes` holds, at each epoch, at most one `(key, item, old, new)` per `(key, item)`
/// whose weight changed in it. The output is the set of `(key, (Reverse(weight), item))` in
/// each key's top `k`; items whose weight is not positive are never ranked.
pub fn top_k<'scope>(
    name: &str,
    changes: Stream<'scope, Epoch, Vec<WeightChange>>,
    k: usize,
) -> VecCollection<'scope, Epoch, (u64, Ranked)> {
    let by_key = Exchange::new(|&(key, _item, _old, _new): &WeightChange| key.hashed());
    changes
        .unary_frontier::<CapacityContainerBuilder<Vec<((u64, Ranked), Epoch, isize)>>, _, _, _>(
            by_key,
            name,
            move |_capability, _info| {
                // Per key its ordered set, and its k-th entry when it has k.
                let mut keys: HashMap<u64, (BTreeSet<Ranked>, Option<Ranked>)> = HashMap::default();
                // Staged changes per epoch, with the capability to emit at that epoch.
                let mut staged = BTreeMap::new();
                let mut before = Vec::new();
                let mut after = Vec::new();
                move |(input, frontier), output| {
                    let port = output.output_index();
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        staged.entry(time).or_insert_with(|| (cap.delayed(&time, port), Vec::new())).1.append(data);
                    });
                    while let Some(entry) = staged.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break; // an earlier-or-equal epoch may still send changes
                        }
                        let (epoch, (capability, mut changes)) = entry.remove_entry();
                        changes.sort_unstable_by_key(|&(key, item, _, _)| (key, item));
                        debug_assert!(changes.windows(2).all(|w| (w[0].0, w[0].1) != (w[1].0, w[1].1)), "two changes of one item in an epoch");
                        let mut session = output.session(&capability);
                        for run in changes.chunk_by(|a, b| a.0 == b.0) {
                            let key = run[0].0;
                            let (ranking, last) = keys.entry(key).or_default();
                            // Changes that all rank after the k-th entry leave the top k as it
                            // is: a popular track's top k is not read for a distant partner.
                            if let Some(last) = *last {
                                if run.iter().all(|&(_, item, old, new)| (Reverse(old), item) > last && (Reverse(new), item) > last) {
                                    apply(ranking, run);
                                    continue;
                                }
                            }
                            before.clear();
                            before.extend(ranking.iter().take(k).copied());
                            apply(ranking, run);
                            after.clear();
                            after.extend(ranking.iter().take(k).copied());
                            *last = if after.len() == k { after.last().copied() } else { None };
                            if ranking.is_empty() {
                                keys.remove(&key);
                            }
                            session.give_iterator(
                                difference(&before, &after).map(|(entry, diff)| ((key, entry), epoch, diff)),
                            );
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Applies one key's changes to its ordered set: the old entry leaves, the new one enters;
/// weights that are not positive have no entry.
fn apply(ranking: &mut BTreeSet<Ranked>, changes: &[WeightChange]) {
    for &(_key, item, old, new) in changes {
        if old > 0 {
            ranking.remove(&(Reverse(old), item));
        }
        if new > 0 {
            ranking.insert((Reverse(new), item));
        }
    }
}

/// Sorts by record and sums the diffs of equal records, dropping zeros.
pub(super) fn consolidate<T: Ord + Copy, D: Copy + std::ops::AddAssign + PartialEq + Default>(changes: &mut Vec<(T, D)>) {
    changes.sort_unstable_by_key(|&(pair, _)| pair);
    let mut write = 0;
    for read in 0..changes.len() {
        if write > 0 && changes[write - 1].0 == changes[read].0 {
            let diff = changes[read].1;
            changes[write - 1].1 += diff;
        } else {
            changes[write] = changes[read];
            write += 1;
        }
    }
    changes.truncate(write);
    changes.retain(|&(_, diff)| diff != D::default());
}

/// Copies `from` into `to`, keeping `to`'s capacity near its length: the engine keeps one
/// such vector per user or per track, so slack would add up to a large share of its state.
/// (Copied rather than swapped with a scratch buffer, which would hand every owner the
/// largest capacity seen.)
pub(super) fn replace_tight<T: Copy>(to: &mut Vec<T>, from: &[T]) {
    if from.len() > to.capacity() {
        to.reserve_exact(from.len() - to.len() + from.len() / 8);
    }
    to.clear();
    to.extend_from_slice(from);
    if to.capacity() > 2 * to.len() + 16 {
        to.shrink_to(to.len() + to.len() / 8);
    }
}

/// The updates turning the sorted list `before` into the sorted list `after`.
pub(super) fn difference<'a>(before: &'a [Ranked], after: &'a [Ranked]) -> impl Iterator<Item = (Ranked, isize)> + 'a {
    let removed = before.iter().filter(|e| after.binary_search(e).is_err()).map(|&e| (e, -1));
    let added = after.iter().filter(|e| before.binary_search(e).is_err()).map(|&e| (e, 1));
    removed.chain(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consolidation_sums_and_drops_zeros() {
        let mut changes = vec![((2, 1), 3), ((1, 1), 4), ((2, 1), -3), ((1, 1), 1), ((1, 0), 2)];
        consolidate(&mut changes);
        assert_eq!(changes, vec![((1, 0), 2), ((1, 1), 5)]);
    }

    #[test]
    fn difference_lists_only_what_changed() {
        let e = |w, i| (Reverse(w), i);
        let before = [e(9, 1), e(5, 2), e(3, 3)];
        let after = [e(9, 1), e(4, 2), e(3, 3)];
        let diff: Vec<_> = difference(&before, &after).collect();
        assert_eq!(diff, vec![(e(5, 2), -1), (e(4, 2), 1)]);
    }
}
