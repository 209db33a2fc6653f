//! Checks what a run left in Postgres (each catch-up; each latency run that committed every
//! message) against SPEC §2 computed by the sequential oracle over the same messages, so
//! that a fast run is also a right one.
//!
//! ```text
//!  EventStream (seed) ── the first N messages, N = all the topic holds ──► parse ──► oracle::compute
//!  the run's schema ── PgSink::read_tables (one snapshot) ─────────────────────────► compare
//! ```
//!
//! The test suite checks the dataflow against the oracle after every epoch on inputs of
//! thousands of events; this checks one end state of millions, where only big epochs take
//! some code paths (buffer flushes inside overlapping epochs found a bug at 10 M events that
//! no test had shown). The oracle keeps every co-listening pair in an ordered map: at 10 M
//! events that is ~4 GiB and 1.5 minutes (85 s at commit `785cb62`), run after the timed runs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use encore_dataflow::sink::postgres::{PgSink, RetryPolicy};
use encore_dataflow::tables::{Params, Tables};
use encore_dataflow::testing::oracle;
use encore_generator::catalog::Catalog;
use encore_generator::stream::EventStream;

/// The SPEC §2 parameters and `--emit-co-listens` that encore-flow `flags` set, so that the
/// oracle computes what the job was asked to. Unknown flags are encore-flow's business.
pub fn params_of(flags: &[String]) -> Result<(Params, bool)> {
    let mut params = Params::default();
    let mut emit_co_listens = false;
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag.as_str(), None),
        };
        if name == "--emit-co-listens" {
            emit_co_listens = true;
            continue;
        }
        if !matches!(name, "--history-cap" | "--min-co" | "--neighbors" | "--recommendations" | "--score-precision" | "--count-bits") {
            continue;
        }
        let value = match inline {
            Some(value) => value,
            None => flags.next().cloned().with_context(|| format!("{name} needs a value"))?,
        };
        let bad = || format!("{name} {value:?} is not a number");
        match name {
            "--history-cap" => params.history_cap = value.parse().with_context(bad)?,
            "--min-co" => params.min_co = value.parse().with_context(bad)?,
            "--neighbors" => params.neighbors = value.parse().with_context(bad)?,
            "--recommendations" => params.recommendations = value.parse().with_context(bad)?,
            "--count-bits" => params.count_bits = value.parse().with_context(bad)?,
            _ => params.score_precision = value.parse().with_context(bad)?,
        }
    }
    Ok((params, emit_co_listens))
}

/// The oracle's tables over the first `events` messages of the seed's stream: the benchmark
/// fills the topic with its first messages and each latency run sends the next ones, so these
/// are the topic's messages (none is invalid).
pub fn expected(catalog: &Catalog, events: u64, params: &Params) -> Result<Tables> {
    let mut stream = EventStream::new(catalog, 0.0);
    let mut payload = Vec::with_capacity(512);
    let mut parsed = Vec::with_capacity(events as usize);
    for index in 0..events {
        stream.next_message(&mut payload);
        parsed.push(encore_core::parse_event(&payload).map_err(|error| anyhow::anyhow!("message {index} does not parse: {error}"))?);
    }
    Ok(oracle::compute(&parsed, params))
}

/// How one table of a run differs from the oracle's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Difference {
    /// Rows the oracle has.
    pub expected: usize,
    /// Rows of the oracle that the run lacks.
    pub missing: usize,
    /// Rows of the run that the oracle lacks.
    pub extra: usize,
    /// Rows of both with different values.
    pub different: usize,
}

impl Difference {
    /// Whether the table equals the oracle's.
    pub fn exact(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }
}

fn difference<K: Ord, V: PartialEq>(want: &BTreeMap<K, V>, got: &BTreeMap<K, V>) -> Difference {
    let mut diff = Difference { expected: want.len(), ..Difference::default() };
    for (key, value) in want {
        match got.get(key) {
            None => diff.missing += 1,
            Some(other) if other != value => diff.different += 1,
            Some(_) => {}
        }
    }
    diff.extra = got.keys().filter(|key| !want.contains_key(key)).count();
    diff
}

/// Per table (co_listens only when `emit_co_listens`), how `got` differs from `want`; and
/// the dead letters, of which there must be none.
pub fn compare(want: &Tables, got: &Tables, emit_co_listens: bool) -> Vec<(&'static str, Difference)> {
    let mut tables = vec![
        ("track_neighbors", difference(&want.track_neighbors, &got.track_neighbors)),
        ("user_recommendations", difference(&want.user_recommendations, &got.user_recommendations)),
        ("track_stats", difference(&want.track_stats, &got.track_stats)),
    ];
    if emit_co_listens {
        tables.push(("co_listens", difference(&want.co_listens, &got.co_listens)));
    }
    tables
}

/// Reads the result tables of `schema` (one snapshot) and compares them with `want`. The
/// dead letters are returned apart: the fill has no invalid message, so any is wrong.
pub fn check_schema(
    url: &str,
    schema: &str,
    want: &Tables,
    params: &Params,
    emit_co_listens: bool,
) -> Result<(Vec<(&'static str, Difference)>, usize)> {
    let mut sink = PgSink::connect(url, schema, params.score_precision, emit_co_listens, RetryPolicy::default())
        .with_context(|| format!("connecting to read schema {schema}"))?;
    let (got, dead_letters) = sink.read_tables().with_context(|| format!("reading the tables of schema {schema}"))?;
    Ok((compare(want, &got, emit_co_listens), dead_letters.len()))
}

/// A difference in one line, for the report.
pub fn describe(diff: &Difference) -> String {
    if diff.exact() {
        format!("{} rows, exact", diff.expected)
    } else {
        format!("{} rows expected: {} missing, {} extra, {} different", diff.expected, diff.missing, diff.extra, diff.different)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(flags: &[&str]) -> Vec<String> {
        flags.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn the_oracle_gets_the_parameters_of_the_job() {
        let (params, emit) =
            params_of(&strings(&["--epoch-ms", "600000", "--neighbors", "7", "--min-co=3", "--emit-co-listens", "--count-bits", "0"]))
                .unwrap();
        assert_eq!((params.neighbors, params.min_co, params.history_cap, params.count_bits, emit), (7, 3, 50, 0, true));
        assert!(params_of(&strings(&["--neighbors"])).is_err());
        assert!(params_of(&strings(&["--neighbors", "many"])).is_err());
        assert_eq!(params_of(&[]).unwrap(), (Params::default(), false));
    }

    #[test]
    fn differences_are_counted_by_kind() {
        let want: BTreeMap<u32, i64> = [(1, 10), (2, 20), (3, 30)].into();
        let got: BTreeMap<u32, i64> = [(1, 10), (2, 21), (4, 40)].into();
        let diff = difference(&want, &got);
        assert_eq!(diff, Difference { expected: 3, missing: 1, extra: 1, different: 1 });
        assert!(!diff.exact());
        assert!(difference(&want, &want).exact());
    }
}
