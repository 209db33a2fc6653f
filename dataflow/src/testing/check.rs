//! From lines to the tables the oracle expects, and the run-and-compare checks of the dataflow
//! against it (after every epoch), with the assertions the tests share.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use encore_core::{parse_event, Event};

use super::lines::random_lines;
use super::oracle;
use crate::engine::{Epoch, RefreshBudget};
use crate::job::file::{self, FileJob};
use crate::sink::EpochSink;
use crate::source::file::Lines;
use crate::tables::{Changes, Params, Tables};

/// Splits `lines` into the valid events and `(0-based line number, parser error)` pairs, as
/// the pipeline does (via [`encore_core::parse_event`]).
pub fn parse_lines(lines: &[Vec<u8>]) -> (Vec<Event>, Vec<(usize, String)>) {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        match parse_event(line) {
            Ok(event) => events.push(event),
            Err(error) => errors.push((number, error.to_string())),
        }
    }
    (events, errors)
}

/// The oracle's tables after each epoch of `epoch_events` lines: element `e` is computed over
/// `lines[..(e + 1) * epoch_events]` (the last epoch may be partial; no lines, no epochs).
/// Invalid lines count towards an epoch's size but contribute nothing.
///
/// # Panics
///
/// If `epoch_events` is 0.
pub fn expected_after_each_epoch(lines: &[Vec<u8>], params: &Params, epoch_events: usize) -> Vec<Tables> {
    assert!(epoch_events > 0, "an epoch must hold at least one line");
    let parsed: Vec<Option<Event>> = lines.iter().map(|line| parse_event(line).ok()).collect();
    (0..lines.len().div_ceil(epoch_events))
        .map(|epoch| {
            let end = ((epoch + 1) * epoch_events).min(lines.len());
            oracle::compute(parsed[..end].iter().flatten(), params)
        })
        .collect()
}

/// A sink that keeps the tables after every closed epoch, and the dead letters.
#[derive(Default)]
pub struct Snapshots {
    /// The tables after the last epoch.
    pub tables: Tables,
    /// `(line, error)` of every dead letter.
    pub dead_letters: Vec<(i64, String)>,
    /// The tables after each epoch that had changes.
    pub after: BTreeMap<Epoch, Tables>,
}

impl EpochSink for Snapshots {
    fn epoch_closed(&mut self, epoch: Epoch, changes: Changes) {
        self.tables.apply(&changes);
        self.dead_letters.extend(changes.dead_letters.iter().map(|d| (d.offset, d.error.clone())));
        self.after.insert(epoch, self.tables.clone());
    }
}

/// Runs the file job's dataflow (epochs in flight as in every job) over `lines` in memory.
pub fn run_snapshots(lines: Vec<Vec<u8>>, params: Params, epoch_events: usize, workers: usize) -> Snapshots {
    run_snapshots_with(lines, params, epoch_events, workers, RefreshBudget::default())
}

/// [`run_snapshots`] with a refresh budget (`--refresh-idle`).
pub fn run_snapshots_with(lines: Vec<Vec<u8>>, params: Params, epoch_events: usize, workers: usize, refresh: RefreshBudget) -> Snapshots {
    let state = Arc::new(Mutex::new(Snapshots::default()));
    let sink = Arc::clone(&state);
    let job = FileJob { lines: Lines::Memory(Arc::new(lines)), params, emit_co_listens: true, emit_events: false, epoch_events, refresh };
    file::run(timely::Config::process(workers), job, move || Arc::clone(&sink)).expect("dataflow runs");
    Arc::try_unwrap(state).ok().expect("workers are done").into_inner().expect("no worker panicked")
}

/// The refresh budgets the seeded checks cycle through: every stale user each epoch, none
/// beyond the users that listened, one, a few, and the default.
const BUDGETS: [RefreshBudget; 5] =
    [RefreshBudget::All, RefreshBudget::Users(0), RefreshBudget::Users(1), RefreshBudget::Users(3), RefreshBudget::Users(1000)];

/// Compares the dataflow with the oracle after every epoch of `lines` random lines (an epoch
/// without changes keeps the previous state), and the dead letters with the parser's verdicts.
/// The refresh budget is one of `BUDGETS`, by seed.
pub fn check_every_epoch(seed: u64, lines: usize, params: Params, epoch_events: usize, workers: usize) {
    let refresh = BUDGETS[seed as usize % BUDGETS.len()];
    check_lines_every_epoch_with(&format!("seed {seed}"), random_lines(seed, lines), params, epoch_events, workers, refresh);
}

/// [`check_every_epoch`] over given lines, with the default refresh budget; `label` names
/// them in a failure.
pub fn check_lines_every_epoch(label: &str, input: Vec<Vec<u8>>, params: Params, epoch_events: usize, workers: usize) {
    check_lines_every_epoch_with(label, input, params, epoch_events, workers, RefreshBudget::default());
}

