//! `encore-gen`: writes the music catalog to Postgres, or streams listening events to Kafka
//! or a JSON-lines file. See `encore-gen --help` and the library docs for the models.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use encore_generator::catalog::{Catalog, CatalogNames, CatalogSizes};
use encore_generator::kafka::{KafkaOptions, KafkaSink};
use encore_generator::pg;
use encore_generator::run::{run, RunOptions, Sink};
use encore_generator::stream::EventStream;

/// Seeded music catalog and listening-event stream for encore.
#[derive(Parser, Debug)]
#[command(name = "encore-gen", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write users, artists, albums and tracks to Postgres (replacing what is there).
    Catalog(CatalogArgs),
    /// Produce listening events to a Kafka topic or a JSON-lines file.
    Stream(StreamArgs),
}

/// Catalog sizes; `stream` must use the same as `catalog` to pick ids that exist.
#[derive(Args, Debug, Clone, Copy)]
struct SizeArgs {
    /// Number of users.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Number of artists.
    #[arg(long, default_value_t = 5_000)]
    artists: u32,
    /// Number of albums [default: tracks / 10].
    #[arg(long)]
    albums: Option<u32>,
    /// Number of tracks.
    #[arg(long, default_value_t = 50_000)]
    tracks: u32,
}

impl SizeArgs {
    fn catalog(&self, seed: u64) -> anyhow::Result<Catalog> {
        let sizes = CatalogSizes::new(self.users, self.artists, self.albums, self.tracks)?;
        Ok(Catalog::generate(seed, sizes))
    }
}

#[derive(Args, Debug)]
struct CatalogArgs {
    /// Postgres connection URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres. TLS as
    /// in libpq: sslmode (disable, prefer [default], require, verify-ca, verify-full),
    /// sslrootcert (a PEM file, or "system"), sslcert and sslkey, in the URL or as PGSSLMODE,
    /// PGSSLROOTCERT, PGSSLCERT, PGSSLKEY. A URL without a password takes it from PGPASSWORD.
    #[arg(long)]
    postgres: String,
    /// Seed: the same seed and sizes give the same catalog.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Schema of the catalog tables (created if missing).
    #[arg(long, default_value = "public")]
    pg_schema: String,
    #[command(flatten)]
    sizes: SizeArgs,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("sink").required(true).args(["brokers", "output"])))]
#[command(after_help = "Ids refer to the catalog of the same --seed and sizes: pass the same \
--users/--artists/--albums/--tracks as to `encore-gen catalog`. The same seed and sizes give \
byte-identical messages at any --rate, to a file or to Kafka (key: the user id).")]
struct StreamArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    brokers: Option<String>,
    /// Kafka topic (must exist).
    #[arg(long, default_value = "music_streaming_data", requires = "brokers")]
    topic: String,
    /// Write JSON lines (one message a line) to FILE instead of Kafka; `-` for stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Number of messages; 0 = without end (stop with Ctrl-C).
    #[arg(long)]
    events: u64,
    /// Skip the first N messages of the seed's stream (generated, not sent): continues a
    /// stream of which N messages were sent before.
    #[arg(long, value_name = "N", default_value_t = 0)]
    skip: u64,
    /// Messages per second, evenly spaced; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seed: the same seed and sizes give the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of malformed messages (0–1) mixed in, for dead-letter tests.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    invalid_rate: f64,
    /// Do not use the idempotent producer (for brokers without InitProducerId).
    #[arg(long)]
    no_idempotence: bool,
    /// A librdkafka producer setting, `key=value` (repeatable), applied after encore-gen's
    /// own and --kafka-config's, e.g. `security.protocol=SSL` and `ssl.ca.location=FILE` for a
    /// TLS broker.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", requires = "brokers", value_parser = encore_kafkaconf::parse_option)]
    kafka_options: Vec<(String, String)>,
    /// librdkafka settings from FILE: `key=value` lines and `#` comments, like a managed Kafka
    /// service's client.properties (the same file as encore-flow's --kafka-config). Keeps SASL
    /// passwords off the command line. Applied before --kafka-option; a bootstrap.servers line
    /// must match --brokers.
    #[arg(long = "kafka-config", value_name = "FILE", requires = "brokers")]
    kafka_config: Option<PathBuf>,
    /// Never draw a progress bar (a summary line is printed at the end either way).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    sizes: SizeArgs,
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{share} is not between 0 and 1"))
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Catalog(args) => catalog(args),
        Command::Stream(args) => stream(args),
    };
    if let Err(error) = result {
        // One line: the error and its causes.
        eprintln!("encore-gen: {error:#}");
        std::process::exit(1);
    }
}

fn catalog(args: CatalogArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let catalog = args.sizes.catalog(args.seed)?;
    let names = CatalogNames::generate(&catalog);
    let mut client = pg::connect(&args.postgres)?;
    let counts = pg::write_catalog(&mut client, &args.pg_schema, &catalog, &names)?;
    eprintln!(
        "encore-gen: catalog of seed {} written to schema {:?}: {} users, {} artists, {} albums, {} tracks in {:.2} s",
        args.seed,
        args.pg_schema,
        counts.users,
        counts.artists,
        counts.albums,
        counts.tracks,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn stream(args: StreamArgs) -> anyhow::Result<()> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a number ≥ 0, got {}", args.rate);
    }
    // Connect first: a broker problem is reported before any work.
    let (mut sink, target) = match (&args.brokers, &args.output) {
        (Some(brokers), _) => {
            let options = KafkaOptions {
                brokers: brokers.clone(),
                topic: args.topic.clone(),
                idempotence: !args.no_idempotence,
                extra: encore_kafkaconf::settings(brokers, args.kafka_config.as_deref(), &args.kafka_options)
                    .map_err(anyhow::Error::msg)?,
            };
            let kafka = KafkaSink::connect(&options)?;
            let target = format!("topic {} ({} partitions) on {brokers}", args.topic, kafka.partitions());
            (Sink::Kafka(kafka), target)
        }
        (None, Some(path)) => (Sink::lines(path.clone())?, format!("{}", path.display())),
        (None, None) => anyhow::bail!("give --brokers or --output"),
    };
    let catalog = args.sizes.catalog(args.seed)?;
    let mut events = EventStream::new(&catalog, args.invalid_rate);
    drop(catalog);
    let mut skipped = Vec::new();
    for _ in 0..args.skip {
        events.next_message(&mut skipped);
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)).context("cannot install the Ctrl-C handler")?;
    }

    let bar = progress_bar(&args);
    let totals = run(&mut events, &mut sink, RunOptions { events: args.events, rate: args.rate }, &stop, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    eprintln!(
        "encore-gen: {}{} messages ({} malformed) to {target} in {:.2} s: {:.0} messages/s",
        if totals.interrupted { "interrupted after " } else { "" },
        totals.messages,
        totals.invalid,
        totals.elapsed.as_secs_f64(),
        totals.rate()
    );
    Ok(())
}

/// A progress bar with events/s on a terminal; hidden otherwise (or with --no-progress, or
/// when the events go to stdout).
fn progress_bar(args: &StreamArgs) -> ProgressBar {
    let to_stdout = args.output.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if args.no_progress || to_stdout || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = if args.events > 0 {
        (ProgressBar::new(args.events), "{bar:40} {human_pos}/{human_len} events  {rate}  eta {eta}")
    } else {
        (ProgressBar::no_length(), "{spinner} {human_pos} events  {rate}  {elapsed}")
    };
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = ProgressStyle::with_template(template) {
        let style = style.with_key("rate", |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0} events/s", state.per_sec());
        });
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}
