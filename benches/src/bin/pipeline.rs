//! `pipeline`: encore end to end — Kafka in, the release `encore-flow`, Postgres out — against
//! the physical limits of the same machine, broker and database.
//!
//! ```text
//!  Tansu (memory) ◄── fill: --events generator events (seed --seed), 4 partitions
//!     │
//!     ├──► limit 1: BaseConsumer(s) from the beginning + encore_core::parse_event ─► events/s
//!     ├──► per --layouts P×W: encore-flow --until-caught-up, fresh schema ─► events/s, rows
//!     │        (P OS processes on 127.0.0.1 ports, W workers each; start → last exit);
//!     │        with --emit-events once more with the event log ─► ratio, log rows/s
//!     └──► latency: encore-flow live on the caught-up schema of --latency-layout; produce at
//!              half its catch-up rate for --latency-seconds; poll encore_progress ─► p50/p99
//!  PostgreSQL ◄── limit 2: raw binary COPY of sink-shaped rows ─► rows/s (and as events/s)
//!     ├──► with --emit-events: raw binary COPY of event-log rows into the log's own table ─► rows/s
//!     ├──► limit 3: raw UPDATE of existing keys (staging COPY + UPDATE … FROM) ─► rows/s,
//!     │        against which each latency run's row writes/s are set (sink load)
//!     └──► after the catch-ups and each latency run that committed everything (untimed):
//!              the schema against the sequential oracle over the topic's messages
//!              ─► exact, or rows missing/extra/different
//! ```
//!
//! Everything runs on one machine: the broker, the database, the producer and encore-flow
//! share its cores, as they do in the quick start. The catch-up runs start from an empty
//! schema, so every message is consumed live (nothing replayed) and every epoch is
//! committed; their epoch flags (`--catch-up-args`) are large because the engine's cost per
//! epoch grows with its state (README, Figures): the defaults let 1 M events catch up in a
//! few epochs. The latency runs use the live defaults (`--latency-args`, 250 ms epochs).
//!
//! ```text
//! cargo run --release -p encore-benches --bin pipeline -- --events 1000000
//! cargo run --release -p encore-benches --bin pipeline -- --brokers 127.0.0.1:9092 --topic empty_topic --postgres postgres://…
//! ```
//!
//! The benchmark builds the release `encore-flow` first (`cargo build --release -p
//! encore-dataflow`) unless `--flow-bin` names one. Logs of every encore-flow process are kept
//! in `--log-dir`. The binary prints figures and whether the issue's targets are met; it
//! fails (after printing everything) only when a run's tables differ from the oracle.

#[path = "pipeline/flow.rs"]
mod flow;
#[path = "pipeline/kafka.rs"]
mod kafka;
#[path = "pipeline/latency.rs"]
mod latency;
#[path = "pipeline/pg.rs"]
mod pg;
#[path = "pipeline/restart.rs"]
mod restart;
#[path = "pipeline/verify.rs"]
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use encore_benches::results::Recording;
use encore_benches::{table_header, table_row};
use encore_generator::catalog::{Catalog, CatalogSizes};
use encore_generator::stream::EventStream;

use flow::{FlowTarget, Layout};

