//! The send loop shared by `encore-gen stream` and the benchmark: draw a message, pace it,
//! hand it to a sink; stop after `--events` messages or when asked (Ctrl-C).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::kafka::{KafkaSink, KafkaSinkError};
use crate::pace::Pacer;
use crate::stream::{EventStream, Message};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Creating or writing the output file failed.
    #[error("cannot write {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error. Not a `source`: the message already says it, and `{:#}` would
        /// repeat it.
        reason: std::io::Error,
    },
    /// Producing to Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSinkError),
}

/// Where messages go.
pub enum Sink {
    /// JSON lines (one message a line) to a file or stdout.
    Lines {
        /// The buffered writer.
        writer: BufWriter<Box<dyn Write + Send>>,
        /// For error messages.
        path: PathBuf,
    },
    /// A Kafka topic.
    Kafka(KafkaSink),
}

impl Sink {
    /// A JSON-lines sink writing to `path` (`-` for stdout), created or truncated.
    pub fn lines(path: PathBuf) -> Result<Sink, SinkError> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(&path).map_err(|reason| SinkError::File { path: path.clone(), reason })?)
        };
        // 1 MiB buffer: one write system call per ~7 000 events.
        Ok(Sink::Lines { writer: BufWriter::with_capacity(1 << 20, out), path })
    }

    fn write(&mut self, key: Option<u64>, payload: &[u8]) -> Result<(), SinkError> {
        match self {
            Sink::Lines { writer, path } => {
                let result = writer.write_all(payload).and_then(|()| writer.write_all(b"\n"));
                result.map_err(|reason| SinkError::File { path: path.clone(), reason })
            }
            Sink::Kafka(kafka) => Ok(kafka.send(key, payload)?),
        }
    }

    fn check(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::Lines { .. } => Ok(()),
            Sink::Kafka(kafka) => Ok(kafka.check()?),
        }
    }

    /// Writes out everything buffered or in flight.
    pub fn finish(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::Lines { writer, path } => writer.flush().map_err(|reason| SinkError::File { path: path.clone(), reason }),
            Sink::Kafka(kafka) => Ok(kafka.flush()?),
        }
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages handed to the sink (events + malformed).
    pub messages: u64,
    /// Of which malformed.
    pub invalid: u64,
    /// Whether the run was stopped early (Ctrl-C).
    pub interrupted: bool,
    /// Time from the first message to the end of the flush.
    pub elapsed: Duration,
}

impl Totals {
    /// Messages per second over the run.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How many messages to send and how fast.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Messages to send; 0 = until stopped.
    pub events: u64,
    /// Messages per second; 0 = as fast as possible.
    pub rate: f64,
}

/// Sends messages from `stream` to `sink` until `options.events` are sent or `stop` is set,
/// then flushes. `progress` is called with the count so far: every message at slow paced
/// rates (≤ 10 000/s, so a bar moves smoothly), every 1 024 messages otherwise.
pub fn run(
    stream: &mut EventStream,
    sink: &mut Sink,
    options: RunOptions,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<Totals, SinkError> {
    let started = Instant::now();
    let mut pacer = Pacer::new(options.rate);
    let report_each = options.rate > 0.0 && options.rate <= 10_000.0;
    let mut payload = Vec::with_capacity(512);
    let mut totals = Totals::default();
    while options.events == 0 || totals.messages < options.events {
        pacer.wait(stop);
        if stop.load(Ordering::Relaxed) {
            totals.interrupted = true;
            break;
        }
        let message = stream.next_message(&mut payload);
        sink.write(message.key(), &payload)?;
        totals.messages += 1;
        if let Message::Invalid(_) = message {
            totals.invalid += 1;
        }
        if report_each || totals.messages % 1024 == 0 {
            progress(totals.messages);
        }
        if report_each || totals.messages % 4096 == 0 {
            // Serve Kafka delivery reports; fail early if the broker rejects messages (at slow
            // rates on every message, so a failure is noticed within the delivery timeout).
            sink.check()?;
        }
    }
    progress(totals.messages);
    sink.finish()?;
    totals.elapsed = started.elapsed();
    Ok(totals)
}
