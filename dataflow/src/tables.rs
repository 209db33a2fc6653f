//! The SPEC §3 tables as plain Rust values: what the dataflow's outputs mean, what the
//! sequential oracle computes, what the sinks write.
//!
//! Scores are kept as integers in units of 10^-P ("score units", SPEC §2 step 4); only a sink
//! turns them into `DOUBLE PRECISION` (`units / 10^P`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A score as stored (SPEC §3): `units / 10^P` in double precision. The one place where
/// score units become doubles, shared by every sink.
pub fn score_value(units: i64, score_precision: u32) -> f64 {
    units as f64 / 10f64.powi(score_precision as i32)
}

/// The SPEC §2 parameters (SPEC §4 flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// `K`, `--history-cap`: tracks kept in a user's history.
    pub history_cap: usize,
    /// `C`, `--min-co`: minimum co-listening count for a similarity.
    pub min_co: u64,
    /// `k`, `--neighbors`: neighbours kept per track.
    pub neighbors: usize,
    /// `N`, `--recommendations`: recommendations kept per user.
    pub recommendations: usize,
    /// `P`, `--score-precision`: decimal digits of a score.
    pub score_precision: u32,
    /// `B`, `--count-bits`: significant bits of the counts in the cosine (0: exact counts).
    pub count_bits: u32,
}

impl Params {
    /// The parameters as `encore-flow` flags, every one spelled out: how they are recorded
    /// beside the tables and named in messages.
    ///
    /// ```
    /// use encore_dataflow::tables::Params;
    /// assert_eq!(
    ///     Params::default().flags(),
    ///     "--history-cap 50 --min-co 2 --neighbors 20 --recommendations 10 --score-precision 4 --count-bits 5"
    /// );
    /// ```
    pub fn flags(&self) -> String {
        let Params { history_cap, min_co, neighbors, recommendations, score_precision, count_bits } = self;
        format!(
            "--history-cap {history_cap} --min-co {min_co} --neighbors {neighbors} --recommendations {recommendations} \
             --score-precision {score_precision} --count-bits {count_bits}"
        )
    }
}

impl Default for Params {
    fn default() -> Self {
        Params { history_cap: 50, min_co: 2, neighbors: 20, recommendations: 10, score_precision: 4, count_bits: 5 }
    }
}

/// One row of `track_stats` without its key (SPEC §2 step 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TrackStats {
    /// Listen events of the track, repeats included.
    pub plays: u64,
    /// Distinct users with at least one listen of the track.
    pub listeners: u64,
    /// `"like"` events of the track.
    pub likes: u64,
}

/// One row of `dead_letters`: an invalid message and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Kafka topic, or `file` for `--input`.
    pub topic: String,
    /// Kafka partition (0 for a file).
    pub partition: i32,
    /// Kafka offset, or the 0-based line number of a file.
    pub offset: i64,
    /// The message as received.
    pub payload: Vec<u8>,
    /// The parser's one-line reason.
    pub error: String,
}

/// One valid event as the event log records it (`--emit-events`): where it came from and its
/// SPEC §1 fields, without a `String` (48 bytes). Streaming and skip events go to
/// `track_stream_event_log`, likes to `track_like_event_log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Kafka partition (0 for a file).
    pub partition: i32,
    /// Kafka offset, or the 0-based line number of a file.
    pub offset: i64,
    /// The listener.
    pub user: u64,
    /// The track.
    pub track: u64,
    /// Event time, ms since the Unix epoch.
    pub time_ms: i64,
    /// What happened.
    pub event_type: encore_core::EventType,
    /// How long the track played, where the event said, as the log's `INT` column holds it:
    /// values beyond `i32::MAX` (24.8 days) are stored as `i32::MAX`.
    pub ms_played: Option<i32>,
}

impl LoggedEvent {
    /// The log record of a parsed event read at `partition`, `offset`.
    pub fn new(event: &encore_core::Event, partition: i32, offset: i64) -> LoggedEvent {
        LoggedEvent {
            partition,
            offset,
            user: event.user_id,
            track: event.track_id,
            time_ms: event.event_time_ms,
            event_type: event.event_type,
            ms_played: event.ms_played.map(|ms| i32::try_from(ms).unwrap_or(i32::MAX)),
        }
    }

    /// Whether it belongs in `track_like_event_log` (else `track_stream_event_log`).
    pub fn is_like(&self) -> bool {
        self.event_type == encore_core::EventType::Like
    }
}

