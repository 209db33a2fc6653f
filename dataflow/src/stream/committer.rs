//! The committer: one thread of process 0 that commits the closed live epochs worker 0 hands
//! it, one transaction each, strictly in epoch order, so that the dataflow keeps computing the
//! next epochs while Postgres commits.
//!
//! ```text
//!  worker 0, EpochSink ──► Handover ══ sync_channel(COMMIT_QUEUE) ══► committer thread
//!  (closed live epochs,     blocks while the queue is full               commit(epoch, changes)
//!   in epoch order)         (backpressure, bounded memory)               one at a time, in order
//!                                                                         │ first failure:
//!                                          failure slot ◄── the error ────┤ record it, set stop,
//!                                          stop flag    ◄── true ─────────┘ drop the receiver
//! ```
//!
//! # Guarantee
//!
//! What the commit function guarantees per epoch (for [`crate::postgres::PgSink::commit`]: the
//! epoch's deltas and its offsets in one transaction) holds unchanged: the channel is FIFO and
//! worker 0 hands epochs over in epoch order, so they commit in that order; one thread commits,
//! so never two at once; and after the first failed commit nothing more is committed (the
//! thread ends at once, dropping whatever is queued), since later epochs build on the failed
//! one. A restart resumes from the last committed offsets, as after any crash.
//!
//! # Backpressure and shutdown
//!
//! The queue holds at most [`COMMIT_QUEUE`] epochs besides the one committing. When Postgres is
//! slower than the epochs close, [`Handover::hand_over`] blocks worker 0, and with it (through
//! the dataflow's progress tracking and the workers' in-flight bound) the consumers: memory
//! stays bounded, and the lag shows as consumer lag rather than as a growing queue.
//!
//! A blocked hand-over cannot deadlock: on failure (or a panic) the thread records the error,
//! sets the stop flag and drops its receiver, which wakes a blocked sender with an error; the
//! hand-over then drops its sender and discards every later epoch, and the workers, seeing the
//! stop flag, close their inputs and finish. The caller reports the recorded failure.
//!
//! The thread ends once every [`Handover`] is dropped and the queue is empty:
//! [`Committer::join`] therefore returns only after every epoch handed over is committed. On
//! Ctrl-C (the stop flag set from outside) the committer does not stop early: the workers close
//! their current epoch, the dataflow completes the epochs in flight, and each is committed
//! before the process exits, exactly as with `--until-caught-up`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::engine::Epoch;
use crate::tables::Changes;

/// Epochs that may wait for the committer besides the one it is committing. One lets the
/// dataflow finish the next epoch during a commit; a second absorbs an occasional slow commit
/// (a checkpoint, a retry) without stalling worker 0. More would only buy memory: a catch-up
/// epoch can hold millions of row changes, and the workers already run up to
/// `MAX_EPOCHS_IN_FLIGHT` epochs ahead of the hand-over.
pub const COMMIT_QUEUE: usize = 2;

/// Where the committer records its first failure, and the flag that stops the workers.
#[derive(Clone)]
pub struct Halt<E> {
    /// The first failure; the caller reports it after the run.
    pub failure: Arc<Mutex<Option<E>>>,
    /// Tells the workers to finish.
    pub stop: Arc<AtomicBool>,
}

impl<E> Halt<E> {
    fn fail(&self, error: Option<E>) {
        if let (Some(error), Ok(mut failure)) = (error, self.failure.lock()) {
            failure.get_or_insert(error);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Worker 0's end of the queue.
pub struct Handover {
    sender: Option<SyncSender<(Epoch, Changes)>>,
}

impl Handover {
    /// Queues `changes` of `epoch` for commit, blocking while the queue is full. Returns
    /// `false` (and discards the epoch) once the committer has ended after a failure: nothing
    /// more may be committed, and the stop flag is already set.
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
pub struct Committer {
    thread: JoinHandle<u64>,
}

impl Committer {
    /// Starts the thread; `commit` is called once per epoch handed over, in order, until it
    /// fails. Returns the sender side for worker 0.
    pub fn spawn<E, C>(mut commit: C, halt: Halt<E>) -> std::io::Result<(Handover, Committer)>
    where
        E: Send + 'static,
        C: FnMut(Epoch, &Changes) -> Result<(), E> + Send + 'static,
    {
        let (sender, receiver) = sync_channel(COMMIT_QUEUE);
        let thread = std::thread::Builder::new().name("committer".to_owned()).spawn(move || {
            // A panic in `commit` must release a blocked sender and stop the workers too.
            let guard = StopOnPanic(&halt);
            let committed = commit_all(&receiver, &mut commit, &halt);
            // Dropped here, before the thread ends: a sender blocked on a full queue returns.
            drop(receiver);
            drop(guard);
            committed
        })?;
        Ok((Handover { sender: Some(sender) }, Committer { thread }))
    }

    /// Waits until every epoch handed over is committed (or the first failure), which needs
    /// every [`Handover`] dropped first. Returns the number of epochs committed; `Err` holds a
    /// panic's message.
    pub fn join(self) -> Result<u64, String> {
        self.thread.join().map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            format!("the Postgres committer panicked: {message}")
        })
    }
}

/// Commits every epoch received until the senders are gone or one commit fails.
fn commit_all<E, C>(receiver: &Receiver<(Epoch, Changes)>, commit: &mut C, halt: &Halt<E>) -> u64
where
    C: FnMut(Epoch, &Changes) -> Result<(), E>,
{
    let mut committed = 0;
    let mut last: Option<Epoch> = None;
    // `iter` ends when every sender is dropped and the queue is empty.
    for (epoch, changes) in receiver.iter() {
        debug_assert!(last.is_none_or(|last| last < epoch), "epochs are handed over in order");
        last = Some(epoch);
        if let Err(error) = commit(epoch, &changes) {
            // Nothing after a failed epoch may be committed: later ones build on it.
            halt.fail(Some(error));
            return committed;
        }
        committed += 1;
    }
    committed
}

/// Sets the stop flag if the committer thread unwinds.
struct StopOnPanic<'a, E>(&'a Halt<E>);

impl<E> Drop for StopOnPanic<'_, E> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    /// Generous bound on waits that only a bug makes long: the test fails instead of hanging.
    const HANG: Duration = Duration::from_secs(60);

