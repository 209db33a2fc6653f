//! The dataflow against the plain sequential implementation of SPEC §2 (`oracle`), on
//! seeded random inputs, after every epoch, for 1, 2 and 4 workers; and on MovieLens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use encore_dataflow::batch::{self, BatchJob, Lines};
use encore_dataflow::engine::Epoch;
use encore_dataflow::output::EpochSink;
use encore_dataflow::tables::{Changes, Params, Tables};
use encore_dataflow::testing::{self, assert_tables_eq};

/// Keeps the tables after every closed epoch.
#[derive(Default)]
struct Snapshots {
    tables: Tables,
    dead_letters: Vec<(i64, String)>,
    after: BTreeMap<Epoch, Tables>,
}

impl EpochSink for Snapshots {
    fn epoch_closed(&mut self, epoch: Epoch, changes: Changes) {
        self.tables.apply(&changes);
        self.dead_letters.extend(changes.dead_letters.iter().map(|d| (d.offset, d.error.clone())));
        self.after.insert(epoch, self.tables.clone());
    }
}

fn run_dataflow(lines: Vec<Vec<u8>>, params: Params, epoch_events: usize, workers: usize) -> Snapshots {
    let state = Arc::new(Mutex::new(Snapshots::default()));
    let sink = Arc::clone(&state);
    let job = BatchJob { lines: Lines::Memory(Arc::new(lines)), params, emit_co_listens: true, epoch_events };
    batch::run(timely::Config::process(workers), job, move || Arc::clone(&sink)).expect("dataflow runs");
    Arc::try_unwrap(state).ok().expect("workers are done").into_inner().expect("no worker panicked")
}

/// Compares the dataflow with the oracle after every epoch (an epoch without changes keeps
/// the previous state), and the dead letters with the parser's verdicts.
fn check(seed: u64, lines: usize, params: Params, epoch_events: usize, workers: usize) {
    let input = testing::random_lines(seed, lines);
    let expected = testing::expected_after_each_epoch(&input, &params, epoch_events);
    let (_, invalid) = testing::parse_lines(&input);
    let mut got = run_dataflow(input, params, epoch_events, workers);

    let mut current = Tables::default();
    for (epoch, want) in expected.iter().enumerate() {
        if let Some(tables) = got.after.get(&(epoch as Epoch)) {
            current = tables.clone();
        }
        assert_tables_eq(&current, want, &format!("seed {seed}, {workers} workers, {params:?}, after epoch {epoch}"));
    }
    got.dead_letters.sort();
    let want_dead: Vec<(i64, String)> = invalid.into_iter().map(|(line, error)| (line as i64, error)).collect();
    assert_eq!(got.dead_letters, want_dead, "dead letters, seed {seed}");
}

fn small(history_cap: usize, min_co: u64, neighbors: usize, recommendations: usize, score_precision: u32) -> Params {
    Params { history_cap, min_co, neighbors, recommendations, score_precision }
}

#[test]
fn one_worker_small_caps() {
    for seed in 0..6 {
        check(seed, 400, small(3, 1, 2, 3, 3), 37, 1);
    }
}

#[test]
fn two_workers_small_caps() {
    for seed in 10..16 {
        check(seed, 400, small(4, 2, 3, 2, 4), 50, 2);
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
        check(seed, 500, params, 64, 4);
    }
}

#[test]
fn one_epoch_per_line_and_one_epoch_for_all() {
    check(30, 120, small(3, 1, 2, 2, 4), 1, 2);
    check(31, 600, small(3, 1, 2, 2, 4), 10_000, 2);
}

#[test]
fn default_parameters() {
    check(40, 2_000, Params::default(), 250, 2);
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
        let got = run_dataflow(lines.clone(), params, 25_000, workers);
        assert_tables_eq(&got.tables, &want, &format!("MovieLens, {workers} workers"));
    }
}
