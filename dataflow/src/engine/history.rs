//! The capped listening history `H(u)` (SPEC §2 steps 1–2), maintained by one stateful
//! operator instead of a `reduce` over every listen.
//!
//! ## Why a custom operator
//!
//! `last(u,t)` is a maximum over an append-only input, and `H(u)` is the top `K` of those
//! maxima. A differential `reduce` would have to keep every listen in an arrangement and
//! rescan a user's whole track list on each change. Because listens are only ever added,
//! two facts make a tiny incremental state exact:
//!
//! * `last(u,t)` only grows, so a listen either raises one track's key or changes nothing;
//! * when one key grows, the top `K` changes by at most one swap: the track enters (and the
//!   smallest member leaves) or it was already a member and stays one.
//!
//! Per user the operator keeps `last` for every track the user ever listened to and the
//! ordered set of history members: `O(log K)` work per listen, no rescans.
//!
//! ## Order of processing
//!
//! Listens are exchanged by user, so one worker owns each user's state. Updates of epoch `e`
//! may arrive before those of an earlier epoch have all arrived; the operator therefore
//! stages updates of later epochs and applies them, in epoch order, once nothing earlier
//! can arrive. The changes it emits for an epoch are the difference between `H(u)` before
//! and after the epoch (differential consolidates the intermediate swaps away).
//!
//! ## Output
//!
//! Two outputs. A collection of [`UserTrackChange`]s (differential's `(data, time, diff)`
//! layout): history membership changes (`+1` enters, `-1` leaves); once per `(u,t)`, the
//! first listen (`+1`), from which `listeners(t)` is counted; once per user and epoch with a
//! listen, that it listened (whose recommendations are then refreshed); and every change of
//! `last(u,t)`, the durable state a restart rebuilds everything else from (see
//! [`crate::source::kafka`], "Durable state"). And a plain stream of
//! [`PairChange`]s: each membership change's pairs with every other member, both ways, from
//! which `c(i,j)` is counted ([`super::similarity`]). Emitting pairs here, where `H(u)`
//! already is, replaces a self-join of the histories and its arrangement.
//!
//! A listen at the input frontier's epoch is applied as it arrives: nothing earlier can
//! come, and an epoch's result does not depend on the order of its listens, so even a
//! 10 M-event epoch is never held here.

use std::collections::BTreeSet;

use foldhash::HashMap;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use super::stash::EpochStash;
use super::{Epoch, Listen};

/// A change derived from one user's listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UserTrackChange {
    /// `track ∈ H(user)` (diff +1 when it enters, -1 when it leaves).
    Member {
        /// The listener.
        user: u64,
        /// The track.
        track: u64,
    },
    /// The user listened to the track for the first time (diff +1, once per pair).
    FirstListen {
        /// The listener.
        user: u64,
        /// The track.
        track: u64,
    },
    /// The user listened in this epoch (diff +1, once per user and epoch): its
    /// recommendations are refreshed at the epoch's end (SPEC §2 step 6).
    Listened {
        /// The listener.
        user: u64,
    },
    /// `last(user, track) = last_ms` (diff +1 when it is set, -1 when a later listen replaces
    /// it): the durable state from which a restart rebuilds `H(u)` and the first listens.
    Last {
        /// The listener.
        user: u64,
        /// The track.
        track: u64,
        /// `last(u,t)`, ms since the Unix epoch.
        last_ms: i64,
    },
}

/// One user's state: `last(u,t)` for every track heard, and `H(u)` ordered by
/// `(last, track)` ascending, so its first element is the one to evict.
#[derive(Default)]
struct UserHistory {
    last: HashMap<u64, i64>,
    members: BTreeSet<(i64, u64)>,
    /// The epoch of the user's latest listen plus one (0: none yet): a [`UserTrackChange::Listened`]
    /// is emitted once per epoch.
    listened_before: Epoch,
}

