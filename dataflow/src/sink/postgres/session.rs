//! Connections: the retry policy, the settings every session gets, opening (and on first
//! connect, creating the schema) with bounded retries.

use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::Duration;

use encore_pgconnect::Target;
use postgres::{Client, Statement};
use tracing::warn;

use super::error::{describe, is_transient, SinkError};
use super::sql::{Statements, SCHEMA_LOCK_KEY};

/// See the module docs, "Postgres settings".
const SESSION_OPTIONS: &str = "-c synchronous_commit=on -c statement_timeout=300s \
                               -c lock_timeout=30s -c idle_in_transaction_session_timeout=60s";

/// How persistently the sink retries transient failures.
///
/// Attempt `n` (1-based) that fails waits `min(initial_backoff · 2^(n-1), max_backoff)` before
/// attempt `n + 1`; after `attempts` attempts the last error is returned. With the default,
/// the sink gives up about 20 s after Postgres went away (plus up to `connect_timeout` per
/// attempt when packets are dropped rather than refused). No jitter: writers are few.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, at least 1.
    pub attempts: u32,
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Bound on one TCP connect + startup (unless the URL sets `connect_timeout`).
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    pub(super) fn attempts(&self) -> u32 {
        self.attempts.max(1)
    }
}

/// A connection with its per-session objects: staging tables and prepared statements.
pub(super) struct Session {
    pub(super) client: Client,
    pub(super) upsert_offsets: Statement,
    pub(super) select_offsets: Statement,
}

pub(super) fn select_offsets(session: &mut Session, topic: &str) -> Result<BTreeMap<i32, i64>, postgres::Error> {
    let mut offsets = BTreeMap::new();
    for row in session.client.query(&session.select_offsets, &[&topic])? {
        offsets.insert(row.try_get(0)?, row.try_get(1)?);
    }
    Ok(offsets)
}

/// The URL's settings plus ours (module docs, "Postgres settings"). TLS and the `PG*`
/// environment fallbacks (PGPASSWORD, PGSSLMODE, ...) are encore-pgconnect's, as in libpq.
pub(super) fn session_config(url: &str, retry: &RetryPolicy) -> Result<Target, SinkError> {
    let mut target = Target::parse(url).map_err(|err| SinkError::Config(err.to_string()))?;
    let config = target.config_mut();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(retry.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("encore-flow");
    }
    let options = match config.get_options() {
        Some(theirs) => format!("{theirs} {SESSION_OPTIONS}"),
        None => SESSION_OPTIONS.to_string(),
    };
    config.options(&options);
    config.keepalives(true).keepalives_idle(Duration::from_secs(10)).keepalives_interval(Duration::from_secs(5)).keepalives_retries(3);
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
    Ok(target)
}

/// Returns the live session, opening one (with retries) if the last was lost.
pub(super) fn ensure_session<'a>(
    slot: &'a mut Option<Session>,
    target: &Target,
    sql: &Statements,
    retry: &RetryPolicy,
) -> Result<&'a mut Session, SinkError> {
    let session = match slot.take() {
        Some(session) => session,
        None => open_session(target, sql, retry, None)?,
    };
    Ok(slot.insert(session))
}

/// Connects with retries; with `create_schema`, also creates the tables (first connect only:
/// a reconnect must not recreate tables someone dropped, which would silently restart them
/// empty while the job continues from its in-memory state).
pub(super) fn open_session(
    target: &Target,
    sql: &Statements,
    retry: &RetryPolicy,
    create_schema: Option<&str>,
) -> Result<Session, SinkError> {
    let attempts = retry.attempts();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_open_session(target, sql, create_schema) {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err(tables)) => {
                let schema = create_schema.unwrap_or_default().to_owned();
                return Err(SinkError::MemberRows { schema, tables: tables.join(", ") });
            }
            Err(err) if is_transient(&err) => {
                if attempt >= attempts {
                    return Err(SinkError::Unreachable { attempts, reason: describe(&err) });
                }
                warn!(attempt, error = %describe(&err), "cannot reach postgres; retrying");
                sleep(retry.backoff(attempt));
            }
            Err(err) => return Err(SinkError::Postgres { context: "setup", reason: describe(&err) }),
        }
    }
}

/// `Ok(Err(tables))`: the schema holds these tables in the older one-row-per-member layout.
fn try_open_session(
    target: &Target,
    sql: &Statements,
    create_schema: Option<&str>,
) -> Result<Result<Session, Vec<String>>, postgres::Error> {
    let mut client = target.connect()?;
    if let Some(schema) = create_schema {
        let mut tx = client.transaction()?;
        // Held to the end of the transaction: concurrent starts create the objects one after
        // the other, and the second finds them all.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])?;
        // Before anything is created: the views of the new layout cannot replace the old ones.
        let old: Vec<String> = tx.query(&sql.old_list_rows, &[&schema])?.iter().map(|row| row.get(0)).collect();
        if !old.is_empty() {
            return Ok(Err(old));
        }
        // CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege on the database before it
        // checks existence, so look first: a role may own its schema without that privilege.
        if tx.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])?.is_none() {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", sql.schema))?;
        }
        tx.batch_execute(&sql.create_tables)?;
        tx.commit()?;
    }
    client.batch_execute(&sql.create_staging)?;
    let upsert_offsets = client.prepare(&sql.upsert_offsets)?;
    let select_offsets = client.prepare(&sql.select_offsets)?;
    Ok(Ok(Session { client, upsert_offsets, select_offsets }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            connect_timeout: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=4).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
    }
}
