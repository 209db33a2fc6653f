//! `encore-flow --metrics-addr [HOST:]PORT`: a Prometheus endpoint, one per process.
//!
//! # Design
//!
//! ```text
//!  workers (consume loop) ── at every epoch close ──► Metrics (Arc, atomics only)
//!  worker 0's sink ───────── after every commit ────►   counters, gauges, histograms
//!  watermark poller thread ─ every 5 s ─────────────►        │
//!                                                             ▼  rendered only on scrape
//!  "metrics" thread: std TcpListener ◄── GET /metrics ── Prometheus (text format 0.0.4)
//! ```
//!
//! * **Cheap on the hot path.** Updates are relaxed atomic stores and adds, and they happen
//!   once per epoch (a worker publishes the difference since its last report) or once per
//!   commit, never per message. A partition's gauges are an [`Arc`] the worker that reads
//!   the partition keeps, so publishing takes no lock. Text is built only when scraped.
//! * **Consistent enough.** The atomics are independent: a scrape may see a commit's rows
//!   before its offsets. A histogram's `_count` is the sum of its buckets as read by that
//!   scrape, so `_count` always equals the `+Inf` bucket.
//! * **One process, one endpoint.** Every sample carries `process="P"` (`-p`). Counters
//!   about consumption count this process's workers only; the sink's metrics (commits,
//!   rows written, committed offsets, latencies) exist only on process 0, which commits.
//! * **Plain HTTP/1.1 on one thread.** [`serve`] binds before the job starts (so a taken
//!   port is a one-line error at start) and answers one request per connection
//!   (`Connection: close`), one connection at a time, each given at most 5 s to send its
//!   request: scrapes are rare and small, and no HTTP library is needed.
//! * **Loopback unless a host is named.** The endpoint has no authentication, so a bare port
//!   binds 127.0.0.1 ([`listen_address`]); exposing it (`0.0.0.0:PORT`, an interface's
//!   address) is the operator's explicit choice.
//!
//! The metrics and their meaning are listed in docs/operating.md ("Metrics").

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{Display, Write as _};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sink::postgres::CommitStats;

/// Upper bounds (seconds) of the latency histograms: 1 ms (a small commit on a local
/// Postgres) to 60 s (a catch-up epoch of millions of rows); `+Inf` above.
pub const LATENCY_BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How many epoch-close times are kept for the epoch latency: epochs without changes are
/// never committed, so their entries are dropped once this many newer ones exist.
const EPOCH_CLOSES_KEPT: usize = 64;

/// The tables whose rows the sink writes (label `table`); dead letters last.
const TABLES: [&str; 5] = ["track_neighbors", "user_recommendations", "track_stats", "co_listens", "dead_letters"];

/// The `op` label of [`TABLES`] row counters.
const OPS: [&str; 3] = ["insert", "update", "delete"];

/// Why [`serve`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address does not resolve, or the port cannot be bound.
    #[error("cannot serve metrics on {addr}")]
    Bind {
        /// The address as given.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
}

/// Consumption gauges of one partition, updated by the worker that reads it (next offset)
/// and by the watermark poller (high watermark).
#[derive(Debug)]
pub struct PartitionGauges {
    next_offset: AtomicI64,
    /// `-1` until known.
    high_watermark: AtomicI64,
}

impl PartitionGauges {
    /// The next offset this process will consume.
    pub fn set_next_offset(&self, offset: i64) {
        self.next_offset.store(offset, Relaxed);
    }

    /// The partition's high watermark as the broker last reported it.
    pub fn set_high_watermark(&self, offset: i64) {
        self.high_watermark.store(offset, Relaxed);
    }
}

/// A histogram of durations with [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// Consumption counters of one process, added to by every worker at each epoch close.
#[derive(Debug, Default)]
struct Consumption {
    events: AtomicU64,
    replayed: AtomicU64,
    restored: AtomicU64,
    listens: AtomicU64,
    invalid: AtomicU64,
}

/// What one worker has consumed so far (its own running totals); see [`WorkerReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Messages consumed live (valid or not).
    pub events: u64,
    /// Messages replayed to rebuild state.
    pub replayed: u64,
    /// Rows of durable state loaded to rebuild state.
    pub restored: u64,
    /// Listens among the live messages.
    pub listens: u64,
    /// Invalid messages among the live messages.
    pub invalid: u64,
}

