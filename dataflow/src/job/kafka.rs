//! The Kafka job, `encore-flow --brokers … --topic … --postgres …`: the threads of one process
//! and how they end. Exactly once, by the protocol [`crate::sink::postgres`] states
//! ("Exactly once").
//!
//! ```text
//!  committer thread (process 0, with a sink): PgSink, the closed live epochs in order
//!        ▲ Handover (bounded queue), taken by worker 0's EpochSink (PostgresEpochs)
//!  timely workers: pipeline::install ─► source::kafka::consume, until caught up or stopped
//!  watermark poller thread (with served metrics): the partitions' high watermarks
//! ```
//!
//! [`run`] starts the committer before the workers and joins it after them, so that `Ok`
//! means every live epoch handed over is committed.
//!
//! # Stopping
//!
//! `--until-caught-up` and Ctrl-C end the same way: the workers close their current epoch and
//! their inputs, the dataflow completes every epoch in flight, and the committer commits each
//! of them before the process exits 0. A failed commit requests the [`Shutdown`], commits
//! nothing more, and the process exits non-zero with the commit's one-line reason; a restart
//! resumes from the last committed offsets. A failed worker stops the other workers of its
//! process the same way; with several processes the run returns its error at once instead
//! (see [`run`]).

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use timely::worker::Worker;
use tracing::info;

use crate::engine::{Epoch, RefreshBudget};
use crate::metrics::{Metrics, WorkerReport};
use crate::pipeline;
use crate::shutdown::Shutdown;
use crate::sink::committer::{Committer, CommitterFailed, Handover};
use crate::sink::postgres::{PgSink, SinkError};
use crate::sink::{EpochSink, SinkFrom};
use crate::source::kafka::{consume, partition_count, watch_watermarks, Consumption, KafkaSource, Recovery, SourceError, LIVE};
use crate::tables::{Changes, Params};

/// A Kafka-to-Postgres job.
#[derive(Clone, Debug)]
pub struct KafkaJob {
    /// What the workers read and how they cut it into epochs.
    pub source: KafkaSource,
    /// SPEC §2 parameters.
    pub params: Params,
    /// Whether to maintain `co_listens`.
    pub emit_co_listens: bool,
    /// Whether to append every valid live event to the event log (`--emit-events`; the sink
    /// must be [`crate::sink::postgres::PgSink::with_event_log`]).
    pub emit_events: bool,
    /// Stale users refreshed per worker per epoch (`--refresh-idle`).
    pub refresh: RefreshBudget,
}

/// A failure of the Kafka job.
#[derive(Debug, thiserror::Error)]
pub enum KafkaJobError {
    /// A worker could not read what it must.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A commit failed for good.
    #[error("Postgres: {0}")]
    Postgres(SinkError),
    /// A worker or the committer panicked (a lost peer process, too), or the threads could
    /// not start.
    #[error("worker failed: {0}")]
    Crashed(String),
    /// A worker of a multi-process job failed with this error (its message), returned
    /// without waiting for the other workers (see [`run`]).
    #[error("{0}")]
    FailedFast(String),
}

/// Runs the job on this process's workers. `sink` is this process's Postgres connection;
/// only process 0's is used for writing (by its committer thread). With `metrics`, the
/// workers publish to it at every epoch close, the committer after every commit, and a poller
/// thread the partitions' high watermarks every [`crate::source::kafka::WATERMARK_INTERVAL`].
///
/// With a `sink`, this is where the committer thread starts and ends: spawned before the
/// workers, its hand-over taken by worker 0, joined after the workers, so that `Ok` means
/// every live epoch is committed. Returns what this process's workers consumed.
pub fn run(
    config: timely::Config,
    job: KafkaJob,
    sink: Option<PgSink>,
    shutdown: Shutdown,
    metrics: Option<Arc<Metrics>>,
) -> Result<Consumption, KafkaJobError> {
    let run_started = Instant::now();
    let partitions = partition_count(&job.source)?;
    let served = metrics.is_some();
    // Unserved, the registry is still updated (a few atomics per epoch) but never read.
    let metrics = metrics.unwrap_or_else(|| Arc::new(Metrics::new(0, false)));
    let (handover, committer) = match sink {
        Some(sink) => {
            let (handover, committer) = start_committer(sink, &job, &metrics, &shutdown, run_started)?;
            (Some(handover), Some(committer))
        }
        None => (None, None),
    };
    // Worker 0 takes the hand-over; whatever is left here is dropped after the workers end,
    // so that the committer sees the end of its queue even if no worker took it.
    let handover = Arc::new(Mutex::new(handover));
    let (local_workers, other_processes) = local_workers(&config);
    let source = job.source.clone();
    let workers = {
        let (handover, metrics, shutdown) = (Arc::clone(&handover), Arc::clone(&metrics), shutdown.clone());
        timely::execute(config, move |worker| run_worker(worker, &job, partitions, &handover, &metrics, &shutdown))
    };
    let guards = match workers {
        Ok(guards) => guards,
        Err(error) => {
            let _ = finish_committer(&handover, committer); // it committed nothing: no worker ran
            return Err(KafkaJobError::Crashed(error));
        }
    };
    let poller = served.then(|| watch_watermarks(source, metrics, shutdown.clone())).flatten();
    if other_processes {
        // A failed worker stops only this process's workers; the other processes' workers keep
        // their inputs open, so the dataflow would never complete and this process would wait
        // for ever. Return the failure at once instead: the process exits with it, its peers
        // then exit too (a lost peer), and nothing uncommitted was written (the open
        // transaction, if any, rolls back with the connection), as after a crash.
        if let Some(reason) = shutdown.wait_for_workers(local_workers) {
            // Dropping the guards would join the workers, which may wait for ever.
            std::mem::forget(guards);
            return Err(KafkaJobError::FailedFast(reason));
        }
    }
    let results = guards.join();
    // The workers have ended, their hand-over with them: the committer commits what is queued
    // and ends. Only then may the run report success.
    let committed = finish_committer(&handover, committer);
    shutdown.finish();
    if let Some(poller) = poller {
        let _ = poller.join();
    }
    outcome(committed, results)
}

