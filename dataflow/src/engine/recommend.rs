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
//! `(track, score)` sorted by track, 16 bytes per candidate. An epoch's changes to the user
//! (sorted the same way) are applied in one forward walk over it: in place when they only
//! change scores, as a merge into a new vector when candidates enter or leave. The walk is
//! sequential on purpose: the candidates are cold in memory, and binary searches that each
//! missed the cache cost more than reading the whole vector.
//!
//! ## Ranking without reading every candidate
//!
//! Each user also keeps its `2·N` best eligible candidates (the *leaders*, best first) and a
//! *floor*: every eligible candidate that is not a leader ranks after it. After an epoch,
//! the new leaders are the unchanged leaders still eligible plus every changed candidate
//! (or one that left the history) that ranks above the floor; all others still rank after
//! it. If at least `N` remain, the first `N` are `R(u)`, found in `O(leaders + changes)`;
//! the list is cut back to `2·N`, its last entry becoming the floor. Otherwise (the best
//! scores fell below the floor), or when the epoch changed a large share of the user's
//! candidates, the user is ranked from all its candidates. After a million events about
//! 98 % of a 1 000-event epoch's touched users take the short path: similarities mostly drift
//! by little, so the old top `N` stays well above the `2·N`-th score.
//!
//! The alternative, a hash map plus an ordered set per user (`O(log n)` per change), was
//! measured first: after 1 M events a 1 000-event
//! epoch touches ~85 % of all users with ~13 changes each against ~150 candidates, so the
//! per-change pointer chasing cost more than a pass (30 % more CPU per epoch), and its
//! ~60 bytes per candidate made the users' candidates the largest state at 10 M events.
//!
//! ## Big epochs
//!
//! A big epoch (a first load, a catch-up) expands its neighbour changes into hundreds of
//! millions of `(user, candidate)` score changes. Once `SCORES_FLUSH_AT` of them are pending,
//! they are merged into their users' candidates at once (scores are sums, so merging in parts
//! changes nothing) and those users are ranked at the epoch's end like every touched user.

use std::cmp::Reverse;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::HashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Operator;

use super::stash::EpochStash;
use super::top_k::{consolidate, cut_leaders, difference, replace_tight, Ranked, BOTTOM};
use super::Epoch;

/// A user's leaders hold this many times `N` entries: enough that an epoch which lowers a few
/// of the best scores still leaves `N` leaders, so the user is ranked without a full pass.
const LEADERS_PER_RECOMMENDATION: usize = 2;

/// One user's state: candidate scores, history (the exclusions) and its best candidates.
struct User {
    /// The user's id.
    id: u64,
    /// `(track, score)` sorted by track, scores non-zero: every `j` in some `N(i)`, `i ∈ H(u)`.
    candidates: Vec<(u64, i64)>,
    /// `H(u)`, sorted: never recommended.
    history: Vec<u64>,
    /// The best eligible candidates (score > 0, not in `history`), best first. Every eligible
    /// candidate that is not a leader ranks after `floor`, so the first `N` leaders are
    /// `R(u)` (as last emitted) whenever there are `N` of them or `floor` is [`BOTTOM`].
    leaders: Vec<Ranked>,
    floor: Ranked,
    /// Whether a flush of the open epoch's score changes reached this user (its leaders are
    /// then stale until it is ranked again).
    flushed: bool,
}

/// The tracks that entered and left a user's history in an epoch.
#[derive(Default)]
struct Moved {
    entered: Vec<u64>,
    left: Vec<u64>,
}

/// Buffers reused from one user to the next.
#[derive(Default)]
struct Scratch {
    /// A user's merged candidates.
    merged: Vec<(u64, i64)>,
    /// `(track, new score)` of the candidates an epoch changed, sorted by track.
    changed: Vec<(u64, i64)>,
    /// Score changes to tracks that were not candidates.
    inserted: Vec<(u64, i64)>,
    /// Tracks that entered and left the user's history in the epoch.
    moved: Moved,
    /// The next leaders.
    leaders: Vec<Ranked>,
    /// `R(u)` before the epoch.
    before: Vec<Ranked>,
    /// A user's score changes plus those of its own history changes.
    own: Vec<(u64, i64)>,
    /// The score changes of a user's own history changes.
    extra: Vec<(u64, i64)>,
}