/// The sink's metrics (process 0).
#[derive(Debug, Default)]
struct Sink {
    commits: AtomicU64,
    commit_seconds: Histogram,
    epoch_seconds: Histogram,
    /// `[table][op]`, tables and ops as in [`TABLES`] and [`OPS`].
    rows: [[AtomicU64; OPS.len()]; TABLES.len()],
    /// `-1` until the first commit.
    last_epoch: AtomicI64,
    /// Unix time of the last commit in milliseconds; 0 until the first.
    last_commit_ms: AtomicU64,
    /// Committed next offset per partition (every partition of the topic).
    committed: Mutex<BTreeMap<i32, i64>>,
    /// When worker 0 closed each live epoch not yet committed.
    closed: Mutex<VecDeque<(u64, Instant)>>,
}

/// How long this process took to rebuild its state at start (see [`Metrics::replaying`]).
#[derive(Debug, Default)]
struct Rebuild {
    /// When the first worker started rebuilding.
    started: Option<Instant>,
    /// From then to the end of the last worker's rebuild so far.
    seconds: f64,
}

/// The registry one process shares between its workers, its sink, the watermark poller and
/// the HTTP thread.
#[derive(Debug)]
pub struct Metrics {
    process: u64,
    writer: bool,
    /// Unix time the registry was created, at the process's start.
    started_ms: u64,
    consumption: Consumption,
    replaying: AtomicI64,
    rebuild: Mutex<Rebuild>,
    watermark_errors: AtomicU64,
    partitions: RwLock<BTreeMap<i32, Arc<PartitionGauges>>>,
    sink: Sink,
}

