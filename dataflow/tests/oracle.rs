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
/// in the tens and move up and down as histories evict; B = 1, 2, 3 round most of them.
#[test]
fn rounded_counts_on_dense_listening() {
    for (seed, workers) in [(50u64, 1usize), (51, 2), (52, 3), (53, 4)] {
        for bits in [1, 2, 3] {
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
        let want = encore_dataflow::oracle::compute(&events, &params);
        assert!(want.track_neighbors.len() > 1_000 && want.user_recommendations.len() > 1_000, "a meaningful sample");
        let got = run_snapshots(lines.clone(), params, 25_000, workers);
        assert_tables_eq(&got.tables, &want, &format!("MovieLens, B = {}, {workers} workers", params.count_bits));
    }
}
