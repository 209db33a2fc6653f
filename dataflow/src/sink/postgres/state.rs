//! The durable state's loader: each worker's share of `encore_last_listen` and of the plays
//! and likes in `track_stats`, read in one snapshot that must match the offsets the job
//! started from. Why this state, and how a restart feeds it to the dataflow:
//! [`crate::source::kafka`], "Durable state".

use std::collections::BTreeMap;
use std::thread::sleep;

use postgres::IsolationLevel;
use tracing::warn;

use super::error::Failure;
use super::session::{ensure_session, Session};
use super::sql::{Statements, LAST_LISTENS, TRACK_STATS, USER_RECOMMENDATIONS};
use super::{staging, RetryPolicy, SinkError};
use crate::tables::RankedList;

/// Loads the durable state (`encore_last_listen` and the plays and likes of `track_stats`),
/// one share at a time, on any thread; see [`crate::source::kafka`], "Durable state".
#[derive(Clone)]
pub struct StateReader {
    target: encore_pgconnect::Target,
    retry: RetryPolicy,
    sql: Statements,
    schema: String,
    score_precision: u32,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").field("schema", &self.schema).finish_non_exhaustive()
    }
}

/// One loader's share of the durable state.
#[derive(Debug, Default)]
pub struct LoadedState {
    /// `(user, track, last(u,t))`, sorted by user, then by `(last, track)` descending.
    pub last_listens: Vec<(u64, u64, i64)>,
    /// `(track, plays, likes)`.
    pub track_stats: Vec<(u64, u64, u64)>,
    /// `(user, R(u))` as stored in `user_recommendations`: when each was refreshed is not
    /// stored, so the engine takes them as stale ([`crate::engine::recommend`], "Restarts").
    pub recommendations: Vec<(u64, RankedList)>,
}

impl StateReader {
    pub(super) fn new(
        target: encore_pgconnect::Target,
        retry: RetryPolicy,
        sql: Statements,
        schema: String,
        score_precision: u32,
    ) -> StateReader {
        StateReader { target, retry, sql, schema, score_precision }
    }

    /// A reader of the tables at `url` (a libpq-style URL) in `schema`, connecting only when
    /// it reads; [`super::PgSink::state_reader`] gives one for a connected sink.
    pub fn new_for(url: &str, schema: &str, score_precision: u32, emit_co_listens: bool) -> Result<StateReader, SinkError> {
        let retry = RetryPolicy::default();
        let target = super::session::session_config(url, &retry)?;
        Ok(StateReader::new(target, retry, Statements::new(schema, emit_co_listens), schema.to_owned(), score_precision))
    }

    /// Only the stored recommendations of users `u % peers == index`, in one snapshot whose
    /// offsets must equal `committed`: what a replay needs besides the topic.
    pub fn load_recommendations(
        &self,
        topic: &str,
        committed: &BTreeMap<i32, i64>,
        peers: usize,
        index: usize,
    ) -> Result<Vec<(u64, RankedList)>, SinkError> {
        self.with_snapshot(topic, committed, "loading the stored recommendations", |reader, tx| {
            reader.read_recommendations(tx, peers, index)
        })
    }

    /// The rows of users `u` with `u % peers == index` and of tracks `t` with `t % peers ==
    /// index`, read in one snapshot whose stored offsets of `topic` must equal `committed`
    /// ([`SinkError::StateMoved`] otherwise: another writer).
    pub fn load(&self, topic: &str, committed: &BTreeMap<i32, i64>, peers: usize, index: usize) -> Result<LoadedState, SinkError> {
        let mut state = self.with_snapshot(topic, committed, "loading the state", |reader, tx| reader.load_once(tx, peers, index))?;
        // Each user's tracks latest first: History then fills H(u) without a swap.
        state.last_listens.sort_unstable_by(|a, b| a.0.cmp(&b.0).then((b.2, b.1).cmp(&(a.2, a.1))));
        Ok(state)
    }

    /// Runs `read` in a read-only snapshot whose stored offsets of `topic` must equal
    /// `committed`, reconnecting and retrying on transient failures.
    fn with_snapshot<T>(
        &self,
        topic: &str,
        committed: &BTreeMap<i32, i64>,
        context: &'static str,
        mut read: impl FnMut(&Self, &mut postgres::Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, SinkError> {
        let mut session: Option<Session> = None;
        let attempts = self.retry.attempts();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let live = ensure_session(&mut session, &self.target, &self.sql, &self.retry)?;
            let result = (|| {
                let mut tx = live.client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
                let mut stored = BTreeMap::new();
                for row in tx.query(&live.select_offsets, &[&topic])? {
                    stored.insert(row.try_get::<_, i32>(0)?, row.try_get::<_, i64>(1)?);
                }
                if &stored != committed {
                    return Err(Failure::Sink(SinkError::StateMoved { schema: self.schema.clone(), topic: topic.to_owned() }));
                }
                let value = read(self, &mut tx)?;
                tx.commit()?;
                Ok(value)
            })();
            match result {
                Ok(value) => return Ok(value),
                Err(failure) if failure.is_transient() && attempt < attempts => {
                    warn!(attempt, error = %failure.reason(), "postgres {context} failed; reconnecting");
                    session = None;
                    sleep(self.retry.backoff(attempt));
                }
                Err(failure) => return Err(failure.into_error(context, attempt)),
            }
        }
    }

    /// The stored `user_recommendations` rows of users `u % peers == index`.
    fn read_recommendations(
        &self,
        tx: &mut postgres::Transaction<'_>,
        peers: usize,
        index: usize,
    ) -> Result<Vec<(u64, RankedList)>, Failure> {
        let scale = 10f64.powi(self.score_precision as i32);
        let select = self.sql.select_share(&USER_RECOMMENDATIONS, "user_id", peers, index);
        let mut rows = Vec::new();
        for row in tx.query(select.as_str(), &[])? {
            rows.push(super::list_row(&row, USER_RECOMMENDATIONS.name, scale)?);
        }
        Ok(rows)
    }

    fn load_once(&self, tx: &mut postgres::Transaction<'_>, peers: usize, index: usize) -> Result<LoadedState, Failure> {
        let mut state = LoadedState::default();
        let copy = self.sql.copy_share(LAST_LISTENS.name, "user_id, track_id, last_ms", "user_id", peers, index);
        staging::read_int8_rows::<3>(tx.copy_out(copy.as_str())?, LAST_LISTENS.name, |[user, track, last]| {
            state.last_listens.push((stored_id(user, LAST_LISTENS.name)?, stored_id(track, LAST_LISTENS.name)?, last));
            Ok(())
        })?;
        let copy = self.sql.copy_share(TRACK_STATS.name, "track_id, plays, likes", "track_id", peers, index);
        staging::read_int8_rows::<3>(tx.copy_out(copy.as_str())?, TRACK_STATS.name, |[track, plays, likes]| {
            let table = TRACK_STATS.name;
            state.track_stats.push((stored_id(track, table)?, stored_id(plays, table)?, stored_id(likes, table)?));
            Ok(())
        })?;
        state.recommendations = self.read_recommendations(tx, peers, index)?;
        Ok(state)
    }
}

/// A stored BIGINT id or count, which must be ≥ 0.
fn stored_id(value: i64, table: &'static str) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| Failure::Sink(SinkError::BadRow { table, reason: format!("negative value {value}") }))
}
