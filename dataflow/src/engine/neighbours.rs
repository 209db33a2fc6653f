//! Neighbour lists `N(i)` (SPEC §2 step 5): per track, its `k` partners with the largest
//! `s(i,j)`, kept on the worker that owns the track's partner counts, with no stored copy of
//! the scores.
//!
//! ```text
//!  pair changes (i, j) ±1 ── by i ──►┌────────────┐  s changes that matter    ┌────────────┐
//!  q(n) changes ──────── broadcast ─►│ Similarity │── and rescales ── by i ─►│ Neighbours │─► (i, N(i))
//!  floors, who leads, epoch after ──►└────────────┘                          └────────────┘
//!         ▲            (feedback, broadcast)   │  partners and q(n), shared per worker  │
//!         └────────────────────────────────────┴─────────────────────────────────────────┘
//! ```
//!
//! ## Leaders and a floor, and scores computed when needed
//!
//! Each track keeps its *leaders*, the partners with `s(i,j)` above its *floor*, with their
//! scores, best first; every other partner scores at most the floor. So whenever at least
//! `k` leaders are left (or the floor is 0: every partner with a similarity leads), the
//! first `k` leaders are `N(i)`. A track keeps between `k` and `2k` leaders, plus those that
//! tie; only when fewer than `k` remain above a positive floor is the track ranked again from
//! its partners' counts (`O(partners)`), which resets the floor to the `2k+1`-th score.
//!
//! Every `s(i,j)` is a function of `c(i,j)`, `q(n(i))` and `q(n(j))`, which the Similarity
//! operator of `i`'s worker holds (the counts of its tracks, `q(n)` of every track), so this
//! operator reads them from that shared state instead of storing a weight per pair (without
//! the map of every scored pair, the peak at 10 M events fell from 4.51 to 2.71 GiB). What
//! reaches it per epoch:
//!
//! * **A count change** `c(i,j)`: `i`'s worker sees it (each pair's counts are kept both
//!   ways) and sends `s(i,j)` if `j` was a leader of `i` or now scores above the floor.
//! * **A change of `q(n(j))`** changes `s(i,j)` for every partner `i` of `j`, and `j`'s
//!   worker sends `s(i,j)` only where it matters to `N(i)`: `j` led `N(i)` (scored above its
//!   floor) or now scores above it. Every worker has every track's floor (broadcast, fed back
//!   one epoch later), and, for its own tracks, the lists each one leads (fed back by the
//!   same edge, to the leader's worker). A *rise* of `q(n(j))` lowers every `s(·,j)`, and a
//!   lower score cannot pass a floor (not even a floor this epoch scales: `s(i,j)` falls by
//!   `N(i)`'s own factor and more), so only the lists `j` leads are read, from that index. A
//!   *fall* visits all of `j`'s partners; a popular track has thousands, of which a handful
//!   hold it among their leaders, and the rest is decided where the pairs are and sends
//!   nothing.
//! * **A change of `q(n(i))`** multiplies every `s(i,·)` by `sqrt(q_old/q_new)`: one `Rescale`
//!   record. The leaders are rescored exactly (`O(k)`), and the floor is scaled by the same
//!   factor, rounded up with a margin for the floating point of the cosine
//!   (`scaled_floor`): no partner below it can pass it, so none need be visited. Leaders
//!   that fall to the new floor leave; if fewer than `k` remain, the track is ranked again.
//!   The scaled floor covers only partners whose `s` moved by that factor alone, so one whose
//!   count or own `q(n)` changed in the same epoch is sent wherever it matters, even with an
//!   unchanged `s` (a test found that case: `s` equal before and after, the floor scaled down).
//!
//! A directed pair is sent at most once an epoch, with its final `s`: by `i`'s worker if
//! `c(i,j)` changed, else by `j`'s if `q(n(j))` did (a change of `q(n(i))` alone is the
//! `Rescale`). Ties fall to the smaller track id, as SPEC §2 orders `N(i)`.
//!
//! ## Why a shared state and a loop
//!
//! A neighbour list needs every worker's sends of its epoch before it is closed, so it is a
//! second operator after an exchange; it reads the first one's counts for a re-ranking, so
//! the two share their worker's state (`Rc<RefCell<_>>`). The floors and the changes of who
//! leads which list go back to every Similarity operator through a timely feedback edge of
//! one epoch (broadcast; a worker keeps the leadership of its own tracks): an epoch there
//! completes only once the neighbour lists of the one before are closed, which also keeps the
//! first operator from changing the counts while the second may still read the earlier
//! epoch's.
//!
//! The output at an epoch is exactly the change of each track's top-`k` list between the
//! states before and after it: a differential collection of `(track, list)` rows.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::rc::Rc;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::HashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, ConnectLoop, Feedback, Operator};
use timely::dataflow::Stream;

