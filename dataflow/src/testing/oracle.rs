//! The reference ("oracle") implementation of SPEC §2: a plain, sequential recomputation of
//! every SPEC §3 table from the set of listens, against which the incremental dataflow is
//! checked.
//!
//! It is written to be obviously correct, not fast: [`compute`] is seven calls, one per SPEC §2
//! step, each a short function over ordered maps (`BTreeMap`, so iteration order never depends
//! on a hash seed). Nothing is incremental and nothing is shared with the dataflow engine: the
//! only common code is the parser and the score formula of `encore-core` (the rounding `q` of
//! the counts and the cosine), which both sides must use verbatim because SPEC §2 step 4 fixes
//! the floating-point evaluation order. The tests below check `q` by other means.
//!
//! Input is a sequence of already-parsed valid events ([`encore_core::Event`]); invalid
//! messages never reach here (they only feed `dead_letters`). Events that are not listens
//! (skips, short plays) are valid but ignored by every step. Every event counts once: two
//! identical messages are two listen events for `plays` (SPEC §2 step 7 "every one, repeats
//! included") and change nothing else.
//!
//! ```
//! use encore_dataflow::{tables::Params, testing::oracle};
//! use encore_core::{Event, EventType};
//!
//! let listen = |user_id, track_id| Event {
//!     user_id, track_id, event_time_ms: 0, event_type: EventType::Like, ms_played: None,
//! };
//! let events = [listen(1, 10), listen(1, 20), listen(2, 10), listen(2, 20)];
//! let tables = oracle::compute(&events, &Params::default());
//! assert_eq!(tables.co_listens[&(10, 20)], 2);
//! assert_eq!(tables.track_neighbors[&(10, 20)], 10_000); // cosine 1.0 at P = 4
//! ```

use crate::tables::{Params, Tables, TrackStats};
use encore_core::{rounded_cosine_units, Event, EventType};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// A user id.
type User = u64;
/// A track id.
type Track = u64;
/// A score in units of 10^-P (SPEC §2 step 4).
type Units = i64;

/// Computes every SPEC §3 table (but `dead_letters`) over the listens among `events`.
///
/// The result depends only on the multiset of events, not on their order.
///
/// # Panics
///
/// If `params.score_precision` is outside the range `encore_core::cosine_units` accepts
/// (P > 18), where SPEC §2 step 4 has no integer result: the parameters are invalid, not the
/// input.
pub fn compute<'a>(events: impl IntoIterator<Item = &'a Event>, params: &Params) -> Tables {
    let listens: Vec<&Event> = events.into_iter().filter(|event| event.is_listen()).collect();

    let last = last_listen_times(&listens); // step 1
    let histories = histories(&last, params.history_cap); // step 2
    let listeners_in_history = history_counts(&histories); // step 3, n(i)
    let co_counts = co_listening_counts(&histories); // step 3, c(i,j)
    let similarities = similarities(&co_counts, &listeners_in_history, params); // step 4
    let neighbors = neighbors(&similarities, params.neighbors); // step 5
    let recommendations = recommendations(&histories, &neighbors, params.recommendations); // step 6
    let track_stats = track_stats(&listens); // step 7

    Tables {
        track_neighbors: neighbors.iter().flat_map(|(&i, list)| list.iter().map(move |&(j, units)| ((i, j), units))).collect(),
        user_recommendations: recommendations.iter().flat_map(|(&u, list)| list.iter().map(move |&(j, units)| ((u, j), units))).collect(),
        track_stats,
        co_listens: co_counts,
    }
}

/// Step 1: `last(u,t)`, the greatest event time of a listen of `t` by `u`.
fn last_listen_times(listens: &[&Event]) -> BTreeMap<User, BTreeMap<Track, i64>> {
    let mut last: BTreeMap<User, BTreeMap<Track, i64>> = BTreeMap::new();
    for listen in listens {
        let time = last.entry(listen.user_id).or_default().entry(listen.track_id).or_insert(i64::MIN);
        *time = (*time).max(listen.event_time_ms);
    }
    last
}

/// Step 2: `H(u)`, the `K` tracks with the greatest `last(u,t)`, ties: larger `track_id` first.
/// A user whose history is empty (only possible with `K = 0`) has no entry.
fn histories(last: &BTreeMap<User, BTreeMap<Track, i64>>, history_cap: usize) -> BTreeMap<User, BTreeSet<Track>> {
    let mut histories = BTreeMap::new();
    for (&user, times) in last {
        let mut by_recency: Vec<(i64, Track)> = times.iter().map(|(&track, &time)| (time, track)).collect();
        // Descending on (time, track): greatest time first, and on equal times larger id first.
        by_recency.sort_by_key(|&(time, track)| Reverse((time, track)));
        let history: BTreeSet<Track> = by_recency.into_iter().take(history_cap).map(|(_, track)| track).collect();
        if !history.is_empty() {
            histories.insert(user, history);
        }
    }
    histories
}