/// A ranked list of SPEC §2, `N(i)` or `R(u)`: `(member, score units)` in rank order (score
/// descending, ties to the smaller id). One list is one row of its SPEC §3 table.
pub type RankedList = Vec<(u64, i64)>;

/// The rows of a list table as [`Tables`] holds them (`(key, member) → units`), as one list
/// per key in rank order (score descending, ties to the smaller member): the table's rows,
/// as the sink writes them and the ranked views and CSV files list their members.
pub fn lists_by_key(members: &BTreeMap<(u64, u64), i64>) -> BTreeMap<u64, RankedList> {
    let mut lists: BTreeMap<u64, RankedList> = BTreeMap::new();
    for (&(key, member), &units) in members {
        lists.entry(key).or_default().push((member, units));
    }
    for list in lists.values_mut() {
        list.sort_by_key(|&(member, units)| (std::cmp::Reverse(units), member));
    }
    lists
}

/// The complete current value of every SPEC §3 table (but `dead_letters`), lists spread
/// into one entry per member, as the ranked views and the CSV files show them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    /// `(track_id, neighbor_id) → score units`: the rows of N(i).
    pub track_neighbors: BTreeMap<(u64, u64), i64>,
    /// `(user_id, track_id) → score units`: the rows of R(u).
    pub user_recommendations: BTreeMap<(u64, u64), i64>,
    /// `track_id → stats`, for every track with at least one listen.
    pub track_stats: BTreeMap<u64, TrackStats>,
    /// `(track_a, track_b) → c`, `track_a < track_b`, `c ≥ 1`.
    pub co_listens: BTreeMap<(u64, u64), u64>,
}

/// Every change of one closed timestamp, as `(key, value, diff)` triples: a changed row shows
/// as its old value with diff -1 and its new value with diff +1. This is what a sink commits
/// in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Changes of `track_neighbors`: one row per track, its whole list `N(i)`.
    pub track_neighbors: Vec<(u64, RankedList, i64)>,
    /// Changes of `user_recommendations`: one row per user, its whole stored list `R(u)`.
    pub user_recommendations: Vec<(u64, RankedList, i64)>,
    /// Changes of `track_stats`.
    pub track_stats: Vec<(u64, TrackStats, i64)>,
    /// Changes of `co_listens` (empty unless `--emit-co-listens`).
    pub co_listens: Vec<((u64, u64), u64, i64)>,
    /// Changes of `last(u,t)` per `(user, track)`: the durable state (Kafka job only; see
    /// [`crate::source::kafka`], "Durable state").
    pub last_listens: Vec<((u64, u64), i64, i64)>,
    /// New dead letters (they are only ever added).
    pub dead_letters: Vec<DeadLetter>,
    /// Valid events for the event log (empty unless `--emit-events`; only ever added).
    pub events: Vec<LoggedEvent>,
    /// Consumed progress at the end of the epoch: the next offset per partition that
    /// advanced in it (Kafka input only).
    pub offsets: BTreeMap<i32, i64>,
}

impl Changes {
    /// Adds another worker's share of the same epoch. Concatenated, not consolidated: the
    /// shares arrive in no particular order, and the sink nets each key's changes anyway.
    pub fn append(&mut self, mut share: Changes) {
        self.track_neighbors.append(&mut share.track_neighbors);
        self.user_recommendations.append(&mut share.user_recommendations);
        self.track_stats.append(&mut share.track_stats);
        self.co_listens.append(&mut share.co_listens);
        self.last_listens.append(&mut share.last_listens);
        self.dead_letters.append(&mut share.dead_letters);
        self.events.append(&mut share.events);
        for (partition, next) in share.offsets {
            let entry = self.offsets.entry(partition).or_insert(next);
            *entry = (*entry).max(next);
        }
    }

