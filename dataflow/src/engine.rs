//! The incremental computation of SPEC §2 as one differential dataflow.
//!
//! ```text
//!  listens (user, track, time, like)                       input, append-only, +1 each
//!   │  ⊕ restored last(u,t) and (plays, likes) on a restart   (Restored; not listens)
//!   │
//!   ├─ History ─────────────── custom operator, exchanged by user (engine/history.rs)
//!   │    ├─ members  (u, t)        t ∈ H(u): the K tracks with the latest last(u,t)
//!   │    ├─ listened u             once per user and epoch with a listen
//!   │    ├─ firsts   (u, t)        +1 on a user's first listen of a track
//!   │    ├─ last     ((u, t), ms)  last(u,t): the durable state (source/kafka.rs)
//!   │    └─ pairs    (i, j)        ±1 per change of c(i,j), each pair both ways
//!   │
//!   ├─ q(n(i))     members → map t → count_total → round to B bits    (i, q(n))
//!   │              → consolidate_stream: an unchanged q(n) cancels here, before the broadcast
//!   ├─ c, s        Similarity: pairs (by track) + q(n) and floors     (i, j, new s) where N(i)
//!   │              (broadcast): per track its partners' counts →      must see it, rescales
//!   │              cosine of q(c), q(n)s; work only where a rounded   ((a,b), c) a < b
//!   │              count moved (engine/similarity.rs)
//!   ├─ N(i)        Neighbours, by track: 2k leaders above a floor;    (i, list) one row a track
//!   │              scores read from Similarity's counts (shared);     floors ─► back to
//!   │              (engine/neighbours.rs)                             Similarity, next epoch
//!   ├─ R(u)        Recommend: members, listened (by user) + N(i)      (u, list) one row a user
//!   │              lists and source epochs (broadcast): refresh the
//!   │              users that listened and, up to --refresh-idle,
//!   │              the stale ones (engine/recommend.rs)
//!   └─ stats(t)    listens ⊕ firsts → (plays, listeners, likes) as a 3-diff → count_total
//! ```
//!
//! Every output is a differential collection whose changes are exactly the row deltas of a
//! SPEC §3 table: a row's old value retracted, its new value asserted, in the same epoch. A
//! list (`N(i)`, `R(u)`) is one row, so a change of any of its members is one row change.
//!
//! ## Choices
//!
//! * **Exchange by key.** Every stateful stage is keyed (user, track, pair), so work and state
//!   spread over all workers, and results do not depend on how many there are. Three small
//!   collections are broadcast: the neighbour lists (`k` per track), so that each worker
//!   refreshes its own users from a replica without an exchange per `(user, candidate)`;
//!   `n(i)` (one number per track), so that each worker rescores its tracks' pairs; and each
//!   source worker's note of every epoch it closed, which paces the background refresh.
//! * **Totally ordered time.** Epochs are `u64`, so counts use `count_total`, which keeps
//!   only its input arrangement (no output trace).
//! * **Pair counts and similarities** are one custom operator rather than a self-join,
//!   `count_total` and two joins: the pairs are the largest state (52 M with `c ≥ 1` at
//!   10 M events), and it keeps each at 16 bytes instead of several arranged copies with
//!   times and diffs ([`similarity`]).
//! * **History** is a custom operator rather than `reduce`s: listens are append-only, so the
//!   latest listen per track and the top `K` can be kept exactly in `O(log K)` per listen
//!   without storing every listen (see [`history`]).
//! * **Neighbour lists** keep per track only its `2k` best partners in order above a floor
//!   ([`neighbours`]), beside the pair counts they are computed from: a score is evaluated
//!   from `c` and `q(n)` when needed, never stored; an epoch reads only the best of each
//!   track it touched; and a change of `s` that a list cannot see (at or below its floor,
//!   before and after) is never sent.
//! * **Recommendations are refreshed, not maintained** (SPEC §2 step 6, [`recommend`]): a
//!   change of a popular track's `N(i)` would otherwise reach every user holding `i`. A
//!   refresh costs one user's `K·k` candidates; stale users are found through registrations
//!   made by their own refreshes, never by visiting every holder of a track.
//! * **Rounded counts** (SPEC §2 step 4, `B`): see [`similarity`], "Rounded counts". A count
//!   change that leaves its rounded value alone stops where it is made; [`work`] counts what
//!   the rest costs, for the benchmarks.
//! * **Scores are integers** (units of 10^-P) from the shared [`encore_core::cosine_units`],
//!   so that the dataflow, the oracle and the Arroyo UDF agree to the last digit, and
//!   recommendation scores are exact integer sums.

