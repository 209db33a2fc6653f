//! Recommendations `R(u)` (SPEC §2 step 6): **refreshed on activity, exact at rest.** One
//! operator per worker owns its users (exchanged by user), keeps a replica of every neighbour
//! list (broadcast: they are small), and recomputes a user's list from `H(u)` and the replica
//! when the user is *refreshed*:
//!
//! ```text
//!  members (u, i) ±1, listened u ─── exchanged by user ──┐
//!  restored R(u) (a restart)     ─── exchanged by user ──┤
//!  N(i) lists (i, list)          ─── broadcast ──────────┼─► Recommend (per worker), per epoch:
//!  source epochs (listens,       ─── broadcast ──────────┘   1. N(i) changes → replica; each
//!   refresh all, restored)                                       track's watchers become stale
//!                                                             2. membership changes → H(u)
//!                                                             3. refresh every user that
//!                                                                listened, then stale users,
//!                                                                least recently refreshed
//!                                                                first, up to the budget
//!                                                             4. a refreshed user whose list
//!                                                                changed: -old row, +new row
//! ```
//!
//! ## Why refresh instead of maintaining every `R(u)`
//!
//! `score(u,j)` sums over `H(u)`, so a change of one popular track's `N(i)` reaches every
//! user holding `i`: at 10 M events, 96 % of 100 000 users in every 1 000-event epoch, and
//! 58–94 recommendation rows per event. SPEC §2 step 6 therefore stores `R(u)` as of the
//! user's last refresh. A refresh costs one user's `K·k` candidates (a thousand at the
//! defaults) whatever the size of the data: every user that listened is refreshed at its
//! epoch's end (the user who acts sees the newest model), and *stale* users — a list
//! `N(i)` of one of their tracks changed since their last refresh — in the background, at
//! most `M` per worker per epoch (`--refresh-idle`), more in epochs without listens, and all
//! of them in an epoch that asks for it (`--until-caught-up`'s last epoch, the file job's).
//!
//! ## Finding stale users: watchers, not an index
//!
//! An index of users by history track would mark every holder of `i` at each change of
//! `N(i)`: work per listen proportional to how many users hold a popular track, the fan-out
//! this design removes. Instead a refresh *registers* the user with each track of its
//! history (`K` pushes, tagged with the user's refresh count), and a change of `N(i)` drains
//! `i`'s registrations, marking those still current stale. Each registration is drained or
//! dropped at most once, so the work is `O(K)` per refresh, and a change of `N(i)` reaches
//! only the users refreshed since its previous change: a user that is stale already is not
//! visited again. `H(u)` changes only when `u` listens, and then `u` is refreshed and
//! registers its new history, so the registrations always name the tracks that matter.
//! Registrations of earlier refreshes are dropped when a track's list is compacted (each
//! time it doubles), so memory stays proportional to the users' histories.
//!
//! Stale users wait in an ordered set keyed by their last refresh epoch: its first entry is
//! the least recently refreshed, its size is the `stale users` metric.
//!
//! ## A refresh
//!
//! Tracks have dense per-worker slots, so the replica is a vector of lists of `(slot, s)` and
//! a user's history a sorted vector of slots. A refresh adds `s(i,j)` into a dense score
//! array for every `i ∈ H(u)`, `j ∈ N(i)`, clears the history's own slots (never
//! recommended), and keeps the best `N` of the touched slots with an insertion into a list of
//! `N`; then it clears the touched slots again. No sort, no hash per candidate.
//!
//! ## Restarts
//!
//! A restart rebuilds `H(u)` and the lists from the durable state, but not *when* each stored
//! `R(u)` was refreshed. So the source feeds the stored rows of `user_recommendations`
//! (each worker its share) in the rebuilding epoch that says `restored`: every user's stored
//! list becomes the loaded one, every user is stale, and nothing is refreshed in that epoch.
//! The background then refreshes them all, writing only the lists that differ: the tables are
//! exact at rest again, whatever `M` was before or is now.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::time::SystemTime;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concat, Operator};

use super::stash::EpochStash;
use super::Epoch;
use crate::tables::RankedList;

