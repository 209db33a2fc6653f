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
//! like the arrangement it replaces.
//!
//! ## Why a sorted vector per user, not an ordered index
//!
//! A user's candidates are bounded: at most `K·k` tracks (1 000 at the defaults), unlike a
//! popular track's pair list (tens of thousands). Each user keeps them as one vector of
//! `(track, score)` sorted by track, 16 bytes per candidate, and an epoch's changes to the
//! user (sorted the same way) are merged into it in one sequential pass that also picks the
//! new top-N (only a candidate that beats the current N-th pays for the ordered insert and
//! the history lookup). The cost per touched user per epoch is `O(candidates + changes)`,
//! bounded by `K·k`, never by the data's size.
//!
//! The alternative, a hash map plus an ordered set per user (`O(log n)` per change, as
//! [`super::top_k`] does for tracks), was measured first: after 1 M events a 1 000-event
//! epoch touches ~85 % of all users with ~13 changes each against ~150 candidates, so the
//! per-change pointer chasing cost more than the pass (30 % more CPU per epoch), and its
//! ~60 bytes per candidate made the users' candidates the largest state at 10 M events.
//!
//! ## Big epochs
//!
//! A big epoch (a first load, a catch-up) expands its neighbour changes into hundreds of
//! millions of `(user, candidate)` score changes. Once `SCORES_FLUSH_AT` of them are staged,
//! they are merged into their users' candidates at once (scores are sums, so merging in parts
//! changes nothing) and those users are ranked at the epoch's end like every touched user.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::HashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Operator;

use super::top_k::{consolidate, difference, replace_tight, Ranked};
use super::Epoch;

/// One user's state: candidate scores, history (the exclusions) and the top-N last emitted.
#[derive(Default)]
struct User {
    /// `(track, score)` sorted by track, scores non-zero: every `j` in some `N(i)`, `i ∈ H(u)`.
    candidates: Vec<(u64, i64)>,
    /// `H(u)`, sorted: never recommended.
    history: Vec<u64>,
    /// `R(u)` as last emitted, best first.
    top: Vec<Ranked>,
    /// Whether a flush of the open epoch's score changes reached this user.
    flushed: bool,
}

impl User {
    /// Applies one epoch's history changes (`(track, ±1)`, sorted, consolidated).
    fn change_history(&mut self, changes: &[((u64, u64), isize)]) {
        for &((_, track), diff) in changes {
            match (self.history.binary_search(&track), diff > 0) {
                (Err(at), true) => self.history.insert(at, track),
                (Ok(at), false) => {
                    self.history.remove(at);
                }
                // A complete epoch adds only absent members and removes only present ones.
                _ => debug_assert!(false, "history change {track} {diff} against {:?}", self.history),
            }
        }
    }

    /// Merges one epoch's score changes (`(track, Δscore)`, sorted by track, consolidated)
    /// into the candidates and computes the new top `n` in the same pass; `scratch` is
    /// reused between users to hold the merged list.
    fn change_scores(
        &mut self,
        changes: &[((u64, u64), isize)],
        n: usize,
        scratch: &mut Vec<(u64, i64)>,
        top: &mut Vec<Ranked>,
    ) {
        scratch.clear();
        scratch.reserve(self.candidates.len() + changes.len());
        top.clear();
        let history = &self.history;
        let mut offer = |track: u64, score: i64| {
            if score == 0 {
                return;
            }
            scratch.push((track, score));
            contend(top, n, history, track, score);
        };
        let mut old = self.candidates.iter().copied().peekable();
        for &((_, track), delta) in changes {
            while let Some(&(item, score)) = old.peek() {
                if item >= track {
                    break;
                }
                offer(item, score);
                old.next();
            }
            match old.peek() {
                Some(&(item, score)) if item == track => {
                    offer(item, score + delta as i64);
                    old.next();
                }
                _ => offer(track, delta as i64),
            }
        }
        old.for_each(|(item, score)| offer(item, score));
        replace_tight(&mut self.candidates, scratch);
    }

    /// Recomputes the top `n` from the candidates (after a history-only change).
    fn rank(&self, n: usize, top: &mut Vec<Ranked>) {
        top.clear();
        for &(track, score) in &self.candidates {
            contend(top, n, &self.history, track, score);
        }
    }
}

/// Puts `(track, score)` into `top` (best first, at most `n`) if it belongs there and the
/// track is not in `history`. Only a contender pays for the ordered insert and the lookup.
fn contend(top: &mut Vec<Ranked>, n: usize, history: &[u64], track: u64, score: i64) {
    let entry = (std::cmp::Reverse(score), track);
    let beats_last = top.len() < n || top.last().is_some_and(|last| entry < *last);
    if score > 0 && beats_last && history.binary_search(&track).is_err() {
        let at = top.partition_point(|e| *e < entry);
        top.insert(at, entry);
        top.truncate(n);
    }
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
    /// Users whose candidates a flush changed in this epoch, ranked again at its end.
    flushed: Vec<u64>,
}

