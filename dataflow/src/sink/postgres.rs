//! The Postgres sink: the SPEC §3 tables kept exactly equal to their definitions; and, stated
//! here once, the exactly-once protocol of the Kafka job, which the other modules link to.
//!
//! # Exactly once
//!
//! **Every table in Postgres equals its SPEC §2 definition over exactly the messages before the
//! offsets stored beside it, after any crash and restart: nothing lost, nothing counted
//! twice** — given that the rebuild of the stored offsets' state is deterministic, which it is
//! because every result depends only on the set of listens.
//!
//! ```text
//!  workers   consume partition p from its stored offset ─► epochs ─► worker 0's EpochSink
//!  committer (process 0, the one writer) the closed live epochs in order; epochs queued
//!            during a commit merged into the next; one transaction for all of it:
//!              BEGIN ─► offsets (never backwards) ─► row deltas, dead letters (, event log)
//!                    ─► durable state last(u,t) ─► COMMIT            nothing after a failure
//!  restart   read the stored offsets ─► rebuild the state they stand for, output dropped
//!            (load the durable state, or replay the topic up to them) ─► consume from them
//! ```
//!
//! 1. **One transaction per commit.** [`PgSink::commit`] writes the net changes of one or more
//!    consecutive closed epochs, the changes of the durable state (`encore_last_listen`) and
//!    the Kafka offsets they were computed from in a single transaction, so Postgres always
//!    holds the tables and the state of some prefix of the topic together with the offsets
//!    that say which prefix.
//! 2. **One writer, in order** (`sink/committer.rs`): process 0's committer thread commits
//!    the closed live epochs strictly in epoch order, merges the ones that queued up during a
//!    commit (a transaction still holds whole, consecutive epochs), and commits nothing after
//!    a failed commit, since later epochs build on it. The process reports success only after
//!    every epoch handed over is committed.
//! 3. **Progress from Postgres alone** ([`crate::source::kafka`]): a job that (re)starts reads
//!    [`PgSink::committed_offsets`], rebuilds the state they stand for ([`StateReader`], or a
//!    replay of the topic up to them) without writing its output again, and consumes from
//!    them: nothing is lost (uncommitted offsets are consumed again) and nothing is counted
//!    twice (committed offsets are never consumed again). Kafka's own consumer-group offsets
//!    play no part.
//! 4. **A lost acknowledgement** is told from the stored offsets before a retry ("How",
//!    below), and the merge is state-based, so even a commit applied twice leaves the same
//!    tables.
//!
//! How it can fail: below. The reasons behind these choices: `docs/design.md`.
//!
//! # How
//!
//! ```text
//!  Changes (key, value, ±1)       offsets {partition → next offset}
//!        │ consolidate per key: only +1 → insert; -1 and +1 → update;   (before BEGIN)
//!        │ only -1 → delete; encode binary COPY once (retries resend the same bytes)
//!        ▼
//!  BEGIN ─► upsert encore_progress (refuses to move an offset backwards → fenced)
//!        ─► COPY pg_temp.encore_stage_<table> FROM STDIN (FORMAT binary)   per non-empty table
//!        ─► one batch: DELETE … USING stage WHERE op = delete
//!                      UPDATE … FROM stage WHERE op = update        (fast path: plain
//!                      INSERT … SELECT … WHERE op = insert           UPDATE and INSERT)
//!                      INSERT INTO dead_letters … ON CONFLICT DO NOTHING
//!        │             an insert meets an existing key or an update misses its row (the
//!        │             tables are not where the changes start: a replayed commit) → ROLLBACK,
//!        │             redo at once with INSERT … ON CONFLICT DO UPDATE for both
//!        ─► COMMIT                        (synchronous_commit = on: durable when acknowledged)
//!        │
//!        └─ connection error anywhere: the transaction is rolled back (by Postgres, since the
//!           session is gone), we reconnect with backoff, then read encore_progress:
//!             offsets already = the new ones → the COMMIT landed, only its ack was lost: done
//!             offsets = the ones before      → retry the same commit
//!             anything else                  → Diverged error (another writer, lost data)
//! ```
//!
//! With [`PgSink::with_event_log`] (`--emit-events`) the epoch's valid events are COPYed
//! straight into `track_stream_event_log` / `track_like_event_log` inside the same
//! transaction, after the offsets; see `postgres/event_log.rs` for their guarantee and encoding.
//!
//! The merge is state-based (a row is set to its new value or deleted, never incremented),
//! the fast path falls back to upserts when a row is not as expected, and dead letters are unique per
//! `(topic, kafka_partition, kafka_offset)`; so even applying the same commit twice leaves
//! the same tables: the ack check above is a shortcut and a consistency check, not the only
//! line of defence.
//!
//! The fast path is a plain INSERT for new keys and `UPDATE … FROM` for existing ones, both
//! faster than `INSERT … ON CONFLICT DO UPDATE` and than `MERGE` (`benches/HISTORY.md`); it
//! checks their premise: an INSERT of an existing key fails with a unique violation, and the
//! UPDATE must report as many rows as there are updates.
//!
//! The keyed tables are created with `fillfactor = 70`: commits rewrite scores and counts,
//! never keys, so the room left on each page lets most updates be heap-only (the new row
//! version beside the old one, no new primary-key entry), which `pg_copy` measures. Tables
//! created with another fill factor keep it (`ALTER TABLE … SET (fillfactor = 70)` then
//! `VACUUM FULL` adopts it).
//!
//! # Schema
//!
//! [`PgSink::connect`] creates what is missing, in one transaction under a transaction-level
//! advisory lock (so processes starting together do not race): the schema (`--pg-schema`,
//! quoted with [`quote_ident`]), the SPEC §3 tables with exactly their columns and
//! `fillfactor = 70` (`co_listens` only with `--emit-co-listens`), the views
//! `track_neighbors_ranked` and `user_recommendations_ranked` (`rank` = `row_number()` by score desc, then id asc; ranking
//! the stored doubles is exact because `units / 10^P` preserves the order of units), a unique
//! index on `dead_letters (topic, kafka_partition, kafka_offset)`, and
//! `encore_progress (topic, kafka_partition, next_offset, committed_at)`,
//! `encore_parameters (topic, parameters, recorded_at, durable_state)` and the durable state
//! `encore_last_listen (user_id, track_id, last_ms)` (merged like the SPEC tables). Each connection
//! also creates its `pg_temp.encore_stage_*` tables (`ON COMMIT DELETE ROWS`).
//!
//! One sink writes through one connection. Several sinks (say, one per worker) may write
//! disjoint partitions of one topic, but then each sink's rows must depend only on its own
//! partitions, or a crash between their commits leaves tables of two different prefixes; the
//! simple way to keep the guarantee is one writer that commits every timestamp for all
//! partitions. `encore-flow` does that ("Exactly once", 2).
//!
//! # How it can fail
//!
//! * Postgres unreachable (at connect or mid-run): [`RetryPolicy`] bounds the attempts, with
//!   exponential backoff between them; then [`SinkError::Unreachable`] or
//!   [`SinkError::Retries`] with a one-line reason. The caller exits non-zero; a restart
//!   resumes from the stored offsets.
//! * The caller's rebuild is not deterministic (different changes for the same offsets): the
//!   tables are then wrong, and nothing in the sink can tell. This is the assumption above.
//! * Incoherent changes (two new values for one key, a diff of +2): refused before any write
//!   with [`SinkError::InvalidChanges`].
//! * Another process writes the same partitions ([`SinkError::Fenced`] when it is ahead of
//!   us, [`SinkError::Diverged`] when the stored offsets match neither side of a retried
//!   commit), or Postgres loses acknowledged commits (an asynchronous replica promoted):
//!   detected at the next retry or when offsets move backwards, never repaired silently.
//! * Someone edits the tables by hand: later deltas apply on top of the edit.
//!
//! # Postgres settings
//!
//! Sent as startup options, so every connection (including reconnects) has them before its
//! first statement:
//!
//! * `synchronous_commit=on`: an acknowledged COMMIT survives a server crash. With `off`, a
//!   crash could drop a commit we already acknowledged upstream; the running job would then
//!   write the next deltas on top of tables that miss the previous ones.
//! * `statement_timeout=300s`: a statement stuck behind something unexpected fails with a
//!   clear reason (not retried: it would most likely stall again) instead of stalling the
//!   pipeline forever; 300 s leaves room for a COPY of millions of rows in a catch-up commit.
//! * `lock_timeout=30s`: waiting for a lock held by someone else (a manual `ALTER TABLE`, a
//!   long `LOCK`) becomes a retryable error with backoff, with a clear reason.
//! * `idle_in_transaction_session_timeout=60s`: if this process freezes mid-transaction, the
//!   server aborts the transaction and frees its row locks for the next writer.
//! * TCP keepalives (10 s idle, 5 s interval, 3 probes) and `tcp_user_timeout` 30 s: a server
//!   that vanished without closing the connection is noticed in seconds, not hours.
//! * `application_name=encore-flow`: the sink is recognisable in `pg_stat_activity`.
//! * Isolation stays the default READ COMMITTED: each key has one writer, and the offsets
//!   upsert serialises two writers of one partition on its row lock. A serialization or
//!   deadlock error (40001, 40P01) is retried like a connection error.
//!
//! The `-c` settings are appended to the URL's `options`, so they win over it (the
//! guarantee needs `synchronous_commit=on`); `connect_timeout`, `application_name` and
//! `tcp_user_timeout` are set only where the URL does not set them.