/// One worker: installs the dataflow, with worker 0's sink handing live epochs to the
/// committer, and consumes its partitions (`p mod peers = index`).
fn run_worker(
    worker: &mut Worker,
    job: &KafkaJob,
    partitions: i32,
    handover: &Mutex<Option<Handover>>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> Result<Consumption, SourceError> {
    let _running = shutdown.worker_started();
    let (index, peers) = (worker.index(), worker.peers());
    let replaying = matches!(job.source.recovery, Recovery::Replay(_));
    let epoch_sink = PostgresEpochs {
        handover: if index == 0 { handover.lock().unwrap_or_else(PoisonError::into_inner).take() } else { None },
        replayed_state: replaying.then(Changes::default),
    };
    // The rebuilding epochs' table changes are what Postgres holds: dropped where they are
    // made. Their state changes too, unless they come from a replay (new to Postgres).
    let sink_from = SinkFrom { tables_from: LIVE, state_from: Some(if replaying { 0 } else { LIVE }) };
    let options = pipeline::Options { emit_co_listens: job.emit_co_listens, emit_events: job.emit_events, refresh: job.refresh, sink_from };
    let mut inputs = pipeline::install(worker, &job.params, options, epoch_sink);
    // Replayed messages are in the log already.
    inputs.log_events_from(LIVE);
    let mine: Vec<i32> = (0..partitions).filter(|p| *p as usize % peers == index).collect();
    let mut report = WorkerReport::new(Arc::clone(metrics));
    let consumed = consume(worker, &mut inputs, &job.source, &mine, shutdown, &mut report);
    if let Err(error) = &consumed {
        // This worker cannot go on (e.g. Kafka failed for good): the other workers of this
        // process finish as on Ctrl-C, committing every complete epoch, and the run reports
        // the error. Other processes' workers never see this request; see `run`.
        shutdown.worker_failed(error.to_string());
    }
    inputs.close();
    while worker.step_or_park(Some(Duration::from_millis(100))) {}
    consumed
}

/// The number of this process's workers, and whether other processes take part.
fn local_workers(config: &timely::Config) -> (usize, bool) {
    match &config.communication {
        timely::CommunicationConfig::Cluster { threads, addresses, .. } => (*threads, addresses.len() > 1),
        timely::CommunicationConfig::Process(threads) | timely::CommunicationConfig::ProcessBinary(threads) => (*threads, false),
        timely::CommunicationConfig::Thread => (1, false),
    }
}

/// Starts process 0's committer thread over `sink`.
fn start_committer(
    mut sink: PgSink,
    job: &KafkaJob,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
    run_started: Instant,
) -> Result<(Handover, Committer<SinkError>), KafkaJobError> {
    metrics.set_committed(&job.source.committed);
    if matches!(job.source.recovery, Recovery::Replay(_)) {
        // The replayed state goes into the first commit, which records it as complete.
        sink.mark_state_on_next_commit(&job.source.topic);
    }
    let commit = postgres_commit(sink, job.source.topic.clone(), Arc::clone(metrics), run_started);
    Committer::spawn(commit, shutdown.clone())
        .map_err(|error| KafkaJobError::Crashed(format!("cannot start the committer thread: {error}")))
}

/// The commit function of process 0's committer thread: one [`PgSink::commit`] per call (one
/// or more consecutive live epochs), its metrics, and the `first live commit` log line.
fn postgres_commit(
    mut sink: PgSink,
    topic: String,
    metrics: Arc<Metrics>,
    run_started: Instant,
) -> impl FnMut(RangeInclusive<Epoch>, &Changes) -> Result<(), SinkError> + Send + 'static {
    let mut first = true;
    move |epochs, changes| {
        let started = Instant::now();
        let stats = sink.commit(&topic, changes, &changes.offsets)?;
        let epoch = *epochs.end();
        if stats.attempts > 0 {
            metrics.record_commit(epochs.start() - LIVE..=epoch - LIVE, started.elapsed(), &stats, &changes.offsets);
            if std::mem::take(&mut first) {
                // Every replayed epoch was complete before this one could close: the job is live.
                info!(epoch = epoch - LIVE, seconds = run_started.elapsed().as_secs_f64(), "first live commit");
            }
        }
        tracing::debug!(epoch = epoch - LIVE, upserted = stats.upserted, deleted = stats.deleted, "committed");
        Ok(())
    }
}

