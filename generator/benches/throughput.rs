//! `throughput`: how fast `encore-gen stream` produces events (a `harness = false` bench).
//!
//! Three rows, each the median of `--reps` runs of `--events` messages of one seed (the
//! default catalog: 100 000 users, 5 000 artists, 50 000 tracks):
//!
//! * **generate + encode**: the listening simulation and the hand-written JSON, no sink: the
//!   generator's own ceiling;
//! * **file**: the same through the JSON-lines sink into a file in a temporary directory
//!   (what `encore-gen stream --output FILE` does);
//! * **Kafka**: the same through the producer (`acks=all`, idempotent, lz4, 20 ms linger)
//!   into a topic with `--partitions` partitions, until every message is acknowledged
//!   (what `encore-gen stream --brokers` does). The broker is a fresh in-memory Tansu from
//!   encore-testkit unless `--brokers` names one (then the topic `--topic` must exist).
//!
//! ```text
//! cargo bench -p encore-generator --bench throughput
//! cargo bench -p encore-generator --bench throughput -- --brokers 127.0.0.1:9092 --topic music_streaming_data
//! ```
//!
//! A last line times `encore-gen catalog` at the default sizes (names + binary COPY into a
//! fresh testkit PostgreSQL, or `--postgres`; `--no-catalog` skips it).
//!
//! The broker runs on the same (2-core) machine, so the Kafka row measures the generator and
//! the broker competing for the CPUs.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use encore_generator::catalog::CatalogNames;
use encore_generator::catalog::{Catalog, CatalogSizes};
use encore_generator::kafka::{KafkaOptions, KafkaSink};
use encore_generator::pg;
use encore_generator::run::{run, RunOptions, Sink};
use encore_generator::stream::EventStream;
use encore_testkit::{Postgres, Tansu};

/// Measures encore-gen's event throughput to nothing, to a file and to Kafka.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Messages per run.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Runs per row (the median is printed).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seed of the catalog and stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// An existing broker; by default a fresh Tansu is started.
    #[arg(long)]
    brokers: Option<String>,
    /// Topic on `--brokers` (created, with `--partitions`, on the fresh Tansu).
    #[arg(long, default_value = "generator_bench")]
    topic: String,
    /// Partitions of the topic created on the fresh Tansu.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Skip the Kafka row.
    #[arg(long)]
    no_kafka: bool,
    /// Skip the catalog line.
    #[arg(long)]
    no_catalog: bool,
    /// An existing Postgres for the catalog line (its catalog tables are replaced!); by
    /// default a fresh testkit cluster is started.
    #[arg(long)]
    postgres: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One measured run: messages, payload bytes, seconds.
#[derive(Clone, Copy)]
struct Run {
    messages: u64,
    bytes: u64,
    seconds: f64,
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    runs[runs.len() / 2]
}

fn print_row(name: &str, run: Run) {
    println!(
        "| {name:<34} | {:>10} | {:>8.2} | {:>12.0} | {:>7.1} |",
        run.messages,
        run.seconds,
        run.messages as f64 / run.seconds,
        run.bytes as f64 / run.seconds / 1e6
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let catalog = Catalog::generate(args.seed, CatalogSizes::default());
    let catalog_time = started.elapsed();
    let stop = AtomicBool::new(false);
    let options = RunOptions { events: args.events, rate: 0.0 };

    // Payload bytes of one run (the same for every run of the seed).
    let mut payload = Vec::with_capacity(512);
    let mut bytes = 0u64;
    let generate = median(
        (0..args.reps)
            .map(|_| {
                let mut stream = EventStream::new(&catalog, 0.0);
                let begin = Instant::now();
                let mut total = 0u64;
                for _ in 0..args.events {
                    stream.next_message(&mut payload);
                    total += payload.len() as u64 + 1;
                }
                bytes = total;
                Run { messages: args.events, bytes: total, seconds: begin.elapsed().as_secs_f64() }
            })
            .collect(),
    );

    let dir = std::env::temp_dir().join(format!("encore-gen-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut file_runs = Vec::new();
    for rep in 0..args.reps {
        let path = dir.join(format!("events-{rep}.jsonl"));
        let mut sink = Sink::lines(path.clone())?;
        let mut stream = EventStream::new(&catalog, 0.0);
        let totals = run(&mut stream, &mut sink, options, &stop, |_| {})?;
        let size = std::fs::metadata(&path)?.len();
        std::fs::remove_file(&path)?;
        file_runs.push(Run { messages: totals.messages, bytes: size, seconds: totals.elapsed.as_secs_f64() });
    }
    let file = median(file_runs);
    std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;

    let kafka = if args.no_kafka {
        None
    } else {
        let (_tansu, brokers) = match &args.brokers {
            Some(brokers) => (None, brokers.clone()),
            None => {
                let tansu = Tansu::start().context("starting Tansu")?;
                tansu.create_topic(&args.topic, args.partitions).context("creating the topic")?;
                let brokers = tansu.brokers();
                (Some(tansu), brokers)
            }
        };
        let mut runs = Vec::new();
        for _ in 0..args.reps {
            let kafka = KafkaSink::connect(&KafkaOptions {
                brokers: brokers.clone(),
                topic: args.topic.clone(),
                idempotence: true,
                extra: Vec::new(),
            })?;
            let mut sink = Sink::Kafka(kafka);
            let mut stream = EventStream::new(&catalog, 0.0);
            let totals = run(&mut stream, &mut sink, options, &stop, |_| {})?;
            runs.push(Run { messages: totals.messages, bytes, seconds: totals.elapsed.as_secs_f64() });
        }
        Some((median(runs), brokers))
    };

    println!(
        "encore-gen throughput: seed {}, default catalog (generated in {:.2} s), {} messages per run, median of {}, \
         {} CPUs",
        args.seed,
        catalog_time.as_secs_f64(),
        args.events,
        args.reps,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| {:<34} | {:>10} | {:>8} | {:>12} | {:>7} |", "path", "messages", "seconds", "messages/s", "MB/s");
    println!("|{:-<36}|{:->12}|{:->10}|{:->14}|{:->9}|", "", "", "", "", "");
    print_row("generate + encode (no sink)", generate);
    print_row("file (JSON lines)", file);
    if let Some((run, brokers)) = kafka {
        let name = match &args.brokers {
            Some(_) => format!("Kafka {brokers}"),
            None => format!("Kafka (Tansu memory, {} partitions)", args.partitions),
        };
        print_row(&name, run);
    }
    if !args.no_catalog {
        let (_postgres, url) = match &args.postgres {
            Some(url) => (None, url.clone()),
            None => {
                let postgres = Postgres::start().context("starting PostgreSQL")?;
                let url = postgres.url();
                (Some(postgres), url)
            }
        };
        let begin = Instant::now();
        let catalog = Catalog::generate(args.seed, CatalogSizes::default());
        let names = CatalogNames::generate(&catalog);
        let named = begin.elapsed();
        let mut client = pg::connect(&url)?;
        let counts = pg::write_catalog(&mut client, "public", &catalog, &names)?;
        let total = begin.elapsed();
        println!();
        println!(
            "catalog: {} users, {} artists, {} albums, {} tracks in {:.2} s ({:.2} s generating with names, {:.2} s COPY + commit)",
            counts.users,
            counts.artists,
            counts.albums,
            counts.tracks,
            total.as_secs_f64(),
            named.as_secs_f64(),
            (total - named).as_secs_f64()
        );
    }
    Ok(())
}
