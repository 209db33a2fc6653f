//! Co-listening counts `c(i,j)` and similarities `s(i,j)` (SPEC §2 steps 3–4), maintained by
//! one operator per worker that owns its tracks' partner counts and sees every `q(n)` change.
//!
//! ```text
//!  pair changes (i, j) ±1, both directions ── exchanged by i ──┐
//!  (History emits them as a track enters or leaves H(u))       ├─► Similarity (per worker)
//!  q(n(t)) changes, floors of N(t) ────────────── broadcast ───┘    per local track i: its
//!  (only where the rounded count changed)                           partners j with c(i,j)
//!                                                                   ─► s changes N must see,
//!                                                                      rescales of N(i),
//!                                                                      c(i,j) changes (i < j)
//! ```
//!
//! ## Rounded counts: work only where `q` changes
//!
//! SPEC §2 step 4 scores `q(c)`, `q(n(i))`, `q(n(j))`: each count rounded down to `B`
//! significant bits ([`encore_core::round_count`]). The operator turns that into less work:
//!
//! * `n` arrives already rounded, and only when `q(n)` changed: upstream, the `count_total`'s
//!   retraction and assertion of the same rounded value cancel before the broadcast. So a
//!   first listen that leaves `q(n(i))` alone costs O(1) and no pair of `i` is visited. Only a
//!   change of `q(n(i))` rescores every pair of `i` (below), and `q(n)` changes `2^(B−1)` times
//!   per doubling of `n`: the rescore's cost, `O(partners of i)` with at most `(K−1)·n(i)`
//!   partners, is spread over the `n(i)/2^(B−1)` listens between two changes, `O(K·2^B)` per
//!   listen whatever the data's size. (`B = 0` is the exact cosine: every change rescores.)
//! * A change of `c(i,j)` is applied to the pair's count in O(1); it is scored only when
//!   `q(c)` or the side of `C` changed (the exact `c` decides `c ≥ C`), and emitted only when
//!   `s` changed. Any change that leaves `s` alone produces no record, hence no work in the
//!   neighbour lists and recommendations downstream.
//!
//! ## Why not `count_total` and two joins
//!
//! The differential plan (self-join of the histories → `count_total` → join with `n(i)` →
//! join with `n(j)`) arranges every pair with its time and diff: about 40 bytes for each of
//! the 52 M pairs with `c ≥ 1` at 10 M events, plus the batcher's sorted runs of the ~120 M
//! pair updates of a big epoch and the two join arrangements of the pairs with `c ≥ C`.
//! Measured with heaptrack, those were the largest memory of the engine. Here each track owns
//! one vector of `(partner, count)` sorted by partner, 8 bytes per entry: partners are
//! interned per worker as `u32` indices and counts are `u32` (a co-listening count is at most
//! the number of users). Each pair is kept on both its tracks' workers (16 bytes a pair),
//! which is what lets a change of `n(j)` reach every `s(·,j)` without a second exchange.
//!
//! ## Applying an epoch
//!
//! Pair changes are appended to one buffer per worker as they arrive, once nothing of an
//! earlier epoch can still arrive on either input (until then they are staged, and staged
//! ones go first when the epoch opens: each user's changes must be counted in the order
//! History made them, or a flush between a user's `+1` and `-1` of one pair would take its
//! count below zero). Applying each on arrival to its
//! track's vector cost a cache miss per change (the hottest instruction of a 10 M-event
//! load); the buffer is sorted in bulk instead, so each track is visited once per sort. When the epoch is complete
//! (both inputs' frontiers have passed it), the buffer is sorted and consolidated, and every
//! track in it turns its run of changes into `(partner, c before, c after)`. Where they are
//! few against its entries (one per 8), each is found by a binary search, the run's searches
//! advancing in lockstep so that their cache misses overlap, and the entries change in place
//! with bulk moves; otherwise by one galloping merge ([`partners`] has the measurements). An
//! epoch bigger
//! than the buffer (`FLUSH_AT` changes, 48 MB) merges the full buffer into its tracks early,
//! after keeping a copy of each such track's entries as they were at the epoch's start, and
//! compares with that copy at the end. Untouched entries are never visited, except where
//! `n(i)` changed: then every `s(i,·)` is recomputed, which is the work itself.
//!
//! ## Who sends what
//!
//! `s(i,j)` depends on `c(i,j)`, `n(i)` and `n(j)`. Both workers holding the pair know all
//! three (counts are stored both ways, `n` is replicated); each sends only what the lists
//! of its own tracks cannot learn otherwise ([`super::neighbours`] has the reasons):
//!
//! * `c(i,j)` changed: `i`'s worker sends the new `s(i,j)` to `N(i)` (and `j`'s sends
//!   `s(j,i)` to `N(j)`), where the list must see it;
//! * `q(n(i))` changed: `i`'s worker sends `N(i)` one `Rescale`. If it rose, every `s(·,i)`
//!   fell, and a falling `s` cannot pass a floor: `i`'s worker sends the new `s(j,i)` to the
//!   lists `N(j)` that `i` leads, found in an index of them (fed back with the floors), and
//!   reads no other partner. If it fell, it visits all of `i`'s partners `j` (the
//!   `O(partners)` work that rounding spreads out), sending `s(j,i)` to `N(j)` only where `i`
//!   led `N(j)` or now scores above its floor;
//! * `c(i,j)` once per pair, from the worker of `min(i,j)`, when co-listens are wanted.
//!
//! "Where the list must see it" is decided from the floors of every list, which the
//! neighbours operator feeds back to every worker one epoch later. The output is one plain
//! stream: per directed pair its new `s`, per track whose `q(n)` changed a `Rescale`, and
//! the updates of `c` per pair `a < b` as a differential collection's.

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::Hashable;
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