pub mod history;
pub mod neighbours;
pub mod recommend;
pub mod similarity;
pub(crate) mod sorted;
pub(crate) mod stash;
pub mod work;

use differential_dataflow::operators::CountTotal;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

use crate::tables::{Params, RankedList, TrackStats};
use history::UserTrackChange;
use recommend::UserInput;
pub use recommend::{RefreshBudget, SourceEpoch};
use similarity::PairRecord;

/// Logical time of the dataflow: an epoch of input.
pub type Epoch = u64;

type Collection<'scope, D, R = isize> = VecCollection<'scope, Epoch, D, R>;

/// A listen (SPEC §1): the only input the computation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Listen {
    /// The listener.
    pub user: u64,
    /// The track.
    pub track: u64,
    /// Event time, ms since the Unix epoch.
    pub time_ms: i64,
    /// Whether the event was a `"like"`.
    pub like: bool,
}

impl Listen {
    /// The listen an event stands for, if it is one (SPEC §1).
    pub fn from_event(event: &encore_core::Event) -> Option<Listen> {
        event.is_listen().then_some(Listen {
            user: event.user_id,
            track: event.track_id,
            time_ms: event.event_time_ms,
            like: event.event_type == encore_core::EventType::Like,
        })
    }
}

/// The computation's outputs, one collection per SPEC §3 table.
pub struct Outputs<'scope> {
    /// `(track, N(i))`: one row per track with neighbours.
    pub track_neighbors: Collection<'scope, (u64, RankedList)>,
    /// `(user, R(u))` as stored: one row per user with recommendations.
    pub user_recommendations: Collection<'scope, (u64, RankedList)>,
    /// `(track, stats)` for every track with a listen.
    pub track_stats: Collection<'scope, (u64, TrackStats)>,
    /// `((a, b), c)` with `a < b`, when asked for.
    pub co_listens: Option<Collection<'scope, ((u64, u64), u64)>>,
    /// `((user, track), last(u,t))` for every pair with a listen: the durable state.
    pub last_listens: Collection<'scope, ((u64, u64), i64)>,
}

/// State loaded from a sink to continue from ([`crate::source::kafka`], "Durable state"): it stands
/// for every listen before the stored offsets.
pub struct Restored<'scope> {
    /// One record per `(user, track)` ever listened, at `time_ms = last(u,t)` (`like` unused):
    /// enough to rebuild `H(u)` and the first listens, hence `n`, `c`, `s`, `N` and
    /// `listeners`, exactly.
    pub last_listens: Collection<'scope, Listen>,
    /// `plays` and `likes` per track (`listeners` is ignored: the first listens rebuild it).
    pub track_stats: Collection<'scope, (u64, TrackStats)>,
    /// The stored `R(u)` rows, in the epoch a source marks [`SourceEpoch::restored`]: when
    /// each was refreshed is not stored, so every user is stale after a restart
    /// ([`recommend`], "Restarts").
    pub recommendations: Collection<'scope, (u64, RankedList)>,
}

