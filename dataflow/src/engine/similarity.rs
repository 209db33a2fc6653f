//! Co-listening counts `c(i,j)` and similarities `s(i,j)` (SPEC §2 steps 3–4), maintained by
//! one operator per worker that owns its tracks' partner counts and sees every `q(n)` change.
//!
//! ```text
//!  pair changes (i, j) ±1, both directions ── exchanged by i ──┐
//!  (History emits them as a track enters or leaves H(u))       ├─► Similarity (per worker)
//!  q(n(t)) changes ────────────────────────────── broadcast ───┘    per local track i: its
//!  (only where the rounded count changed)                           partners j with c(i,j)
//!                                                                   ─► s(i,j) and s(j,i) changes,
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
//! track in it turns its run of changes into `(partner, c before, c after)`: by binary search
//! and insert when they are few against its entries, by one merge otherwise. An epoch bigger
//! than the buffer (`FLUSH_AT` changes, 48 MB) merges the full buffer into its tracks early,
//! after keeping a copy of each such track's entries as they were at the epoch's start, and
//! compares with that copy at the end. Untouched entries are never visited, except where
//! `n(i)` changed: then every `s(i,·)` is recomputed, which is the work itself.
//!
//! ## Who emits a pair
//!
//! `s(i,j)` depends on `c(i,j)`, `n(i)` and `n(j)`. Both workers holding the pair know all
//! three (counts are stored both ways, `n` is replicated), so exactly one of them emits each
//! changed pair, both directions at once, by a rule both evaluate alike:
//!
//! * `c(i,j)` changed, or `n(min(i,j))` changed: the worker of `min(i,j)`;
//! * only `n(max(i,j))` changed: the worker of `max(i,j)`.
//!
//! The output is one plain stream of two kinds of records: each changed `s` per directed
//! pair as one `(old, new)` record for the neighbour lists (half the records of a retraction
//! plus an assertion, and nothing to consolidate downstream: a pair changes at most once an
//! epoch), and, when co-listens are wanted, the updates of `c` per pair `a < b` as a
//! differential collection's.

use differential_dataflow::{Hashable, VecCollection};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

use super::history::PairChange;
use super::sorted::{consolidate, replace_tight};
use super::stash::EpochStash;
use super::Epoch;

/// A record of the operator's output, at the epoch of its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PairRecord {
    /// `s(track, partner)` changed from `old` to `new` units of 10^-P in the epoch (0: no
    /// similarity); both directions of a pair are present, each once.
    Similar {
        /// The track whose neighbour `partner` may be.
        track: u64,
        /// The other track.
        partner: u64,
        /// `s` before the epoch.
        old: i64,
        /// `s` after the epoch.
        new: i64,
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

/// A partner of a track: its interned index and `c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    partner: u32,
    count: u32,
}

/// Buffered pair changes are sorted and merged into their tracks once this many pile up. The
/// crate's own tests flush after a few dozen, so that every test with epochs also runs the
/// early-flush path, which otherwise only epochs of millions of events reach.
const FLUSH_AT: usize = if cfg!(test) { 64 } else { 1 << 22 };

/// `((track, partner), Δc)` by interned index.
type Delta = ((u32, u32), i32);

/// One local track's partners.
#[derive(Default)]
struct Partners {
    /// Sorted by partner index; counts > 0.
    entries: Vec<Entry>,
    /// The entries at the open epoch's start, kept once a full buffer was merged into them.
    before: Option<Vec<Entry>>,
}

impl Partners {
    /// Merges a run of the open epoch's changes (sorted by partner, consolidated) into the
    /// entries, keeping the epoch-start entries first.
    fn absorb(&mut self, run: &[Delta], scratch: &mut Vec<Entry>) {
        if self.before.is_none() {
            self.before = Some(self.entries.clone());
        }
        merge(&self.entries, run, scratch, |_, _, _| ());
        replace_tight(&mut self.entries, scratch);
    }

