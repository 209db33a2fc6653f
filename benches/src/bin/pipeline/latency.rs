//! Latency from produce time to the commit that contains the event, at a steady rate.
//!
//! ```text
//!  encore-flow (live, SIGINT at the end) on the schema of a caught-up run: replay, then live
//!       ▲ sends one marker message at once and waits for its commit (the job is then live);
//!         meanwhile notes when every worker logged "replay read" (its consumer's part)
//!  producer: message i sent at t0 + i/rate (send time kept) ──► delivery (i, partition, offset)
//!  poller:   encore_progress every --poll-ms ──► (partition, next_offset, seen at)
//!  latency(i) = first time next_offset(partition) > offset − send time(i)
//!  sink load: result-table row changes (pg_stat_user_tables) and committed offsets,
//!             before the job starts and after it stopped ─► row changes per event
//! ```
//!
//! Messages sent during the first `warmup` seconds are left out of the percentiles (the job's
//! first live epochs and the producer's connection). After the sending ends the job gets
//! `drain` more seconds to commit everything; a message still not committed then has no
//! latency, is counted as such, and makes any percentile it falls into "above the drain".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use encore_generator::stream::EventStream;

use crate::flow::{self, FlowTarget, Layout};
use crate::kafka::{BenchProducer, Kafka};
use crate::pg::{self, ProgressPoller};
use crate::restart::Marker;

/// One latency run's settings.
pub struct Plan<'a> {
    /// Where encore-flow runs.
    pub target: &'a FlowTarget,
    /// Its layout.
    pub layout: Layout,
    /// The schema of a caught-up run over the topic (its offsets are the replay target).
    pub schema: &'a str,
    /// Flags for the live job (epochs).
    pub args: &'a [String],
    /// Messages per second to produce.
    pub rate: f64,
    /// Seconds of producing.
    pub seconds: f64,
    /// Seconds at the start left out of the percentiles.
    pub warmup: f64,
    /// Seconds after the last send for the job to commit everything.
    pub drain: f64,
    /// Interval of the `encore_progress` polls.
    pub poll: Duration,
    /// Most seconds to wait for the replay (and for a catch-up run).
    pub timeout: Duration,
    /// Most seconds for the job to stop after SIGINT before it is killed.
    pub stop_timeout: Duration,
    /// Flags of a catch-up run (`--until-caught-up` is added) for when the schema is behind
    /// the topic (an earlier latency run that did not commit everything).
    pub catch_up_args: &'a [String],
}

/// What one latency run measured.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Messages sent.
    pub sent: u64,
    /// Achieved send rate, messages/s.
    pub send_rate: f64,
    /// Messages in the percentiles (sent after the warm-up).
    pub measured: u64,
    /// Of those, not committed by the end of the drain.
    pub uncommitted: u64,
    /// Latencies (committed, after the warm-up), sorted.
    pub latencies: Vec<Duration>,
    /// Seconds until the consumers had read the replayed messages (every worker's `replay
    /// read` line), if seen before the marker's commit.
    pub replay_seconds: Option<f64>,
    /// Seconds until a marker message sent then was committed: the replay's work is done.
    pub ready_seconds: f64,
    /// Polls made, and the mean interval between them.
    pub polls: u64,
    /// Mean time between polls.
    pub poll_interval: Duration,
    /// Peak RSS per process.
    pub peak_rss: Vec<u64>,
    /// Commits the poller saw while it ran (two within one poll interval count once).
    pub commits: u64,
    /// Messages the job committed from its start to its stop.
    pub committed_messages: u64,
    /// Row changes of the result tables from the job's start to its stop.
    pub row_changes: u64,
    /// The oldest stale user's refresh age (`encore_stale_refresh_age_seconds`, largest over
    /// the processes), sampled while producing: its largest value, and after the drain.
    pub stale_age_max: Option<f64>,
    /// See [`stale_age_max`](Self::stale_age_max): after the drain.
    pub stale_age_end: Option<f64>,
    /// The most stale users one process had at a sample (`encore_stale_users`).
    pub stale_users_max: Option<f64>,
}

