//! The Postgres side of the pipeline benchmark: fresh schemas, the raw binary COPY baseline,
//! what a run wrote, and a poller that sees offsets become committed.
//!
//! * **Raw COPY** repeats `pg_copy`'s pre-encoded path: list rows shaped like the sink's
//!   widest tables, `(BIGINT, BIGINT[], DOUBLE PRECISION[])` of 10 members as in
//!   `user_recommendations`, encoded before the clock starts and sent in one
//!   `COPY … FROM STDIN (FORMAT binary)` per transaction, into an index-free table (the
//!   physical limit) and into a table keyed like the sink's (index maintenance included).
//! * **Raw UPDATE** is the path a live commit mostly takes (new scores for existing keys):
//!   the keyed table, with the sink's fill factor, full; per transaction a tenth of its keys
//!   (spread over the table) get new lists through a binary COPY into a
//!   temporary staging table and one `UPDATE … FROM` it, as the sink's merge does, without
//!   the sink's own work (consolidation, encoding, offsets).
//! * **Raw event-log COPY** (`--emit-events`): event-log rows (ids, timestamp, partition,
//!   offset, event type, `ms_played`), encoded before the clock starts by the sink's own
//!   encoder, in one binary COPY per transaction into a table created by the sink's own DDL
//!   (so with its unique key on `(kafka_partition, kafka_offset)`): the most the log can take.
//! * **Rows written** by a run are PostgreSQL's own counters (`pg_stat_user_tables`:
//!   inserted + updated + deleted tuples) of the result tables in the run's schema, so they
//!   count every row change of every commit, not just the final rows. The sink's staging
//!   tables are temporary tables in another schema and are not counted.
//! * **Commit observation**: `encore_progress.next_offset` per partition is written in the
//!   same transaction as the results, so the moment a poll sees it move past an offset is the
//!   moment that message's effects became visible (to within one poll interval).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use encore_dataflow::sink::postgres::quote_ident;
use postgres::Client;

/// The SPEC §3 result tables whose row changes a run is credited with.
pub const RESULT_TABLES: [&str; 4] = ["track_neighbors", "user_recommendations", "track_stats", "dead_letters"];

/// Connects to `url` as encore-flow does (TLS and `PG*` fallbacks as in libpq).
pub fn connect(url: &str) -> Result<Client> {
    let target = encore_pgconnect::Target::parse(url)?;
    target.connect().with_context(|| format!("connecting to {url}"))
}

/// Drops `schema` (and everything in it) and creates it empty.
pub fn fresh_schema(client: &mut Client, schema: &str) -> Result<()> {
    let s = quote_ident(schema);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"))
        .with_context(|| format!("recreating schema {schema}"))
}

/// Row changes (inserted + updated + deleted tuples) per result table of `schema`, and the
/// rows each holds now. Waits until PostgreSQL's counters stop moving: a backend reports its
/// counts when its session ends, which can be a moment after the client process exited.
pub fn rows_written(url: &str, schema: &str) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut client = connect(url)?;
    let mut previous = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let mut now = BTreeMap::new();
        for row in client.query(
            "SELECT relname::text, (n_tup_ins + n_tup_upd + n_tup_del)::bigint FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname = ANY($2)",
            &[&schema, &RESULT_TABLES.to_vec()],
        )? {
            let (table, changed): (String, i64) = (row.get(0), row.get(1));
            let held: i64 = client.query_one(&format!("SELECT count(*) FROM {}.{}", quote_ident(schema), quote_ident(&table)), &[])?.get(0);
            now.insert(table, (changed.max(0) as u64, held.max(0) as u64));
        }
        client.batch_execute("SELECT pg_stat_clear_snapshot()")?;
        if previous.as_ref() == Some(&now) {
            return Ok(now);
        }
        previous = Some(now);
    }
    previous.ok_or_else(|| anyhow!("no statistics for schema {schema}"))
}

/// The database's physical limits, rows/s (medians).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Binary COPY into an index-free table.
    pub copy_plain: f64,
    /// Binary COPY into a table keyed like the sink's.
    pub copy_keyed: f64,
    /// New values for existing keys: staging COPY + `UPDATE … FROM`.
    pub update: f64,
}