use super::history::PairChange;
use super::similarity::{self, PairRecord, Replicated, Scoring, Shared, Similarity};
use super::stash::EpochStash;
use super::Epoch;
use crate::tables::RankedList;

/// The outputs of [`neighbour_lists`].
pub struct NeighbourLists<'scope> {
    /// `(i, N(i))`: one row per track with neighbours.
    pub lists: VecCollection<'scope, Epoch, (u64, RankedList)>,
    /// Similarity's records, among them the `c` updates when asked for.
    pub records: Stream<'scope, Epoch, Vec<PairRecord>>,
}

/// `N(i)` for every track from its pair changes and `q(n)`.
pub fn neighbour_lists<'scope>(
    pairs: Stream<'scope, Epoch, Vec<PairChange>>,
    rounded_counts: VecCollection<'scope, Epoch, (u64, isize)>,
    scoring: Scoring,
    k: usize,
    emit_co_listens: bool,
) -> NeighbourLists<'scope> {
    let state: Shared = Rc::new(RefCell::new(Similarity::new(scoring, emit_co_listens)));
    let (floors_back, floors) = pairs.scope().feedback::<Vec<Replicated>>(1);
    let replicated = rounded_counts.inner.map(|(count, time, diff)| Replicated::Count(count, time, diff)).concat(floors);
    let records = similarity::similarities(pairs, replicated, Rc::clone(&state));
    // The `c` updates go only to the co-listens table, never across the exchange.
    let for_lists = if emit_co_listens { records.clone().filter(|record| record.key().is_some()) } else { records.clone() };
    let outputs = neighbours(for_lists, state, k);
    outputs
        .clone()
        .flat_map(|out| match out {
            Out::Floor(track, floor) => Some(Replicated::Floor(track, floor)),
            Out::Leads { leader, list, leads } => Some(Replicated::Leads { leader, list, leads }),
            Out::List(..) => None,
        })
        .connect_loop(floors_back);
    let lists = outputs
        .flat_map(|out| match out {
            Out::List(row, time, diff) => Some((row, time, diff)),
            Out::Floor(..) | Out::Leads { .. } => None,
        })
        .as_collection();
    NeighbourLists { lists, records }
}

/// An output record of the neighbours operator.
#[derive(Clone, Debug)]
enum Out {
    /// A `(track, N(i))` row's update.
    List((u64, RankedList), Epoch, isize),
    /// A track's new floor.
    Floor(u64, i64),
    /// `leader` joined (`leads`) or left the leaders of `list`.
    Leads { leader: u64, list: u64, leads: bool },
}

/// The floor of `N(i)` after `q(n(i))` moved from `from` to `to`: every partner that scored at
/// most `floor` scores at most this.
///
/// Every `s(i,·)` is `round(x)` with `x = q(c)·10^P / sqrt(q(n(i))·q(n(j)))`, and the move
/// multiplies each `x` by `sqrt(from/to)`. `s ≤ floor` means `x < floor + 1/2` (up to the
/// few ulps of the cosine's own rounding), so afterwards `x < (floor + 1/2)·sqrt(from/to)`;
/// the relative margin of 10^-12 covers both evaluations' rounding errors (~10^-15) many
/// times over. A larger floor than needed is safe: it only retires leaders sooner.
pub(super) fn scaled_floor(floor: i64, from: u64, to: u64) -> i64 {
    if from == to {
        return floor;
    }
    if to == 0 {
        return 0; // no user has the track: no similarity, nothing above 0
    }
    let bound = (floor as f64 + 0.5) * (from as f64 / to as f64).sqrt() * (1.0 + 1e-12);
    (bound + 0.5).floor() as i64
}

