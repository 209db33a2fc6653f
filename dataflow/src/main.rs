//! `encore-flow`: the dataflow job (SPEC §4).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::{ArgAction, Args, Parser};
use encore_dataflow::engine::RefreshBudget;
use encore_dataflow::job::file::{self, FileJob};
use encore_dataflow::job::kafka::{self, KafkaJob};
use encore_dataflow::metrics::{self, Metrics};
use encore_dataflow::shutdown::Shutdown;
use encore_dataflow::sink::csv::{self, MemorySink};
use encore_dataflow::sink::postgres::{PgSink, RetryPolicy};
use encore_dataflow::source::file::Lines;
use encore_dataflow::source::kafka::{KafkaSource, Recovery, DEFAULT_ERROR_TIMEOUT};
use encore_dataflow::tables::Params;

/// Real-time music recommendations: consumes listening events, maintains co-listening
/// counts, item-item similarity, per-track neighbours, per-user recommendations and track
/// statistics incrementally, and writes them as tables.
///
/// Input: `--input FILE` (JSON lines). Output: `--output-dir DIR` (one CSV per table).
/// Scale with `-w` workers per process and `-n` processes (`-p` this process's index, `-h`
/// a hostfile of `host:port` lines, one per process); results do not depend on either.
#[derive(Debug, Parser)]
#[command(name = "encore-flow", version, disable_help_flag = true)]
struct Cli {
    /// Print help (`-h` is the hostfile, as in every timely program).
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,

    #[command(flatten)]
    input: Input,
    #[command(flatten)]
    output: Output,

    /// Kafka consumer group (for monitoring only: offsets are kept in Postgres).
    #[arg(long, default_value = "encore")]
    group: String,

    /// Read the Postgres password from FILE (its first line), e.g. a mounted Docker or
    /// Kubernetes secret. It wins over PGPASSWORD; a password in the URL wins over it.
    #[arg(long, value_name = "FILE", requires = "postgres")]
    postgres_password_file: Option<PathBuf>,

    /// Postgres schema of the tables.
    #[arg(long, default_value = "public")]
    pg_schema: String,

    /// Exit once every message that was in the topic at start is consumed and committed.
    #[arg(long)]
    until_caught_up: bool,

    /// Rebuild the state by replaying the topic from its first message up to the stored
    /// offsets, instead of loading it from Postgres (encore_last_listen): time and memory
    /// grow with the topic, and it needs every message since the first (no retention). For
    /// a state table that was lost or damaged; tables written before encore-flow kept its
    /// state are replayed this way without the flag. The replayed state is written with the
    /// first commit.
    #[arg(long, requires = "postgres")]
    replay_topic: bool,

    #[command(flatten)]
    params: ParamArgs,

    /// M: stale users whose recommendations each worker refreshes per epoch, besides the
    /// users that listened in it (SPEC §2 step 6): a user is stale when a neighbour list of a
    /// track in its history changed since its last refresh. Epochs without listens refresh
    /// more (up to 8·M, at least 4096 per worker), the last epoch of --input and
    /// --until-caught-up all of them, so the tables at rest are exact whatever M is. `all`:
    /// every stale user in every epoch, which keeps every stored list equal to its definition
    /// after each epoch (costly: a popular track's list is held by many users). M may change
    /// between runs.
    #[arg(long, value_name = "M|all", default_value = "1000")]
    refresh_idle: RefreshBudget,

    /// Also maintain and write `co_listens` (every pair with c ≥ 1: large).
    #[arg(long)]
    emit_co_listens: bool,

    /// Also append every valid event (listens and non-listens) to the event log of the
    /// system encore replaces: streaming and skip events to `track_stream_event_log`, likes to
    /// `track_like_event_log` (created if missing), in the transaction of its epoch, so each is
    /// logged exactly once, unique per (kafka_partition, kafka_offset). With --output-dir,
    /// both tables are written as CSV files (partition 0, the line number as offset).
    #[arg(long)]
    emit_events: bool,

    /// Events per epoch (`--input`), or most messages a worker puts in one epoch (Kafka).
    /// Each epoch's changes are committed together. With --until-caught-up, an epoch takes
    /// up to an eighth more rather than leave a last epoch of a few messages (as costly as a
    /// big one).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    epoch_events: u64,

    /// Epoch length with Kafka input, in milliseconds: bounds the latency from a message to
    /// the commit that contains its effects while the job keeps up. Under a backlog an epoch
    /// stays open longer (up to --epoch-events messages per worker) until the dataflow has
    /// finished the earlier ones, so epochs grow and the job catches up.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    epoch_ms: u64,