mod partners;

use super::history::PairChange;
use super::sorted::consolidate;
use super::stash::EpochStash;
use super::Epoch;
use partners::{Delta, Entry, Partners};

/// A record of the operator's output, at the epoch of its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PairRecord {
    /// `N(key)` must see that `s(key, item)` is now `score` (0: no similarity): `item` was
    /// one of its leaders, or now scores above its floor ([`super::neighbours`]).
    Score {
        /// The track whose neighbour `item` may be.
        key: u64,
        /// The other track.
        item: u64,
        /// `s(key, item)` after the epoch.
        score: i64,
    },
    /// `q(n(key))` changed from `from` to `to` in the epoch: every `s(key, ·)` changed by one
    /// factor, so `N(key)` rescores its leaders and scales its floor.
    Rescale {
        /// The track.
        key: u64,
        /// `q(n(key))` before the epoch.
        from: u64,
        /// `q(n(key))` after it.
        to: u64,
    },
    /// `c(a, b) = count` asserted (`diff` 1) or retracted (`diff` -1), `a < b`, `count ≥ 1`:
    /// a differential collection's update.
    CoListen {
        /// The smaller track.
        a: u64,
        /// The larger track.
        b: u64,
        /// Users with both in their history.
        count: u64,
        /// +1 or -1.
        diff: isize,
    },
}

impl PairRecord {
    /// The track whose neighbour list the record is for (none for a `c` update).
    pub fn key(&self) -> Option<u64> {
        match *self {
            PairRecord::Score { key, .. } | PairRecord::Rescale { key, .. } => Some(key),
            PairRecord::CoListen { .. } => None,
        }
    }
}

/// How a pair is scored: SPEC §2 step 4's `C`, `P` and `B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scoring {
    /// `C`: the exact `c(i,j)` must be at least this for a similarity.
    pub min_co: u64,
    /// `P`: decimal digits of a score.
    pub precision: u32,
    /// `B`: significant bits of the counts in the cosine (0: exact).
    pub count_bits: u32,
}

impl Scoring {
    /// `q(c)` where `c` earns a similarity (`c ≥ C`, `c > 0`), else `None`: two counts with the
    /// same value here give the same `s` for the same `q(n)`s.
    fn scored_count(&self, count: u32) -> Option<u64> {
        let count = u64::from(count);
        (count > 0 && count >= self.min_co).then(|| encore_core::round_count(count, self.count_bits))
    }