mod error;
mod event_log;
mod session;
mod sql;
mod staging;
mod state;

pub use error::SinkError;
pub use event_log::{
    copy_event_log_sql, create_event_log_sql, encode_events, pg_timestamp, EncodedEvents, EventLogRow, LIKE_EVENT_LOG, STREAM_EVENT_LOG,
};
pub use session::RetryPolicy;
pub use sql::{quote_ident, FILLFACTOR};
pub use state::{LoadedState, StateReader};

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::thread::sleep;

use postgres::{IsolationLevel, Row, SimpleQueryMessage};
use tracing::{info, warn};

use crate::tables::{Changes, DeadLetter, RankedList, Tables, TrackStats};
use error::Failure;
use session::{ensure_session, open_session, select_offsets, session_config, Session};
use sql::{Statements, CO_LISTENS, LAST_LISTENS, TRACK_NEIGHBORS, TRACK_STATS, USER_RECOMMENDATIONS};
use staging::Staged;

/// Larger `P` cannot be represented: scores are `i64` units.
const MAX_SCORE_PRECISION: u32 = 18;

/// What one [`PgSink::commit`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Rows inserted or updated (net, over all tables).
    pub upserted: u64,
    /// Rows deleted (net, over all tables).
    pub deleted: u64,
    /// Dead letters appended.
    pub dead_letters: u64,
    /// Bytes of binary COPY data sent (per attempt).
    pub copy_bytes: u64,
    /// Attempts it took: 1, more if a connection was lost or an insert met an existing row
    /// (then redone as upserts), 0 if there was nothing to write.
    pub attempts: u32,
    /// The connection broke after COMMIT was sent and the stored offsets showed that it
    /// had landed, so it was not retried.
    pub ack_lost: bool,
    /// Per keyed table (`track_neighbors`, `user_recommendations`, `track_stats`,
    /// `co_listens`, `encore_last_listen`, in that order): rows inserted, updated and deleted
    /// (net per key).
    pub tables: [TableRows; 5],
    /// Rows appended to the event logs (with [`PgSink::with_event_log`]).
    pub events_logged: u64,
}