/// `a + b` into `out`, all three sorted by track with no zero: equal tracks summed, zero
/// sums dropped.
fn merge_sums(a: &[(u64, i64)], b: &[(u64, i64)], out: &mut Vec<(u64, i64)>) {
    out.clear();
    out.reserve(a.len() + b.len());
    let (mut a, mut b) = (a.iter().copied().peekable(), b.iter().copied().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(&(x, dx)), Some(&(y, dy))) if x == y => {
                a.next();
                b.next();
                (x, dx + dy)
            }
            (Some(&(x, _)), Some(&(y, _))) if y < x => b.next().unwrap_or((y, 0)),
            (Some(_), _) => a.next().unwrap_or_default(),
            (None, Some(_)) => b.next().unwrap_or_default(),
            (None, None) => return,
        };
        if next.1 != 0 {
            out.push(next);
        }
    }
}

impl User {
    fn new(id: u64) -> Self {
        User { id, candidates: Vec::new(), history: Vec::new(), leaders: Vec::new(), floor: BOTTOM, flushed: false }
    }

    /// The first `n` leaders: `R(u)`.
    fn top(&self, n: usize) -> &[Ranked] {
        &self.leaders[..n.min(self.leaders.len())]
    }

    /// Applies one epoch's history changes (`(track, ±1)`, sorted, consolidated), listing
    /// the tracks that entered and left in `moved`.
    fn change_history(&mut self, changes: &[((u32, u64), isize)], moved: &mut Moved) {
        moved.entered.clear();
        moved.left.clear();
        for &((_, track), diff) in changes {
            match (self.history.binary_search(&track), diff > 0) {
                (Err(at), true) => {
                    self.history.insert(at, track);
                    moved.entered.push(track);
                }
                (Ok(at), false) => {
                    self.history.remove(at);
                    moved.left.push(track);
                }
                // A complete epoch adds only absent members and removes only present ones.
                _ => debug_assert!(false, "history change {track} {diff} against {:?}", self.history),
            }
        }
    }

    /// Adds one epoch's score changes (`(track, Δscore)`, sorted by track, consolidated) to
    /// the candidates. Few changes are applied in place and listed with their new scores in
    /// `scratch.changed` (true is returned); many are merged in one pass into a new vector
    /// and not listed (false: the caller ranks the user from scratch).
    fn change_scores(&mut self, changes: &[(u64, i64)], scratch: &mut Scratch) -> bool {
        let Scratch { merged, changed, inserted, .. } = scratch;
        changed.clear();
        inserted.clear();
        let sparse = changes.len() * 2 <= self.candidates.len();
        if sparse {
            // A forward walk, not a binary search per change: the candidates are cold in
            // memory, and a sequential read is prefetched where scattered probes each miss.
            let mut zeros = false;
            let mut at = 0;
            for &(track, delta) in changes {
                while self.candidates.get(at).is_some_and(|&(item, _)| item < track) {
                    at += 1;
                }
                match self.candidates.get_mut(at) {
                    Some((item, score)) if *item == track => {
                        *score += delta;
                        zeros |= *score == 0;
                        changed.push((track, *score));
                        at += 1;
                    }
                    _ => {
                        inserted.push((track, delta));
                        changed.push((track, delta));
                    }
                }
            }
            if inserted.is_empty() && !zeros {
                return true;
            }
        }
        // Merge: the inserted candidates (sparse) or all changes (dense); zeros leave.
        merged.clear();
        merged.reserve(self.candidates.len() + changes.len());
        let mut old = self.candidates.iter().copied().peekable();
        let mut offer = |track: u64, delta: i64| {
            while let Some(&(item, score)) = old.peek() {
                if item >= track {
                    break;
                }
                if score != 0 {
                    merged.push((item, score));
                }
                old.next();
            }
            let score = match old.peek() {
                Some(&(item, score)) if item == track => {
                    old.next();
                    score + delta
                }
                _ => delta,
            };
            if score != 0 {
                merged.push((track, score));
            }
        };
        if sparse {
            inserted.iter().for_each(|&(track, delta)| offer(track, delta));
        } else {
            changes.iter().for_each(|&(track, delta)| offer(track, delta));
        }
        old.filter(|&(_, score)| score != 0).for_each(|entry| merged.push(entry));
        replace_tight(&mut self.candidates, merged);
        sparse
    }

