//! `engine`: the incremental engine's figures on the seeded generator workload, as tables.
//!
//! * **latency**: a fresh dataflow loads `--load-events` in one epoch, then runs epochs of 1,
//!   100, 1 000 and 10 000 events (`--epoch-sizes`, `--epoch-counts`); per epoch size it
//!   prints p50/p99/max latency and throughput, for each `--workers` count (the shape of the
//!   table in differential-dataflow's README);
//! * **scratch**: from the same kind of run, the time of the load (every output computed
//!   from scratch over `--load-events`, one epoch) against the median incremental epoch of
//!   1 000 and 10 000 events right after it;
//! * **memory** / **amplification**: one growing run (epochs of `--growth-epoch` events up to
//!   `--load-events`): per `--window` of events, output row changes per input event for each
//!   table, and the process's VmRSS / VmHWM (peak) after each window;
//! * **reach** (not part of `all`, no dataflow): replays the stream through an emulation of
//!   the capped histories and prints n(i) at each history insertion per window — the fan-out
//!   behind the amplification, cheap enough to see at 10 M events;
//! * **bits** (not part of `all`): for each `--count-bits` B, a fresh process loads the stream
//!   in epochs of `--load-epoch` and, at each of `--checkpoints` (1 M, 3 M, 10 M events),
//!   runs the `--epoch-sizes` epochs: latency, throughput, CPU per epoch and per event, row
//!   changes per event and peak RSS, then whether the work per event stays flat ([`bits`]).
//!
//! Each run is seeded (`--seed`), uses the default catalog (100 000 users, 50 000 tracks) and
//! the default SPEC §2 parameters; see [`driver`] for what exactly is timed. Nothing is
//! asserted: the binary prints figures.
//!
//! ```text
//! cargo run --release -p encore-benches --bin engine -- --which all
//! cargo run --release -p encore-benches --bin engine -- --which memory --load-events 10000000
//! cargo run --release -p encore-benches --bin engine -- --which reach --load-events 10000000 --window 1000000
//! cargo run --release -p encore-benches --bin engine -- --which bits --count-bits 0,4,5,6 --workers 2
//! ```
//!
//! VmHWM is a process-wide peak, so `--which all` runs the growth run first, before any
//! big one-epoch load; for the cleanest figure run `--which memory` alone.

// A binary root finds modules beside itself; keep the driver in the folder named after it.
#[path = "engine/bits.rs"]
mod bits;
#[path = "engine/driver.rs"]
mod driver;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use encore_benches::results::Recording;
use encore_benches::{table_header, table_row};
use encore_dataflow::engine::RefreshBudget;
use encore_dataflow::tables::Params;
use encore_generator::catalog::{Catalog, CatalogSizes};

use driver::{EpochChanges, EpochRecord, Schedule};

/// Prints latency, throughput, from-scratch, memory and delta-amplification tables for the
/// encore dataflow over the seeded generator workload.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Which measurement to run.
    #[arg(long, value_enum, default_value = "all")]
    which: Which,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Events loaded before the small epochs (latency, scratch), or grown to (memory,
    /// amplification).
    #[arg(long, default_value_t = 1_000_000)]
    load_events: usize,
    /// Worker counts to measure latency with; scratch and growth runs use the largest.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Epoch sizes (events) measured after the load.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    epoch_sizes: Vec<usize>,
    /// Epochs measured for each epoch size (same order as --epoch-sizes); small by default
    /// because after 1 M events a 10 000-event epoch takes seconds.
    #[arg(long, value_delimiter = ',', default_value = "200,30,10,3")]
    epoch_counts: Vec<usize>,
    /// Epoch size of the growth run (memory, amplification). 10 000 takes over 10 minutes to
    /// reach 1 M events on 2 cores (the epochs slow down as the data grows).
    #[arg(long, default_value_t = 100_000)]
    growth_epoch: usize,
    /// Events per row of the growth tables.
    #[arg(long, default_value_t = 100_000)]
    window: usize,
    /// SPEC §2 `B` (significant bits of the counts in the cosine, 0 = exact): every run uses
    /// the first value; `--which bits` runs each.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    count_bits: Vec<u32>,
    /// SPEC §2 `M` (`encore-flow --refresh-idle`): stale users each worker refreshes in the
    /// background per epoch, a number or `all`. Per worker, so 2 workers refresh twice as many
    /// per epoch as 1.
    #[arg(long, default_value_t = RefreshBudget::default())]
    refresh_idle: RefreshBudget,
    /// `--which bits`: event counts of state after which the epochs are measured.
    #[arg(long, value_delimiter = ',', default_value = "1000000,3000000,10000000")]
    checkpoints: Vec<usize>,
    /// `--which bits`: events per epoch while loading up to a checkpoint.
    #[arg(long, default_value_t = 1_000_000)]
    load_epoch: usize,
    /// `--which bits`: run one B in this process and print its rows (the parent starts one
    /// process per B, so that each peak RSS is its own).
    #[arg(long, hide = true)]
    bits_child: bool,
    /// Directory of the run's result file (JSON: commit, flags, machine, load average and every
    /// printed table's rows; see `report`); default target/bench-results.
    #[arg(long, value_name = "DIR")]
    results_dir: Option<PathBuf>,
}

