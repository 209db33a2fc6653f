//! Recommendations `R(u)` (SPEC §2 step 6), maintained by one operator per worker that owns
//! its users' candidate scores and sees every neighbour-list change.
//!
//! `score(u,j) = Σ s(i,j)` over `i ∈ H(u)` with `j ∈ N(i)` is bilinear in the histories and
//! the neighbour lists, so its change over an epoch is
//!
//! ```text
//!  Δscore = H_before · ΔN  +  ΔH · N_after
//! ```
//!
//! and the operator applies exactly that:
//!
//! ```text
//!  members (u, i) ±1 ─── exchanged by user ──┐
//!                                            ├─► Recommend (per worker)
//!  N(i) changes (i, j, s) ±1 ─── broadcast ──┘     1. every N change (i, j, Δs): add Δs to
//!                                                     (u, j) for the local users u of i
//!                                                  2. every membership change (u, i, ±1):
//!                                                     ± all of N(i) to u's candidates, and
//!                                                     i (un)excluded from u's ranking
//!                                                  3. each touched user: top-N before vs after
//! ```
//!
//! ## Why not a join
//!
//! The straightforward plan joins `N(i)` with the histories on `i` and sends one update per
//! `(user, candidate)` to the user's worker, where they are summed and ranked. A single
//! first listen changes `n(i)`, so every score in `N(i)` and every `N(j)` holding `i`, and
//! each of those reaches all `n(i)` (or `n(j)`) listeners: hundreds of thousands of updates
//! per thousand events after a million events. Producing, exchanging, staging and sorting them
//! was most of the engine's time. The neighbour lists are small (`k` per track, a megabyte
//! per ten thousand tracks), so every worker keeps a replica of them and an index of its own
//! users by history track; a list change is then applied where the users live, with no
//! per-user update crossing a channel and no arrangement of the histories by track.
//!
//! The replica costs `k` entries per track per worker; the index one entry per history member,
//! like the arrangement it replaces. Candidate scores and their ranking are the
//! [`Ranking`](super::top_k) of the top-k operator: `O(log n)` per change, `O(N)` per touched
//! user per epoch.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::HashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Operator;

use super::top_k::{consolidate, difference, Ranked, Ranking};
use super::Epoch;

/// One user's candidates, and their top-N at the start of the epoch if the epoch touched it.
#[derive(Default)]
struct User {
    ranking: Ranking,
    before: Option<Vec<Ranked>>,
}

/// The user's ranking, its top-N saved first if this is the epoch's first change to it.
fn touch<'a>(users: &'a mut HashMap<u64, User>, touched: &mut Vec<u64>, user: u64, n: usize) -> &'a mut Ranking {
    let state = users.entry(user).or_default();
    if state.before.is_none() {
        state.before = Some(state.ranking.top(n).collect());
        touched.push(user);
    }
    &mut state.ranking
}

/// A worker's state: its users, who of them has each track in their history, and the replica
/// of every neighbour list; plus the epoch's score and exclusion changes before they are
/// applied.
#[derive(Default)]
struct Recommender {
    users: HashMap<u64, User>,
    listeners: HashMap<u64, Vec<u64>>,
    neighbors: HashMap<u64, Vec<(u64, i64)>>,
    /// `((user, track), weight change)` of this epoch.
    scores: Vec<((u64, u64), isize)>,
    /// `((user, track), ±1)`: history changes of this epoch, excluded from recommendations.
    exclusions: Vec<((u64, u64), isize)>,
}

impl Recommender {
    /// Step 1: a neighbour score changes by `delta`; the users who have `i` now (before this
    /// epoch's membership changes) see it.
    fn neighbor_change(&mut self, i: u64, j: u64, delta: i64) {
        let list = self.neighbors.entry(i).or_default();
        match list.iter().position(|&(item, _)| item == j) {
            Some(at) => {
                list[at].1 += delta;
                if list[at].1 == 0 {
                    list.swap_remove(at);
                }
            }
            None => list.push((j, delta)),
        }
        if list.is_empty() {
            self.neighbors.remove(&i);
        }
        let users = self.listeners.get(&i).map_or(&[][..], |users| users);
        self.scores.extend(users.iter().map(|&user| ((user, j), delta as isize)));
    }

    /// Step 2: `i` enters (`diff` 1) or leaves (`diff` -1) `H(user)`, with `N(i)` as it is
    /// after this epoch's neighbour changes.
    fn membership_change(&mut self, user: u64, i: u64, diff: isize) {
        let listeners = self.listeners.entry(i).or_default();
        if diff > 0 {
            listeners.push(user);
        } else if let Some(at) = listeners.iter().position(|&u| u == user) {
            listeners.swap_remove(at);
        }
        if listeners.is_empty() {
            self.listeners.remove(&i);
        }
        self.exclusions.push(((user, i), diff));
        let list = self.neighbors.get(&i).map_or(&[][..], |list| list);
        self.scores.extend(list.iter().map(|&(j, s)| ((user, j), s as isize * diff)));
    }

