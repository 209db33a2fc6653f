//! The event log (`--emit-events`): every valid event appended to `track_stream_event_log`
//! (streaming and skip events) or `track_like_event_log` (likes), the tables the system encore
//! replaces wrote and its users query.
//!
//! # Delivery guarantee
//!
//! **Each valid event exactly once**, by the same means as every other table: an epoch's events
//! are appended by binary COPY in the transaction that also writes the epoch's deltas and
//! its offsets ([`PgSink::commit`]). A crash before COMMIT leaves neither; a restart replays the
//! committed messages without logging them (their epochs are below [`crate::source::kafka::LIVE`]:
//! the workers do not even feed them to the log, and the sink skips those epochs) and logs
//! the rest once.
//!
//! The unique key on `(kafka_partition, kafka_offset)` is the safety net, not the mechanism:
//! the rows are COPYed straight into the tables (no staging table, no `ON CONFLICT`: that is
//! what keeps the log at COPY speed), so an event that is there already fails the whole
//! commit with a unique violation rather than being logged twice or silently dropped, and the
//! job stops with that reason. It cannot happen through encore alone (a commit whose ack was
//! lost is recognised by its offsets, see [`super`]); it does when two topics write events
//! into one schema (the key has no topic: give each topic its own `--pg-schema`) or when rows
//! were inserted by hand.
//!
//! ```text
//!  Changes::events (every worker's share of the epoch, in no order)
//!        │ sort by (partition, offset) (index pages filled in order); split stream | like;
//!        │ encode binary COPY once, before BEGIN (a retry resends the same bytes)
//!        ▼
//!  BEGIN ─► offsets ─► … ─► COPY <schema>.track_stream_event_log (…) FROM STDIN (FORMAT binary)
//!                        ─► COPY <schema>.track_like_event_log (…) FROM STDIN (FORMAT binary)
//!        ─► merges of the other tables ─► COMMIT
//! ```
//!
//! # Encoding
//!
//! Columns `(user_id, track_id, event_timestamp, kafka_partition, kafka_offset, event_type,
//! ms_played)`; `created_timestamp` is left to its `DEFAULT now()` (the commit's start). In
//! binary COPY a `timestamptz` is an `int8` of microseconds since 2000-01-01 00:00 UTC: the
//! event's milliseconds since 1970 become `(ms − 946 684 800 000) × 1000`. An event time that
//! `timestamptz` cannot hold (after 294276 AD: integer timestamps may be up to 2^63 ms) is
//! written as NULL rather than fail the commit. `event_type` is text (`streaming`, `skip`,
//! `like`), `ms_played` an `int4`, NULL when the event had none (values above `i32::MAX` are
//! stored as `i32::MAX`, see [`LoggedEvent::ms_played`]).

use std::io::Write as _;

use super::error::Failure;
use super::{quote_ident, sql::SCHEMA_LOCK_KEY, PgSink, SinkError};
use crate::tables::LoggedEvent;

/// Streaming and skip events.
pub const STREAM_EVENT_LOG: &str = "track_stream_event_log";
/// Like events.
pub const LIKE_EVENT_LOG: &str = "track_like_event_log";

/// The columns a commit writes, in COPY order.
const COPY_COLUMNS: &str = "user_id, track_id, event_timestamp, kafka_partition, kafka_offset, event_type, ms_played";

/// The fixed start of every binary COPY stream: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// 1970-01-01 minus 2000-01-01 (PostgreSQL's epoch), in milliseconds.
const UNIX_TO_PG_EPOCH_MS: i64 = 946_684_800_000;
/// PostgreSQL's valid `timestamptz` range, microseconds since its epoch: from 4714-11-24 BC
/// (`MIN_TIMESTAMP`) up to, not including, 294277-01-01 AD (`END_TIMESTAMP`).
const PG_MIN_TIMESTAMP_US: i64 = -211_813_488_000_000_000;
const PG_END_TIMESTAMP_US: i64 = 9_223_371_331_200_000_000;

