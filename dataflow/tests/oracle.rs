//! The dataflow against the plain sequential implementation of SPEC §2 (`oracle`), on
//! seeded random inputs, after every epoch, for 1, 2 and 4 workers; and on MovieLens.
//!
//! The random inputs are small (counts in the tens), so the count precision `B` is mostly
//! 1–3 here: at the default 5 almost no count would be rounded. `rounded_counts_*` feed
//! inputs where many users share few tracks, so that counts cross many rounding steps up and
//! down (histories evict) within and across epochs.

use encore_dataflow::tables::Params;
use encore_dataflow::testing::{self, assert_tables_eq, check_every_epoch, run_snapshots};

fn small(history_cap: usize, min_co: u64, neighbors: usize, recommendations: usize, score_precision: u32, count_bits: u32) -> Params {
    Params { history_cap, min_co, neighbors, recommendations, score_precision, count_bits }
}

#[test]
fn one_worker_small_caps() {
    for seed in 0..6 {
        check_every_epoch(seed, 400, small(3, 1, 2, 3, 3, seed as u32 % 3), 37, 1);
    }
}

#[test]
fn two_workers_small_caps() {
    for seed in 10..16 {
        check_every_epoch(seed, 400, small(4, 2, 3, 2, 4, 1 + seed as u32 % 3), 50, 2);
    }
}

#[test]
fn four_workers_varied_parameters() {
    for (seed, params) in
        [(20, small(2, 1, 1, 1, 0, 0)), (21, small(5, 2, 4, 4, 2, 1)), (22, small(8, 3, 3, 5, 6, 2)), (23, small(1, 1, 5, 5, 4, 5))]
    {
        check_every_epoch(seed, 500, params, 64, 4);
    }
}

#[test]
fn one_epoch_per_line_and_one_epoch_for_all() {
    check_every_epoch(30, 120, small(3, 1, 2, 2, 4, 1), 1, 2);
    check_every_epoch(31, 600, small(3, 1, 2, 2, 4, 2), 10_000, 2);
}

#[test]
fn default_parameters() {
    check_every_epoch(40, 2_000, Params::default(), 250, 2);
    check_every_epoch(41, 2_000, Params { count_bits: 0, ..Params::default() }, 250, 2);
}

/// Dense listening: 120 users over 12 tracks with a history cap of 4, so n(i) and c(i,j) are
/// in the tens and move up and down as histories evict; B = 1, 2, 3, 4 round most of them.
#[test]
fn rounded_counts_on_dense_listening() {
    for (seed, workers) in [(50u64, 1usize), (51, 2), (52, 3), (53, 4)] {
        for bits in [1, 2, 3, 4] {
            let lines = testing::dense_lines(seed, 1_500, 120, 12);
            testing::check_lines_every_epoch(&format!("dense seed {seed}"), lines, small(4, 2, 3, 3, 4, bits), 100, workers);
        }
    }
}

/// The MovieLens sample end to end (final state) equals the oracle, and the dataflow is
/// indifferent to the worker count.
#[test]
fn movielens_equals_the_oracle() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-latest-small/events.jsonl");
    let text = std::fs::read(path).expect("../shared/data/ml-latest-small/events.jsonl is readable");
    let lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    let (events, invalid) = testing::parse_lines(&lines);
    assert!(invalid.is_empty(), "the sample is valid");
    // The default B = 5 and exact counts: MovieLens counts reach the hundreds, so B = 5 rounds.
    for (params, workers) in [(Params::default(), 1), (Params::default(), 3), (Params { count_bits: 0, ..Params::default() }, 2)] {
        let want = encore_dataflow::testing::oracle::compute(&events, &params);
        assert!(want.track_neighbors.len() > 1_000 && want.user_recommendations.len() > 1_000, "a meaningful sample");
        let got = run_snapshots(lines.clone(), params, 25_000, workers);
        assert_tables_eq(&got.tables, &want, &format!("MovieLens, B = {}, {workers} workers", params.count_bits));
    }
}