    /// `s` from a count and two rounded `n`s: 0 where `c < C` or the cosine rounds to 0.
    fn score(&self, count: u32, rounded_n_i: u64, rounded_n_j: u64) -> i64 {
        match self.scored_count(count) {
            Some(rounded) => encore_core::cosine_units(rounded, rounded_n_i, rounded_n_j, self.precision).unwrap_or(0),
            None => 0,
        }
    }
}

/// Buffered pair changes are sorted and merged into their tracks once this many pile up. The
/// crate's own tests flush after a few dozen, so that every test with epochs also runs the
/// early-flush path, which otherwise only epochs of millions of events reach.
const FLUSH_AT: usize = if cfg!(test) { 64 } else { 1 << 22 };

/// A worker's state: its tracks' partners, `q(n)` and the neighbour-list floor of every
/// track, and the open epoch's changes. Shared with the worker's [`super::neighbours`]
/// operator, which reads the partners and `q(n)` after an epoch is closed.
pub(super) struct Similarity {
    scoring: Scoring,
    emit_co_listens: bool,
    /// Track id of each interned index, and the reverse.
    ids: Vec<u64>,
    index: HashMap<u64, u32>,
    /// What every worker knows of every track, by index (one cache line visited per partner
    /// where four arrays cost four).
    replica: Vec<Replica>,
    /// Indices whose `q(n)` changed in the open epoch.
    changed_n: Vec<u32>,
    /// Per local track, the tracks whose neighbour lists it leads, as of the last complete
    /// epoch (fed back with the floors): where a rise of its `q(n)` must be sent.
    leads: HashMap<u32, Vec<u32>>,
    /// The earliest epoch the neighbours operator may still read this state for: an epoch
    /// opens (and may merge its changes into the partners early) only from there on.
    pub(super) neighbours_frontier: Epoch,
    /// This worker's tracks (those that hash here), by index.
    tracks: HashMap<u32, Partners>,
    /// The open epoch's pair changes not merged yet, appended as they arrive: sorting them
    /// in bulk visits each track once, where applying each on arrival cost a cache miss.
    buffer: Vec<Delta>,
    /// Local tracks a full buffer was merged into in the open epoch.
    flushed: Vec<u32>,
    /// Local tracks closed by the last epoch (reused).
    closed: Vec<u32>,
    scratch: Vec<Entry>,
    positions: Vec<u32>,
    changes: Vec<(u32, u32, u32)>,
    /// Partners visited because an `n` changed, since the start: the work that rounding and
    /// the leaders' index save.
    rescored_pairs: std::cell::Cell<u64>,
    /// Pairs whose `s` changed, since the start.
    changed_pairs: std::cell::Cell<u64>,
    /// Both counters as last reported to [`super::work`].
    reported: (u64, u64),
}

/// What every worker knows of a track.
#[derive(Clone, Copy, Debug, Default)]
struct Replica {
    /// `q(n)` as of the last complete epoch, and after the open one.
    n: u64,
    n_next: u64,
    /// Whether `q(n)` changes in the open epoch.
    changed: bool,
    /// The floor of the track's `N`, as of the last complete epoch: every partner that is
    /// not one of its leaders scores at most this ([`super::neighbours`]). A change of
    /// `s(t, ·)` that stays at or below it is not sent.
    floor: i64,
}

/// The state of one worker's Similarity and neighbours operators.
pub(super) type Shared = Rc<RefCell<Similarity>>;

impl Similarity {
    pub(super) fn new(scoring: Scoring, emit_co_listens: bool) -> Self {
        Similarity {
            scoring,
            emit_co_listens,
            ids: Vec::new(),
            index: HashMap::default(),
            replica: Vec::new(),
            changed_n: Vec::new(),
            leads: HashMap::default(),
            neighbours_frontier: 0,
            tracks: HashMap::default(),
            buffer: Vec::new(),
            flushed: Vec::new(),
            closed: Vec::new(),
            scratch: Vec::new(),
            positions: Vec::new(),
            changes: Vec::new(),
            rescored_pairs: std::cell::Cell::new(0),
            changed_pairs: std::cell::Cell::new(0),
            reported: (0, 0),
        }
    }