/// Creates both log tables in `schema` (unquoted) if they are missing. For the sink and for
/// benchmarks that need an identical table.
pub fn create_event_log_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    [STREAM_EVENT_LOG, LIKE_EVENT_LOG]
        .iter()
        .map(|table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.{table} (user_id BIGINT, track_id BIGINT, \
                 event_timestamp TIMESTAMPTZ, created_timestamp TIMESTAMPTZ DEFAULT now(), \
                 kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, event_type TEXT, ms_played INT, \
                 UNIQUE (kafka_partition, kafka_offset));\n"
            )
        })
        .collect()
}

/// `COPY` of encoded rows into `table` of `schema` (unquoted).
pub fn copy_event_log_sql(schema: &str, table: &str) -> String {
    format!("COPY {}.{table} ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)", quote_ident(schema))
}

/// The statements of a sink that keeps the event log.
#[derive(Debug)]
pub(super) struct EventLogSql {
    copy_stream: String,
    copy_likes: String,
    select: [String; 2],
}

/// One commit's events, encoded.
#[derive(Debug, Default)]
pub struct EncodedEvents {
    /// Binary COPY data for `track_stream_event_log`, when there are streaming or skip events.
    pub stream: Option<Vec<u8>>,
    /// Binary COPY data for `track_like_event_log`, when there are likes.
    pub likes: Option<Vec<u8>>,
    /// Rows in `stream`.
    pub stream_rows: u64,
    /// Rows in `likes`.
    pub like_rows: u64,
}

impl EncodedEvents {
    /// Bytes of COPY data.
    pub fn bytes(&self) -> u64 {
        [&self.stream, &self.likes].iter().map(|data| data.as_ref().map_or(0, |d| d.len() as u64)).sum()
    }
}

/// Sorts `events` by `(partition, offset)` and encodes them as the two tables' binary COPY
/// streams. Refuses (before any write) an id beyond `BIGINT`, which SPEC §1 rules out.
pub fn encode_events(events: &[LoggedEvent]) -> Result<EncodedEvents, SinkError> {
    let sorted = source_order(events);
    let likes = sorted.iter().filter(|event| event.is_like()).count();
    let mut stream_data = Vec::with_capacity(COPY_HEADER.len() + (sorted.len() - likes) * ROW_BYTES + 2);
    let mut like_data = Vec::with_capacity(COPY_HEADER.len() + likes * ROW_BYTES + 2);
    stream_data.extend_from_slice(COPY_HEADER);
    like_data.extend_from_slice(COPY_HEADER);
    for event in sorted {
        encode_row(if event.is_like() { &mut like_data } else { &mut stream_data }, event)?;
    }
    let finish = |mut data: Vec<u8>, rows: usize| {
        data.extend_from_slice(&(-1i16).to_be_bytes());
        (rows > 0).then_some(data)
    };
    let stream_rows = events.len() - likes;
    Ok(EncodedEvents {
        stream: finish(stream_data, stream_rows),
        likes: finish(like_data, likes),
        stream_rows: stream_rows as u64,
        like_rows: likes as u64,
    })
}

/// `events` in `(partition, offset)` order. Partitions and offsets are never negative (Kafka
/// and line numbers), so with the index below 2^32 the three pack into one `u128` whose plain
/// sort is the order wanted: 16 bytes a key, no pointer chased per comparison (a catch-up
/// commit sorts millions).
fn source_order(events: &[LoggedEvent]) -> Vec<&LoggedEvent> {
    let packable = events.len() <= u32::MAX as usize && events.iter().all(|e| e.partition >= 0 && e.offset >= 0);
    if !packable {
        let mut sorted: Vec<&LoggedEvent> = events.iter().collect();
        sorted.sort_unstable_by_key(|event| (event.partition, event.offset));
        return sorted;
    }
    let mut keys: Vec<u128> =
        events.iter().enumerate().map(|(index, e)| (e.partition as u128) << 96 | (e.offset as u128) << 32 | index as u128).collect();
    keys.sort_unstable();
    keys.into_iter().map(|key| &events[(key as u32) as usize]).collect()
}

/// Most bytes of one row: field count, then length + value per field.
const ROW_BYTES: usize = 2 + (4 + 8) * 2 + (4 + 8) + (4 + 4) + (4 + 8) + (4 + 9) + (4 + 4);

