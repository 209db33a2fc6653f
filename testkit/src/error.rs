//! Errors of the test harness. Each says what to do about it where that is knowable
//! (a missing binary names the command that installs it), because the reader is someone whose
//! test just failed for a reason unrelated to the code they changed.

use std::path::PathBuf;

/// Why a test server could not be started, stopped or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server binary is not installed where the harness looks for it.
    #[error("{binary} not found: {hint}")]
    MissingBinary {
        /// The program that was looked for.
        binary: &'static str,
        /// How to install it.
        hint: &'static str,
    },
    /// A program could not be started at all.
    #[error("could not run {command}: {source}")]
    Spawn {
        /// The command line, for the reader.
        command: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A program ran and reported failure.
    #[error("{command} failed ({status}): {output}")]
    CommandFailed {
        /// The command line, for the reader.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of what it printed (stdout and stderr, or its log file).
        output: String,
    },
    /// A server process started but never became ready, or exited while starting.
    #[error("{server} did not become ready on 127.0.0.1:{port}: {reason}; log {log}:\n{log_tail}")]
    NotReady {
        /// Which server.
        server: &'static str,
        /// The port it was given.
        port: u16,
        /// What was observed (exit status, or the time waited).
        reason: String,
        /// Where its full log is.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// A Kafka admin or metadata request failed.
    #[error("kafka request to {brokers} failed: {source}")]
    Kafka {
        /// The bootstrap address used.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("creating topic {topic}: {reason}")]
    CreateTopic {
        /// The topic's name.
        topic: String,
        /// The broker's error code and message.
        reason: String,
    },
    /// A file or directory operation on the harness's own files failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A test certificate could not be generated.
    #[error("generating a test certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

impl Error {
    /// A server that did not come up: `reason`, with the tail of its log at `log`.
    pub(crate) fn not_ready(server: &'static str, port: u16, reason: String, log: PathBuf) -> Error {
        let log_tail = crate::process::log_tail(&log, 20);
        Error::NotReady { server, port, reason, log, log_tail }
    }
}
