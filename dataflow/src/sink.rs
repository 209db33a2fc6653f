//! From the engine's collections to one ordered stream of per-epoch [`Changes`].
//!
//! ```text
//!  track_neighbors ─┐
//!  user_recommend. ─┤ map to     EpochShares (every worker)     exchange    EpochSink (worker 0)
//!  track_stats ─────┼────────►   sorts the row changes of   ──► to worker ─► appends the shares
//!  co_listens ──────┤ RowChange  one activation into one        0: a few    of an epoch; once
//!  dead_letters ────┤            Changes per epoch (a share)    records     its frontier passes
//!  offsets ─────────┘            and sends it at once           per worker  it, hands the epoch's
//!                                                                           Changes to the sink,
//!                                                                           in epoch order
//! ```
//!
//! One writer sees every change: a sink takes each closed epoch as one unit (a CSV state for
//! files; for Postgres a transaction, which may hold several epochs: the protocol is in
//! [`postgres`], "Exactly once"), which is what makes exactly-once simple. Each
//! worker sorts its own row changes into shares first, so worker 0 receives a few records
//! per epoch instead of every row change (tens of thousands per live epoch), and does no
//! more work than the others.
//!
//! With `--emit-events`, the valid events (an input of their own, untouched by the engine)
//! become shares of their epochs in `EventShares` ([`event_shares`]) and join the exchange to
//! worker 0 beside the row changes' shares, so an epoch's events reach the sink in its
//! [`Changes`] and commit with it.

pub(crate) mod committer;
pub mod csv;
pub mod postgres;

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::operators::{Capability, Concat, Operator, Probe};
use timely::dataflow::{ProbeHandle, Stream};

use crate::engine::stash::EpochStash;
use crate::engine::{Epoch, Outputs};
use crate::tables::{Changes, DeadLetter, LoggedEvent, RankedList, Tables, TrackStats};

/// One row change of one SPEC §3 table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum RowChange {
    /// A `track_neighbors` row: a track and its list `N(i)`.
    Neighbors(u64, RankedList),
    /// A `user_recommendations` row: a user and its stored list `R(u)`.
    Recommendations(u64, RankedList),
    /// A `track_stats` row.
    Stats(u64, TrackStats),
    /// A `co_listens` row.
    CoListen((u64, u64), u64),
    /// A row of the durable state: `last(u,t)` of `(user, track)`.
    LastListen((u64, u64), i64),
    /// A `dead_letters` row (boxed: it is rare and five times the size of the others, and
    /// every record of the stream would otherwise carry its size).
    DeadLetter(Box<DeadLetter>),
    /// Consumed progress: the next offset of a partition at the end of the epoch.
    Offset(i32, i64),
}

type Updates = Vec<(RowChange, Epoch, isize)>;

/// From which epoch on [`gather`] sends changes on to the sink. Changes of earlier epochs are
/// dropped where they are made, before the exchange to worker 0: a restart's rebuild emits
/// every row of every table once, which the sink already holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkFrom {
    /// The SPEC §3 tables, dead letters and offsets: from this epoch on.
    pub tables_from: Epoch,
    /// The durable state (`last(u,t)`): from this epoch on; `None`: not at all (a sink that
    /// keeps no state, such as the file job's).
    pub state_from: Option<Epoch>,
}

/// All row changes of the computation, gathered on worker 0.
pub fn gather<'scope>(
    outputs: Outputs<'scope>,
    dead_letters: VecCollection<'scope, Epoch, DeadLetter>,
    offsets: VecCollection<'scope, Epoch, (i32, i64)>,
    sink_from: SinkFrom,
) -> Stream<'scope, Epoch, Updates> {
    let mut changes = outputs
        .track_neighbors
        .map(|(track, list)| RowChange::Neighbors(track, list))
        .concat(outputs.user_recommendations.map(|(user, list)| RowChange::Recommendations(user, list)))
        .concat(outputs.track_stats.map(|(track, stats)| RowChange::Stats(track, stats)))
        .concat(dead_letters.map(|letter| RowChange::DeadLetter(Box::new(letter))))
        .concat(offsets.map(|(partition, next)| RowChange::Offset(partition, next)));
    if let Some(co_listens) = outputs.co_listens {
        changes = changes.concat(co_listens.map(|(pair, c)| RowChange::CoListen(pair, c)));
    }
    let tables_from = sink_from.tables_from;
    let mut changes = changes.inner.filter(move |(_, epoch, _)| *epoch >= tables_from);
    if let Some(state_from) = sink_from.state_from {
        let state = outputs
            .last_listens
            .inner
            .filter(move |(_, epoch, _)| *epoch >= state_from)
            .map(|((key, last), epoch, diff)| (RowChange::LastListen(key, last), epoch, diff));
        changes = changes.concat(state);
    }
    changes
}

/// Receives the changes of each closed epoch, in epoch order, on worker 0.
pub trait EpochSink: 'static {
    /// All changes of `epoch`; no change of an earlier or equal epoch will follow.
    fn epoch_closed(&mut self, epoch: Epoch, changes: Changes);
}

/// A sink shared with the code that started the workers, which reads it after the run.
impl<S: EpochSink + Send> EpochSink for std::sync::Arc<std::sync::Mutex<S>> {
    fn epoch_closed(&mut self, epoch: Epoch, changes: Changes) {
        // A poisoned lock means another worker panicked; the run fails anyway.
        if let Ok(mut sink) = self.lock() {
            sink.epoch_closed(epoch, changes);
        }
    }
}