impl CommitStats {
    /// What a commit of `staged` (and `events`) will write, before its first attempt.
    fn planned(staged: &Staged, events: Option<&EncodedEvents>) -> CommitStats {
        CommitStats {
            upserted: staged.tables.iter().map(|t| t.inserts + t.updates).sum(),
            deleted: staged.tables.iter().map(|t| t.deletes).sum(),
            dead_letters: staged.dead_letter_count,
            copy_bytes: staged.tables.iter().map(|t| t.copy_data.len() as u64).sum::<u64>()
                + staged.dead_letters.as_ref().map_or(0, |d| d.len() as u64)
                + events.map_or(0, EncodedEvents::bytes),
            attempts: 0,
            ack_lost: false,
            tables: [&TRACK_NEIGHBORS, &USER_RECOMMENDATIONS, &TRACK_STATS, &CO_LISTENS, &LAST_LISTENS].map(|spec| {
                let mut rows = TableRows { table: spec.name, ..TableRows::default() };
                for staged in staged.tables.iter().filter(|t| t.spec.name == spec.name) {
                    (rows.inserted, rows.updated, rows.deleted) = (staged.inserts, staged.updates, staged.deletes);
                }
                rows
            }),
            events_logged: events.map_or(0, |e| e.stream_rows + e.like_rows),
        }
    }
}

