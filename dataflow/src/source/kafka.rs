//! The Kafka source: each worker rebuilds the state of the committed offsets, then consumes
//! its partitions of the topic into epochs. Its part in the exactly-once protocol, which
//! [`crate::sink::postgres`] states ("Exactly once"): progress is read from the offsets stored
//! in Postgres, never from Kafka's consumer-group offsets (`enable.auto.commit=false`,
//! explicit `assign`), and the state those offsets stand for is rebuilt before anything after
//! them is fed.
//!
//! ```text
//!  consume (one worker):
//!    rebuild   Load: its share of the durable state, fed into one epoch below LIVE
//!              Replay: reads the stored recommendations, fed once the replay is done
//!    assign    its partitions, each from its committed offset (Partition, `resume_at`)
//!    replay    only Replay: the topic from offset 0 up to the committed offsets, into replay
//!              epochs sized by count; live messages that arrive meanwhile wait in memory
//!    go live   (after a replay, the stored recommendations in epoch LIVE − 1) epoch LIVE opens
//!    live      EpochClock: every --epoch-ms (or --epoch-events), report (p, next offset) and
//!              close the epoch; until caught up (--until-caught-up) or the shutdown is requested
//! ```
//!
//! # Durable state
//!
//! Everything SPEC §2 computes follows from two things per `(user, track)` and per track,
//! which Postgres holds beside the offsets (the reasons: `docs/design.md`, "Durable state"):
//!
//! ```text
//!  encore_last_listen (user_id, track_id, last_ms)   last(u,t) of every pair with a listen
//!      └─► H(u) = its K latest per user ─► n(i), c(i,j) ─► s ─► N(i) ─► R(u)
//!      └─► one first listen per row      ─► listeners(t)
//!  track_stats (track_id, plays, …, likes)           plays(t), likes(t): already a SPEC table
//! ```
//!
//! **Loading** ([`Recovery::Load`], `restore.rs`): each worker reads its share of both tables
//! (`user_id` resp. `track_id` modulo the number of workers, so any `-n`/`-w` loads the same
//! state: a rescale is a restart) in one snapshot whose stored offsets must equal the ones read
//! at start. The rows enter History as listens at their `last` (each user's latest first:
//! `H(u)` fills without swaps) and the stats as plays and likes, with the stored
//! recommendations, all in one epoch fed in chunks with dataflow steps between them, so the
//! operators compute their result once and the pair changes in flight stay bounded. Then the
//! worker consumes from the stored offsets, one message early (`resume_at`). The topic before
//! them is never read: retention may have deleted it. A restart's time and memory grow with
//! the state (distinct pairs, tracks), not with the topic.
//!
//! **Replaying** ([`Recovery::Replay`]) remains for tables without a durable state (they record
//! `durable_state = false` in `encore_parameters`) and on request (`--replay-topic`, for a lost
//! or damaged state table): the topic is read from its beginning up to the stored offsets into
//! replay epochs, and the replayed state is written with the first live commit, which records
//! it as complete. It needs every message since offset 0.
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
//! ```
//!
//! Every worker advances its epoch on its own clock, even when its partitions are idle, so
//! the frontier keeps moving. Under a backlog a due epoch stays open while the dataflow is
//! at its in-flight bound, so epochs grow until the job keeps up (adaptive batching: a big
//! epoch costs far less per event than many small ones); `--epoch-events` caps them. At
//! most [`MAX_EPOCHS_IN_FLIGHT`] epochs run ahead of the sink, so when Postgres is slow the
//! consumers fall behind, with bounded memory (`sink/committer.rs`, "Backpressure"). Each
//! worker publishes its progress to [`crate::metrics`] when it closes an epoch, never per
//! message.
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
mod epochs;
mod partition;
mod restore;
mod watermarks;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::Message;
use timely::worker::Worker;
use tracing::info;

use crate::engine::Epoch;
use crate::metrics::{Consumed, WorkerReport};
use crate::pipeline::{Inputs, MessageKind, MAX_EPOCHS_IN_FLIGHT};
use crate::shutdown::Shutdown;
use crate::sink::postgres::{SinkError, StateReader};
use crate::tables::RankedList;
pub use consumer_errors::DEFAULT_ERROR_TIMEOUT;
use epochs::EpochClock;
use partition::{Arrival, Polled, Reader};
use restore::restore;
pub(crate) use watermarks::watch_watermarks;
pub use watermarks::{partition_count, WATERMARK_INTERVAL};