/// The valid events of the event log (`--emit-events`) as shares of their epochs, one
/// [`Changes`] per epoch and activation holding only [`Changes::events`]. They bypass
/// [`RowChange`] (whose every record would grow by a third to hold one) and join the other
/// shares on their way to worker 0 in [`sink_epochs`].
pub fn event_shares<'scope>(events: VecCollection<'scope, Epoch, LoggedEvent>) -> Stream<'scope, Epoch, Vec<Changes>> {
    events.inner.unary::<CapacityContainerBuilder<Vec<Changes>>, _, _, _>(Pipeline, "EventShares", |_cap, _info| {
        move |input, output| {
            let port = output.output_index();
            let mut shares: EpochStash<Capability<Epoch>, Changes> = EpochStash::default();
            input.for_each(|cap, data| {
                for (event, epoch, diff) in data.drain(..) {
                    let share = shares.stage(epoch, || cap.delayed(&epoch, port));
                    // Inputs only ever insert an event once (diff +1).
                    for _ in 0..diff.max(0) {
                        share.events.push(event);
                    }
                }
            });
            for (_epoch, capability, share) in shares.drain() {
                output.session(&capability).give(share);
            }
        }
    })
}

/// Routes every change to worker 0 and hands each closed epoch to `sink` there, with more
/// shares (from [`event_shares`]) sent to worker 0 beside the row changes' and appended to
/// their epochs' [`Changes`]. The returned probe passes an epoch once the sink has received it.
pub fn sink_epochs<'scope, S: EpochSink>(
    changes: Stream<'scope, Epoch, Updates>,
    more_shares: Option<Stream<'scope, Epoch, Vec<Changes>>>,
    mut sink: S,
) -> ProbeHandle<Epoch> {
    // Each activation sends what it received as one share per epoch, at once: held until
    // the epoch closed, a big epoch's (a catch-up's) changes would all sit on each worker
    // and then all be in flight to worker 0 at the same time.
    let shares = changes.unary::<CapacityContainerBuilder<Vec<Changes>>, _, _, _>(Pipeline, "EpochShares", |_cap, _info| {
        move |input, output| {
            let port = output.output_index();
            let mut shares: EpochStash<Capability<Epoch>, Changes> = EpochStash::default();
            input.for_each(|cap, data| {
                for (change, epoch, diff) in data.drain(..) {
                    add(shares.stage(epoch, || cap.delayed(&epoch, port)), change, diff as i64);
                }
            });
            for (_epoch, capability, share) in shares.drain() {
                output.session(&capability).give(share);
            }
        }
    });
    let shares = match more_shares {
        Some(more) => shares.concat(more),
        None => shares,
    };
    let to_worker_zero = Exchange::new(|_share: &Changes| 0u64);
    let mut staged: EpochStash<Capability<Epoch>, Changes> = EpochStash::default();
    let (probe, _) = shares
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(to_worker_zero, "EpochSink", move |_cap, _info| {
            move |(input, frontier), output| {
                let port = output.output_index();
                input.for_each(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    for share in data.drain(..) {
                        staged.stage(epoch, || cap.delayed(&epoch, port)).append(share);
                    }
                });
                // Complete once the frontier has passed it: until then another worker's share
                // may still arrive.
                while let Some((epoch, _capability, changes)) = staged.pop_complete(|epoch| !frontier.less_equal(epoch)) {
                    sink.epoch_closed(epoch, changes);
                }
            }
        })
        .probe();
    probe
}

fn add(changes: &mut Changes, change: RowChange, diff: i64) {
    match change {
        RowChange::Neighbors(track, list) => changes.track_neighbors.push((track, list, diff)),
        RowChange::Recommendations(user, list) => changes.user_recommendations.push((user, list, diff)),
        RowChange::Stats(track, stats) => changes.track_stats.push((track, stats, diff)),
        RowChange::CoListen(pair, c) => changes.co_listens.push((pair, c, diff)),
        RowChange::LastListen(key, last) => changes.last_listens.push((key, last, diff)),
        RowChange::Offset(partition, next) => {
            // Offsets only grow; an epoch may carry several reports of one partition.
            let entry = changes.offsets.entry(partition).or_insert(next);
            *entry = (*entry).max(next);
        }
        RowChange::DeadLetter(letter) => {
            for _ in 0..diff.max(0) {
                changes.dead_letters.push((*letter).clone());
            }
        }
    }
}

impl Tables {
    /// Applies one epoch's changes: a retraction removes its row only if the row still holds
    /// the retracted value, so the order of a row's `-old` and `+new` does not matter. A list
    /// row stands for one entry per member.
    pub fn apply(&mut self, changes: &Changes) {
        fn apply_lists(table: &mut BTreeMap<(u64, u64), i64>, updates: &[(u64, RankedList, i64)]) {
            for (key, list, _diff) in updates.iter().filter(|u| u.2 < 0) {
                for &(member, units) in list {
                    if table.get(&(*key, member)) == Some(&units) {
                        table.remove(&(*key, member));
                    }
                }
            }
            for (key, list, _diff) in updates.iter().filter(|u| u.2 > 0) {
                table.extend(list.iter().map(|&(member, units)| ((*key, member), units)));
            }
        }
        fn apply_one<K: Ord + Copy, V: PartialEq + Copy>(table: &mut BTreeMap<K, V>, updates: &[(K, V, i64)]) {
            for &(key, value, diff) in updates.iter().filter(|u| u.2 < 0) {
                debug_assert_eq!(diff, -1);
                if table.get(&key) == Some(&value) {
                    table.remove(&key);
                }
            }
            for &(key, value, _diff) in updates.iter().filter(|u| u.2 > 0) {
                table.insert(key, value);
            }
        }
        apply_lists(&mut self.track_neighbors, &changes.track_neighbors);
        apply_lists(&mut self.user_recommendations, &changes.user_recommendations);
        apply_one(&mut self.track_stats, &changes.track_stats);
        apply_one(&mut self.co_listens, &changes.co_listens);
    }
}
