//! The file job, `encore-flow --input FILE`: the file source ([`crate::source::file`]) through
//! the same dataflow as the Kafka job, to a sink that receives every closed epoch (the CSV
//! files of `--output-dir`, or a test's). Its last epoch refreshes every stale user, so the
//! output is at rest (SPEC §4 `--input`).

use std::time::Instant;

use crate::engine::RefreshBudget;
use crate::pipeline;
use crate::sink::{EpochSink, SinkFrom};
use crate::source::file::{self, Lines, ReadError};
use crate::tables::Params;

/// A run over lines.
#[derive(Clone, Debug)]
pub struct FileJob {
    /// The input.
    pub lines: Lines,
    /// SPEC §2 parameters.
    pub params: Params,
    /// Whether to compute `co_listens`.
    pub emit_co_listens: bool,
    /// Whether to pass every valid event to the sink ([`Changes::events`](crate::tables::Changes::events)),
    /// with partition 0 and its line number as offset.
    pub emit_events: bool,
    /// Lines per epoch (≥ 1).
    pub epoch_events: usize,
    /// Stale users refreshed per worker per epoch (`--refresh-idle`); the last epoch
    /// refreshes every stale user, so the output is at rest.
    pub refresh: RefreshBudget,
}

/// What one worker of a file job did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FileWorkerSummary {
    /// Non-empty lines (events) read by this worker's process (all, not only its share).
    pub events: u64,
    /// Epochs (the same count on every worker).
    pub epochs: u64,
    /// Wall-clock seconds from start to the last epoch received by the sink.
    pub seconds: f64,
}

/// A failure of a file job.
#[derive(Debug, thiserror::Error)]
pub enum FileJobError {
    /// The input could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A worker failed (a panic or a lost peer process).
    #[error("worker failed: {0}")]
    Crashed(String),
}

/// Runs `job` on the workers of `config`; worker 0 of process 0 hands every closed epoch to
/// the sink `make_sink` builds (the other workers build one too, which receives nothing).
/// Returns, per local worker, what it did.
pub fn run<S, F>(config: timely::Config, job: FileJob, make_sink: F) -> Result<Vec<FileWorkerSummary>, FileJobError>
where
    S: EpochSink,
    F: Fn() -> S + Send + Sync + 'static,
{
    file::check_readable(&job.lines)?;
    let guards = timely::execute(config, move |worker| {
        let options = pipeline::Options {
            emit_co_listens: job.emit_co_listens,
            emit_events: job.emit_events,
            refresh: job.refresh,
            sink_from: SinkFrom::default(),
        };
        let mut inputs = pipeline::install(worker, &job.params, options, make_sink());
        let started = Instant::now();
        let read = file::feed(worker, &mut inputs, &job.lines, job.epoch_events);
        // The last epoch ends at rest (SPEC §4 `--input`): every stale user is refreshed in
        // it. Then close the inputs; the last epoch completes and the dataflow drains.
        inputs.refresh_all_in_this_epoch();
        inputs.close();
        while worker.step_or_park(None) {}
        let seconds = started.elapsed().as_secs_f64();
        read.map(|read| FileWorkerSummary { events: read.events, epochs: read.epochs, seconds })
    })
    .map_err(FileJobError::Crashed)?;

    let mut summaries = Vec::new();
    for result in guards.join() {
        match result {
            Ok(Ok(summary)) => summaries.push(summary),
            Ok(Err(error)) => return Err(error.into()),
            Err(panic) => return Err(FileJobError::Crashed(panic)),
        }
    }
    Ok(summaries)
}