impl UserHistory {
    /// Applies one listen; pushes the membership and first-listen changes it causes to `out`
    /// and the pair changes to `pairs`.
    fn listen(
        &mut self,
        user: u64,
        track: u64,
        time: i64,
        cap: usize,
        out: &mut Vec<(UserTrackChange, isize)>,
        pairs: &mut Vec<PairChange>,
    ) {
        let previous = self.last.get(&track).copied();
        if previous.is_none() {
            out.push((UserTrackChange::FirstListen { user, track }, 1));
        }
        let new_last = previous.map_or(time, |p| p.max(time));
        if previous == Some(new_last) {
            return; // last(u,t) did not grow: nothing can change
        }
        self.last.insert(track, new_last);
        if let Some(p) = previous {
            out.push((UserTrackChange::Last { user, track, last_ms: p }, -1));
        }
        out.push((UserTrackChange::Last { user, track, last_ms: new_last }, 1));
        if let Some(p) = previous {
            if self.members.remove(&(p, track)) {
                // Already a member: its key grows, it stays a member.
                self.members.insert((new_last, track));
                return;
            }
        }
        if cap == 0 {
            return;
        }
        if self.members.len() < cap {
            self.pairs(track, 1, pairs);
            self.members.insert((new_last, track));
            out.push((UserTrackChange::Member { user, track }, 1));
        } else if let Some(&smallest) = self.members.first() {
            // Ties on `last` keep the larger track id (SPEC §2 step 2): tuple order does that.
            if (new_last, track) > smallest {
                self.members.pop_first();
                self.pairs(smallest.1, -1, pairs);
                self.pairs(track, 1, pairs);
                self.members.insert((new_last, track));
                out.push((UserTrackChange::Member { user, track: smallest.1 }, -1));
                out.push((UserTrackChange::Member { user, track }, 1));
            }
        }
    }

    /// `track` enters (`diff` 1) or leaves (-1) the pairs it forms with the other members,
    /// each pushed in both directions.
    fn pairs(&self, track: u64, diff: i32, pairs: &mut Vec<PairChange>) {
        for &(_, other) in &self.members {
            pairs.push((track, other, diff));
            pairs.push((other, track, diff));
        }
    }
}

/// A change of `c(track, partner)` by `Δ` (±1), from one user's history; every change is
/// present once in each direction, so that each track's worker sees all of its pairs.
pub type PairChange = (u64, u64, i32);

/// The operator's outputs.
pub struct History<'scope> {
    /// Membership and first-listen changes.
    pub changes: VecCollection<'scope, Epoch, UserTrackChange>,
    /// Pair changes, at the time of the message's capability (not a differential collection:
    /// a plain stream keeps them at 24 bytes, and they are the engine's largest stream).
    pub pairs: Stream<'scope, Epoch, Vec<PairChange>>,
}

/// Buffers one user's changes from [`UserHistory::listen`].
#[derive(Default)]
struct Changes {
    members: Vec<(UserTrackChange, isize)>,
    pairs: Vec<PairChange>,
}

/// Applies one listen update (`diff` copies of it) to its user's state.
fn apply(users: &mut HashMap<u64, UserHistory>, listen: Listen, diff: isize, epoch: Epoch, history_cap: usize, out: &mut Changes) {
    debug_assert!(diff > 0, "listens are append-only");
    let state = users.entry(listen.user).or_default();
    if state.listened_before <= epoch {
        state.listened_before = epoch + 1;
        out.members.push((UserTrackChange::Listened { user: listen.user }, 1));
    }
    for _ in 0..diff {
        state.listen(listen.user, listen.track, listen.time_ms, history_cap, &mut out.members, &mut out.pairs);
    }
}