    pub(super) fn intern(&mut self, track: u64) -> u32 {
        *self.index.entry(track).or_insert_with(|| {
            let at = u32::try_from(self.ids.len()).expect("fewer than 2^32 distinct tracks");
            self.ids.push(track);
            self.replica.push(Replica::default());
            at
        })
    }

    /// The id of an interned track.
    pub(super) fn id(&self, at: u32) -> u64 {
        self.ids[at as usize]
    }

    /// `s(key, item)` after the last closed epoch (`key` local).
    pub(super) fn score_of(&self, key: u32, item: u32) -> i64 {
        let Some(partners) = self.tracks.get(&key) else { return 0 };
        match partners.entries.binary_search_by_key(&item, |e| e.partner) {
            Ok(at) => self.scoring.score(partners.entries[at].count, self.replica[key as usize].n, self.replica[item as usize].n),
            Err(_) => 0,
        }
    }

    /// Every partner of `key` (local) with `s > 0` after the last closed epoch, as
    /// `(index, id, s)`.
    pub(super) fn scores_of(&self, key: u32, mut each: impl FnMut(u32, u64, i64)) {
        let Some(partners) = self.tracks.get(&key) else { return };
        let n_key = self.replica[key as usize].n;
        for entry in &partners.entries {
            let score = self.scoring.score(entry.count, n_key, self.replica[entry.partner as usize].n);
            if score > 0 {
                each(entry.partner, self.ids[entry.partner as usize], score);
            }
        }
    }

    /// `c(track, partner)` changes by `delta` in the open epoch (`track` is local).
    pub(super) fn pair(&mut self, track: u64, partner: u64, delta: i32) {
        let (track, partner) = (self.intern(track), self.intern(partner));
        self.buffer.push(((track, partner), delta));
        if self.buffer.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Merges the buffered changes into their tracks (an epoch bigger than the buffer).
    fn flush(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        consolidate(&mut buffer);
        for run in buffer.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            let track = run[0].0 .0;
            let partners = self.tracks.entry(track).or_default();
            if partners.before.is_none() {
                self.flushed.push(track);
            }
            partners.absorb(run, &mut self.scratch);
        }
        buffer.clear();
        self.buffer = buffer;
    }

    /// A `count_total` update of `q(n(track))` in the open epoch.
    pub(super) fn count(&mut self, track: u64, n: isize, diff: isize) {
        let at = self.intern(track) as usize;
        if !self.replica[at].changed {
            self.replica[at].changed = true;
            self.changed_n.push(at as u32);
            self.replica[at].n_next = 0; // a retraction without an assertion: n fell to zero
        }
        if diff > 0 {
            self.replica[at].n_next = n as u64;
        }
    }

    /// The floor of `N(track)` after the last complete epoch.
    pub(super) fn set_floor(&mut self, track: u64, floor: i64) {
        let at = self.intern(track) as usize;
        self.replica[at].floor = floor;
    }

    /// `leader` joined or left the leaders of `list` in the last complete epoch. Kept for local
    /// leaders only: a leader has `list` as a partner, so a local one has partners here.
    pub(super) fn set_leads(&mut self, leader: u64, list: u64, leads: bool) {
        let (leader, list) = (self.intern(leader), self.intern(list));
        if leads {
            if self.tracks.contains_key(&leader) {
                self.leads.entry(leader).or_default().push(list);
            }
        } else if let Some(lists) = self.leads.get_mut(&leader) {
            if let Some(at) = lists.iter().position(|&l| l == list) {
                lists.swap_remove(at);
            }
            if lists.is_empty() {
                self.leads.remove(&leader);
            }
        }
    }

    /// The floor `N(t)` will have after the open epoch at least: scaled with `q(n(t))`
    /// where that changed, as the neighbours operator scales it ([`super::neighbours::scaled_floor`]).
    fn floor_after(&self, t: usize) -> i64 {
        if self.replica[t].changed {
            super::neighbours::scaled_floor(self.replica[t].floor, self.replica[t].n, self.replica[t].n_next)
        } else {
            self.replica[t].floor
        }
    }

