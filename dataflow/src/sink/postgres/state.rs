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
use super::sql::{Statements, LAST_LISTENS, TRACK_STATS};
use super::{staging, RetryPolicy, SinkError};

/// Loads the durable state (`encore_last_listen` and the plays and likes of `track_stats`),
/// one share at a time, on any thread; see [`crate::source::kafka`], "Durable state".
#[derive(Clone)]
pub struct StateReader {
    target: encore_pgconnect::Target,
    retry: RetryPolicy,
    sql: Statements,
    schema: String,
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
}

impl StateReader {
    pub(super) fn new(target: encore_pgconnect::Target, retry: RetryPolicy, sql: Statements, schema: String) -> StateReader {
        StateReader { target, retry, sql, schema }
    }

    /// The rows of users `u` with `u % peers == index` and of tracks `t` with `t % peers ==
    /// index`, read in one snapshot whose stored offsets of `topic` must equal `committed`
    /// ([`SinkError::StateMoved`] otherwise: another writer).
    pub fn load(&self, topic: &str, committed: &BTreeMap<i32, i64>, peers: usize, index: usize) -> Result<LoadedState, SinkError> {
        let mut session = None;
        let attempts = self.retry.attempts();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let live = ensure_session(&mut session, &self.target, &self.sql, &self.retry)?;
            match self.load_once(live, topic, committed, peers, index) {
                Ok(mut state) => {
                    // Each user's tracks latest first: History then fills H(u) without a swap.
                    state.last_listens.sort_unstable_by(|a, b| a.0.cmp(&b.0).then((b.2, b.1).cmp(&(a.2, a.1))));
                    return Ok(state);
                }
                Err(failure) if failure.is_transient() && attempt < attempts => {
                    warn!(attempt, error = %failure.reason(), "postgres loading the state failed; reconnecting");
                    session = None;
                    sleep(self.retry.backoff(attempt));
                }
                Err(failure) => return Err(failure.into_error("loading the state", attempt)),
            }
        }
    }

    fn load_once(
        &self,
        session: &mut Session,
        topic: &str,
        committed: &BTreeMap<i32, i64>,
        peers: usize,
        index: usize,
    ) -> Result<LoadedState, Failure> {
        let mut tx = session.client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
        let mut stored = BTreeMap::new();
        for row in tx.query(&session.select_offsets, &[&topic])? {
            stored.insert(row.try_get::<_, i32>(0)?, row.try_get::<_, i64>(1)?);
        }
        if &stored != committed {
            return Err(Failure::Sink(SinkError::StateMoved { schema: self.schema.clone(), topic: topic.to_owned() }));
        }
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
        tx.commit()?;
        Ok(state)
    }
}

/// A stored BIGINT id or count, which must be ≥ 0.
fn stored_id(value: i64, table: &'static str) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| Failure::Sink(SinkError::BadRow { table, reason: format!("negative value {value}") }))
}
