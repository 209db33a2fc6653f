//! `--which bits`: what the count precision `B` of SPEC §2 step 4 does to the work per event as
//! the state grows.
//!
//! ```text
//!  parent ── for each --count-bits B ──► child process (its own VmHWM)
//!                                          load in epochs of --load-epoch up to 1 M events
//!                                          ├─ measure: --epoch-counts epochs of each --epoch-sizes
//!                                          load on up to 3 M (measured events count as loaded)
//!                                          ├─ measure
//!                                          load on up to 10 M
//!                                          └─ measure
//!         ◄── one table row per (checkpoint, epoch size) + a machine-readable line
//!  parent: the rows, then per B and epoch size the last checkpoint against the first
//! ```
//!
//! The target this answers (issue 20): at the default `B`, CPU per event and row changes per
//! event after 10 M events within 1.5× of those after 1 M. CPU time is the whole process's
//! (all workers) over the timed spans, so it barely moves when another program shares the
//! cores, unlike the wall-clock latencies beside it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use encore_benches::{table_header, table_row};
use encore_dataflow::tables::Params;
use encore_generator::catalog::{Catalog, CatalogSizes};

use super::driver::{self, EpochChanges, EpochRecord, Schedule};
use super::{gib, load_average, ms, percentile, short, Args};

/// Prefix of the child's machine-readable lines on its stdout.
const MACHINE: &str = "#bits ";

/// One measured row, as the parent reads it back.
#[derive(Clone, Copy, Debug)]
struct Row {
    bits: u32,
    state: usize,
    epoch_events: usize,
    cpu_us_per_event: f64,
    neighbor_rows: f64,
    recommendation_rows: f64,
    events_per_second: f64,
    peak_bytes: u64,
}

impl Row {
    fn to_line(self) -> String {
        format!(
            "{MACHINE}{} {} {} {} {} {} {} {}",
            self.bits,
            self.state,
            self.epoch_events,
            self.cpu_us_per_event,
            self.neighbor_rows,
            self.recommendation_rows,
            self.events_per_second,
            self.peak_bytes
        )
    }

    fn parse(line: &str) -> Result<Row> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [bits, state, epoch_events, cpu, neighbors, recommendations, rate, peak] = fields[..] else {
            bail!("a child's row has {} fields: {line:?}", fields.len());
        };
        let bad = || format!("a child's row does not parse: {line:?}");
        Ok(Row {
            bits: bits.parse().with_context(bad)?,
            state: state.parse().with_context(bad)?,
            epoch_events: epoch_events.parse().with_context(bad)?,
            cpu_us_per_event: cpu.parse().with_context(bad)?,
            neighbor_rows: neighbors.parse().with_context(bad)?,
            recommendation_rows: recommendations.parse().with_context(bad)?,
            events_per_second: rate.parse().with_context(bad)?,
            peak_bytes: peak.parse().with_context(bad)?,
        })
    }
}

fn workers(args: &Args) -> usize {
    args.workers.iter().copied().max().unwrap_or(1)
}