/// Measures encore end to end (Kafka → encore-flow → Postgres): catch-up throughput per
/// layout, latency at half load, and the raw consume+parse, COPY and UPDATE limits of the machine.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Events pre-filled into the topic (the catch-up runs consume all of them).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Generator seed (catalog and stream; default sizes).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// An existing Kafka broker (the topic must exist and be empty); by default a fresh
    /// in-memory Tansu is started.
    #[arg(long)]
    brokers: Option<String>,
    /// librdkafka settings for --brokers from FILE (as encore-flow's --kafka-config: `key=value`
    /// lines, e.g. a managed service's client.properties), for every client of the benchmark and
    /// passed on to encore-flow.
    #[arg(long = "kafka-config", value_name = "FILE", requires = "brokers")]
    kafka_config: Option<PathBuf>,
    /// A librdkafka setting for --brokers, `key=value` (repeatable), applied after
    /// --kafka-config, for every client of the benchmark and passed on to encore-flow.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", requires = "brokers", value_parser = encore_kafkaconf::parse_option)]
    kafka_options: Vec<(String, String)>,
    /// The topic (created with --partitions on the fresh Tansu).
    #[arg(long, default_value = "pipeline_bench")]
    topic: String,
    /// Partitions of the topic created on the fresh Tansu.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// An existing PostgreSQL (schemas pipeline_* are dropped and recreated); by default a
    /// fresh testkit cluster is started (fsync off).
    #[arg(long)]
    postgres: Option<String>,
    /// Layouts of the catch-up runs, PROCESSESxWORKERS.
    #[arg(long, value_delimiter = ',', default_value = "1x1,1x2,2x1")]
    layouts: Vec<Layout>,
    /// encore-flow flags of the catch-up runs (whitespace-separated; `--until-caught-up` is added).
    /// Big epochs: a backfill's cost per event falls with its epoch size, and so does its peak
    /// memory (at 10 M events, 5 M-message epochs per worker took 4.1 GiB, 2 M-message ones 10.2).
    #[arg(long, default_value = "--epoch-ms 600000 --epoch-events 5000000", allow_hyphen_values = true)]
    catch_up_args: String,
    /// Thread counts of the raw consume (+ parse) baseline.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    consume_threads: Vec<usize>,
    /// Rows per raw COPY transaction.
    #[arg(long, default_value_t = 1_000_000)]
    copy_rows: usize,
    /// Repetitions of each raw COPY (median).
    #[arg(long, default_value_t = 3)]
    copy_reps: usize,
    /// Layout of the latency runs; must be one of --layouts (its caught-up schema is reused).
    #[arg(long, default_value = "1x2")]
    latency_layout: Layout,
    /// Rates of the latency runs, events/s; `half` = half the catch-up rate of --latency-layout.
    #[arg(long, value_delimiter = ',', default_value = "half")]
    latency_rates: Vec<String>,
    /// Seconds of producing per latency run.
    #[arg(long, default_value_t = 60.0)]
    latency_seconds: f64,
    /// Seconds at the start of a latency run left out of the percentiles.
    #[arg(long, default_value_t = 5.0)]
    latency_warmup: f64,
    /// Seconds after the last send for the job to commit everything.
    #[arg(long, default_value_t = 60.0)]
    latency_drain: f64,
    /// encore-flow flags of the latency runs (`--epoch-events` also sizes the replay epochs).
    #[arg(long, default_value = "--epoch-ms 250 --epoch-events 2000000", allow_hyphen_values = true)]
    latency_args: String,
    /// Interval of the encore_progress polls, ms.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Skip the latency runs.
    #[arg(long)]
    no_latency: bool,
    /// Restart measurements on the caught-up schema of --latency-layout, before the latency
    /// runs: `load` (the durable state from Postgres, the default way), `replay` (the topic
    /// from its beginning, `--replay-topic`); empty for none. Each sends one marker message
    /// and measures the seconds to its commit and the peak RSS until then.
    #[arg(long, value_delimiter = ',', default_value = "load,replay")]
    restarts: Vec<String>,
    /// Run each catch-up twice, without and with `--emit-events` (schema pipeline_PxW_events),
    /// and measure the raw binary COPY of event-log rows (--copy-rows of them) into the log's
    /// own table: the catch-up rate with the log against without it (issue 24: ≥ 80 %), and the
    /// log's rows/s against that COPY limit.
    #[arg(long)]
    emit_events: bool,
    /// With --emit-events: runs per layout and variant, alternating without and with the
    /// log; the comparison takes each variant's fastest (other engineers' jobs on the same
    /// cores only ever slow a run down).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    emit_events_reps: u64,
    /// Skip checking the tables of each catch-up, and of each latency run that committed
    /// everything, against the sequential oracle over the same messages (untimed; at 10 M
    /// events ~1.5 minutes and ~4 GiB).
    #[arg(long)]
    no_verify: bool,
    /// Skip the raw consume and COPY limits (the fractions are then not printed).
    #[arg(long)]
    no_limits: bool,
    /// Most seconds any one encore-flow run may take.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Most seconds a live job may take to stop after SIGINT (an overloaded one finishes its
    /// epochs in flight first); then it is killed and the run goes on.
    #[arg(long, default_value_t = 180)]
    stop_timeout: u64,
    /// The encore-flow binary; by default the benchmark builds the release one.
    #[arg(long)]
    flow_bin: Option<PathBuf>,
    /// Directory for encore-flow logs and hostfiles.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Directory of the run's result file (JSON: commit, flags, machine, load average and every
    /// printed table's rows; see `report`); default target/bench-results.
    #[arg(long, value_name = "DIR")]
    results_dir: Option<PathBuf>,
}

/// One catch-up run's figures.
struct CatchUp {
    layout: Layout,
    /// Whether the run kept the event log (`--emit-events`).
    emit_events: bool,
    finished: flow::Finished,
    /// Per result table: (row changes, rows held at the end).
    rows: BTreeMap<String, (u64, u64)>,
}

impl CatchUp {
    fn events_per_second(&self, events: u64) -> f64 {
        events as f64 / self.finished.seconds.max(1e-9)
    }

    fn row_changes(&self) -> u64 {
        self.rows.values().map(|(changed, _)| changed).sum()
    }

    /// Its schema.
    fn schema(&self) -> String {
        schema_of(self.layout) + if self.emit_events { "_events" } else { "" }
    }