/// How many stale users a worker refreshes per epoch besides the users that listened
/// (`--refresh-idle`, SPEC §2 step 6 `M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefreshBudget {
    /// At most this many per worker in an epoch with listens; in an epoch without listens
    /// at most [`IDLE_REFRESH_FACTOR`] times as many, and at least [`IDLE_REFRESH_MIN`].
    Users(usize),
    /// Every stale user in every epoch: `R` then equals SPEC §2 after every epoch.
    All,
}

impl Default for RefreshBudget {
    fn default() -> Self {
        RefreshBudget::Users(1000)
    }
}

impl std::str::FromStr for RefreshBudget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(RefreshBudget::All),
            _ => text.parse().map(RefreshBudget::Users).map_err(|_| format!("expected a number of users or `all`, not `{text}`")),
        }
    }
}

impl std::fmt::Display for RefreshBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshBudget::Users(users) => write!(f, "{users}"),
            RefreshBudget::All => f.write_str("all"),
        }
    }
}

/// An epoch without listens refreshes up to this many times `M` stale users per worker...
pub const IDLE_REFRESH_FACTOR: usize = 8;
/// ...and at least this many (also with `M = 0`), so that tables at rest become exact soon.
pub const IDLE_REFRESH_MIN: usize = 4096;

impl RefreshBudget {
    /// Stale users one worker may refresh in an epoch, given whether it had listens.
    fn per_worker(self, busy: bool) -> usize {
        match self {
            RefreshBudget::All => usize::MAX,
            RefreshBudget::Users(m) if busy => m,
            RefreshBudget::Users(m) => m.saturating_mul(IDLE_REFRESH_FACTOR).max(IDLE_REFRESH_MIN),
        }
    }
}

/// What a source worker says about an epoch it closed; every worker sends one per epoch, and
/// every Recommend operator sees all of them (broadcast).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceEpoch {
    /// Listens the worker fed into the epoch: an epoch in which no worker fed any is idle.
    pub listens: u64,
    /// Refresh every stale user at the end of the epoch (the last epoch of a run that ends at
    /// rest: the file job, `--until-caught-up`).
    pub refresh_all: bool,
    /// The epoch ends a restart's rebuild and carries the stored `R(u)` rows.
    pub restored: bool,
}

/// One record of a user's input, exchanged by user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UserInput {
    /// `track ∈ H(user)`: diff +1 when it enters, -1 when it leaves.
    Member {
        /// The user.
        user: u64,
        /// The track.
        track: u64,
    },
    /// The user listened in this epoch.
    Listened {
        /// The user.
        user: u64,
    },
    /// The user's `R(u)` as stored in the sink (a restart).
    Restored {
        /// The user.
        user: u64,
        /// Its stored list.
        list: RankedList,
    },
}

impl UserInput {
    fn user(&self) -> u64 {
        match self {
            UserInput::Member { user, .. } | UserInput::Listened { user } | UserInput::Restored { user, .. } => *user,
        }
    }
}

/// One record every worker receives (broadcast).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Shared {
    /// `N(track)` is now `list` (empty: no list).
    Neighbors { track: u64, list: RankedList },
    /// A source worker closed the epoch.
    Source(SourceEpoch),
}

/// A track's slot: its id, its replica of `N(i)`, and the users watching it.
#[derive(Debug)]
struct Track {
    id: u64,
    /// `N(i)` as `(slot of j, s(i,j))`, in rank order.
    neighbors: Vec<(u32, i64)>,
    /// `(user, refresh count)`: users that had the track in their history when refreshed;
    /// an entry is current while the user's refresh count is unchanged.
    watchers: Vec<(u32, u32)>,
    /// `watchers` is compacted when it reaches this length.
    compact_at: u32,
}

const FIRST_COMPACTION: u32 = 8;

/// One user of this worker.
#[derive(Debug)]
struct User {
    id: u64,
    /// `H(u)` as track slots, sorted.
    history: Vec<u32>,
    /// `R(u)` as last emitted (what the sink holds).
    stored: RankedList,
    /// The epoch of its last refresh.
    refreshed: Epoch,
    /// Refreshes so far (wrapping): tags its watch registrations.
    refreshes: u32,
    /// Whether a list of its history changed since its last refresh.
    stale: bool,
    /// The last epoch it listened in, plus one (0: never).
    listened_before: Epoch,
    /// Wall-clock seconds of its last refresh since the operator started: the refresh age
    /// the metrics report.
    refreshed_second: u32,
}

