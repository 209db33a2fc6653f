//! The benchmark driver: the production dataflow ([`encore_dataflow::pipeline::install`]) fed by
//! the seeded generator, one epoch at a time, with a schedule of epoch sizes.
//!
//! ```text
//!  every worker: EventStream (same seed) ──► keep lines n ≡ w (mod W) ──► buffer
//!                                                                          │ barrier
//!                       timed: feed buffer ─► advance_to(e+1) ─► wait_for_sink(e+1)
//!  worker 0:  CountingSink  (keeps each epoch's changes; rows counted after the timed span)
//!             /proc/self/status (VmRSS, VmHWM) after chosen epochs
//! ```
//!
//! `encore_dataflow::job::file::run` has one epoch size for a whole run; the benchmarks need a
//! big load followed by small epochs, so this driver repeats its skeleton (the same
//! `pipeline::install`, the same `Inputs::feed` parsing JSON, the same wait on the sink's probe)
//! with a per-epoch size.
//!
//! **What is timed.** Every worker runs its own copy of the generator (the same seed gives
//! the same bytes) and keeps its share of the lines, as the file job (`job::file::run`, feeding through `source::file::feed`) does with a file. The
//! generation happens *outside* the timed span: all workers generate an epoch's lines (in
//! chunks of [`CHUNK`] for big epochs), meet at a barrier, then worker 0 starts its clock,
//! feeds (JSON parsing included), closes the epoch and waits until the sink on worker 0 has
//! received it. So an epoch's latency is "input available in memory → every output change of
//! the epoch delivered to the sink". The sink only keeps the changes, as the pipeline's hands
//! them to its committer thread; worker 0 counts their rows after the timed span.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use encore_dataflow::engine::work::Work;
use encore_dataflow::engine::Epoch;
use encore_dataflow::engine::RefreshBudget;
use encore_dataflow::pipeline;
use encore_dataflow::sink::EpochSink;
use encore_dataflow::tables::{Changes, Params};
use encore_generator::catalog::Catalog;
use encore_generator::stream::EventStream;

/// Lines generated (and fed) at a time within a big epoch: bounds the generated-but-not-fed
/// buffer to ~15 MB per worker, so that a 10 M-event epoch does not hold 1.5 GB of JSON.
pub const CHUNK: usize = 100_000;

/// One benchmark run: a fresh dataflow fed epochs of the given sizes.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Timely workers (threads of this process).
    pub workers: usize,
    /// SPEC §2 parameters.
    pub params: Params,
    /// SPEC §2 `M`, stale users each worker refreshes per epoch (`--refresh-idle`).
    pub refresh: RefreshBudget,
    /// Events of each epoch, in order.
    pub epochs: Vec<usize>,
    /// Epoch indices after which worker 0 reads the process's memory figures.
    pub memory_after: BTreeSet<usize>,
    /// Whether worker 0 tracks n(i) at first listens ([`EpochRecord::first_listen_reach`]):
    /// a set of every (user, track) seen, hundreds of MB at 10 M events, which runs that
    /// report peak memory leave off.
    pub reach: bool,
}

/// Output row changes of one epoch for one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableChanges {
    /// Differential updates (a changed row counts twice: `-old`, `+new`).
    pub updates: u64,
    /// Distinct keys touched: rows inserted, deleted or changed.
    pub rows: u64,
}

impl TableChanges {
    fn of<K: Ord + Copy, V>(changes: &[(K, V, i64)]) -> TableChanges {
        let mut keys: Vec<K> = changes.iter().map(|change| change.0).collect();
        keys.sort_unstable();
        keys.dedup();
        TableChanges { updates: changes.len() as u64, rows: keys.len() as u64 }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: TableChanges) {
        self.updates += other.updates;
        self.rows += other.rows;
    }
}

/// Row changes of one epoch, per SPEC §3 table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochChanges {
    /// `track_neighbors`.
    pub neighbors: TableChanges,
    /// `user_recommendations`.
    pub recommendations: TableChanges,
    /// `track_stats`.
    pub stats: TableChanges,
}

impl EpochChanges {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &EpochChanges) {
        self.neighbors.add(other.neighbors);
        self.recommendations.add(other.recommendations);
        self.stats.add(other.stats);
    }
}

/// The process's resident memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak resident size so far.
    pub peak: u64,
}