/// SPEC §2 step 6's background refresh, through the file job: `S` users hold only track `A`;
/// one listen (by another user) changes `N(A)`, making all of them stale at once; then every
/// epoch has one listen elsewhere (busy, so each worker refreshes at most `M` stale users).
/// After `j` such epochs at most `j·M·W` of them hold the new list, and all do after
/// `⌈S / (M·W)⌉` (the users are spread evenly over the workers), before the last epoch, which
/// refreshes everyone anyway.
#[test]
fn idle_stale_users_are_refreshed_within_their_share_of_the_budget() {
    use differential_dataflow::Hashable;
    use encore_dataflow::engine::RefreshBudget;
    const STALE: usize = 24;
    const M: usize = 2;
    let listen = |user: u64, track: u64, time: i64| {
        format!(r#"{{"user_id":{user},"track_id":{track},"event_timestamp":{time},"event_type":"like"}}"#)
    };
    let skip = |time: i64| format!(r#"{{"user_id":9999,"track_id":9999,"event_timestamp":{time},"event_type":"skip"}}"#);
    let (a, c, d) = (1u64, 2u64, 3u64);
    for workers in [1usize, 2, 3] {
        // STALE users, the same number on every worker (timely routes by hash modulo W).
        let mut per_worker = vec![0; workers];
        let stale: Vec<u64> = (1_000u64..)
            .filter(|user| {
                let worker = (user.hashed() % workers as u64) as usize;
                per_worker[worker] += 1;
                per_worker[worker] <= STALE / workers
            })
            .take(STALE)
            .collect();
        // Epoch 0: the stale users hold A; helpers make N(A) = [C, D]. Epoch 1: one more
        // co-listener of A and C changes every score of N(A). Then one listen per epoch by a
        // user of tracks nobody else holds. Epochs are padded with skips to one size.
        let epoch_lines = STALE + 4;
        let mut epochs: Vec<Vec<String>> = vec![stale.iter().map(|&u| listen(u, a, 1)).collect()];
        epochs[0].extend([listen(1, a, 1), listen(1, c, 2), listen(2, a, 1), listen(2, d, 2)]);
        // (The helpers listen again in it: active, so refreshed; only the STALE users wait.)
        epochs.push(vec![listen(3, a, 3), listen(3, c, 4), listen(1, c, 2), listen(2, d, 2)]);
        let rounds = STALE.div_ceil(M * workers);
        for round in 0..rounds + 3 {
            epochs.push(vec![listen(4, 100 + round as u64, 10 + round as i64)]);
        }
        let lines: Vec<Vec<u8>> = epochs
            .into_iter()
            .flat_map(|mut epoch| {
                epoch.resize_with(epoch_lines, || skip(0));
                epoch.into_iter().map(String::into_bytes)
            })
            .collect();
        let params = small(4, 1, 3, 3, 4, 0);
        let got = testing::run_snapshots_with(lines.clone(), params, epoch_lines, workers, RefreshBudget::Users(M));
        let (events, _) = testing::parse_lines(&lines);
        let want = encore_dataflow::testing::oracle::compute(&events, &params);
        assert_tables_eq(&got.tables, &want, "at rest");
        let new_list = |tables: &encore_dataflow::tables::Tables, user: u64| -> Vec<(u64, i64)> {
            tables.user_recommendations.range((user, 0)..(user + 1, 0)).map(|(&(_, track), &units)| (track, units)).collect()
        };
        // Their lists do change: before epoch 1 none held the new one.
        assert!(stale.iter().all(|&user| new_list(&got.after[&0], user) != new_list(&want, user)), "{workers} workers");
        // Epoch 1 makes them stale and is the first busy epoch that may refresh M per worker.
        let mut refreshed_before = 0;
        for round in 1..=rounds {
            let tables = &got.after[&(round as u64)];
            let refreshed = stale.iter().filter(|&&user| new_list(tables, user) == new_list(&want, user)).count();
            assert!(refreshed <= round * M * workers, "{workers} workers, after {round} busy epochs: {refreshed} refreshed");
            assert!(refreshed > refreshed_before, "{workers} workers: no progress in busy epoch {round}");
            refreshed_before = refreshed;
        }
        assert_eq!(refreshed_before, STALE, "{workers} workers: every stale user refreshed within ⌈S/(M·W)⌉ = {rounds} busy epochs");
    }
}