/// The users refreshed in one epoch, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Users that listened in the epoch.
    pub active: u64,
    /// Stale users refreshed in the background.
    pub background: u64,
}

/// One worker's state.
#[derive(Default)]
struct Recommender {
    /// User id → index into `users`.
    index: HashMap<u64, u32>,
    users: Vec<User>,
    /// Track id → slot in `tracks`.
    slots: HashMap<u64, u32>,
    tracks: Vec<Track>,
    /// `(last refresh epoch, user)` of every stale user: the first is the least recently
    /// refreshed.
    stale: BTreeSet<(Epoch, u32)>,
    /// The users that listened in the epoch being applied.
    active: Vec<u32>,
    /// A refresh's score per slot (zero outside a refresh) and the slots it touched.
    scores: Vec<i64>,
    touched: Vec<u32>,
    /// When the operator started, and the seconds since then at the current epoch's end.
    started: Option<SystemTime>,
    second: u32,
}

impl Recommender {
    fn slot(&mut self, track: u64) -> u32 {
        let next = self.tracks.len() as u32;
        let slot = *self.slots.entry(track).or_insert(next);
        if slot == next {
            self.tracks.push(Track { id: track, neighbors: Vec::new(), watchers: Vec::new(), compact_at: FIRST_COMPACTION });
            self.scores.push(0);
        }
        slot
    }

    fn user(&mut self, id: u64) -> u32 {
        let next = self.users.len() as u32;
        let user = *self.index.entry(id).or_insert(next);
        if user == next {
            self.users.push(User {
                id,
                history: Vec::new(),
                stored: Vec::new(),
                refreshed: 0,
                refreshes: 0,
                stale: false,
                listened_before: 0,
                refreshed_second: 0,
            });
        }
        user
    }

    /// Step 1: `N(track)` is now `list`; the users watching it become stale.
    fn neighbors_changed(&mut self, track: u64, list: &RankedList) {
        let slot = self.slot(track) as usize;
        let mut neighbors = std::mem::take(&mut self.tracks[slot].neighbors);
        neighbors.clear();
        for &(j, s) in list {
            neighbors.push((self.slot(j), s));
        }
        let Recommender { tracks, users, stale, .. } = self;
        let track = &mut tracks[slot];
        track.neighbors = neighbors;
        track.compact_at = FIRST_COMPACTION;
        for (user, refreshes) in track.watchers.drain(..) {
            let state = &mut users[user as usize];
            if state.refreshes == refreshes && !state.stale {
                state.stale = true;
                stale.insert((state.refreshed, user));
            }
        }
    }

    /// Step 2: `track` enters (`diff` > 0) or leaves `H(user)`.
    fn membership_changed(&mut self, user: u64, track: u64, diff: isize) {
        let (user, slot) = (self.user(user), self.slot(track));
        let history = &mut self.users[user as usize].history;
        match (history.binary_search(&slot), diff > 0) {
            (Err(at), true) => history.insert(at, slot),
            (Ok(at), false) => {
                history.remove(at);
            }
            // A complete epoch adds only absent members and removes only present ones.
            _ => debug_assert!(false, "history change {track} {diff} against {history:?}"),
        }
    }

    fn listened(&mut self, user: u64, epoch: Epoch) {
        let user = self.user(user);
        let state = &mut self.users[user as usize];
        if state.listened_before <= epoch {
            state.listened_before = epoch + 1;
            self.active.push(user);
        }
    }

    /// A restart: every user's stored list becomes the loaded one (or none), and every user
    /// is stale, as nothing says when it was refreshed.
    fn restore(&mut self, restored: Vec<(u64, RankedList)>) {
        for state in &mut self.users {
            state.stored.clear();
        }
        for (user, list) in restored {
            let user = self.user(user);
            self.users[user as usize].stored = list;
        }
        for (user, state) in self.users.iter_mut().enumerate() {
            if !state.stale {
                state.stale = true;
                self.stale.insert((state.refreshed, user as u32));
            }
        }
        self.active.clear();
    }