    /// Updates the leaders after the candidates in `changed` (`(track, new score)`, sorted by
    /// track) changed and tracks `moved` in or out of the history; `O(leaders + changes)`.
    /// Returns false if fewer than `n` leaders would remain above a floor that is not
    /// [`BOTTOM`]: the top `n` is then unknown without [`User::rank`].
    fn rerank(&mut self, n: usize, changed: &[(u64, i64)], moved: &Moved, next: &mut Vec<Ranked>) -> bool {
        let m = n * LEADERS_PER_RECOMMENDATION;
        if m == 0 {
            return true;
        }
        let (history, floor) = (&self.history, self.floor);
        let is_changed = |track: u64| changed.binary_search_by_key(&track, |&(item, _)| item).is_ok();
        let leads = |track: u64, score: i64| score > 0 && (Reverse(score), track) <= floor && history.binary_search(&track).is_err();
        next.clear();
        // Unchanged leaders keep their place unless they entered the history; every
        // changed candidate, or one that left the history, leads if it ranks above the floor.
        next.extend(self.leaders.iter().filter(|&&(_, track)| !is_changed(track) && !moved.entered.contains(&track)));
        next.extend(changed.iter().filter(|&&(track, score)| leads(track, score)).map(|&(track, score)| (Reverse(score), track)));
        for &track in moved.left.iter().filter(|&&track| !is_changed(track)) {
            if let Ok(at) = self.candidates.binary_search_by_key(&track, |&(item, _)| item) {
                let score = self.candidates[at].1;
                if leads(track, score) {
                    next.push((Reverse(score), track));
                }
            }
        }
        if next.len() < n && floor != BOTTOM {
            return false;
        }
        cut_leaders(next, m, &mut self.floor);
        self.leaders.clear();
        self.leaders.extend_from_slice(next);
        true
    }

    /// Ranks every candidate: the leaders become the best `LEADERS_PER_RECOMMENDATION · n`
    /// eligible ones. Only a candidate that beats the last leader pays for the history
    /// lookup (a cursor, both being sorted by track) and the ordered insert.
    fn rank(&mut self, n: usize) {
        let m = n * LEADERS_PER_RECOMMENDATION;
        self.leaders.clear();
        self.floor = BOTTOM;
        if m == 0 {
            return;
        }
        let mut history = self.history.iter().copied().peekable();
        for &(track, score) in &self.candidates {
            let entry = (Reverse(score), track);
            if score <= 0 || (self.leaders.len() == m && entry >= self.leaders[m - 1]) {
                continue;
            }
            while history.next_if(|&h| h < track).is_some() {}
            if history.peek() == Some(&track) {
                continue;
            }
            let at = self.leaders.partition_point(|e| *e < entry);
            self.leaders.insert(at, entry);
            self.leaders.truncate(m);
        }
        if self.leaders.len() == m {
            self.floor = self.leaders[m - 1];
        }
    }
}

/// A worker's state: its users, who of them has each track in their history, and the replica
/// of every neighbour list; plus the epoch's score and exclusion changes before they are
/// applied.
#[derive(Default)]
struct Recommender {
    /// The local index of each user of this worker, into `users`.
    index: HashMap<u64, u32>,
    users: Vec<User>,
    /// Per track, the local indexes of the users with it in their history.
    listeners: HashMap<u64, Vec<u32>>,
    neighbors: HashMap<u64, Vec<(u64, i64)>>,
    /// `(i, j, Δs)`: this epoch's neighbour changes not yet spread to the listeners of `i`,
    /// and how many score changes they make for each user (indexed like `users`) and in all.
    /// The `(user, j, Δs)` changes themselves are only ever written once, grouped by user
    /// ([`Recommender::group_scores`]): staging them first cost a write and a read of 24
    /// bytes each, millions per epoch from 10 000 events up.
    pending: Vec<(u64, u64, i64)>,
    counts: Vec<u32>,
    pending_scores: usize,
    /// Whether `grouped` holds the pending changes (grouped before the first membership
    /// change of the epoch, which alters the listeners they go to) and awaits `finish`.
    grouped_ready: bool,
    /// `((user index, track), ±1)`: history changes of this epoch, excluded from
    /// recommendations.
    exclusions: Vec<((u32, u64), isize)>,
    /// Users whose candidates a flush changed in this epoch, ranked again at its end.
    flushed: Vec<u32>,
    /// The pending score changes grouped by user: `grouped[starts[u]..starts[u + 1]]` are
    /// user `u`'s.
    grouped: Vec<(u64, i64)>,
    starts: Vec<usize>,
    /// How many times a touched user was ranked from its leaders, and from all candidates.
    reranks: u64,
    full_ranks: u64,
    /// `(user, candidate)` score changes spread in the open epoch (for [`super::work`]).
    score_updates: u64,
}