/// The first live epoch; epochs below it replay already-committed messages.
pub const LIVE: Epoch = 1 << 40;
/// Messages a worker reads between two steps of its dataflow while messages keep coming.
const STEP_EVERY_MESSAGES: usize = 1024;
/// How long metadata and watermark requests may take before the broker counts as unreachable.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// What the workers read and how they cut it into epochs.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    /// Bootstrap servers.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Consumer group id (monitoring only).
    pub group: String,
    /// Extra librdkafka settings (`--kafka-option key=value`), applied last.
    pub kafka_options: Vec<(String, String)>,
    /// Stop once the high watermarks seen at start are consumed.
    pub until_caught_up: bool,
    /// Longest epoch, in milliseconds of wall-clock time.
    pub epoch_ms: u64,
    /// Most messages one worker puts in one epoch.
    pub epoch_events: usize,
    /// Offsets committed in Postgres, read at start (same for every process).
    pub committed: BTreeMap<i32, i64>,
    /// How the state of the committed offsets is rebuilt.
    pub recovery: Recovery,
    /// How long consumer errors may persist, with nothing consumed, before the job ends
    /// (`--kafka-error-timeout`; errors that can never heal end it at once).
    pub error_timeout: Duration,
}

impl KafkaSource {
    /// The committed offset of partition `p` (0: nothing committed).
    fn committed(&self, p: i32) -> i64 {
        self.committed.get(&p).copied().unwrap_or(0)
    }
}

/// How a worker rebuilds the state of the committed offsets (see "Durable state" above).
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

/// Why a worker could not read what it must.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
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
    /// The stored state could not be read.
    #[error("Postgres: {0}")]
    Postgres(SinkError),
}

// By hand rather than `#[from]`, which would also make the error a `source`: the messages
// already carry it, and `{:#}` (encore-flow's exit line) would print it twice.
impl From<KafkaError> for SourceError {
    fn from(err: KafkaError) -> Self {
        SourceError::Kafka(err)
    }
}

impl From<SinkError> for SourceError {
    fn from(err: SinkError) -> Self {
        SourceError::Postgres(err)
    }
}

/// What workers consumed: one worker's, or a process's (the sum of its workers').
#[derive(Clone, Copy, Debug, Default)]
pub struct Consumption {
    /// Messages consumed live (after the replay).
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
    /// Rows of durable state loaded (`encore_last_listen`, `track_stats` and the stored
    /// `user_recommendations`).
    pub restored_rows: u64,
    /// Seconds in all (slowest worker).
    pub seconds: f64,
}

impl Consumption {
    /// Adds a worker's consumption: counts add up, times are the slowest worker's.
    pub fn add(&mut self, worker: &Consumption) {
        self.live_messages += worker.live_messages;
        self.replayed_messages += worker.replayed_messages;
        self.invalid += worker.invalid;
        self.listens += worker.listens;
        self.replay_seconds = self.replay_seconds.max(worker.replay_seconds);
        self.restored_rows += worker.restored_rows;
        self.seconds = self.seconds.max(worker.seconds);
    }

    /// Counts one live message by what it was.
    fn count_live(&mut self, kind: MessageKind) {
        self.live_messages += 1;
        match kind {
            MessageKind::Listen => self.listens += 1,
            MessageKind::Invalid => self.invalid += 1,
            MessageKind::Other => {}
        }
    }

    /// The counts as the metrics take them.
    fn counts(&self) -> Consumed {
        Consumed {
            events: self.live_messages,
            replayed: self.replayed_messages,
            restored: self.restored_rows,
            listens: self.listens,
            invalid: self.invalid,
        }
    }
}

/// A live message read while other partitions were still replaying: `(partition, offset,
/// payload)`.
type Waiting = (i32, i64, Vec<u8>);