/// Step 3, first half: `n(i)`, the number of users with `i ∈ H(u)`.
fn history_counts(histories: &BTreeMap<User, BTreeSet<Track>>) -> BTreeMap<Track, u64> {
    let mut counts: BTreeMap<Track, u64> = BTreeMap::new();
    for history in histories.values() {
        for &track in history {
            *counts.entry(track).or_default() += 1;
        }
    }
    counts
}

/// Step 3, second half: `c(i,j)`, the number of users with both `i, j ∈ H(u)`. `c` is
/// symmetric, so it is kept once per unordered pair as `(a, b)` with `a < b`: exactly the rows
/// of `co_listens` (every stored count is ≥ 1 because pairs are only ever incremented).
fn co_listening_counts(histories: &BTreeMap<User, BTreeSet<Track>>) -> BTreeMap<(Track, Track), u64> {
    let mut counts: BTreeMap<(Track, Track), u64> = BTreeMap::new();
    for history in histories.values() {
        let tracks: Vec<Track> = history.iter().copied().collect(); // ascending
        for (position, &a) in tracks.iter().enumerate() {
            for &b in &tracks[position + 1..] {
                *counts.entry((a, b)).or_default() += 1;
            }
        }
    }
    counts
}

/// Step 4: `s(i,j)` for every ordered pair `i ≠ j` with the exact `c(i,j) ≥ C`, over the
/// counts rounded to `B` significant bits, dropping `s = 0`. Returned as `i → [(j, s(i,j))]`.
fn similarities(
    co_counts: &BTreeMap<(Track, Track), u64>,
    listeners_in_history: &BTreeMap<Track, u64>,
    params: &Params,
) -> BTreeMap<Track, Vec<(Track, Units)>> {
    let mut similarities: BTreeMap<Track, Vec<(Track, Units)>> = BTreeMap::new();
    for (&(a, b), &co) in co_counts {
        if co < params.min_co {
            continue;
        }
        // Both directions, each evaluated literally as s(i,j) with n(i) first.
        for (i, j) in [(a, b), (b, a)] {
            let (n_i, n_j) = (listeners_in_history[&i], listeners_in_history[&j]);
            let units = rounded_cosine_units(co, n_i, n_j, params.score_precision, params.count_bits)
                .expect("SPEC §2 step 4 is defined for n(i), n(j) ≥ 1 (true: c ≥ 1) and P ≤ 18");
            if units != 0 {
                similarities.entry(i).or_default().push((j, units));
            }
        }
    }
    similarities
}

/// Step 5: `N(i)`, the `k` tracks `j` with the largest `s(i,j)`, ties: smaller `j` first.
/// Each list is in rank order; tracks without any similarity have no entry.
fn neighbors(similarities: &BTreeMap<Track, Vec<(Track, Units)>>, neighbor_count: usize) -> BTreeMap<Track, Vec<(Track, Units)>> {
    similarities.iter().map(|(&i, scored)| (i, top(scored.clone(), neighbor_count))).filter(|(_, list)| !list.is_empty()).collect()
}

/// Step 6: `R(u)`: for every `j ∉ H(u)`, `score(u,j) = Σ s(i,j)` over `i ∈ H(u)` with
/// `j ∈ N(i)`; the `N` largest, ties: smaller `j` first. A `j` reached through no `N(i)` has
/// no score (it is not a candidate), so a user without candidates has no entry. This is the
/// list at rest; when a pipeline may hold an older one, see [`Refreshes`].
fn recommendations(
    histories: &BTreeMap<User, BTreeSet<Track>>,
    neighbors: &BTreeMap<Track, Vec<(Track, Units)>>,
    recommendation_count: usize,
) -> BTreeMap<User, Vec<(Track, Units)>> {
    let mut recommendations = BTreeMap::new();
    for (&user, history) in histories {
        let mut scores: BTreeMap<Track, Units> = BTreeMap::new();
        for i in history {
            for &(j, units) in neighbors.get(i).map(Vec::as_slice).unwrap_or_default() {
                if !history.contains(&j) {
                    *scores.entry(j).or_default() += units;
                }
            }
        }
        let list = top(scores.into_iter().collect(), recommendation_count);
        if !list.is_empty() {
            recommendations.insert(user, list);
        }
    }
    recommendations
}

/// SPEC §2 step 6 over epochs: which stored `R(u)` a pipeline may hold after each epoch when
/// recommendations are *refreshed on activity*. [`compute`] gives the definition, what every
/// table holds at rest; between refreshes a user's stored list is the definition as of its
/// last refresh. So after epoch `e`:
///
/// * a user that listened in `e` holds the definition at `e`;
/// * any other user holds the definition at some epoch from its last listen to `e` (when the
///   background refreshed it, or not since its last listen);
/// * with every stale user refreshed in every epoch (`--refresh-idle all`), and after the
///   last epoch of a run that ends at rest, every user holds the definition.
///
/// Feed it the definition after each epoch and the users that listened in it.
#[derive(Debug, Default)]
pub struct Refreshes {
    /// Per user, the lists it may hold: the definitions since its last listen (deduplicated).
    admitted: BTreeMap<User, Vec<Vec<(Track, Units)>>>,
}

