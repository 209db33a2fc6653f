//! The seeded generator of adversarial input lines (see [`super`] for what it aims at): every
//! line with its [`Intent`], the event it must parse to or the way it is invalid.

pub use encore_core::invalid::InvalidKind;
use encore_core::invalid::{self, join, Draw, Fields};
use encore_core::{civil_from_days, Event, EventType, MAX_ID};
use rand::rngs::ChaCha8Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};

/// 2024-05-01T00:00:00Z in milliseconds: the start of the window most instants fall in.
const BASE_MS: i64 = 1_714_521_600_000;
const MS_PER_DAY: i64 = 86_400_000;

/// The shape of a generated input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineMix {
    /// Number of distinct users (at least 1).
    pub users: u64,
    /// Number of distinct tracks (at least 1).
    pub tracks: u64,
    /// Number of lines to generate.
    pub lines: usize,
    /// Length of the window instants are drawn from: the shorter, the more ties.
    pub window_seconds: i64,
    /// Percentage (0–100) of invalid lines.
    pub invalid_percent: u32,
}

impl LineMix {
    /// A mix drawn from `seed`: 5–40 users, 5–60 tracks, a 10–300 s window, 0–10 % invalid
    /// lines.
    pub fn random(seed: u64, lines: usize) -> LineMix {
        // A different stream from the one `generate` uses with the same seed.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d69_785f_7365_6564);
        LineMix {
            users: rng.random_range(5..=40),
            tracks: rng.random_range(5..=60),
            lines,
            window_seconds: rng.random_range(10..=300),
            invalid_percent: rng.random_range(0..=10),
        }
    }
}

/// How a valid line writes its `event_timestamp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimestampForm {
    /// Integer milliseconds since the Unix epoch.
    Millis,
    /// The ISO 8601 string form.
    Iso {
        /// Digits after the decimal point (0 = no fraction).
        fraction_digits: u8,
        /// What follows the seconds.
        zone: Zone,
    },
}

/// The zone designator of an ISO 8601 timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Zone {
    /// Nothing: the time is UTC.
    Absent,
    /// `Z`.
    Zulu,
    /// `±hh:mm`, in minutes east of UTC.
    Offset(i32),
}

/// Offsets in minutes, real-world ones and the extremes SPEC's `±hh:mm` allows.
const OFFSETS: [i32; 10] = [0, 60, 120, 330, 345, -300, -480, -570, 840, -720];

/// What a generated line is meant to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// A valid message that must parse to `event`.
    Valid {
        /// The event the line encodes.
        event: Event,
        /// How its timestamp is written.
        form: TimestampForm,
    },
    /// An invalid message.
    Invalid(InvalidKind),
}

/// One generated line: the raw message bytes and what they mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedLine {
    /// The message value (no trailing newline).
    pub bytes: Vec<u8>,
    /// What it is meant to be.
    pub intent: Intent,
}

/// Generates `mix.lines` lines from `seed`; the same seed and mix give the same lines.
pub fn generate(seed: u64, mix: &LineMix) -> Vec<GeneratedLine> {
    let mut generator = Generator { rng: ChaCha8Rng::seed_from_u64(seed), mix: *mix, heard: Vec::new() };
    (0..mix.lines).map(|_| generator.line()).collect()
}

