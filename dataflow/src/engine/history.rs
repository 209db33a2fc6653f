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
//! stages updates per epoch and applies an epoch only once the input frontier has passed it,
//! in epoch order. The changes it emits for an epoch are the difference between `H(u)` before
//! and after the epoch (differential consolidates the intermediate swaps away).
//!
//! ## Output
//!
//! One stream of [`UserTrackChange`]s with differential's `(data, time, diff)` layout:
//! history membership changes (`+1` enters, `-1` leaves) and, once per `(u,t)`, the first
//! listen (`+1`), from which `listeners(t)` is counted.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::container::CapacityContainerBuilder;

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
}

/// One user's state: `last(u,t)` for every track heard, and `H(u)` ordered by
/// `(last, track)` ascending, so its first element is the one to evict.
#[derive(Default)]
struct UserHistory {
    last: HashMap<u64, i64>,
    members: BTreeSet<(i64, u64)>,
}

impl UserHistory {
    /// Applies one listen; pushes the membership and first-listen changes it causes.
    fn listen(&mut self, user: u64, track: u64, time: i64, cap: usize, out: &mut Vec<(UserTrackChange, isize)>) {
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
            self.members.insert((new_last, track));
            out.push((UserTrackChange::Member { user, track }, 1));
        } else if let Some(&smallest) = self.members.first() {
            // Ties on `last` keep the larger track id (SPEC §2 step 2): tuple order does that.
            if (new_last, track) > smallest {
                self.members.pop_first();
                self.members.insert((new_last, track));
                out.push((UserTrackChange::Member { user, track: smallest.1 }, -1));
                out.push((UserTrackChange::Member { user, track }, 1));
            }
        }
    }
}

/// Maintains `H(u)` and first listens from the (append-only) listens collection.
///
/// Listens must only ever be added (diff +1); the engine's inputs guarantee that.
pub fn history<'scope>(
    listens: VecCollection<'scope, Epoch, Listen>,
    history_cap: usize,
) -> VecCollection<'scope, Epoch, UserTrackChange> {
    let by_user = Exchange::new(|(listen, _time, _diff): &(Listen, Epoch, isize)| listen.user.hashed());
    listens
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(UserTrackChange, Epoch, isize)>>, _, _, _>(
            by_user,
            "History",
            move |_capability, _info| {
                let mut users: HashMap<u64, UserHistory> = HashMap::default();
                // Staged listens per epoch, with the capability to emit at that epoch.
                let mut staged = BTreeMap::new();
                let mut changes = Vec::new();
                move |(input, frontier), output| {
                    let port = output.output_index();
                    input.for_each(|cap, data| {
                        // Stage by each update's own time: differential may send updates at
                        // times later than the message's capability.
                        for update in data.drain(..) {
                            staged
                                .entry(update.1)
                                .or_insert_with(|| (cap.delayed(&update.1, port), Vec::new()))
                                .1
                                .push(update);
                        }
                    });
                    while let Some(entry) = staged.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break; // an earlier-or-equal epoch may still send listens
                        }
                        let (epoch, (capability, listens)) = entry.remove_entry();
                        let mut session = output.session(&capability);
                        for (listen, _time, diff) in listens {
                            debug_assert!(diff > 0, "listens are append-only");
                            let state = users.entry(listen.user).or_default();
                            for _ in 0..diff {
                                state.listen(listen.user, listen.track, listen.time_ms, history_cap, &mut changes);
                            }
                            session.give_iterator(changes.drain(..).map(|(change, d)| (change, epoch, d)));
                        }
                    }
                }
            },
        )
        .as_collection()
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
        let mut out = Vec::new();
        h.listen(1, 10, 100, 2, &mut out);
        h.listen(1, 11, 100, 2, &mut out);
        assert_eq!(members(&h), vec![10, 11]);
        // Same time as both members, larger id than 10: 10 leaves.
        h.listen(1, 12, 100, 2, &mut out);
        assert_eq!(members(&h), vec![11, 12]);
        // Same time, smaller id than every member: does not enter.
        h.listen(1, 9, 100, 2, &mut out);
        assert_eq!(members(&h), vec![11, 12]);
        // An old listen of an evicted track cannot bring it back...
        h.listen(1, 10, 50, 2, &mut out);
        assert_eq!(members(&h), vec![11, 12]);
        // ...a newer one does.
        h.listen(1, 10, 101, 2, &mut out);
        assert_eq!(members(&h), vec![12, 10]);
        let firsts = out.iter().filter(|(c, _)| matches!(c, UserTrackChange::FirstListen { .. })).count();
        assert_eq!(firsts, 4);
    }

    #[test]
    fn repeats_of_a_member_change_nothing() {
        let mut h = UserHistory::default();
        let mut out = Vec::new();
        h.listen(1, 10, 100, 2, &mut out);
        out.clear();
        h.listen(1, 10, 200, 2, &mut out);
        h.listen(1, 10, 150, 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(h.last[&10], 200);
    }
}