impl Memory {
    /// Reads `/proc/self/status`; `None` where it is unavailable (not Linux).
    pub fn read() -> Option<Memory> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        };
        Some(Memory { rss: field("VmRSS:")?, peak: field("VmHWM:")? })
    }
}

/// User + system CPU time of this process so far (`/proc/self/stat`, 10 ms ticks); zero where
/// unavailable.
pub fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Duration::ZERO };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return Duration::ZERO };
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on every Linux the kernel ABI allows /proc to report in.
    Duration::from_millis(ticks * 10)
}

/// What worker 0 saw of one epoch.
#[derive(Clone, Debug, Default)]
pub struct EpochRecord {
    /// Events (lines) of the epoch, all workers together.
    pub events: usize,
    /// Timed span: feed, close, wait for the sink (generation excluded).
    pub engine: Duration,
    /// Time worker 0 spent generating the epoch's lines (not part of `engine`).
    pub generation: Duration,
    /// CPU time of the whole process (all workers) over the timed spans: unlike wall time,
    /// it barely moves when other programs share the cores.
    pub cpu: Duration,
    /// Output row changes of the epoch.
    pub changes: EpochChanges,
    /// Memory after the epoch, when asked for.
    pub memory: Option<Memory>,
    /// First listens of a (user, track) in the epoch: the events that change some n(i).
    pub first_listens: u64,
    /// Σ n(i) over those first listens (n counted after the listen, history cap ignored):
    /// how many users' candidate scores a change of n(i) can reach.
    pub first_listen_reach: u64,
    /// The engine's internal work in the epoch, all workers ([`Work`]).
    pub work: Work,
}

/// n(i) as the generator's stream grows, computed beside the dataflow (worker 0, untimed) to
/// explain the amplification: a first listen of `i` changes n(i), hence s(i,j) for every
/// pair of `i`, hence the score of `j` for each of the n(i) users with `i` in their history.
/// The history cap K is ignored, so n(i) is the listener count (an upper bound of SPEC's n).
#[derive(Default)]
struct Reach {
    seen: HashSet<(u64, u64)>,
    listeners: HashMap<u64, u64>,
}

impl Reach {
    fn observe(&mut self, payload: &[u8], record: &mut EpochRecord) {
        let Ok(event) = encore_core::parse_event(payload) else { return };
        if event.is_listen() && self.seen.insert((event.user_id, event.track_id)) {
            let n = self.listeners.entry(event.track_id).or_default();
            *n += 1;
            record.first_listens += 1;
            record.first_listen_reach += *n;
        }
    }
}

/// Receives every closed epoch's changes (worker 0). It only keeps them, as the pipeline's
/// sink only hands them to its committer thread; the driver counts them after the epoch's
/// timed span ([`CountingSink::count`]), so that the bench's own bookkeeping is not timed.
struct CountingSink {
    received: Arc<Mutex<Vec<(Epoch, Changes)>>>,
}

impl EpochSink for CountingSink {
    fn epoch_closed(&mut self, epoch: Epoch, changes: Changes) {
        // A poisoned lock means a worker panicked; the run reports that failure.
        if let Ok(mut received) = self.received.lock() {
            received.push((epoch, changes));
        }
    }
}

impl CountingSink {
    /// Counts the row changes of the epochs received so far into `counts`.
    fn count(received: &Mutex<Vec<(Epoch, Changes)>>, counts: &Mutex<BTreeMap<Epoch, EpochChanges>>) {
        let received = received.lock().map(|mut received| std::mem::take(&mut *received)).unwrap_or_default();
        if let Ok(mut counts) = counts.lock() {
            for (epoch, changes) in received {
                counts.insert(
                    epoch,
                    EpochChanges {
                        neighbors: TableChanges::of(&changes.track_neighbors),
                        recommendations: TableChanges::of(&changes.user_recommendations),
                        stats: TableChanges::of(&changes.track_stats),
                    },
                );
            }
        }
    }
}