    /// The layout, marked when the run kept the event log.
    fn label(&self) -> String {
        format!("{}{}", self.layout, if self.emit_events { " + --emit-events" } else { "" })
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    let catch_up_args: Vec<String> = args.catch_up_args.split_whitespace().map(str::to_owned).collect();
    let latency_args: Vec<String> = args.latency_args.split_whitespace().map(str::to_owned).collect();
    let started = Instant::now();
    let recording = Recording::start("pipeline", args.results_dir.as_deref());
    let binary = flow::binary(args.flow_bin.as_deref())?;
    let servers = Servers::start(&args)?;
    let target = servers.flow_target(&args, binary);
    print_setup(&args, &servers, &target);

    let catalog = Catalog::generate(args.seed, CatalogSizes::default());
    let mut stream = EventStream::new(&catalog, 0.0);
    let mut ends = fill(&args, &servers.kafka, &mut stream)?;
    let limits = measure_limits(&args, &servers, &ends)?;
    let runs = catch_ups(&args, &target, &servers.url, &catch_up_args)?;
    print_catch_up(&runs, &args, &limits.parse_rates, limits.best_parse, limits.pg.copy_plain, &catch_up_args);
    let event_log_lines = if args.emit_events { print_event_log(&runs, &args, &servers.url, limits.event_log_copy)? } else { Vec::new() };
    // Before the latency runs, which add messages to the topic and to one schema.
    let verified = if args.no_verify { None } else { Some(verify_catch_ups(&runs, &args, &catalog, &servers.url, &catch_up_args)?) };

    let mut live = Live { args: &args, target: &target, servers: &servers, catalog: &catalog, latency_args: &latency_args, verified };
    live.restarts(&runs, &mut stream, &mut ends)?;
    let latencies = live.latencies(&runs, &catch_up_args, limits.pg.update, &mut stream, &mut ends)?;
    let verified = live.verified;

    print_summary(&args, &runs, &event_log_lines, &latencies, &limits, verified.as_deref());
    println!("done in {:.0} s; {}", started.elapsed().as_secs_f64(), load_average());
    recording.finish()?;
    match verified {
        Some(wrong) if !wrong.is_empty() => bail!("the tables of {} differ from the sequential oracle", wrong.join(", ")),
        _ => Ok(()),
    }
}

/// Refuses flags the runs cannot use.
fn check_args(args: &Args) -> Result<()> {
    if args.events == 0 || args.layouts.is_empty() || args.consume_threads.contains(&0) || args.poll_ms == 0 {
        bail!("--events, --layouts, --consume-threads and --poll-ms must be positive");
    }
    if !args.no_latency && !args.layouts.contains(&args.latency_layout) {
        bail!("--latency-layout {} must be one of --layouts", args.latency_layout);
    }
    Ok(())
}

/// The broker and the database: given, or fresh ones owned by this process (stopped when it
/// ends).
struct Servers {
    kafka: kafka::Kafka,
    url: String,
    _tansu: Option<encore_testkit::Tansu>,
    _postgres: Option<encore_testkit::Postgres>,
}

impl Servers {
    fn start(args: &Args) -> Result<Servers> {
        let (_tansu, kafka) = match &args.brokers {
            Some(brokers) => {
                let settings =
                    encore_kafkaconf::settings(brokers, args.kafka_config.as_deref(), &args.kafka_options).map_err(anyhow::Error::msg)?;
                let kafka = kafka::Kafka { brokers: brokers.clone(), settings };
                if !kafka::topic_is_empty(&kafka, &args.topic)? {
                    bail!("topic {} on {brokers} is not empty: the benchmark needs an empty topic", args.topic);
                }
                (None, kafka)
            }
            None => {
                let tansu = encore_testkit::Tansu::start().context("starting Tansu")?;
                tansu.create_topic(&args.topic, args.partitions).context("creating the topic")?;
                let kafka = kafka::Kafka { brokers: tansu.brokers(), settings: Vec::new() };
                (Some(tansu), kafka)
            }
        };
        let (_postgres, url) = match &args.postgres {
            Some(url) => (None, url.clone()),
            None => {
                let cluster = encore_testkit::Postgres::start().context("starting PostgreSQL")?;
                let url = cluster.url();
                (Some(cluster), url)
            }
        };
        Ok(Servers { kafka, url, _tansu, _postgres })
    }

    /// How every encore-flow run reaches them.
    fn flow_target(&self, args: &Args, binary: PathBuf) -> FlowTarget {
        let log_dir = args.log_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("encore-pipeline-{}", std::process::id())));
        // encore-flow reads the same file and options itself (a password stays in the file).
        let mut kafka_flags = Vec::new();
        if let Some(path) = &args.kafka_config {
            kafka_flags.extend(["--kafka-config".to_owned(), path.display().to_string()]);
        }
        for (key, value) in &args.kafka_options {
            kafka_flags.extend(["--kafka-option".to_owned(), format!("{key}={value}")]);
        }
        FlowTarget {
            binary,
            brokers: self.kafka.brokers.clone(),
            kafka_flags,
            topic: args.topic.clone(),
            postgres: self.url.clone(),
            log_dir,
        }
    }
}

