//! Top-k by accumulated weight: per key, the `k` items with the largest weight, kept at
//! `O(log n)` per change, however many items a key has. Used for the neighbour lists:
//!
//! ```text
//!  N(i)  key = track i, item = track j, weight = s(i,j)
//! ```
//!
//! Weights arrive as differential diffs on `(key, item)` (a similarity that changes from `s`
//! to `s'` is the update `s' - s`). Recommendations `R(u)` rank differently, where the users
//! live, because a user's candidates are bounded by `K·k` ([`super::recommend`]).
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
//! Here each key owns, on the worker its key hashes to:
//!
//! ```text
//!  items     item → accumulated weight (a hash map; zero weights are dropped)
//!  ranked    ordered set of (Reverse(weight), item) for items with weight > 0
//! ```
//!
//! A change of one item moves one entry of `ranked`: `O(log n)`. When an epoch is complete
//! (the input frontier has passed it), each key it touched compares its first `k` ranked
//! entries before and after the epoch's updates and emits the difference: `O(k)` per touched
//! key, independent of how many items the key has. Ties fall to the smaller item, because
//! `(Reverse(weight), item)` orders that way, which is SPEC §2's order for both lists.
//!
//! The state is one entry per `(key, item)` with a non-zero weight, about 50 bytes, against
//! several arranged copies of the same pairs (each with its time and diff) before.
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

use super::Epoch;

/// A ranked entry: best first, ties to the smaller item.
pub type Ranked = (Reverse<i64>, u64);

/// One key's items: their weights and the ranking they give.
#[derive(Default)]
struct Ranking {
    /// Accumulated weight per item; zero weights are dropped.
    items: HashMap<u64, i64>,
    ranked: BTreeSet<Ranked>,
}

/// The ranked entry of an item of weight `weight`, if it has one.
fn ranked(item: u64, weight: i64) -> Option<Ranked> {
    (weight > 0).then_some((Reverse(weight), item))
}

impl Ranking {
    /// Adds `weight` to the weight of `item`, keeping `ranked` in step: `O(log n)`.
    fn add_weight(&mut self, item: u64, weight: i64) {
        let slot = self.items.entry(item).or_default();
        let old = ranked(item, *slot);
        *slot += weight;
        let new = ranked(item, *slot);
        if *slot == 0 {
            self.items.remove(&item);
        }
        if old != new {
            if let Some(entry) = old {
                self.ranked.remove(&entry);
            }
            if let Some(entry) = new {
                self.ranked.insert(entry);
            }
        }
    }

    /// The first `k` ranked entries, best first.
    fn top(&self, k: usize) -> impl Iterator<Item = Ranked> + '_ {
        self.ranked.iter().take(k).copied()
    }

    /// Whether nothing is left (the key's state can be dropped).
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Per key, the `k` items of largest accumulated weight (ties: smaller item).
///
/// `weights` holds `(key, item)` records whose diffs are weights (summed per pair). The
/// output is the set of `(key, (Reverse(weight), item))` in each key's top `k`. Weights are
/// expected to accumulate to non-negative values at every complete epoch; items whose weight
/// is not positive are never ranked.
pub fn top_k<'scope>(
    name: &str,
    weights: VecCollection<'scope, Epoch, (u64, u64)>,
    k: usize,
) -> VecCollection<'scope, Epoch, (u64, Ranked)> {
    let by_key = Exchange::new(|((key, _item), _time, _diff): &((u64, u64), Epoch, isize)| key.hashed());
    weights
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<((u64, Ranked), Epoch, isize)>>, _, _, _>(
            by_key,
            name,
            move |_capability, _info| {
                let mut keys: HashMap<u64, Ranking> = HashMap::default();
                // Staged changes per epoch, with the capability to emit at that epoch.
                let mut staged = BTreeMap::new();
                let mut before = Vec::new();
                let mut after = Vec::new();
                move |(input, frontier), output| {
                    let port = output.output_index();
                    input.for_each(|cap, data| {
                        // Stage by each update's own time: differential may send updates at
                        // times later than the message's capability.
                        for (pair, time, diff) in data.drain(..) {
                            staged
                                .entry(time)
                                .or_insert_with(|| (cap.delayed(&time, port), Vec::new()))
                                .1
                                .push((pair, diff));
                        }
                    });
                    while let Some(entry) = staged.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break; // an earlier-or-equal epoch may still send changes
                        }
                        let (epoch, (capability, mut changes)) = entry.remove_entry();
                        consolidate(&mut changes);
                        let mut session = output.session(&capability);
                        for run in changes.chunk_by(|a, b| a.0 .0 == b.0 .0) {
                            let key = run[0].0 .0;
                            let ranking = keys.entry(key).or_default();
                            before.clear();
                            before.extend(ranking.top(k));
                            for &((_key, item), diff) in run {
                                ranking.add_weight(item, diff as i64);
                            }
                            after.clear();
                            after.extend(ranking.top(k));
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

/// Sorts by `(key, item)` and sums the diffs of equal pairs, dropping zeros.
pub(super) fn consolidate(changes: &mut Vec<((u64, u64), isize)>) {
    changes.sort_unstable_by_key(|&(pair, _)| pair);
    let mut write = 0;
    for read in 0..changes.len() {
        if write > 0 && changes[write - 1].0 == changes[read].0 {
            changes[write - 1].1 += changes[read].1;
        } else {
            changes[write] = changes[read];
            write += 1;
        }
    }
    changes.truncate(write);
    changes.retain(|&(_, diff)| diff != 0);
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

    fn top(r: &Ranking, k: usize) -> Vec<(i64, u64)> {
        r.top(k).map(|(Reverse(w), i)| (w, i)).collect()
    }

    #[test]
    fn ranks_by_weight_then_smaller_item() {
        let mut r = Ranking::default();
        r.add_weight(5, 10);
        r.add_weight(3, 10);
        r.add_weight(9, 30);
        assert_eq!(top(&r, 2), vec![(30, 9), (10, 3)]);
        // A weight that changes moves its entry (10 → 40).
        r.add_weight(3, 30);
        assert_eq!(top(&r, 3), vec![(40, 3), (30, 9), (10, 5)]);
        // Weights back to zero leave no state behind.
        r.add_weight(3, -40);
        r.add_weight(5, -10);
        r.add_weight(9, -30);
        assert!(r.is_empty() && r.ranked.is_empty());
    }

    #[test]
    fn non_positive_weights_are_not_ranked() {
        let mut r = Ranking::default();
        r.add_weight(1, -5);
        assert!(r.ranked.is_empty());
        r.add_weight(1, 7);
        assert_eq!(top(&r, 1), vec![(2, 1)]);
    }

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