/// Runs `schedule` over `catalog`'s event stream; returns one record per epoch.
pub fn run(catalog: Arc<Catalog>, schedule: &Schedule) -> Result<Vec<EpochRecord>> {
    let workers = schedule.workers.max(1);
    let counts: Arc<Mutex<BTreeMap<Epoch, EpochChanges>>> = Arc::default();
    let received: Arc<Mutex<Vec<(Epoch, Changes)>>> = Arc::default();
    let records: Arc<Mutex<Vec<EpochRecord>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(workers));
    let schedule = Arc::new(schedule.clone());
    let (counts_in, records_in) = (counts.clone(), records.clone());

    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index() as u64;
        let peers = worker.peers() as u64;
        let sink = CountingSink { received: received.clone() };
        let mut inputs = pipeline::install(worker, &schedule.params, pipeline::Options { refresh: schedule.refresh, ..Default::default() }, sink);
        let mut stream = EventStream::new(&catalog, 0.0);
        let mut payload = Vec::with_capacity(512);
        // This worker's lines of the current chunk, back to back, and where each ends.
        let mut blob: Vec<u8> = Vec::new();
        let mut ends: Vec<usize> = Vec::new();
        let mut line_number = 0u64;
        let mut reach = Reach::default();

        for (epoch_index, &size) in schedule.epochs.iter().enumerate() {
            let next_epoch = epoch_index as Epoch + 1;
            let mut record = EpochRecord { events: size, ..EpochRecord::default() };
            let work_before = Work::total();
            let mut remaining = size;
            loop {
                let chunk = remaining.min(CHUNK);
                let generating = Instant::now();
                blob.clear();
                ends.clear();
                for _ in 0..chunk {
                    stream.next_message(&mut payload);
                    if index == 0 && schedule.reach {
                        reach.observe(&payload, &mut record);
                    }
                    if line_number % peers == index {
                        blob.extend_from_slice(&payload);
                        ends.push(blob.len());
                    }
                    line_number += 1;
                }
                record.generation += generating.elapsed();
                // Everyone has its lines: start the clock together.
                barrier.wait();
                let feeding = Instant::now();
                let cpu_before = process_cpu();
                let mut start = 0;
                for &end in &ends {
                    inputs.feed(&blob[start..end], "bench", 0, 0);
                    start = end;
                }
                remaining -= chunk;
                if remaining == 0 {
                    inputs.advance_to(next_epoch);
                    inputs.wait_for_sink(worker, next_epoch);
                    record.engine += feeding.elapsed();
                    record.cpu += process_cpu().saturating_sub(cpu_before);
                    break;
                }
                // Let the exchange move the chunk on while the next one is generated.
                worker.step();
                record.engine += feeding.elapsed();
                record.cpu += process_cpu().saturating_sub(cpu_before);
            }
            if index == 0 {
                // Every worker finished the epoch (the sink saw it closed), so its counts are in.
                record.work = Work::total().since(work_before);
                CountingSink::count(&received, &counts_in);
                if schedule.memory_after.contains(&epoch_index) {
                    record.memory = Memory::read();
                    // Progress on stderr, so that a run cut short still says how far it got.
                    let memory = record.memory.unwrap_or_default();
                    eprintln!(
                        "  epoch {epoch_index}: {line_number} events fed, this epoch {:.3} s, rss {:.2} GiB, peak {:.2} GiB; neighbors {:?}, recs {:?}",
                        record.engine.as_secs_f64(),
                        memory.rss as f64 / (1u64 << 30) as f64,
                        memory.peak as f64 / (1u64 << 30) as f64,
                        counts_in.lock().ok().and_then(|c| c.get(&(epoch_index as Epoch)).map(|c| c.neighbors)),
                        counts_in.lock().ok().and_then(|c| c.get(&(epoch_index as Epoch)).map(|c| c.recommendations)),
                    );
                }
                if let Ok(mut records) = records_in.lock() {
                    records.push(record);
                }
            }
        }
        inputs.close();
        while worker.step_or_park(None) {}
        CountingSink::count(&received, &counts_in);
    })
    .map_err(|error| anyhow!("starting timely: {error}"))?;
    for result in guards.join() {
        result.map_err(|panic| anyhow!("a worker failed: {panic}"))?;
    }

    let counts = std::mem::take(&mut *counts.lock().map_err(|_| anyhow!("sink lock poisoned"))?);
    let mut records = std::mem::take(&mut *records.lock().map_err(|_| anyhow!("records lock poisoned"))?);
    // Epoch e's changes are stamped with time e; an epoch without changes has no entry.
    for (epoch, changes) in counts {
        if let Some(record) = records.get_mut(epoch as usize) {
            record.changes = changes;
        }
    }
    Ok(records)
}