/// One worker's consumption of `partitions`: rebuild the state (load or replay), then live
/// epochs, until caught up or the `shutdown` is requested.
pub(crate) fn consume(
    worker: &mut Worker,
    inputs: &mut Inputs,
    source: &KafkaSource,
    partitions: &[i32],
    shutdown: &Shutdown,
    report: &mut WorkerReport,
) -> Result<Consumption, SourceError> {
    let started = Instant::now();
    let mut consumed = Consumption::default();
    let stored_recommendations = rebuild(worker, inputs, source, report, &mut consumed, started)?;
    if partitions.is_empty() {
        go_live(inputs, stored_recommendations);
        return Ok(consumed);
    }
    let replay = matches!(source.recovery, Recovery::Replay(_));
    let reader = Reader::assign(source, &format!("encore-flow-{}", worker.index()), partitions, report.metrics(), replay)?;
    let clock = EpochClock::new(source.epoch_ms, source.epoch_events);
    let mut consumer = WorkerConsumer { worker, inputs, source, shutdown, report, reader, clock, consumed, read_since_step: 0 };
    if replay && consumer.reader.any_committed() {
        let Some(waiting) = consumer.replay()? else { return Ok(consumer.finish(started)) };
        consumer.report.metrics().replaying(false);
        go_live(consumer.inputs, stored_recommendations);
        consumer.consumed.replay_seconds = started.elapsed().as_secs_f64();
        let (replayed, seconds) = (consumer.consumed.replayed_messages, consumer.consumed.replay_seconds);
        info!(worker = consumer.worker.index(), replayed, seconds, "replay read");
        consumer.feed_waiting(waiting);
    } else {
        go_live(consumer.inputs, stored_recommendations);
    }
    consumer.live()?;
    Ok(consumer.finish(started))
}

/// Rebuilds the state of the committed offsets before the worker reads the topic: loads its
/// share of the durable state into the current epoch and opens the first live one, or (to
/// replay the topic) reads the stored recommendations, which [`go_live`] feeds.
fn rebuild(
    worker: &mut Worker,
    inputs: &mut Inputs,
    source: &KafkaSource,
    report: &mut WorkerReport,
    consumed: &mut Consumption,
    started: Instant,
) -> Result<Option<Vec<(u64, RankedList)>>, SourceError> {
    match &source.recovery {
        Recovery::Load(reader) => {
            if !source.committed.is_empty() {
                report.metrics().replaying(true);
                consumed.restored_rows = restore(worker, inputs, reader, source)?;
                report.publish(consumed.counts());
                report.metrics().replaying(false);
                consumed.replay_seconds = started.elapsed().as_secs_f64();
                info!(worker = worker.index(), rows = consumed.restored_rows, seconds = consumed.replay_seconds, "state loaded");
            }
            inputs.advance_to(LIVE);
            Ok(None)
        }
        Recovery::Replay(reader) if !source.committed.is_empty() => {
            Ok(Some(reader.load_recommendations(&source.topic, &source.committed, worker.peers(), worker.index())?))
        }
        Recovery::Replay(_) => Ok(None),
    }
}

/// Opens the first live epoch. After a replay, the epoch before it, the same on every worker
/// and after every replay epoch of every worker, carries the stored recommendations: the
/// replay rebuilt every list, not when each stored one was refreshed
/// ([`crate::engine::recommend`], "Restarts"). (A loaded state carries them in its own epoch.)
fn go_live(inputs: &mut Inputs, stored_recommendations: Option<Vec<(u64, RankedList)>>) {
    if let Some(rows) = stored_recommendations {
        inputs.advance_to(LIVE - 1);
        inputs.restore_recommendations(rows);
    }
    inputs.advance_to(LIVE);
}

/// One worker reading its partitions into its inputs.
struct WorkerConsumer<'a> {
    worker: &'a mut Worker,
    inputs: &'a mut Inputs,
    source: &'a KafkaSource,
    shutdown: &'a Shutdown,
    report: &'a mut WorkerReport,
    reader: Reader,
    clock: EpochClock,
    consumed: Consumption,
    read_since_step: usize,
}