/// A leader: a partner with its current score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leader {
    score: i64,
    id: u64,
    /// The partner's index in the shared state.
    at: u32,
}

impl Leader {
    /// Best first, ties to the smaller id (SPEC §2 step 5).
    fn rank(&self) -> (Reverse<i64>, u64) {
        (Reverse(self.score), self.id)
    }
}

/// One track's leaders and floor.
#[derive(Debug, Default)]
struct Leaders {
    /// Every partner scoring above `floor`, best first.
    items: Vec<Leader>,
    /// Every partner that is not a leader scores at most this; 0: every partner with a
    /// similarity is a leader.
    floor: i64,
}

/// One epoch's changes of one track's `s`.
#[derive(Debug)]
struct Change<'a> {
    rescale: Option<(u64, u64)>,
    /// At most one per partner.
    scores: &'a [Leader],
}

impl Leaders {
    fn top(&self, k: usize) -> &[Leader] {
        &self.items[..k.min(self.items.len())]
    }

    /// Applies one epoch's changes of `key` (a local track); `state` is after the epoch.
    /// Returns whether a partner may have joined or left the leaders (`false`: only their
    /// scores changed).
    fn apply(&mut self, key: u32, change: &Change<'_>, k: usize, state: &Similarity, scratch: &mut Vec<Leader>) -> bool {
        let known = self.items.len();
        if let Some((from, to)) = change.rescale {
            for leader in &mut self.items {
                leader.score = state.score_of(key, leader.at);
            }
            self.floor = scaled_floor(self.floor, from, to);
        }
        if change.scores.len() <= 8 {
            for &update in change.scores {
                match self.items.iter_mut().find(|leader| leader.at == update.at) {
                    Some(leader) => leader.score = update.score,
                    None if update.score > self.floor => self.items.push(update),
                    None => {}
                }
            }
        } else {
            // Many (a big epoch gives a popular track thousands): found by binary search
            // among the leaders there were, so that new ones do not slow the search down.
            // A partner's score is sent at most once an epoch, so no new one comes twice.
            self.items.sort_unstable_by_key(|leader| leader.at);
            for &update in change.scores {
                match self.items[..known].binary_search_by_key(&update.at, |leader| leader.at) {
                    Ok(at) => self.items[at].score = update.score,
                    Err(_) if update.score > self.floor => self.items.push(update),
                    Err(_) => {}
                }
            }
        }
        let joined = self.items.len() > known;
        let floor = self.floor;
        self.items.retain(|leader| leader.score > floor);
        let mut moved = joined || self.items.len() < known;
        if self.items.len() < k && self.floor > 0 {
            // Too few are known to lead: rank every partner.
            self.rank_all(key, k, state, scratch);
            moved = true;
        } else {
            if self.items.len() > 2 * k {
                self.floor = cut(&mut self.items, k, self.floor);
                moved = true;
            }
            self.items.sort_unstable_by_key(Leader::rank);
        }
        #[cfg(test)]
        self.check(key, state);
        moved
    }

    /// Ranks every partner of `key` again, from the counts (`O(partners)`).
    fn rank_all(&mut self, key: u32, k: usize, state: &Similarity, scratch: &mut Vec<Leader>) {
        scratch.clear();
        state.scores_of(key, |at, id, score| scratch.push(Leader { score, id, at }));
        self.floor = cut(scratch, k, 0);
        std::mem::swap(&mut self.items, scratch);
        if self.items.capacity() > 4 * k + 16 {
            self.items.shrink_to(2 * k + 8);
        }
        self.items.sort_unstable_by_key(Leader::rank);
        if scratch.capacity() > 64 * k + 1024 {
            *scratch = Vec::new(); // a popular track's partners: not kept for small ones
        }
    }