/// A tenth of the keys per raw UPDATE transaction.
const UPDATE_GROUPS: i64 = 10;

/// Rows per second of a raw binary COPY of `rows` pre-encoded rows into an index-free table
/// and into a keyed one, and of raw UPDATEs of `rows / 10` of them; median of `reps`, each
/// in one transaction.
pub fn raw_limits(url: &str, schema: &str, rows: usize, reps: usize) -> Result<Limits> {
    let mut client = connect(url)?;
    fresh_schema(&mut client, schema)?;
    let s = quote_ident(schema);
    let fillfactor = encore_dataflow::sink::postgres::FILLFACTOR;
    let columns = encore_benches::LIST_COLUMNS;
    client.batch_execute(&format!(
        "CREATE TABLE {s}.raw_copy ({columns}); \
         CREATE TABLE {s}.raw_keyed ({columns}, PRIMARY KEY (track_id)); \
         CREATE TABLE {s}.raw_update ({columns}, PRIMARY KEY (track_id)) WITH (fillfactor = {fillfactor}); \
         CREATE TEMP TABLE raw_stage ({columns}) ON COMMIT DELETE ROWS;"
    ))?;
    let data = encore_benches::list_rows_binary_copy(rows);
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2].max(1e-9)
    };
    let mut copy_rate = |table: &str| -> Result<f64> {
        let mut times = Vec::new();
        for _ in 0..reps.max(1) {
            client.batch_execute(&format!("TRUNCATE {s}.{table}"))?;
            let start = Instant::now();
            let mut tx = client.transaction()?;
            let mut writer = tx.copy_in(&format!("COPY {s}.{table} FROM STDIN (FORMAT binary)"))?;
            writer.write_all(&data)?;
            writer.finish()?;
            tx.commit()?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(rows as f64 / median(times))
    };
    let copy_plain = copy_rate("raw_copy")?;
    let copy_keyed = copy_rate("raw_keyed")?;

    let mut writer = client.copy_in(&format!("COPY {s}.raw_update FROM STDIN (FORMAT binary)"))?;
    writer.write_all(&data)?;
    writer.finish()?;
    let mut seconds_per_row = Vec::new();
    for rep in 0..reps.max(1) {
        // Another tenth each time, each row with a new score, as a live commit rewrites values.
        let group = rep as i64 % UPDATE_GROUPS;
        let batch = encore_benches::list_rows_group_binary_copy(rows, UPDATE_GROUPS, group, 1.0 + rep as f64);
        let start = Instant::now();
        let mut tx = client.transaction()?;
        let mut writer = tx.copy_in("COPY pg_temp.raw_stage FROM STDIN (FORMAT binary)")?;
        writer.write_all(&batch)?;
        writer.finish()?;
        let updated = tx.execute(
            &format!(
                "UPDATE {s}.raw_update AS t SET neighbor_ids = r.neighbor_ids, scores = r.scores \
                 FROM pg_temp.raw_stage AS r WHERE t.track_id = r.track_id"
            ),
            &[],
        )?;
        tx.commit()?;
        seconds_per_row.push(start.elapsed().as_secs_f64() / updated.max(1) as f64);
    }
    let update = 1.0 / median(seconds_per_row);
    client.batch_execute(&format!("DROP SCHEMA {s} CASCADE; DROP TABLE pg_temp.raw_stage"))?;
    Ok(Limits { copy_plain, copy_keyed, update })
}