/// The rows one commit wrote to one keyed table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRows {
    /// The table's name.
    pub table: &'static str,
    /// Keys that were new.
    pub inserted: u64,
    /// Keys whose value changed.
    pub updated: u64,
    /// Keys removed.
    pub deleted: u64,
}

/// Writes the SPEC §3 tables of one schema; see the module docs.
pub struct PgSink {
    /// The connection string, parsed once (TLS files read at start).
    target: encore_pgconnect::Target,
    retry: RetryPolicy,
    sql: Statements,
    /// `--pg-schema`, unquoted (for messages).
    schema: String,
    score_precision: u32,
    emit_co_listens: bool,
    /// `None` after a connection was lost, until the next operation reconnects.
    session: Option<Session>,
    /// The event log's statements, once [`PgSink::with_event_log`] created its tables.
    event_log: Option<event_log::EventLogSql>,
    /// Offsets stored before the next commit, per topic, as far as this sink knows (from
    /// `committed_offsets` and its own commits); used to judge a commit whose ack was lost.
    known_offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The next commit records that `encore_last_listen` is complete for this topic.
    mark_state: Option<String>,
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink")
            .field("schema", &self.sql.schema)
            .field("score_precision", &self.score_precision)
            .field("emit_co_listens", &self.emit_co_listens)
            .field("connected", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl PgSink {
    /// Connects (retrying per `retry`) and creates, if missing, the schema, the SPEC §3 tables
    /// (`co_listens` only with `emit_co_listens`: without the flag nothing fills it, and an
    /// empty table would claim there are no co-listens), the ranked views and
    /// `encore_progress`. Safe when several processes start at once.
    pub fn connect(url: &str, schema: &str, score_precision: u32, emit_co_listens: bool, retry: RetryPolicy) -> Result<PgSink, SinkError> {
        if score_precision > MAX_SCORE_PRECISION {
            return Err(SinkError::InvalidPrecision(score_precision));
        }
        let target = session_config(url, &retry)?;
        let sql = Statements::new(schema, emit_co_listens);
        let session = open_session(&target, &sql, &retry, Some(schema))?;
        info!(schema, tls = %target.tls_summary(), "postgres sink connected");
        Ok(PgSink {
            target,
            retry,
            sql,
            schema: schema.to_owned(),
            score_precision,
            emit_co_listens,
            session: Some(session),
            event_log: None,
            known_offsets: BTreeMap::new(),
            mark_state: None,
        })
    }

    /// The next offset to consume per partition of `topic`, as committed (empty for a topic
    /// never committed).
    pub fn committed_offsets(&mut self, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        let offsets = self.with_session("reading offsets", |session, _| select_offsets(session, topic).map_err(Failure::from))?;
        self.known_offsets.insert(topic.to_string(), offsets.clone());
        Ok(offsets)
    }

    /// Refuses to continue tables computed with other SPEC §2 parameters, and records this
    /// run's where nothing is committed yet. `parameters` names them as flags (see
    /// [`Params::flags`](crate::tables::Params::flags)); `committed` are the topic's stored
    /// offsets ([`PgSink::committed_offsets`]).
    ///
    /// Why: on start the job rebuilds its state from the stored one (or the topic), and then
    /// writes changes to that state. Rebuilt with other parameters (say another
    /// `--count-bits`), the state is not what the tables hold, and every later delta would
    /// apply to rows that differ: wrong tables, silently. So:
    ///
    /// * parameters recorded for the topic: they must equal this run's
    ///   ([`SinkError::ParametersDiffer`] otherwise);
    /// * none recorded and nothing committed: this run's are recorded (a start that dies
    ///   before its first commit leaves them, and the next start replaces them);
    /// * none recorded but offsets committed: the tables were written by an encore-flow that
    ///   kept no such record, which computed exact counts with otherwise unknown parameters. They are taken as this run's with `--count-bits 0`; a run that asks for
    ///   another `--count-bits` is refused.
    ///
    /// Returns whether `encore_last_listen` holds the state of every committed offset (the
    /// job then loads it, see [`crate::source::kafka`], "Durable state"): always where nothing is
    /// committed; not for tables written before the durable state, which the job rebuilds by
    /// replaying the topic once (and then records its state with its first commit).
    pub fn check_parameters(
        &mut self,
        topic: &str,
        parameters: &str,
        count_bits: u32,
        committed: &BTreeMap<i32, i64>,
    ) -> Result<bool, SinkError> {
        let stored: Option<(String, bool)> = self.with_session("reading the recorded parameters", |session, sql| {
            let rows = session.client.query(sql.select_parameters.as_str(), &[&topic]).map_err(Failure::from)?;
            rows.first()
                .map(|row| Ok::<_, postgres::Error>((row.try_get::<_, String>(0)?, row.try_get::<_, bool>(1)?)))
                .transpose()
                .map_err(Failure::from)
        })?;
        let differ = |stored: String| SinkError::ParametersDiffer {
            schema: self.schema.clone(),
            topic: topic.to_owned(),
            stored,
            asked: parameters.to_owned(),
        };
        let durable = match stored {
            Some((stored, durable)) if stored == parameters && !committed.is_empty() => return Ok(durable),
            Some((stored, _)) if !committed.is_empty() => return Err(differ(stored)),
            None if !committed.is_empty() && count_bits != 0 => {
                return Err(differ("exact counts (--count-bits 0) by an encore-flow that recorded no parameters".to_owned()))
            }
            // Tables from before the record, taken as this run's: their state is to be rebuilt.
            None if !committed.is_empty() => false,
            // Nothing committed (whatever a start that died before its first commit recorded):
            // the empty state is complete.
            _ => true,
        };
        self.with_session("recording the parameters", |session, sql| {
            session.client.execute(sql.upsert_parameters.as_str(), &[&topic, &parameters, &durable]).map(drop).map_err(Failure::from)
        })?;
        Ok(durable)
    }

    /// Makes the next [`commit`](Self::commit) of `topic` record, in its transaction, that
    /// `encore_last_listen` holds the state of its offsets (after a replay rebuilt it).
    pub fn mark_state_on_next_commit(&mut self, topic: &str) {
        self.mark_state = Some(topic.to_owned());
    }

    /// A reader of the durable state, for loaders on other threads.
    pub fn state_reader(&self) -> StateReader {
        StateReader::new(self.target.clone(), self.retry, self.sql.clone(), self.schema.clone(), self.score_precision)
    }

    /// Commits one closed timestamp: `changes` and the `offsets` (next offset to consume per
    /// partition of `topic`) they were computed from, in one transaction.
    ///
    /// Per key of each table the triples are netted first: the value with diff +1 is written,
    /// a key with only a -1 is deleted, a value that comes and goes is ignored. Changes with
    /// more than one +1 or -1 left for a key are refused ([`SinkError::InvalidChanges`])
    /// before anything is written. Scores are stored as `units as f64 / 10f64.powi(P)`.
    /// `co_listens` changes are ignored unless the sink was connected with `emit_co_listens`.
    ///
    /// Empty changes with empty offsets write nothing (no transaction).
    /// Partitions missing from `offsets` keep their stored offset; an offset lower than the
    /// stored one aborts the commit with [`SinkError::Fenced`]. A lost connection is retried
    /// per the [`RetryPolicy`], as described in the module docs.
    pub fn commit(&mut self, topic: &str, changes: &Changes, offsets: &BTreeMap<i32, i64>) -> Result<CommitStats, SinkError> {
        let staged = Staged::new(changes, self.score_precision, self.emit_co_listens)?;
        let events = match (&self.event_log, changes.events.is_empty()) {
            (Some(_), false) => Some(event_log::encode_events(&changes.events)?),
            _ => None,
        };
        let mut stats = CommitStats::planned(&staged, events.as_ref());
        if staged.is_empty() && offsets.is_empty() && events.is_none() {
            return Ok(stats); // nothing to write: no transaction at all
        }
        let attempts = self.retry.attempts();
        // Plain INSERTs and UPDATEs until a row is not as the changes say (module docs).
        let mut fast = true;
        loop {
            stats.attempts += 1;
            let mark = self.mark_state.as_deref() == Some(topic);
            let result = match ensure_session(&mut self.session, &self.target, &self.sql, &self.retry) {
                Ok(session) => {
                    let events = self.event_log.as_ref().zip(events.as_ref());
                    commit_once(session, &self.sql, topic, &staged, offsets, fast, mark, events)
                }
                Err(err) => return Err(err),
            };
            let failure = match result {
                Ok(()) => {
                    if mark {
                        self.mark_state = None;
                    }
                    self.remember(topic, offsets);
                    return Ok(stats);
                }
                Err(failure) => failure,
            };
            if fast && failure.is_fast_path_miss() {
                info!("rows were not as the changes say (replayed commit?); redoing the commit with upserts");
                fast = false;
                continue;
            }
            if !failure.is_transient() || stats.attempts >= attempts {
                return Err(failure.into_error("commit", stats.attempts));
            }
            warn!(
                attempt = stats.attempts,
                error = %failure.reason(),
                "postgres commit failed; reconnecting to retry it"
            );
            self.session = None;
            sleep(self.retry.backoff(stats.attempts));
            // The failure may have hit after COMMIT reached the server: look before retrying.
            let stored = self.with_session("checking a lost commit", |session, _| select_offsets(session, topic).map_err(Failure::from))?;
            match after_lost_ack(&stored, offsets, self.known_offsets.get(topic)) {
                LostAck::Committed => {
                    info!(attempt = stats.attempts, "postgres commit had landed; its ack was lost");
                    if self.mark_state.as_deref() == Some(topic) {
                        self.mark_state = None;
                    }
                    self.remember(topic, offsets);
                    stats.ack_lost = true;
                    return Ok(stats);
                }
                LostAck::Retry => {}
                LostAck::Diverged { partition, stored, before, after } => {
                    return Err(SinkError::Diverged { topic: topic.to_string(), partition, stored, before, after });
                }
            }
        }
    }

    /// Reads every table back (in one snapshot), scores converted to units with
    /// `(score * 10^P).round()`, and the dead letters in insertion order. `co_listens` is
    /// empty unless the sink was connected with `emit_co_listens`. For tests and tools: this
    /// reads whole tables.
    pub fn read_tables(&mut self) -> Result<(Tables, Vec<DeadLetter>), SinkError> {
        let scale = 10f64.powi(self.score_precision as i32);
        let emit_co_listens = self.emit_co_listens;
        self.with_session("reading the tables", |session, sql| {
            let mut tx = session.client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
            let mut tables = Tables::default();
            for row in tx.query(&sql.select_table(&TRACK_NEIGHBORS), &[])? {
                let (track, list) = list_row(&row, TRACK_NEIGHBORS.name, scale)?;
                tables.track_neighbors.extend(list.into_iter().map(|(neighbor, units)| ((track, neighbor), units)));
            }
            for row in tx.query(&sql.select_table(&USER_RECOMMENDATIONS), &[])? {
                let (user, list) = list_row(&row, USER_RECOMMENDATIONS.name, scale)?;
                tables.user_recommendations.extend(list.into_iter().map(|(track, units)| ((user, track), units)));
            }
            for row in tx.query(&sql.select_table(&TRACK_STATS), &[])? {
                let table = TRACK_STATS.name;
                let stats = TrackStats { plays: id(&row, 1, table)?, listeners: id(&row, 2, table)?, likes: id(&row, 3, table)? };
                tables.track_stats.insert(id(&row, 0, table)?, stats);
            }
            if emit_co_listens {
                for row in tx.query(&sql.select_table(&CO_LISTENS), &[])? {
                    let table = CO_LISTENS.name;
                    let key = (id(&row, 0, table)?, id(&row, 1, table)?);
                    tables.co_listens.insert(key, id(&row, 2, table)?);
                }
            }
            let mut dead_letters = Vec::new();
            for row in tx.query(&sql.select_dead_letters, &[])? {
                dead_letters.push(DeadLetter {
                    topic: row.try_get(0)?,
                    partition: row.try_get(1)?,
                    offset: row.try_get(2)?,
                    payload: row.try_get(3)?,
                    error: row.try_get(4)?,
                });
            }
            tx.commit()?;
            Ok((tables, dead_letters))
        })
    }

    /// Runs `op` on a live session, reconnecting and retrying on transient failures.
    fn with_session<T>(
        &mut self,
        context: &'static str,
        mut op: impl FnMut(&mut Session, &Statements) -> Result<T, Failure>,
    ) -> Result<T, SinkError> {
        let attempts = self.retry.attempts();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let session = ensure_session(&mut self.session, &self.target, &self.sql, &self.retry)?;
            match op(session, &self.sql) {
                Ok(value) => return Ok(value),
                Err(failure) if failure.is_transient() && attempt < attempts => {
                    warn!(attempt, error = %failure.reason(), "postgres {context} failed; reconnecting");
                    self.session = None;
                    sleep(self.retry.backoff(attempt));
                }
                Err(failure) => return Err(failure.into_error(context, attempt)),
            }
        }
    }

    fn remember(&mut self, topic: &str, offsets: &BTreeMap<i32, i64>) {
        let known = self.known_offsets.entry(topic.to_string()).or_default();
        known.extend(offsets.iter().map(|(&p, &o)| (p, o)));
    }
}

/// One attempt of a commit; see the diagram in the module docs.
// Each argument is one part of the one transaction; bundling them would only name the bundle.
#[allow(clippy::too_many_arguments)]
fn commit_once(
    session: &mut Session,
    sql: &Statements,
    topic: &str,
    staged: &Staged,
    offsets: &BTreeMap<i32, i64>,
    fast: bool,
    mark_state: bool,
    events: Option<(&event_log::EventLogSql, &EncodedEvents)>,
) -> Result<(), Failure> {
    // Dropping `tx` on any early return rolls the transaction back.
    let mut tx = session.client.transaction()?;
    if mark_state {
        tx.execute(sql.mark_durable_state.as_str(), &[&topic])?;
    }
    if !offsets.is_empty() {
        let partitions: Vec<i32> = offsets.keys().copied().collect();
        let next: Vec<i64> = offsets.values().copied().collect();
        let rows = tx.query(&session.upsert_offsets, &[&topic, &partitions, &next])?;
        if rows.len() != partitions.len() {
            let mut advanced = BTreeSet::new();
            for row in &rows {
                advanced.insert(row.try_get::<_, i32>(0)?);
            }
            if let Some((&partition, &offset)) = offsets.iter().find(|(p, _)| !advanced.contains(*p)) {
                return Err(Failure::Sink(SinkError::Fenced { topic: topic.to_string(), partition, offset }));
            }
        }
    }
    // The event log: straight into its tables (a duplicate fails the commit; event_log.rs).
    if let Some((log, events)) = events {
        log.copy(&mut tx, events)?;
    }
    // All merges go to the server as one simple-query batch: one round trip for the lot.
    // `expected[i]`: the row count statement i must report for the fast path to hold.
    let mut merge = String::new();
    let mut expected: Vec<Option<u64>> = Vec::new();
    for table in &staged.tables {
        copy_in(&mut tx, sql.copy(table.spec.name), &table.copy_data)?;
        let name = table.spec.name;
        let mut statement = |text: &str, rows: Option<u64>| {
            merge.push_str(text);
            expected.push(rows);
        };
        if table.deletes > 0 {
            statement(sql.merge_delete(name), None);
        }
        if !fast {
            if table.inserts + table.updates > 0 {
                statement(sql.merge_upsert(name), None);
            }
            continue;
        }
        if table.updates > 0 {
            statement(sql.merge_update(name), Some(table.updates));
        }
        if table.inserts > 0 {
            statement(sql.merge_insert(name), None);
        }
    }
    if let Some(data) = &staged.dead_letters {
        copy_in(&mut tx, &sql.copy_dead_letters, data)?;
        merge.push_str(&sql.merge_dead_letters);
        expected.push(None);
    }
    if !merge.is_empty() {
        let counts = tx.simple_query(&merge)?.into_iter().filter_map(|message| match message {
            SimpleQueryMessage::CommandComplete(rows) => Some(rows),
            _ => None,
        });
        if expected.iter().zip(counts).any(|(want, got)| want.is_some_and(|want| want != got)) {
            return Err(Failure::FastPathMissed);
        }
    }
    tx.commit()?;
    Ok(())
}

/// Streams pre-encoded binary COPY data; `finish` completes the COPY (dropping the writer
/// without it would abort the COPY, and with it the transaction).
fn copy_in(tx: &mut postgres::Transaction<'_>, statement: &str, data: &[u8]) -> Result<u64, Failure> {
    let mut writer = tx.copy_in(statement)?;
    writer.write_all(data).map_err(Failure::Io)?;
    Ok(writer.finish()?)
}

/// A list row `(key, ids[], scores[])`: its key and its members with their score units
/// (`(score * 10^P).round()`, exact for the doubles the sink wrote), in the stored order.
fn list_row(row: &Row, table: &'static str, scale: f64) -> Result<(u64, RankedList), Failure> {
    let ids: Vec<i64> = row.try_get(1)?;
    let scores: Vec<f64> = row.try_get(2)?;
    if ids.len() != scores.len() {
        let reason = format!("{} ids but {} scores", ids.len(), scores.len());
        return Err(Failure::Sink(SinkError::BadRow { table, reason }));
    }
    let mut list = RankedList::with_capacity(ids.len());
    for (member, score) in ids.into_iter().zip(scores) {
        let member =
            u64::try_from(member).map_err(|_| Failure::Sink(SinkError::BadRow { table, reason: format!("negative id {member}") }))?;
        list.push((member, (score * scale).round() as i64));
    }
    Ok((id(row, 0, table)?, list))
}

/// A stored BIGINT that must be a SPEC id or count (≥ 0).
fn id(row: &Row, column: usize, table: &'static str) -> Result<u64, Failure> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value)
        .map_err(|_| Failure::Sink(SinkError::BadRow { table, reason: format!("negative value {value} in column {column}") }))
}

/// What the stored offsets say about a commit whose acknowledgement was lost.
#[derive(Debug, PartialEq, Eq)]
enum LostAck {
    /// They equal the commit's offsets, which differ from the ones before: it committed.
    Committed,
    /// It did not commit, or it cannot be told (no offset moved); retrying is safe either way.
    Retry,
    /// They are neither before nor after the commit.
    Diverged { partition: i32, stored: Option<i64>, before: Option<i64>, after: i64 },
}

fn after_lost_ack(stored: &BTreeMap<i32, i64>, new: &BTreeMap<i32, i64>, before: Option<&BTreeMap<i32, i64>>) -> LostAck {
    let all_new = new.iter().all(|(p, o)| stored.get(p) == Some(o));
    let moved = before.is_none_or(|before| new.iter().any(|(p, o)| before.get(p) != Some(o)));
    if !new.is_empty() && all_new && moved {
        return LostAck::Committed;
    }
    if let Some(before) = before {
        for (&partition, &after) in new {
            let stored = stored.get(&partition).copied();
            let before = before.get(&partition).copied();
            if stored != Some(after) && stored != before {
                return LostAck::Diverged { partition, stored, before, after };
            }
        }
    }
    LostAck::Retry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn lost_ack_is_recognised() {
        let before = offsets(&[(0, 10), (1, 20)]);
        let new = offsets(&[(0, 15), (1, 20)]);
        assert_eq!(after_lost_ack(&new, &new, Some(&before)), LostAck::Committed);
        assert_eq!(after_lost_ack(&before, &new, Some(&before)), LostAck::Retry);
        assert_eq!(after_lost_ack(&new, &new, None), LostAck::Committed);
        // Nothing moved: cannot tell, retry (idempotent).
        assert_eq!(after_lost_ack(&before, &before, Some(&before)), LostAck::Retry);
        assert_eq!(
            after_lost_ack(&offsets(&[(0, 12), (1, 20)]), &new, Some(&before)),
            LostAck::Diverged { partition: 0, stored: Some(12), before: Some(10), after: 15 }
        );
    }
}