    /// A librdkafka setting for the consumers, `key=value` (repeatable), e.g.
    /// `security.protocol=SSL` or `sasl.mechanism=PLAIN`. Applied after encore's own, e.g.
    /// `fetch.wait.max.ms=100` (librdkafka's 500 adds latency on brokers that hold empty
    /// fetches to the deadline, as Tansu does).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = encore_kafkaconf::parse_option)]
    kafka_options: Vec<(String, String)>,

    /// librdkafka settings from FILE: `key=value` lines and `#` comments, like a managed Kafka
    /// service's client.properties. Keeps SASL passwords off the command line. Applied
    /// before --kafka-option; a bootstrap.servers line must match --brokers.
    #[arg(long = "kafka-config", value_name = "FILE")]
    kafka_config: Option<PathBuf>,

    /// Seconds Kafka consumer errors may persist, with nothing consumed meanwhile, before the
    /// job ends with the last one (a broker down, unreachable or refusing). Errors that can
    /// never heal (a batch in a codec this build cannot decode, a denied topic, fatal errors)
    /// end it at once.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_ERROR_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    kafka_error_timeout: u64,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (Kafka input only; off by
    /// default). A bare PORT (or :PORT) binds 127.0.0.1, reachable from this machine only;
    /// to let another host scrape it, name the address to bind, e.g. 0.0.0.0:9464 (every
    /// interface) or one interface's address. Every process serves its own: give each
    /// process its own address. Port 0 picks a free port (logged at info level).
    #[arg(long, value_name = "[HOST:]PORT")]
    metrics_addr: Option<String>,

    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
struct Input {
    /// Read JSON-lines events from FILE (every process reads its own copy).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["brokers", "topic"])]
    input: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "HOST:PORT", requires = "topic")]
    brokers: Option<String>,
    /// Kafka topic of the events.
    #[arg(long, value_name = "T", requires = "brokers")]
    topic: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Output {
    /// Write the final tables as DIR/<table>.csv (process 0 writes them).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Postgres connection URL, e.g. postgres://USER@HOST:5432/DB. TLS as in libpq: sslmode
    /// (disable, prefer [default: TLS if the server offers it], require, verify-ca,
    /// verify-full), sslrootcert (a PEM file, or "system" for the system's roots), sslcert and
    /// sslkey (client certificate), in the URL or as PGSSLMODE, PGSSLROOTCERT, PGSSLCERT,
    /// PGSSLKEY. A URL without a password takes it from --postgres-password-file, PGPASSWORD
    /// or libpq's password file (`passfile` in the URL, PGPASSFILE, ~/.pgpass): the command
    /// line is shown by `ps`, these are not.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
}

#[derive(Debug, Args)]
struct ParamArgs {
    /// K: tracks kept in a user's history.
    #[arg(long, value_name = "K", default_value_t = 50)]
    history_cap: usize,
    /// C: minimum co-listening count for a similarity.
    #[arg(long, value_name = "C", default_value_t = 2)]
    min_co: u64,
    /// k: neighbours kept per track.
    #[arg(long, value_name = "k", default_value_t = 20)]
    neighbors: usize,
    /// N: recommendations kept per user.
    #[arg(long, value_name = "N", default_value_t = 10)]
    recommendations: usize,
    /// P: decimal digits of a score (0–15).
    #[arg(long, value_name = "P", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=15))]
    score_precision: u32,
    /// B: significant binary digits of the counts n(i), c(i,j) in the cosine; each is rounded
    /// down to its B leading bits (B = 5: 99 → 96, 1000 → 992), so that a similarity changes
    /// only 2^(B-1) times while a count doubles and the work per listen stays bounded as the
    /// data grows. 0 = exact counts (more work and row changes per listen, growing with the
    /// data). co_listens and the minimum --min-co always use the exact counts.
    #[arg(long, value_name = "B", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=encore_core::MAX_COUNT_BITS as i64))]
    count_bits: u32,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", value_name = "W", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    /// Number of processes.
    #[arg(short = 'n', long = "processes", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    processes: u64,
    /// This process's index, 0 ≤ P < N.
    #[arg(short = 'p', long = "process", value_name = "P", default_value_t = 0)]
    process: u64,
    /// Hostfile: one `host:port` line per process (default 127.0.0.1:2101, :2102, …).
    #[arg(short = 'h', long = "hostfile", value_name = "HOSTFILE")]
    hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    fn config(&self) -> anyhow::Result<timely::Config> {
        let (threads, processes, process) = (self.workers as usize, self.processes as usize, self.process as usize);
        if process >= processes {
            bail!("-p {process} is not below -n {processes}");
        }
        let communication = if processes == 1 {
            timely::CommunicationConfig::Process(threads)
        } else {
            let addresses = match &self.hostfile {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read hostfile {}", path.display()))?;
                    let hosts: Vec<String> =
                        text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).map(str::to_owned).collect();
                    if hosts.len() < processes {
                        bail!("hostfile {} names {} processes, -n asks for {processes}", path.display(), hosts.len());
                    }
                    hosts.into_iter().take(processes).collect()
                }
                None => (0..processes).map(|index| format!("127.0.0.1:{}", 2101 + index)).collect(),
            };
            timely::CommunicationConfig::Cluster { threads, process, addresses, report: false, zerocopy: false }
        };
        Ok(timely::Config { communication, worker: timely::WorkerConfig::default() })
    }
}