/// The run's first lines: what runs against what.
fn print_setup(args: &Args, servers: &Servers, target: &FlowTarget) {
    let brokers = &servers.kafka.brokers;
    println!(
        "encore pipeline bench: {} events, seed {}, topic {} ({}), Postgres {}; {} CPUs; source {}; {}",
        args.events,
        args.seed,
        args.topic,
        if args.brokers.is_some() { brokers.clone() } else { format!("fresh in-memory Tansu {brokers}, {} partitions", args.partitions) },
        if args.postgres.is_some() { "given" } else { "fresh testkit cluster, fsync off" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        source_state(),
        load_average(),
    );
    println!("encore-flow: {} (logs in {})", target.binary.display(), target.log_dir.display());
}

/// Fills the topic with `--events` events of `stream`; returns each partition's end.
fn fill(args: &Args, kafka: &kafka::Kafka, stream: &mut EventStream) -> Result<BTreeMap<i32, i64>> {
    let mut producer = kafka::BenchProducer::connect(kafka, &args.topic, 20, false)?;
    eprintln!("filling {} events ... ({})", args.events, load_average());
    let fill_seconds = kafka::fill(&mut producer, stream, args.events)?;
    let ends = producer.ends();
    drop(producer);
    let filled: i64 = ends.values().sum();
    if filled != args.events as i64 {
        eprintln!("warning: the acknowledged offsets end at {filled} in all, not {}: the broker's offsets have gaps", args.events);
    }
    println!(
        "\nfilled {} events in {:.1} s ({:.0} events/s; partitions {:?})",
        args.events,
        fill_seconds,
        args.events as f64 / fill_seconds,
        ends.values().collect::<Vec<_>>()
    );
    Ok(ends)
}

/// The machine's limits, measured on the same broker and database.
struct Limits {
    /// Raw consume + parse, events/s, per thread count.
    parse_rates: BTreeMap<usize, f64>,
    /// The best of them.
    best_parse: f64,
    /// Raw COPY and UPDATE.
    pg: pg::Limits,
    /// Raw COPY of event-log rows (with --emit-events).
    event_log_copy: Option<f64>,
}

/// Limit 1, raw consume (+ parse); limit 2, raw binary COPY, and the raw UPDATE that live
/// commits mostly are: printed, and returned.
fn measure_limits(args: &Args, servers: &Servers, ends: &BTreeMap<i32, i64>) -> Result<Limits> {
    println!("\n## Physical limits (same broker, same database, same run)\n");
    table_header!("limits", "| path | threads | messages | valid | seconds | events/s | MB/s |");
    println!("|---|--:|--:|--:|--:|--:|--:|");
    let mut best_parse = 0.0f64;
    let mut parse_rates: BTreeMap<usize, f64> = BTreeMap::new();
    let consume_threads = if args.no_limits { &[][..] } else { &args.consume_threads[..] };
    for &threads in consume_threads {
        for parse in [false, true] {
            eprintln!("raw consume, {threads} thread(s), parse {parse} ... ({})", load_average());
            let consumed = kafka::consume(&servers.kafka, &args.topic, ends, threads, parse)?;
            let rate = consumed.messages as f64 / consumed.seconds.max(1e-9);
            if parse {
                best_parse = best_parse.max(rate);
                parse_rates.insert(threads, rate);
            }
            table_row!(
                "limits",
                "| Kafka consume{} | {threads} | {} | {} | {:.2} | {:.0} | {:.1} |",
                if parse { " + JSON parse" } else { " only" },
                consumed.messages,
                if parse { consumed.valid.to_string() } else { "-".to_owned() },
                consumed.seconds,
                rate,
                consumed.bytes as f64 / consumed.seconds.max(1e-9) / 1e6,
            );
        }
    }
    let url = &servers.url;
    let pg = if args.no_limits {
        pg::Limits::default()
    } else {
        eprintln!("raw COPY of {} rows x {}, raw UPDATE ... ({})", args.copy_rows, args.copy_reps, load_average());
        pg::raw_limits(url, "pipeline_raw_copy", args.copy_rows, args.copy_reps)?
    };
    let event_log_copy = if args.emit_events && !args.no_limits {
        eprintln!("raw event-log COPY of {} rows x {} ... ({})", args.copy_rows, args.copy_reps, load_average());
        Some(pg::raw_event_log_copy(url, "pipeline_raw_event_log", args.copy_rows, args.copy_reps)?)
    } else {
        None
    };
    if let Some(rate) = event_log_copy {
        println!(
            "raw binary COPY of event-log rows, {} rows per transaction into a table like track_stream_event_log (its unique key included), median of {}: {rate:.0} rows/s",
            args.copy_rows, args.copy_reps
        );
    }
    println!(
        "\nraw binary COPY, {} list rows (BIGINT, BIGINT[10], DOUBLE PRECISION[10]) per transaction, median of {}: {:.0} rows/s into an index-free table, {:.0} rows/s into a keyed table",
        args.copy_rows, args.copy_reps, pg.copy_plain, pg.copy_keyed
    );
    println!(
        "raw UPDATE of existing keys ({} rows per transaction of the {}-row keyed table, staging COPY + UPDATE ... FROM), median of {}: {:.0} rows/s",
        args.copy_rows / 10,
        args.copy_rows,
        args.copy_reps,
        pg.update
    );
    Ok(Limits { parse_rates, best_parse, pg, event_log_copy })
}

/// The catch-up runs: every layout (with --emit-events, without and with the log), each on a
/// fresh schema.
fn catch_ups(args: &Args, target: &FlowTarget, url: &str, catch_up_args: &[String]) -> Result<Vec<CatchUp>> {
    let timeout = Duration::from_secs(args.timeout);
    let mut runs = Vec::new();
    let variants: Vec<bool> = if args.emit_events { (0..args.emit_events_reps).flat_map(|_| [false, true]).collect() } else { vec![false] };
    for &layout in &args.layouts {
        for &emit_events in &variants {
            let mut run = CatchUp { layout, emit_events, finished: flow::Finished::default(), rows: BTreeMap::new() };
            let schema = run.schema();
            pg::fresh_schema(&mut pg::connect(url)?, &schema)?;
            let mut flags = catch_up_args.to_vec();
            flags.push("--until-caught-up".to_owned());
            if emit_events {
                flags.push("--emit-events".to_owned());
            }
            let name = format!("catch-up-{layout}{}", if emit_events { "-events" } else { "" });
            eprintln!("catch-up {}: encore-flow {} ... ({})", run.label(), flags.join(" "), load_average());
            run.finished = flow::start(target, layout, &schema, &flags, &name)?.wait(timeout)?;
            run.rows = pg::rows_written(url, &schema)?;
            eprintln!("  {:.1} s, {:.0} events/s ({})", run.finished.seconds, run.events_per_second(args.events), load_average());
            runs.push(run);
        }
    }
    Ok(runs)
}

/// The runs on the latency layout's caught-up schema, which add messages to the topic: the
/// restarts, then the latency runs; each checked against the oracle when `verified` is kept.
struct Live<'a> {
    args: &'a Args,
    target: &'a FlowTarget,
    servers: &'a Servers,
    catalog: &'a Catalog,
    latency_args: &'a [String],
    /// The runs whose tables are wrong so far; `None` with --no-verify.
    verified: Option<Vec<String>>,
}