/// Maintains `H(u)`, first listens and pair changes from the (append-only) listens.
///
/// Listens must only ever be added (diff +1); the engine's inputs guarantee that.
pub fn history<'scope>(listens: VecCollection<'scope, Epoch, Listen>, history_cap: usize) -> History<'scope> {
    let by_user = Exchange::new(|(listen, _time, _diff): &(Listen, Epoch, isize)| listen.user.hashed());
    let mut builder = OperatorBuilder::new("History".to_owned(), listens.inner.scope());
    let mut input = builder.new_input(listens.inner, by_user);
    let (changes_output, changes) = builder.new_output::<Vec<(UserTrackChange, Epoch, isize)>>();
    let (pairs_output, pairs) = builder.new_output::<Vec<PairChange>>();
    let mut changes_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(changes_output);
    let mut pairs_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(pairs_output);
    builder.build(move |_capabilities| {
        let mut users: HashMap<u64, UserHistory> = HashMap::default();
        // Staged listens per later epoch, with the capabilities to emit at that epoch.
        let mut staged: EpochStash<_, Vec<_>> = EpochStash::default();
        let mut out = Changes::default();
        move |frontiers| {
            let frontier = &frontiers[0];
            let mut changes_handle = changes_output.activate();
            let mut pairs_handle = pairs_output.activate();
            // Staged epochs that nothing earlier can precede any more go first, in order.
            // Complete at the frontier's own epoch already: only an earlier one may still send
            // listens, and listens of the frontier's epoch are applied as they arrive (below).
            while let Some((epoch, (changes_capability, pairs_capability), listens)) =
                staged.pop_complete(|epoch| !frontier.less_than(epoch))
            {
                let mut changes_session = changes_handle.session(&changes_capability);
                let mut pairs_session = pairs_handle.session(&pairs_capability);
                for (listen, _time, diff) in listens {
                    apply(&mut users, listen, diff, epoch, history_cap, &mut out);
                    changes_session.give_iterator(out.members.drain(..).map(|(change, d)| (change, epoch, d)));
                    pairs_session.give_iterator(out.pairs.drain(..));
                }
            }
            input.for_each(|cap, data| {
                // A listen at the frontier's own epoch is applied at once: no earlier listen
                // can arrive, and an epoch's result does not depend on the order of its
                // listens, so a big epoch is never held in memory. Later epochs are staged by
                // each update's own time (differential may send updates at times later than
                // the message's capability). Direct listens are all at the frontier's one
                // least epoch (time is totally ordered), which is then also the capability's.
                let mut changes_session = changes_handle.session(&cap);
                let mut pairs_session = pairs_handle.session(&cap);
                for (listen, time, diff) in data.drain(..) {
                    if frontier.less_than(&time) {
                        staged.stage(time, || (cap.delayed(&time, 0), cap.delayed(&time, 1))).push((listen, time, diff));
                        continue;
                    }
                    apply(&mut users, listen, diff, time, history_cap, &mut out);
                    changes_session.give_iterator(out.members.drain(..).map(|(change, d)| (change, time, d)));
                    pairs_session.give_iterator(out.pairs.drain(..));
                }
            });
        }
    });
    History { changes: changes.as_collection(), pairs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(h: &UserHistory) -> Vec<u64> {
        h.members.iter().map(|&(_, t)| t).collect()
    }

    #[test]
    fn evicts_the_oldest_and_breaks_ties_by_larger_track() {
        let mut h = UserHistory::default();
        let (mut out, mut pairs) = (Vec::new(), Vec::new());
        h.listen(1, 10, 100, 2, &mut out, &mut pairs);
        h.listen(1, 11, 100, 2, &mut out, &mut pairs);
        assert_eq!(members(&h), vec![10, 11]);
        // Same time as both members, larger id than 10: 10 leaves.
        h.listen(1, 12, 100, 2, &mut out, &mut pairs);
        assert_eq!(members(&h), vec![11, 12]);
        // Same time, smaller id than every member: does not enter.
        h.listen(1, 9, 100, 2, &mut out, &mut pairs);
        assert_eq!(members(&h), vec![11, 12]);
        // An old listen of an evicted track cannot bring it back...
        h.listen(1, 10, 50, 2, &mut out, &mut pairs);
        assert_eq!(members(&h), vec![11, 12]);
        // ...a newer one does.
        h.listen(1, 10, 101, 2, &mut out, &mut pairs);
        assert_eq!(members(&h), vec![12, 10]);
        let firsts = out.iter().filter(|(c, _)| matches!(c, UserTrackChange::FirstListen { .. })).count();
        assert_eq!(firsts, 4);
        // Pair changes sum to the pairs of the final history, in both directions.
        let mut sums = std::collections::BTreeMap::new();
        for &(a, b, diff) in &pairs {
            *sums.entry((a, b)).or_insert(0) += diff;
        }
        sums.retain(|_, diff| *diff != 0);
        assert_eq!(sums.into_iter().collect::<Vec<_>>(), vec![((10, 12), 1), ((12, 10), 1)]);
    }

    #[test]
    fn repeats_of_a_member_change_nothing() {
        let mut h = UserHistory::default();
        let (mut out, mut pairs) = (Vec::new(), Vec::new());
        h.listen(1, 10, 100, 2, &mut out, &mut pairs);
        out.clear();
        pairs.clear();
        h.listen(1, 10, 200, 2, &mut out, &mut pairs);
        h.listen(1, 10, 150, 2, &mut out, &mut pairs);
        // Only last(u,t) moved, once: no membership, first-listen or pair change.
        let last = |last_ms| UserTrackChange::Last { user: 1, track: 10, last_ms };
        assert_eq!(out, vec![(last(100), -1), (last(200), 1)]);
        assert!(pairs.is_empty());
        assert_eq!(h.last[&10], 200);
    }
}
