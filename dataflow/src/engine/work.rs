//! Counters of the engine's internal work, process-wide and summed over its workers: what an
//! epoch cost beyond its output rows, and where the refresh of recommendations stands. The
//! benchmarks read them to explain their figures (how many pairs a change of `q(n)` made the
//! engine rescore, how many users were refreshed), and the metrics endpoint serves the
//! refresh figures ([`crate::metrics`]). Each operator adds its epoch's counts once, at the
//! epoch's end, never per record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::recommend::Refreshed;

/// Work done so far, or between two readings ([`Work::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Pairs visited because the rounded `n` of one of their tracks changed (after a rise,
    /// only those of the lists the track leads; after a fall, all its partners).
    pub pairs_rescored: u64,
    /// Pairs whose similarity changed, among those evaluated (each pair once, for both
    /// directions): a rise of `q(n(i))` changes the `s` of partners it does not visit.
    pub similarities_changed: u64,
    /// Users refreshed because they listened (SPEC §2 step 6).
    pub refreshed_active: u64,
    /// Stale users refreshed in the background.
    pub refreshed_background: u64,
}

static PAIRS_RESCORED: AtomicU64 = AtomicU64::new(0);
static SIMILARITIES_CHANGED: AtomicU64 = AtomicU64::new(0);
static REFRESHED_ACTIVE: AtomicU64 = AtomicU64::new(0);
static REFRESHED_BACKGROUND: AtomicU64 = AtomicU64::new(0);

/// Per worker (by index): its stale users and the wall-clock time of the oldest one's last
/// refresh, as of its latest epoch.
static STALENESS: Mutex<Vec<(u64, Option<SystemTime>)>> = Mutex::new(Vec::new());

impl Work {
    /// The totals of every dataflow of this process so far.
    pub fn total() -> Work {
        Work {
            pairs_rescored: PAIRS_RESCORED.load(Ordering::Relaxed),
            similarities_changed: SIMILARITIES_CHANGED.load(Ordering::Relaxed),
            refreshed_active: REFRESHED_ACTIVE.load(Ordering::Relaxed),
            refreshed_background: REFRESHED_BACKGROUND.load(Ordering::Relaxed),
        }
    }

    /// The work done since `earlier`.
    pub fn since(self, earlier: Work) -> Work {
        Work {
            pairs_rescored: self.pairs_rescored.saturating_sub(earlier.pairs_rescored),
            similarities_changed: self.similarities_changed.saturating_sub(earlier.similarities_changed),
            refreshed_active: self.refreshed_active.saturating_sub(earlier.refreshed_active),
            refreshed_background: self.refreshed_background.saturating_sub(earlier.refreshed_background),
        }
    }
}

/// Where the refresh of recommendations stands in this process (SPEC §2 step 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Staleness {
    /// Users whose stored recommendations are stale, over this process's workers.
    pub stale_users: u64,
    /// The last refresh of the least recently refreshed stale user (`None`: none is stale).
    pub oldest_refresh: Option<SystemTime>,
}

impl Staleness {
    /// As of each worker's latest epoch.
    pub fn now() -> Staleness {
        let workers = STALENESS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Staleness {
            stale_users: workers.iter().map(|(stale, _)| stale).sum(),
            oldest_refresh: workers.iter().filter_map(|(_, oldest)| *oldest).min(),
        }
    }

    /// Seconds since the oldest stale user's last refresh; 0 when none is stale.
    pub fn oldest_age_seconds(&self) -> f64 {
        self.oldest_refresh.and_then(|time| time.elapsed().ok()).map_or(0.0, |age| age.as_secs_f64())
    }
}

/// Similarity's counts of one epoch on one worker.
pub(super) fn add_similarity(pairs_rescored: u64, similarities_changed: u64) {
    PAIRS_RESCORED.fetch_add(pairs_rescored, Ordering::Relaxed);
    SIMILARITIES_CHANGED.fetch_add(similarities_changed, Ordering::Relaxed);
}

/// Recommend's counts of one epoch on worker `worker`, and its staleness after it.
pub(super) fn add_refresh(worker: usize, refreshed: Refreshed, stale_users: u64, oldest_refresh: Option<SystemTime>) {
    REFRESHED_ACTIVE.fetch_add(refreshed.active, Ordering::Relaxed);
    REFRESHED_BACKGROUND.fetch_add(refreshed.background, Ordering::Relaxed);
    let mut workers = STALENESS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if workers.len() <= worker {
        workers.resize(worker + 1, (0, None));
    }
    workers[worker] = (stale_users, oldest_refresh);
}