    /// Step 3: refreshes the users that listened, then up to `budget` stale ones, least
    /// recently refreshed first; reports every changed list.
    fn refresh(&mut self, epoch: Epoch, n: usize, budget: usize, mut emit: impl FnMut(u64, &RankedList, isize)) -> Refreshed {
        let now = SystemTime::now();
        let started = *self.started.get_or_insert(now);
        self.second = now.duration_since(started).map_or(0, |d| d.as_secs() as u32);
        let mut refreshed = Refreshed::default();
        let mut list = RankedList::new();
        for user in std::mem::take(&mut self.active) {
            self.refresh_user(user, epoch, n, &mut list, &mut emit);
            refreshed.active += 1;
        }
        while (refreshed.background as usize) < budget {
            let Some((_, user)) = self.stale.first().copied() else { break };
            self.refresh_user(user, epoch, n, &mut list, &mut emit);
            refreshed.background += 1;
        }
        refreshed
    }

    /// Recomputes `R(user)` from its history and the replica, emits the change of its row,
    /// and registers it with its history's tracks.
    fn refresh_user(&mut self, user: u32, epoch: Epoch, n: usize, list: &mut RankedList, emit: &mut impl FnMut(u64, &RankedList, isize)) {
        let Recommender { users, tracks, stale, scores, touched, second, .. } = self;
        let state = &mut users[user as usize];
        // Σ s(i,j) over i ∈ H(u), j ∈ N(i); then the history's own tracks leave.
        touched.clear();
        for &i in &state.history {
            for &(j, s) in &tracks[i as usize].neighbors {
                let score = &mut scores[j as usize];
                if *score == 0 {
                    touched.push(j);
                }
                *score += s;
            }
        }
        for &i in &state.history {
            scores[i as usize] = 0;
        }
        // The best n, ties to the smaller track: an insertion into a list of at most n. A
        // candidate's id (a cache miss in `tracks`) is read only when its score can enter.
        list.clear();
        for &j in touched.iter() {
            let score = std::mem::take(&mut scores[j as usize]);
            if score <= 0 {
                continue; // a history track (scores are sums of s > 0)
            }
            if list.len() == n && list.last().is_none_or(|&(_, last)| score < last) {
                continue;
            }
            let entry = (Reverse(score), tracks[j as usize].id);
            if list.len() == n && list.last().is_none_or(|&(id, s)| entry >= (Reverse(s), id)) {
                continue;
            }
            let at = list.partition_point(|&(id, s)| (Reverse(s), id) < entry);
            if list.len() == n {
                list.pop();
            }
            list.insert(at, (entry.1, score));
        }
        if *list != state.stored {
            if !state.stored.is_empty() {
                emit(state.id, &state.stored, -1);
            }
            if !list.is_empty() {
                emit(state.id, list, 1);
            }
            state.stored.clone_from(list);
        }
        if state.stale {
            stale.remove(&(state.refreshed, user));
            state.stale = false;
        }
        state.refreshed = epoch;
        state.refreshed_second = *second;
        state.refreshes = state.refreshes.wrapping_add(1);
        let refreshes = state.refreshes;
        let history = std::mem::take(&mut state.history);
        for &i in &history {
            let track = &mut tracks[i as usize];
            track.watchers.push((user, refreshes));
            if track.watchers.len() as u32 >= track.compact_at {
                // Drop registrations of earlier refreshes and of users stale already.
                track.watchers.retain(|&(u, r)| u == user || (users[u as usize].refreshes == r && !users[u as usize].stale));
                track.compact_at = (2 * track.watchers.len() as u32).max(FIRST_COMPACTION);
            }
        }
        users[user as usize].history = history;
    }

    /// Stale users and the wall-clock time of the oldest one's last refresh (before any
    /// refresh: when the operator started).
    fn staleness(&self) -> (u64, Option<SystemTime>) {
        let started = self.started.unwrap_or_else(SystemTime::now);
        let oldest = self
            .stale
            .first()
            .map(|&(_, user)| started + std::time::Duration::from_secs(self.users[user as usize].refreshed_second.into()));
        (self.stale.len() as u64, oldest)
    }
}