    /// Ends the open epoch with its last run of changes: pushes `(partner, c before,
    /// c after)` of every changed count, sorted by partner, into `changes`.
    fn close(&mut self, run: &[Delta], scratch: &mut Vec<Entry>, changes: &mut Vec<(u32, u32, u32)>) {
        changes.clear();
        if let Some(before) = self.before.take() {
            merge(&self.entries, run, scratch, |_, _, _| ());
            replace_tight(&mut self.entries, scratch);
            diff(&before, &self.entries, changes);
        } else if run.len() > self.entries.len() / 16 + 16 {
            merge(&self.entries, run, scratch, |partner, old, new| changes.push((partner, old, new)));
            replace_tight(&mut self.entries, scratch);
        } else {
            for &((_, partner), delta) in run {
                match self.entries.binary_search_by_key(&partner, |e| e.partner) {
                    Ok(at) => {
                        let old = self.entries[at].count;
                        let new = add(old, delta);
                        changes.push((partner, old, new));
                        if new == 0 {
                            self.entries.remove(at);
                        } else {
                            self.entries[at].count = new;
                        }
                    }
                    Err(at) => {
                        let new = add(0, delta);
                        changes.push((partner, 0, new));
                        self.entries.insert(at, Entry { partner, count: new });
                    }
                }
            }
        }
    }
}

/// `count + delta` for a complete epoch, which never takes a count below zero.
fn add(count: u32, delta: i32) -> u32 {
    let sum = count as i64 + delta as i64;
    debug_assert!(sum >= 0, "co-listening count {count} + {delta} below zero");
    // A co-listening count is at most the number of users, far below 2^32 on any machine.
    u32::try_from(sum.max(0)).unwrap_or(u32::MAX)
}

/// Merges `entries` and a run of changes (sorted by partner, consolidated) into `out`,
/// dropping zero counts; reports every changed count as `(partner, before, after)`.
fn merge(entries: &[Entry], run: &[Delta], out: &mut Vec<Entry>, mut changed: impl FnMut(u32, u32, u32)) {
    out.clear();
    out.reserve(entries.len() + run.len());
    let mut old = entries.iter().copied().peekable();
    for &((_, partner), delta) in run {
        while let Some(entry) = old.next_if(|e| e.partner < partner) {
            out.push(entry);
        }
        let before = old.next_if(|e| e.partner == partner).map_or(0, |e| e.count);
        let after = add(before, delta);
        changed(partner, before, after);
        if after > 0 {
            out.push(Entry { partner, count: after });
        }
    }
    out.extend(old);
}

/// `(partner, before, after)` for every partner whose count differs between two sorted lists.
fn diff(before: &[Entry], after: &[Entry], changes: &mut Vec<(u32, u32, u32)>) {
    let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
    loop {
        match (b.peek(), a.peek()) {
            (None, None) => break,
            (Some(x), Some(y)) if x.partner == y.partner => {
                if x.count != y.count {
                    changes.push((x.partner, x.count, y.count));
                }
                b.next();
                a.next();
            }
            (Some(x), y) if y.is_none_or(|y| x.partner < y.partner) => {
                changes.push((x.partner, x.count, 0));
                b.next();
            }
            (_, Some(y)) => {
                changes.push((y.partner, 0, y.count));
                a.next();
            }
            (Some(_), None) => unreachable!("handled above"),
        }
    }
}

/// A worker's state: its tracks' partners, `q(n)` for every track, and the open epoch's changes.
struct Similarity {
    scoring: Scoring,
    emit_co_listens: bool,
    /// Track id of each interned index, and the reverse.
    ids: Vec<u64>,
    index: HashMap<u64, u32>,
    /// `q(n)` by index as of the last complete epoch, and after the open one.
    n: Vec<u64>,
    n_next: Vec<u64>,
    n_changed: Vec<bool>,
    /// Indices whose `q(n)` changed in the open epoch.
    changed_n: Vec<u32>,
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
    changes: Vec<(u32, u32, u32)>,
    /// Pairs visited because an `n` changed, since the start: the work that rounding saves.
    rescored_pairs: u64,
    /// Pairs whose `s` changed, since the start.
    changed_pairs: std::cell::Cell<u64>,
    /// Both counters as last reported to [`super::work`].
    reported: (u64, u64),
}

impl Similarity {
    fn new(scoring: Scoring, emit_co_listens: bool) -> Self {
        Similarity {
            scoring,
            emit_co_listens,
            ids: Vec::new(),
            index: HashMap::default(),
            n: Vec::new(),
            n_next: Vec::new(),
            n_changed: Vec::new(),
            changed_n: Vec::new(),
            tracks: HashMap::default(),
            buffer: Vec::new(),
            flushed: Vec::new(),
            closed: Vec::new(),
            scratch: Vec::new(),
            changes: Vec::new(),
            rescored_pairs: 0,
            changed_pairs: std::cell::Cell::new(0),
            reported: (0, 0),
        }
    }