    /// Whether a change of `s(key, ·)` from `old` to `new` must reach `N(key)`: the item was
    /// one of its leaders (above the floor), or will be.
    fn matters(&self, key: usize, old: i64, new: i64) -> bool {
        old > self.replica[key].floor || new > self.floor_after(key)
    }

    /// Closes the open epoch: emits what changed through `emit`.
    pub(super) fn finish(&mut self, mut emit: impl FnMut(PairRecord)) {
        // A retraction and an assertion of the same q(n) that reached here in different
        // batches (upstream cancels those it sees together): not a change, nothing to rescore.
        let replica = &mut self.replica;
        self.changed_n.retain(|&at| {
            let track = &mut replica[at as usize];
            track.changed = track.n != track.n_next;
            track.changed
        });
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut closed = std::mem::take(&mut self.closed);
        consolidate(&mut buffer);
        for run in buffer.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            self.close(run[0].0 .0, run, &mut emit);
            closed.push(run[0].0 .0);
        }
        for track in std::mem::take(&mut self.flushed) {
            if self.tracks.get(&track).is_some_and(|partners| partners.before.is_some()) {
                self.close(track, &[], &mut emit);
                closed.push(track);
            }
        }
        closed.sort_unstable();
        // Local tracks whose n changed without any count change.
        for at in 0..self.changed_n.len() {
            let track = self.changed_n[at];
            if closed.binary_search(&track).is_err() {
                if let Some(partners) = self.tracks.get_mut(&track) {
                    let entries = std::mem::take(&mut partners.entries);
                    self.rescale(track, &entries, &[], &mut emit);
                    self.tracks.get_mut(&track).expect("present").entries = entries;
                }
            }
        }
        for &at in &self.changed_n {
            let at = at as usize;
            self.replica[at].n = self.replica[at].n_next;
            self.replica[at].changed = false;
        }
        self.changed_n.clear();
        closed.clear();
        self.closed = closed;
        buffer.clear();
        if buffer.capacity() > FLUSH_AT / 16 {
            buffer = Vec::new(); // a big epoch's buffer is not kept for small ones
        }
        self.buffer = buffer;
        let counts = (self.rescored_pairs.get(), self.changed_pairs.get());
        super::work::add_similarity(counts.0 - self.reported.0, counts.1 - self.reported.1);
        self.reported = counts;
    }

    /// Ends the open epoch for one local track (`run`: its last changes, sorted).
    fn close(&mut self, track: u32, run: &[Delta], emit: &mut impl FnMut(PairRecord)) {
        let mut partners = self.tracks.remove(&track).unwrap_or_default();
        let mut changes = std::mem::take(&mut self.changes);
        partners.close(run, &mut self.scratch, &mut self.positions, &mut changes);
        for &(partner, before, after) in &changes {
            self.count_changed(track, partner, before, after, emit);
        }
        if self.replica[track as usize].changed {
            self.rescale(track, &partners.entries, &changes, emit);
        }
        self.changes = changes;
        if !partners.entries.is_empty() {
            self.tracks.insert(track, partners);
        }
    }

    /// `c(track, partner)` went from `before` to `after`: the change of `s(track, partner)`
    /// for `N(track)` (the partner's worker sends the other direction from its own copy of
    /// the count), and of `c` once, from the smaller track's worker.
    fn count_changed(&self, track: u32, partner: u32, before: u32, after: u32, emit: &mut impl FnMut(PairRecord)) {
        let (t, p) = (track as usize, partner as usize);
        let (i, j) = (self.ids[t], self.ids[p]);
        // Same q(n)s and the same rounded count: the same s, no cosine to evaluate.
        let rescored =
            self.replica[t].changed || self.replica[p].changed || self.scoring.scored_count(before) != self.scoring.scored_count(after);
        if rescored {
            let old = self.scoring.score(before, self.replica[t].n, self.replica[p].n);
            let new = self.scoring.score(after, self.replica[t].n_next, self.replica[p].n_next);
            if old != new && i < j {
                self.changed_pairs.set(self.changed_pairs.get() + 1);
            }
            // Where q(n(track)) changed, N(track) scales its floor as if s(track, partner)
            // moved by that factor alone: so an s that moved otherwise (or not at all) must
            // be sent whenever it matters, even unchanged.
            if (old != new || self.replica[t].changed) && self.matters(t, old, new) {
                emit(PairRecord::Score { key: i, item: j, score: new });
            }
        }
        if self.emit_co_listens && before != after && i < j {
            for (count, diff) in [(before, -1), (after, 1)] {
                if count > 0 {
                    emit(PairRecord::CoListen { a: i, b: j, count: u64::from(count), diff });
                }
            }
        }
    }

    /// `q(n(track))` changed: `N(track)` rescales its leaders and floor (one record), and
    /// every partner whose count did not change (`changed`, sorted, has those that did) hears
    /// of its new `s(partner, track)` where that matters to `N(partner)`. `entries` are the
    /// counts after the epoch.
    fn rescale(&mut self, track: u32, entries: &[Entry], changed: &[(u32, u32, u32)], emit: &mut impl FnMut(PairRecord)) {
        let t = track as usize;
        let id = self.ids[t];
        emit(PairRecord::Rescale { key: id, from: self.replica[t].n, to: self.replica[t].n_next });
        if self.replica[t].n_next > self.replica[t].n {
            // A rise of q(n(track)) lowers every s(·, track), and a lower s cannot pass a
            // list's floor (scaled as it may be: s(p, track) falls by more than N(p)'s own
            // factor). So only the lists `track` leads can see it: no other partner is read.
            let lists = self.leads.get(&track).map_or(&[][..], Vec::as_slice);
            self.rescored_pairs.set(self.rescored_pairs.get() + lists.len() as u64);
            for &p in lists {
                if changed.binary_search_by_key(&p, |c| c.0).is_ok() {
                    continue; // the partner's worker sends this direction with the count's change
                }
                if let Ok(at) = entries.binary_search_by_key(&p, |e| e.partner) {
                    self.rescored(track, p, entries[at].count, emit);
                }
            }
            return;
        }
        self.rescored_pairs.set(self.rescored_pairs.get() + entries.len() as u64);
        let mut changed = changed.iter().map(|c| c.0).peekable();
        for entry in entries {
            if u64::from(entry.count) < self.scoring.min_co {
                continue; // below C: no similarity before or after, and nothing to read
            }
            while changed.next_if(|&partner| partner < entry.partner).is_some() {}
            if changed.next_if(|&partner| partner == entry.partner).is_some() {
                continue; // the partner's worker sends this direction with the count's change
            }
            self.rescored(track, entry.partner, entry.count, emit);
        }
    }

    /// `s(partner, track)` with an unchanged count after `q(n(track))` changed: sent to
    /// `N(partner)` where it matters.
    fn rescored(&self, track: u32, partner: u32, count: u32, emit: &mut impl FnMut(PairRecord)) {
        let (t, p) = (track as usize, partner as usize);
        let id = self.ids[t];
        let old = self.scoring.score(count, self.replica[p].n, self.replica[t].n);
        let new = self.scoring.score(count, self.replica[p].n_next, self.replica[t].n_next);
        if old != new && (!self.replica[p].changed || id < self.ids[p]) {
            self.changed_pairs.set(self.changed_pairs.get() + 1);
        }
        // As in `count_changed`: where N(partner) rescales too, an s that did not move by
        // its factor alone is sent whenever it matters.
        if (old != new || self.replica[p].changed) && self.matters(p, old, new) {
            emit(PairRecord::Score { key: self.ids[p], item: id, score: new });
        }
    }
}