impl Live<'_> {
    /// Restarts, on the latency layout's caught-up schema (before the latency runs grow it).
    fn restarts(&mut self, runs: &[CatchUp], stream: &mut EventStream, ends: &mut BTreeMap<i32, i64>) -> Result<()> {
        let args = self.args;
        let Some(base) = runs.iter().find(|r| r.layout == args.latency_layout).filter(|_| !args.restarts.is_empty()) else {
            return Ok(());
        };
        let schema = schema_of(args.latency_layout);
        let mut restarts = Vec::new();
        // `--restarts ""` (the documented "none") parses as one empty item.
        for mode in args.restarts.iter().filter(|mode| !mode.is_empty()) {
            let mode: &'static str = match mode.as_str() {
                "load" => "load",
                "replay" => "replay",
                other => bail!("--restarts takes load and replay, not {other:?}"),
            };
            eprintln!("restart {} ({mode}) ... ({})", args.latency_layout, load_average());
            let (url, kafka, timeout) = (&self.servers.url, &self.servers.kafka, Duration::from_secs(args.timeout));
            let restart =
                restart::run(self.target, args.latency_layout, &schema, self.latency_args, mode, url, kafka, stream, ends, timeout)?;
            eprintln!("  first new commit after {:.1} s ({})", restart.first_commit_seconds, load_average());
            self.verify(&format!("restart {} ({mode})", args.latency_layout), &schema, ends)?;
            restarts.push(restart);
        }
        restart::print(&restarts, &base.finished.peak_rss, self.latency_args);
        Ok(())
    }

    /// The latency runs, at each of --latency-rates.
    fn latencies(
        &mut self,
        runs: &[CatchUp],
        catch_up_args: &[String],
        update_limit: f64,
        stream: &mut EventStream,
        ends: &mut BTreeMap<i32, i64>,
    ) -> Result<Vec<(f64, latency::Measured)>> {
        let args = self.args;
        let mut latencies = Vec::new();
        if args.no_latency {
            return Ok(latencies);
        }
        let Some(base) = runs.iter().find(|r| r.layout == args.latency_layout && !r.emit_events) else {
            bail!("no catch-up run of {}", args.latency_layout);
        };
        let half = base.events_per_second(args.events) / 2.0;
        let schema = schema_of(args.latency_layout);
        for rate in &args.latency_rates {
            let rate = match rate.as_str() {
                "half" => half,
                number => number.parse::<f64>().ok().filter(|r| *r > 0.0).with_context(|| format!("bad latency rate {number:?}"))?,
            };
            eprintln!("latency {} at {rate:.0} events/s ... ({})", args.latency_layout, load_average());
            let plan = latency::Plan {
                target: self.target,
                layout: args.latency_layout,
                schema: &schema,
                args: self.latency_args,
                rate,
                seconds: args.latency_seconds,
                warmup: args.latency_warmup,
                drain: args.latency_drain,
                poll: Duration::from_millis(args.poll_ms),
                timeout: Duration::from_secs(args.timeout),
                stop_timeout: Duration::from_secs(args.stop_timeout),
                catch_up_args,
            };
            let measured = latency::run(&plan, &self.servers.url, &self.servers.kafka, stream, ends)?;
            self.verify(&format!("latency {} at {rate:.0} events/s", args.latency_layout), &schema, ends)?;
            latencies.push((rate, measured));
        }
        print_latency(&latencies, args, self.latency_args, half, update_limit);
        Ok(latencies)
    }

    /// Checks the tables of `schema` after a live run, at rest, unless --no-verify.
    fn verify(&mut self, label: &str, schema: &str, ends: &BTreeMap<i32, i64>) -> Result<()> {
        let (layout, timeout) = (self.args.latency_layout, Duration::from_secs(self.args.timeout));
        if let Some(wrong) = self.verified.as_mut() {
            if !verify_latency_run(label, self.catalog, &self.servers.url, self.target, layout, schema, ends, self.latency_args, timeout)? {
                wrong.push(label.to_owned());
            }
        }
        Ok(())
    }
}

