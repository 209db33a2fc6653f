//! The sink's errors: [`SinkError`] for callers (one-line `Display`), and the internal
//! [`Failure`] of one attempt, classified as transient (reconnect and retry) or not.

use super::MAX_SCORE_PRECISION;

/// Why the sink failed; `Display` is one line, fit for `encore-flow`'s exit message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The connection string does not parse, or names certificates that cannot be used
    /// (the message says which).
    #[error("{0}")]
    Config(String),
    /// `--score-precision` is beyond what `i64` score units can hold.
    #[error("score precision {0} is larger than {MAX_SCORE_PRECISION}")]
    InvalidPrecision(u32),
    /// No connection could be opened within the retry policy.
    #[error("Postgres unreachable after {attempts} attempts: {reason}")]
    Unreachable {
        /// Connection attempts made.
        attempts: u32,
        /// The last attempt's error.
        reason: String,
    },
    /// A transient failure (connection lost, serialization failure) kept recurring.
    #[error("Postgres {context} failed after {attempts} attempts: {reason}")]
    Retries {
        /// What the sink was doing.
        context: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        reason: String,
    },
    /// Postgres refused a statement for a reason retrying cannot fix (permissions, a table
    /// with other columns, disk full, ...).
    #[error("Postgres {context} failed: {reason}")]
    Postgres {
        /// What the sink was doing.
        context: &'static str,
        /// Postgres's message and SQLSTATE.
        reason: String,
    },
    /// The stored offset of a partition is ahead of the one being committed.
    #[error(
        "commit fenced: topic {topic:?} partition {partition} is already committed beyond offset \
         {offset} (another writer, or the topic was recreated: clear encore_progress to start over)"
    )]
    Fenced {
        /// Topic.
        topic: String,
        /// Partition whose offset would move backwards.
        partition: i32,
        /// The offset this commit tried to store.
        offset: i64,
    },
    /// After a lost connection the stored offsets matched neither the commit being retried nor
    /// the state before it.
    #[error(
        "stored offsets diverged: topic {topic:?} partition {partition} holds {stored:?}, \
         expected {before:?} or {after} (another writer, or Postgres lost committed data)"
    )]
    Diverged {
        /// Topic.
        topic: String,
        /// The first partition that differs.
        partition: i32,
        /// Its stored next offset.
        stored: Option<i64>,
        /// Its next offset before this commit.
        before: Option<i64>,
        /// Its next offset after this commit.
        after: i64,
    },
    /// The changes do not describe a keyed table (see [`PgSink::commit`](super::PgSink::commit)).
    #[error("invalid changes for {table}: {reason}")]
    InvalidChanges {
        /// Table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The tables of the topic were computed with other SPEC §2 parameters than this run's.
    #[error(
        "the tables in schema {schema:?} hold topic {topic:?} computed with {stored}, this run asks for \
         {asked}: restart with the stored parameters, or compute the new ones into another --pg-schema"
    )]
    ParametersDiffer {
        /// `--pg-schema`.
        schema: String,
        /// Topic.
        topic: String,
        /// The parameters the stored tables were computed with, as flags.
        stored: String,
        /// This run's parameters, as flags.
        asked: String,
    },
    /// The schema holds neighbour or recommendation tables of the older layout, one row per
    /// list member: deltas of one row per list cannot be applied to them.
    #[error(
        "schema {schema:?} holds {tables} with one row per list member, the layout of an older encore-flow \
         (each list is one row now): use a new --pg-schema, or convert the schema once with deploy/migrate-list-rows.sql"
    )]
    MemberRows {
        /// `--pg-schema`.
        schema: String,
        /// The tables of the old layout, comma-separated.
        tables: String,
    },
    /// The stored offsets moved while the durable state was being loaded.
    #[error(
        "the offsets of topic {topic:?} in schema {schema:?} changed while its state was loaded: \
         another encore-flow writes this schema (stop it first)"
    )]
    StateMoved {
        /// `--pg-schema`.
        schema: String,
        /// Topic.
        topic: String,
    },
    /// A value does not fit its column.
    #[error("{what} {value} does not fit a BIGINT")]
    OutOfRange {
        /// Column or field.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A stored row cannot be a value of its table (negative id, NULL, ...).
    #[error("unexpected row in {table}: {reason}")]
    BadRow {
        /// Table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why one attempt failed; transient kinds are retried.
pub(super) enum Failure {
    Pg(postgres::Error),
    /// Writing COPY data to the connection.
    Io(std::io::Error),
    Sink(SinkError),
    /// A fast-path UPDATE found fewer rows than it had updates.
    FastPathMissed,
}

impl From<postgres::Error> for Failure {
    fn from(err: postgres::Error) -> Self {
        Failure::Pg(err)
    }
}

impl Failure {
    pub(super) fn is_transient(&self) -> bool {
        match self {
            Failure::Pg(err) => is_transient(err),
            Failure::Io(_) => true,
            Failure::Sink(_) | Failure::FastPathMissed => false,
        }
    }

    /// The fast path's premise failed: a plain INSERT met an existing key (SQLSTATE 23505)
    /// or a plain UPDATE missed rows.
    pub(super) fn is_fast_path_miss(&self) -> bool {
        match self {
            Failure::FastPathMissed => true,
            Failure::Pg(err) => err.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }

    pub(super) fn reason(&self) -> String {
        match self {
            Failure::Pg(err) => describe(err),
            Failure::Io(err) => one_line(&err.to_string()),
            Failure::Sink(err) => err.to_string(),
            Failure::FastPathMissed => "an UPDATE found fewer rows than the changes retract".to_string(),
        }
    }

    pub(super) fn into_error(self, context: &'static str, attempts: u32) -> SinkError {
        match self {
            Failure::Sink(err) => err,
            failure if failure.is_transient() => SinkError::Retries { context, attempts, reason: failure.reason() },
            failure => SinkError::Postgres { context, reason: failure.reason() },
        }
    }
}

/// Whether a fresh connection and another attempt may succeed.
pub(super) fn is_transient(err: &postgres::Error) -> bool {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        // 08: connection exceptions; 57P01-3: admin/crash shutdown, server starting up;
        // 40001/40P01: serialization failure, deadlock; 55P03: lock_timeout;
        // 53300: too many connections (another client may leave).
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03" | "53300");
    }
    if err.is_closed() {
        return true;
    }
    // A certificate that fails the check (TLS errors come wrapped in io::Error) stays failing.
    if encore_pgconnect::is_tls_rejection(err) {
        return false;
    }
    match std::error::Error::source(err) {
        // Connect, read and write failures carry the socket's io::Error.
        Some(source) => source.is::<std::io::Error>(),
        // Timeouts and protocol desynchronisation: a new connection is the cure.
        None => true,
    }
}

/// Postgres's own message and SQLSTATE, or the client error with its cause, on one line.
pub(super) fn describe(err: &postgres::Error) -> String {
    let text = match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{err}: {source}"),
        (None, None) => err.to_string(),
    };
    // The server asked for a password the URL does not hold.
    one_line(&encore_pgconnect::with_password_hint(text))
}

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line() {
        let err = SinkError::Unreachable { attempts: 3, reason: one_line("a\nb  c") };
        assert_eq!(err.to_string(), "Postgres unreachable after 3 attempts: a b c");
    }
}