impl Args {
    /// The default SPEC §2 parameters with the first `--count-bits`.
    fn params(&self) -> Params {
        Params { count_bits: self.count_bits.first().copied().unwrap_or(Params::default().count_bits), ..Params::default() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Latency,
    Scratch,
    Memory,
    Amplification,
    /// No dataflow: n(i) at each history insertion as the stream grows to --load-events, the
    /// fan-out that drives amplification (cheap enough for 10 M events).
    Reach,
    /// Per --count-bits value: figures after each of --checkpoints events of state.
    Bits,
    All,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.epoch_sizes.len() != args.epoch_counts.len() {
        bail!("--epoch-sizes and --epoch-counts need the same number of values");
    }
    if args.workers.is_empty() || args.workers.contains(&0) {
        bail!("--workers needs positive worker counts");
    }
    if args.load_events == 0 || args.growth_epoch == 0 || args.window == 0 || args.load_epoch == 0 {
        bail!("--load-events, --growth-epoch, --window and --load-epoch must be positive");
    }
    if args.count_bits.is_empty() || args.count_bits.iter().any(|&b| b > encore_core::MAX_COUNT_BITS) {
        bail!("--count-bits needs values from 0 to {}", encore_core::MAX_COUNT_BITS);
    }
    if args.checkpoints.is_empty() || args.checkpoints.windows(2).any(|w| w[0] >= w[1]) || args.checkpoints[0] == 0 {
        bail!("--checkpoints needs rising positive event counts");
    }
    if args.which == Which::Bits && args.bits_child {
        return bits::child(&args);
    }
    let recording = Recording::start("engine", args.results_dir.as_deref());
    if args.which == Which::Bits {
        bits::parent(&args)?;
        recording.finish()?;
        return Ok(());
    }
    let max_workers = args.workers.iter().copied().max().unwrap_or(1);
    let started = Instant::now();
    let catalog = Arc::new(Catalog::generate(args.seed, CatalogSizes::default()));
    println!(
        "encore engine bench: seed {}, {} users, {} tracks, params {:?}; catalog in {:.1} s; {} CPUs; {}",
        args.seed,
        catalog.sizes.users,
        catalog.sizes.tracks,
        args.params(),
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_average(),
    );

    let growth = matches!(args.which, Which::Memory | Which::Amplification | Which::All);
    if growth {
        // One run gives both tables.
        let records = growth_run(&catalog, &args, max_workers)?;
        print_amplification(&records, &args, max_workers);
        print_memory(&records, &args, max_workers);
    }
    match args.which {
        Which::Latency | Which::All => {
            let mut runs = Vec::new();
            for &workers in &args.workers {
                runs.push((workers, latency_run(&catalog, &args, workers)?));
            }
            print_latency(&runs, &args);
            print_scratch(&runs, &args);
        }
        Which::Scratch => {
            let records = latency_run(&catalog, &args, max_workers)?;
            print_scratch(&[(max_workers, records)], &args);
        }
        Which::Reach => print_reach(&catalog, &args),
        Which::Memory | Which::Amplification | Which::Bits => {}
    }
    println!("\ndone in {:.0} s; {}", started.elapsed().as_secs_f64(), load_average());
    recording.finish()?;
    Ok(())
}

/// The load (one epoch of `--load-events`) then the small epochs of every size.
fn latency_run(catalog: &Arc<Catalog>, args: &Args, workers: usize) -> Result<Vec<EpochRecord>> {
    let mut epochs = vec![args.load_events];
    for (&size, &count) in args.epoch_sizes.iter().zip(&args.epoch_counts) {
        epochs.extend(std::iter::repeat_n(size.max(1), count));
    }
    eprintln!("latency run: {workers} worker(s), {} epochs ... ({})", epochs.len(), load_average());
    let schedule =
        Schedule { workers, params: args.params(), refresh: args.refresh_idle, epochs, memory_after: BTreeSet::from([0]), reach: true };
    driver::run(catalog.clone(), &schedule).context("latency run")
}

/// Epochs of `--growth-epoch` up to `--load-events`, memory read at every window's end.
fn growth_run(catalog: &Arc<Catalog>, args: &Args, workers: usize) -> Result<Vec<EpochRecord>> {
    let count = args.load_events.div_ceil(args.growth_epoch);
    let epochs = vec![args.growth_epoch; count];
    let mut memory_after = BTreeSet::new();
    let mut events = 0;
    for (index, &size) in epochs.iter().enumerate() {
        let before = events;
        events += size;
        if events / args.window > before / args.window || index + 1 == count {
            memory_after.insert(index);
        }
    }
    eprintln!("growth run: {workers} worker(s), {count} epochs of {} ... ({})", args.growth_epoch, load_average());
    let schedule = Schedule { workers, params: args.params(), refresh: args.refresh_idle, epochs, memory_after, reach: true };
    driver::run(catalog.clone(), &schedule).context("growth run")
}

fn print_latency(runs: &[(usize, Vec<EpochRecord>)], args: &Args) {
    println!("\n## Latency vs epoch size (after loading {} events in one epoch; generation excluded)\n", args.load_events);
    table_header!("latency", "| workers | epoch events | epochs | p50 ms | p99 ms | max ms | events/s | CPU ms/epoch | neighbors rows/ev | recs rows/ev | mean n(i) at first listen |");
    println!("|--------:|-------------:|-------:|-------:|-------:|-------:|---------:|-------------:|------------------:|-------------:|--------------------------:|");
    for (workers, records) in runs {
        let mut next = 1;
        for (&size, &count) in args.epoch_sizes.iter().zip(&args.epoch_counts) {
            let Some(epochs) = records.get(next..next + count) else { break };
            next += count;
            let mut times: Vec<Duration> = epochs.iter().map(|r| r.engine).collect();
            times.sort_unstable();
            let total: Duration = times.iter().sum();
            let events: usize = epochs.iter().map(|r| r.events).sum();
            let mut changes = EpochChanges::default();
            epochs.iter().for_each(|r| changes.add(&r.changes));
            let firsts: u64 = epochs.iter().map(|r| r.first_listens).sum();
            let reach: u64 = epochs.iter().map(|r| r.first_listen_reach).sum();
            let cpu: Duration = epochs.iter().map(|r| r.cpu).sum();
            table_row!(
                "latency",
                "| {workers} | {size} | {count} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} |",
                ms(percentile(&times, 0.50)),
                ms(percentile(&times, 0.99)),
                ms(times.last().copied().unwrap_or_default()),
                events as f64 / total.as_secs_f64().max(1e-9),
                ms(cpu) / count.max(1) as f64,
                changes.neighbors.rows as f64 / events.max(1) as f64,
                changes.recommendations.rows as f64 / events.max(1) as f64,
                reach as f64 / firsts.max(1) as f64,
            );
        }
    }
}

fn print_scratch(runs: &[(usize, Vec<EpochRecord>)], args: &Args) {
    println!("\n## Incremental vs from scratch ({} events; scratch = all outputs computed in one epoch)\n", args.load_events);
    table_header!(
        "scratch",
        "| workers | scratch s | scratch events/s | RSS after load (process peak) | epoch events | median epoch ms | scratch / epoch |"
    );
    println!(
        "|--------:|----------:|-----------------:|------------------------------:|-------------:|----------------:|----------------:|"
    );
    for (workers, records) in runs {
        let Some(load) = records.first() else { continue };
        // VmHWM is process-wide: with several runs in one process, only the first's peak is its own.
        let memory = load.memory.map(|m| format!("{} ({})", gib(m.rss), gib(m.peak))).unwrap_or_else(|| "n/a".to_owned());
        let mut next = 1;
        for (&size, &count) in args.epoch_sizes.iter().zip(&args.epoch_counts) {
            let Some(epochs) = records.get(next..next + count) else { break };
            next += count;
            if size < 1_000 {
                continue;
            }
            let mut times: Vec<Duration> = epochs.iter().map(|r| r.engine).collect();
            times.sort_unstable();
            let median = percentile(&times, 0.5);
            table_row!(
                "scratch",
                "| {workers} | {:.1} | {:.0} | {memory} | {size} | {:.1} | {:.0}× |",
                load.engine.as_secs_f64(),
                load.events as f64 / load.engine.as_secs_f64().max(1e-9),
                ms(median),
                load.engine.as_secs_f64() / median.as_secs_f64().max(1e-9),
            );
        }
    }
}

/// The growth run's records summed per window (a window ends where memory was read).
fn windows(records: &[EpochRecord]) -> Vec<Window> {
    let mut rows = Vec::new();
    let mut window = Window::default();
    for record in records {
        window.end += record.events;
        window.changes.add(&record.changes);
        window.time += record.engine;
        window.first_listens += record.first_listens;
        window.reach += record.first_listen_reach;
        if record.memory.is_some() {
            let start = window.end;
            rows.push(std::mem::take(&mut window));
            window.start = start;
            window.end = start;
        }
    }
    rows
}

/// One row of the growth tables.
#[derive(Default)]
struct Window {
    start: usize,
    end: usize,
    changes: EpochChanges,
    time: Duration,
    first_listens: u64,
    reach: u64,
}

fn print_amplification(records: &[EpochRecord], args: &Args, workers: usize) {
    println!("\n## Delta amplification (epochs of {} events, {workers} workers): output changes per input event\n", args.growth_epoch);
    println!("rows = distinct keys inserted/deleted/changed per epoch, summed; upd = differential updates (a changed row = 2).\n");
    table_header!("amplification", "| events | neighbors rows/ev | neighbors upd/ev | recs rows/ev | recs upd/ev | stats rows/ev | stats upd/ev | events/s | first listens/ev | mean n(i) at first listen |");
    println!("|-------:|------------------:|-----------------:|-------------:|------------:|--------------:|-------------:|---------:|-----------------:|--------------------------:|");
    for Window { start, end, changes, time, first_listens, reach } in windows(records) {
        let events = (end - start) as f64;
        let per = |n: u64| n as f64 / events;
        table_row!(
            "amplification",
            "| {}–{} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.3} | {:.0} |",
            short(start),
            short(end),
            per(changes.neighbors.rows),
            per(changes.neighbors.updates),
            per(changes.recommendations.rows),
            per(changes.recommendations.updates),
            per(changes.stats.rows),
            per(changes.stats.updates),
            events / time.as_secs_f64().max(1e-9),
            first_listens as f64 / events,
            reach as f64 / first_listens.max(1) as f64,
        );
    }
}

fn print_memory(records: &[EpochRecord], args: &Args, workers: usize) {
    println!(
        "\n## Memory (epochs of {} events, {workers} workers, default parameters): process RSS after each window\n",
        args.growth_epoch
    );
    table_header!("memory", "| events | VmRSS | VmHWM (peak) | epoch p99 ms in window |");
    println!("|-------:|------:|-------------:|-----------------------:|");
    let mut next = 0;
    for record_index in 0..records.len() {
        let Some(memory) = records[record_index].memory else { continue };
        let mut times: Vec<Duration> = records[next..=record_index].iter().map(|r| r.engine).collect();
        times.sort_unstable();
        next = record_index + 1;
        let events: usize = records[..=record_index].iter().map(|r| r.events).sum();
        table_row!("memory", "| {} | {} | {} | {:.1} |", short(events), gib(memory.rss), gib(memory.peak), ms(percentile(&times, 0.99)));
    }
}

/// Replays the generator's listens through an emulation of H(u) (the `K` tracks with the
/// latest listen; arrival order stands in for event time, which rises per user) and prints,
/// per `--window`, how often a history gains a track and the n(i) of that track afterwards.
/// Each such insertion changes n(i), hence s(i,j) for every pair of `i`, hence — for every
/// `j` in N(i) — score(u,j) of each of the n(i) users holding `i`: about 2·k·n(i) updates of
/// the score collection before the top-N, whatever the epoch size.
fn print_reach(catalog: &Arc<Catalog>, args: &Args) {
    let params = args.params();
    let mut stream = encore_generator::stream::EventStream::new(catalog, 0.0);
    let mut histories: Vec<Vec<(u64, u64)>> = vec![Vec::new(); catalog.sizes.users as usize + 1];
    let mut n: Vec<u64> = vec![0; catalog.sizes.tracks as usize + 1];
    let mut payload = Vec::with_capacity(512);
    println!("\n## Reach (no dataflow): history insertions and n(i) after them, K = {}, k = {}\n", params.history_cap, params.neighbors);
    table_header!(
        "reach",
        "| events | insertions/ev | evictions/ev | mean n(i) at insertion | max n(i) | est. score updates/ev (2·k·n·ins) |"
    );
    println!("|-------:|--------------:|-------------:|-----------------------:|---------:|----------------------------------:|");
    let (mut insertions, mut evictions, mut reach) = (0u64, 0u64, 0u64);
    let mut start = 0;
    for sequence in 0..args.load_events as u64 {
        stream.next_message(&mut payload);
        if let Ok(event) = encore_core::parse_event(&payload) {
            let (user, track) = (event.user_id as usize, event.track_id as usize);
            if event.is_listen() && user < histories.len() && track < n.len() {
                let history = &mut histories[user];
                if let Some(entry) = history.iter_mut().find(|entry| entry.0 == track as u64) {
                    entry.1 = sequence;
                } else {
                    history.push((track as u64, sequence));
                    n[track] += 1;
                    insertions += 1;
                    reach += n[track];
                    if history.len() > params.history_cap {
                        // Evict the track with the oldest latest listen.
                        if let Some((oldest, _)) = history.iter().enumerate().min_by_key(|(_, entry)| entry.1) {
                            let (evicted, _) = history.swap_remove(oldest);
                            n[evicted as usize] -= 1;
                            evictions += 1;
                        }
                    }
                }
            }
        }
        let end = sequence as usize + 1;
        if end.is_multiple_of(args.window) || end == args.load_events {
            let events = (end - start) as f64;
            let mean = reach as f64 / insertions.max(1) as f64;
            table_row!(
                "reach",
                "| {}–{} | {:.3} | {:.3} | {:.0} | {} | {:.0} |",
                short(start),
                short(end),
                insertions as f64 / events,
                evictions as f64 / events,
                mean,
                n.iter().max().copied().unwrap_or(0),
                2.0 * params.neighbors as f64 * mean * insertions as f64 / events,
            );
            (insertions, evictions, reach, start) = (0, 0, 0, end);
        }
    }
}

/// The `q` quantile of sorted `times` (nearest rank).
fn percentile(times: &[Duration], q: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len());
    times[rank - 1]
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn short(events: usize) -> String {
    if events >= 1_000_000 && events.is_multiple_of(100_000) {
        format!("{:.1}M", events as f64 / 1e6)
    } else if events >= 1_000 && events.is_multiple_of(1_000) {
        format!("{}k", events / 1_000)
    } else {
        events.to_string()
    }
}

/// The 1/5/15-minute load average: other engineers share the machine.
fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(text) => format!("loadavg {}", text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        Err(_) => "loadavg n/a".to_owned(),
    }
}
