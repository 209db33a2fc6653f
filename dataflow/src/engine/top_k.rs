//! Top-k by weight: per key, the `k` items with the largest weight, kept at `O(1)` per
//! change in the common case, however many items a key has. Used for the neighbour lists:
//!
//! ```text
//!  N(i)  key = track i, item = track j, weight = s(i,j)
//! ```
//!
//! Weights arrive as a stream of changes `(key, item, old, new)`, at most one per item per
//! epoch (the similarity operator emits a changed pair once), so nothing needs consolidating.
//! Recommendations `R(u)` rank differently, where the users live, because a user's
//! candidates are bounded by `K·k` and recomputed on refresh ([`super::recommend`]).
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
//! Here each key owns, on the worker its key hashes to, a hash map of its items' weights
//! (those > 0) and its *leaders*: its best `2k` items in order, with a *floor* that every
//! other item ranks after. A change updates the
//! map in `O(1)`. When an epoch is complete (the input frontier has passed it), each key it
//! touched keeps its unchanged leaders, adds every changed item that ranks above the floor,
//! cuts back to `2k` (the last kept becoming the floor) and emits the change of its first
//! `k`: `O(changes + k)` per touched key, independent of how many items the key has. An
//! epoch whose changes all rank after the floor (a popular track whose distant partners'
//! scores drift) leaves the leaders alone. Only when fewer than `k` leaders would remain
//! above the floor are all the key's items ranked again, `O(n)`; that happens when most of
//! its best scores fall at once, i.e. when about as many of its items changed. An ordered
//! set per key costs `O(log n)` per change, a cache miss per level for a popular track; the
//! map and leaders cost the same memory (about 26 bytes an item). Ties fall to the smaller item, because `(Reverse(weight), item)`
//! orders that way, which is SPEC §2's order for both lists.
//!
//! Epochs are applied in order, each only once complete, as in [`super::history`]; the
//! output at an epoch is exactly the change of each key's top-k list between the states
//! before and after it, so it is a correct differential collection of `(key, list)` rows.

use std::cmp::Reverse;

use foldhash::HashMap;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

use super::stash::EpochStash;
use super::Epoch;
use crate::tables::RankedList;

/// A ranked entry: best first, ties to the smaller item.
pub type Ranked = (Reverse<i64>, u64);

/// A weight change: `(key, item, old, new)`, weights not positive meaning no entry.
pub type WeightChange = (u64, u64, i64, i64);