impl Measured {
    /// Result-table row changes per committed message: what each event costs the database.
    pub fn row_changes_per_event(&self) -> Option<f64> {
        (self.committed_messages > 0).then(|| self.row_changes as f64 / self.committed_messages as f64)
    }

    /// The `q` quantile (nearest rank) over all measured messages; `None` when it falls
    /// among the uncommitted ones (above the drain time).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.measured == 0 {
            return None;
        }
        let rank = ((q * self.measured as f64).ceil() as usize).clamp(1, self.measured as usize);
        self.latencies.get(rank - 1).copied()
    }
}

/// Runs `plan`, producing the next messages of `stream`; `ends` (one past the last offset
/// per partition of the topic) grows by what was produced.
pub fn run(plan: &Plan<'_>, url: &str, kafka: &Kafka, stream: &mut EventStream, ends: &mut BTreeMap<i32, i64>) -> Result<Measured> {
    if plan.rate <= 0.0 || plan.seconds <= 0.0 {
        bail!("latency run needs a positive rate and duration");
    }
    let target = plan.target;
    let committed = pg::committed(url, plan.schema, &target.topic)?;
    if ends.iter().any(|(p, end)| committed.get(p).is_none_or(|c| c < end)) {
        // Start from a caught-up state, or the backlog would count as latency.
        eprintln!("  schema {} is behind the topic: catching up first", plan.schema);
        let mut args = plan.catch_up_args.to_vec();
        args.push("--until-caught-up".to_owned());
        flow::start(target, plan.layout, plan.schema, &args, &format!("latency-catch-up-{:.0}", plan.rate))?.wait(plan.timeout)?;
    }
    let rows_before = pg::rows_written(url, plan.schema)?;
    let committed_before: i64 = pg::committed(url, plan.schema, &target.topic)?.values().sum();
    let mut job = flow::start(target, plan.layout, plan.schema, plan.args, &format!("latency-{}-{:.0}", plan.layout, plan.rate))?;
    // What the measurement needs is a live job: one marker message (the stream's next event),
    // committed, proves the replay's work is over, since a live epoch commits only once every
    // earlier epoch is complete. It lies beyond the committed offsets the job replays up to,
    // so it may be sent at once. Every worker that reads partitions logs "replay read" once
    // its consumer reached the committed offsets: noted on the way, for the figures only.
    let partitions = pg::committed(url, plan.schema, &target.topic)?.len();
    let readers = plan.layout.total_workers().min(partitions);
    let mut replay_seconds = None;
    let marker = Marker { url, schema: plan.schema, kafka, timeout: plan.timeout, poll: Duration::from_millis(100) };
    marker.commit(&mut job, &target.topic, stream, ends, |job| {
        if replay_seconds.is_none() && job.replays_read() >= readers {
            replay_seconds = Some(job.elapsed());
        }
    })?;
    let ready_seconds = job.elapsed();
    let replay_read = replay_seconds.map_or_else(|| "(not seen)".to_owned(), |s| format!("after {s:.1} s"));
    eprintln!(
        "  replay read {replay_read}, marker committed after {ready_seconds:.1} s; producing {:.0} events/s for {:.0} s",
        plan.rate, plan.seconds
    );

    let mut producer = BenchProducer::connect(kafka, &target.topic, 1, true)?;
    let mut payload = Vec::with_capacity(512);
    let poller = ProgressPoller::start(url, plan.schema, &target.topic, plan.poll)?;
    let total = (plan.rate * plan.seconds).round() as usize;
    let mut sent_at = Vec::with_capacity(total);
    let start = Instant::now();
    let (mut stale_age_max, mut stale_users_max): (Option<f64>, Option<f64>) = (None, None);
    let sample_every = (plan.rate.round() as usize).max(1);
    for index in 0..total {
        let due = start + Duration::from_secs_f64(index as f64 / plan.rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let message = stream.next_message(&mut payload);
        sent_at.push(Instant::now());
        producer.send(index, message.key(), &payload)?;
        producer.check()?;
        if index % 1_000 == 0 {
            job.check_alive()?;
        }
        if index % sample_every == 0 {
            // About once a second: how far behind the background refresh is.
            let larger = |a: Option<f64>, b: Option<f64>| a.into_iter().chain(b).reduce(f64::max);
            stale_age_max = larger(stale_age_max, job.gauge("encore_stale_refresh_age_seconds"));
            stale_users_max = larger(stale_users_max, job.gauge("encore_stale_users"));
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();
    producer.flush()?;
    let landed = producer.take_landed();

    // Wait until every message is committed, or the drain time is over.
    let mut expected_ends: BTreeMap<i32, i64> = BTreeMap::new();
    for &(_, partition, offset) in &landed {
        let end = expected_ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
    }
    let drain_until = Instant::now() + Duration::from_secs_f64(plan.drain);
    while Instant::now() < drain_until {
        let committed = pg::committed(url, plan.schema, &target.topic)?;
        if expected_ends.iter().all(|(p, end)| committed.get(p).is_some_and(|c| c >= end)) {
            break;
        }
        job.check_alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (commits, polls) = poller.finish()?;
    let poll_window = start.elapsed();
    let stale_age_end = job.gauge("encore_stale_refresh_age_seconds");
    job.interrupt()?;
    // An overloaded job may need long to finish its epochs in flight; its figures are taken.
    let peak_rss = match job.wait(plan.stop_timeout) {
        Ok(finished) => finished.peak_rss,
        Err(error) => {
            eprintln!("  warning: the live job did not stop cleanly: {error:#}");
            Vec::new()
        }
    };

    let rows_after = pg::rows_written(url, plan.schema)?;
    let committed_after: i64 = pg::committed(url, plan.schema, &target.topic)?.values().sum();
    let changes = |rows: &BTreeMap<String, (u64, u64)>| rows.values().map(|(changed, _)| changed).sum::<u64>();
    let mut seen_at: Vec<Instant> = commits.iter().map(|(_, _, at)| *at).collect();
    seen_at.dedup();

    // Per partition, the commits in the order seen (next_offset only grows).
    let mut by_partition: BTreeMap<i32, Vec<(i64, Instant)>> = BTreeMap::new();
    for (partition, next, at) in commits {
        by_partition.entry(partition).or_default().push((next, at));
    }
    let warmup_end = start + Duration::from_secs_f64(plan.warmup);
    let mut measured = Measured {
        sent: total as u64,
        send_rate: total as f64 / send_seconds.max(1e-9),
        replay_seconds,
        ready_seconds,
        polls,
        poll_interval: poll_window / polls.max(1) as u32,
        peak_rss,
        commits: seen_at.len() as u64,
        committed_messages: (committed_after - committed_before).max(0) as u64,
        row_changes: changes(&rows_after).saturating_sub(changes(&rows_before)),
        stale_age_max,
        stale_age_end,
        stale_users_max,
        ..Measured::default()
    };
    for &(_, partition, offset) in &landed {
        let end = ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
    }
    for (index, partition, offset) in landed {
        let sent = sent_at[index];
        if sent < warmup_end {
            continue;
        }
        measured.measured += 1;
        let seen = by_partition.get(&partition).and_then(|commits| {
            let first = commits.partition_point(|(next, _)| *next <= offset);
            commits.get(first).map(|(_, at)| *at)
        });
        match seen {
            Some(at) => measured.latencies.push(at.saturating_duration_since(sent)),
            None => measured.uncommitted += 1,
        }
    }
    measured.latencies.sort_unstable();
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_count_uncommitted_messages_as_slowest() {
        let ms = Duration::from_millis;
        let measured = Measured { measured: 4, uncommitted: 1, latencies: vec![ms(10), ms(20), ms(30)], ..Measured::default() };
        assert_eq!(measured.quantile(0.5), Some(ms(20)));
        assert_eq!(measured.quantile(0.75), Some(ms(30)));
        // The 99th percentile falls on the uncommitted message: no latency to report.
        assert_eq!(measured.quantile(0.99), None);
        assert_eq!(Measured::default().quantile(0.5), None);
    }
}
