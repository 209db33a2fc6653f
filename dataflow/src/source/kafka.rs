//! `encore-flow --brokers … --topic … --postgres …`: Kafka in, Postgres out, exactly once.
//!
//! # Delivery guarantee
//!
//! Every table in Postgres equals its SPEC §2 definition over exactly the messages before the
//! offsets stored beside it, after any crash and restart: nothing lost, nothing counted twice.
//!
//! * Offsets live only in Postgres ([`crate::sink::postgres`]), committed in the same transaction as
//!   the changes of the epoch that consumed them, and so is the **durable state** below.
//!   Kafka's consumer-group offsets are never read or written (`enable.auto.commit=false`,
//!   explicit `assign`).
//! * On start the job **loads** that state (every worker of every process its share, in
//!   parallel) and feeds it into one epoch below [`LIVE`], whose changes are *not* written:
//!   Postgres already holds their result. From the stored offsets on it runs **live** epochs
//!   (≥ [`LIVE`]), each committed in one transaction with its offsets and its state changes
//!   (epochs that queued up during a commit share the next transaction).
//! * Results depend only on the set of listens, and the state stands for exactly the
//!   listens before the stored offsets, so the rebuilt state is the committed one, and live
//!   deltas apply on top of it exactly.
//! * One writer, process 0's committer thread (`sink/committer.rs`), commits the live epochs
//!   strictly in epoch order and nothing after a failed commit; it runs beside the dataflow
//!   (worker 0 only hands each closed epoch over), so the workers compute the next epochs
//!   while one commits. The process reports success only after the committer has committed
//!   every epoch handed over and ended.
//!
//! # Durable state
//!
//! Everything SPEC §2 computes follows from two things per `(user, track)` and per track:
//!
//! ```text
//!  encore_last_listen (user_id, track_id, last_ms)   last(u,t) of every pair with a listen
//!      └─► H(u) = its K latest per user ─► n(i), c(i,j) ─► s ─► N(i) ─► R(u)
//!      └─► one first listen per row      ─► listeners(t)
//!  track_stats (track_id, plays, …, likes)           plays(t), likes(t): already a SPEC table
//! ```
//!
//! `last(u,t)` of a track outside `H(u)` cannot matter to `H(u)` again (a track re-enters only
//! with a later listen, which sets its `last`), but its row says the pair was heard, which
//! `listeners` counts. History emits every change of `last(u,t)` (see
//! [`crate::engine::history`]); the sink upserts them with the epoch's deltas, about one row
//! per listen that raised a `last`, fewer after an epoch's consolidation: the write cost is
//! proportional to what changed, and the table holds one row per distinct `(user, track)`.
//!
//! A restart loads its share of both tables (`user_id` resp. `track_id` modulo the number of
//! workers, so any `-n`/`-w` loads the same state: a rescale is a restart), in one snapshot
//! whose stored offsets must equal the ones read at start. The rows enter History as listens
//! at their `last` (each user's latest first: `H(u)` fills without swaps) and the stats as
//! plays and likes, all in one epoch fed in chunks with dataflow steps between them, so the
//! operators compute their result once and the pair changes in flight stay bounded. Then each
//! worker consumes from the stored offsets ([`resume_at`] says how exactly). The topic before
//! them is never read: retention may have deleted it. The time and memory of a restart grow
//! with the state (distinct pairs, tracks), not with the topic.
//!
//! **Replay** remains for tables without a durable state (written before it existed; they
//! record `durable_state = false` in `encore_parameters`) and on request (`--replay-topic`,
//! for a lost or damaged state table): the topic is read from its beginning up to the stored
//! offsets into replay epochs, and the replayed state is written with the first live commit,
//! which records it as complete. It needs every message since offset 0.
//!
//! A partition that no longer holds a message the job needs — below the stored offset
//! replaying, from it loading, from 0 on a fresh start — is refused at start (its low
//! watermark is above that offset), as is one that ends before the stored offset: the job
//! would otherwise write tables that miss messages.
//!
//! # Partitions and epochs
//!
//! ```text
//!  partition p ──► worker p mod W (all workers of all processes; static, no rebalances)
//!  worker: poll its BaseConsumer (zero timeout) ─► parse ─► listens / dead letters
//!          every --epoch-ms (or --epoch-events messages): report (p, next offset), advance
//!  worker 0: EpochSink ══ bounded queue (2) ══► committer thread (process 0): PgSink,
//!            hands over closed live epochs          one transaction per epoch (or per run of
//!                                                   epochs queued meanwhile), in order
//! ```
//!
//! Every worker advances its epoch on its own clock, even when its partitions are idle, so
//! the frontier keeps moving. Under a backlog a due epoch stays open while the dataflow is
//! at its in-flight bound, so epochs grow until the job keeps up (adaptive batching: a big
//! epoch costs far less per event than many small ones); `--epoch-events` caps them. At
//! most [`MAX_EPOCHS_IN_FLIGHT`] epochs run ahead of the hand-over to the committer, whose
//! queue holds at most `COMMIT_QUEUE` more: when Postgres is slow, worker 0 blocks on the
//! hand-over and the consumers fall behind, with bounded memory. Each worker publishes its progress to [`crate::metrics`] when it closes an
//! epoch, and the committer after each commit ([`crate::job::run_with_metrics`]); never per message.
//!
//! # Progress logs
//!
//! Each worker logs `state loaded` once it has read and fed its share of the durable state
//! (or, replaying, `replay read` once its consumer has read up to the committed offsets); the
//! dataflow may still be computing the rebuilding epoch then, and live epochs wait behind it.
//! Process 0 logs `first live commit` when the committer has committed the first live epoch:
//! from then on the job is live. Figures: `benches/README.md`, "Restart".