/// Per key, its list of the `k` best items, `(item, weight)` best first (ties: smaller item).
///
/// `changes` holds, at each epoch, at most one `(key, item, old, new)` per `(key, item)`
/// whose weight changed in it. The output has one record per key with a non-empty top `k`:
/// `(key, list)`; a key whose top `k` changed in an epoch retracts its old list and asserts
/// its new one (one row each, whatever the number of members that changed). Items whose
/// weight is not positive are never ranked.
pub fn top_k<'scope>(
    name: &str,
    changes: Stream<'scope, Epoch, Vec<WeightChange>>,
    k: usize,
) -> VecCollection<'scope, Epoch, (u64, RankedList)> {
    let by_key = Exchange::new(|&(key, _item, _old, _new): &WeightChange| key.hashed());
    changes
        .unary_frontier::<CapacityContainerBuilder<Vec<((u64, RankedList), Epoch, isize)>>, _, _, _>(
            by_key,
            name,
            move |_capability, _info| {
                let mut keys: HashMap<u64, Ranking> = HashMap::default();
                // Staged changes per epoch, with the capability to emit at that epoch.
                let mut staged: EpochStash<_, Vec<_>> = EpochStash::default();
                let (mut before, mut next) = (Vec::new(), Vec::new());
                move |(input, frontier), output| {
                    let port = output.output_index();
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        staged.stage(time, || cap.delayed(&time, port)).append(data);
                    });
                    // Complete once the frontier has passed it: until then it may still get changes.
                    while let Some((epoch, capability, mut changes)) = staged.pop_complete(|epoch| !frontier.less_equal(epoch)) {
                        changes.sort_unstable_by_key(|&(key, item, _, _)| (key, item));
                        debug_assert!(
                            changes.windows(2).all(|w| (w[0].0, w[0].1) != (w[1].0, w[1].1)),
                            "two changes of one item in an epoch"
                        );
                        let mut session = output.session(&capability);
                        for run in changes.chunk_by(|a, b| a.0 == b.0) {
                            let key = run[0].0;
                            let ranking = keys.entry(key).or_default();
                            before.clear();
                            before.extend_from_slice(ranking.top(k));
                            ranking.change(run, k, &mut next);
                            let after = ranking.top(k);
                            if before[..] != *after {
                                if !before.is_empty() {
                                    session.give(((key, listed(&before)), epoch, -1));
                                }
                                if !after.is_empty() {
                                    session.give(((key, listed(after)), epoch, 1));
                                }
                            }
                            if ranking.weights.is_empty() {
                                keys.remove(&key);
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// A ranking as a list of `(item, weight)`, in the same order.
pub(super) fn listed(ranking: &[Ranked]) -> RankedList {
    ranking.iter().map(|&(Reverse(weight), item)| (item, weight)).collect()
}

/// Ranks after every entry with a positive weight: the floor of a ranking all of whose
/// entries are leaders.
pub(super) const BOTTOM: Ranked = (Reverse(i64::MIN), u64::MAX);

/// Sorts the next leaders best first and keeps the best `m`: what is cut ranks after the
/// last kept one, which becomes the floor (`m > 0`).
pub(super) fn cut_leaders(next: &mut Vec<Ranked>, m: usize, floor: &mut Ranked) {
    if next.len() > m {
        next.select_nth_unstable(m - 1);
        next.truncate(m);
        next.sort_unstable();
        *floor = next[m - 1];
    } else {
        next.sort_unstable();
    }
}

/// One key's items: every weight, and the best items in order.
struct Ranking {
    /// Every item with a positive weight.
    weights: HashMap<u64, i64>,
    /// The best items, best first: at most `2k`, and every item that is not a leader ranks
    /// after `floor`, so the first `k` leaders are the top `k` whenever there are `k` of them
    /// or `floor` is [`BOTTOM`].
    leaders: Vec<Ranked>,
    floor: Ranked,
}

impl Default for Ranking {
    fn default() -> Self {
        Ranking { weights: HashMap::default(), leaders: Vec::new(), floor: BOTTOM }
    }
}

impl Ranking {
    /// The top `k`.
    fn top(&self, k: usize) -> &[Ranked] {
        &self.leaders[..k.min(self.leaders.len())]
    }

    /// Applies one epoch's changes of this key (sorted by item, one per item); `next` is
    /// scratch. `O(changes + leaders)`, unless more than `k` leaders fall below the floor,
    /// which costs one pass over the key's items.
    fn change(&mut self, changes: &[WeightChange], k: usize, next: &mut Vec<Ranked>) {
        for &(_key, item, _old, new) in changes {
            if new > 0 {
                self.weights.insert(item, new);
            } else {
                self.weights.remove(&item);
            }
        }
        let m = 2 * k;
        if m == 0 {
            return;
        }
        let floor = self.floor;
        // Changes that all rank after the floor touch no leader and make none.
        if changes.iter().all(|&(_, item, old, new)| (Reverse(old), item) > floor && (Reverse(new), item) > floor) {
            return;
        }
        let is_changed = |item: u64| changes.binary_search_by_key(&item, |&(_, item, _, _)| item).is_ok();
        next.clear();
        next.extend(self.leaders.iter().filter(|&&(_, item)| !is_changed(item)));
        next.extend(changes.iter().map(|&(_, item, _, new)| (Reverse(new), item)).filter(|&entry| entry.0 .0 > 0 && entry <= floor));
        if next.len() < k && floor != BOTTOM {
            // Too few are known to lead: rank every item.
            next.clear();
            next.extend(self.weights.iter().map(|(&item, &weight)| (Reverse(weight), item)));
            self.floor = BOTTOM;
        }
        cut_leaders(next, m, &mut self.floor);
        self.leaders.clear();
        self.leaders.extend_from_slice(next);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The leaders give the top k of every item's weight, over random epochs of few and of
    /// many changes (the latter pushing leaders below the floor, so that all items are ranked).
    #[test]
    fn leaders_give_the_top_k() {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};
        for seed in 0..30 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let k = rng.random_range(0..5usize);
            let mut ranking = Ranking::default();
            let mut weights: BTreeMap<u64, i64> = BTreeMap::new();
            let mut next = Vec::new();
            for epoch in 0..300 {
                let mut changes = Vec::new();
                let many = rng.random_range(0..5) == 0;
                for item in 0..60u64 {
                    if rng.random_range(0..if many { 2 } else { 20 }) != 0 {
                        continue;
                    }
                    let old = weights.get(&item).copied().unwrap_or(0);
                    // Mostly small drifts, downwards when many change (as when n(i) grows).
                    let new = match rng.random_range(0..8) {
                        0 => 0,
                        1 => rng.random_range(1..100),
                        _ if many => (old - rng.random_range(0..20)).max(0),
                        _ => (old + rng.random_range(-3..=3)).max(0),
                    };
                    if new != old {
                        changes.push((7, item, old, new));
                        if new > 0 {
                            weights.insert(item, new);
                        } else {
                            weights.remove(&item);
                        }
                    }
                }
                ranking.change(&changes, k, &mut next);
                let mut expected: Vec<Ranked> = weights.iter().map(|(&item, &w)| (Reverse(w), item)).collect();
                expected.sort();
                expected.truncate(k);
                assert_eq!(ranking.top(k), &expected[..], "seed {seed} epoch {epoch} k {k}");
                assert_eq!(ranking.weights.len(), weights.len());
            }
        }
    }
}