/// The worker 0 sink: hands live epochs to the committer, skips the rebuilding ones. `None`
/// on every other worker and process.
struct PostgresEpochs {
    handover: Option<Handover>,
    /// Replaying: the durable state of the replayed epochs, written with the first live one.
    replayed_state: Option<Changes>,
}

impl EpochSink for PostgresEpochs {
    fn epoch_closed(&mut self, epoch: Epoch, mut changes: Changes) {
        if epoch < LIVE {
            // Rebuilding: Postgres already holds the tables (the gather dropped their changes),
            // but a replay's state is new to it.
            if let Some(state) = self.replayed_state.as_mut() {
                state.absorb(Changes { last_listens: changes.last_listens, ..Changes::default() });
            }
            return;
        }
        if let Some(mut state) = self.replayed_state.take() {
            state.absorb(changes);
            changes = state;
        }
        if let Some(handover) = self.handover.as_mut() {
            // Blocks while the committer's queue is full. `false`: a commit failed, the
            // shutdown is requested, and this and every later epoch must stay uncommitted.
            if !handover.hand_over(epoch, changes) {
                self.handover = None;
            }
        }
    }
}

/// Drops the hand-over if no worker took it and waits for the committer to commit every epoch
/// handed over (or to stop at its first failure).
fn finish_committer(handover: &Mutex<Option<Handover>>, committer: Option<Committer<SinkError>>) -> Result<(), CommitterFailed<SinkError>> {
    // A poisoned lock (a worker panicked) still holds the hand-over, which must be dropped.
    handover.lock().unwrap_or_else(PoisonError::into_inner).take();
    match committer {
        Some(committer) => committer.join().map(|committed| tracing::debug!(committed, "committer finished")),
        None => Ok(()),
    }
}

/// The run's result from the committer's and the workers': a failed commit first (the
/// workers stopped because of it), then the first other failure, else the consumption.
fn outcome(
    committed: Result<(), CommitterFailed<SinkError>>,
    workers: Vec<Result<Result<Consumption, SourceError>, String>>,
) -> Result<Consumption, KafkaJobError> {
    let (failed_commit, mut first_error) = match committed {
        Ok(()) => (None, None),
        Err(CommitterFailed::Commit(error)) => (Some(error), None),
        Err(CommitterFailed::Panicked(panic)) => (None, Some(KafkaJobError::Crashed(panic))),
    };
    let mut consumed = Consumption::default();
    for result in workers {
        match result {
            Ok(Ok(worker)) => consumed.add(&worker),
            Ok(Err(error)) => {
                first_error.get_or_insert(error.into());
            }
            Err(panic) => {
                first_error.get_or_insert(KafkaJobError::Crashed(panic));
            }
        }
    }
    if let Some(error) = failed_commit {
        return Err(KafkaJobError::Postgres(error));
    }
    first_error.map_or(Ok(consumed), Err)
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;

    use super::*;

    #[test]
    fn exit_lines_say_each_cause_once() {
        // encore-flow prints `{:#}`, which appends every `source` to the message.
        let err = anyhow::Error::from(KafkaJobError::from(SourceError::from(KafkaError::ClientCreation("boom".into()))));
        assert_eq!(format!("{err:#}"), "Kafka: Client creation error: boom");
        let err = anyhow::Error::from(KafkaJobError::Postgres(SinkError::Config("bad URL".into())));
        assert_eq!(format!("{err:#}"), "Postgres: bad URL");
        let err = anyhow::Error::from(KafkaJobError::from(SourceError::from(SinkError::Config("bad URL".into()))));
        assert_eq!(format!("{err:#}"), "Postgres: bad URL");
    }
}
