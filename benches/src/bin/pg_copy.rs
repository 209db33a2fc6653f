//! `pg_copy`: how fast rows get into Postgres, raw and through the sink.
//!
//! For batches of 1k, 10k and 100k list rows `(BIGINT, BIGINT[], DOUBLE PRECISION[])` of 10
//! members (a full `user_recommendations` row), in one transaction each, it measures:
//!
//! * **raw COPY (client encoder)**: `COPY ... FROM STDIN (FORMAT binary)` into an index-free
//!   table through `postgres::binary_copy::BinaryCopyInWriter`, one `write` per row;
//! * **raw COPY (pre-encoded)**: the same COPY fed with bytes encoded beforehand in one buffer,
//!   the physical limit of the path (what the sink does inside its transaction);
//! * **raw COPY keyed**: the same bytes into a table with the `track_id` primary key, the
//!   limit for landing rows in a keyed table (index maintenance included);
//! * **sink insert** / **sink update**: [`PgSink::commit`] of that many new rows, then of new
//!   values for the same keys, everything included: consolidation, encoding, staging COPY,
//!   merge into the primary-keyed table, offsets upsert, COMMIT with `synchronous_commit=on`;
//!
//! and prints rows/s (median of `--reps` runs) and the sink as a fraction of the raw rate.
//! A last line gives the latency of a commit with no row changes (offsets only).
//!
//! ```text
//! cargo run --release -p encore-benches --bin pg_copy            # a throwaway testkit cluster
//! cargo run --release -p encore-benches --bin pg_copy -- --tls        # the same over verify-full TLS
//! cargo run --release -p encore-benches --bin pg_copy -- --postgres postgres://...
//! ```
//!
//! The testkit cluster runs with `fsync=off`; against a real server the COMMIT costs one
//! WAL flush more.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use encore_dataflow::sink::postgres::{quote_ident, PgSink, RetryPolicy};
use encore_dataflow::tables::{Changes, TrackStats};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::Client;

/// Measures binary COPY and `PgSink::commit` throughput into PostgreSQL.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Postgres URL; by default a throwaway cluster is started with encore-testkit.
    #[arg(long)]
    postgres: Option<String>,
    /// Start the throwaway cluster with TLS only (a throwaway CA) and connect with
    /// sslmode=verify-full, to measure what encryption costs.
    #[arg(long, conflicts_with = "postgres")]
    tls: bool,
    /// Schema for the benchmark's tables (dropped and recreated).
    #[arg(long, default_value = "encore_bench")]
    schema: String,
    /// Batch sizes in rows.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<usize>,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

const TOPIC: &str = "bench";
const PRECISION: u32 = 4;