/// Starts one child per `B`, prints its rows as they come, then the flatness summary.
pub fn parent(args: &Args) -> Result<()> {
    let workers = workers(args);
    let list = |values: &[usize]| values.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    println!(
        "encore engine bench, count bits: seed {}, {workers} workers, default SPEC §2 parameters but B; {} CPUs; {}",
        args.seed,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_average()
    );
    println!(
        "\n## Work per event by count precision B, after loading {} events in epochs of {}\n",
        list(&args.checkpoints),
        short(args.load_epoch)
    );
    println!("Each B runs in a fresh process. Latencies and events/s are wall clock; CPU is the process's user + system time over the");
    println!("same spans (all workers). Row changes count distinct keys changed per input event. RSS is read after each checkpoint's");
    println!("measured epochs; the peak is the process's VmHWM so far (loading included). Internal work per event: pairs visited");
    println!("because a rounded n changed, similarities evaluated that changed; users refreshed per epoch (each costs one user's");
    println!("K·k candidates): those that listened in it (active), and stale ones up to --refresh-idle per worker (background).\n");
    table_header!("bits", "| B | state | epoch events | epochs | p50 ms | p99 ms | max ms | events/s | CPU ms/epoch | CPU µs/event | neighbors rows/ev | recs rows/ev | pairs rescored/ev | s changes/ev | refreshed active/epoch | refreshed background/epoch | loading events/s | RSS | peak RSS |");
    println!("|--:|------:|-------------:|-------:|-------:|-------:|-------:|---------:|-------------:|-------------:|------------------:|-------------:|------------------:|-------------:|-----------------------:|---------------------------:|-----------------:|----:|---------:|");
    let mut rows = Vec::new();
    for &bits in &args.count_bits {
        let mut child = Command::new(std::env::current_exe().context("finding this benchmark's binary")?)
            .args(["--which", "bits", "--bits-child", "--count-bits", &bits.to_string()])
            .args(["--seed", &args.seed.to_string(), "--workers", &workers.to_string()])
            .args(["--checkpoints", &list(&args.checkpoints), "--load-epoch", &args.load_epoch.to_string()])
            .args(["--epoch-sizes", &list(&args.epoch_sizes), "--epoch-counts", &list(&args.epoch_counts)])
            .args(["--refresh-idle", &args.refresh_idle.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a child run")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the child's output")?;
            match line.strip_prefix(MACHINE) {
                Some(row) => rows.push(Row::parse(row)?),
                None => table_row!("bits", "{line}"),
            }
        }
        let status = child.wait().context("waiting for a child run")?;
        if !status.success() {
            bail!("the run with B = {bits} failed ({status})");
        }
    }
    print_flatness(&rows, args);
    println!("\n{}", load_average());
    Ok(())
}

/// Per `B` and epoch size: the last checkpoint against the first, and the 1.5× target.
fn print_flatness(rows: &[Row], args: &Args) {
    let (Some(&first), Some(&last)) = (args.checkpoints.first(), args.checkpoints.last()) else { return };
    println!(
        "\n## Work per event after {} against after {} events (target at the default B: each ratio ≤ 1.5)\n",
        short(last),
        short(first)
    );
    table_header!("flatness", "| B | epoch events | CPU µs/event | ratio | neighbors rows/ev | ratio | recs rows/ev | ratio | events/s at {} | peak RSS | flat? |", short(last));
    println!(
        "|--:|-------------:|-------------:|------:|------------------:|------:|-------------:|------:|---------:|---------:|:-----:|"
    );
    for &bits in &args.count_bits {
        for &size in &args.epoch_sizes {
            let find = |state: usize| rows.iter().find(|r| r.bits == bits && r.state == state && r.epoch_events == size);
            let (Some(a), Some(b)) = (find(first), find(last)) else { continue };
            let ratio = |x: f64, y: f64| if x > 0.0 { y / x } else { f64::NAN };
            let ratios = [
                ratio(a.cpu_us_per_event, b.cpu_us_per_event),
                ratio(a.neighbor_rows, b.neighbor_rows),
                ratio(a.recommendation_rows, b.recommendation_rows),
            ];
            let flat = ratios.iter().all(|&r| r <= 1.5);
            table_row!(
                "flatness",
                "| {bits} | {size} | {:.1} → {:.1} | {:.2}× | {:.2} → {:.2} | {:.2}× | {:.2} → {:.2} | {:.2}× | {:.0} | {} | {} |",
                a.cpu_us_per_event,
                b.cpu_us_per_event,
                ratios[0],
                a.neighbor_rows,
                b.neighbor_rows,
                ratios[1],
                a.recommendation_rows,
                b.recommendation_rows,
                ratios[2],
                b.events_per_second,
                gib(b.peak_bytes),
                if flat { "yes" } else { "no" },
            );
        }
    }
}

/// What the schedule does at one checkpoint: which epochs load, which are measured.
struct Checkpoint {
    events: usize,
    load: Range<usize>,
    measured: Vec<(usize, Range<usize>)>,
}

