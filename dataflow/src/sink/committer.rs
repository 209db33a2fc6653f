//! The committer: one thread of process 0 that commits the closed live epochs worker 0 hands
//! it, strictly in epoch order, so that the dataflow keeps computing the next epochs while
//! Postgres commits. Its part in the exactly-once protocol ([`crate::sink::postgres`],
//! "Exactly once"): one writer, epochs in order, nothing after a failure.
//!
//! ```text
//!  worker 0, EpochSink ──► Handover ══ sync_channel(COMMIT_QUEUE) ══► committer thread
//!  (closed live epochs,     blocks while the queue is full               commit(epochs, changes)
//!   in epoch order)         (backpressure, bounded memory)               one at a time, in order;
//!                                                                         epochs queued meanwhile
//!                                                                         merged into the next
//!                                                                         │ first failure:
//!                                     Shutdown::request() ◄───────────────┤ stop the workers,
//!                                     Committer::join() ◄── the error ────┘ drop the receiver
//! ```
//!
//! # Order and failure
//!
//! The channel is FIFO and worker 0 hands epochs over in epoch order, so they commit in that
//! order; one thread commits, so never two at once; and after the first failed commit nothing
//! more is committed (the thread ends at once, dropping whatever is queued), since later epochs
//! build on the failed one. A restart resumes from the last committed offsets, as after any
//! crash.
//!
//! # Epochs merged into one transaction
//!
//! Epochs that queued up while a commit ran are merged into the next transaction
//! ([`Changes::absorb`]): their update triples summed per row, so a row changed in several of
//! them is written once, with its value after the last; the offsets are the last epoch's. A
//! transaction still holds every change of whole, consecutive epochs with the offsets they
//! reached: Postgres moves from the state after one epoch to the state after a later one,
//! never to a state between. It keeps live latency bounded when commits are slower than
//! epochs: the commits then take ever more epochs each instead of falling ever further behind.
//!
//! # Backpressure and shutdown
//!
//! The queue holds at most [`COMMIT_QUEUE`] epochs besides the one committing. When Postgres is
//! slower than the epochs close, [`Handover::hand_over`] blocks worker 0, and with it (through
//! the dataflow's progress tracking and the workers' in-flight bound) the consumers: memory
//! stays bounded, and the lag shows as consumer lag rather than as a growing queue.
//!
//! A blocked hand-over cannot deadlock: on failure (or a panic) the thread requests the
//! [`Shutdown`] and drops its receiver, which wakes a blocked sender with an error; the
//! hand-over then drops its sender and discards every later epoch, and the workers, seeing the
//! request, close their inputs and finish. [`Committer::join`] returns the failure.
//!
//! The thread ends once every [`Handover`] is dropped and the queue is empty:
//! [`Committer::join`] therefore returns only after every epoch handed over is committed. On
//! Ctrl-C (a shutdown requested from outside) the committer does not stop early: the workers
//! close their current epoch, the dataflow completes the epochs in flight, and each is
//! committed before the process exits, exactly as with `--until-caught-up`.

use std::ops::RangeInclusive;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::engine::Epoch;
use crate::shutdown::Shutdown;
use crate::tables::Changes;

/// Epochs that may wait for the committer besides the one it is committing. One lets the
/// dataflow finish the next epoch during a commit; a second absorbs an occasional slow commit
/// (a checkpoint, a retry) without stalling worker 0. More would only buy memory: a catch-up
/// epoch can hold millions of row changes, and the workers already run up to
/// `MAX_EPOCHS_IN_FLIGHT` epochs ahead of the hand-over.
pub const COMMIT_QUEUE: usize = 2;

/// Why the committer ended before every epoch handed over was committed.
#[derive(Debug, PartialEq, Eq)]
pub enum CommitterFailed<E> {
    /// A commit failed with this error; nothing after it was committed.
    Commit(E),
    /// The thread panicked (its message).
    Panicked(String),
}