    /// The invariant, from every partner's score: the leaders are exactly the partners
    /// scoring above the floor, with their current scores.
    #[cfg(test)]
    fn check(&self, key: u32, state: &Similarity) {
        let mut above = Vec::new();
        state.scores_of(key, |at, id, score| {
            if score > self.floor {
                above.push(Leader { score, id, at });
            }
        });
        above.sort_unstable_by_key(Leader::rank);
        assert_eq!(self.items, above, "leaders of {} above floor {}", state.id(key), self.floor);
    }
}

/// Keeps the leaders among `items` (all scoring above `floor`): the best `2k`, less those
/// tying with the first cut, unless that leaves fewer than `k`, when all that tie with the
/// `k`-th stay. Returns the new floor.
fn cut(items: &mut Vec<Leader>, k: usize, floor: i64) -> i64 {
    let m = 2 * k;
    if items.len() <= m {
        return floor;
    }
    items.select_nth_unstable_by_key(m, Leader::rank);
    let first_cut = items[m].score;
    let new_floor = if items[..m].iter().filter(|leader| leader.score > first_cut).count() >= k {
        first_cut
    } else {
        // The k-th ties with the first cut: keep every item scoring that much.
        items.iter().map(|leader| leader.score).filter(|&score| score < first_cut).max().unwrap_or(floor)
    };
    items.retain(|leader| leader.score > new_floor);
    new_floor
}

/// The neighbours operator of every worker: Similarity's records, exchanged by the track
/// whose list they change; outputs each changed list as a row update and each changed floor.
fn neighbours<'scope>(records: Stream<'scope, Epoch, Vec<PairRecord>>, state: Shared, k: usize) -> Stream<'scope, Epoch, Vec<Out>> {
    // Every record here has a key (the `c` updates are filtered out before).
    let by_key = Exchange::new(|record: &PairRecord| record.key().unwrap_or_default().hashed());
    records.unary_frontier::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(by_key, "Neighbours", move |_capability, _info| {
        let mut tracks: HashMap<u32, Leaders> = HashMap::default();
        let mut staged: EpochStash<_, Vec<PairRecord>> = EpochStash::default();
        let (mut scratch, mut before, mut run_scores) = (Vec::new(), Vec::new(), Vec::new());
        // Each list's leaders as `(index, id)`, before and after an epoch (reused).
        let mut led_before: Vec<(u32, u64)> = Vec::new();
        let mut led_after: Vec<(u32, u64)> = Vec::new();
        move |(input, frontier), output| {
            let port = output.output_index();
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                staged.stage(time, || cap.delayed(&time, port)).append(data);
            });
            let mut state = state.borrow_mut();
            while let Some((epoch, capability, mut records)) = staged.pop_complete(|epoch| !frontier.less_equal(epoch)) {
                let mut session = output.session(&capability);
                if k == 0 {
                    continue;
                }
                // By key, its rescale first: sorted in place, as a load's epoch holds a record
                // for every scored pair, and a copy of them was most of its peak memory.
                records.sort_unstable_by_key(|record| (record.key(), !matches!(record, PairRecord::Rescale { .. })));
                for run in records.chunk_by(|a, b| a.key() == b.key()) {
                    let Some(key) = run[0].key() else { continue };
                    let key = state.intern(key);
                    let rescale = match run[0] {
                        PairRecord::Rescale { from, to, .. } => Some((from, to)),
                        _ => None,
                    };
                    run_scores.clear();
                    for record in run {
                        if let PairRecord::Score { item, score, .. } = *record {
                            run_scores.push(Leader { score, id: item, at: state.intern(item) });
                        }
                    }
                    let change = Change { rescale, scores: &run_scores };
                    let leaders = tracks.entry(key).or_default();
                    before.clear();
                    before.extend_from_slice(leaders.top(k));
                    led_before.clear();
                    led_before.extend(leaders.items.iter().map(|leader| (leader.at, leader.id)));
                    let floor = leaders.floor;
                    let id = state.id(key);
                    if leaders.apply(key, &change, k, &state, &mut scratch) {
                        led_after.clear();
                        led_after.extend(leaders.items.iter().map(|leader| (leader.at, leader.id)));
                        membership_changes(&mut led_before, &mut led_after, |leader, leads| {
                            session.give(Out::Leads { leader, list: id, leads })
                        });
                    }
                    let after = leaders.top(k);
                    if before[..] != *after {
                        if !before.is_empty() {
                            session.give(Out::List((id, listed(&before)), epoch, -1));
                        }
                        if !after.is_empty() {
                            session.give(Out::List((id, listed(after)), epoch, 1));
                        }
                    }
                    if leaders.floor != floor {
                        session.give(Out::Floor(id, leaders.floor));
                    }
                    if leaders.items.is_empty() && leaders.floor == 0 {
                        tracks.remove(&key);
                    }
                }
            }
            // The Similarity operator may change the shared counts for an epoch only once
            // nothing earlier is left here to read them.
            state.neighbours_frontier =
                staged.first_epoch().into_iter().chain(frontier.frontier().iter().copied()).min().unwrap_or(Epoch::MAX);
        }
    })
}