/// What the operator reads besides the pair changes, replicated to every worker: the
/// `count_total` updates of `q(n)`, and the floors of the neighbour lists that changed in
/// the previous epoch (fed back from the neighbours operator, one epoch later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Replicated {
    /// `((track, q(n)), time, diff)`.
    Count((u64, isize), Epoch, isize),
    /// `(track, floor)`, at the epoch after the one that set it.
    Floor(u64, i64),
    /// `leader` joined (`leads`) or left the leaders of `list`, at the epoch after.
    Leads {
        /// The partner that leads.
        leader: u64,
        /// The track whose list it leads.
        list: u64,
        /// Joined, or left.
        leads: bool,
    },
}

/// The Similarity operator of every worker: from directed pair changes `(i, j)` (each
/// change of `c(i,j)` present once in each direction) and the replicated `q(n)` and floors,
/// the changes of `s` that the neighbour lists must see, and of `c` when asked for.
pub(super) fn similarities<'scope>(
    pairs: Stream<'scope, Epoch, Vec<PairChange>>,
    replicated: Stream<'scope, Epoch, Vec<Replicated>>,
    state: Shared,
) -> Stream<'scope, Epoch, Vec<PairRecord>> {
    let by_track = Exchange::new(|(track, _partner, _diff): &PairChange| track.hashed());
    pairs.binary_frontier::<_, CapacityContainerBuilder<Vec<PairRecord>>, _, _, _, _>(
        replicated.broadcast(),
        by_track,
        Pipeline,
        "Similarity",
        move |_capability, _info| {
            // Per epoch, with the capability to emit at it: pair changes of epochs other than
            // the open one, and every epoch's n and floor changes.
            let mut staged: EpochStash<_, (Vec<PairChange>, Vec<Replicated>)> = EpochStash::default();
            // The epoch whose pair changes are applied as they arrive.
            let mut open: Option<Epoch> = None;
            move |(pairs, pairs_frontier), (replicated, replicated_frontier), output| {
                let port = output.output_index();
                let mut state = state.borrow_mut();
                pairs.for_each(|cap, data| {
                    // Pair changes travel at their capability's time.
                    let Some(&time) = cap.least() else { return };
                    staged.stage(time, || cap.delayed(&time, port));
                    // Applied now only if nothing earlier is pending or can arrive on
                    // either input: the open epoch is the next one `finish` closes, so
                    // an earlier epoch's n changes arriving later would close it with
                    // this epoch's pair changes in its buffer (emitted at the wrong time,
                    // scored with the wrong n). And only once the neighbours operator is
                    // done with every earlier epoch: an early flush changes the partners
                    // it reads.
                    let earliest = staged.first_epoch() == Some(time);
                    let nothing_earlier = !pairs_frontier.less_than(&time) && !replicated_frontier.less_than(&time);
                    if open.is_none() && earliest && nothing_earlier && state.neighbours_frontier >= time {
                        open = Some(time);
                        // This epoch's pair changes staged before it could open arrived
                        // first, so they go first: each user's changes must reach the
                        // counts in the order History made them, or a flush between a
                        // user's +1 and -1 of one pair would take the count below zero.
                        for (track, partner, diff) in std::mem::take(&mut staged.stage(time, || cap.delayed(&time, port)).0) {
                            state.pair(track, partner, diff);
                        }
                    }
                    if open == Some(time) {
                        for (track, partner, diff) in data.drain(..) {
                            state.pair(track, partner, diff);
                        }
                    } else {
                        staged.stage(time, || cap.delayed(&time, port)).0.append(data);
                    }
                });
                replicated.for_each(|cap, data| {
                    let Some(&cap_time) = cap.least() else { return };
                    for record in data.drain(..) {
                        let time = match record {
                            Replicated::Count(_, time, _) => time,
                            Replicated::Floor(..) | Replicated::Leads { .. } => cap_time,
                        };
                        staged.stage(time, || cap.delayed(&time, port)).1.push(record);
                    }
                });
                // Complete once both frontiers have passed it: until then it may still get
                // changes. The floors come back from the neighbours operator one epoch later,
                // so an epoch is complete only once that operator has finished the one before.
                let complete = |epoch: &Epoch| !pairs_frontier.less_equal(epoch) && !replicated_frontier.less_equal(epoch);
                while let Some((_epoch, capability, (pairs, replicated))) = staged.pop_complete(complete) {
                    for (track, partner, diff) in pairs {
                        state.pair(track, partner, diff);
                    }
                    for record in replicated {
                        match record {
                            Replicated::Count((track, n), _, diff) => state.count(track, n, diff),
                            Replicated::Floor(track, floor) => state.set_floor(track, floor),
                            Replicated::Leads { leader, list, leads } => state.set_leads(leader, list, leads),
                        }
                    }
                    open = None;
                    let mut session = output.session(&capability);
                    state.finish(|record| session.give(record));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests;