    /// Step 3: applies the epoch's changes user by user (sorted, so each user's state is
    /// visited once) and reports the changes of each touched user's top-N.
    fn finish(&mut self, n: usize, mut emit: impl FnMut(u64, Ranked, isize)) {
        consolidate(&mut self.scores);
        consolidate(&mut self.exclusions);
        let mut touched = Vec::new();
        for run in self.exclusions.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            let ranking = touch(&mut self.users, &mut touched, run[0].0 .0, n);
            run.iter().for_each(|&((_, item), diff)| ranking.add_exclusion(item, diff));
        }
        for run in self.scores.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            let ranking = touch(&mut self.users, &mut touched, run[0].0 .0, n);
            run.iter().for_each(|&((_, item), weight)| ranking.add_weight(item, weight as i64));
        }
        self.scores.clear();
        self.exclusions.clear();
        let mut after = Vec::with_capacity(n);
        for user in touched {
            let Some(state) = self.users.get_mut(&user) else { continue };
            let before = state.before.take().unwrap_or_default();
            after.clear();
            after.extend(state.ranking.top(n));
            for (entry, diff) in difference(&before, &after) {
                emit(user, entry, diff);
            }
            if state.ranking.is_empty() {
                self.users.remove(&user);
            }
        }
    }
}

/// `R(u)`: per user the `n` best-scored tracks outside `H(u)` (ties: smaller track), from the
/// history members `(user, track)` and the neighbour lists `(i, (Reverse(s), j))`.
pub fn recommendations<'scope>(
    members: VecCollection<'scope, Epoch, (u64, u64)>,
    neighbor_lists: VecCollection<'scope, Epoch, (u64, Ranked)>,
    n: usize,
) -> VecCollection<'scope, Epoch, (u64, Ranked)> {
    let by_user = Exchange::new(|((user, _track), _time, _diff): &((u64, u64), Epoch, isize)| user.hashed());
    members
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<((u64, Ranked), Epoch, isize)>>, _, _, _, _>(
            neighbor_lists.inner.broadcast(),
            by_user,
            Pipeline,
            "Recommend",
            move |_capability, _info| {
                let mut state = Recommender::default();
                // Per epoch: the capability to emit at it, membership and neighbour changes.
                type Staged = (Vec<((u64, u64), isize)>, Vec<((u64, u64), isize)>);
                let mut staged: BTreeMap<Epoch, (_, Staged)> = BTreeMap::new();
                move |(members, members_frontier), (neighbors, neighbors_frontier), output| {
                    let port = output.output_index();
                    members.for_each(|cap, data| {
                        for (pair, time, diff) in data.drain(..) {
                            let slot = staged.entry(time).or_insert_with(|| (cap.delayed(&time, port), Staged::default()));
                            slot.1 .0.push((pair, diff));
                        }
                    });
                    neighbors.for_each(|cap, data| {
                        for ((i, (std::cmp::Reverse(s), j)), time, diff) in data.drain(..) {
                            let slot = staged.entry(time).or_insert_with(|| (cap.delayed(&time, port), Staged::default()));
                            slot.1 .1.push(((i, j), s as isize * diff));
                        }
                    });
                    while let Some(entry) = staged.first_entry() {
                        if members_frontier.less_equal(entry.key()) || neighbors_frontier.less_equal(entry.key()) {
                            break; // an earlier-or-equal epoch may still send changes
                        }
                        let (epoch, (capability, (mut memberships, mut scores))) = entry.remove_entry();
                        consolidate(&mut scores);
                        consolidate(&mut memberships);
                        for &((i, j), delta) in &scores {
                            state.neighbor_change(i, j, delta as i64);
                        }
                        for &((user, i), diff) in &memberships {
                            state.membership_change(user, i, diff);
                        }
                        let mut session = output.session(&capability);
                        state.finish(n, |user, entry, diff| session.give(((user, entry), epoch, diff)));
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use super::*;

    fn step(r: &mut Recommender, scores: &[(u64, u64, i64)], members: &[(u64, u64, isize)]) -> Vec<(u64, (i64, u64), isize)> {
        for &(i, j, d) in scores {
            r.neighbor_change(i, j, d);
        }
        for &(u, i, d) in members {
            r.membership_change(u, i, d);
        }
        let mut out = Vec::new();
        r.finish(2, |u, (Reverse(s), j), d| out.push((u, (s, j), d)));
        out.sort();
        out
    }

    #[test]
    fn scores_follow_histories_and_neighbour_lists() {
        let mut r = Recommender::default();
        // N(1) = {5: 10, 6: 20}; user 7 gets track 1: recommended 6 then 5.
        let out = step(&mut r, &[(1, 5, 10), (1, 6, 20)], &[(7, 1, 1)]);
        assert_eq!(out, vec![(7, (10, 5), 1), (7, (20, 6), 1)]);
        // N(2) = {5: 15}, and user 7 gets track 2 in the same epoch: 5 sums to 25.
        let out = step(&mut r, &[(2, 5, 15)], &[(7, 2, 1)]);
        assert_eq!(out, vec![(7, (10, 5), -1), (7, (25, 5), 1)]);
        // s(1,6) drops to 5 while track 1 leaves H(7) in the same epoch: 6 disappears.
        let out = step(&mut r, &[(1, 6, -15)], &[(7, 1, -1)]);
        assert_eq!(out, vec![(7, (15, 5), 1), (7, (20, 6), -1), (7, (25, 5), -1)]);
        // Track 5 enters H(7): excluded from its own recommendations.
        let out = step(&mut r, &[], &[(7, 5, 1)]);
        assert_eq!(out, vec![(7, (15, 5), -1)]);
    }
}