fn encode_row(out: &mut Vec<u8>, event: &LoggedEvent) -> Result<(), SinkError> {
    let bigint = |value: u64, what: &'static str| i64::try_from(value).map_err(|_| SinkError::OutOfRange { what, value });
    out.extend_from_slice(&7i16.to_be_bytes());
    for id in [bigint(event.user, "user_id")?, bigint(event.track, "track_id")?] {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
    }
    match pg_timestamp(event.time_ms) {
        Some(micros) => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&micros.to_be_bytes());
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    out.extend_from_slice(&4i32.to_be_bytes());
    out.extend_from_slice(&event.partition.to_be_bytes());
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&event.offset.to_be_bytes());
    let name = event.event_type.as_str().as_bytes();
    out.extend_from_slice(&(name.len() as i32).to_be_bytes());
    out.extend_from_slice(name);
    match event.ms_played {
        Some(ms) => {
            out.extend_from_slice(&4i32.to_be_bytes());
            out.extend_from_slice(&ms.to_be_bytes());
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    Ok(())
}

/// An event time (ms since 1970) as a binary `timestamptz` (µs since 2000), or `None` if
/// PostgreSQL cannot hold it.
pub fn pg_timestamp(time_ms: i64) -> Option<i64> {
    time_ms
        .checked_sub(UNIX_TO_PG_EPOCH_MS)
        .and_then(|ms| ms.checked_mul(1000))
        .filter(|micros| (PG_MIN_TIMESTAMP_US..PG_END_TIMESTAMP_US).contains(micros))
}

/// One row of an event log as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventLogRow {
    /// Whether it is in `track_like_event_log` (else `track_stream_event_log`).
    pub like_log: bool,
    /// `kafka_partition`.
    pub partition: i32,
    /// `kafka_offset`.
    pub offset: i64,
    /// `user_id`.
    pub user: i64,
    /// `track_id`.
    pub track: i64,
    /// `event_timestamp` in ms since 1970; `None` for NULL.
    pub time_ms: Option<i64>,
    /// `event_type`.
    pub event_type: Option<encore_core::EventType>,
    /// `ms_played`.
    pub ms_played: Option<i32>,
}

impl EventLogRow {
    /// The row a commit writes for `event`.
    pub fn of(event: &LoggedEvent) -> EventLogRow {
        EventLogRow {
            like_log: event.is_like(),
            partition: event.partition,
            offset: event.offset,
            user: event.user as i64,
            track: event.track as i64,
            time_ms: pg_timestamp(event.time_ms).map(|_| event.time_ms),
            event_type: Some(event.event_type),
            ms_played: event.ms_played,
        }
    }
}

impl EventLogSql {
    pub(super) fn new(schema: &str) -> EventLogSql {
        let s = quote_ident(schema);
        let select = |table: &str| {
            // numeric arithmetic: exact for every stored microsecond.
            format!(
                "SELECT kafka_partition, kafka_offset, user_id, track_id, \
                 floor(extract(epoch FROM event_timestamp) * 1000)::bigint, event_type, ms_played \
                 FROM {s}.{table} ORDER BY kafka_partition, kafka_offset"
            )
        };
        EventLogSql {
            copy_stream: copy_event_log_sql(schema, STREAM_EVENT_LOG),
            copy_likes: copy_event_log_sql(schema, LIKE_EVENT_LOG),
            select: [select(STREAM_EVENT_LOG), select(LIKE_EVENT_LOG)],
        }
    }

    /// COPYs `events` into the log tables, inside the commit's transaction `tx`.
    pub(super) fn copy(&self, tx: &mut postgres::Transaction<'_>, events: &EncodedEvents) -> Result<(), Failure> {
        for (statement, data) in [(&self.copy_stream, &events.stream), (&self.copy_likes, &events.likes)] {
            if let Some(data) = data {
                let mut writer = tx.copy_in(statement.as_str())?;
                writer.write_all(data).map_err(Failure::Io)?;
                writer.finish()?;
            }
        }
        Ok(())
    }
}