/// The summary lines: each catch-up against its target, each latency run against its
/// target, the oracle's verdict.
fn print_summary(
    args: &Args,
    runs: &[CatchUp],
    event_log_lines: &[String],
    latencies: &[(f64, latency::Measured)],
    limits: &Limits,
    verified: Option<&[String]>,
) {
    // The catch-up target: issue 4 asked for half the consume + parse limit; issue 20, with
    // the work per listen bounded by --count-bits, for 90 %.
    const CATCH_UP_TARGET: f64 = 0.9;
    let (best_parse, copy_plain) = (limits.best_parse, limits.pg.copy_plain);
    println!();
    for line in event_log_lines {
        println!("{line}");
    }
    for run in runs.iter().filter(|_| !args.no_limits) {
        let rate = run.events_per_second(args.events);
        let fraction = rate / best_parse.max(1e-9);
        println!(
            "pipeline {}: {:.0} events/s end to end at {} events = {:.1} % of consume+parse ({:.0}/s; target >= {:.0} %: {}), {:.1} % of raw COPY ({:.2} rows/event)",
            run.label(),
            rate,
            args.events,
            100.0 * fraction,
            best_parse,
            100.0 * CATCH_UP_TARGET,
            if fraction >= CATCH_UP_TARGET { "met".to_owned() } else { format!("missed by {:.1} points", 100.0 * (CATCH_UP_TARGET - fraction)) },
            100.0 * run.row_changes() as f64 / run.finished.seconds.max(1e-9) / copy_plain.max(1e-9),
            run.row_changes() as f64 / args.events as f64,
        );
    }
    for (rate, measured) in latencies {
        let p99 = measured.quantile(0.99);
        println!(
            "latency {} at {:.0} events/s: p50 {}, p99 {} (target p99 <= 1000 ms: {}); oldest stale refresh {}{}",
            args.latency_layout,
            rate,
            fmt_latency(measured.quantile(0.50), args.latency_drain),
            fmt_latency(p99, args.latency_drain),
            match p99 {
                Some(p) if p <= Duration::from_secs(1) => "met".to_owned(),
                Some(p) => format!("missed, {:.1}x over", p.as_secs_f64()),
                None => "missed, above the drain time".to_owned(),
            },
            fmt_stale(measured),
            sink_load(measured, limits.pg.update),
        );
    }
    match verified {
        None => println!("tables not checked against the oracle (--no-verify)"),
        Some([]) => println!("every checked run's tables equal the sequential oracle over the messages it had committed"),
        Some(wrong) => println!("WRONG RESULTS: the tables of {} differ from the sequential oracle (see above)", wrong.join(", ")),
    }
}

/// Compares every catch-up schema with the oracle over the filled messages and prints the
/// outcome per table; returns the layouts whose tables are wrong.
fn verify_catch_ups(runs: &[CatchUp], args: &Args, catalog: &Catalog, url: &str, flags: &[String]) -> Result<Vec<String>> {
    let (params, emit_co_listens) = verify::params_of(flags)?;
    eprintln!("oracle over {} events ... ({})", args.events, load_average());
    let oracle_started = Instant::now();
    let want = verify::expected(catalog, args.events, &params)?;
    println!("\n## Tables against the sequential oracle ({:.0} s to compute it)\n", oracle_started.elapsed().as_secs_f64());
    let mut wrong = Vec::new();
    // A schema holds its last run (each run of a layout and variant recreates it).
    let last = |index: usize| !runs[index + 1..].iter().any(|later| later.schema() == runs[index].schema());
    for run in runs.iter().enumerate().filter(|(index, _)| last(*index)).map(|(_, run)| run) {
        let label = run.label();
        if !check_against_oracle(&label, url, &run.schema(), &want, &params, emit_co_listens)? {
            wrong.push(label);
        }
    }
    Ok(wrong)
}

/// After a latency or restart run: if the job committed every message of the topic, brings
/// the schema to rest (a run of `--until-caught-up` with nothing left to consume: it loads the
/// state, every user stale, and refreshes them all before its commit, SPEC §2 step 6) and
/// compares the tables with the oracle over all the messages (the topic holds the first
/// `ends`-many messages of the seed's stream: the fill, then each run's). A job that had not
/// committed everything (an overloaded rate) is reported as not checked.
// Each argument is one fact of the run being checked.
#[allow(clippy::too_many_arguments)]
fn verify_latency_run(
    label: &str,
    catalog: &Catalog,
    url: &str,
    target: &flow::FlowTarget,
    layout: flow::Layout,
    schema: &str,
    ends: &BTreeMap<i32, i64>,
    flags: &[String],
    timeout: Duration,
) -> Result<bool> {
    let committed = pg::committed(url, schema, &target.topic)?;
    let behind: i64 = ends.iter().map(|(p, end)| end - committed.get(p).copied().unwrap_or(0).min(*end)).sum();
    if behind > 0 {
        println!("{label}: not checked against the oracle ({behind} messages not committed when the job stopped)");
        return Ok(true);
    }
    let mut at_rest = flags.to_vec();
    at_rest.push("--until-caught-up".to_owned());
    flow::start(target, layout, schema, &at_rest, &format!("{}-at-rest", label.replace([' ', '/'], "-")))?.wait(timeout)?;
    let (params, emit_co_listens) = verify::params_of(flags)?;
    let messages: i64 = ends.values().sum();
    let want = verify::expected(catalog, messages as u64, &params)?;
    check_against_oracle(&format!("{label} ({messages} messages)"), url, schema, &want, &params, emit_co_listens)
}

/// Prints how the tables of `schema` compare with `want`, one line; whether they are exact.
fn check_against_oracle(
    label: &str,
    url: &str,
    schema: &str,
    want: &encore_dataflow::tables::Tables,
    params: &encore_dataflow::tables::Params,
    emit_co_listens: bool,
) -> Result<bool> {
    let (tables, dead_letters) = verify::check_schema(url, schema, want, params, emit_co_listens)?;
    let exact = dead_letters == 0 && tables.iter().all(|(_, diff)| diff.exact());
    let mut line: Vec<String> = tables.iter().map(|(name, diff)| format!("{name} {}", verify::describe(diff))).collect();
    if dead_letters > 0 {
        line.push(format!("dead_letters {dead_letters} rows, expected none"));
    }
    println!("{label} {}: {}", if exact { "exact" } else { "WRONG" }, line.join("; "));
    Ok(exact)
}

