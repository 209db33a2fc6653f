//! `encore-flow --input FILE`: JSON lines in, epochs of `--epoch-events` lines, the same
//! dataflow as the streaming job.
//!
//! Every process reads the same file on its own host; global worker `w` of `W` takes the lines
//! whose 0-based number is `w mod W`. Line `i` belongs to epoch `i / epoch_events` on every
//! worker, so an epoch means the same set of lines whatever the worker count, and the state
//! after each epoch is the SPEC §2 function of that prefix of the file, but for the stored
//! recommendations of users that did not listen in it (refreshed as `--refresh-idle` allows,
//! SPEC §2 step 6). The last epoch refreshes every stale user: the output is at rest. Workers run up to
//! [`MAX_EPOCHS_IN_FLIGHT`] epochs ahead of the sink, as the Kafka job does: they compute
//! earlier epochs while feeding later ones, memory stays bounded by a few epochs of input, and
//! the oracle tests, which run through here, check the engine under the same overlap of epochs
//! that the Kafka job produces.
//!
//! A line that is empty (after removing `\n` and `\r`) is not a message and is skipped; every
//! other invalid line becomes a `dead_letters` row with topic `file`, partition 0 and its line
//! number as offset.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::RefreshBudget;
use crate::pipeline::{self, MAX_EPOCHS_IN_FLIGHT};
use crate::sink::{EpochSink, Gathered};
use crate::tables::Params;

/// Where the lines come from.
#[derive(Clone, Debug)]
pub enum Lines {
    /// A JSON-lines file, read by every process.
    File(PathBuf),
    /// Lines held in memory (tests and benchmarks).
    Memory(Arc<Vec<Vec<u8>>>),
}

/// A batch run over lines.
#[derive(Clone, Debug)]
pub struct BatchJob {
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

/// What one worker fed into the dataflow.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fed {
    /// Non-empty lines (events) read by this worker's process (all, not only its share).
    pub events: u64,
    /// Epochs (the same count on every worker).
    pub epochs: u64,
    /// Wall-clock seconds from start to the last epoch received by the sink.
    pub seconds: f64,
}

/// A failure of a batch run.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The input could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why. Not a `source`: the message already says it, and `{:#}` would repeat it.
        reason: std::io::Error,
    },
    /// A worker failed (a panic or a lost peer process).
    #[error("worker failed: {0}")]
    Worker(String),
}

/// Runs `job` on the workers of `config`; worker 0 of process 0 hands every closed epoch to
/// the sink `make_sink` builds (the other workers build one too, which receives nothing).
/// Returns, per local worker, what it fed.
pub fn run<S, F>(config: timely::Config, job: BatchJob, make_sink: F) -> Result<Vec<Fed>, BatchError>
where
    S: EpochSink,
    F: Fn() -> S + Send + Sync + 'static,
{
    if let Lines::File(path) = &job.lines {
        // Fail fast, with the path, before any worker starts.
        File::open(path).map_err(|reason| BatchError::Read { path: path.clone(), reason })?;
    }
    let guards = timely::execute(config, move |worker| {
        let index = worker.index() as u64;
        let peers = worker.peers() as u64;
        let options = pipeline::Options {
            emit_co_listens: job.emit_co_listens,
            emit_events: job.emit_events,
            refresh: job.refresh,
            gathered: Gathered::default(),
        };
        let mut inputs = pipeline::install(worker, &job.params, options, make_sink());

        let started = Instant::now();
        let epoch_events = job.epoch_events.max(1) as u64;
        let mut fed = Fed::default();
        let mut feed = |line_number: u64, line: &[u8]| {
            let epoch = line_number / epoch_events;
            if epoch > inputs.epoch() {
                // Close the previous epoch; stay within a few epochs of the sink.
                inputs.advance_to(epoch);
                inputs.wait_for_sink(worker, epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT));
            }
            fed.epochs = epoch + 1;
            if line.is_empty() {
                return;
            }
            fed.events += 1;
            if line_number % peers == index {
                inputs.feed(line, "file", 0, line_number as i64);
            }
        };
        let read = match &job.lines {
            Lines::Memory(lines) => {
                for (number, line) in lines.iter().enumerate() {
                    feed(number as u64, trim_line_end(line));
                }
                Ok(())
            }
            Lines::File(path) => read_lines(path, &mut feed),
        };
        // The last epoch ends at rest (SPEC §4 `--input`): every stale user is refreshed in
        // it. Then close the inputs; the last epoch completes and the dataflow drains.
        inputs.refresh_all_in_this_epoch();
        inputs.close();
        while worker.step_or_park(None) {}
        fed.seconds = started.elapsed().as_secs_f64();
        read.map(|()| fed)
    })
    .map_err(BatchError::Worker)?;

    let mut fed = Vec::new();
    for result in guards.join() {
        match result {
            Ok(Ok(worker_fed)) => fed.push(worker_fed),
            Ok(Err(error)) => return Err(error),
            Err(panic) => return Err(BatchError::Worker(panic)),
        }
    }
    Ok(fed)
}

/// Calls `feed(line number, line)` for every line of `path`, 0-based, without its `\n` or
/// `\r\n`: how `--input` reads a file (empty lines included; the caller skips them).
pub fn read_lines(path: &PathBuf, feed: &mut impl FnMut(u64, &[u8])) -> Result<(), BatchError> {
    let file = File::open(path).map_err(|reason| BatchError::Read { path: path.clone(), reason })?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(|reason| BatchError::Read { path: path.clone(), reason })?;
        if read == 0 {
            return Ok(());
        }
        feed(number, trim_line_end(&line));
        number += 1;
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