/// Pending score changes are merged into their users once this many pile up (64 MB to group
/// them): a big epoch (a first load, a catch-up) expands to hundreds of millions of them. The
/// crate's own tests flush after a few dozen, as [`super::similarity`]'s do.
const SCORES_FLUSH_AT: usize = if cfg!(test) { 64 } else { 1 << 22 };

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
        debug_assert!(!self.grouped_ready, "neighbour changes come before membership changes");
        let Recommender { listeners, counts, pending, pending_scores, users, score_updates, .. } = self;
        let listening = listeners.get(&i).map_or(&[][..], |users| users);
        if !listening.is_empty() {
            if counts.len() < users.len() {
                counts.resize(users.len(), 0);
            }
            for &user in listening {
                counts[user as usize] += 1;
            }
            pending.push((i, j, delta));
            *pending_scores += listening.len();
            *score_updates += listening.len() as u64;
        }
        if self.pending_scores >= SCORES_FLUSH_AT {
            self.flush_scores();
        }
    }

    /// Spreads the pending neighbour changes to the listeners, grouped by user (a counting
    /// sort: the counts were kept as they came, so one pass writes each change in its user's
    /// run, where a comparison sort of the epoch's changes cost a tenth of the engine's time),
    /// each user's sorted by track ([`Recommender::user_scores`] consolidates them). Nothing
    /// to do if they are grouped already.
    fn group_scores(&mut self) {
        if self.grouped_ready {
            debug_assert!(self.pending.is_empty());
            return;
        }
        let Recommender { listeners, counts, pending, pending_scores, starts, grouped, users, .. } = self;
        counts.resize(users.len(), 0);
        // `starts[u]` is where user `u`'s run begins; `counts[u]` becomes its next free slot.
        starts.clear();
        starts.push(0);
        for count in counts.iter_mut() {
            let start = *starts.last().unwrap_or(&0);
            starts.push(start + *count as usize);
            *count = start as u32;
        }
        grouped.clear();
        grouped.resize(*pending_scores, (0, 0));
        for &(i, j, delta) in pending.iter() {
            for &user in listeners.get(&i).map_or(&[][..], |users| users) {
                let at = &mut counts[user as usize];
                grouped[*at as usize] = (j, delta);
                *at += 1;
            }
        }
        counts.fill(0);
        pending.clear();
        *pending_scores = 0;
        self.grouped_ready = true;
        // The scatter keeps each user's changes in arrival order, which is by track when the
        // neighbour changes are applied by candidate (see `recommendations`).
        for user in 0..self.starts.len() - 1 {
            let run = &mut self.grouped[self.starts[user]..self.starts[user + 1]];
            if !run.is_sorted_by_key(|&(track, _)| track) {
                run.sort_unstable_by_key(|&(track, _)| track);
            }
        }
    }

    /// User `user`'s grouped score changes, consolidated (zeros dropped) in place.
    fn user_scores<'a>(grouped: &'a mut [(u64, i64)], starts: &[usize], user: usize) -> &'a [(u64, i64)] {
        let run = &mut grouped[starts[user]..starts[user + 1]];
        let mut write = 0;
        for read in 0..run.len() {
            if write > 0 && run[write - 1].0 == run[read].0 {
                run[write - 1].1 += run[read].1;
            } else {
                if write > 0 && run[write - 1].1 == 0 {
                    write -= 1;
                }
                run[write] = run[read];
                write += 1;
            }
        }
        if write > 0 && run[write - 1].1 == 0 {
            write -= 1;
        }
        &run[..write]
    }

    /// Merges the pending score changes into their users' candidates, leaving the ranking
    /// (and so the output) to `finish`: scores are sums, so the order of merging is free.
    fn flush_scores(&mut self) {
        self.group_scores();
        let mut scratch = Scratch::default();
        for user in 0..self.users.len() {
            let changes = Self::user_scores(&mut self.grouped, &self.starts, user);
            if changes.is_empty() {
                continue;
            }
            let state = &mut self.users[user];
            state.change_scores(changes, &mut scratch);
            if !state.flushed {
                state.flushed = true;
                self.flushed.push(user as u32);
            }
        }
        self.grouped_ready = false;
    }

    /// Step 2: `i` enters (`diff` 1) or leaves (`diff` -1) `H(user)`, with `N(i)` as it is
    /// after this epoch's neighbour changes.
    fn membership_change(&mut self, id: u64, i: u64, diff: isize) {
        // The pending neighbour changes go to the listeners before any of this epoch's
        // membership changes (`H_before · ΔN`).
        self.group_scores();
        let next = self.users.len() as u32;
        let user = *self.index.entry(id).or_insert(next);
        if user == next {
            self.users.push(User::new(id));
        }
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

    /// Step 3: applies the epoch's changes user by user (both grouped by user, so each
    /// user's state is visited once) and reports the changes of each touched user's top-N.
    fn finish(&mut self, n: usize, mut emit: impl FnMut(u64, Ranked, isize)) {
        self.group_scores();
        // Users that joined in this epoch's membership changes have no runs.
        let end = *self.starts.last().unwrap_or(&0);
        self.starts.resize(self.users.len() + 1, end);
        consolidate(&mut self.exclusions);
        let mut scratch = Scratch::default();
        let mut exclusions = &self.exclusions[..];
        let touched_before = self.reranks + self.full_ranks;
        for user in 0..self.users.len() {
            // The user's runs in both lists (exclusions are few: found by scanning).
            let (history_run, rest) = exclusions.split_at(exclusions.iter().take_while(|e| e.0 .0 as usize == user).count());
            exclusions = rest;
            let score_run = Self::user_scores(&mut self.grouped, &self.starts, user);
            if history_run.is_empty() && score_run.is_empty() {
                continue; // untouched, or reached by a flush only (below)
            }
            let state = &mut self.users[user];
            // ΔH · N_after: the user's own membership changes, added to its H_before · ΔN.
            let mut own = std::mem::take(&mut scratch.own);
            let changes = if history_run.is_empty() {
                score_run
            } else {
                // Sorted on their own and merged: the score run is sorted already.
                let extra = &mut scratch.extra;
                extra.clear();
                for &((_, i), diff) in history_run {
                    let list = self.neighbors.get(&i).map_or(&[][..], |list| list);
                    extra.extend(list.iter().map(|&(j, s)| (j, s * diff as i64)));
                }
                consolidate(extra);
                merge_sums(score_run, extra, &mut own);
                &own[..]
            };
            scratch.before.clear();
            scratch.before.extend_from_slice(state.top(n));
            state.change_history(history_run, &mut scratch.moved);
            let listed = state.change_scores(changes, &mut scratch);
            scratch.own = own;
            let Scratch { changed, moved, leaders, .. } = &mut scratch;
            if !state.flushed && listed && state.rerank(n, changed, moved, leaders) {
                self.reranks += 1;
            } else {
                state.rank(n);
                self.full_ranks += 1;
            }
            state.flushed = false;
            for (entry, diff) in difference(&scratch.before, state.top(n)) {
                emit(state.id, entry, diff);
            }
        }
        // Users only a flush reached: their candidates are merged, their ranking is not.
        for user in std::mem::take(&mut self.flushed) {
            let state = &mut self.users[user as usize];
            if state.flushed {
                state.flushed = false;
                scratch.before.clear();
                scratch.before.extend_from_slice(state.top(n));
                state.rank(n);
                self.full_ranks += 1;
                for (entry, diff) in difference(&scratch.before, state.top(n)) {
                    emit(state.id, entry, diff);
                }
            }
        }
        self.grouped_ready = false;
        super::work::add_recommend(std::mem::take(&mut self.score_updates), self.reranks + self.full_ranks - touched_before);
        // A large epoch must not pin its staging buffers for good.
        self.exclusions.clear();
        if self.exclusions.capacity() > 1 << 20 {
            self.exclusions.shrink_to(1 << 16);
        }
        if self.grouped.capacity() > 1 << 20 {
            self.grouped.shrink_to(1 << 16);
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
                let mut staged: EpochStash<_, Staged> = EpochStash::default();
                move |(members, members_frontier), (neighbors, neighbors_frontier), output| {
                    let port = output.output_index();
                    members.for_each(|cap, data| {
                        for (pair, time, diff) in data.drain(..) {
                            staged.stage(time, || cap.delayed(&time, port)).0.push((pair, diff));
                        }
                    });
                    neighbors.for_each(|cap, data| {
                        for ((i, (std::cmp::Reverse(s), j)), time, diff) in data.drain(..) {
                            // Keyed by candidate first: see below.
                            staged.stage(time, || cap.delayed(&time, port)).1.push(((j, i), s as isize * diff));
                        }
                    });
                    // Complete once both frontiers have passed it: until then it may still get changes.
                    let complete = |epoch: &Epoch| !members_frontier.less_equal(epoch) && !neighbors_frontier.less_equal(epoch);
                    while let Some((epoch, capability, (mut memberships, mut scores))) = staged.pop_complete(complete) {
                        consolidate(&mut scores);
                        consolidate(&mut memberships);
                        // In candidate order, so that each user's score changes are grouped
                        // sorted by track and need no sorting per user.
                        for &((j, i), delta) in &scores {
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
    use std::collections::BTreeMap;

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
        assert_eq!(r.users[r.index[&7] as usize].candidates, vec![(5, 9), (30, 6), (50, 4), (60, 1)]);
    }

    #[test]
    fn merged_sums_equal_a_consolidated_concatenation() {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..500 {
            let mut random = |len: usize| {
                let mut list: Vec<(u64, i64)> = (0..len).map(|_| (rng.random_range(0..30u64), rng.random_range(-3..=3i64))).collect();
                consolidate(&mut list);
                list
            };
            let (a, b) = (random(20), random(8));
            let mut want = [a.clone(), b.clone()].concat();
            consolidate(&mut want);
            let mut got = Vec::new();
            merge_sums(&a, &b, &mut got);
            assert_eq!(got, want, "{a:?} + {b:?}");
        }
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
            (out, r.users.iter().all(|user| !user.flushed), r.flushed.is_empty())
        };
        let flushed = run(true);
        assert_eq!(flushed, run(false));
        // User 8 is reached only by the flush (tracks 5 and 6); user 7 also by its history.
        assert!(flushed.0.contains(&(8, (35, 5), 1)) && flushed.0.contains(&(8, (20, 6), -1)), "{flushed:?}");
        assert!(flushed.1 && flushed.2);
    }

    /// Ranking from the leaders agrees with ranking every candidate, over random epochs of
    /// neighbour-list and history changes; both paths are taken.
    #[test]
    fn leaders_rank_like_a_full_pass() {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};
        let n = 3;
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut r = Recommender::default();
            let mut lists: BTreeMap<(u64, u64), i64> = BTreeMap::new();
            let mut members = std::collections::BTreeSet::new();
            let mut emitted = std::collections::BTreeSet::new();
            for epoch in 0..200 {
                // Big first epochs fill the lists; then a few changes per epoch, mostly small.
                let (list_changes, member_changes) = if epoch < 3 { (300, 60) } else { (rng.random_range(0..4), rng.random_range(0..3)) };
                for _ in 0..list_changes {
                    // Tracks 20..40 have no neighbours: a user taking them in or out of its
                    // history changes no score, only what may be recommended.
                    let (i, j) = (rng.random_range(0..20u64), rng.random_range(0..40u64));
                    let old = lists.get(&(i, j)).copied().unwrap_or(0);
                    let new = if rng.random_range(0..10) == 0 { 0 } else { (old + rng.random_range(-3..=3)).clamp(1, 30) };
                    if new == 0 {
                        lists.remove(&(i, j));
                    } else {
                        lists.insert((i, j), new);
                    }
                    if new != old {
                        r.neighbor_change(i, j, new - old);
                    }
                }
                for _ in 0..member_changes {
                    let (user, i) = (rng.random_range(0..15u64), rng.random_range(0..40u64));
                    let diff = if members.remove(&(user, i)) {
                        -1
                    } else {
                        members.insert((user, i));
                        1
                    };
                    r.membership_change(user, i, diff);
                }
                r.finish(n, |user, entry, diff| {
                    let changed = if diff > 0 { emitted.insert((user, entry)) } else { emitted.remove(&(user, entry)) };
                    assert!(changed, "seed {seed} epoch {epoch}: {user} {entry:?} {diff}");
                });
                // The definition, from the lists and histories as they now are.
                let mut expected = std::collections::BTreeSet::new();
                for user in 0..15u64 {
                    let history: Vec<u64> = members.range((user, 0)..(user + 1, 0)).map(|&(_, i)| i).collect();
                    let mut scores: BTreeMap<u64, i64> = BTreeMap::new();
                    for (&(i, j), &s) in &lists {
                        if history.contains(&i) && !history.contains(&j) {
                            *scores.entry(j).or_default() += s;
                        }
                    }
                    let mut ranked: Vec<Ranked> = scores.into_iter().map(|(j, s)| (Reverse(s), j)).collect();
                    ranked.sort();
                    expected.extend(ranked.into_iter().take(n).map(|entry| (user, entry)));
                }
                assert_eq!(emitted, expected, "seed {seed} epoch {epoch}");
            }
            assert!(r.reranks > 0 && r.full_ranks > 0, "seed {seed}: {} reranks, {} full ranks", r.reranks, r.full_ranks);
        }
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