/// Writes `lines` to `path` as a JSON-lines file (`--input`), one line each.
pub fn write_lines(path: &std::path::Path, lines: &[Vec<u8>]) {
    let mut text = Vec::with_capacity(lines.iter().map(|line| line.len() + 1).sum());
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    std::fs::write(path, text).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

/// `lines` raw message lines from `seed`, with the mix [`LineMix::random`] draws from it.
pub fn random_lines(seed: u64, lines: usize) -> Vec<Vec<u8>> {
    generate(seed, &LineMix::random(seed, lines)).into_iter().map(|line| line.bytes).collect()
}

/// `lines` raw message lines from `seed` over exactly `users` users and `tracks` tracks, in a
/// one-hour window with 2 % invalid lines: many users per track make n(i) and c(i,j) large
/// enough for the count rounding of SPEC §2 step 4 to matter.
pub fn dense_lines(seed: u64, lines: usize, users: u64, tracks: u64) -> Vec<Vec<u8>> {
    let mix = LineMix { users, tracks, lines, window_seconds: 3_600, invalid_percent: 2 };
    generate(seed, &mix).into_iter().map(|line| line.bytes).collect()
}

/// The generator's state: its random stream and the (user, track) pairs already emitted, which
/// it repeats on purpose.
struct Generator {
    rng: ChaCha8Rng,
    mix: LineMix,
    heard: Vec<(u64, u64)>,
}

impl Generator {
    fn line(&mut self) -> GeneratedLine {
        let event = self.event();
        if self.rng.random_range(0..100) < self.mix.invalid_percent {
            let kind = *InvalidKind::ALL.choose(&mut self.rng).expect("non-empty");
            return GeneratedLine { bytes: self.invalid(&event, kind), intent: Intent::Invalid(kind) };
        }
        self.heard.push((event.user_id, event.track_id));
        let (timestamp, form) = self.timestamp(event.event_time_ms);
        let fields = self.fields(&event, timestamp);
        GeneratedLine { bytes: join(&fields).into_bytes(), intent: Intent::Valid { event, form } }
    }

    /// A random valid event.
    fn event(&mut self) -> Event {
        let (user_id, track_id) = match self.heard.choose(&mut self.rng) {
            Some(&pair) if self.rng.random_bool(0.3) => pair,
            _ => {
                let user = self.rng.random_range(0..self.mix.users.max(1));
                // The smaller of two draws: low track ids are popular, so pairs recur.
                let tracks = self.mix.tracks.max(1);
                let track = self.rng.random_range(0..tracks).min(self.rng.random_range(0..tracks));
                (id_of(user, self.mix.users), id_of(track, tracks))
            }
        };
        let event_type = match self.rng.random_range(0..100) {
            0..60 => EventType::Streaming,
            60..75 => EventType::Like,
            _ => EventType::Skip,
        };
        let ms_played = match (event_type, self.rng.random_range(0..100)) {
            (EventType::Streaming, 0..25) => None,
            (EventType::Streaming, 25..50) => Some(self.rng.random_range(0..30_000)),
            (EventType::Streaming, 50..55) => Some(*[29_999, 30_000].choose(&mut self.rng).expect("non-empty")),
            (EventType::Streaming, _) => Some(self.rng.random_range(30_000..400_000)),
            (_, 0..50) => None,
            (_, _) => Some(self.rng.random_range(0..400_000)),
        };
        Event { user_id, track_id, event_time_ms: self.instant(), event_type, ms_played }
    }

    /// An event time: mostly whole seconds in the window, some .x00 and .xyz, a few before 1970.
    fn instant(&mut self) -> i64 {
        if self.rng.random_bool(0.02) {
            return -self.rng.random_range(1..=400 * MS_PER_DAY);
        }
        let second = self.rng.random_range(0..self.mix.window_seconds.max(1));
        let millis = match self.rng.random_range(0..4) {
            0 | 1 => 0,
            2 => 100 * self.rng.random_range(0..10),
            _ => self.rng.random_range(0..1000),
        };
        BASE_MS + second * 1000 + millis
    }

    /// `event_timestamp` as JSON text, in a random form that denotes exactly `ms`.
    fn timestamp(&mut self, ms: i64) -> (String, TimestampForm) {
        if ms >= 0 && self.rng.random_bool(0.25) {
            return (ms.to_string(), TimestampForm::Millis);
        }
        let zone = match self.rng.random_range(0..10) {
            0 | 1 => Zone::Absent,
            2..=5 => Zone::Zulu,
            _ => Zone::Offset(*OFFSETS.choose(&mut self.rng).expect("non-empty")),
        };
        let millis = ms.rem_euclid(1000);
        // Fewer than 3 digits only when the dropped ones are zeros; more than 3 get random
        // digits that the parser must truncate away.
        let representable = |digits: u8| match digits {
            0 => millis == 0,
            1 => millis % 100 == 0,
            2 => millis % 10 == 0,
            _ => true,
        };
        let mut fraction_digits = self.rng.random_range(0..=9u8);
        if !representable(fraction_digits) {
            fraction_digits = self.rng.random_range(3..=9);
        }
        let mut fraction = String::new();
        if fraction_digits > 0 {
            let three = format!("{millis:03}");
            fraction.push('.');
            fraction.push_str(&three[..usize::from(fraction_digits.min(3))]);
            for _ in 3..fraction_digits {
                fraction.push(char::from(b'0' + self.rng.random_range(0..10u8)));
            }
        }
        let offset_minutes = match zone {
            Zone::Offset(minutes) => minutes,
            _ => 0,
        };
        // The wall-clock time at the offset: UTC plus the offset.
        let local = ms + i64::from(offset_minutes) * 60_000;
        let designator = match zone {
            Zone::Absent => String::new(),
            Zone::Zulu => "Z".to_owned(),
            Zone::Offset(minutes) => {
                let sign = if minutes < 0 { '-' } else { '+' };
                format!("{sign}{:02}:{:02}", minutes.abs() / 60, minutes.abs() % 60)
            }
        };
        let text = format!("\"{}{fraction}{designator}\"", wall_clock_seconds(local));
        (text, TimestampForm::Iso { fraction_digits, zone })
    }

    /// The fields of a valid message for `event`, in random order, with random extras.
    fn fields(&mut self, event: &Event, timestamp: String) -> Fields {
        let mut fields: Fields = vec![
            ("user_id".into(), event.user_id.to_string()),
            ("track_id".into(), event.track_id.to_string()),
            ("event_timestamp".into(), timestamp),
            ("event_type".into(), format!("\"{}\"", event.event_type.as_str())),
        ];
        match event.ms_played {
            Some(ms) => fields.push(("ms_played".into(), ms.to_string())),
            None if self.rng.random_bool(0.5) => fields.push(("ms_played".into(), "null".into())),
            None => {}
        }
        let extras = [
            ("device", "\"mobile\""),
            ("country", "\"FR\""),
            ("session_id", "\"5f0c2a\""),
            ("context", "{\"playlist\":[1,2.5,null],\"shuffle\":true}"),
            ("rating", "4.5"),
        ];
        for (key, value) in extras {
            if self.rng.random_bool(0.3) {
                fields.push((key.into(), value.into()));
            }
        }
        fields.shuffle(&mut self.rng);
        fields
    }

    /// A message derived from `event` (a random valid rendering of it) that is invalid in the
    /// way `kind` says: encore-core's one list of SPEC §1 counterexamples.
    fn invalid(&mut self, event: &Event, kind: InvalidKind) -> Vec<u8> {
        let (timestamp, _) = self.timestamp(event.event_time_ms);
        let fields = self.fields(event, timestamp);
        let mut bytes = Vec::new();
        invalid::write_invalid(kind, event, fields, &mut Draws(&mut self.rng), &mut bytes);
        bytes
    }
}

/// The generator's random stream, for encore-core's invalid messages.
struct Draws<'a>(&'a mut ChaCha8Rng);

