//! The Kafka job: the threads of one process and how they end.
//!
//! ```text
//!  committer thread (process 0, with a sink): PgSink, one transaction per closed live epoch
//!        ▲ Handover (bounded queue), taken by worker 0's EpochSink (PostgresEpochs)
//!  timely workers: pipeline::install_with ─► source::kafka's consume loop, until stopped
//!  watermark poller thread (with served metrics): the partitions' high watermarks
//! ```
//!
//! [`run_with_metrics`] starts the committer before the workers and joins it after them, so
//! that `Ok` means every live epoch handed over is committed; the guarantee itself is at the
//! top of [`crate::source::kafka`] (offsets, state and changes in one transaction) and
//! `sink/committer.rs` (in order, nothing after a failure).
//!
//! # Stopping
//!
//! `--until-caught-up` and Ctrl-C end the same way: the workers close their current epoch and
//! their inputs, the dataflow completes every epoch in flight, and the committer commits each
//! of them before the process exits 0. A failed commit sets the stop flag, commits nothing
//! more, and the process exits non-zero with the commit's one-line reason; a restart resumes
//! from the last committed offsets.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;

use crate::engine::Epoch;
use crate::metrics::{Metrics, WorkerReport};
use crate::pipeline;
use crate::sink::committer::{Committer, Halt, Handover};
use crate::sink::postgres::{PgSink, SinkError};
use crate::sink::{EpochSink, Gathered};
use crate::source::kafka::{consume, partition_count, watch_watermarks, Recovery, StreamError, StreamJob, StreamSummary, LIVE};
use crate::tables::Changes;

/// Set once this process's timely workers run. Before that the process is still connecting
/// to its peers (timely retries until every one answers), holds no state and has written
/// nothing, so an interrupt may end it at once instead of waiting for an epoch to close.
pub static WORKERS_STARTED: AtomicBool = AtomicBool::new(false);

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
            // Blocks while the committer's queue is full. `false`: a commit failed, the stop
            // flag is set, and this and every later epoch must stay uncommitted.
            if !handover.hand_over(epoch, changes) {
                self.handover = None;
            }
        }
    }
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

/// Runs the job on this process's workers. `sink` is this process's Postgres connection;
/// only process 0's is used for writing (by its committer thread).
pub fn run(config: timely::Config, job: StreamJob, sink: Option<PgSink>, stop: Arc<AtomicBool>) -> Result<StreamSummary, StreamError> {
    run_with_metrics(config, job, sink, stop, None)
}

