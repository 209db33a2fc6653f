//! Counters of the engine's internal work, process-wide and summed over its workers: what an
//! epoch cost beyond its output rows. The benchmarks read them to explain their figures (how
//! many pairs a change of `q(n)` made the engine rescore, how many `(user, candidate)` scores
//! the neighbour-list changes reached). Each operator adds its epoch's counts once, at the
//! epoch's end, never per record.

use std::sync::atomic::{AtomicU64, Ordering};

/// Work done so far, or between two readings ([`Work::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Pairs visited because the rounded `n` of one of their tracks changed.
    pub pairs_rescored: u64,
    /// Pairs whose similarity changed (each pair once, for both directions).
    pub similarities_changed: u64,
    /// `(user, candidate)` score changes spread from neighbour-list changes to the users
    /// with the list's track in their history.
    pub score_updates: u64,
    /// Users whose candidates or history changed in an epoch, summed over epochs.
    pub users_touched: u64,
}

static PAIRS_RESCORED: AtomicU64 = AtomicU64::new(0);
static SIMILARITIES_CHANGED: AtomicU64 = AtomicU64::new(0);
static SCORE_UPDATES: AtomicU64 = AtomicU64::new(0);
static USERS_TOUCHED: AtomicU64 = AtomicU64::new(0);

impl Work {
    /// The totals of every dataflow of this process so far.
    pub fn total() -> Work {
        Work {
            pairs_rescored: PAIRS_RESCORED.load(Ordering::Relaxed),
            similarities_changed: SIMILARITIES_CHANGED.load(Ordering::Relaxed),
            score_updates: SCORE_UPDATES.load(Ordering::Relaxed),
            users_touched: USERS_TOUCHED.load(Ordering::Relaxed),
        }
    }

    /// The work done since `earlier`.
    pub fn since(self, earlier: Work) -> Work {
        Work {
            pairs_rescored: self.pairs_rescored.saturating_sub(earlier.pairs_rescored),
            similarities_changed: self.similarities_changed.saturating_sub(earlier.similarities_changed),
            score_updates: self.score_updates.saturating_sub(earlier.score_updates),
            users_touched: self.users_touched.saturating_sub(earlier.users_touched),
        }
    }
}

/// Similarity's counts of one epoch on one worker.
pub(super) fn add_similarity(pairs_rescored: u64, similarities_changed: u64) {
    PAIRS_RESCORED.fetch_add(pairs_rescored, Ordering::Relaxed);
    SIMILARITIES_CHANGED.fetch_add(similarities_changed, Ordering::Relaxed);
}

/// Recommend's counts of one epoch on one worker.
pub(super) fn add_recommend(score_updates: u64, users_touched: u64) {
    SCORE_UPDATES.fetch_add(score_updates, Ordering::Relaxed);
    USERS_TOUCHED.fetch_add(users_touched, Ordering::Relaxed);
}