/// Builds SPEC §2 over `listens` and, when continuing a stored state, the `restored` state it
/// stands for. `sources` holds each source worker's [`SourceEpoch`] of every epoch it closed:
/// they pace the refresh of recommendations (`refresh`, SPEC §2 step 6).
pub fn compute<'scope>(
    listens: Collection<'scope, Listen>,
    restored: Option<Restored<'scope>>,
    sources: Collection<'scope, SourceEpoch>,
    params: &Params,
    refresh: RefreshBudget,
    emit_co_listens: bool,
) -> Outputs<'scope> {
    let Params { history_cap, min_co, neighbors, recommendations, score_precision, count_bits } = *params;

    // H(u), first listens and pair changes, from one pass over each user's listens. A
    // restored last(u,t) goes through History like a listen at that time: History keeps the
    // maximum per (u,t) and the top K of those, which is all it needs of the listens.
    let history_input = match &restored {
        Some(restored) => listens.clone().concat(restored.last_listens.clone()),
        None => listens.clone(),
    };
    let history::History { changes: user_tracks, pairs } = history::history(history_input, history_cap);
    let members = user_tracks.clone().flat_map(|change| match change {
        UserTrackChange::Member { user, track } => Some((user, track)),
        _ => None,
    });
    let firsts = user_tracks.clone().flat_map(|change| match change {
        UserTrackChange::FirstListen { user: _, track } => Some(track),
        _ => None,
    });
    let last_listens = user_tracks.clone().flat_map(|change| match change {
        UserTrackChange::Last { user, track, last_ms } => Some(((user, track), last_ms)),
        _ => None,
    });
    // What Recommend needs of each user: its history changes, and that it listened.
    let mut user_inputs = user_tracks.flat_map(|change| match change {
        UserTrackChange::Member { user, track } => Some(UserInput::Member { user, track }),
        UserTrackChange::Listened { user } => Some(UserInput::Listened { user }),
        _ => None,
    });

    // q(n(i)): users with i in their history, rounded to B significant bits. A change of n
    // that leaves q(n) alone retracts and asserts the same record, which cancel here, before
    // the broadcast: it costs O(1) and reaches no other operator.
    let rounded_counts = members
        .map(|(_user, track)| track)
        .count_total()
        .map(move |(track, n)| (track, encore_core::round_count(n as u64, count_bits) as isize))
        .consolidate_stream();

    // c(i,j), s(i,j) = cosine over q(c), q(n) in score units where the exact c ≥ C and s > 0,
    // and N(i): the k most similar tracks, ties to the smaller id.
    let neighbours::NeighbourLists { lists: neighbor_lists, records } = neighbours::neighbour_lists(
        pairs,
        rounded_counts,
        similarity::Scoring { min_co, precision: score_precision, count_bits },
        neighbors,
        emit_co_listens,
    );
    let co_listens = emit_co_listens.then(|| co_listen_updates(records));

    // R(u): refreshed where each user lives, from its history and a replica of the neighbour
    // lists (broadcast to all): for every user that listened, and for stale users as the
    // budget allows.
    let restored_stats = restored.map(|restored| {
        user_inputs = user_inputs.clone().concat(restored.recommendations.map(|(user, list)| UserInput::Restored { user, list }));
        restored.track_stats
    });
    let recommendation_lists = recommend::recommendations(user_inputs, neighbor_lists.clone(), sources, recommendations, refresh);
    let track_stats = track_statistics(listens, firsts, restored_stats);

    Outputs { track_neighbors: neighbor_lists, user_recommendations: recommendation_lists, track_stats, co_listens, last_listens }
}

/// SPEC §2 step 7: plays, listeners and likes per track, as one three-part diff accumulated
/// per track (plays and likes of a restored state count as such; its listeners are rebuilt
/// from the first listens).
fn track_statistics<'scope>(
    listens: Collection<'scope, Listen>,
    firsts: Collection<'scope, u64>,
    restored: Option<Collection<'scope, (u64, TrackStats)>>,
) -> Collection<'scope, (u64, TrackStats)> {
    let mut parts = listens
        .explode(|l| Some((l.track, (1isize, 0isize, isize::from(l.like)))))
        .concat(firsts.explode(|track| Some((track, (0isize, 1isize, 0isize)))));
    if let Some(restored) = restored {
        parts = parts.concat(restored.explode(|(track, stats)| Some((track, (stats.plays as isize, 0isize, stats.likes as isize)))));
    }
    parts.count_total().map(|(track, (plays, listeners, likes))| {
        (track, TrackStats { plays: plays as u64, listeners: listeners as u64, likes: likes as u64 })
    })
}

/// The `c(a,b)` updates among the similarity operator's records, as a collection.
fn co_listen_updates<'scope>(records: Stream<'scope, Epoch, Vec<PairRecord>>) -> Collection<'scope, ((u64, u64), u64)> {
    records
        .unary(Pipeline, "CoListens", |_capability, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for record in data.drain(..) {
                        if let PairRecord::CoListen { a, b, count, diff } = record {
                            session.give((((a, b), count), time, diff));
                        }
                    }
                });
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use crate::tables::Params;
    use crate::testing::check_every_epoch;

    /// In the crate's own tests the Similarity and Recommend operators flush their buffers
    /// after a few dozen changes, so here epochs of a few dozen lines run the early flushes
    /// that only epochs of millions of events reach in a real run, with epochs in flight. (It
    /// fails if an epoch opens before an earlier one's n changes are in; the order of one
    /// user's changes around a flush has its own test in `similarity`.)
    #[test]
    fn early_flushes_with_epochs_in_flight_equal_the_oracle() {
        for seed in 60..100 {
            let workers = [1, 2, 3, 4][seed as usize % 4];
            let params = Params {
                history_cap: 2 + seed as usize % 3,
                min_co: 1,
                neighbors: 3,
                recommendations: 3,
                score_precision: 4,
                count_bits: seed as u32 % 4,
            };
            check_every_epoch(seed, 800, params, 10 + seed as usize % 30, workers);
        }
        check_every_epoch(72, 2_000, Params::default(), 200, 2);
    }
}
