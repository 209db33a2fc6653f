//! Keeping `--rate` smooth: each message has a due time `start + i / rate`; the sender
//! sleeps until it is due. Sleeping happens in steps of at most 50 ms so Ctrl-C stays
//! responsive at slow rates, and only once the sender is ahead by at least
//! [`MIN_SLEEP`], so fast rates are not dominated by sleep calls (bursts stay under
//! `rate × MIN_SLEEP` messages).
//!
//! If the sender falls behind (a slow broker), the schedule is moved rather than made up
//! in a burst: it never runs more than [`MAX_LAG`] behind, like a token bucket of that size.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Shortest sleep worth making.
pub const MIN_SLEEP: Duration = Duration::from_micros(500);
/// Largest backlog made up at full speed after a stall.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// Paces messages at a fixed rate.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<Duration>,
    start: Instant,
    sent: u32,
}

impl Pacer {
    /// A pacer for `rate` messages per second; 0 (or less) means no pacing.
    pub fn new(rate: f64) -> Pacer {
        let interval = (rate > 0.0 && rate.is_finite()).then(|| Duration::from_secs_f64(1.0 / rate));
        Pacer { interval, start: Instant::now(), sent: 0 }
    }

    /// Waits until the next message is due (or `stop` is set). Returns whether it slept.
    pub fn wait(&mut self, stop: &AtomicBool) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        let mut slept = false;
        loop {
            let due = self.start + interval * self.sent;
            let now = Instant::now();
            if now + MIN_SLEEP > due {
                if now > due + MAX_LAG {
                    // Behind: move the schedule instead of bursting to catch up.
                    self.start = now - MAX_LAG;
                    self.sent = 0;
                }
                break;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
            slept = true;
        }
        self.sent += 1;
        if self.sent == u32::MAX {
            // Re-base long runs so `interval * sent` never overflows.
            self.start += interval * self.sent;
            self.sent = 0;
        }
        slept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaced_never_waits() {
        let mut pacer = Pacer::new(0.0);
        let stop = AtomicBool::new(false);
        assert!((0..1000).all(|_| !pacer.wait(&stop)));
    }

    #[test]
    fn paced_sends_are_spread_out() {
        // 200 messages at 2 000/s take about 100 ms; assert only the lower bound, which
        // holds on any machine (no timing upper bound in tests).
        let mut pacer = Pacer::new(2_000.0);
        let stop = AtomicBool::new(false);
        let begin = Instant::now();
        for _ in 0..200 {
            pacer.wait(&stop);
        }
        assert!(begin.elapsed() >= Duration::from_millis(99));
    }

    #[test]
    fn stop_ends_the_wait() {
        let mut pacer = Pacer::new(0.01);
        let stop = AtomicBool::new(false);
        pacer.wait(&stop);
        stop.store(true, Ordering::Relaxed);
        let begin = Instant::now();
        pacer.wait(&stop);
        assert!(begin.elapsed() < Duration::from_secs(50));
    }
}