/// Staged score changes are merged into their users once this many pile up (192 MB): a big
/// epoch (a first load, a catch-up) expands to hundreds of millions of them.
const SCORES_FLUSH_AT: usize = 1 << 23;

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
        if self.scores.len() >= SCORES_FLUSH_AT {
            self.flush_scores();
        }
    }

    /// Merges the staged score changes into their users' candidates, leaving the ranking
    /// (and so the output) to `finish`: scores are sums, so the order of merging is free.
    fn flush_scores(&mut self) {
        consolidate(&mut self.scores);
        let (mut scratch, mut unranked) = (Vec::new(), Vec::new());
        for run in self.scores.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            let user = run[0].0 .0;
            let state = self.users.entry(user).or_default();
            state.change_scores(run, 0, &mut scratch, &mut unranked);
            if !state.flushed {
                state.flushed = true;
                self.flushed.push(user);
            }
        }
        self.scores.clear();
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
        // Its scores (`± N_after(i)`) are made in `finish`, one user at a time: staged here,
        // a first load would hold every user's every candidate at once.
        self.exclusions.push(((user, i), diff));
    }

    /// Step 3: applies the epoch's changes user by user (both lists sorted by user, so each
    /// user's state is visited once) and reports the changes of each touched user's top-N.
    fn finish(&mut self, n: usize, mut emit: impl FnMut(u64, Ranked, isize)) {
        consolidate(&mut self.scores);
        consolidate(&mut self.exclusions);
        let mut scratch = Vec::new();
        let mut own = Vec::new();
        let mut top = Vec::with_capacity(n + 1);
        let (mut scores, mut exclusions) = (&self.scores[..], &self.exclusions[..]);
        loop {
            // The next user in either list, and its runs in both.
            let user = match (scores.first(), exclusions.first()) {
                (None, None) => break,
                (Some(s), None) => s.0 .0,
                (None, Some(e)) => e.0 .0,
                (Some(s), Some(e)) => s.0 .0.min(e.0 .0),
            };
            let (history_run, rest) = exclusions.split_at(exclusions.partition_point(|e| e.0 .0 == user));
            exclusions = rest;
            let (score_run, rest) = scores.split_at(scores.partition_point(|s| s.0 .0 == user));
            scores = rest;
            // ΔH · N_after: the user's own membership changes, added to its H_before · ΔN.
            let changes = if history_run.is_empty() {
                score_run
            } else {
                own.clear();
                own.extend_from_slice(score_run);
                for &((_, i), diff) in history_run {
                    let list = self.neighbors.get(&i).map_or(&[][..], |list| list);
                    own.extend(list.iter().map(|&(j, s)| ((user, j), s as isize * diff)));
                }
                consolidate(&mut own);
                &own[..]
            };
            let state = self.users.entry(user).or_default();
            state.change_history(history_run);
            if changes.is_empty() {
                state.rank(n, &mut top);
            } else {
                state.change_scores(changes, n, &mut scratch, &mut top);
            }
            state.flushed = false;
            Self::publish(&mut self.users, user, &mut top, &mut emit);
        }
        // Users only a flush reached: their candidates are merged, their ranking is not.
        for user in std::mem::take(&mut self.flushed) {
            let Some(state) = self.users.get_mut(&user) else { continue };
            if state.flushed {
                state.flushed = false;
                state.rank(n, &mut top);
                Self::publish(&mut self.users, user, &mut top, &mut emit);
            }
        }
        // A large epoch must not pin its staging buffers for good.
        for staged in [&mut self.scores, &mut self.exclusions] {
            staged.clear();
            if staged.capacity() > 1 << 20 {
                staged.shrink_to(1 << 16);
            }
        }
    }

    /// Emits the change from `user`'s last top-N to `top` (which becomes the last).
    fn publish(users: &mut HashMap<u64, User>, user: u64, top: &mut Vec<Ranked>, emit: &mut impl FnMut(u64, Ranked, isize)) {
        let Some(state) = users.get_mut(&user) else { return };
        for (entry, diff) in difference(&state.top, top) {
            emit(user, entry, diff);
        }
        std::mem::swap(&mut state.top, top);
        if state.candidates.is_empty() && state.history.is_empty() {
            users.remove(&user);
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

    #[test]
    fn new_candidates_merge_in_order_and_zero_scores_leave() {
        let mut r = Recommender::default();
        step(&mut r, &[(1, 50, 4), (1, 10, 3)], &[(7, 1, 1)]);
        // Candidates on both sides of and between the existing ones; 10 drops to zero.
        let out = step(&mut r, &[(1, 5, 9), (1, 30, 6), (1, 60, 1), (1, 10, -3)], &[]);
        assert_eq!(out, vec![(7, (3, 10), -1), (7, (4, 50), -1), (7, (6, 30), 1), (7, (9, 5), 1)]);
        assert_eq!(r.users[&7].candidates, vec![(5, 9), (30, 6), (50, 4), (60, 1)]);
    }

    /// An epoch whose score changes are flushed part-way emits what an unflushed one does.
    #[test]
    fn flushed_score_changes_rank_like_unflushed_ones() {
        let run = |flush: bool| {
            let mut r = Recommender::default();
            step(&mut r, &[(1, 5, 10), (1, 6, 20), (2, 7, 30)], &[(7, 1, 1), (8, 1, 1), (8, 2, 1)]);
            r.neighbor_change(1, 5, 25);
            r.neighbor_change(1, 6, -20);
            if flush {
                r.flush_scores();
            }
            r.membership_change(7, 2, 1);
            let mut out = Vec::new();
            r.finish(2, |u, (Reverse(s), j), d| out.push((u, (s, j), d)));
            out.sort();
            (out, r.users.values().all(|user| !user.flushed), r.flushed.is_empty())
        };
        let flushed = run(true);
        assert_eq!(flushed, run(false));
        // User 8 is reached only by the flush (tracks 5 and 6); user 7 also by its history.
        assert!(flushed.0.contains(&(8, (35, 5), 1)) && flushed.0.contains(&(8, (20, 6), -1)), "{flushed:?}");
        assert!(flushed.1 && flushed.2);
    }

    #[test]
    fn zero_recommendations_rank_nothing() {
        let mut r = Recommender::default();
        r.neighbor_change(1, 5, 10);
        r.membership_change(7, 1, 1);
        let mut out = Vec::new();
        r.finish(0, |u, e, d| out.push((u, e, d)));
        assert!(out.is_empty());
    }
}