    fn intern(&mut self, track: u64) -> u32 {
        *self.index.entry(track).or_insert_with(|| {
            let at = u32::try_from(self.ids.len()).expect("fewer than 2^32 distinct tracks");
            self.ids.push(track);
            self.n.push(0);
            self.n_next.push(0);
            self.n_changed.push(false);
            at
        })
    }

    /// `c(track, partner)` changes by `delta` in the open epoch (`track` is local).
    fn pair(&mut self, track: u64, partner: u64, delta: i32) {
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
    fn count(&mut self, track: u64, n: isize, diff: isize) {
        let at = self.intern(track) as usize;
        if !self.n_changed[at] {
            self.n_changed[at] = true;
            self.changed_n.push(at as u32);
            self.n_next[at] = 0; // a retraction without an assertion: n fell to zero
        }
        if diff > 0 {
            self.n_next[at] = n as u64;
        }
    }

    /// Closes the open epoch: emits every changed `s` and `c` through `emit`.
    fn finish(&mut self, mut emit: impl FnMut(PairRecord)) {
        // A retraction and an assertion of the same q(n) that reached here in different
        // batches (upstream cancels those it sees together): not a change, nothing to rescore.
        let (n, n_next, n_changed) = (&self.n, &self.n_next, &mut self.n_changed);
        self.changed_n.retain(|&at| {
            let changed = n[at as usize] != n_next[at as usize];
            n_changed[at as usize] = changed;
            changed
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
                    self.rescore(track, &entries, &[], &mut emit);
                    self.tracks.get_mut(&track).expect("present").entries = entries;
                }
            }
        }
        for &at in &self.changed_n {
            let at = at as usize;
            self.n[at] = self.n_next[at];
            self.n_changed[at] = false;
        }
        self.changed_n.clear();
        closed.clear();
        self.closed = closed;
        buffer.clear();
        if buffer.capacity() > FLUSH_AT / 16 {
            buffer = Vec::new(); // a big epoch's buffer is not kept for small ones
        }
        self.buffer = buffer;
        let counts = (self.rescored_pairs, self.changed_pairs.get());
        super::work::add_similarity(counts.0 - self.reported.0, counts.1 - self.reported.1);
        self.reported = counts;
    }

    /// Ends the open epoch for one local track (`run`: its last changes, sorted) and emits
    /// the pairs it is the emitter of.
    fn close(&mut self, track: u32, run: &[Delta], emit: &mut impl FnMut(PairRecord)) {
        let mut partners = self.tracks.remove(&track).unwrap_or_default();
        let mut changes = std::mem::take(&mut self.changes);
        partners.close(run, &mut self.scratch, &mut changes);
        if self.n_changed[track as usize] {
            self.rescore(track, &partners.entries, &changes, emit);
        } else {
            for &(partner, before, after) in &changes {
                if self.ids[track as usize] < self.ids[partner as usize] {
                    self.emit_pair(track, partner, before, after, emit);
                }
            }
        }
        self.changes = changes;
        if !partners.entries.is_empty() {
            self.tracks.insert(track, partners);
        }
    }

    /// Every pair of `track` (whose `n` changed): `entries` are the counts after the epoch,
    /// `changes` the changed ones with their counts before, both sorted by partner.
    fn rescore(&mut self, track: u32, entries: &[Entry], changes: &[(u32, u32, u32)], emit: &mut impl FnMut(PairRecord)) {
        self.rescored_pairs += entries.len() as u64;
        let this = &*self;
        let id = this.ids[track as usize];
        let mut changed = changes.iter().peekable();
        let mut visit = |partner: u32, before: u32, after: u32| {
            let smaller = id < this.ids[partner as usize];
            let emits = if before != after { smaller } else { smaller || !this.n_changed[partner as usize] };
            if emits {
                this.emit_pair(track, partner, before, after, emit);
            }
        };
        for entry in entries {
            while let Some(&(partner, before, after)) = changed.next_if(|c| c.0 < entry.partner) {
                visit(partner, before, after); // removed: no entry after the epoch
            }
            match changed.next_if(|c| c.0 == entry.partner) {
                Some(&(partner, before, after)) => visit(partner, before, after),
                None => visit(entry.partner, entry.count, entry.count),
            }
        }
        for &(partner, before, after) in changed {
            visit(partner, before, after);
        }
    }