/// Prints the event-log comparison (each layout without and with `--emit-events`) and returns
/// its summary lines, one per layout.
fn print_event_log(runs: &[CatchUp], args: &Args, url: &str, copy_limit: Option<f64>) -> Result<Vec<String>> {
    const TARGET: f64 = 0.8;
    println!("\n## Event log (--emit-events): catch-up without and with it\n");
    println!(
        "Fastest of {} run(s) per variant, run alternately; log rows/s = rows in track_stream_event_log + track_like_event_log / seconds of the run with the log; raw COPY = event-log rows into the same table by one binary COPY (above).\n",
        args.emit_events_reps
    );
    table_header!("event_log", "| layout | seconds without | events/s without | seconds with | events/s with | with / without | log rows | log rows/s | raw event-log COPY rows/s | % of it |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut lines = Vec::new();
    let fastest = |layout: Layout, emit_events: bool| {
        runs.iter()
            .filter(|run| run.layout == layout && run.emit_events == emit_events)
            .min_by(|a, b| a.finished.seconds.total_cmp(&b.finished.seconds))
    };
    let seconds = |layout: Layout, emit_events: bool| {
        let all: Vec<String> = runs
            .iter()
            .filter(|run| run.layout == layout && run.emit_events == emit_events)
            .map(|run| format!("{:.1}", run.finished.seconds))
            .collect();
        all.join(", ")
    };
    let mut every_run = Vec::new();
    for &layout in &args.layouts {
        let (Some(without), Some(with)) = (fastest(layout, false), fastest(layout, true)) else { continue };
        every_run.push(format!(
            "{layout}: seconds of every run without the log {}; with it {}",
            seconds(layout, false),
            seconds(layout, true)
        ));
        let log_rows = pg::event_log_rows(url, &with.schema())?;
        let ratio = with.events_per_second(args.events) / without.events_per_second(args.events).max(1e-9);
        let log_rate = log_rows as f64 / with.finished.seconds.max(1e-9);
        let of_copy = copy_limit.map_or("n/a".to_owned(), |limit| format!("{:.1} %", 100.0 * log_rate / limit.max(1e-9)));
        table_row!(
            "event_log",
            "| {} × {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} % | {log_rows} | {log_rate:.0} | {} | {of_copy} |",
            with.layout.processes,
            with.layout.workers,
            without.finished.seconds,
            without.events_per_second(args.events),
            with.finished.seconds,
            with.events_per_second(args.events),
            100.0 * ratio,
            copy_limit.map_or("n/a".to_owned(), |limit| format!("{limit:.0}")),
        );
        let dead_letters = with.rows.get("dead_letters").map_or(0, |(_, held)| *held);
        let valid = with.finished.summary.consumed.saturating_sub(dead_letters);
        lines.push(format!(
            "event log {}: catch-up with it at {:.1} % of the rate without (target >= {:.0} %: {}); {log_rows} log rows ({}), {log_rate:.0} rows/s, {of_copy} of the raw event-log COPY",
            with.layout,
            100.0 * ratio,
            100.0 * TARGET,
            if ratio >= TARGET { "met".to_owned() } else { format!("missed by {:.1} points", 100.0 * (TARGET - ratio)) },
            if log_rows == valid { "one per valid message".to_owned() } else { format!("EXPECTED {valid}, one per valid message") },
        ));
    }
    println!();
    for line in every_run {
        println!("{line}");
    }
    Ok(lines)
}

fn schema_of(layout: Layout) -> String {
    format!("pipeline_{layout}")
}

fn print_catch_up(runs: &[CatchUp], args: &Args, parse_rates: &BTreeMap<usize, f64>, best_parse: f64, copy_plain: f64, flags: &[String]) {
    println!(
        "\n## End to end: {} pre-filled events to caught up (encore-flow {} --until-caught-up, fresh schema, all live)\n",
        args.events,
        flags.join(" ")
    );
    println!(
        "row changes = inserted + updated + deleted rows of the result tables (pg_stat_user_tables); \
         % of consume+parse: of the best rate measured ({best_parse:.0}/s), and of the rate with as many threads as workers; \
         COPY-equivalent = raw COPY rows/s / (row changes per event).\n"
    );
    table_header!("catch_up", "| processes × workers | seconds | events/s | replayed | live | row changes | rows held | row changes/event | peak RSS per process | % of consume+parse (best) | % of it, same threads | COPY-equivalent events/s | % of it |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for run in runs {
        let same_threads = parse_rates
            .get(&run.layout.total_workers())
            .map(|limit| format!("{:.1} %", 100.0 * run.events_per_second(args.events) / limit.max(1e-9)))
            .unwrap_or_else(|| "n/a".to_owned());
        let rate = run.events_per_second(args.events);
        let per_event = run.row_changes() as f64 / args.events as f64;
        let copy_events = copy_plain / per_event.max(1e-12);
        let held: u64 = run.rows.values().map(|(_, held)| held).sum();
        // Without measured limits (--no-limits) there is nothing to divide by.
        let percent = |value: f64, limit: f64| if limit > 0.0 { format!("{:.1} %", 100.0 * value / limit) } else { "n/a".to_owned() };
        table_row!(
            "catch_up",
            "| {} × {}{} | {:.1} | {:.0} | {} | {} | {} | {} | {:.2} | {} | {} | {same_threads} | {:.0} | {} |",
            run.layout.processes,
            run.layout.workers,
            if run.emit_events { " + --emit-events" } else { "" },
            run.finished.seconds,
            rate,
            run.finished.summary.replayed,
            run.finished.summary.consumed,
            run.row_changes(),
            held,
            per_event,
            run.finished.peak_rss.iter().map(|b| gib(*b)).collect::<Vec<_>>().join(", "),
            percent(rate, best_parse),
            copy_events,
            percent(rate, copy_events),
        );
    }
    for run in runs {
        let tables: Vec<String> =
            run.rows.iter().map(|(table, (changed, held))| format!("{table} {changed} changes / {held} rows")).collect();
        println!("\n{}: {}", run.label(), tables.join(", "));
    }
}

/// What a latency run's commits asked of Postgres against its raw UPDATE limit, as a clause.
fn sink_load(measured: &latency::Measured, update_limit: f64) -> String {
    let Some(per_event) = measured.row_changes_per_event() else { return String::new() };
    let demand = per_event * measured.send_rate;
    let events_per_commit = measured.committed_messages as f64 / measured.commits.max(1) as f64;
    let limit = if update_limit > 0.0 {
        format!(", {:.2}x the raw UPDATE limit of {update_limit:.0} rows/s", demand / update_limit)
    } else {
        String::new()
    };
    format!(
        "; its commits (~{events_per_commit:.0} events each) wrote {per_event:.1} rows/event: {demand:.0} row writes/s at this rate{limit}"
    )
}

/// The stale refresh age of a latency run: largest sampled / after the drain, seconds.
fn fmt_stale(m: &latency::Measured) -> String {
    let seconds = |age: Option<f64>| age.map_or_else(|| "-".to_owned(), |age| format!("{age:.1}"));
    format!("{} / {}", seconds(m.stale_age_max), seconds(m.stale_age_end))
}

fn print_latency(runs: &[(f64, latency::Measured)], args: &Args, flags: &[String], half: f64, update_limit: f64) {
    println!(
        "\n## Latency: produce → commit containing the event ({}, encore-flow {}, live after replaying the caught-up topic)\n",
        args.latency_layout,
        flags.join(" ")
    );
    println!(
        "half the catch-up rate of {} = {half:.0} events/s; {:.0} s of sending (linger 1 ms), first {:.0} s left out; commit seen by polling encore_progress every {} ms; {:.0} s to drain.\n",
        args.latency_layout, args.latency_seconds, args.latency_warmup, args.poll_ms, args.latency_drain
    );
    println!(
        "sink load: result-table row changes (pg_stat_user_tables) per message committed from the job's start to its stop; \
         row writes/s = that × the sent rate; raw UPDATE limit {update_limit:.0} rows/s.\n"
    );
    println!(
        "stale refresh age: encore_stale_refresh_age_seconds (the least recently refreshed stale user's last refresh; SPEC §2 \
         step 6), largest over the processes, sampled every second while sending (max) and after the drain (end); stale \
         users: the most one process had.\n"
    );
    table_header!("latency_live", "| target events/s | sent events/s | sent | measured | not committed | p50 ms | p99 ms | max ms | stale refresh age max / end s | stale users max | replay read s | ready s | polls (mean interval ms) | peak RSS per process | commits seen | events/commit | row changes/event | row writes/s | % of raw UPDATE |");
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (rate, m) in runs {
        let max = if m.uncommitted > 0 { None } else { m.latencies.last().copied() };
        let per_event = m.row_changes_per_event().unwrap_or(0.0);
        let demand = per_event * m.send_rate;
        let of_limit = if update_limit > 0.0 { format!("{:.0} %", 100.0 * demand / update_limit) } else { "n/a".to_owned() };
        table_row!(
            "latency_live",
            "| {rate:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} ({:.1}) | {} | {} | {:.0} | {per_event:.2} | {demand:.0} | {of_limit} |",
            m.send_rate,
            m.sent,
            m.measured,
            m.uncommitted,
            fmt_ms(m.quantile(0.50), args.latency_drain),
            fmt_ms(m.quantile(0.99), args.latency_drain),
            fmt_ms(max, args.latency_drain),
            fmt_stale(m),
            m.stale_users_max.map_or_else(|| "-".to_owned(), |users| format!("{users:.0}")),
            m.replay_seconds.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
            m.ready_seconds,
            m.polls,
            m.poll_interval.as_secs_f64() * 1e3,
            m.peak_rss.iter().map(|b| gib(*b)).collect::<Vec<_>>().join(", "),
            m.commits,
            m.committed_messages as f64 / m.commits.max(1) as f64,
        );
    }
}

fn fmt_ms(latency: Option<Duration>, drain: f64) -> String {
    match latency {
        Some(l) => format!("{:.0}", l.as_secs_f64() * 1e3),
        None => format!("> {:.0} s drain", drain),
    }
}

fn fmt_latency(latency: Option<Duration>, drain: f64) -> String {
    match latency {
        Some(l) => format!("{:.0} ms", l.as_secs_f64() * 1e3),
        None => format!("not committed within the {drain:.0} s drain"),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The commit measured, and whether the engine's source differs from it (others edit it).
fn source_state() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned())
    };
    match (git(&["rev-parse", "--short", "HEAD"]), git(&["status", "--porcelain", "--", "dataflow", "core"])) {
        (Some(head), Some(dirty)) if dirty.is_empty() => format!("git {head}"),
        (Some(head), Some(dirty)) => {
            format!("git {head} + uncommitted changes in {}", dirty.lines().filter_map(|l| l.get(3..)).collect::<Vec<_>>().join(" "))
        }
        _ => "git n/a".to_owned(),
    }
}

/// The 1/5/15-minute load average: other engineers share the machine.
fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(text) => format!("loadavg {}", text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        Err(_) => "loadavg n/a".to_owned(),
    }
}