    fn halt() -> Halt<String> {
        Halt { failure: Arc::new(Mutex::new(None)), stop: Arc::new(AtomicBool::new(false)) }
    }

    fn changes(epoch: Epoch) -> Changes {
        let mut changes = Changes::default();
        changes.offsets.insert(0, epoch as i64);
        changes
    }

    #[test]
    fn every_epoch_handed_over_is_committed_in_order_before_join_returns() {
        let halt = halt();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let (mut handover, committer) = Committer::spawn(
            move |epoch, changes: &Changes| {
                assert_eq!(changes.offsets.get(&0), Some(&(epoch as i64)), "the epoch's own changes");
                log.lock().map_err(|e| e.to_string())?.push(epoch);
                Ok::<(), String>(())
            },
            halt.clone(),
        )
        .expect("spawn");
        // A stop from outside (Ctrl-C) does not make the committer drop epochs.
        halt.stop.store(true, Ordering::SeqCst);
        for epoch in 10..60 {
            assert!(handover.hand_over(epoch, changes(epoch)));
        }
        drop(handover);
        assert_eq!(committer.join(), Ok(50));
        assert_eq!(*seen.lock().expect("lock"), (10..60).collect::<Vec<_>>());
        assert!(halt.failure.lock().expect("lock").is_none());
    }

    #[test]
    fn after_a_failure_nothing_later_is_committed_and_a_blocked_sender_is_released() {
        let halt = halt();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        // Epoch 2's commit waits for the test's go, then fails.
        let (entered_tx, entered) = channel();
        let (go, go_rx) = channel::<()>();
        let (mut handover, committer) = Committer::spawn(
            move |epoch, _changes: &Changes| {
                if epoch == 2 {
                    entered_tx.send(()).map_err(|e| e.to_string())?;
                    go_rx.recv().map_err(|e| e.to_string())?;
                    return Err("Postgres unreachable".to_owned());
                }
                log.lock().map_err(|e| e.to_string())?.push(epoch);
                Ok(())
            },
            halt.clone(),
        )
        .expect("spawn");

        let handed = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&handed);
        let (done_tx, done) = channel();
        let sender = std::thread::spawn(move || {
            let mut accepted = Vec::new();
            for epoch in 1..=20 {
                if handover.hand_over(epoch, changes(epoch)) {
                    accepted.push(epoch);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _ = done_tx.send(());
            accepted
        });
        entered.recv_timeout(HANG).expect("epoch 2 reaches the committer");
        // Epochs 1 and 2 left the queue; 3 and 4 fill it, so sending 5 blocks.
        let deadline = std::time::Instant::now() + HANG;
        while handed.load(Ordering::SeqCst) < 2 + COMMIT_QUEUE {
            assert!(std::time::Instant::now() < deadline, "the queue fills");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(done.try_recv().is_err(), "the sender cannot finish while the queue is full");
        go.send(()).expect("release epoch 2");
        done.recv_timeout(HANG).expect("the blocked sender was released by the failure");
        let accepted = sender.join().expect("sender thread");
        assert!(accepted.len() < 20, "epochs after the failure are refused: {accepted:?}");

        assert_eq!(committer.join(), Ok(1));
        assert_eq!(*seen.lock().expect("lock"), vec![1], "nothing after the failed epoch");
        assert_eq!(halt.failure.lock().expect("lock").as_deref(), Some("Postgres unreachable"));
        assert!(halt.stop.load(Ordering::SeqCst), "the workers are told to stop");
    }

    #[test]
    fn a_panicking_commit_stops_the_workers_and_releases_the_sender() {
        let halt = halt();
        let (mut handover, committer) = Committer::spawn(
            |epoch, _changes: &Changes| -> Result<(), String> {
                if epoch == 1 {
                    panic!("bug in the commit");
                }
                Ok(())
            },
            halt.clone(),
        )
        .expect("spawn");
        // At most 1 + COMMIT_QUEUE are accepted before the panic; the next send must return.
        let mut refused = false;
        for epoch in 1..=10 {
            refused |= !handover.hand_over(epoch, changes(epoch));
        }
        let error = committer.join().expect_err("the panic is reported");
        assert!(error.contains("bug in the commit"), "{error}");
        assert!(!handover.hand_over(11, changes(11)), "nothing is accepted after the panic");
        assert!(refused, "the sends after the panic were refused, not blocked forever");
        assert!(halt.stop.load(Ordering::SeqCst), "the workers are told to stop");
    }
}