impl Draw for Draws<'_> {
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

/// The id of the `index`-th of `count` ids: the index itself, except that the last one is the
/// largest valid id, `2^63 - 1`.
fn id_of(index: u64, count: u64) -> u64 {
    if count > 1 && index == count - 1 {
        MAX_ID
    } else {
        index
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of `ms` (milliseconds since the epoch, any sign), fraction dropped.
fn wall_clock_seconds(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::parse_lines;
    use encore_core::parse_event;
    use std::collections::{BTreeMap, BTreeSet};

    /// A mix with many invalid lines, so that every kind shows up in a few thousand lines.
    fn hostile_mix(lines: usize) -> LineMix {
        LineMix { users: 12, tracks: 20, lines, window_seconds: 30, invalid_percent: 25 }
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_844), (2024, 5, 1));
        assert_eq!(wall_clock_seconds(BASE_MS + 3_723_999), "2024-05-01T01:02:03");
        assert_eq!(wall_clock_seconds(-1), "1969-12-31T23:59:59");
    }

    #[test]
    fn every_line_parses_as_intended() {
        for seed in 0..8 {
            for line in generate(seed, &hostile_mix(1500)) {
                let parsed = parse_event(&line.bytes);
                let shown = String::from_utf8_lossy(&line.bytes);
                match &line.intent {
                    Intent::Valid { event, .. } => assert_eq!(parsed.as_ref(), Ok(event), "line {shown}"),
                    Intent::Invalid(kind) => assert!(parsed.is_err(), "{kind:?} line parsed: {shown} → {parsed:?}"),
                }
            }
        }
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        assert_eq!(random_lines(42, 300), random_lines(42, 300));
        assert_ne!(random_lines(42, 300), random_lines(43, 300));
        // A longer run starts with the shorter one.
        let mix = hostile_mix(500);
        let long = generate(9, &mix);
        let short = generate(9, &LineMix { lines: 100, ..mix });
        assert_eq!(&long[..100], &short[..]);
    }

    #[test]
    fn generation_covers_every_form_kind_and_corner() {
        let lines = generate(1, &hostile_mix(4000));
        let mut kinds = BTreeSet::new();
        let mut fraction_digits = BTreeSet::new();
        let (mut millis, mut absent, mut zulu, mut offsets) = (0, 0, 0, BTreeSet::new());
        let mut forms_per_instant: BTreeMap<i64, BTreeSet<TimestampForm>> = BTreeMap::new();
        let mut before_1970 = 0;
        let mut types = BTreeSet::new();
        let (mut short_plays, mut null_or_absent) = (0, 0);
        let mut repeated_pairs: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for line in &lines {
            match &line.intent {
                Intent::Invalid(kind) => {
                    kinds.insert(*kind);
                }
                Intent::Valid { event, form } => {
                    match *form {
                        TimestampForm::Millis => millis += 1,
                        TimestampForm::Iso { fraction_digits: digits, zone } => {
                            fraction_digits.insert(digits);
                            match zone {
                                Zone::Absent => absent += 1,
                                Zone::Zulu => zulu += 1,
                                Zone::Offset(minutes) => {
                                    offsets.insert(minutes);
                                }
                            }
                        }
                    }
                    forms_per_instant.entry(event.event_time_ms).or_default().insert(*form);
                    before_1970 += usize::from(event.event_time_ms < 0);
                    types.insert(event.event_type);
                    short_plays += usize::from(matches!(event.ms_played, Some(ms) if ms < 30_000));
                    null_or_absent += usize::from(event.ms_played.is_none());
                    *repeated_pairs.entry((event.user_id, event.track_id)).or_default() += 1;
                }
            }
        }
        assert_eq!(kinds, InvalidKind::ALL.into_iter().collect());
        assert_eq!(fraction_digits, (0..=9).collect());
        assert!(millis > 0 && absent > 0 && zulu > 0);
        assert_eq!(offsets, OFFSETS.into_iter().collect());
        assert!(before_1970 > 0);
        assert_eq!(types.len(), 3);
        assert!(short_plays > 0 && null_or_absent > 0);
        assert!(repeated_pairs.values().any(|&count| count > 2));
        // The same instant written in several forms: ties across forms, including ISO vs millis.
        let mixed = forms_per_instant.values().filter(|forms| forms.len() > 1).count();
        assert!(mixed > 10, "only {mixed} instants written in more than one form");
        assert!(forms_per_instant.values().any(|forms| forms.contains(&TimestampForm::Millis) && forms.len() > 1));
        // The largest valid ids occur.
        assert!(repeated_pairs.keys().any(|&(user, track)| user == MAX_ID || track == MAX_ID));
    }

    #[test]
    fn parse_lines_reports_invalid_lines_by_number() {
        let generated = generate(5, &hostile_mix(600));
        let lines: Vec<Vec<u8>> = generated.iter().map(|line| line.bytes.clone()).collect();
        let (events, errors) = parse_lines(&lines);
        let invalid: Vec<usize> =
            generated.iter().enumerate().filter(|(_, line)| matches!(line.intent, Intent::Invalid(_))).map(|(n, _)| n).collect();
        assert_eq!(errors.iter().map(|(n, _)| *n).collect::<Vec<_>>(), invalid);
        assert!(errors.iter().all(|(_, error)| !error.is_empty() && !error.contains('\n')));
        let valid: Vec<&Event> = generated
            .iter()
            .filter_map(|line| match &line.intent {
                Intent::Valid { event, .. } => Some(event),
                Intent::Invalid(_) => None,
            })
            .collect();
        assert_eq!(events.iter().collect::<Vec<_>>(), valid);
    }
}
