//! The dataflow every job installs on every worker: the engine, its inputs and the
//! per-epoch sink. Shared by the file job ([`crate::job::file`]) and the Kafka job
//! ([`crate::job::kafka`]), so that both compute exactly the same thing.

use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::engine::{self, Epoch, Listen, RefreshBudget, SourceEpoch};
use crate::sink::{self, EpochSink, SinkFrom};
use crate::tables::{DeadLetter, LoggedEvent, Params, RankedList, TrackStats};

/// How many epochs a worker may feed ahead of the sink, in the Kafka job and the file job
/// alike: the workers compute earlier epochs while they feed later ones, so every operator
/// must (and the oracle tests check that it does) keep a later epoch's data apart until the
/// earlier ones are complete.
pub const MAX_EPOCHS_IN_FLIGHT: u64 = 4;

/// What [`Inputs::feed`] made of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A valid listen (SPEC §1): it feeds the engine.
    Listen,
    /// A valid event that is not a listen (a skip, a short play): nothing to feed.
    Other,
    /// An invalid message: a dead letter.
    Invalid,
}

/// The inputs of one worker. Each is fed only this worker's share of the messages.
pub struct Inputs {
    /// Valid listens.
    pub listens: InputSession<Epoch, Listen, isize>,
    /// Invalid messages.
    pub dead_letters: InputSession<Epoch, DeadLetter, isize>,
    /// `(partition, next offset)`: consumed progress, committed with the epoch's changes.
    pub offsets: InputSession<Epoch, (i32, i64), isize>,
    /// A stored state's `last(u,t)` per `(user, track)`, as listens at that time (a restart).
    pub restored_listens: InputSession<Epoch, Listen, isize>,
    /// A stored state's `plays` and `likes` per track (a restart).
    pub restored_stats: InputSession<Epoch, (u64, TrackStats), isize>,
    /// The stored `R(u)` rows (a restart), fed with [`Inputs::restore_recommendations`].
    restored_recommendations: InputSession<Epoch, (u64, RankedList), isize>,
    /// One [`SourceEpoch`] per epoch this worker closes.
    sources: InputSession<Epoch, SourceEpoch, isize>,
    /// What this worker will say of the open epoch when it closes it.
    open: SourceEpoch,
    /// Passes an epoch once the sink (on worker 0) has received it.
    pub probe: ProbeHandle<Epoch>,
    /// Valid events for the event log (`--emit-events`), from the epoch of
    /// [`Inputs::log_events_from`] on; `None` without the flag.
    pub events: Option<InputSession<Epoch, LoggedEvent, isize>>,
    /// The first epoch whose events are logged.
    events_from: Epoch,
}

impl Inputs {
    /// The epoch being fed.
    pub fn epoch(&self) -> Epoch {
        *self.listens.time()
    }

    /// Every input, once: the one list that [`Inputs::advance_to`] and [`Inputs::flush`]
    /// walk (closing drops them all).
    fn each(&mut self) -> impl Iterator<Item = &mut dyn EpochInput> {
        let inputs: [&mut dyn EpochInput; 7] = [
            &mut self.listens,
            &mut self.dead_letters,
            &mut self.offsets,
            &mut self.restored_listens,
            &mut self.restored_stats,
            &mut self.restored_recommendations,
            &mut self.sources,
        ];
        inputs.into_iter().chain(self.events.as_mut().map(|events| events as &mut dyn EpochInput))
    }

    /// Closes the current epoch and opens `epoch` (later than the current one; an equal one
    /// changes nothing).
    pub fn advance_to(&mut self, epoch: Epoch) {
        if epoch > self.epoch() {
            self.sources.insert(std::mem::take(&mut self.open));
        }
        self.each().for_each(|input| input.advance_to(epoch));
        self.flush();
    }

    /// Sends what was fed so far into the dataflow without closing the epoch.
    pub fn flush(&mut self) {
        self.each().for_each(|input| input.flush());
    }

    /// Every stale user's recommendations are refreshed at the end of the open epoch: the
    /// last epoch of a run that must end at rest (SPEC §2 step 6).
    pub fn refresh_all_in_this_epoch(&mut self) {
        self.open.refresh_all = true;
    }

    /// Feeds this worker's share of the stored `R(u)` rows (a restart) into the open epoch,
    /// which then ends the rebuild: every user's stored list is the one fed (or none), and
    /// every user is stale ([`crate::engine::recommend`], "Restarts"). Every worker calls it
    /// in the same epoch, after every rebuilding epoch.
    pub fn restore_recommendations(&mut self, rows: impl IntoIterator<Item = (u64, RankedList)>) {
        self.open.restored = true;
        for row in rows {
            self.restored_recommendations.insert(row);
        }
    }

    /// Logs the events of `epoch` and later only: the Kafka job's replayed epochs (below
    /// [`crate::source::kafka::LIVE`]) hold messages whose events the log already has.
    pub fn log_events_from(&mut self, epoch: Epoch) {
        self.events_from = epoch;
    }