/// A panic anywhere ends the process with one line and exit status 1. The usual cause is a
/// lost peer process (timely's network threads panic when a connection breaks); without this
/// hook every thread would print its own backtrace. Uncommitted work is rolled back by
/// Postgres when the connection drops, so exiting at once is safe.
fn exit_on_panic() {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    std::panic::set_hook(Box::new(|info| {
        // A lost peer breaks both directions of a connection at once, and its reader and
        // writer threads panic together: the first reports and exits, the others wait for
        // that exit, so the reason is one line.
        if REPORTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        if message.contains("timely communication error") {
            eprintln!("encore-flow: lost a peer process ({message})");
        } else {
            let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            eprintln!("encore-flow: internal error: {message}{place}");
        }
        std::process::exit(1);
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit_on_panic();
    // Logs go to stderr; RUST_LOG overrides the level (e.g. RUST_LOG=encore_dataflow=debug).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("encore-flow: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.cluster.config()?;
    let params = Params {
        history_cap: cli.params.history_cap,
        min_co: cli.params.min_co,
        neighbors: cli.params.neighbors,
        recommendations: cli.params.recommendations,
        score_precision: cli.params.score_precision,
        count_bits: cli.params.count_bits,
    };
    let output_dir = match (cli.input.input.clone(), cli.output.output_dir.clone(), cli.output.postgres.clone()) {
        (Some(_), _, _) if cli.metrics_addr.is_some() => bail!("--metrics-addr needs Kafka input (--brokers, --topic)"),
        (Some(_), _, _) if cli.kafka_config.is_some() || !cli.kafka_options.is_empty() => {
            bail!("--kafka-config and --kafka-option need Kafka input (--brokers, --topic)")
        }
        (Some(input), Some(output_dir), None) => (input, output_dir),
        (None, None, Some(url)) => return run_stream(&cli, config, params, &url),
        (Some(_), None, Some(_)) => bail!("--input with --postgres is not supported: use --output-dir, or Kafka input"),
        _ => bail!("Kafka input needs --postgres (offsets are kept there); --input needs --output-dir"),
    };
    let (input, output_dir) = output_dir;

    let state = Arc::new(Mutex::new(MemorySink::default()));
    let job = FileJob {
        lines: Lines::File(input),
        params,
        emit_co_listens: cli.emit_co_listens,
        emit_events: cli.emit_events,
        epoch_events: cli.epoch_events as usize,
        refresh: cli.refresh_idle,
    };
    let sink = Arc::clone(&state);
    let fed = file::run(config, job, move || Arc::clone(&sink))?;

    if cli.cluster.process == 0 {
        let state = state.lock().map_err(|_| anyhow::anyhow!("a worker panicked"))?;
        csv::write_tables(&output_dir, &state.tables, &state.dead_letters, params.score_precision, cli.emit_co_listens)
            .with_context(|| format!("cannot write tables to {}", output_dir.display()))?;
        if cli.emit_events {
            csv::write_event_logs(&output_dir, &state.events)
                .with_context(|| format!("cannot write the event logs to {}", output_dir.display()))?;
        }
        let first = fed.first().copied().unwrap_or_default();
        let listens: u64 = state.tables.track_stats.values().map(|stats| stats.plays).sum();
        let seconds = fed.iter().map(|f| f.seconds).fold(0.0, f64::max);
        println!(
            "events={} listens={} invalid={} epochs={} seconds={:.3} events/s={:.0}",
            first.events,
            listens,
            state.dead_letters.len(),
            first.epochs,
            seconds,
            first.events as f64 / seconds.max(1e-9),
        );
    }
    Ok(())
}

/// Where the Postgres password comes from. `--postgres-password-file` hands its first line to
/// encore-pgconnect as PGPASSWORD, which it reads like libpq (the URL's own password first,
/// then PGPASSWORD, then the password file). Set here, before the first thread starts: the
/// environment may only be changed while one thread runs. A password in the URL works but is
/// shown by `ps` to every user of the machine: a warning says so, without the password.
fn postgres_password(url: &str, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --postgres-password-file {}", path.display()))?;
        let password = text.lines().next().unwrap_or_default();
        if password.is_empty() {
            bail!("--postgres-password-file {} is empty", path.display());
        }
        std::env::set_var("PGPASSWORD", password);
    }
    let in_url = encore_pgconnect::Target::parse_with_env(url, |_| None).is_ok_and(|target| target.config().get_password().is_some());
    if in_url {
        tracing::warn!(
            "the --postgres URL holds a password, which `ps` shows to every user of this machine: \
             give it in PGPASSWORD, ~/.pgpass (or PGPASSFILE) or --postgres-password-file instead"
        );
    }
    Ok(())
}

fn run_stream(cli: &Cli, config: timely::Config, params: Params, url: &str) -> anyhow::Result<()> {
    let (Some(brokers), Some(topic)) = (cli.input.brokers.clone(), cli.input.topic.clone()) else {
        bail!("Kafka input needs --brokers and --topic");
    };
    postgres_password(url, cli.postgres_password_file.as_deref())?;
    // Bound first: a taken port fails the start before anything else happens.
    let metrics = match &cli.metrics_addr {
        Some(addr) => {
            let process = cli.cluster.process;
            let registry = Arc::new(Metrics::new(process, process == 0));
            let bound = metrics::serve(addr, Arc::clone(&registry))?;
            tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
            Some(registry)
        }
        None => None,
    };
    let kafka_options =
        encore_kafkaconf::settings(&brokers, cli.kafka_config.as_deref(), &cli.kafka_options).map_err(anyhow::Error::msg)?;
    let mut sink = PgSink::connect(url, &cli.pg_schema, params.score_precision, cli.emit_co_listens, RetryPolicy::default())?;
    if cli.emit_events {
        sink = sink.with_event_log()?;
    }
    let committed = sink.committed_offsets(&topic)?;
    let mut recorded = params.flags();
    if cli.emit_co_listens {
        recorded.push_str(" --emit-co-listens");
    }
    let recovery = match sink.check_parameters(&topic, &recorded, params.count_bits, &committed)? {
        _ if cli.replay_topic => Recovery::Replay(Box::new(sink.state_reader())),
        true => Recovery::Load(Box::new(sink.state_reader())),
        false => {
            tracing::warn!(
                "the tables in --pg-schema {} were written before encore-flow kept its state in Postgres: \
                 replaying the topic once to rebuild it (it is stored with the first commit)",
                cli.pg_schema
            );
            Recovery::Replay(Box::new(sink.state_reader()))
        }
    };
    let source = KafkaSource {
        brokers,
        topic,
        group: cli.group.clone(),
        kafka_options,
        until_caught_up: cli.until_caught_up,
        epoch_ms: cli.epoch_ms,
        epoch_events: cli.epoch_events as usize,
        committed,
        recovery,
        error_timeout: std::time::Duration::from_secs(cli.kafka_error_timeout),
    };
    let job = KafkaJob { source, params, emit_co_listens: cli.emit_co_listens, emit_events: cli.emit_events, refresh: cli.refresh_idle };
    let shutdown = Shutdown::new();
    stop_on_signals(&shutdown)?;
    let writer = (cli.cluster.process == 0).then_some(sink);
    let summary = kafka::run(config, job, writer, shutdown, metrics)?;
    println!(
        "process={} replayed={} restored={} consumed={} invalid={} replay_seconds={:.3} seconds={:.3}",
        cli.cluster.process,
        summary.replayed_messages,
        summary.restored_rows,
        summary.live_messages,
        summary.invalid,
        summary.replay_seconds,
        summary.seconds,
    );
    Ok(())
}

/// Ctrl-C (SIGINT), SIGTERM (docker stop, systemd, Kubernetes) and SIGHUP (a closed
/// terminal), all alike: finish the current epoch, commit it, and exit cleanly; while still
/// connecting to peers there is nothing to finish, and timely's connection retries would not
/// notice.
fn stop_on_signals(shutdown: &Shutdown) -> anyhow::Result<()> {
    let on_signal = shutdown.clone();
    ctrlc::set_handler(move || {
        if !on_signal.workers_started() {
            eprintln!("encore-flow: interrupted while connecting to the other processes; nothing was written");
            std::process::exit(130);
        }
        on_signal.request();
    })
    .context("cannot install the SIGINT/SIGTERM/SIGHUP handler")
}