impl Refreshes {
    /// One more epoch: `definition` is [`compute`] over every listen so far, `listened` the
    /// users with a listen in the epoch; `all` says every user was refreshed at its end.
    pub fn epoch(&mut self, definition: &Tables, listened: &BTreeSet<User>, all: bool) {
        let lists = crate::tables::lists_by_key(&definition.user_recommendations);
        let users: BTreeSet<User> = self.admitted.keys().copied().chain(lists.keys().copied()).chain(listened.iter().copied()).collect();
        for user in users {
            let now = lists.get(&user).cloned().unwrap_or_default();
            let admitted = self.admitted.entry(user).or_default();
            if all || listened.contains(&user) {
                admitted.clear();
            }
            if !admitted.contains(&now) {
                admitted.push(now);
            }
        }
    }

    /// Whether `user` may hold `list` (its stored `R(u)`, empty: no row) now.
    pub fn admits(&self, user: User, list: &[(Track, Units)]) -> bool {
        match self.admitted.get(&user) {
            Some(admitted) => admitted.iter().any(|candidate| candidate[..] == *list),
            None => list.is_empty(),
        }
    }

    /// The users the model knows of: every user that listened, or was recommended something.
    pub fn users(&self) -> impl Iterator<Item = User> + '_ {
        self.admitted.keys().copied()
    }
}

/// Step 7: `plays` (listen events, repeats included), `listeners` (distinct users with a
/// listen, not capped by `K`) and `likes` (`"like"` events) of every track with a listen.
fn track_stats(listens: &[&Event]) -> BTreeMap<Track, TrackStats> {
    let mut plays: BTreeMap<Track, u64> = BTreeMap::new();
    let mut listeners: BTreeMap<Track, BTreeSet<User>> = BTreeMap::new();
    let mut likes: BTreeMap<Track, u64> = BTreeMap::new();
    // Every "like" is a listen (SPEC §1), so counting likes among the listens counts them all.
    for listen in listens {
        *plays.entry(listen.track_id).or_default() += 1;
        listeners.entry(listen.track_id).or_default().insert(listen.user_id);
        if listen.event_type == EventType::Like {
            *likes.entry(listen.track_id).or_default() += 1;
        }
    }
    plays
        .into_iter()
        .map(|(track, plays)| {
            let stats = TrackStats { plays, listeners: listeners[&track].len() as u64, likes: likes.get(&track).copied().unwrap_or(0) };
            (track, stats)
        })
        .collect()
}

