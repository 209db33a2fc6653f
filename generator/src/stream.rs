//! The listening simulation: a deterministic stream of SPEC §1 events for a catalog.
//!
//! ```text
//!  Catalog ──► Model (clusters, favourites) ──► listeners' sessions ──► GeneratedEvent ──► JSON bytes
//!                                                  ▲         │
//!                                   min-heap of (next time, user)
//! ```
//!
//! Every listener has a next event time; a min-heap hands out the earliest, so event times
//! rise across the stream like a live service's. A listener plays a *session* of tracks
//! (about ten), each followed by the next after the play time plus a pause; between sessions
//! they are away for hours, and come back more readily at daytime in their own time zone
//! (`taste::ACTIVITY_BY_HOUR`).
//!
//! Choosing a track, in order: a repeat of a recently played one (10 %); else an artist —
//! the session's current artist (45 %, continuity), a favourite, one of the taste cluster's
//! pool, or a famous artist of a genre the listener's demographics favour — and then one of
//! that artist's tracks with a Zipf-like skew to the popular ones. Picks from outside the
//! listener's taste are skipped more. See `stream/model.rs` for how the tastes are built.
//!
//! Determinism: one ChaCha8 stream drives the simulation and another (`--invalid-rate`) the
//! malformed messages, so a seed gives the same bytes whatever the pace, the sink or the
//! machine. With an invalid rate, the valid events are the same as without it, in the same
//! order; the invalid messages are inserted between them.

mod encode;
mod invalid;
mod model;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::ChaCha8Rng;

pub use encode::{EventKind, Extras, GeneratedEvent, TimestampForm, DEVICES};
pub use invalid::InvalidKind;

use crate::catalog::Catalog;
use crate::sample::{below, between, exponential, rng_for, skewed_rank, unit, Purpose};
use crate::taste::{ACTIVITY_BY_HOUR, COUNTRIES};
use invalid::write_invalid;
use model::{Listener, Model, FAVOURITES, NO_ARTIST, RECENT};

/// 2024-05-01T00:00:00Z: when the simulated day starts.
pub const START_MS: i64 = 1_714_521_600_000;

/// What was written for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// A valid event.
    Event(GeneratedEvent),
    /// A deliberately malformed message.
    Invalid(InvalidKind),
}

impl Message {
    /// The Kafka message key: the user id for events (so one listener's events keep their
    /// order in one partition), none for malformed messages.
    pub fn key(&self) -> Option<u64> {
        match self {
            Message::Event(event) => Some(event.user_id),
            Message::Invalid(_) => None,
        }
    }
}

/// Where a pick came from; decides how likely a skip or like is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Repeat,
    Continuation,
    Favourite,
    Cluster,
    Exploration,
}

impl Source {
    /// (P(skip), P(like)) for a pick from this source.
    fn skip_and_like(self) -> (f64, f64) {
        match self {
            Source::Repeat => (0.06, 0.02),
            Source::Continuation => (0.10, 0.006),
            Source::Favourite => (0.08, 0.02),
            Source::Cluster => (0.14, 0.006),
            Source::Exploration => (0.28, 0.004),
        }
    }
}

/// Probability that a play is stopped early but reported as a short `streaming` event.
const SHORT_PLAY: f64 = 0.05;

/// The generator. Create once per run with [`EventStream::new`], then call
/// [`EventStream::next_message`] as often as events are wanted (the stream never ends).
#[derive(Debug)]
pub struct EventStream {
    model: Model,
    listeners: Vec<Listener>,
    /// (next event time, listener index), earliest first; ties by index.
    schedule: BinaryHeap<Reverse<(i64, u32)>>,
    rng: ChaCha8Rng,
    invalid: Option<(ChaCha8Rng, f64)>,
    /// Time of the latest event (malformed messages look like events of that moment).
    now_ms: i64,
}