    /// Appends the changes of the epoch right after this one, so that both commit as one:
    /// the update triples are summed per `(key, value)`, so a row changed in both epochs
    /// keeps only its value before the first and after the second (`-v0 +v1 -v1 +v2` is
    /// `-v0 +v2`); dead letters add up; offsets take the later (larger) one.
    pub fn absorb(&mut self, later: Changes) {
        fn sum<K: Ord + Clone, V: Ord + Clone>(into: &mut Vec<(K, V, i64)>, more: Vec<(K, V, i64)>) {
            if !more.is_empty() {
                into.extend(more);
                differential_dataflow::consolidation::consolidate_updates(into);
            }
        }
        sum(&mut self.track_neighbors, later.track_neighbors);
        sum(&mut self.user_recommendations, later.user_recommendations);
        sum(&mut self.track_stats, later.track_stats);
        sum(&mut self.co_listens, later.co_listens);
        sum(&mut self.last_listens, later.last_listens);
        self.dead_letters.extend(later.dead_letters);
        self.events.extend(later.events);
        for (partition, next) in later.offsets {
            let entry = self.offsets.entry(partition).or_insert(next);
            *entry = (*entry).max(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_event_is_compact_and_saturates_ms_played() {
        assert_eq!(std::mem::size_of::<LoggedEvent>(), 48);
        let event =
            encore_core::parse_event(br#"{"user_id":1,"track_id":2,"event_timestamp":5,"event_type":"skip","ms_played":3000000000}"#)
                .unwrap();
        let logged = LoggedEvent::new(&event, 3, 9);
        assert_eq!((logged.partition, logged.offset, logged.user, logged.track, logged.time_ms), (3, 9, 1, 2, 5));
        assert_eq!(logged.ms_played, Some(i32::MAX));
        assert!(!logged.is_like());
    }

    #[test]
    fn shares_of_one_epoch_are_concatenated_and_offsets_take_the_larger() {
        let mut epoch = Changes {
            track_neighbors: vec![(1, vec![(2, 5)], -1), (1, vec![(2, 6)], 1)],
            offsets: BTreeMap::from([(0, 10), (1, 20)]),
            ..Changes::default()
        };
        let share = Changes {
            user_recommendations: vec![(7, vec![(3, 9)], 1)],
            track_neighbors: vec![(4, vec![(5, 1)], 1)],
            offsets: BTreeMap::from([(1, 15), (2, 5)]),
            ..Changes::default()
        };
        epoch.append(share);
        assert_eq!(epoch.track_neighbors, vec![(1, vec![(2, 5)], -1), (1, vec![(2, 6)], 1), (4, vec![(5, 1)], 1)]);
        assert_eq!(epoch.user_recommendations, vec![(7, vec![(3, 9)], 1)]);
        assert_eq!(epoch.offsets, BTreeMap::from([(0, 10), (1, 20), (2, 5)]));
    }

    #[test]
    fn absorbing_the_next_epoch_keeps_only_the_net_change_of_each_row() {
        let stats = |plays| TrackStats { plays, listeners: 1, likes: 0 };
        let mut first = Changes {
            // N(1): [2: 5] → [2: 6, 3: 4]; N(9) appears, untouched later.
            track_neighbors: vec![(1, vec![(2, 5)], -1), (1, vec![(2, 6), (3, 4)], 1), (9, vec![(8, 1)], 1)],
            track_stats: vec![(7, stats(1), 1)],
            offsets: BTreeMap::from([(0, 10), (1, 20)]),
            ..Changes::default()
        };
        let later = Changes {
            // N(1): → [2: 8] (3 leaves again); N(2) appears.
            track_neighbors: vec![(1, vec![(2, 6), (3, 4)], -1), (1, vec![(2, 8)], 1), (2, vec![(1, 3)], 1)],
            track_stats: vec![(7, stats(1), -1), (7, stats(2), 1)],
            dead_letters: vec![DeadLetter { topic: "t".into(), partition: 0, offset: 11, payload: b"x".to_vec(), error: "bad".into() }],
            offsets: BTreeMap::from([(0, 12), (2, 5)]),
            ..Changes::default()
        };
        // Both epochs applied one after the other give the same tables as the merged one.
        let mut stepwise = Tables::default();
        stepwise.apply(&first);
        stepwise.apply(&later);
        first.absorb(later);
        assert_eq!(first.track_neighbors, vec![(1, vec![(2, 5)], -1), (1, vec![(2, 8)], 1), (2, vec![(1, 3)], 1), (9, vec![(8, 1)], 1)]);
        assert_eq!(first.track_stats, vec![(7, stats(2), 1)]);
        assert_eq!(first.dead_letters.len(), 1);
        assert_eq!(first.offsets, BTreeMap::from([(0, 12), (1, 20), (2, 5)]));
        let mut merged = Tables::default();
        merged.apply(&first);
        assert_eq!(merged, stepwise);
    }
}