/// One `B` in this process: the schedule, the run, one row per (checkpoint, epoch size).
pub fn child(args: &Args) -> Result<()> {
    let bits = args.count_bits[0];
    let workers = workers(args);
    let mut epochs = Vec::new();
    let mut memory_after = BTreeSet::new();
    let mut plan = Vec::new();
    let mut fed = 0;
    for &events in &args.checkpoints {
        if events < fed {
            bail!("checkpoint {events} is below the {fed} events fed before it (measured epochs count too)");
        }
        let load_start = epochs.len();
        let mut remaining = events - fed;
        while remaining > 0 {
            let size = remaining.min(args.load_epoch);
            epochs.push(size);
            remaining -= size;
        }
        fed = events;
        let load = load_start..epochs.len();
        let mut measured = Vec::new();
        for (&size, &count) in args.epoch_sizes.iter().zip(&args.epoch_counts) {
            let start = epochs.len();
            epochs.extend(std::iter::repeat_n(size.max(1), count));
            fed += size.max(1) * count;
            measured.push((size, start..epochs.len()));
        }
        if let Some(last) = epochs.len().checked_sub(1) {
            memory_after.insert(last);
        }
        plan.push(Checkpoint { events, load, measured });
    }
    eprintln!("bits run: B = {bits}, {workers} workers, {} epochs, {fed} events ... ({})", epochs.len(), load_average());
    let catalog = Arc::new(Catalog::generate(args.seed, CatalogSizes::default()));
    let params = Params { count_bits: bits, ..Params::default() };
    let schedule = Schedule { workers, params, refresh: args.refresh_idle, epochs, memory_after, reach: false };
    let records = driver::run(catalog, &schedule).with_context(|| format!("run with B = {bits}"))?;

    for checkpoint in &plan {
        let loading: &[EpochRecord] = &records[checkpoint.load.clone()];
        let load_time: Duration = loading.iter().map(|r| r.engine).sum();
        let load_events: usize = loading.iter().map(|r| r.events).sum();
        let loading_rate =
            if load_events > 0 { format!("{:.0}", load_events as f64 / load_time.as_secs_f64().max(1e-9)) } else { "—".to_owned() };
        let memory = checkpoint.measured.last().and_then(|(_, range)| records.get(range.end.checked_sub(1)?)).and_then(|r| r.memory);
        for (size, range) in &checkpoint.measured {
            let epochs = &records[range.clone()];
            if epochs.is_empty() {
                continue;
            }
            let mut times: Vec<Duration> = epochs.iter().map(|r| r.engine).collect();
            times.sort_unstable();
            let total: Duration = times.iter().sum();
            let events: usize = epochs.iter().map(|r| r.events).sum();
            let cpu: Duration = epochs.iter().map(|r| r.cpu).sum();
            let mut changes = EpochChanges::default();
            epochs.iter().for_each(|r| changes.add(&r.changes));
            let work = |field: fn(&EpochRecord) -> u64| epochs.iter().map(field).sum::<u64>() as f64;
            let per_event = |field: fn(&EpochRecord) -> u64| work(field) / events.max(1) as f64;
            let row = Row {
                bits,
                state: checkpoint.events,
                epoch_events: *size,
                cpu_us_per_event: cpu.as_secs_f64() * 1e6 / events.max(1) as f64,
                neighbor_rows: changes.neighbors.rows as f64 / events.max(1) as f64,
                recommendation_rows: changes.recommendations.rows as f64 / events.max(1) as f64,
                events_per_second: events as f64 / total.as_secs_f64().max(1e-9),
                peak_bytes: memory.map_or(0, |m| m.peak),
            };
            println!(
                "| {bits} | {} | {size} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {loading_rate} | {} | {} |",
                short(checkpoint.events),
                epochs.len(),
                ms(percentile(&times, 0.50)),
                ms(percentile(&times, 0.99)),
                ms(times.last().copied().unwrap_or_default()),
                row.events_per_second,
                ms(cpu) / epochs.len() as f64,
                row.cpu_us_per_event,
                row.neighbor_rows,
                row.recommendation_rows,
                per_event(|r| r.work.pairs_rescored),
                per_event(|r| r.work.similarities_changed),
                work(|r| r.work.refreshed_active) / epochs.len() as f64,
                work(|r| r.work.refreshed_background) / epochs.len() as f64,
                memory.map_or_else(|| "n/a".to_owned(), |m| gib(m.rss)),
                memory.map_or_else(|| "n/a".to_owned(), |m| gib(m.peak)),
            );
            println!("{}", row.to_line());
        }
    }
    Ok(())
}