/// Calls `changed(leader, joined)` for every leader in only one of `before` and `after`
/// (`(index, id)` pairs, sorted here).
fn membership_changes(before: &mut [(u32, u64)], after: &mut [(u32, u64)], mut changed: impl FnMut(u64, bool)) {
    before.sort_unstable();
    after.sort_unstable();
    let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
    loop {
        match (b.peek(), a.peek()) {
            (None, None) => break,
            (Some(x), Some(y)) if x.0 == y.0 => {
                b.next();
                a.next();
            }
            (Some(x), y) if y.is_none_or(|y| x.0 < y.0) => {
                changed(x.1, false);
                b.next();
            }
            (_, Some(y)) => {
                changed(y.1, true);
                a.next();
            }
            (Some(_), None) => unreachable!("handled above"),
        }
    }
}

/// A list as `(item, score)`, in rank order.
fn listed(leaders: &[Leader]) -> RankedList {
    leaders.iter().map(|leader| (leader.id, leader.score)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every non-leader stays at or below the scaled floor, for scores of every size and
    /// every rounding of `n`: checked against the cosine itself.
    #[test]
    fn no_partner_below_the_floor_passes_its_scaled_floor() {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200_000 {
            let precision = rng.random_range(0..7);
            let n_j = rng.random_range(1..5_000u64);
            let c = rng.random_range(1..=n_j);
            let from = rng.random_range(c..c * 4 + 10);
            let to = if rng.random_range(0..2) == 0 { from + rng.random_range(1..from / 8 + 2) } else { (from - from / 8).max(c).max(1) };
            let before = encore_core::cosine_units(c, from, n_j, precision).expect("valid");
            let after = encore_core::cosine_units(c, to, n_j, precision).expect("valid");
            // A partner with exactly the floor's score is the tightest case.
            assert!(after <= scaled_floor(before, from, to), "c {c} n_j {n_j} n {from} → {to} P {precision}: {before} → {after}");
        }
    }

    /// `cut` keeps the best `2k`, at least `k` of them above the new floor, and every item it
    /// drops scores at most that floor.
    #[test]
    fn cut_keeps_at_least_k_above_the_floor() {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..2_000 {
            let k = rng.random_range(1..6usize);
            let top = rng.random_range(2..40i64);
            let mut items: Vec<Leader> =
                (0..rng.random_range(0..30u32)).map(|at| Leader { score: rng.random_range(1..top), id: u64::from(at) * 3, at }).collect();
            let all = items.clone();
            let floor = cut(&mut items, k, 0);
            assert!(items.iter().all(|leader| leader.score > floor));
            assert!(all.iter().filter(|leader| !items.contains(leader)).all(|leader| leader.score <= floor));
            assert!(items.len() >= k.min(all.len()), "{} of {} kept, k {k}", items.len(), all.len());
            if items.len() > 2 * k {
                // Only ties with the k-th keep more than 2k.
                let mut sorted = items.clone();
                sorted.sort_by_key(Leader::rank);
                assert!(sorted[2 * k..].iter().all(|leader| leader.score == sorted[k - 1].score));
            }
        }
    }

    /// The leaders give the top k, through random epochs of count changes, rescales and
    /// re-rankings, against a model of every score. The "state" is a real Similarity
    /// operator's, fed through its own methods.
    #[test]
    fn leaders_give_the_top_k() {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};
        for seed in 0..40 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let k = rng.random_range(1..5usize);
            let scoring = Scoring { min_co: 1, precision: 3, count_bits: [0, 2, 5][seed as usize % 3] };
            // Track 0 is the key; its partners are 1..=40.
            let mut state = Similarity::new(scoring, false);
            let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
            let mut n: BTreeMap<u64, isize> = (0..=40).map(|t| (t, 0)).collect();
            let mut leaders = Leaders::default();
            let mut scratch = Vec::new();
            for epoch in 0..200 {
                let mut records = Vec::new();
                // Some counts change, some n change (n ≥ counts, roughly).
                for partner in 1..=40u64 {
                    if rng.random_range(0..6) == 0 {
                        let old = counts.get(&partner).copied().unwrap_or(0);
                        let new = (old as i64 + rng.random_range(-2..=3)).max(0) as u32;
                        if new != old {
                            state.pair(0, partner, new as i32 - old as i32);
                            state.pair(partner, 0, new as i32 - old as i32);
                            counts.insert(partner, new);
                        }
                    }
                }
                for track in 0..=40u64 {
                    if epoch == 0 || rng.random_range(0..8) == 0 {
                        let old = n[&track];
                        let new = (rng.random_range(1..60) + if track == 0 { 30 } else { 0 }) as isize;
                        let rounded = |x: isize| encore_core::round_count(x as u64, scoring.count_bits) as isize;
                        if rounded(new) != rounded(old) {
                            if old > 0 {
                                state.count(track, rounded(old), -1);
                            }
                            state.count(track, rounded(new), 1);
                        }
                        n.insert(track, new);
                    }
                }
                // The floor of every partner stays 0 here: only track 0's list is kept.
                state.finish(|record| records.push(record));
                let key = state.intern(0);
                let (mut rescale, mut scores) = (None, Vec::new());
                for record in records {
                    match record {
                        PairRecord::Score { key: 0, item, score } => scores.push(Leader { score, id: item, at: state.intern(item) }),
                        PairRecord::Rescale { key: 0, from, to } => rescale = Some((from, to)),
                        _ => {}
                    }
                }
                let change = Change { rescale, scores: &scores };
                let mut before: Vec<(u32, u64)> = leaders.items.iter().map(|l| (l.at, l.id)).collect();
                let moved = leaders.apply(key, &change, k, &state, &mut scratch);
                let mut after: Vec<(u32, u64)> = leaders.items.iter().map(|l| (l.at, l.id)).collect();
                state.set_floor(0, leaders.floor);
                let mut joined_or_left = false;
                membership_changes(&mut before, &mut after, |leader, leads| {
                    joined_or_left = true;
                    state.set_leads(leader, 0, leads);
                });
                // The operator reads the leaders' membership only where `apply` says it moved.
                assert!(moved || !joined_or_left, "seed {seed} epoch {epoch}: membership changed unreported");
                let mut expected: Vec<(Reverse<i64>, u64)> = counts
                    .iter()
                    .map(|(&partner, &c)| {
                        let q = |x: isize| encore_core::round_count(x as u64, scoring.count_bits);
                        let score =
                            if c == 0 { 0 } else { encore_core::cosine_units(q(c as isize), q(n[&0]), q(n[&partner]), 3).unwrap_or(0) };
                        (Reverse(score), partner)
                    })
                    .filter(|&(Reverse(score), _)| score > 0)
                    .collect();
                expected.sort();
                expected.truncate(k);
                let got: Vec<(Reverse<i64>, u64)> = leaders.top(k).iter().map(Leader::rank).collect();
                assert_eq!(got, expected, "seed {seed} epoch {epoch} k {k}");
            }
        }
    }
}