fn main() -> Result<()> {
    let args = Args::parse();
    let (_cluster, _ca);
    let url = match &args.postgres {
        Some(url) => url.clone(),
        None if args.tls => {
            let ca = encore_testkit::TestCa::new("pg_copy CA").context("creating a test CA")?;
            let cluster = encore_testkit::Postgres::start_tls(&ca).context("starting a test PostgreSQL with TLS")?;
            let url = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.url(), ca.root_path().display());
            (_cluster, _ca) = (cluster, ca);
            url
        }
        None => {
            let cluster = encore_testkit::Postgres::start().context("starting a test PostgreSQL")?;
            let url = cluster.url();
            _cluster = cluster;
            url
        }
    };
    let schema = quote_ident(&args.schema);
    // Connected as the sink connects (TLS as in libpq), so both measure the same transport.
    let mut client = encore_pgconnect::Target::parse(&url)?.connect().context("connecting")?;
    let columns = encore_benches::LIST_COLUMNS;
    client.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.raw_copy ({columns}); \
         CREATE TABLE {schema}.raw_keyed ({columns}, PRIMARY KEY (track_id));"
    ))?;
    let mut sink = PgSink::connect(&url, &args.schema, PRECISION, false, RetryPolicy::default())?;

    println!("rows/s, median of {} runs, one transaction per batch", args.reps);
    println!(
        "{:>7} | {:>13} | {:>12} | {:>12} | {:>11} | {:>11} | {:>9} | {:>9} | {:>9}",
        "rows", "raw COPY enc", "raw COPY pre", "raw COPY key", "sink insert", "sink update", "ins/pre", "upd/pre", "ins/key"
    );
    let mut next_key = 0u64;
    let mut offset = 0i64;
    for &rows in &args.sizes {
        let raw_client = median(args.reps, || raw_copy_client_encoder(&mut client, &schema, rows))?;
        let raw_pre = median(args.reps, || raw_copy_pre_encoded(&mut client, &schema, "raw_copy", rows))?;
        let raw_keyed = median(args.reps, || raw_copy_pre_encoded(&mut client, &schema, "raw_keyed", rows))?;
        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        for _ in 0..args.reps {
            let keys: Vec<u64> = (next_key..next_key + rows as u64).collect();
            next_key += rows as u64;
            let insert = Changes { track_neighbors: keys.iter().map(|&k| (k, list(5_000), 1)).collect(), ..Changes::default() };
            offset += 1;
            inserts.push(timed(|| sink.commit(TOPIC, &insert, &BTreeMap::from([(0, offset)])))?);
            // Every list changes its scores: old row retracted, new one added.
            let update = Changes {
                track_neighbors: keys.iter().flat_map(|&k| [(k, list(5_000), -1), (k, list(7_000), 1)]).collect(),
                ..Changes::default()
            };
            offset += 1;
            updates.push(timed(|| sink.commit(TOPIC, &update, &BTreeMap::from([(0, offset)])))?);
        }
        let (insert, update) = (mid(inserts), mid(updates));
        let rate = |d: Duration| rows as f64 / d.as_secs_f64();
        println!(
            "{:>7} | {:>13.0} | {:>12.0} | {:>12.0} | {:>11.0} | {:>11.0} | {:>8.0}% | {:>8.0}% | {:>8.0}%",
            rows,
            rate(raw_client),
            rate(raw_pre),
            rate(raw_keyed),
            rate(insert),
            rate(update),
            100.0 * rate(insert) / rate(raw_pre),
            100.0 * rate(update) / rate(raw_pre),
            100.0 * rate(insert) / rate(raw_keyed),
        );
    }
    let empty = median(args.reps.max(20), || {
        offset += 1;
        timed(|| sink.commit(TOPIC, &Changes::default(), &BTreeMap::from([(0, offset)])))
    })?;
    println!("commit without row changes (offsets only): {:.2} ms", empty.as_secs_f64() * 1e3);
    let (p50, p99) = small_mixed_commits(&mut sink, &mut offset, 300)?;
    println!(
        "small mixed commit (3 tables x 100 rows: 40 inserts, 40 updates, 20 deletes each): \
         p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}

/// A list row of [`encore_benches::LIST_MEMBERS`] members, scores from `units` down.
fn list(units: i64) -> Vec<(u64, i64)> {
    (0..encore_benches::LIST_MEMBERS as i64).map(|m| (m as u64 + 1, units - m)).collect()
}

/// Latency of commits shaped like a live epoch: a few hundred row changes spread over
/// `track_neighbors`, `user_recommendations` and `track_stats`.
fn small_mixed_commits(sink: &mut PgSink, offset: &mut i64, commits: usize) -> Result<(Duration, Duration)> {
    // Live rows per table, as (key, value); keys far above the throughput runs' keys.
    let mut neighbors: Vec<(u64, i64)> = Vec::new();
    let mut recommendations: Vec<(u64, i64)> = Vec::new();
    let mut stats: Vec<(u64, TrackStats)> = Vec::new();
    let mut next = 1u64 << 40;
    let mut times = Vec::with_capacity(commits);
    for round in 0..commits as i64 {
        let mut changes = Changes::default();
        for _ in 0..40 {
            next += 1;
            neighbors.push((next, round + 100));
            recommendations.push((next, round + 100));
            stats.push((next, TrackStats { plays: 1, listeners: 1, likes: 0 }));
            changes.track_neighbors.push((next, list(round + 100), 1));
            changes.user_recommendations.push((next, list(round + 100), 1));
            changes.track_stats.push((next, TrackStats { plays: 1, listeners: 1, likes: 0 }, 1));
        }
        // Update the 40 oldest rows, delete the 20 after them (when there are enough).
        for i in 0..60.min(neighbors.len().saturating_sub(40)) {
            let (key, old) = neighbors[i];
            changes.track_neighbors.push((key, list(old), -1));
            let (rkey, rold) = recommendations[i];
            changes.user_recommendations.push((rkey, list(rold), -1));
            let (skey, sold) = stats[i];
            changes.track_stats.push((skey, sold, -1));
            if i < 40 {
                let new = TrackStats { plays: sold.plays + 1, ..sold };
                neighbors[i].1 = old + 1;
                recommendations[i].1 = rold + 1;
                stats[i].1 = new;
                changes.track_neighbors.push((key, list(old + 1), 1));
                changes.user_recommendations.push((rkey, list(rold + 1), 1));
                changes.track_stats.push((skey, new, 1));
            }
        }
        let deleted = 20.min(neighbors.len().saturating_sub(80));
        neighbors.drain(40..40 + deleted);
        recommendations.drain(40..40 + deleted);
        stats.drain(40..40 + deleted);
        // Rotate so that the next round updates other rows.
        neighbors.rotate_left(40);
        recommendations.rotate_left(40);
        stats.rotate_left(40);
        *offset += 1;
        times.push(timed(|| sink.commit(TOPIC, &changes, &BTreeMap::from([(0, *offset)])))?);
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// Raw COPY, one `BinaryCopyInWriter::write` per row.
fn raw_copy_client_encoder(client: &mut Client, schema: &str, rows: usize) -> Result<Duration> {
    client.batch_execute(&format!("TRUNCATE {schema}.raw_copy"))?;
    let start = Instant::now();
    let mut tx = client.transaction()?;
    let writer = tx.copy_in(&format!("COPY {schema}.raw_copy FROM STDIN (FORMAT binary)"))?;
    let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT8, Type::INT8_ARRAY, Type::FLOAT8_ARRAY]);
    let members: Vec<i64> = (1..=encore_benches::LIST_MEMBERS as i64).collect();
    let scores = vec![0.5f64; encore_benches::LIST_MEMBERS];
    for i in 0..rows as i64 {
        writer.write(&[&i, &members, &scores])?;
    }
    writer.finish()?;
    tx.commit()?;
    Ok(start.elapsed())
}

/// Raw COPY of bytes encoded before the clock starts, into `table` (emptied first).
fn raw_copy_pre_encoded(client: &mut Client, schema: &str, table: &str, rows: usize) -> Result<Duration> {
    client.batch_execute(&format!("TRUNCATE {schema}.{table}"))?;
    let data = encore_benches::list_rows_binary_copy(rows);
    let start = Instant::now();
    let mut tx = client.transaction()?;
    let mut writer = tx.copy_in(&format!("COPY {schema}.{table} FROM STDIN (FORMAT binary)"))?;
    writer.write_all(&data)?;
    writer.finish()?;
    tx.commit()?;
    Ok(start.elapsed())
}

fn timed<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<Duration>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn median(reps: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(f()?);
    }
    Ok(mid(times))
}

fn mid(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}