impl PgSink {
    /// Keeps the event log from now on: creates `track_stream_event_log` and
    /// `track_like_event_log` in the sink's schema if missing (under the same lock as the
    /// other tables), and makes every [`commit`](PgSink::commit) append
    /// [`Changes::events`](crate::tables::Changes::events) to them. Without it, commits ignore
    /// the events and the tables are not created.
    pub fn with_event_log(mut self) -> Result<PgSink, SinkError> {
        let create = create_event_log_sql(&self.schema);
        self.with_session("creating the event log", |session, _| {
            let mut tx = session.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])?;
            tx.batch_execute(&create)?;
            tx.commit().map_err(Failure::from)
        })?;
        self.event_log = Some(EventLogSql::new(&self.schema));
        Ok(self)
    }

    /// Reads both event logs back, ordered by `(kafka_partition, kafka_offset)` within each
    /// (stream log first). Empty without [`with_event_log`](PgSink::with_event_log). For tests
    /// and tools: this reads whole tables.
    pub fn read_event_log(&mut self) -> Result<Vec<EventLogRow>, SinkError> {
        let Some(log) = self.event_log.as_ref() else { return Ok(Vec::new()) };
        let selects = log.select.clone();
        self.with_session("reading the event log", |session, _| {
            let mut rows = Vec::new();
            for (like_log, select) in [(false, &selects[0]), (true, &selects[1])] {
                for row in session.client.query(select.as_str(), &[])? {
                    let event_type: Option<String> = row.try_get(5)?;
                    rows.push(EventLogRow {
                        like_log,
                        partition: row.try_get(0)?,
                        offset: row.try_get(1)?,
                        user: row.try_get(2)?,
                        track: row.try_get(3)?,
                        time_ms: row.try_get(4)?,
                        event_type: event_type.as_deref().and_then(encore_core::EventType::from_name),
                        ms_played: row.try_get(6)?,
                    });
                }
            }
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_core::EventType;

    fn event(partition: i32, offset: i64, event_type: EventType, ms_played: Option<i32>) -> LoggedEvent {
        LoggedEvent { partition, offset, user: 7, track: 42, time_ms: 1_714_557_600_123, event_type, ms_played }
    }

    #[test]
    fn timestamps_are_microseconds_since_2000() {
        assert_eq!(pg_timestamp(946_684_800_000), Some(0));
        assert_eq!(pg_timestamp(946_684_800_001), Some(1_000));
        assert_eq!(pg_timestamp(0), Some(-946_684_800_000_000));
        // 2024-05-01T10:00:00.123Z, as `SELECT extract(epoch FROM …)` would say.
        assert_eq!(pg_timestamp(1_714_557_600_123), Some((1_714_557_600_123 - 946_684_800_000) * 1000));
        // Beyond what timestamptz holds: NULL, not a failed commit.
        assert_eq!(pg_timestamp(i64::MAX), None);
        assert_eq!(pg_timestamp(9_300_000_000_000_000), None); // µs overflow i64
        assert_eq!(pg_timestamp(PG_END_TIMESTAMP_US / 1000 + UNIX_TO_PG_EPOCH_MS - 1), Some(PG_END_TIMESTAMP_US - 1000));
        assert_eq!(pg_timestamp(PG_END_TIMESTAMP_US / 1000 + UNIX_TO_PG_EPOCH_MS), None);
    }

    #[test]
    fn one_row_byte_by_byte() {
        let encoded = encode_events(&[event(3, 9, EventType::Streaming, Some(31_000))]).unwrap();
        assert!(encoded.likes.is_none());
        assert_eq!((encoded.stream_rows, encoded.like_rows), (1, 0));
        let mut want = COPY_HEADER.to_vec();
        want.extend_from_slice(&[0, 7]); // fields
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]); // user_id
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 42]); // track_id
        want.extend_from_slice(&[0, 0, 0, 8]);
        want.extend_from_slice(&((1_714_557_600_123i64 - 946_684_800_000) * 1000).to_be_bytes()); // event_timestamp
        want.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 3]); // kafka_partition
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]); // kafka_offset
        want.extend_from_slice(&[0, 0, 0, 9]);
        want.extend_from_slice(b"streaming"); // event_type
        want.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0x79, 0x18]); // ms_played 31 000
        want.extend_from_slice(&[0xff, 0xff]); // trailer
        assert_eq!(encoded.stream.as_deref(), Some(&want[..]));
        assert!(want.len() - COPY_HEADER.len() - 2 <= ROW_BYTES);
    }

    #[test]
    fn likes_go_to_their_own_table_nulls_where_absent_and_rows_in_source_order() {
        let mut late_like = event(1, 5, EventType::Like, None);
        late_like.time_ms = i64::MAX;
        let events = [
            event(2, 1, EventType::Skip, Some(1_000)),
            late_like,
            event(0, 8, EventType::Streaming, None),
            event(0, 3, EventType::Like, None),
        ];
        let encoded = encode_events(&events).unwrap();
        assert_eq!((encoded.stream_rows, encoded.like_rows), (2, 2));
        let stream = encoded.stream.unwrap();
        let likes = encoded.likes.unwrap();
        // Rows start with the field count; each one's offset sits after the ids, the
        // timestamp (or its NULL) and the partition.
        let offsets = |data: &[u8]| {
            let mut at = COPY_HEADER.len();
            let mut found = Vec::new();
            while data[at..at + 2] != [0xff, 0xff] {
                at += 2;
                let mut fields = Vec::new();
                for _ in 0..7 {
                    let len = i32::from_be_bytes(data[at..at + 4].try_into().unwrap());
                    at += 4;
                    let value = (len >= 0).then(|| data[at..at + len as usize].to_vec());
                    at += len.max(0) as usize;
                    fields.push(value);
                }
                found.push(fields);
            }
            found
        };
        let stream_rows = offsets(&stream);
        let like_rows = offsets(&likes);
        let offset = |fields: &Vec<Option<Vec<u8>>>| i64::from_be_bytes(fields[4].clone().unwrap().try_into().unwrap());
        assert_eq!(stream_rows.iter().map(offset).collect::<Vec<_>>(), vec![8, 1]); // (0,8) then (2,1)
        assert_eq!(like_rows.iter().map(offset).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(stream_rows[0][6], None, "ms_played absent: NULL");
        assert_eq!(stream_rows[1][5].as_deref(), Some(&b"skip"[..]));
        assert_eq!(like_rows[1][2], None, "an event time beyond timestamptz: NULL");
        assert_eq!(like_rows[1][5].as_deref(), Some(&b"like"[..]));
    }

    #[test]
    fn source_order_is_partition_then_offset() {
        let mut events: Vec<LoggedEvent> =
            (0..500i64).map(|i| event((i * 7 % 5) as i32, (i * 7_919) % 1_000 + (1 << 40) * (i % 2), EventType::Skip, None)).collect();
        let mut want: Vec<(i32, i64)> = events.iter().map(|e| (e.partition, e.offset)).collect();
        want.sort_unstable();
        let got: Vec<(i32, i64)> = source_order(&events).iter().map(|e| (e.partition, e.offset)).collect();
        assert_eq!(got, want);
        // A negative partition cannot be packed: the plain sort takes over.
        events[3].partition = -1;
        let got: Vec<(i32, i64)> = source_order(&events).iter().map(|e| (e.partition, e.offset)).collect();
        assert_eq!(got[0], (-1, events[3].offset));
        assert!(got.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ids_beyond_bigint_are_refused_and_no_events_encode_nothing() {
        let mut bad = event(0, 0, EventType::Like, None);
        bad.user = u64::MAX;
        assert!(matches!(encode_events(&[bad]), Err(SinkError::OutOfRange { what: "user_id", .. })));
        let empty = encode_events(&[]).unwrap();
        assert!(empty.stream.is_none() && empty.likes.is_none());
        assert_eq!(empty.bytes(), 0);
    }

    #[test]
    fn tables_have_the_unique_key_and_no_primary_key() {
        let sql = create_event_log_sql("my schema");
        assert_eq!(sql.matches("UNIQUE (kafka_partition, kafka_offset)").count(), 2);
        assert!(!sql.contains("PRIMARY KEY"));
        assert!(sql.contains("\"my schema\".track_like_event_log"));
        assert!(copy_event_log_sql("s", STREAM_EVENT_LOG).starts_with("COPY \"s\".track_stream_event_log (user_id"));
    }
}