    /// Emits the changes of pair `(track, partner)` (both directions of `s`, and `c` once).
    fn emit_pair(&self, track: u32, partner: u32, before: u32, after: u32, emit: &mut impl FnMut(PairRecord)) {
        let (t, p) = (track as usize, partner as usize);
        let (i, j) = (self.ids[t], self.ids[p]);
        // Same q(n)s and the same rounded count: the same s, no cosine to evaluate.
        let rescored = self.n_changed[t] || self.n_changed[p] || self.scoring.scored_count(before) != self.scoring.scored_count(after);
        if rescored {
            let old = self.scoring.score(before, self.n[t], self.n[p]);
            let new = self.scoring.score(after, self.n_next[t], self.n_next[p]);
            if old != new {
                self.changed_pairs.set(self.changed_pairs.get() + 1);
                emit(PairRecord::Similar { track: i, partner: j, old, new });
                emit(PairRecord::Similar { track: j, partner: i, old, new });
            }
        }
        if self.emit_co_listens && before != after {
            let (a, b) = (i.min(j), i.max(j));
            for (count, diff) in [(before, -1), (after, 1)] {
                if count > 0 {
                    emit(PairRecord::CoListen { a, b, count: u64::from(count), diff });
                }
            }
        }
    }
}

/// `s` (and `c`, with `emit_co_listens`) from directed pair changes `(i, j)` (each change of
/// `c(i,j)` present once in each direction) and the rounded counts `(t, q(n(t)))`.
pub fn similarities<'scope>(
    pairs: Stream<'scope, Epoch, Vec<PairChange>>,
    rounded_counts: VecCollection<'scope, Epoch, (u64, isize)>,
    scoring: Scoring,
    emit_co_listens: bool,
) -> Stream<'scope, Epoch, Vec<PairRecord>> {
    let by_track = Exchange::new(|(track, _partner, _diff): &PairChange| track.hashed());
    pairs.binary_frontier::<_, CapacityContainerBuilder<Vec<PairRecord>>, _, _, _, _>(
        rounded_counts.inner.broadcast(),
        by_track,
        Pipeline,
        "Similarity",
        move |_capability, _info| {
            let mut state = Similarity::new(scoring, emit_co_listens);
            // Per epoch, with the capability to emit at it: pair changes of epochs other than
            // the open one, and every epoch's n changes.
            type Count = ((u64, isize), isize);
            let mut staged: EpochStash<_, (Vec<PairChange>, Vec<Count>)> = EpochStash::default();
            // The epoch whose pair changes are applied as they arrive.
            let mut open: Option<Epoch> = None;
            move |(pairs, pairs_frontier), (counts, counts_frontier), output| {
                let port = output.output_index();
                pairs.for_each(|cap, data| {
                    // Pair changes travel at their capability's time.
                    let Some(&time) = cap.least() else { return };
                    staged.stage(time, || cap.delayed(&time, port));
                    // Applied now only if nothing earlier is pending or can arrive on
                    // either input: the open epoch is the next one `finish` closes, so
                    // an earlier epoch's n changes arriving later would close it with
                    // this epoch's pair changes in its buffer (emitted at the wrong time,
                    // scored with the wrong n).
                    let earliest = staged.first_epoch() == Some(time);
                    let nothing_earlier = !pairs_frontier.less_than(&time) && !counts_frontier.less_than(&time);
                    if open.is_none() && earliest && nothing_earlier {
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
                counts.for_each(|cap, data| {
                    for (count, time, diff) in data.drain(..) {
                        staged.stage(time, || cap.delayed(&time, port)).1.push((count, diff));
                    }
                });
                // Complete once both frontiers have passed it: until then it may still get changes.
                let complete = |epoch: &Epoch| !pairs_frontier.less_equal(epoch) && !counts_frontier.less_equal(epoch);
                while let Some((_epoch, capability, (pairs, counts))) = staged.pop_complete(complete) {
                    for (track, partner, diff) in pairs {
                        state.pair(track, partner, diff);
                    }
                    for ((track, n), diff) in counts {
                        state.count(track, n, diff);
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