impl Recommender {
    /// Steps 1–4 for one complete epoch: its list, membership and listen changes, then the
    /// refreshes (none in an epoch that carries a restart's stored lists).
    fn apply(
        &mut self,
        epoch: Epoch,
        staged: Staged,
        n: usize,
        budget: RefreshBudget,
        emit: impl FnMut(u64, &RankedList, isize),
    ) -> Refreshed {
        let Staged { mut members, listened, restored, mut neighbors, sources } = staged;
        // Per track the new list if there is one, else the empty one.
        neighbors.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        neighbors.dedup_by_key(|(track, _)| *track);
        for (track, list) in &neighbors {
            self.neighbors_changed(*track, list);
        }
        super::sorted::consolidate(&mut members);
        for &((user, track), diff) in &members {
            self.membership_changed(user, track, diff);
        }
        for user in listened {
            self.listened(user, epoch);
        }
        if sources.iter().any(|s| s.restored) {
            self.restore(restored);
            return Refreshed::default();
        }
        let busy = sources.iter().any(|s| s.listens > 0);
        let budget = if sources.iter().any(|s| s.refresh_all) { usize::MAX } else { budget.per_worker(busy) };
        self.refresh(epoch, n, budget, emit)
    }
}

/// The data of one epoch, staged until it is complete.
#[derive(Default)]
struct Staged {
    members: Vec<((u64, u64), isize)>,
    listened: Vec<u64>,
    restored: Vec<(u64, RankedList)>,
    neighbors: Vec<(u64, RankedList)>,
    sources: Vec<SourceEpoch>,
}

/// `R(u)` as stored: per user `(user, list)`, from the users' inputs (history changes,
/// listens, restored lists), the neighbour lists `(i, list)` and the sources' epochs;
/// refreshed as [`RefreshBudget`] says. See the module docs.
pub fn recommendations<'scope>(
    users: VecCollection<'scope, Epoch, UserInput>,
    neighbor_lists: VecCollection<'scope, Epoch, (u64, RankedList)>,
    sources: VecCollection<'scope, Epoch, SourceEpoch>,
    n: usize,
    budget: RefreshBudget,
) -> VecCollection<'scope, Epoch, (u64, RankedList)> {
    // A retracted list is only news when no new one replaces it: sent as an empty list, which
    // a new one (later in the same epoch's records) overrides.
    let shared = neighbor_lists
        .inner
        .map(|((track, list), time, diff)| (Shared::Neighbors { track, list: if diff > 0 { list } else { Vec::new() } }, time, diff))
        .concat(sources.inner.map(|(source, time, diff)| (Shared::Source(source), time, diff)))
        .broadcast();
    let by_user = Exchange::new(|(input, _time, _diff): &(UserInput, Epoch, isize)| input.user().hashed());
    let worker = users.inner.scope().index();
    users
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<((u64, RankedList), Epoch, isize)>>, _, _, _, _>(
            shared,
            by_user,
            Pipeline,
            "Recommend",
            move |_capability, _info| {
                let mut state = Recommender::default();
                let mut staged: EpochStash<_, Staged> = EpochStash::default();
                move |(users, users_frontier), (shared, shared_frontier), output| {
                    let port = output.output_index();
                    users.for_each(|cap, data| {
                        for (input, time, diff) in data.drain(..) {
                            let epoch = staged.stage(time, || cap.delayed(&time, port));
                            match input {
                                UserInput::Member { user, track } => epoch.members.push(((user, track), diff)),
                                UserInput::Listened { user } => epoch.listened.push(user),
                                UserInput::Restored { user, list } => epoch.restored.push((user, list)),
                            }
                        }
                    });
                    shared.for_each(|cap, data| {
                        for (record, time, diff) in data.drain(..) {
                            let epoch = staged.stage(time, || cap.delayed(&time, port));
                            match record {
                                Shared::Neighbors { track, list } => epoch.neighbors.push((track, list)),
                                Shared::Source(source) => {
                                    debug_assert!(diff > 0);
                                    epoch.sources.push(source);
                                }
                            }
                        }
                    });
                    // Complete once both frontiers have passed it: until then it may still get changes.
                    let complete = |epoch: &Epoch| !users_frontier.less_equal(epoch) && !shared_frontier.less_equal(epoch);
                    while let Some((epoch, capability, staged)) = staged.pop_complete(complete) {
                        let mut session = output.session(&capability);
                        let refreshed = state.apply(epoch, staged, n, budget, |user, list, diff| {
                            session.give(((user, list.clone()), epoch, diff));
                        });
                        let (stale, oldest) = state.staleness();
                        super::work::add_refresh(worker, refreshed, stale, oldest);
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests;