mod client;
mod consumer_errors;
mod restore;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::engine::{Epoch, RefreshBudget};
use crate::metrics::{Consumed, Metrics, PartitionGauges, WorkerReport};
use crate::pipeline::{self, MessageKind, MAX_EPOCHS_IN_FLIGHT};
use crate::sink::postgres::{SinkError, StateReader};
use crate::tables::{Params, RankedList};
use client::consumer;
use consumer_errors::ErrorWatch;
pub use consumer_errors::DEFAULT_ERROR_TIMEOUT;
use restore::{restore, resume_at};

/// The first live epoch; epochs below it replay already-committed messages.
pub const LIVE: Epoch = 1 << 40;
/// Messages a worker reads between two steps of its dataflow while messages keep coming.
const STEP_EVERY_MESSAGES: usize = 1024;
/// Under `--until-caught-up`, an epoch at `--epoch-events` stays open for the rest of the
/// worker's share when that rest is at most this fraction of `--epoch-events` (1/8).
const TAIL_DIVISOR: usize = 8;
/// How long metadata and watermark requests may take before the broker counts as unreachable.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of the start-up metadata request (with backoff) before giving up.
const KAFKA_ATTEMPTS: u32 = 3;
/// How often served metrics refresh the high watermarks of this process's partitions.
pub const WATERMARK_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on one watermark request of the metrics poller: a slow broker delays the next
/// refresh, never the job (the poller has a thread and a client of its own).
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// A Kafka-to-Postgres job.
#[derive(Clone, Debug)]
pub struct StreamJob {
    /// Bootstrap servers.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Consumer group id (monitoring only).
    pub group: String,
    /// Extra librdkafka settings (`--kafka-option key=value`), applied last.
    pub kafka_options: Vec<(String, String)>,
    /// SPEC §2 parameters.
    pub params: Params,
    /// Whether to maintain `co_listens`.
    pub emit_co_listens: bool,
    /// Whether to append every valid live event to the event log (`--emit-events`; the sink
    /// must be [`crate::sink::postgres::PgSink::with_event_log`]).
    pub emit_events: bool,
    /// Exit once the high watermarks seen at start are consumed and committed.
    pub until_caught_up: bool,
    /// Longest epoch, in milliseconds of wall-clock time.
    pub epoch_ms: u64,
    /// Most messages one worker puts in one epoch.
    pub epoch_events: usize,
    /// Stale users refreshed per worker per epoch (`--refresh-idle`).
    pub refresh: RefreshBudget,
    /// Offsets committed in Postgres, read at start (same for every process).
    pub committed: BTreeMap<i32, i64>,
    /// How the state of the committed offsets is rebuilt.
    pub recovery: Recovery,
    /// How long consumer errors may persist, with nothing consumed, before the job ends
    /// (`--kafka-error-timeout`; errors that can never heal end it at once).
    pub error_timeout: Duration,
}