impl WorkerConsumer<'_> {
    /// Replays the topic up to the committed offsets into epochs below [`LIVE`]; one consumer
    /// reads every partition of the worker from its beginning and is never moved. Live
    /// messages that arrive while another partition is still replaying wait in memory (at
    /// most the difference in replay progress between the worker's partitions) and are
    /// returned once every partition is replayed; `None` when the shutdown came first.
    fn replay(&mut self) -> Result<Option<Vec<Waiting>>, SourceError> {
        self.report.metrics().replaying(true);
        let mut waiting = Vec::new();
        loop {
            if self.reader.replayed() {
                return Ok(Some(waiting));
            }
            if self.shutdown.is_requested() {
                return Ok(None);
            }
            if self.clock.replay_full() {
                self.close_replay_epoch();
            }
            match self.reader.poll(self.source)? {
                Polled::Nothing => self.idle(),
                Polled::Handled => {}
                Polled::Message(message, Arrival::Live) => {
                    waiting.push((message.partition(), message.offset(), message.payload().unwrap_or_default().to_vec()));
                    self.step_now_and_then();
                }
                Polled::Message(message, _) => {
                    let payload = message.payload().unwrap_or_default();
                    self.inputs.feed(payload, &self.source.topic, message.partition(), message.offset());
                    self.consumed.replayed_messages += 1;
                    self.clock.count();
                    self.step_now_and_then();
                }
            }
        }
    }

    /// Feeds the live messages that waited for the replay into the first live epoch.
    fn feed_waiting(&mut self, waiting: Vec<Waiting>) {
        for (p, offset, payload) in waiting {
            self.consumed.count_live(self.inputs.feed(&payload, &self.source.topic, p, offset));
            self.clock.count();
        }
        self.publish();
        self.clock.restart_timer();
    }

    /// Live epochs until caught up (`--until-caught-up`) or the shutdown is requested; the
    /// last one closed with the consumed offsets, as every one.
    fn live(&mut self) -> Result<(), SourceError> {
        loop {
            let stopping = self.shutdown.is_requested();
            let done = stopping || (self.source.until_caught_up && self.reader.caught_up());
            let full = self.clock.full(|| self.source.until_caught_up.then(|| self.reader.rest()));
            let room = || !self.inputs.pending_before((self.inputs.epoch() + 1).saturating_sub(MAX_EPOCHS_IN_FLIGHT));
            if done || full || self.clock.due(room) {
                // The last commit of --until-caught-up is at rest (SPEC §2 step 6).
                self.close_live_epoch(done && self.source.until_caught_up && !stopping);
                if done {
                    return Ok(());
                }
            }
            match self.reader.poll(self.source)? {
                Polled::Nothing => self.idle(),
                Polled::Handled => {}
                Polled::Message(message, _) => {
                    let kind =
                        self.inputs.feed(message.payload().unwrap_or_default(), &self.source.topic, message.partition(), message.offset());
                    self.consumed.count_live(kind);
                    self.clock.count();
                    self.step_now_and_then();
                }
            }
        }
    }

    /// Closes a live epoch with the offsets its messages reached; `at_rest`: every stale user
    /// is refreshed in it.
    fn close_live_epoch(&mut self, at_rest: bool) {
        for (p, next) in self.reader.take_advanced() {
            self.inputs.offsets.insert((p, next));
        }
        if at_rest {
            self.inputs.refresh_all_in_this_epoch();
        }
        let epoch = self.inputs.epoch() + 1;
        self.inputs.advance_to(epoch);
        if self.worker.index() == 0 {
            // The committer times the epoch from here to its commit.
            self.report.metrics().epoch_closed(epoch - 1 - LIVE);
        }
        self.publish();
        self.clock.restart();
        self.keep_up(epoch);
    }

    /// Closes a replay epoch: they are sized by count only, as they commit nothing.
    fn close_replay_epoch(&mut self) {
        self.clock.restart_count();
        let epoch = self.inputs.epoch() + 1;
        self.inputs.advance_to(epoch);
        self.publish();
        self.keep_up(epoch);
    }

    /// Keeps within a few epochs of the sink, running the dataflow meanwhile.
    fn keep_up(&mut self, epoch: Epoch) {
        self.inputs.wait_for_sink(self.worker, epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT));
    }

    /// Nothing to read: do dataflow work, or sleep briefly.
    fn idle(&mut self) {
        self.worker.step_or_park(Some(Duration::from_millis(2)));
    }

    /// With a backlog the poll never comes back empty: step the dataflow now and then, so
    /// that earlier epochs complete while this one fills.
    fn step_now_and_then(&mut self) {
        self.read_since_step += 1;
        if self.read_since_step >= STEP_EVERY_MESSAGES {
            self.read_since_step = 0;
            self.worker.step();
        }
    }

    /// Publishes the worker's progress to the metrics (once per epoch, never per message).
    fn publish(&mut self) {
        self.reader.publish_offsets();
        self.report.publish(self.consumed.counts());
    }

    /// The worker's consumption, once it stops reading.
    fn finish(mut self, started: Instant) -> Consumption {
        self.publish();
        self.consumed.seconds = started.elapsed().as_secs_f64();
        self.consumed
    }
}