/// The ranking of steps 5 and 6: the `limit` entries with the largest score, ties: smaller id
/// first, in that order.
fn top(mut scored: Vec<(u64, Units)>, limit: usize) -> Vec<(u64, Units)> {
    scored.sort_by_key(|&(id, units)| (Reverse(units), id));
    scored.truncate(limit);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::parse_lines;
    use std::collections::{BTreeMap, BTreeSet};

    /// A valid streaming event (a listen unless `ms_played` is below 30 000).
    fn streaming(user_id: u64, track_id: u64, event_time_ms: i64, ms_played: Option<u64>) -> Event {
        Event { user_id, track_id, event_time_ms, event_type: EventType::Streaming, ms_played }
    }

    /// A full-length listen (`streaming` without `ms_played`).
    fn listen(user_id: u64, track_id: u64, event_time_ms: i64) -> Event {
        streaming(user_id, track_id, event_time_ms, None)
    }

    fn typed(user_id: u64, track_id: u64, event_time_ms: i64, event_type: EventType, ms_played: Option<u64>) -> Event {
        Event { user_id, track_id, event_time_ms, event_type, ms_played }
    }

    /// Each user of `histories` listens to each of their tracks once, all at time 0.
    fn everyone_listens(histories: &[(u64, &[u64])]) -> Vec<Event> {
        histories.iter().flat_map(|&(user, tracks)| tracks.iter().map(move |&track| listen(user, track, 0))).collect()
    }

    fn params(history_cap: usize, min_co: u64, neighbors: usize, recommendations: usize, score_precision: u32) -> Params {
        Params { history_cap, min_co, neighbors, recommendations, score_precision, count_bits: 0 }
    }

    fn map<K: Ord + Copy, V: Copy>(rows: &[(K, V)]) -> BTreeMap<K, V> {
        rows.iter().copied().collect()
    }

    #[test]
    fn history_ties_at_the_boundary_keep_the_larger_track_id() {
        // K = 2; last(1,·) = 5 for tracks 10, 20, 30: ties, larger id first → H(1) = {30, 20}.
        let events = [listen(1, 10, 5), listen(1, 20, 5), listen(1, 30, 5)];
        let tables = compute(&events, &params(2, 1, 20, 10, 4));
        assert_eq!(tables.co_listens, map(&[((20, 30), 1)]));
        // Statistics are not capped by K: track 10 still has its row.
        assert_eq!(tables.track_stats.keys().copied().collect::<Vec<_>>(), vec![10, 20, 30]);

        // A newer listen of 10 at time 6 moves it in and pushes the smallest tie (20) out.
        let mut events = events.to_vec();
        events.push(listen(1, 10, 6));
        let tables = compute(&events, &params(2, 1, 20, 10, 4));
        assert_eq!(tables.co_listens, map(&[((10, 30), 1)]));
    }

    #[test]
    fn history_evicts_beyond_the_cap_and_last_is_the_greatest_time() {
        // K = 2. Track 1 at t=1, 2 at t=2, 3 at t=3: H = {2, 3}; 1 is evicted.
        let mut events = vec![listen(7, 1, 1), listen(7, 2, 2), listen(7, 3, 3)];
        let p = params(2, 1, 20, 10, 4);
        assert_eq!(compute(&events, &p).co_listens, map(&[((2, 3), 1)]));
        // An older listen of 1 (t=0) leaves last(7,1) = 1: nothing changes.
        events.push(listen(7, 1, 0));
        assert_eq!(compute(&events, &p).co_listens, map(&[((2, 3), 1)]));
        // A listen of 1 at t=4 makes it the newest: H = {1, 3}, 2 is evicted.
        events.push(listen(7, 1, 4));
        assert_eq!(compute(&events, &p).co_listens, map(&[((1, 3), 1)]));
        // The same events in any order give the same tables.
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(compute(&reversed, &p), compute(&events, &p));
    }

    #[test]
    fn repeats_of_a_track_in_the_history_change_only_plays() {
        // Users 1 and 2 both hear {1, 2}; user 3 hears {1, 3}. K = 2 so every history is full.
        let base = vec![listen(1, 1, 10), listen(1, 2, 20), listen(2, 1, 10), listen(2, 2, 20), listen(3, 1, 10), listen(3, 3, 20)];
        let p = params(2, 1, 20, 10, 4);
        let before = compute(&base, &p);
        // Repeats: 1 by user 1 (newer: reorders H(1) but not its set), 3 by user 3 (older).
        let mut repeated = base.clone();
        repeated.push(listen(1, 1, 99));
        repeated.push(listen(3, 3, 0));
        let after = compute(&repeated, &p);
        assert_eq!(after.co_listens, before.co_listens);
        assert_eq!(after.track_neighbors, before.track_neighbors);
        assert_eq!(after.user_recommendations, before.user_recommendations);
        // plays(1): 3 → 4, plays(3): 1 → 2; listeners unchanged.
        assert_eq!(before.track_stats[&1], TrackStats { plays: 3, listeners: 3, likes: 0 });
        assert_eq!(after.track_stats[&1], TrackStats { plays: 4, listeners: 3, likes: 0 });
        assert_eq!(after.track_stats[&3], TrackStats { plays: 2, listeners: 1, likes: 0 });
    }

    #[test]
    fn minimum_co_count_gates_similarities_and_recommendations_exclude_the_history() {
        // A = 1, B = 2 hear {1, 2}; C = 3 hears {1, 3}.
        // n(1) = 3, n(2) = 2, n(3) = 1; c(1,2) = 2, c(1,3) = 1, c(2,3) = 0.
        // s(1,2) = floor(20000 / sqrt(6) + 0.5) = floor(8164.97 + 0.5) = 8165.
        // s(1,3) = floor(10000 / sqrt(3) + 0.5) = floor(5773.50 + 0.5) = 5774.
        let events = everyone_listens(&[(1, &[1, 2]), (2, &[1, 2]), (3, &[1, 3])]);

        // C = 2: only (1,2). N(1) = [2], N(2) = [1]. A, B: both neighbours already heard, no
        // candidates, no rows. C: H = {1, 3}; 2 ∈ N(1) → score 8165.
        let tables = compute(&events, &params(50, 2, 20, 10, 4));
        assert_eq!(tables.co_listens, map(&[((1, 2), 2), ((1, 3), 1)]));
        assert_eq!(tables.track_neighbors, map(&[((1, 2), 8165), ((2, 1), 8165)]));
        assert_eq!(tables.user_recommendations, map(&[((3, 2), 8165)]));

        // C = 1: (1,3) too. N(1) = [2, 3], N(3) = [1]. A and B: 3 ∈ N(1) → 5774; 2 ∉ R (heard).
        // C: 2 ∈ N(1) → 8165; 1 ∈ N(3) is in H(C).
        let tables = compute(&events, &params(50, 1, 20, 10, 4));
        assert_eq!(tables.track_neighbors, map(&[((1, 2), 8165), ((1, 3), 5774), ((2, 1), 8165), ((3, 1), 5774)]));
        assert_eq!(tables.user_recommendations, map(&[((1, 3), 5774), ((2, 3), 5774), ((3, 2), 8165)]));
    }

    #[test]
    fn zero_scores_are_dropped_but_co_listens_stay() {
        // User 1 hears {1, 2}; users 2, 3 hear {1}; users 4, 5 hear {2}.
        // n(1) = n(2) = 3, c(1,2) = 1.
        let events = everyone_listens(&[(1, &[1, 2]), (2, &[1]), (3, &[1]), (4, &[2]), (5, &[2])]);
        // P = 0: floor(1 / sqrt(9) + 0.5) = floor(0.833) = 0 → dropped: no neighbours, no recommendations.
        let tables = compute(&events, &params(50, 1, 20, 10, 0));
        assert_eq!(tables.co_listens, map(&[((1, 2), 1)]));
        assert!(tables.track_neighbors.is_empty());
        assert!(tables.user_recommendations.is_empty());
        // P = 1: floor(10 / 3 + 0.5) = floor(3.83) = 3 → kept; users 2..5 get the other track.
        let tables = compute(&events, &params(50, 1, 20, 10, 1));
        assert_eq!(tables.track_neighbors, map(&[((1, 2), 3), ((2, 1), 3)]));
        assert_eq!(tables.user_recommendations, map(&[((2, 2), 3), ((3, 2), 3), ((4, 1), 3), ((5, 1), 3)]));

        // Half rounds up: n(1) = n(2) = 2, c = 1, P = 0: floor(1/2 + 0.5) = 1 → kept.
        let events = everyone_listens(&[(1, &[1, 2]), (2, &[1]), (3, &[2])]);
        let tables = compute(&events, &params(50, 1, 20, 10, 0));
        assert_eq!(tables.track_neighbors, map(&[((1, 2), 1), ((2, 1), 1)]));
    }

    #[test]
    fn neighbour_and_recommendation_ties_take_the_smaller_id() {
        // Users: 1, 2 hear {5, 1, 9}; 3, 4 hear {5, 2, 9}; 5, 6 hear {5, 3}; 7 hears {5}.
        // n(5) = 7, n(9) = 4, n(1) = n(2) = n(3) = 2.
        // s(5,9) = floor(40000 / sqrt(28) + 0.5) = floor(7559.29 + 0.5) = 7559.
        // s(5,1) = s(5,2) = s(5,3) = floor(20000 / sqrt(14) + 0.5) = floor(5345.22 + 0.5) = 5345.
        // s(9,1) = s(9,2) = floor(20000 / sqrt(8) + 0.5) = floor(7071.07 + 0.5) = 7071.
        let events =
            everyone_listens(&[(1, &[5, 1, 9]), (2, &[5, 1, 9]), (3, &[5, 2, 9]), (4, &[5, 2, 9]), (5, &[5, 3]), (6, &[5, 3]), (7, &[5])]);
        // k = 3: N(5) = [9, 1, 2] (9 by score although its id is larger; 3 loses the tie).
        let tables = compute(&events, &params(50, 2, 3, 2, 4));
        let neighbors_of = |tables: &Tables, i: u64| -> Vec<(u64, i64)> {
            tables.track_neighbors.range((i, 0)..=(i, u64::MAX)).map(|(&(_, j), &s)| (j, s)).collect()
        };
        assert_eq!(neighbors_of(&tables, 5), vec![(1, 5345), (2, 5345), (9, 7559)]);
        assert_eq!(neighbors_of(&tables, 9), vec![(1, 7071), (2, 7071), (5, 7559)]);
        assert_eq!(neighbors_of(&tables, 3), vec![(5, 5345)]);
        // User 7: H = {5}; candidates 9: 7559, 1: 5345, 2: 5345; N = 2 keeps [9, 1].
        let recommended_to_7: Vec<_> = tables.user_recommendations.range((7, 0)..=(7, u64::MAX)).map(|(&(_, j), &s)| (j, s)).collect();
        assert_eq!(recommended_to_7, vec![(1, 5345), (9, 7559)]);
        // User 5: H = {3, 5}; 3 contributes N(3) = [5] (heard); 5 contributes 9: 7559,
        // 1: 5345, 2: 5345 → [9, 1].
        assert_eq!(tables.user_recommendations.get(&(5, 9)), Some(&7559));
        assert_eq!(tables.user_recommendations.get(&(5, 1)), Some(&5345));
        assert_eq!(tables.user_recommendations.get(&(5, 2)), None);

        // k = 2: N(5) = [9, 1]; 2 drops out of N(5).
        let tables = compute(&events, &params(50, 2, 2, 2, 4));
        assert_eq!(neighbors_of(&tables, 5), vec![(1, 5345), (9, 7559)]);
    }

    #[test]
    fn recommendation_scores_sum_over_the_history() {
        // 1, 2 hear {1, 3}; 3, 4 hear {2, 3}; 5 hears {1, 2}.
        // n(1) = n(2) = 3, n(3) = 4; c(1,3) = c(2,3) = 2, c(1,2) = 1.
        // C = 2: s(1,3) = s(2,3) = floor(20000 / sqrt(12) + 0.5) = floor(5773.50 + 0.5) = 5774.
        // N(1) = [3], N(2) = [3], N(3) = [1, 2].
        // R(5): 3 via 1 and via 2 → 5774 + 5774 = 11548. R(1) = R(2) = {2: 5774} (via 3;
        // 1 and 3 are heard). R(3) = R(4) = {1: 5774}.
        let events = everyone_listens(&[(1, &[1, 3]), (2, &[1, 3]), (3, &[2, 3]), (4, &[2, 3]), (5, &[1, 2])]);
        let tables = compute(&events, &params(50, 2, 20, 10, 4));
        assert_eq!(tables.user_recommendations, map(&[((1, 2), 5774), ((2, 2), 5774), ((3, 1), 5774), ((4, 1), 5774), ((5, 3), 11548)]));
    }

    #[test]
    fn statistics_count_listens_listeners_and_likes() {
        let events = [
            // User 1, track 10: two full plays, a short play, a skip, a like.
            streaming(1, 10, 1, Some(200_000)),
            streaming(1, 10, 2, Some(30_001)),
            streaming(1, 10, 3, Some(29_999)),               // short: not a listen
            typed(1, 10, 4, EventType::Skip, Some(100_000)), // skip: not a listen
            typed(1, 10, 5, EventType::Like, Some(1_000)),   // a like is a listen whatever it played
            // User 2, track 10: a like and a play without ms_played.
            typed(2, 10, 1, EventType::Like, None),
            streaming(2, 10, 2, None),
            // User 3: only a skip of 10 and a short play of 11: no listens, no rows for 11.
            typed(3, 10, 1, EventType::Skip, None),
            streaming(3, 11, 1, Some(0)),
            // User 4: exactly 30 000 ms is a listen.
            streaming(4, 12, 1, Some(30_000)),
        ];
        let tables = compute(&events, &Params::default());
        // Track 10: plays = 3 (user 1) + 2 (user 2) = 5; listeners {1, 2} = 2; likes = 2.
        assert_eq!(
            tables.track_stats,
            map(&[(10, TrackStats { plays: 5, listeners: 2, likes: 2 }), (12, TrackStats { plays: 1, listeners: 1, likes: 0 })])
        );
        // Nobody heard two tracks: no pairs at all.
        assert!(tables.co_listens.is_empty());
    }

    #[test]
    fn empty_history_cap_leaves_only_statistics() {
        let events = everyone_listens(&[(1, &[1, 2]), (2, &[1, 2])]);
        let tables = compute(&events, &params(0, 1, 20, 10, 4));
        assert!(tables.co_listens.is_empty() && tables.track_neighbors.is_empty());
        assert!(tables.user_recommendations.is_empty());
        assert_eq!(tables.track_stats.len(), 2);
    }

    /// H(u) recomputed differently from the oracle: each user's listens newest first (ties:
    /// larger track first), keeping the first `K` distinct tracks met.
    fn independent_histories(listens: &[&Event], history_cap: usize) -> BTreeMap<u64, BTreeSet<u64>> {
        let mut by_user: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
        for listen in listens {
            by_user.entry(listen.user_id).or_default().push((listen.event_time_ms, listen.track_id));
        }
        by_user
            .into_iter()
            .map(|(user, mut listens)| {
                listens.sort_unstable_by(|a, b| b.cmp(a));
                let mut history = BTreeSet::new();
                for (_, track) in listens {
                    if history.len() == history_cap {
                        break;
                    }
                    history.insert(track);
                }
                (user, history)
            })
            .collect()
    }

    /// `q(x)` of SPEC §2 step 4 written from its words, not `round_count`'s bit arithmetic:
    /// the binary digits of `x` after the first `bits` become zeros.
    fn truncated(x: u64, bits: u32) -> u64 {
        let digits = format!("{x:b}");
        if bits == 0 || digits.len() <= bits as usize {
            return x;
        }
        let kept: String = digits.chars().enumerate().map(|(at, digit)| if at < bits as usize { digit } else { '0' }).collect();
        u64::from_str_radix(&kept, 2).expect("binary digits")
    }

    #[test]
    fn independent_rounding_agrees_with_round_count() {
        assert_eq!((truncated(99, 5), truncated(100, 5), truncated(1000, 5), truncated(31, 5), truncated(7, 0)), (96, 100, 992, 31, 7));
        for x in (0..5_000u64).chain([u64::MAX, 1 << 40, (1 << 40) + 12_345]) {
            for bits in 0..=8 {
                assert_eq!(encore_core::round_count(x, bits), truncated(x, bits), "q({x}) at B = {bits}");
            }
        }
    }

    /// Rounded counts, by hand: 40 users share tracks 1 and 2, 9 more have only 1, 5 more only
    /// 2: c(1,2) = 40, n(1) = 49, n(2) = 45. At B = 3: q(40) = 40, q(49) = 48, q(45) = 40, so
    /// s = 400000 / sqrt(1920) = 9128.7…; exact (B = 0): 400000 / sqrt(2205) = 8518.2…
    #[test]
    fn counts_enter_the_cosine_rounded() {
        let mut events = Vec::new();
        for user in 0..40 {
            events.extend([listen(user, 1, 0), listen(user, 2, 0)]);
        }
        events.extend((100..109).map(|user| listen(user, 1, 0)));
        events.extend((200..205).map(|user| listen(user, 2, 0)));
        let exact = compute(&events, &params(50, 2, 20, 10, 4));
        assert_eq!(exact.track_neighbors, map(&[((1, 2), 8_518), ((2, 1), 8_518)]));
        let rounded = compute(&events, &Params { count_bits: 3, ..params(50, 2, 20, 10, 4) });
        assert_eq!(rounded.track_neighbors, map(&[((1, 2), 9_129), ((2, 1), 9_129)]));
        // co_listens keeps the exact count, and C applies to it: at C = 33 the pair stays,
        // although q(c) = 32 < 33 at B = 1.
        assert_eq!(rounded.co_listens, map(&[((1, 2), 40)]));
        let gated = compute(&events, &Params { count_bits: 1, ..params(50, 33, 20, 10, 4) });
        assert_eq!(gated.track_neighbors.len(), 2, "C compares the exact c");
        // B = 1: q(40) = 32, q(49) = 32, q(45) = 32 → 1.0.
        assert_eq!(gated.track_neighbors[&(1, 2)], 10_000);
    }

    /// Checks `tables` against properties of SPEC §2 derived from the raw events by other means
    /// than the oracle's. Returns a few figures for printing.
    fn assert_consistent(events: &[Event], params: &Params, tables: &Tables) -> String {
        let listens: Vec<&Event> = events.iter().filter(|event| event.is_listen()).collect();
        let histories = independent_histories(&listens, params.history_cap);
        let mut n: BTreeMap<u64, u64> = BTreeMap::new();
        for history in histories.values() {
            for &track in history {
                *n.entry(track).or_default() += 1;
            }
        }
        assert_co_listens(tables, &histories, &n);
        let neighbors = assert_neighbors(tables, params, &n);
        assert_recommendations(tables, params, &histories, &neighbors);
        assert_track_stats(events, &listens, tables);
        format!(
            "{} listens, {} users, {} tracks with neighbours, {} users with recommendations; rows: \
             track_neighbors {}, user_recommendations {}, track_stats {}, co_listens {}",
            listens.len(),
            histories.len(),
            neighbors.len(),
            tables.user_recommendations.keys().map(|&(u, _)| u).collect::<BTreeSet<_>>().len(),
            tables.track_neighbors.len(),
            tables.user_recommendations.len(),
            tables.track_stats.len(),
            tables.co_listens.len(),
        )
    }

    /// co_listens: a < b, c ≥ 1, c ≤ min(n(a), n(b)), and the pairs add up per user.
    fn assert_co_listens(tables: &Tables, histories: &BTreeMap<u64, BTreeSet<u64>>, n: &BTreeMap<u64, u64>) {
        let pairs: u64 = histories.values().map(|h| (h.len() as u64) * (h.len() as u64).saturating_sub(1) / 2).sum();
        assert_eq!(tables.co_listens.values().sum::<u64>(), pairs);
        for (&(a, b), &c) in &tables.co_listens {
            assert!(a < b && c >= 1 && c <= n[&a].min(n[&b]), "co_listens ({a},{b}) = {c}");
        }
        // Spot-check exact counts on every 97th pair.
        for (&(a, b), &c) in tables.co_listens.iter().step_by(97) {
            let users = histories.values().filter(|h| h.contains(&a) && h.contains(&b)).count() as u64;
            assert_eq!(c, users, "c({a},{b})");
        }
    }

    /// track_neighbors, from the co_listens table: the right scores, at most k, and no
    /// outsider outranks an insider. Returns the neighbour lists.
    fn assert_neighbors(tables: &Tables, params: &Params, n: &BTreeMap<u64, u64>) -> BTreeMap<u64, BTreeMap<u64, i64>> {
        // Similarities: i → [(j, s)] with c ≥ C, s > 0.
        let mut candidates: BTreeMap<u64, Vec<(u64, i64)>> = BTreeMap::new();
        for (&(a, b), &c) in &tables.co_listens {
            if c < params.min_co {
                continue;
            }
            for (i, j) in [(a, b), (b, a)] {
                let (c, n_i, n_j) =
                    (truncated(c, params.count_bits), truncated(n[&i], params.count_bits), truncated(n[&j], params.count_bits));
                let s = encore_core::cosine_units(c, n_i, n_j, params.score_precision).expect("valid");
                if s > 0 {
                    candidates.entry(i).or_default().push((j, s));
                }
            }
        }
        let mut neighbors: BTreeMap<u64, BTreeMap<u64, i64>> = BTreeMap::new();
        for (&(i, j), &s) in &tables.track_neighbors {
            neighbors.entry(i).or_default().insert(j, s);
        }
        for (i, scored) in &candidates {
            let chosen = neighbors.get(i).cloned().unwrap_or_default();
            assert_eq!(chosen.len(), scored.len().min(params.neighbors), "|N({i})|");
            let weakest = chosen.iter().map(|(&j, &s)| (Reverse(s), j)).max();
            for &(j, s) in scored {
                match chosen.get(&j) {
                    Some(&kept) => assert_eq!(kept, s, "s({i},{j})"),
                    None => assert!(Some((Reverse(s), j)) > weakest, "{j} should be in N({i})"),
                }
            }
        }
        assert!(neighbors.keys().all(|i| candidates.contains_key(i)));
        neighbors
    }

    /// user_recommendations: at most N, never heard, the sum over the history, top N.
    fn assert_recommendations(
        tables: &Tables,
        params: &Params,
        histories: &BTreeMap<u64, BTreeSet<u64>>,
        neighbors: &BTreeMap<u64, BTreeMap<u64, i64>>,
    ) {
        let mut recommended: BTreeMap<u64, BTreeMap<u64, i64>> = BTreeMap::new();
        for (&(u, j), &score) in &tables.user_recommendations {
            recommended.entry(u).or_default().insert(j, score);
        }
        for (user, history) in histories {
            let mut scores: BTreeMap<u64, i64> = BTreeMap::new();
            for i in history {
                for (&j, &s) in neighbors.get(i).into_iter().flatten() {
                    if !history.contains(&j) {
                        *scores.entry(j).or_default() += s;
                    }
                }
            }
            let chosen = recommended.remove(user).unwrap_or_default();
            assert_eq!(chosen.len(), scores.len().min(params.recommendations), "|R({user})|");
            assert!(chosen.keys().all(|j| !history.contains(j)), "R({user}) recommends a heard track");
            let weakest = chosen.iter().map(|(&j, &s)| (Reverse(s), j)).max();
            for (j, s) in scores {
                match chosen.get(&j) {
                    Some(&kept) => assert_eq!(kept, s, "score({user},{j})"),
                    None => assert!(Some((Reverse(s), j)) > weakest, "{j} should be in R({user})"),
                }
            }
        }
        assert!(recommended.is_empty(), "recommendations for users without history");
    }

    /// track_stats: every listened track, plays and likes add up, 1 ≤ listeners ≤ plays.
    fn assert_track_stats(events: &[Event], listens: &[&Event], tables: &Tables) {
        let listened: BTreeSet<u64> = listens.iter().map(|l| l.track_id).collect();
        assert!(tables.track_stats.keys().eq(listened.iter()));
        assert_eq!(tables.track_stats.values().map(|s| s.plays).sum::<u64>(), listens.len() as u64);
        let likes = events.iter().filter(|e| e.event_type == EventType::Like).count() as u64;
        assert_eq!(tables.track_stats.values().map(|s| s.likes).sum::<u64>(), likes);
        let listener_pairs: BTreeSet<(u64, u64)> = listens.iter().map(|l| (l.track_id, l.user_id)).collect();
        assert_eq!(tables.track_stats.values().map(|s| s.listeners).sum::<u64>(), listener_pairs.len() as u64);
        assert!(tables.track_stats.values().all(|s| 1 <= s.listeners && s.listeners <= s.plays && s.likes <= s.plays));
    }

    #[test]
    fn random_inputs_are_consistent_and_order_independent() {
        let all_params = [
            params(3, 2, 3, 4, 4),
            params(5, 1, 2, 3, 2),
            params(1, 1, 5, 5, 4),
            params(8, 3, 20, 10, 0),
            Params { count_bits: 1, ..params(4, 1, 3, 3, 4) },
            Params { count_bits: 2, ..params(6, 2, 4, 3, 4) },
            Params { count_bits: 3, ..params(10, 1, 5, 5, 3) },
            Params::default(),
        ];
        for seed in 0..12u64 {
            let lines = crate::testing::random_lines(seed, 400);
            let (events, _) = parse_lines(&lines);
            let mut reversed = events.clone();
            reversed.reverse();
            for params in &all_params {
                let tables = compute(&events, params);
                assert_consistent(&events, params, &tables);
                assert_eq!(compute(&reversed, params), tables, "seed {seed}, {params:?}");
            }
        }
    }

    #[test]
    fn movielens_small_is_consistent() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-latest-small/events.jsonl");
        let text = std::fs::read(path).expect("the MovieLens events file (see /work/shared/data)");
        let lines: Vec<Vec<u8>> = text.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()).map(<[u8]>::to_vec).collect();
        let (events, errors) = parse_lines(&lines);
        assert_eq!(lines.len(), 100_836);
        assert!(errors.is_empty(), "invalid lines: {:?}", &errors[..errors.len().min(3)]);
        for params in [Params::default(), params(10, 3, 5, 5, 4), Params { count_bits: 2, ..Params::default() }] {
            let started = std::time::Instant::now();
            let tables = compute(&events, &params);
            let elapsed = started.elapsed();
            let figures = assert_consistent(&events, &params, &tables);
            assert!(!tables.track_neighbors.is_empty() && !tables.user_recommendations.is_empty());
            println!("MovieLens small, {params:?}: {figures} (oracle {elapsed:.2?})");
        }
    }
}