/// Rows per second of a raw binary COPY of `rows` event-log rows into a table identical to
/// `track_stream_event_log` (the sink's DDL and encoder), median of `reps`, each in one
/// transaction into an emptied table. Offsets run on per partition (4 partitions), as a
/// catch-up's do.
pub fn raw_event_log_copy(url: &str, schema: &str, rows: usize, reps: usize) -> Result<f64> {
    use encore_dataflow::sink::postgres::{copy_event_log_sql, create_event_log_sql, encode_events, STREAM_EVENT_LOG};
    use encore_dataflow::tables::LoggedEvent;
    let mut client = connect(url)?;
    fresh_schema(&mut client, schema)?;
    client.batch_execute(&create_event_log_sql(schema))?;
    let events: Vec<LoggedEvent> = (0..rows as i64)
        .map(|i| LoggedEvent {
            partition: (i % 4) as i32,
            offset: i / 4,
            user: (i * 7_919 % 100_000) as u64,
            track: (i * 104_729 % 50_000) as u64,
            time_ms: 1_714_521_600_000 + i * 10,
            event_type: encore_core::EventType::Streaming,
            ms_played: (i % 3 != 0).then_some((i % 300_000) as i32),
        })
        .collect();
    let data = encode_events(&events)?.stream.unwrap_or_default();
    let copy = copy_event_log_sql(schema, STREAM_EVENT_LOG);
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        client.batch_execute(&format!("TRUNCATE {}.{STREAM_EVENT_LOG}", quote_ident(schema)))?;
        let start = Instant::now();
        let mut tx = client.transaction()?;
        let mut writer = tx.copy_in(&copy)?;
        writer.write_all(&data)?;
        writer.finish()?;
        tx.commit()?;
        times.push(start.elapsed().as_secs_f64());
    }
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(schema)))?;
    times.sort_by(f64::total_cmp);
    Ok(rows as f64 / times[times.len() / 2].max(1e-9))
}

/// Rows of both event logs in `schema` (0 where they do not exist).
pub fn event_log_rows(url: &str, schema: &str) -> Result<u64> {
    let mut client = connect(url)?;
    let mut rows = 0;
    for table in [encore_dataflow::sink::postgres::STREAM_EVENT_LOG, encore_dataflow::sink::postgres::LIKE_EVENT_LOG] {
        let name = format!("{}.{table}", quote_ident(schema));
        let exists: bool = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])?.get(0);
        if exists {
            let count: i64 = client.query_one(&format!("SELECT count(*) FROM {name}"), &[])?.get(0);
            rows += count as u64;
        }
    }
    Ok(rows)
}

/// Every change of `encore_progress` seen by the poller: `(partition, next_offset, seen at)`.
pub type Commits = Vec<(i32, i64, Instant)>;

/// Polls `schema.encore_progress` for `topic` every `interval` until stopped.
pub struct ProgressPoller {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(Commits, u64)>>,
}

impl ProgressPoller {
    /// Starts polling (its own connection, opened before this returns).
    pub fn start(url: &str, schema: &str, topic: &str, interval: Duration) -> Result<ProgressPoller> {
        let mut client = connect(url)?;
        let query = client
            .prepare(&format!("SELECT kafka_partition, next_offset FROM {}.encore_progress WHERE topic = $1", quote_ident(schema)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let topic = topic.to_owned();
        let handle = std::thread::spawn(move || -> Result<(Commits, u64)> {
            let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
            let mut commits = Vec::new();
            let mut polls = 0u64;
            let mut next_poll = Instant::now();
            loop {
                // One last poll once stopped: the caller stops right after seeing the final
                // commit itself, which an earlier poll may have missed by a few milliseconds
                // (its messages were then counted as never committed).
                let stopping = flag.load(Ordering::SeqCst);
                let rows = client.query(&query, &[&topic])?;
                let at = Instant::now();
                polls += 1;
                for row in rows {
                    let (partition, next): (i32, i64) = (row.get(0), row.get(1));
                    if seen.get(&partition) != Some(&next) {
                        seen.insert(partition, next);
                        commits.push((partition, next, at));
                    }
                }
                if stopping {
                    break;
                }
                next_poll += interval;
                let now = Instant::now();
                if next_poll > now {
                    std::thread::sleep(next_poll - now);
                } else {
                    next_poll = now;
                }
            }
            Ok((commits, polls))
        });
        Ok(ProgressPoller { stop, handle })
    }

    /// Stops polling; returns what it saw and how many polls it made.
    pub fn finish(self) -> Result<(Commits, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| anyhow!("the progress poller panicked"))?
    }
}

/// The latest committed `next_offset` per partition of `topic` in `schema`.
pub fn committed(url: &str, schema: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let mut client = connect(url)?;
    let rows = client
        .query(&format!("SELECT kafka_partition, next_offset FROM {}.encore_progress WHERE topic = $1", quote_ident(schema)), &[&topic])?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