    /// Whether the sink has not yet received every epoch before `epoch`.
    pub fn pending_before(&self, epoch: Epoch) -> bool {
        self.probe.less_than(&epoch)
    }

    /// Runs the dataflow until the sink has received every epoch before `epoch`. A worker
    /// with nothing to do parks until a message or progress update wakes it, instead of
    /// spinning: on 2 cores, workers spinning while they wait for each other took a quarter
    /// of the engine's CPU, which the broker, Postgres and the committer share.
    pub fn wait_for_sink(&self, worker: &mut Worker, epoch: Epoch) {
        while self.pending_before(epoch) {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
    }

    /// Parses one message and feeds it: a listen, nothing (a valid non-listen), or a dead
    /// letter. Returns which it was.
    pub fn feed(&mut self, payload: &[u8], topic: &str, partition: i32, offset: i64) -> MessageKind {
        match encore_core::parse_event(payload) {
            Ok(event) => match Listen::from_event(&self.logged(event, partition, offset)) {
                Some(listen) => {
                    self.listens.insert(listen);
                    self.open.listens += 1;
                    MessageKind::Listen
                }
                None => MessageKind::Other,
            },
            Err(error) => {
                self.dead_letters.insert(DeadLetter {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    payload: payload.to_vec(),
                    error: error.to_string(),
                });
                MessageKind::Invalid
            }
        }
    }

    /// Feeds a valid event to the event log, if it is kept and the epoch is logged; returns
    /// the event.
    fn logged(&mut self, event: encore_core::Event, partition: i32, offset: i64) -> encore_core::Event {
        if let Some(events) = self.events.as_mut().filter(|events| *events.time() >= self.events_from) {
            events.insert(LoggedEvent::new(&event, partition, offset));
        }
        event
    }

    /// Closes the open epoch and every input: the dataflow drains and completes. (An input
    /// closes when it is dropped, and so do all of them with `self`.)
    pub fn close(mut self) {
        let open = std::mem::take(&mut self.open);
        self.sources.insert(open);
    }
}

/// What [`Inputs`] does to each of its inputs alike, whatever their records.
trait EpochInput {
    fn advance_to(&mut self, epoch: Epoch);
    fn flush(&mut self);
}

impl<D: differential_dataflow::Data> EpochInput for InputSession<Epoch, D, isize> {
    fn advance_to(&mut self, epoch: Epoch) {
        InputSession::advance_to(self, epoch);
    }

    fn flush(&mut self) {
        InputSession::flush(self);
    }
}

/// What a job asks of the dataflow besides SPEC §2's parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Maintain `co_listens` (`--emit-co-listens`).
    pub emit_co_listens: bool,
    /// One more input, the valid events, which travel with their epoch to the sink
    /// ([`Changes::events`](crate::tables::Changes::events)) beside the engine: the event log
    /// (`--emit-events`).
    pub emit_events: bool,
    /// How many stale users a worker refreshes per epoch (`--refresh-idle`).
    pub refresh: RefreshBudget,
    /// Which epochs' changes reach the sink.
    pub sink_from: SinkFrom,
}

/// Builds the dataflow on `worker`; `sink` receives every closed epoch on worker 0, with the
/// changes `options.sink_from` says.
pub fn install<S: EpochSink>(worker: &mut Worker, params: &Params, options: Options, sink: S) -> Inputs {
    worker.dataflow::<Epoch, _, _>(|scope| {
        let (listens_input, listens) = scope.new_collection::<Listen, isize>();
        let (dead_input, dead_letters) = scope.new_collection::<DeadLetter, isize>();
        let (offsets_input, offsets) = scope.new_collection::<(i32, i64), isize>();
        let (restored_listens_input, restored_listens) = scope.new_collection::<Listen, isize>();
        let (restored_stats_input, restored_stats) = scope.new_collection::<(u64, TrackStats), isize>();
        let (restored_recommendations_input, restored_recommendations) = scope.new_collection::<(u64, RankedList), isize>();
        let (sources_input, sources) = scope.new_collection::<SourceEpoch, isize>();
        let (events_input, events) = if options.emit_events {
            let (input, events) = scope.new_collection::<LoggedEvent, isize>();
            (Some(input), Some(sink::event_shares(events)))
        } else {
            (None, None)
        };
        let restored =
            engine::Restored { last_listens: restored_listens, track_stats: restored_stats, recommendations: restored_recommendations };
        let outputs = engine::compute(listens, Some(restored), sources, params, options.refresh, options.emit_co_listens);
        let probe = sink::sink_epochs(sink::gather(outputs, dead_letters, offsets, options.sink_from), events, sink);
        Inputs {
            listens: listens_input,
            dead_letters: dead_input,
            offsets: offsets_input,
            restored_listens: restored_listens_input,
            restored_stats: restored_stats_input,
            restored_recommendations: restored_recommendations_input,
            sources: sources_input,
            open: SourceEpoch::default(),
            probe,
            events: events_input,
            events_from: 0,
        }
    })
}