impl EventStream {
    /// The stream of `catalog`'s seed. `invalid_rate` (0–1) is the share of malformed
    /// messages; 0 gives valid events only.
    pub fn new(catalog: &Catalog, invalid_rate: f64) -> EventStream {
        let (model, listeners) = Model::new(catalog);
        let mut rng = rng_for(catalog.seed, Purpose::Listening);
        // Everyone starts their first session somewhere in the first day, at a plausible
        // local hour.
        let schedule = listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                let offset = between(&mut rng, 0, 86_400_000) as i64;
                Reverse((next_active_time(&mut rng, listener, START_MS + offset), index as u32))
            })
            .collect();
        let invalid = (invalid_rate > 0.0).then(|| (rng_for(catalog.seed, Purpose::Invalid), invalid_rate.min(1.0)));
        EventStream { model, listeners, schedule, rng, invalid, now_ms: START_MS }
    }

    /// Writes the next message into `payload` (cleared first) and says what it was.
    pub fn next_message(&mut self, payload: &mut Vec<u8>) -> Message {
        payload.clear();
        if let Some((rng, rate)) = &mut self.invalid {
            if unit(rng) < *rate {
                let kind = invalid::pick_kind(rng);
                let user_id = 1 + below(rng, self.listeners.len()) as u64;
                let track_id = 1 + below(rng, self.model.tracks.len()) as u64;
                write_invalid(kind, rng, user_id, track_id, self.now_ms, payload);
                return Message::Invalid(kind);
            }
        }
        let event = self.next_event();
        event.write_json(payload);
        Message::Event(event)
    }

    /// The next valid event (skipping the malformed-message draw and the encoding).
    pub fn next_event(&mut self) -> GeneratedEvent {
        // The schedule always holds every listener (there is at least one).
        let Some(mut next) = self.schedule.peek_mut() else {
            unreachable!("the schedule holds every listener");
        };
        let Reverse((time_ms, index)) = *next;
        let rng = &mut self.rng;
        let model = &self.model;
        let listener = &mut self.listeners[index as usize];

        if listener.session_left == 0 {
            // A new session: about ten plays, no current artist yet.
            listener.session_left = (1.0 + exponential(rng, 9.0)).min(60.0) as u16;
            listener.artist = NO_ARTIST;
        }
        let (track, source) = choose_track(rng, model, listener);
        let (artist, duration_ms) = model.tracks[track as usize];

        let (p_skip, p_like) = source.skip_and_like();
        let outcome = unit(rng);
        let (kind, ms_played, elapsed_ms) = if outcome < p_skip {
            let played = between(rng, 1_000, 29_999).min(u64::from(duration_ms)) as u32;
            (EventKind::Skip, Some(played), played)
        } else if outcome < p_skip + SHORT_PLAY {
            let played = between(rng, 1_000, 29_999) as u32;
            (EventKind::Streaming, Some(played), played)
        } else if outcome < p_skip + SHORT_PLAY + p_like {
            (EventKind::Like, None, duration_ms)
        } else {
            // Most plays run to (nearly) the end.
            let played = (f64::from(duration_ms) * (0.8 + 0.2 * unit(rng))) as u32;
            (EventKind::Streaming, Some(played), played)
        };

        // How it is written: mostly the original producer's form, some other valid forms.
        let form = unit(rng);
        let timestamp = if form < 0.90 {
            TimestampForm::UtcMillis
        } else if form < 0.94 {
            TimestampForm::LocalOffset(listener.utc_offset_minutes)
        } else if form < 0.97 {
            TimestampForm::EpochMillis
        } else {
            TimestampForm::UtcMicros(below(rng, 1000) as u16)
        };
        let extras = if unit(rng) < 0.04 {
            Extras::DeviceAndCountry { device: below(rng, DEVICES.len()) as u8, country: listener.country }
        } else {
            Extras::None
        };
        let null_ms_played = ms_played.is_none() && unit(rng) < 0.3;

        // Remember the play and schedule the listener's next event.
        listener.artist = artist;
        listener.recent[usize::from(listener.recent_next)] = track;
        listener.recent_next = ((usize::from(listener.recent_next) + 1) % RECENT) as u8;
        listener.recent_len = (usize::from(listener.recent_len) + 1).min(RECENT) as u8;
        listener.session_left -= 1;
        let done = time_ms + i64::from(elapsed_ms);
        let next_time = if listener.session_left == 0 {
            let away = exponential(rng, f64::from(listener.session_gap_ms)) as i64;
            next_active_time(rng, listener, done + away)
        } else {
            done + between(rng, 300, 4_000) as i64
        };
        *next = Reverse((next_time, index));
        drop(next);

        self.now_ms = time_ms;
        GeneratedEvent {
            user_id: u64::from(index) + 1,
            track_id: u64::from(track) + 1,
            time_ms,
            kind,
            ms_played,
            null_ms_played,
            timestamp,
            extras,
        }
    }
}

/// The first time from `from` at which the listener starts listening: an hour is accepted
/// with its local activity level, otherwise they wait about 45 minutes and try again.
fn next_active_time(rng: &mut ChaCha8Rng, listener: &Listener, from: i64) -> i64 {
    let mut time = from;
    for _ in 0..48 {
        let local = time + i64::from(listener.utc_offset_minutes) * 60_000;
        let hour = local.rem_euclid(86_400_000) / 3_600_000;
        if unit(rng) < ACTIVITY_BY_HOUR[hour as usize] {
            break;
        }
        time += exponential(rng, 45.0 * 60_000.0) as i64;
    }
    time
}