/// [`run`], publishing to `metrics` ([`crate::metrics`]): the workers at every epoch close,
/// the committer after every commit, and a poller thread the partitions' high watermarks
/// every [`crate::source::kafka::WATERMARK_INTERVAL`].
///
/// With a `sink`, this is where the committer thread starts and ends: spawned before the
/// workers, its hand-over taken by worker 0, joined after the workers, so that `Ok` means
/// every live epoch is committed.
pub fn run_with_metrics(
    config: timely::Config,
    job: StreamJob,
    sink: Option<PgSink>,
    stop: Arc<AtomicBool>,
    metrics: Option<Arc<Metrics>>,
) -> Result<StreamSummary, StreamError> {
    let run_started = Instant::now();
    let partitions = partition_count(&job)?;
    let served = metrics.is_some();
    // Unserved, the registry is still updated (a few atomics per epoch) but never read.
    let metrics = metrics.unwrap_or_else(|| Arc::new(Metrics::new(0, false)));
    if sink.is_some() {
        metrics.set_committed(&job.committed);
    }
    let poller_job = job.clone();
    let worker_metrics = Arc::clone(&metrics);
    let failure = Arc::new(Mutex::new(None));
    let halt = Halt { failure: Arc::clone(&failure), stop: Arc::clone(&stop) };
    let replaying = matches!(job.recovery, Recovery::Replay(_));
    let (handover, committer) = match sink {
        Some(mut sink) => {
            if replaying {
                // The replayed state goes into the first commit, which records it as complete.
                sink.mark_state_on_next_commit(&job.topic);
            }
            let commit = postgres_commit(sink, job.topic.clone(), Arc::clone(&metrics), run_started);
            let (handover, committer) = Committer::spawn(commit, halt)
                .map_err(|error| StreamError::Worker(format!("cannot start the committer thread: {error}")))?;
            (Some(handover), Some(committer))
        }
        None => (None, None),
    };
    // Worker 0 takes the hand-over; whatever is left here is dropped after the workers end,
    // so that the committer sees the end of its queue even if no worker took it.
    let handover = Arc::new(Mutex::new(handover));
    let worker_handover = Arc::clone(&handover);
    let worker_stop = Arc::clone(&stop);
    let (local_workers, other_processes) = match &config.communication {
        timely::CommunicationConfig::Cluster { threads, addresses, .. } => (*threads, addresses.len() > 1),
        timely::CommunicationConfig::Process(threads) | timely::CommunicationConfig::ProcessBinary(threads) => (*threads, false),
        timely::CommunicationConfig::Thread => (1, false),
    };
    // Each worker says here when it has failed (`Some(reason)`) and when it has ended (`None`).
    let (worker_events, ended) = std::sync::mpsc::channel::<Option<String>>();
    let guards = timely::execute(config, move |worker| {
        WORKERS_STARTED.store(true, Ordering::SeqCst);
        let _ended = WorkerEnded(worker_events.clone());
        let index = worker.index();
        let peers = worker.peers();
        let epoch_sink = PostgresEpochs {
            handover: if index == 0 { worker_handover.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() } else { None },
            replayed_state: replaying.then(Changes::default),
        };
        // The rebuilding epochs' table changes are what Postgres holds: dropped where they are
        // made. Their state changes too, unless they come from a replay (new to Postgres).
        let gathered = Gathered { tables_from: LIVE, state_from: Some(if replaying { 0 } else { LIVE }) };
        let options =
            pipeline::Options { emit_co_listens: job.emit_co_listens, emit_events: job.emit_events, refresh: job.refresh, gathered };
        let mut inputs = pipeline::install(worker, &job.params, options, epoch_sink);
        // Replayed messages are in the log already.
        inputs.log_events_from(LIVE);
        let mine: Vec<i32> = (0..partitions).filter(|p| *p as usize % peers == index).collect();
        let mut report = WorkerReport::new(Arc::clone(&worker_metrics));
        let result = consume(worker, &mut inputs, &job, &mine, &worker_stop, &mut report);
        if let Err(error) = &result {
            // This worker cannot go on (e.g. Kafka failed for good): the other workers of this
            // process finish as on Ctrl-C, committing every complete epoch, and the run reports
            // the error. Other processes' workers never see this flag; see below.
            worker_stop.store(true, Ordering::SeqCst);
            let _ = worker_events.send(Some(error.to_string()));
        }
        inputs.close();
        while worker.step_or_park(Some(Duration::from_millis(100))) {}
        result
    });
    let guards = match guards {
        Ok(guards) => guards,
        Err(error) => {
            let _ = finish_committer(&handover, committer); // it committed nothing: no worker ran
            return Err(StreamError::Worker(error));
        }
    };
    let finished = Arc::new(AtomicBool::new(false));
    let poller = served.then(|| watch_watermarks(poller_job, metrics, Arc::clone(&finished))).flatten();

    if other_processes {
        // A failed worker stops only this process's workers; the other processes' workers keep
        // their inputs open, so the dataflow would never complete and this process would wait
        // for ever. Return the failure at once instead: the process exits with it, its peers
        // then exit too (a lost peer), and nothing uncommitted was written (the open
        // transaction, if any, rolls back with the connection), as after a crash.
        let mut finished = 0;
        while finished < local_workers {
            match ended.recv() {
                Ok(Some(reason)) => {
                    // Dropping the guards would join the workers, which may wait for ever.
                    std::mem::forget(guards);
                    return Err(StreamError::WorkerFailed(reason));
                }
                Ok(None) => finished += 1,
                Err(_) => break,
            }
        }
    }
    let mut summary = StreamSummary::default();
    let mut first_error = None;
    let results = guards.join();
    // The workers have ended, their hand-over with them: the committer commits what is queued
    // and ends. Only then may the run report success.
    let committer_result = finish_committer(&handover, committer);
    finished.store(true, Ordering::SeqCst);
    if let Some(poller) = poller {
        let _ = poller.join();
    }
    if let Err(panic) = committer_result {
        first_error.get_or_insert(StreamError::Worker(panic));
    }
    for result in results {
        match result {
            Ok(Ok(worker)) => {
                summary.live_messages += worker.live_messages;
                summary.replayed_messages += worker.replayed_messages;
                summary.invalid += worker.invalid;
                summary.listens += worker.listens;
                summary.replay_seconds = summary.replay_seconds.max(worker.replay_seconds);
                summary.restored_rows += worker.restored_rows;
                summary.seconds = summary.seconds.max(worker.seconds);
            }
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(panic) => {
                first_error.get_or_insert(StreamError::Worker(panic));
            }
        }
    }
    if let Some(error) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(StreamError::Postgres(error));
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

/// Tells the run that a worker has ended when dropped (also when the worker panics).
struct WorkerEnded(std::sync::mpsc::Sender<Option<String>>);

impl Drop for WorkerEnded {
    fn drop(&mut self) {
        let _ = self.0.send(None);
    }
}

/// Drops the hand-over if no worker took it and waits for the committer to commit every epoch
/// handed over (or to stop at its first failure, recorded in the failure slot).
fn finish_committer(handover: &Mutex<Option<Handover>>, committer: Option<Committer>) -> Result<(), String> {
    // A poisoned lock (a worker panicked) still holds the hand-over, which must be dropped.
    handover.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    match committer {
        Some(committer) => committer.join().map(|committed| tracing::debug!(committed, "committer finished")),
        None => Ok(()),
    }
}