/// Worker 0's end of the queue.
pub struct Handover {
    sender: Option<SyncSender<(Epoch, Changes)>>,
}

impl Handover {
    /// Queues `changes` of `epoch` for commit, blocking while the queue is full. Returns
    /// `false` (and discards the epoch) once the committer has ended after a failure: nothing
    /// more may be committed, and the shutdown is already requested.
    pub fn hand_over(&mut self, epoch: Epoch, changes: Changes) -> bool {
        let Some(sender) = &self.sender else { return false };
        if sender.send((epoch, changes)).is_ok() {
            return true;
        }
        self.sender = None;
        false
    }
}

/// The committer thread.
pub struct Committer<E> {
    thread: JoinHandle<Result<u64, E>>,
}

impl<E: Send + 'static> Committer<E> {
    /// Starts the thread; `commit` is called with the changes of one or more consecutive epochs
    /// handed over (the range from the first to the last), in order, until it fails, which
    /// requests the `shutdown`. Returns the sender side for worker 0.
    pub fn spawn<C>(mut commit: C, shutdown: Shutdown) -> std::io::Result<(Handover, Committer<E>)>
    where
        C: FnMut(RangeInclusive<Epoch>, &Changes) -> Result<(), E> + Send + 'static,
    {
        let (sender, receiver) = sync_channel(COMMIT_QUEUE);
        let thread = std::thread::Builder::new().name("committer".to_owned()).spawn(move || {
            // A panic in `commit` must release a blocked sender and stop the workers too.
            let guard = StopOnPanic(&shutdown);
            let committed = commit_all(&receiver, &mut commit);
            if committed.is_err() {
                shutdown.request();
            }
            // Dropped here, before the thread ends: a sender blocked on a full queue returns.
            drop(receiver);
            drop(guard);
            committed
        })?;
        Ok((Handover { sender: Some(sender) }, Committer { thread }))
    }

    /// Waits until every epoch handed over is committed (or the first failure), which needs
    /// every [`Handover`] dropped first. Returns the number of epochs committed.
    pub fn join(self) -> Result<u64, CommitterFailed<E>> {
        match self.thread.join() {
            Ok(committed) => committed.map_err(CommitterFailed::Commit),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(CommitterFailed::Panicked(format!("the Postgres committer panicked: {message}")))
            }
        }
    }
}

/// Commits every epoch received until the senders are gone (the number committed) or one
/// commit fails (its error).
fn commit_all<E, C>(receiver: &Receiver<(Epoch, Changes)>, commit: &mut C) -> Result<u64, E>
where
    C: FnMut(RangeInclusive<Epoch>, &Changes) -> Result<(), E>,
{
    let mut committed = 0;
    let mut last: Option<Epoch> = None;
    // `iter` ends when every sender is dropped and the queue is empty.
    for (first, mut changes) in receiver.iter() {
        debug_assert!(last.is_none_or(|last| last < first), "epochs are handed over in order");
        // Epochs that queued up during the previous commit join this one (see the module docs).
        let (mut epoch, mut epochs) = (first, 1);
        while let Ok((next, more)) = receiver.try_recv() {
            debug_assert!(epoch < next, "epochs are handed over in order");
            changes.absorb(more);
            (epoch, epochs) = (next, epochs + 1);
        }
        last = Some(epoch);
        // Nothing after a failed epoch may be committed: later ones build on it.
        commit(first..=epoch, &changes)?;
        committed += epochs;
    }
    Ok(committed)
}