impl Metrics {
    /// A registry for process `process`; `writer` when this process commits (process 0).
    pub fn new(process: u64, writer: bool) -> Metrics {
        let sink = Sink { last_epoch: AtomicI64::new(-1), ..Sink::default() };
        Metrics {
            process,
            writer,
            started_ms: u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX),
            consumption: Consumption::default(),
            replaying: AtomicI64::new(0),
            rebuild: Mutex::new(Rebuild::default()),
            watermark_errors: AtomicU64::new(0),
            partitions: RwLock::new(BTreeMap::new()),
            sink,
        }
    }

    /// The gauges of `partition`, created on first use. Workers call this once per
    /// partition at start and keep the handle.
    pub fn partition(&self, partition: i32) -> Arc<PartitionGauges> {
        if let Some(gauges) = self.partitions.read().ok().and_then(|map| map.get(&partition).cloned()) {
            return gauges;
        }
        let fresh = || Arc::new(PartitionGauges { next_offset: AtomicI64::new(0), high_watermark: AtomicI64::new(-1) });
        match self.partitions.write() {
            Ok(mut map) => Arc::clone(map.entry(partition).or_insert_with(fresh)),
            // A poisoned lock: a thread panicked and the process is ending; keep going unseen.
            Err(_) => fresh(),
        }
    }

    /// The partitions this process's workers read.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.read().map(|map| map.keys().copied().collect()).unwrap_or_default()
    }

    /// A failed periodic watermark request.
    pub fn watermark_error(&self) {
        self.watermark_errors.fetch_add(1, Relaxed);
    }

    /// A worker starts (`true`) or ends (`false`) rebuilding the state (loading or replaying).
    /// The rebuild time is from the first worker's start to the last one's end.
    pub fn replaying(&self, replaying: bool) {
        self.replaying_at(replaying, Instant::now());
    }

    fn replaying_at(&self, replaying: bool, now: Instant) {
        self.replaying.fetch_add(if replaying { 1 } else { -1 }, Relaxed);
        if let Ok(mut rebuild) = self.rebuild.lock() {
            match rebuild.started {
                None if replaying => rebuild.started = Some(now),
                Some(started) if !replaying => rebuild.seconds = rebuild.seconds.max(now.duration_since(started).as_secs_f64()),
                _ => {}
            }
        }
    }

    /// Worker 0 closed live epoch `epoch` (counted from 0 in this run): the start of its
    /// epoch latency.
    pub fn epoch_closed(&self, epoch: u64) {
        if let Ok(mut closed) = self.sink.closed.lock() {
            closed.push_back((epoch, Instant::now()));
            while closed.len() > EPOCH_CLOSES_KEPT {
                closed.pop_front();
            }
        }
    }

    /// The committed offsets read at start (process 0).
    pub fn set_committed(&self, offsets: &BTreeMap<i32, i64>) {
        if let Ok(mut committed) = self.sink.committed.lock() {
            committed.extend(offsets);
        }
    }

    /// One committed transaction: live epochs `epochs` (counted from 0 in this run, as in
    /// [`Metrics::epoch_closed`]; several when epochs queued up during the previous commit),
    /// which took `duration`, wrote `stats` and stored `offsets`.
    pub fn record_commit(&self, epochs: RangeInclusive<u64>, duration: Duration, stats: &CommitStats, offsets: &BTreeMap<i32, i64>) {
        let epoch = *epochs.end();
        let sink = &self.sink;
        sink.commits.fetch_add(1, Relaxed);
        sink.commit_seconds.observe(duration);
        for rows in &stats.tables {
            if let Some(counters) = TABLES.iter().position(|t| *t == rows.table).map(|i| &sink.rows[i]) {
                for (counter, count) in counters.iter().zip([rows.inserted, rows.updated, rows.deleted]) {
                    counter.fetch_add(count, Relaxed);
                }
            }
        }
        sink.rows[TABLES.len() - 1][0].fetch_add(stats.dead_letters, Relaxed);
        if let Ok(mut closed) = sink.closed.lock() {
            // Closed epochs before these had nothing to commit; those in the range are durable now.
            while let Some(&(e, at)) = closed.front().filter(|&&(e, _)| e <= epoch) {
                closed.pop_front();
                if epochs.contains(&e) {
                    sink.epoch_seconds.observe(at.elapsed());
                }
            }
        }
        self.set_committed(offsets);
        sink.last_epoch.store(i64::try_from(epoch).unwrap_or(i64::MAX), Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        sink.last_commit_ms.store(u64::try_from(now.as_millis()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = Exposition { text: String::with_capacity(4096), process: self.process.to_string() };
        self.render_consumption(&mut out);
        self.render_refresh_and_rebuild(&mut out);
        self.render_partitions(&mut out);
        if self.writer {
            self.render_sink(&mut out);
        }
        out.text
    }

    /// What this process's workers consumed.
    fn render_consumption(&self, out: &mut Exposition) {
        let c = &self.consumption;
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        out.single(
            "encore_events_consumed_total",
            "counter",
            "Messages consumed live (after the replay) by this process's workers, valid or not; \
             events/s is rate() of it.",
            load(&c.events),
        );
        out.single(
            "encore_events_replayed_total",
            "counter",
            "Messages replayed at start to rebuild the state (their results are already in Postgres).",
            load(&c.replayed),
        );
        out.single(
            "encore_state_rows_loaded_total",
            "counter",
            "Rows loaded from Postgres at start to rebuild the state: encore_last_listen, track_stats and the stored user_recommendations.",
            load(&c.restored),
        );
        out.single(
            "encore_listens_total",
            "counter",
            "Listens (likes, and plays of at least 30 s or of unknown length) among the messages consumed live.",
            load(&c.listens),
        );
        out.single(
            "encore_invalid_messages_total",
            "counter",
            "Invalid messages among those consumed live; each becomes a dead letter.",
            load(&c.invalid),
        );
        out.single(
            "encore_watermark_fetch_errors_total",
            "counter",
            "Periodic high-watermark requests that failed (lag then shows the last known watermark).",
            load(&self.watermark_errors),
        );
    }

    /// Recommendations refreshed and stale, the state's rebuild, the process's start.
    fn render_refresh_and_rebuild(&self, out: &mut Exposition) {
        // Recommendations refreshed on activity (SPEC §2 step 6), from the engine's own
        // counters of this process's workers.
        let work = crate::engine::work::Work::total();
        let name = "encore_users_refreshed_total";
        out.family(name, "counter", "Users whose recommendations were recomputed: reason=active (they listened in the epoch) or background (stale users, least recently refreshed first, up to --refresh-idle per worker and epoch).");
        out.sample(name, &[("reason", "active")], work.refreshed_active);
        out.sample(name, &[("reason", "background")], work.refreshed_background);
        let staleness = crate::engine::work::Staleness::now();
        out.single(
            "encore_stale_users",
            "gauge",
            "Users of this process whose stored recommendations are stale: a neighbour list of a track in their history changed since their last refresh.",
            staleness.stale_users,
        );
        out.single(
            "encore_stale_refresh_age_seconds",
            "gauge",
            "Seconds since the least recently refreshed stale user of this process was last refreshed; 0 when no user is stale.",
            format!("{:.3}", staleness.oldest_age_seconds()),
        );
        out.single(
            "encore_replaying_workers",
            "gauge",
            "Workers of this process still rebuilding the state: loading it from Postgres, or replaying the topic up to the committed offsets.",
            self.replaying.load(Relaxed).max(0),
        );
        out.single(
            "encore_state_load_seconds",
            "gauge",
            "Seconds this process took to rebuild the state at start (loading it from Postgres, or replaying the topic), \
             from the first worker starting to the last one done; 0 while none is done or when there was nothing to rebuild.",
            self.rebuild.lock().map(|rebuild| rebuild.seconds).unwrap_or_default(),
        );
        out.single(
            "encore_process_start_time_seconds",
            "gauge",
            "Unix time this process started; a restart changes it (changes() in PromQL).",
            format_args!("{}.{:03}", self.started_ms / 1000, self.started_ms % 1000),
        );
    }

    /// Next offset, high watermark and lag of each partition this process reads.
    fn render_partitions(&self, out: &mut Exposition) {
        let readings: Vec<(String, i64, Option<i64>)> = self
            .partitions
            .read()
            .map(|map| {
                map.iter()
                    .map(|(p, gauges)| {
                        let high = gauges.high_watermark.load(Relaxed);
                        (p.to_string(), gauges.next_offset.load(Relaxed), (high >= 0).then_some(high))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let name = "encore_partition_next_offset";
        out.family(name, "gauge", "Next offset to consume, per partition this process reads.");
        for (p, next, _) in &readings {
            out.sample(name, &[("partition", p)], next);
        }
        let name = "encore_partition_high_watermark";
        out.family(name, "gauge", "High watermark last fetched from the broker (every 5 s), per partition this process reads.");
        for (p, _, high) in &readings {
            if let Some(high) = high {
                out.sample(name, &[("partition", p)], high);
            }
        }
        let name = "encore_partition_lag";
        out.family(name, "gauge", "max(0, high watermark - next offset): messages not yet consumed, per partition this process reads.");
        for (p, next, high) in &readings {
            if let Some(high) = high {
                out.sample(name, &[("partition", p)], (high - next).max(0));
            }
        }
    }

    fn render_sink(&self, out: &mut Exposition) {
        let sink = &self.sink;
        out.single(
            "encore_commits_total",
            "counter",
            "Postgres transactions committed (one per live epoch with changes or progress).",
            sink.commits.load(Relaxed),
        );
        out.histogram(
            "encore_commit_duration_seconds",
            "Duration of one commit: the Postgres transaction, with reconnects and retries.",
            &sink.commit_seconds,
        );
        out.histogram(
            "encore_epoch_latency_seconds",
            "From worker 0 closing a live epoch to its commit: computing the epoch's changes, waiting for the committer, the commit.",
            &sink.epoch_seconds,
        );
        let name = "encore_rows_written_total";
        out.family(name, "counter", "Rows written to Postgres per table and op (insert, update, delete; net per key and commit).");
        for (table, counters) in TABLES.iter().zip(&sink.rows) {
            for (op, counter) in OPS.iter().zip(counters) {
                // Dead letters are only ever inserted.
                if *table != "dead_letters" || *op == "insert" {
                    out.sample(name, &[("table", table), ("op", op)], counter.load(Relaxed));
                }
            }
        }
        let name = "encore_partition_committed_offset";
        out.family(name, "gauge", "Next offset committed in Postgres (encore_progress), per partition of the topic.");
        let committed = sink.committed.lock().map(|c| c.clone()).unwrap_or_default();
        for (p, offset) in committed {
            out.sample(name, &[("partition", &p.to_string())], offset);
        }
        out.single(
            "encore_last_committed_epoch",
            "gauge",
            "Live epoch of the last commit, counted from 0 at this process's start (-1 before the first).",
            sink.last_epoch.load(Relaxed),
        );
        let millis = sink.last_commit_ms.load(Relaxed);
        out.single(
            "encore_last_commit_timestamp_seconds",
            "gauge",
            "Unix time of the last commit (0 before the first).",
            format_args!("{}.{:03}", millis / 1000, millis % 1000),
        );
    }
}

/// One worker's handle: publishes its running totals as differences, so that several
/// workers add into the same process counters.
#[derive(Debug)]
pub struct WorkerReport {
    metrics: Arc<Metrics>,
    published: Consumed,
}

impl WorkerReport {
    /// A report into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> WorkerReport {
        WorkerReport { metrics, published: Consumed::default() }
    }

    /// The registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Adds what the worker consumed since its last report.
    pub fn publish(&mut self, now: Consumed) {
        let c = &self.metrics.consumption;
        let last = self.published;
        c.events.fetch_add(now.events.saturating_sub(last.events), Relaxed);
        c.replayed.fetch_add(now.replayed.saturating_sub(last.replayed), Relaxed);
        c.restored.fetch_add(now.restored.saturating_sub(last.restored), Relaxed);
        c.listens.fetch_add(now.listens.saturating_sub(last.listens), Relaxed);
        c.invalid.fetch_add(now.invalid.saturating_sub(last.invalid), Relaxed);
        self.published = now;
    }
}

/// Text exposition under construction; every sample gets `process="P"` first.
struct Exposition {
    text: String,
    process: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A family with one sample and no labels but `process`.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.text, "{name}{{process=\"{}\"", escape(&self.process));
        for (key, label) in labels {
            let _ = write!(self.text, ",{key}=\"{}\"", escape(label));
        }
        let _ = writeln!(self.text, "}} {value}");
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, count) in histogram.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = LATENCY_BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), f64::to_string);
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        let sum = histogram.sum_nanos.load(Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative);
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The address `--metrics-addr` means: a bare `PORT` or `:PORT` is `127.0.0.1:PORT`, so the
/// endpoint is reachable from this machine only unless the operator names a host (e.g.
/// `0.0.0.0:9464` for every interface); `HOST:PORT` (`[V6]:PORT`) is taken as given.
pub fn listen_address(addr: &str) -> String {
    let port = addr.strip_prefix(':').unwrap_or(addr);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{port}")
    } else {
        addr.to_owned()
    }
}

/// Binds `addr` (`[HOST:]PORT`, see [`listen_address`]; port 0 picks a free one) and answers
/// `GET /metrics` with `metrics.render()` on a thread of its own, for the life of the
/// process. Returns the bound address.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> Result<SocketAddr, MetricsError> {
    let addr = listen_address(addr);
    let bind_error = |source| MetricsError::Bind { addr: addr.clone(), source };
    let listener = TcpListener::bind(&addr).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    std::thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            // A failed connection (reset, timeout) concerns only that scrape: skip it.
            for stream in listener.incoming().flatten() {
                if let Err(error) = answer(stream, &metrics) {
                    tracing::debug!(%error, "metrics request failed");
                }
            }
        })
        .map_err(bind_error)?;
    Ok(bound)
}