/// How a job rebuilds the state of the committed offsets (see "Durable state" above).
#[derive(Clone, Debug)]
pub enum Recovery {
    /// Load it from Postgres (`encore_last_listen`, `track_stats`), each worker its share, and
    /// consume from the committed offsets on. Also a fresh start (nothing committed, nothing
    /// to load).
    Load(Box<StateReader>),
    /// Replay the topic from its beginning up to the committed offsets: tables written before
    /// the durable state existed, or `--replay-topic`. The replayed state is written with the
    /// first commit. The reader loads the stored recommendations once the replay ends.
    Replay(Box<StateReader>),
}

/// A failure of the Kafka job.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The broker did not answer.
    #[error("Kafka at {brokers} unreachable: {reason}")]
    KafkaUnreachable {
        /// The bootstrap servers.
        brokers: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// The topic is missing.
    #[error("Kafka topic {0} does not exist (create it first, e.g. deploy/start.sh)")]
    NoTopic(String),
    /// The topic no longer holds messages the job needs: those after the committed offsets
    /// (or, replaying, all of them).
    #[error(
        "partition {partition} of {topic} starts at offset {low}, but the job needs its messages from offset {needed} on \
         (deleted by retention, or the topic was recreated): refusing to compute tables that miss them"
    )]
    Truncated {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The first offset the job needs.
        needed: i64,
        /// The first offset still held.
        low: i64,
    },
    /// A Kafka error while consuming.
    #[error("Kafka: {0}")]
    Kafka(KafkaError),
    /// Consuming failed for good: an error that cannot heal, or errors that persisted beyond
    /// `--kafka-error-timeout` (see `source/kafka/consumer_errors.rs`).
    #[error("Kafka at {brokers}, topic {topic}: {reason}")]
    KafkaFailed {
        /// The bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
        /// What failed and why it ends the job.
        reason: String,
    },
    /// Postgres failed for good.
    #[error("Postgres: {0}")]
    Postgres(SinkError),
    /// A worker failed (a panic or a lost peer process).
    #[error("worker failed: {0}")]
    Worker(String),
    /// A worker of a multi-process job failed with this error (its message), returned before
    /// the other workers end.
    #[error("{0}")]
    WorkerFailed(String),
}

// By hand rather than `#[from]`, which would also make the error a `source`: the messages
// already carry it, and `{:#}` (encore-flow's exit line) would print it twice.
impl From<KafkaError> for StreamError {
    fn from(err: KafkaError) -> Self {
        StreamError::Kafka(err)
    }
}

impl From<SinkError> for StreamError {
    fn from(err: SinkError) -> Self {
        StreamError::Postgres(err)
    }
}

/// What a run did, per process.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamSummary {
    /// Messages this process's workers consumed live (after the replay).
    pub live_messages: u64,
    /// Messages replayed to rebuild state.
    pub replayed_messages: u64,
    /// Invalid messages among the live ones.
    pub invalid: u64,
    /// Listens among the live ones.
    pub listens: u64,
    /// Seconds spent rebuilding the state before live consumption: loading it, or replaying
    /// the topic (slowest worker).
    pub replay_seconds: f64,
    /// Rows of durable state this process's workers loaded (`encore_last_listen`,
    /// `track_stats` and the stored `user_recommendations`).
    pub restored_rows: u64,
    /// Seconds in all (slowest worker).
    pub seconds: f64,
}

/// The partitions of `topic`, asking with bounded retries.
pub fn partition_count(job: &StreamJob) -> Result<i32, StreamError> {
    let consumer = consumer(job, "encore-flow-metadata")?;
    let mut last_error = String::new();
    for attempt in 0..KAFKA_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 << attempt));
        }
        match consumer.fetch_metadata(Some(&job.topic), KAFKA_TIMEOUT) {
            Ok(metadata) => {
                let Some(topic) = metadata.topics().iter().find(|t| t.name() == job.topic) else {
                    return Err(StreamError::NoTopic(job.topic.clone()));
                };
                if topic.error().is_some() || topic.partitions().is_empty() {
                    return Err(StreamError::NoTopic(job.topic.clone()));
                }
                return Ok(topic.partitions().len() as i32);
            }
            Err(error) => last_error = error.to_string(),
        }
    }
    let reason = format!("{last_error}{}", encore_kafkaconf::unreachable_hint(&job.kafka_options));
    Err(StreamError::KafkaUnreachable { brokers: job.brokers.clone(), reason })
}