/// Picks a track (index) for `listener`'s next play, and where the pick came from.
#[inline]
fn choose_track(rng: &mut ChaCha8Rng, model: &Model, listener: &Listener) -> (u32, Source) {
    if listener.recent_len > 0 && unit(rng) < 0.10 {
        let track = listener.recent[below(rng, usize::from(listener.recent_len))];
        return (track, Source::Repeat);
    }
    let (artist, source) = if listener.artist != NO_ARTIST && unit(rng) < 0.45 {
        (listener.artist, Source::Continuation)
    } else {
        let where_from = unit(rng);
        if where_from < 0.40 {
            (listener.favourites[below(rng, FAVOURITES)], Source::Favourite)
        } else if where_from < 0.75 {
            let pool = &model.cluster_pools[listener.cluster as usize];
            (pool[skewed_rank(rng, pool.len(), 1.3)], Source::Cluster)
        } else {
            let genre = &model.genre_artists[model.group_genres[usize::from(listener.group)].sample(rng)];
            (genre.artists[genre.by_fame.sample(rng)], Source::Exploration)
        }
    };
    let tracks = model.tracks_of(artist);
    (tracks[skewed_rank(rng, tracks.len(), 2.0)], source)
}

/// Countries of [`COUNTRIES`] are referred to by index in [`Extras`].
pub fn country_code(index: u8) -> &'static str {
    COUNTRIES[usize::from(index) % COUNTRIES.len()].code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogSizes;

    fn catalog() -> Catalog {
        Catalog::generate(11, CatalogSizes::new(2_000, 300, None, 3_000).expect("sizes"))
    }

    #[test]
    fn same_seed_same_bytes_and_invalid_messages_only_insert() {
        let catalog = catalog();
        let mut a = EventStream::new(&catalog, 0.0);
        let mut b = EventStream::new(&catalog, 0.0);
        let mut with_invalid = EventStream::new(&catalog, 0.2);
        let (mut pa, mut pb, mut pi) = (Vec::new(), Vec::new(), Vec::new());
        let mut valid_of_mixed = Vec::new();
        let mut invalid = 0;
        for _ in 0..5_000 {
            a.next_message(&mut pa);
            b.next_message(&mut pb);
            assert_eq!(pa, pb);
        }
        let mut reference = EventStream::new(&catalog, 0.0);
        for _ in 0..5_000 {
            match with_invalid.next_message(&mut pi) {
                Message::Event(_) => valid_of_mixed.push(pi.clone()),
                Message::Invalid(_) => invalid += 1,
            }
        }
        assert!((800..1_200).contains(&invalid), "{invalid}");
        for payload in valid_of_mixed {
            reference.next_message(&mut pa);
            assert_eq!(payload, pa);
        }
    }

    #[test]
    fn times_rise_and_ids_are_in_the_catalog() {
        let catalog = catalog();
        let mut stream = EventStream::new(&catalog, 0.0);
        let mut previous = i64::MIN;
        let mut last_of_user = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let event = stream.next_event();
            assert!(event.time_ms >= previous);
            previous = event.time_ms;
            assert!(catalog.has_user(event.user_id) && catalog.has_track(event.track_id));
            if let Some(last) = last_of_user.insert(event.user_id, event.time_ms) {
                assert!(event.time_ms > last, "a listener's events are strictly ordered");
            }
        }
    }

    #[test]
    fn outcome_mix_is_realistic() {
        let catalog = catalog();
        let mut stream = EventStream::new(&catalog, 0.0);
        let n = 50_000;
        let (mut skips_or_short, mut likes) = (0, 0);
        for _ in 0..n {
            let event = stream.next_event();
            match (event.kind, event.ms_played) {
                (EventKind::Like, _) => likes += 1,
                (EventKind::Skip, _) => skips_or_short += 1,
                (EventKind::Streaming, Some(ms)) if ms < 30_000 => skips_or_short += 1,
                _ => {}
            }
        }
        let skip_share = f64::from(skips_or_short) / f64::from(n);
        let like_share = f64::from(likes) / f64::from(n);
        assert!((0.15..=0.25).contains(&skip_share), "skips/short plays {skip_share}");
        assert!((0.005..=0.02).contains(&like_share), "likes {like_share}");
    }
}
