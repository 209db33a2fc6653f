//! How the threads of a Kafka job are told to stop, and how the job learns that they have: one
//! value, cloned into every thread of the process (mini-redis's `Shutdown` is the model).
//!
//! ```text
//!  Ctrl-C, SIGTERM, SIGHUP ─┐
//!  a failed commit ─────────┼─► request() ─► each worker sees is_requested() at its next poll:
//!  a failed worker ─────────┘               closes its epoch and its inputs, the dataflow drains
//!
//!  a worker starts ──► worker_started(): a guard; its drop (also on a panic) counts the end
//!  a worker fails  ──► worker_failed(reason) ──► wait_for_workers(): the first failure, or
//!                                                None once every local worker has ended
//!  workers and committer joined ──► finish() ──► the watermark poller's wait_finished() returns
//! ```
//!
//! Before the workers run, the process is still connecting to its peers (timely retries until
//! every one answers): it holds no state and has written nothing, so an interrupt may end it
//! at once ([`Shutdown::workers_started`] says when that is no longer so).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The stop signal and the end reports of one process's Kafka job; clones share them.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// Read at every poll of every worker: an atomic, not the lock.
    requested: AtomicBool,
    started: AtomicBool,
    ends: Mutex<Ends>,
    changed: Condvar,
}

/// What the threads have reported so far.
#[derive(Debug, Default)]
struct Ends {
    /// Local workers that have ended (returned or panicked).
    workers: usize,
    /// The first failure a local worker reported.
    failure: Option<String>,
    /// The workers and the committer have ended.
    finished: bool,
}

impl Shutdown {
    /// A signal nobody has raised yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks every worker to close its current epoch and finish: on Ctrl-C, after a failed
    /// commit, or when one worker failed. Every epoch already complete is still committed.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
    }

    /// Whether [`Shutdown::request`] was called.
    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Whether this process's workers have started: until then an interrupt has nothing to
    /// finish and may end the process at once.
    pub fn workers_started(&self) -> bool {
        self.0.started.load(Ordering::SeqCst)
    }

    /// Called by each worker as it starts; the guard reports its end when dropped, also when
    /// the worker panics.
    pub(crate) fn worker_started(&self) -> WorkerRunning {
        self.0.started.store(true, Ordering::SeqCst);
        WorkerRunning(self.clone())
    }

    /// A worker cannot go on: the other workers finish as on Ctrl-C, and the first such
    /// `reason` is what [`Shutdown::wait_for_workers`] returns.
    pub(crate) fn worker_failed(&self, reason: String) {
        self.request();
        self.ends().failure.get_or_insert(reason);
        self.0.changed.notify_all();
    }

    /// Waits until a local worker has failed (its reason) or all `workers` have ended (`None`).
    pub(crate) fn wait_for_workers(&self, workers: usize) -> Option<String> {
        let mut ends = self.ends();
        loop {
            if let Some(reason) = &ends.failure {
                return Some(reason.clone());
            }
            if ends.workers >= workers {
                return None;
            }
            ends = self.0.changed.wait(ends).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The workers and the committer have ended: threads that only observe them stop.
    pub(crate) fn finish(&self) {
        self.ends().finished = true;
        self.0.changed.notify_all();
    }

    /// Waits up to `timeout` for [`Shutdown::finish`]; whether it was called.
    pub(crate) fn wait_finished(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ends = self.ends();
        while !ends.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ends = self.0.changed.wait_timeout(ends, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    /// The reports; a thread that panicked while holding the lock left them consistent (each
    /// update is one assignment).
    fn ends(&self) -> MutexGuard<'_, Ends> {
        self.0.ends.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held by a running worker; dropping it reports the worker's end.
pub(crate) struct WorkerRunning(Shutdown);

impl Drop for WorkerRunning {
    fn drop(&mut self) {
        self.0.ends().workers += 1;
        self.0 .0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_reported_before_the_workers_end() {
        let shutdown = Shutdown::new();
        let (one, two) = (shutdown.worker_started(), shutdown.worker_started());
        assert!(shutdown.workers_started() && !shutdown.is_requested());
        let waiter = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || shutdown.wait_for_workers(2))
        };
        shutdown.worker_failed("Kafka failed".to_owned());
        shutdown.worker_failed("a later failure".to_owned());
        assert_eq!(waiter.join().expect("waiter"), Some("Kafka failed".to_owned()));
        assert!(shutdown.is_requested(), "the other workers are told to stop");
        drop((one, two));
    }

    #[test]
    fn workers_that_end_without_failing_are_counted_even_when_they_panic() {
        let shutdown = Shutdown::new();
        let running = shutdown.worker_started();
        let panicking = shutdown.clone();
        let worker = std::thread::spawn(move || {
            let _running = panicking.worker_started();
            panic!("a worker panics");
        });
        assert!(worker.join().is_err());
        drop(running);
        assert_eq!(shutdown.wait_for_workers(2), None);
    }

    #[test]
    fn observers_wait_until_finished() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.wait_finished(Duration::from_millis(1)));
        let observer = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || shutdown.wait_finished(Duration::from_secs(60)))
        };
        shutdown.finish();
        assert!(observer.join().expect("observer"));
    }
}