/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8192;

/// Longest a connection may take to send its request (and to take the response): the
/// server answers one connection at a time, so a stuck client must not hold it for long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one request head and writes one response.
fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECTION_TIMEOUT))?;
    let started = Instant::now();
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST && started.elapsed() < CONNECTION_TIMEOUT {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let response = respond(&head, metrics);
    stream.write_all(&response)?;
    stream.flush()
}

/// The response to a request head: the metrics for `GET`/`HEAD /metrics`, else an error.
fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "metrics are at /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET /metrics\n".to_owned()),
    };
    let mut response =
        format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::postgres::TableRows;

    fn sample<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find_map(|line| line.strip_prefix(prefix).and_then(|rest| rest.strip_prefix(' ')))
    }

    #[test]
    fn a_commit_of_merged_epochs_observes_each_of_their_latencies() {
        let metrics = Metrics::new(0, true);
        for epoch in 3..=6 {
            metrics.epoch_closed(epoch);
        }
        let stats = CommitStats { attempts: 1, ..CommitStats::default() };
        // Epoch 3 had nothing to commit; 4 to 5 commit together, 6 is still open.
        metrics.record_commit(4..=5, Duration::from_millis(5), &stats, &BTreeMap::new());
        let text = metrics.render();
        assert_eq!(sample(&text, r#"encore_epoch_latency_seconds_count{process="0"}"#), Some("2"), "{text}");
        assert_eq!(sample(&text, r#"encore_commits_total{process="0"}"#), Some("1"));
        assert_eq!(sample(&text, r#"encore_last_committed_epoch{process="0"}"#), Some("5"));
        metrics.record_commit(6..=6, Duration::from_millis(5), &stats, &BTreeMap::new());
        let text = metrics.render();
        assert_eq!(sample(&text, r#"encore_epoch_latency_seconds_count{process="0"}"#), Some("3"));
    }

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let metrics = Arc::new(Metrics::new(1, true));
        let mut worker_a = WorkerReport::new(Arc::clone(&metrics));
        let mut worker_b = WorkerReport::new(Arc::clone(&metrics));
        worker_a.publish(Consumed { events: 5, replayed: 2, restored: 0, listens: 3, invalid: 1 });
        worker_a.publish(Consumed { events: 7, replayed: 2, restored: 0, listens: 4, invalid: 1 });
        worker_b.publish(Consumed { events: 10, replayed: 0, restored: 0, listens: 9, invalid: 0 });
        let p0 = metrics.partition(0);
        p0.set_next_offset(40);
        p0.set_high_watermark(50);
        metrics.partition(3).set_next_offset(12); // watermark unknown: no lag sample
        let p5 = metrics.partition(5);
        p5.set_next_offset(9);
        p5.set_high_watermark(8); // Tansu's short watermark: lag clamps at 0
        metrics.set_committed(&BTreeMap::from([(0, 30), (1, 31)]));

        metrics.epoch_closed(6);
        metrics.epoch_closed(7);
        let mut stats = CommitStats { dead_letters: 2, attempts: 1, ..CommitStats::default() };
        stats.tables[1] = TableRows { table: "track_stats", inserted: 4, updated: 1, deleted: 0 };
        metrics.record_commit(7..=7, Duration::from_millis(3), &stats, &BTreeMap::from([(0, 40)]));
        metrics.record_commit(8..=8, Duration::from_millis(700), &stats, &BTreeMap::new());

        let text = metrics.render();
        let get = |prefix: &str| sample(&text, prefix).unwrap_or_else(|| panic!("{prefix} in\n{text}"));
        assert_eq!(get(r#"encore_events_consumed_total{process="1"}"#), "17");
        assert_eq!(get(r#"encore_events_replayed_total{process="1"}"#), "2");
        assert_eq!(get(r#"encore_listens_total{process="1"}"#), "13");
        assert_eq!(get(r#"encore_invalid_messages_total{process="1"}"#), "1");
        assert_eq!(get(r#"encore_partition_lag{process="1",partition="0"}"#), "10");
        assert_eq!(get(r#"encore_partition_lag{process="1",partition="5"}"#), "0");
        assert_eq!(get(r#"encore_partition_next_offset{process="1",partition="3"}"#), "12");
        assert!(!text.contains(r#"partition_lag{process="1",partition="3"}"#), "{text}");
        assert_eq!(get(r#"encore_partition_committed_offset{process="1",partition="0"}"#), "40");
        assert_eq!(get(r#"encore_partition_committed_offset{process="1",partition="1"}"#), "31");
        assert_eq!(get(r#"encore_rows_written_total{process="1",table="track_stats",op="insert"}"#), "8");
        assert_eq!(get(r#"encore_rows_written_total{process="1",table="track_stats",op="update"}"#), "2");
        assert_eq!(get(r#"encore_rows_written_total{process="1",table="dead_letters",op="insert"}"#), "4");
        assert!(!text.contains(r#"table="dead_letters",op="delete""#));
        assert_eq!(get(r#"encore_commits_total{process="1"}"#), "2");
        assert_eq!(get(r#"encore_last_committed_epoch{process="1"}"#), "8");
        // Commit durations 3 ms and 700 ms: cumulative buckets.
        let commit = |le: &str| get(&format!(r#"encore_commit_duration_seconds_bucket{{process="1",le="{le}"}}"#)).to_owned();
        assert_eq!(commit("0.0025"), "0");
        assert_eq!(commit("0.005"), "1");
        assert_eq!(commit("0.5"), "1");
        assert_eq!(commit("1"), "2");
        assert_eq!(commit("+Inf"), "2");
        assert_eq!(get(r#"encore_commit_duration_seconds_count{process="1"}"#), "2");
        assert_eq!(get(r#"encore_commit_duration_seconds_sum{process="1"}"#), "0.703");
        // Only epoch 7 had a recorded close; epoch 6 was never committed and is dropped.
        assert_eq!(get(r#"encore_epoch_latency_seconds_count{process="1"}"#), "1");

        // Every sample's family has HELP and TYPE before it.
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{line} has no TYPE before it");
            }
        }
    }

    #[test]
    fn the_state_load_time_spans_every_workers_rebuild_and_the_start_time_stays() {
        let metrics = Metrics::new(1, false);
        let text = metrics.render();
        assert_eq!(sample(&text, r#"encore_state_load_seconds{process="1"}"#), Some("0"), "{text}");
        let started: f64 = sample(&text, r#"encore_process_start_time_seconds{process="1"}"#).unwrap().parse().unwrap();
        assert!(started > 1.7e9, "{text}");
        // Two workers: the first starts at t0 and is done at t0 + 2 s, the second runs from
        // t0 + 1 s to t0 + 3.5 s; the process rebuilt from t0 to t0 + 3.5 s.
        let t0 = Instant::now();
        let at = |millis: u64| t0 + Duration::from_millis(millis);
        metrics.replaying_at(true, at(0));
        metrics.replaying_at(true, at(1000));
        metrics.replaying_at(false, at(2000));
        let text = metrics.render();
        assert_eq!(sample(&text, r#"encore_state_load_seconds{process="1"}"#), Some("2"), "{text}");
        assert_eq!(sample(&text, r#"encore_replaying_workers{process="1"}"#), Some("1"));
        metrics.replaying_at(false, at(3500));
        let text = metrics.render();
        assert_eq!(sample(&text, r#"encore_state_load_seconds{process="1"}"#), Some("3.5"), "{text}");
        assert_eq!(sample(&text, r#"encore_replaying_workers{process="1"}"#), Some("0"));
        let again: f64 = sample(&text, r#"encore_process_start_time_seconds{process="1"}"#).unwrap().parse().unwrap();
        assert_eq!(again, started, "the start time is the registry's, not the scrape's");
    }

    #[test]
    fn other_processes_have_no_sink_metrics() {
        let text = Metrics::new(2, false).render();
        assert!(text.contains(r#"encore_events_consumed_total{process="2"} 0"#), "{text}");
        assert!(!text.contains("encore_commits_total"), "{text}");
        assert!(!text.contains("encore_commit_duration_seconds"), "{text}");
    }

    #[test]
    fn answers_get_metrics_and_refuses_the_rest() {
        let metrics = Metrics::new(0, true);
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &metrics)).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(body.contains("# TYPE encore_events_consumed_total counter"));
        let head_only = String::from_utf8(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &metrics)).unwrap();
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");
        let missing = String::from_utf8(respond(b"GET / HTTP/1.1\r\n\r\n", &metrics)).unwrap();
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = String::from_utf8(respond(b"POST /metrics HTTP/1.1\r\n\r\n", &metrics)).unwrap();
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(respond(b"", &metrics).starts_with(b"HTTP/1.1 405"));
    }

    #[test]
    fn bind_errors_name_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        // As the binary prints it (`{:#}`): the message, then the cause, once.
        let chain =
            |error: MetricsError| format!("{error}: {}", std::error::Error::source(&error).map(|s| s.to_string()).unwrap_or_default());
        let error = chain(serve(&addr, Arc::new(Metrics::new(0, true))).unwrap_err());
        assert!(error.starts_with(&format!("cannot serve metrics on {addr}: ")), "{error}");
        assert_eq!(error.matches("in use").count(), 1, "{error}");
        let error = chain(serve("no-port-here", Arc::new(Metrics::new(0, true))).unwrap_err());
        assert!(error.starts_with("cannot serve metrics on no-port-here: ") && !error.contains('\n'), "{error}");
    }

    #[test]
    fn a_bare_port_means_loopback_and_a_host_is_kept() {
        assert_eq!(listen_address("9464"), "127.0.0.1:9464");
        assert_eq!(listen_address(":9464"), "127.0.0.1:9464");
        assert_eq!(listen_address("0"), "127.0.0.1:0");
        for kept in ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464", "[::1]:9464", "flow-0:9464", "localhost:9464"] {
            assert_eq!(listen_address(kept), kept);
        }
        // Not a port: left for the bind to refuse, naming it as given.
        for odd in ["", ":", "9464x", "::1", "no-port-here"] {
            assert_eq!(listen_address(odd), odd);
        }
        let bound = serve(":0", Arc::new(Metrics::new(0, true))).unwrap();
        assert_eq!(bound.ip(), std::net::Ipv4Addr::LOCALHOST, "{bound}");
        // A taken bare port is reported at the address it means.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = serve(&port.to_string(), Arc::new(Metrics::new(0, true))).unwrap_err().to_string();
        assert_eq!(error, format!("cannot serve metrics on 127.0.0.1:{port}"));
    }
}