/// Requests the shutdown if the committer thread unwinds.
struct StopOnPanic<'a>(&'a Shutdown);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.request();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Generous bound on waits that only a bug makes long: the test fails instead of hanging.
    const HANG: Duration = Duration::from_secs(60);

    /// A point in a commit function that tells the test it arrived, then waits for its go.
    struct Gate {
        entered: Receiver<()>,
        go: std::sync::mpsc::Sender<()>,
    }

    fn gate() -> (Gate, impl Fn() -> Result<(), String> + Send) {
        let (entered_tx, entered) = channel();
        let (go, go_rx) = channel::<()>();
        let wait = move || {
            entered_tx.send(()).map_err(|e| e.to_string())?;
            go_rx.recv().map_err(|e| e.to_string())
        };
        (Gate { entered, go }, wait)
    }

    fn changes(epoch: Epoch) -> Changes {
        let mut changes = Changes::default();
        changes.offsets.insert(0, epoch as i64);
        changes
    }

    #[test]
    fn every_epoch_handed_over_is_committed_in_order_before_join_returns() {
        let shutdown = Shutdown::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let (mut handover, committer) = Committer::spawn(
            move |epochs: RangeInclusive<Epoch>, changes: &Changes| {
                // Merged epochs carry the last one's offsets.
                assert_eq!(changes.offsets.get(&0), Some(&(*epochs.end() as i64)), "the epochs' own changes");
                log.lock().map_err(|e| e.to_string())?.push(epochs);
                Ok::<(), String>(())
            },
            shutdown.clone(),
        )
        .expect("spawn");
        // A stop from outside (Ctrl-C) does not make the committer drop epochs.
        shutdown.request();
        for epoch in 10..60 {
            assert!(handover.hand_over(epoch, changes(epoch)));
        }
        drop(handover);
        assert_eq!(committer.join(), Ok(50));
        // Every epoch in exactly one transaction, in order (consecutive ranges from 10 to 59).
        let seen = seen.lock().expect("lock");
        let covered: Vec<Epoch> = seen.iter().flat_map(|range| range.clone()).collect();
        assert_eq!(covered, (10..60).collect::<Vec<_>>(), "{seen:?}");
    }

    #[test]
    fn after_a_failure_nothing_later_is_committed_and_a_blocked_sender_is_released() {
        let shutdown = Shutdown::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        // The transaction holding epoch 2 waits for the test's go, then fails.
        let (gate, wait) = gate();
        let (mut handover, committer) = Committer::spawn(
            move |epochs: RangeInclusive<Epoch>, _changes: &Changes| {
                if epochs.contains(&2) {
                    wait()?;
                    return Err("Postgres unreachable".to_owned());
                }
                log.lock().map_err(|e| e.to_string())?.push(epochs);
                Ok(())
            },
            shutdown.clone(),
        )
        .expect("spawn");
        // Epoch 1 alone, committed before anything else is handed over.
        assert!(handover.hand_over(1, changes(1)));
        let deadline = std::time::Instant::now() + HANG;
        while seen.lock().expect("lock").is_empty() {
            assert!(std::time::Instant::now() < deadline, "epoch 1 commits");
            std::thread::sleep(Duration::from_millis(1));
        }

        let handed = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&handed);
        let (done_tx, done) = channel();
        let sender = std::thread::spawn(move || {
            let mut accepted = Vec::new();
            for epoch in 2..=20 {
                if handover.hand_over(epoch, changes(epoch)) {
                    accepted.push(epoch);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _ = done_tx.send(());
            accepted
        });
        gate.entered.recv_timeout(HANG).expect("epoch 2 reaches the committer");
        // At least epoch 2 left the queue, and COMMIT_QUEUE more fill it: the sender blocks.
        while handed.load(Ordering::SeqCst) < 1 + COMMIT_QUEUE {
            assert!(std::time::Instant::now() < deadline, "the queue fills");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(done.try_recv().is_err(), "the sender cannot finish while the queue is full");
        gate.go.send(()).expect("release epoch 2");
        done.recv_timeout(HANG).expect("the blocked sender was released by the failure");
        let accepted = sender.join().expect("sender thread");
        assert!(accepted.len() < 19, "epochs after the failure are refused: {accepted:?}");

        assert_eq!(committer.join(), Err(CommitterFailed::Commit("Postgres unreachable".to_owned())));
        assert_eq!(*seen.lock().expect("lock"), vec![1..=1], "nothing after the failed epoch");
        assert!(shutdown.is_requested(), "the workers are told to stop");
    }

    #[test]
    fn epochs_queued_during_a_commit_are_merged_into_the_next() {
        let shutdown = Shutdown::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let (gate, wait) = gate();
        let (mut handover, committer) = Committer::spawn(
            move |epochs: RangeInclusive<Epoch>, changes: &Changes| {
                if *epochs.start() == 1 {
                    wait()?; // the first commit holds until epochs 2 and 3 are queued
                }
                log.lock().map_err(|e| e.to_string())?.push((epochs, changes.clone()));
                Ok::<(), String>(())
            },
            shutdown.clone(),
        )
        .expect("spawn");
        let neighbors = |epoch: Epoch, rows: Vec<(u64, crate::tables::RankedList, i64)>| {
            let mut changes = changes(epoch);
            changes.track_neighbors = rows;
            changes
        };
        assert!(handover.hand_over(1, neighbors(1, vec![(1, vec![(2, 5)], 1)])));
        gate.entered.recv_timeout(HANG).expect("epoch 1 is committing");
        assert!(handover.hand_over(2, neighbors(2, vec![(1, vec![(2, 5)], -1), (1, vec![(2, 6)], 1)])));
        assert!(handover.hand_over(3, neighbors(3, vec![(1, vec![(2, 6)], -1), (1, vec![(2, 7)], 1), (3, vec![(4, 1)], 1)])));
        gate.go.send(()).expect("release epoch 1");
        drop(handover);
        assert_eq!(committer.join(), Ok(3));
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.iter().map(|(epochs, _)| epochs.clone()).collect::<Vec<_>>(), vec![1..=1, 2..=3]);
        // One write per row: N(1) goes from [2: 5] straight to [2: 7], with epoch 3's offsets.
        let merged = &seen[1].1;
        assert_eq!(merged.track_neighbors, vec![(1, vec![(2, 5)], -1), (1, vec![(2, 7)], 1), (3, vec![(4, 1)], 1)]);
        assert_eq!(merged.offsets.get(&0), Some(&3));
    }

    #[test]
    fn a_panicking_commit_stops_the_workers_and_releases_the_sender() {
        let shutdown = Shutdown::new();
        let (gate, wait) = gate();
        let (mut handover, committer) = Committer::spawn(
            move |_epochs: RangeInclusive<Epoch>, _changes: &Changes| -> Result<(), String> {
                wait()?; // epoch 1's commit holds until the queue is full and a sender blocks
                panic!("bug in the commit")
            },
            shutdown.clone(),
        )
        .expect("spawn");
        assert!(handover.hand_over(1, changes(1)));
        gate.entered.recv_timeout(HANG).expect("epoch 1 is committing");
        for epoch in 2..=1 + COMMIT_QUEUE as Epoch {
            assert!(handover.hand_over(epoch, changes(epoch)), "the queue takes epoch {epoch}");
        }
        // The queue is full and the committer is inside a commit: this send blocks.
        let (done_tx, done) = channel();
        let sender = std::thread::spawn(move || {
            let accepted = handover.hand_over(10, changes(10));
            done_tx.send(()).expect("report");
            (handover, accepted)
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(done.try_recv().is_err(), "the sender cannot finish while the queue is full");
        gate.go.send(()).expect("release epoch 1");
        done.recv_timeout(HANG).expect("the blocked sender was released by the panic");
        let (mut handover, accepted) = sender.join().expect("sender thread");
        assert!(!accepted, "the blocked epoch is refused, not queued");
        let Err(CommitterFailed::Panicked(error)) = committer.join() else { panic!("the panic is reported") };
        assert!(error.contains("bug in the commit"), "{error}");
        assert!(!handover.hand_over(11, changes(11)), "nothing is accepted after the panic");
        assert!(shutdown.is_requested(), "the workers are told to stop");
    }
}
