//! The file source (`encore-flow --input FILE`): JSON lines, line `i` to worker `i mod W`, in
//! epochs of `--epoch-events` lines.
//!
//! Every process reads the same file on its own host; global worker `w` of `W` takes the lines
//! whose 0-based number is `w mod W`. Line `i` belongs to epoch `i / epoch_events` on every
//! worker, so an epoch means the same set of lines whatever the worker count, and the state
//! after each epoch is the SPEC §2 function of that prefix of the file, but for the stored
//! recommendations of users that did not listen in it (refreshed as `--refresh-idle` allows,
//! SPEC §2 step 6). Workers run up to [`MAX_EPOCHS_IN_FLIGHT`] epochs ahead of the sink, as
//! the Kafka source does: they compute earlier epochs while feeding later ones, memory stays
//! bounded by a few epochs of input, and the oracle tests, which run through here, check the
//! engine under the same overlap of epochs that the Kafka job produces.
//!
//! A line that is empty (after removing `\n` and `\r`) is not a message and is skipped; every
//! other invalid line becomes a `dead_letters` row with topic `file`, partition 0 and its line
//! number as offset.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use timely::worker::Worker;

use crate::pipeline::{Inputs, MAX_EPOCHS_IN_FLIGHT};

/// Where the lines come from.
#[derive(Clone, Debug)]
pub enum Lines {
    /// A JSON-lines file, read by every process.
    File(PathBuf),
    /// Lines held in memory (tests and benchmarks).
    Memory(Arc<Vec<Vec<u8>>>),
}

/// The input could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {reason}")]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// Why. Not a `source`: the message already says it, and `{:#}` would repeat it.
    pub reason: std::io::Error,
}

/// What a worker read from the lines.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinesRead {
    /// Non-empty lines (events) read by this worker's process (all, not only its share).
    pub events: u64,
    /// Epochs (the same count on every worker).
    pub epochs: u64,
}

/// Checks that `lines` can be read, before any worker starts: a missing file is one error
/// with its path rather than one per worker.
pub(crate) fn check_readable(lines: &Lines) -> Result<(), ReadError> {
    match lines {
        Lines::File(path) => File::open(path).map(drop).map_err(|reason| ReadError { path: path.clone(), reason }),
        Lines::Memory(_) => Ok(()),
    }
}

/// Feeds this worker's share of `lines` into `inputs`, closing an epoch every `epoch_events`
/// lines and staying within [`MAX_EPOCHS_IN_FLIGHT`] epochs of the sink. Leaves the last epoch
/// open.
pub(crate) fn feed(worker: &mut Worker, inputs: &mut Inputs, lines: &Lines, epoch_events: usize) -> Result<LinesRead, ReadError> {
    let index = worker.index() as u64;
    let peers = worker.peers() as u64;
    let epoch_events = epoch_events.max(1) as u64;
    let mut read = LinesRead::default();
    let mut feed = |line_number: u64, line: &[u8]| {
        let epoch = line_number / epoch_events;
        if epoch > inputs.epoch() {
            // Close the previous epoch; stay within a few epochs of the sink.
            inputs.advance_to(epoch);
            inputs.wait_for_sink(worker, epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT));
        }
        read.epochs = epoch + 1;
        if line.is_empty() {
            return;
        }
        read.events += 1;
        if line_number % peers == index {
            inputs.feed(line, "file", 0, line_number as i64);
        }
    };
    match lines {
        Lines::Memory(lines) => {
            for (number, line) in lines.iter().enumerate() {
                feed(number as u64, trim_line_end(line));
            }
        }
        Lines::File(path) => read_lines(path, &mut feed)?,
    }
    Ok(read)
}

/// Calls `feed(line number, line)` for every line of `path`, 0-based, without its `\n` or
/// `\r\n`: how `--input` reads a file (empty lines included; the caller skips them).
pub fn read_lines(path: &PathBuf, feed: &mut impl FnMut(u64, &[u8])) -> Result<(), ReadError> {
    let failed = |reason| ReadError { path: path.clone(), reason };
    let file = File::open(path).map_err(failed)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(failed)?;
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