/// Refreshes the high watermarks of the partitions this process reads (as registered in
/// `metrics` by its workers) every [`WATERMARK_INTERVAL`], until `finished`. Off the hot
/// path: a thread and a Kafka client of its own, since `fetch_watermarks` blocks.
pub(crate) fn watch_watermarks(job: StreamJob, metrics: Arc<Metrics>, finished: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new().name("watermarks".to_owned()).spawn(move || {
        let consumer = match consumer(&job, "encore-flow-watermarks") {
            Ok(consumer) => consumer,
            Err(error) => return warn!(%error, "no watermark client: metrics show the watermarks seen at start"),
        };
        loop {
            let next_round = Instant::now() + WATERMARK_INTERVAL;
            while Instant::now() < next_round {
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for p in metrics.partitions() {
                match consumer.fetch_watermarks(&job.topic, p, WATERMARK_TIMEOUT) {
                    Ok((_low, high)) => metrics.partition(p).set_high_watermark(high),
                    Err(error) => {
                        metrics.watermark_error();
                        tracing::debug!(%error, p, "watermark request failed");
                    }
                }
            }
        }
    });
    spawned.map_err(|error| warn!(%error, "no watermark thread: metrics show the watermarks seen at start")).ok()
}

/// Counts one live message by what it was.
fn count_live(summary: &mut StreamSummary, kind: MessageKind) {
    summary.live_messages += 1;
    match kind {
        MessageKind::Listen => summary.listens += 1,
        MessageKind::Invalid => summary.invalid += 1,
        MessageKind::Other => {}
    }
}

/// Publishes a worker's progress to the metrics (once per epoch, never per message).
fn publish(report: &mut WorkerReport, gauges: &[(i32, Arc<PartitionGauges>)], summary: &StreamSummary, next: &BTreeMap<i32, i64>) {
    for (p, gauge) in gauges {
        gauge.set_next_offset(next.get(p).copied().unwrap_or(0));
    }
    report.publish(Consumed {
        events: summary.live_messages,
        replayed: summary.replayed_messages,
        restored: summary.restored_rows,
        listens: summary.listens,
        invalid: summary.invalid,
    });
}

/// One worker's consumption: rebuild the state (load or replay), then live epochs, until
/// caught up or stopped.
///
/// Loading, the worker reads its share of the durable state and feeds it into the first
/// epoch (below [`LIVE`]); its consumer then starts at the committed offsets, checked as
/// [`resume_at`] says. Replaying, one consumer reads every partition of the worker from its
/// beginning and is never moved: messages below the committed offsets feed replay epochs,
/// later ones live epochs. A live message that arrives while another partition is still
/// replaying waits in memory until the replay ends (so the buffer holds at most the
/// difference in replay progress between the worker's partitions).
pub(crate) fn consume(
    worker: &mut timely::worker::Worker,
    inputs: &mut pipeline::Inputs,
    job: &StreamJob,
    partitions: &[i32],
    stop: &AtomicBool,
    report: &mut WorkerReport,
) -> Result<StreamSummary, StreamError> {
    let started = Instant::now();
    let mut summary = StreamSummary::default();
    let replay = matches!(job.recovery, Recovery::Replay(_));
    // Replaying, the stored recommendations are read now (in the snapshot of the committed
    // offsets) and fed once every replay epoch is done: see `go_live`.
    let mut stored_recommendations = None;
    match &job.recovery {
        Recovery::Load(reader) if !job.committed.is_empty() => {
            report.metrics().replaying(true);
            summary.restored_rows = restore(worker, inputs, reader, job)?;
            publish(report, &[], &summary, &BTreeMap::new());
            report.metrics().replaying(false);
            summary.replay_seconds = started.elapsed().as_secs_f64();
            info!(worker = worker.index(), rows = summary.restored_rows, seconds = summary.replay_seconds, "state loaded");
        }
        Recovery::Replay(reader) if !job.committed.is_empty() => {
            stored_recommendations = Some(reader.load_recommendations(&job.topic, &job.committed, worker.peers(), worker.index())?);
        }
        _ => {}
    }
    if !replay {
        inputs.advance_to(LIVE);
    }
    if partitions.is_empty() {
        go_live(inputs, &mut stored_recommendations);
        return Ok(summary);
    }
    let consumer = consumer(job, &format!("encore-flow-{}", worker.index()))?;
    let committed = |p: i32| job.committed.get(&p).copied().unwrap_or(0);

    // Where the topic ends now, whether it still holds what we need, and where to start.
    let mut targets = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    let mut gauges = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    // Partitions started one message early, with the committed offset: their first message
    // must come at or before it (see `resume_at`).
    let mut unverified: BTreeMap<i32, i64> = BTreeMap::new();
    for &p in partitions {
        let (low, high) = consumer.fetch_watermarks(&job.topic, p, KAFKA_TIMEOUT)?;
        let needed = if replay { 0 } else { committed(p) };
        if low > needed {
            return Err(StreamError::Truncated { topic: job.topic.clone(), partition: p, needed, low });
        }
        targets.insert(p, high);
        let gauge = report.metrics().partition(p);
        gauge.set_high_watermark(high);
        gauges.push((p, gauge));
        let (start, verify) = if replay { (0, false) } else { resume_at(committed(p), low, high) };
        if verify {
            unverified.insert(p, committed(p));
        }
        next.insert(p, start);
        let offset = if start == 0 { Offset::Beginning } else { Offset::Offset(start) };
        assignment.add_partition_offset(&job.topic, p, offset)?;
    }
    consumer.assign(&assignment)?;
    // Partitions read again from their beginning: their first message must still come at or
    // before the committed offset, or messages after it are gone (deleted since the start-up
    // check): refused, as at start.
    let mut rewound: BTreeMap<i32, i64> = BTreeMap::new();
    // The broker answered a fetch one message before the committed offset with a message
    // after it (or none): read the partition from its beginning instead, skipping what the
    // state holds.
    let rewind = |p: i32,
                  committed: i64,
                  got: Option<i64>,
                  next: &mut BTreeMap<i32, i64>,
                  rewound: &mut BTreeMap<i32, i64>|
     -> Result<(), StreamError> {
        warn!(
            p,
            committed,
            ?got,
            "the broker may have skipped messages from the committed offset on: reading the partition from its beginning"
        );
        consumer.seek(&job.topic, p, Offset::Beginning, KAFKA_TIMEOUT)?;
        next.insert(p, 0);
        rewound.insert(p, committed);
        Ok(())
    };

    let mut replaying = replay && partitions.iter().any(|&p| committed(p) > 0);
    let mut waiting: Vec<(i32, i64, Vec<u8>)> = Vec::new();
    // Partitions consumed up to where they ended at start. A partition counts only once the
    // consumer also reached its end (an end-of-partition event): Tansu 0.6 reports the base
    // offset of its last batch + 1 as the high watermark, short of the true end, and the
    // event makes the check right for every broker.
    let mut caught_up = std::collections::BTreeSet::new();
    // Live progress of the current epoch, reported when it closes.
    let mut advanced: BTreeMap<i32, i64> = BTreeMap::new();
    let epoch_length = Duration::from_millis(job.epoch_ms.max(1));
    let mut epoch_started = Instant::now();
    let mut in_epoch = 0usize;
    let mut read_since_step = 0usize;
    let mut errors = ErrorWatch::new(job.error_timeout);
    if replaying {
        report.metrics().replaying(true);
    } else {
        go_live(inputs, &mut stored_recommendations);
    }
    loop {
        if replaying && next.iter().all(|(&p, &n)| n >= committed(p)) {
            replaying = false;
            report.metrics().replaying(false);
            go_live(inputs, &mut stored_recommendations);
            summary.replay_seconds = started.elapsed().as_secs_f64();
            info!(worker = worker.index(), replayed = summary.replayed_messages, seconds = summary.replay_seconds, "replay read");
            for (p, offset, payload) in std::mem::take(&mut waiting) {
                advanced.insert(p, offset + 1);
                count_live(&mut summary, inputs.feed(&payload, &job.topic, p, offset));
                in_epoch += 1;
            }
            publish(report, &gauges, &summary, &next);
            epoch_started = Instant::now();
        }
        let stopping = stop.load(Ordering::SeqCst);
        if replaying {
            if stopping {
                break;
            }
            if in_epoch >= job.epoch_events {
                // Replay epochs are sized by count only: they commit nothing.
                in_epoch = 0;
                let epoch = inputs.epoch() + 1;
                inputs.advance_to(epoch);
                publish(report, &gauges, &summary, &next);
                inputs.wait_for_sink(worker, epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT));
            }
        } else {
            let done = stopping || (job.until_caught_up && caught_up.len() == partitions.len());
            // An epoch that is due stays open while the dataflow still has MAX_EPOCHS_IN_FLIGHT
            // epochs to finish: the consumer keeps reading into it (up to --epoch-events)
            // instead of waiting, so under a backlog epochs grow and the cost per event falls
            // (one big epoch costs far less per event than many small ones); without a
            // backlog they close every --epoch-ms as before.
            let due = epoch_started.elapsed() >= epoch_length
                && !inputs.pending_before((inputs.epoch() + 1).saturating_sub(MAX_EPOCHS_IN_FLIGHT));
            let rest = || {
                job.until_caught_up
                    .then(|| targets.iter().map(|(p, &target)| (target - next.get(p).copied().unwrap_or(0)).max(0) as u64).sum())
            };
            if done || epoch_full(in_epoch, job.epoch_events, rest) || due {
                for (&p, &n) in &advanced {
                    inputs.offsets.insert((p, n));
                }
                if done && job.until_caught_up && !stopping {
                    // The last commit of --until-caught-up is at rest (SPEC §2 step 6).
                    inputs.refresh_all_in_this_epoch();
                }
                advanced.clear();
                let epoch = inputs.epoch() + 1;
                inputs.advance_to(epoch);
                if worker.index() == 0 {
                    // The committer times the epoch from here to its commit.
                    report.metrics().epoch_closed(epoch - 1 - LIVE);
                }
                publish(report, &gauges, &summary, &next);
                in_epoch = 0;
                epoch_started = Instant::now();
                // Keep within a few epochs of the sink, stepping the dataflow meanwhile.
                inputs.wait_for_sink(worker, epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT));
                if done {
                    break;
                }
            }
        }
        match consumer.poll(Duration::ZERO) {
            None => {
                // Nothing to read: do dataflow work, or sleep briefly.
                worker.step_or_park(Some(Duration::from_millis(2)));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                errors.progress();
                if let Some(must) = unverified.remove(&p) {
                    rewind(p, must, None, &mut next, &mut rewound)?;
                    continue;
                }
                let (Some(&n), Some(&target)) = (next.get(&p), targets.get(&p)) else { continue };
                tracing::debug!(p, next = n, target, committed = committed(p), "end of partition");
                if n < committed(p) {
                    // The partition ends before the committed offset: recreated or truncated.
                    return Err(StreamError::Truncated { topic: job.topic.clone(), partition: p, needed: committed(p), low: n });
                }
                if n >= target {
                    caught_up.insert(p);
                }
            }
            Some(Err(error)) => {
                warn!(%error, "Kafka consumer error");
                if matches!(error, KafkaError::MessageConsumption(code) if code == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
                {
                    return Err(StreamError::NoTopic(job.topic.clone()));
                }
                if let Some(reason) = errors.error(&error, Instant::now()) {
                    return Err(StreamError::KafkaFailed { brokers: job.brokers.clone(), topic: job.topic.clone(), reason });
                }
            }
            Some(Ok(message)) => {
                errors.progress();
                let (p, offset) = (message.partition(), message.offset());
                if let Some(must) = unverified.remove(&p) {
                    if offset > must {
                        rewind(p, must, Some(offset), &mut next, &mut rewound)?;
                        continue;
                    }
                }
                if let Some(needed) = rewound.remove(&p) {
                    if offset > needed {
                        return Err(StreamError::Truncated { topic: job.topic.clone(), partition: p, needed, low: offset });
                    }
                }
                let Some(n) = next.get_mut(&p) else { continue };
                if offset < *n {
                    continue; // delivered twice
                }
                *n = offset + 1;
                let payload = message.payload().unwrap_or_default();
                if offset < committed(p) {
                    if !replay {
                        continue; // in the loaded state
                    }
                    inputs.feed(payload, &job.topic, p, offset);
                    summary.replayed_messages += 1;
                    in_epoch += 1;
                } else if replaying {
                    waiting.push((p, offset, payload.to_vec()));
                } else {
                    advanced.insert(p, offset + 1);
                    count_live(&mut summary, inputs.feed(payload, &job.topic, p, offset));
                    in_epoch += 1;
                }
                // With a backlog the poll never comes back empty: step the dataflow now and
                // then, so that earlier epochs complete while this one fills.
                read_since_step += 1;
                if read_since_step >= STEP_EVERY_MESSAGES {
                    read_since_step = 0;
                    worker.step();
                }
            }
        }
    }
    publish(report, &gauges, &summary, &next);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Opens the first live epoch. After a replay, the epoch before it, the same on every worker
/// and after every replay epoch of every worker, carries the stored recommendations: the
/// replay rebuilt every list, not when each stored one was refreshed
/// ([`crate::engine::recommend`], "Restarts"). (A loaded state carries them in its own epoch.)
fn go_live(inputs: &mut pipeline::Inputs, stored_recommendations: &mut Option<Vec<(u64, RankedList)>>) {
    if let Some(rows) = stored_recommendations.take() {
        inputs.advance_to(LIVE - 1);
        inputs.restore_recommendations(rows);
    }
    inputs.advance_to(LIVE);
}

/// Whether a live epoch of `in_epoch` messages is full at `--epoch-events` = `cap`. With
/// `rest()` = the messages this worker still has to read up to the caught-up offsets
/// (`--until-caught-up`), a full epoch stays open when the rest is small: a last epoch of a
/// few messages costs about as much as a big one, because at a large state its listens
/// still rescore the pairs and users they touch and their rows are rewritten (at 10 M events,
/// 5 M-message epochs left one of 28 000 messages that took 14 s of a 112 s catch-up). An
/// epoch never holds more than `cap + cap / TAIL_DIVISOR` messages, even when the topic grows
/// past the offsets seen at start (or lies beyond them: Tansu 0.6 reports a high watermark
/// short of the true end, so `rest()` is an estimate).
///
/// `rest` is only called once the epoch reaches the cap (it walks the worker's partitions).
fn epoch_full(in_epoch: usize, cap: usize, rest: impl FnOnce() -> Option<u64>) -> bool {
    let tail = cap / TAIL_DIVISOR;
    in_epoch >= cap && (in_epoch >= cap + tail || rest().is_none_or(|rest| rest > tail as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_folds_a_small_rest_into_its_last_epoch() {
        // Live (no caught-up target): full at the cap.
        assert!(!epoch_full(999, 1000, || None));
        assert!(epoch_full(1000, 1000, || None));
        // Catching up: a rest of up to an eighth of the cap joins the epoch.
        assert!(!epoch_full(1000, 1000, || Some(125)));
        assert!(!epoch_full(1100, 1000, || Some(25)));
        assert!(epoch_full(1000, 1000, || Some(126)));
        assert!(epoch_full(1000, 1000, || Some(5000)));
        assert!(!epoch_full(999, 1000, || Some(5000)));
        // Never beyond cap + cap/8, whatever the rest (a topic that grows while it is read).
        assert!(!epoch_full(1124, 1000, || Some(0)));
        assert!(epoch_full(1125, 1000, || Some(0)));
    }

    #[test]
    fn exit_lines_say_each_cause_once() {
        // encore-flow prints `{:#}`, which appends every `source` to the message.
        let err = anyhow::Error::from(StreamError::from(KafkaError::ClientCreation("boom".into())));
        assert_eq!(format!("{err:#}"), "Kafka: Client creation error: boom");
        let err = anyhow::Error::from(StreamError::from(SinkError::Config("bad URL".into())));
        assert_eq!(format!("{err:#}"), "Postgres: bad URL");
    }
}
