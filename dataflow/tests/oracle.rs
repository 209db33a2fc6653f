//! The dataflow against the plain sequential implementation of SPEC §2 (`oracle`), on
//! seeded random inputs, after every epoch, for 1, 2 and 4 workers; and on MovieLens.

use encore_dataflow::tables::Params;
use encore_dataflow::testing::{self, assert_tables_eq, check_every_epoch, run_snapshots};

fn small(history_cap: usize, min_co: u64, neighbors: usize, recommendations: usize, score_precision: u32) -> Params {
    Params { history_cap, min_co, neighbors, recommendations, score_precision }
}

#[test]
fn one_worker_small_caps() {
    for seed in 0..6 {
        check_every_epoch(seed, 400, small(3, 1, 2, 3, 3), 37, 1);
    }
}

#[test]
fn two_workers_small_caps() {
    for seed in 10..16 {
        check_every_epoch(seed, 400, small(4, 2, 3, 2, 4), 50, 2);
    }
}

#[test]
fn four_workers_varied_parameters() {
    for (seed, params) in [
        (20, small(2, 1, 1, 1, 0)),
        (21, small(5, 2, 4, 4, 2)),
        (22, small(8, 3, 3, 5, 6)),
        (23, small(1, 1, 5, 5, 4)),
    ] {
        check_every_epoch(seed, 500, params, 64, 4);
    }
}

#[test]
fn one_epoch_per_line_and_one_epoch_for_all() {
    check_every_epoch(30, 120, small(3, 1, 2, 2, 4), 1, 2);
    check_every_epoch(31, 600, small(3, 1, 2, 2, 4), 10_000, 2);
}

#[test]
fn default_parameters() {
    check_every_epoch(40, 2_000, Params::default(), 250, 2);
}

/// The MovieLens sample end to end (final state) equals the oracle, and the dataflow is
/// indifferent to the worker count.
#[test]
fn movielens_equals_the_oracle() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-latest-small/events.jsonl");
    let text = std::fs::read(path).expect("../shared/data/ml-latest-small/events.jsonl is readable");
    let lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    let params = Params::default();
    let (events, invalid) = testing::parse_lines(&lines);
    assert!(invalid.is_empty(), "the sample is valid");
    let want = encore_dataflow::oracle::compute(&events, &params);
    assert!(want.track_neighbors.len() > 1_000 && want.user_recommendations.len() > 1_000, "a meaningful sample");
    for workers in [1, 3] {
        let got = run_snapshots(lines.clone(), params, 25_000, workers);
        assert_tables_eq(&got.tables, &want, &format!("MovieLens, {workers} workers"));
    }
}