/// The check itself. After every epoch: every table but `user_recommendations` equals the
/// oracle over the lines so far; every user holds a list [`oracle::Refreshes`] admits (the
/// definition for users that listened in the epoch, and for all with `RefreshBudget::All`);
/// after the last epoch every table equals the oracle (the file job ends at rest).
pub fn check_lines_every_epoch_with(
    label: &str,
    input: Vec<Vec<u8>>,
    params: Params,
    epoch_events: usize,
    workers: usize,
    refresh: RefreshBudget,
) {
    let expected = expected_after_each_epoch(&input, &params, epoch_events);
    let listened = listeners_per_epoch(&input, epoch_events);
    let (_, invalid) = parse_lines(&input);
    let mut got = run_snapshots_with(input, params, epoch_events, workers, refresh);

    let context = |epoch: usize| format!("{label}, {workers} workers, {params:?}, refresh {refresh}, after epoch {epoch}");
    let mut current = Tables::default();
    let mut refreshes = oracle::Refreshes::default();
    for (epoch, want) in expected.iter().enumerate() {
        if let Some(tables) = got.after.get(&(epoch as Epoch)) {
            current = tables.clone();
        }
        let last = epoch + 1 == expected.len();
        refreshes.epoch(want, &listened[epoch], refresh == RefreshBudget::All || last);
        let admitted = Tables { user_recommendations: current.user_recommendations.clone(), ..want.clone() };
        assert_tables_eq(&current, &admitted, &context(epoch));
        let stored = crate::tables::lists_by_key(&current.user_recommendations);
        for user in refreshes.users().chain(stored.keys().copied()) {
            let list = stored.get(&user).map_or(&[][..], |list| &list[..]);
            assert!(
                refreshes.admits(user, list),
                "user_recommendations of user {user} ({}): {list:?}, the definition is {:?}",
                context(epoch),
                crate::tables::lists_by_key(&want.user_recommendations).get(&user)
            );
        }
        if last {
            assert_tables_eq(&current, want, &format!("{} (at rest)", context(epoch)));
        }
    }
    got.dead_letters.sort();
    let want_dead: Vec<(i64, String)> = invalid.into_iter().map(|(line, error)| (line as i64, error)).collect();
    assert_eq!(got.dead_letters, want_dead, "dead letters, {label}");
}

/// The users with a listen in each epoch of `epoch_events` lines.
fn listeners_per_epoch(lines: &[Vec<u8>], epoch_events: usize) -> Vec<BTreeSet<u64>> {
    lines
        .chunks(epoch_events)
        .map(|chunk| chunk.iter().filter_map(|line| parse_event(line).ok()).filter(Event::is_listen).map(|event| event.user_id).collect())
        .collect()
}

/// Panics, naming the table and up to five differing rows, unless `got` equals `want`.
pub fn assert_tables_eq(got: &Tables, want: &Tables, context: &str) {
    fn same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        name: &str,
        got: &BTreeMap<K, V>,
        want: &BTreeMap<K, V>,
        context: &str,
    ) {
        let missing: Vec<_> = want.iter().filter(|(k, v)| got.get(k) != Some(v)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|(k, v)| want.get(k) != Some(v)).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name} differs ({context}): {} rows vs {} expected; expected but not got {missing:?}; got but not expected {extra:?}",
            got.len(),
            want.len()
        );
    }
    same("track_stats", &got.track_stats, &want.track_stats, context);
    same("co_listens", &got.co_listens, &want.co_listens, context);
    same("track_neighbors", &got.track_neighbors, &want.track_neighbors, context);
    same("user_recommendations", &got.user_recommendations, &want.user_recommendations, context);
}

pub use encore_testkit::assert_success;

/// Asserts that an `encore-flow` run failed the way users are promised: a non-zero status
/// and one `encore-flow: …` line naming `expected`, last on stderr (warnings logged while
/// retrying may come before it); [`encore_testkit::assert_one_line_error`] for `encore-flow`.
pub fn assert_one_line_error(output: &std::process::Output, expected: &str) {
    encore_testkit::assert_one_line_error("encore-flow", output, expected);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_prefixes() {
        let lines = random_lines(11, 250);
        let params = Params { history_cap: 4, min_co: 2, neighbors: 3, recommendations: 3, score_precision: 4, count_bits: 2 };
        let epochs = expected_after_each_epoch(&lines, &params, 100);
        assert_eq!(epochs.len(), 3); // 100 + 100 + 50 lines
        let (all, _) = parse_lines(&lines);
        assert_eq!(epochs[2], oracle::compute(&all, &params));
        let (first, _) = parse_lines(&lines[..100]);
        assert_eq!(epochs[0], oracle::compute(&first, &params));
        assert_ne!(epochs[0], epochs[2]);
        assert!(expected_after_each_epoch(&[], &params, 10).is_empty());
    }
}
