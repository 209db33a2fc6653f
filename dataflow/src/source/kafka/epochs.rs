//! When a worker closes its epoch: every `--epoch-ms` while the dataflow keeps up, or at
//! `--epoch-events` messages.

use std::time::{Duration, Instant};

/// Under `--until-caught-up`, an epoch at `--epoch-events` stays open for the rest of the
/// worker's share when that rest is at most this fraction of `--epoch-events` (1/8).
const TAIL_DIVISOR: usize = 8;

/// One worker's epoch clock: how long the open epoch has been open and how many messages it
/// holds.
#[derive(Debug)]
pub(super) struct EpochClock {
    length: Duration,
    cap: usize,
    started: Instant,
    messages: usize,
}

impl EpochClock {
    /// Epochs of `epoch_ms` milliseconds (at least 1) and at most about `cap` messages.
    pub(super) fn new(epoch_ms: u64, cap: usize) -> EpochClock {
        EpochClock { length: Duration::from_millis(epoch_ms.max(1)), cap, started: Instant::now(), messages: 0 }
    }

    /// One more message in the open epoch.
    pub(super) fn count(&mut self) {
        self.messages += 1;
    }

    /// Whether a live epoch is due: its time is up and `room()`, the dataflow has room for
    /// another epoch in flight. An epoch that is due stays open while the dataflow is at its
    /// in-flight bound: the consumer keeps reading into it (up to [`EpochClock::full`])
    /// instead of waiting, so under a backlog epochs grow and the cost per event falls (one
    /// big epoch costs far less per event than many small ones); without a backlog they close
    /// every `--epoch-ms`.
    pub(super) fn due(&self, room: impl FnOnce() -> bool) -> bool {
        self.started.elapsed() >= self.length && room()
    }

    /// Whether a live epoch is full, `rest()` being the messages this worker still has to read
    /// up to the caught-up offsets (`--until-caught-up`), if any: see [`epoch_full`].
    pub(super) fn full(&self, rest: impl FnOnce() -> Option<u64>) -> bool {
        epoch_full(self.messages, self.cap, rest)
    }

    /// Whether a replay epoch is full: they are sized by count only.
    pub(super) fn replay_full(&self) -> bool {
        self.messages >= self.cap
    }

    /// A new epoch opens now.
    pub(super) fn restart(&mut self) {
        self.messages = 0;
        self.started = Instant::now();
    }

    /// A new replay epoch opens (its time does not matter).
    pub(super) fn restart_count(&mut self) {
        self.messages = 0;
    }

    /// The first live epoch after a replay starts timing now; the messages fed into it so far
    /// stay counted.
    pub(super) fn restart_timer(&mut self) {
        self.started = Instant::now();
    }
}

/// Whether a live epoch of `in_epoch` messages is full at `--epoch-events` = `cap`. With
/// `rest()` = the messages this worker still has to read up to the caught-up offsets
/// (`--until-caught-up`), a full epoch stays open when the rest is small: a last epoch of a
/// few messages costs about as much as a big one, because at a large state its listens
/// still rescore the pairs and users they touch and their rows are rewritten. An epoch never
/// holds more than `cap + cap / TAIL_DIVISOR` messages, even when the topic grows past the
/// offsets seen at start (or lies beyond them: Tansu 0.6 reports a high watermark short of
/// the true end, so `rest()` is an estimate).
///
/// `rest` is only called once the epoch reaches the cap (it walks the worker's partitions).
fn epoch_full(in_epoch: usize, cap: usize, rest: impl FnOnce() -> Option<u64>) -> bool {
    let tail = cap / TAIL_DIVISOR;
    in_epoch >= cap && (in_epoch >= cap + tail || rest().is_none_or(|rest| rest > tail as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_folds_a_small_rest_into_its_last_epoch() {
        // Live (no caught-up target): full at the cap.
        assert!(!epoch_full(999, 1000, || None));
        assert!(epoch_full(1000, 1000, || None));
        // Catching up: a rest of up to an eighth of the cap joins the epoch.
        assert!(!epoch_full(1000, 1000, || Some(125)));
        assert!(!epoch_full(1100, 1000, || Some(25)));
        assert!(epoch_full(1000, 1000, || Some(126)));
        assert!(epoch_full(1000, 1000, || Some(5000)));
        assert!(!epoch_full(999, 1000, || Some(5000)));
        // Never beyond cap + cap/8, whatever the rest (a topic that grows while it is read).
        assert!(!epoch_full(1124, 1000, || Some(0)));
        assert!(epoch_full(1125, 1000, || Some(0)));
    }
}
