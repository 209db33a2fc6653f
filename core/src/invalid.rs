//! Invalid messages: one [`InvalidKind`] per rule of SPEC §1 a message can break, each shaped
//! like a real event and broken in that one way only (feature `invalid`).
//!
//! This is the one list of counterexamples to the parser: the generator's `--invalid-rate`
//! and the dataflow's adversarial test lines both draw from it, with their own random
//! streams ([`Draw`]), so a change of SPEC §1 changes [`crate::parse_event`] and this module
//! together, here. Every message is non-empty and holds no newline, so a JSON-lines file
//! keeps one message a line. Speed does not matter (invalid messages are rare), so they are
//! built with `format!`.
//!
//! ```
//! use encore_core::invalid::{plain_fields, write_invalid, Draw, InvalidKind};
//! use encore_core::{parse_event, Event, EventType};
//!
//! struct First;
//! impl Draw for First {
//!     fn below(&mut self, _n: usize) -> usize { 0 }
//! }
//! let event = Event { user_id: 7, track_id: 42, event_time_ms: 0, event_type: EventType::Like, ms_played: None };
//! let mut message = Vec::new();
//! for kind in InvalidKind::ALL {
//!     write_invalid(kind, &event, plain_fields(&event), &mut First, &mut message);
//!     assert!(parse_event(&message).is_err(), "{kind:?}");
//! }
//! ```

use crate::{format_iso_timestamp, Event};

/// The random choices a message is built from; each caller brings its own random stream.
pub trait Draw {
    /// A number in `0..n`, uniformly (`n > 0`).
    fn below(&mut self, n: usize) -> usize;
}

/// A message under construction: `(key, value as JSON text)`, in output order.
pub type Fields = Vec<(String, String)>;

/// The ways a message can be invalid, one SPEC §1 rule each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidKind {
    /// Bytes that are not UTF-8 inside an otherwise fine object.
    NotUtf8,
    /// JSON cut off in the middle.
    Truncated,
    /// Text that is not JSON: another format, a trailing comma, text after the object.
    NotJson,
    /// A JSON array.
    Array,
    /// A JSON scalar.
    Scalar,
    /// A required field is absent or `null` (`null` counts as absent only for `ms_played`).
    MissingField,
    /// An id is a string, a float (`1.0`, `1e3`), a boolean, an object or an array.
    IdWrongType,
    /// An id is negative.
    NegativeId,
    /// An id is ≥ 2^63.
    IdTooLarge,
    /// `event_timestamp` is a string that is not a date-time SPEC §1 accepts.
    BadTimestamp,
    /// `event_timestamp` has a type SPEC §1 does not accept (float, bool, object, negative
    /// integer).
    TimestampWrongType,
    /// `event_type` is a string other than the three.
    UnknownEventType,
    /// `event_type` is not a string.
    EventTypeWrongType,
    /// A field appears twice.
    DuplicateField,
    /// `ms_played` is negative, a float, a string, a boolean or beyond 64 bits.
    BadMsPlayed,
}

impl InvalidKind {
    /// Every kind.
    pub const ALL: [InvalidKind; 15] = [
        InvalidKind::NotUtf8,
        InvalidKind::Truncated,
        InvalidKind::NotJson,
        InvalidKind::Array,
        InvalidKind::Scalar,
        InvalidKind::MissingField,
        InvalidKind::IdWrongType,
        InvalidKind::NegativeId,
        InvalidKind::IdTooLarge,
        InvalidKind::BadTimestamp,
        InvalidKind::TimestampWrongType,
        InvalidKind::UnknownEventType,
        InvalidKind::EventTypeWrongType,
        InvalidKind::DuplicateField,
        InvalidKind::BadMsPlayed,
    ];
}

/// The required fields of SPEC §1.
const REQUIRED: [&str; 4] = ["user_id", "track_id", "event_timestamp", "event_type"];

const BAD_TIMESTAMPS: [&str; 22] = [
    "2024-13-01T00:00:00Z",
    "2024-02-30T12:00:00Z",
    "2023-02-29T10:00:00.000Z",
    "2024-05-01T24:00:00Z",
    "2024-05-01T25:00:00Z",
    "2024-05-01T12:60:00Z",
    "2024-05-01 12:00:00Z",
    "2024/05/01T12:00:00Z",
    "2024-05-01T12:00Z",
    "2024-05-01T12:00:00.Z",
    "2024-05-01T12:00:00.1234567891Z",
    "2024-05-01T12:00:00+0200",
    "2024-05-01T12:00:00+02",
    "2024-05-01T12:00:00+2:00",
    "2024-05-01T12:00:00z",
    "2024-05-01",
    "1714521600123",
    "yesterday",
    "",
    "-1",
    "T12:00:00Z",
    "2024-05-01T12:00:00ZZ",
];

const BAD_EVENT_TYPES: [&str; 10] = ["play", "STREAMING", "Streaming", "Like", "LIKE", "", "skipped", "streaming ", "skip ", "stream"];

const BAD_MS_PLAYED: [&str; 8] = ["-1", "-30000", "30000.0", "\"30000\"", "true", "false", "1.5e4", "18446744073709551616"];

/// The fields of a plain valid message for `event`: the SPEC §1 fields in order, the
/// timestamp in ISO form, UTC, and `ms_played` when the event has one.
pub fn plain_fields(event: &Event) -> Fields {
    let mut fields = vec![
        ("user_id".to_owned(), event.user_id.to_string()),
        ("track_id".to_owned(), event.track_id.to_string()),
        ("event_timestamp".to_owned(), format!("\"{}\"", format_iso_timestamp(event.event_time_ms))),
        ("event_type".to_owned(), format!("\"{}\"", event.event_type.as_str())),
    ];
    if let Some(ms) = event.ms_played {
        fields.push(("ms_played".to_owned(), ms.to_string()));
    }
    fields
}

/// Writes into `buf` (cleared first) a message that is `fields` (a valid message for
/// `event`, in any order and with any extra fields) broken in the way `kind` says.
pub fn write_invalid(kind: InvalidKind, event: &Event, mut fields: Fields, draw: &mut impl Draw, buf: &mut Vec<u8>) {
    buf.clear();
    let text = match kind {
        InvalidKind::NotUtf8 => return not_utf8(fields, draw, buf),
        InvalidKind::Truncated => {
            let text = join(&fields);
            // A proper prefix, never empty (an empty line is no message) and without the
            // closing brace.
            let cut = 1 + draw.below(text.len() - 2);
            buf.extend_from_slice(&text.as_bytes()[..cut]);
            return;
        }
        InvalidKind::NotJson => {
            let text = join(&fields);
            let (user, track, time) = (event.user_id, event.track_id, format_iso_timestamp(event.event_time_ms));
            pick(
                draw,
                &[
                    format!("user_id={user} track_id={track} event_type=streaming"),
                    format!("{user},{track},{time},streaming"),
                    "<event/>".to_owned(),
                    format!("{{user_id: {user}, track_id: {track}}}"),
                    format!("{{'user_id': {user}, 'track_id': {track}, 'event_type': 'like'}}"),
                    format!("{},}}", &text[..text.len() - 1]),
                    format!("{text} {text}"),
                ],
            )
        }
        InvalidKind::Array => pick(draw, &[format!("[{}]", join(&fields)), "[1,2,3]".to_owned()]),
        InvalidKind::Scalar => pick(draw, &["null", "true", "42", "1.5", "\"streaming\"", "\"like\""].map(str::to_owned)),
        InvalidKind::MissingField => {
            let key = REQUIRED[draw.below(REQUIRED.len())];
            if draw.below(2) == 0 {
                fields.retain(|(k, _)| k != key);
            } else {
                set(&mut fields, key, "null".to_owned());
            }
            join(&fields)
        }
        InvalidKind::IdWrongType => {
            let key = ["user_id", "track_id"][draw.below(2)];
            let id = if key == "user_id" { event.user_id } else { event.track_id };
            let value = pick(
                draw,
                &[
                    format!("\"{id}\""),
                    format!("{id}.0"),
                    format!("{id}e0"),
                    "true".to_owned(),
                    format!("{{\"id\":{id}}}"),
                    format!("[{id}]"),
                ],
            );
            set(&mut fields, key, value);
            join(&fields)
        }
        InvalidKind::NegativeId => {
            let key = ["user_id", "track_id"][draw.below(2)];
            let id = if key == "user_id" { event.user_id } else { event.track_id };
            set(&mut fields, key, pick(draw, &[format!("-{}", id.max(1)), "-9223372036854775808".to_owned()]));
            join(&fields)
        }
        InvalidKind::IdTooLarge => {
            let key = ["user_id", "track_id"][draw.below(2)];
            let values = ["9223372036854775808", "18446744073709551615", "18446744073709551616", "100000000000000000000"];
            set(&mut fields, key, pick(draw, &values.map(str::to_owned)));
            join(&fields)
        }
        InvalidKind::BadTimestamp => {
            set(&mut fields, "event_timestamp", format!("\"{}\"", BAD_TIMESTAMPS[draw.below(BAD_TIMESTAMPS.len())]));
            join(&fields)
        }
        InvalidKind::TimestampWrongType => {
            let ms = event.event_time_ms;
            let value = pick(
                draw,
                &[
                    format!("{ms}.5"),
                    format!("{ms}.0"),
                    format!("{}e3", ms / 1000),
                    format!("-{}", ms.unsigned_abs().max(1)),
                    "true".to_owned(),
                    "{}".to_owned(),
                ],
            );
            set(&mut fields, "event_timestamp", value);
            join(&fields)
        }
        InvalidKind::UnknownEventType => {
            set(&mut fields, "event_type", format!("\"{}\"", BAD_EVENT_TYPES[draw.below(BAD_EVENT_TYPES.len())]));
            join(&fields)
        }
        InvalidKind::EventTypeWrongType => {
            let values = ["1", "true", "[\"streaming\"]", "{\"type\":\"like\"}"];
            set(&mut fields, "event_type", pick(draw, &values.map(str::to_owned)));
            join(&fields)
        }
        InvalidKind::DuplicateField => {
            // A field again: with the same value, or (for the SPEC's fields) another valid one.
            let (key, value) = fields[draw.below(fields.len())].clone();
            let other = match key.as_str() {
                "user_id" => ((event.user_id + 1) % (1 << 63)).to_string(),
                "event_type" => "\"like\"".to_owned(),
                "event_timestamp" => event.event_time_ms.max(0).to_string(),
                "ms_played" => "1000".to_owned(),
                _ => value.clone(),
            };
            let again = if draw.below(2) == 0 { value } else { other };
            let text = join(&fields);
            format!("{},\"{key}\":{again}}}", &text[..text.len() - 1])
        }
        InvalidKind::BadMsPlayed => {
            set(&mut fields, "ms_played", BAD_MS_PLAYED[draw.below(BAD_MS_PLAYED.len())].to_owned());
            join(&fields)
        }
    };
    buf.extend_from_slice(text.as_bytes());
}

/// One of `choices`, drawn.
fn pick(draw: &mut impl Draw, choices: &[String]) -> String {
    choices[draw.below(choices.len())].clone()
}

/// The message with a field whose string holds bytes no UTF-8 text contains.
fn not_utf8(mut fields: Fields, draw: &mut impl Draw, buf: &mut Vec<u8>) {
    // A key no valid message here has, and a marker no key or value contains (`@`), so the
    // message is invalid for this reason only.
    fields.push(("comment".to_owned(), "\"@@\"".to_owned()));
    buf.extend_from_slice(join(&fields).as_bytes());
    let at = buf.windows(2).position(|pair| pair == b"@@").unwrap_or(1);
    // A byte that never occurs in UTF-8; a lead byte followed by ASCII; a lone continuation.
    let bytes: [[u8; 2]; 3] = [[0xFF, 0xFE], [0xC3, b'a'], [0x80, 0x80]];
    buf[at..at + 2].copy_from_slice(&bytes[draw.below(bytes.len())]);
}

/// Sets the value of `key`, adding the field where it is absent.
fn set(fields: &mut Fields, key: &str, value: String) {
    match fields.iter_mut().find(|(k, _)| k == key) {
        Some(field) => field.1 = value,
        None => fields.push((key.to_owned(), value)),
    }
}

/// A JSON object from its fields, with nothing after the closing brace (so that every proper
/// prefix is invalid JSON).
pub fn join(fields: &Fields) -> String {
    let body: Vec<String> = fields.iter().map(|(key, value)| format!("\"{key}\":{value}")).collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_event, EventType};

    /// A small deterministic stream of draws (xorshift), enough to reach every choice.
    struct Xorshift(u64);

    impl Draw for Xorshift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn events() -> Vec<Event> {
        let event =
            |user_id, track_id, event_time_ms, event_type, ms_played| Event { user_id, track_id, event_time_ms, event_type, ms_played };
        vec![
            event(12, 34, 1_714_521_600_000, EventType::Streaming, Some(31_000)),
            event(0, crate::MAX_ID, -86_400_001, EventType::Like, None),
            event(crate::MAX_ID, 1, 0, EventType::Skip, Some(0)),
        ]
    }

    #[test]
    fn every_kind_is_refused_by_the_parser_and_stays_on_one_line() {
        let mut draw = Xorshift(0x9e37_79b9_7f4a_7c15);
        let mut buf = Vec::new();
        for event in events() {
            assert!(parse_event(join(&plain_fields(&event)).as_bytes()).is_ok(), "the plain message is valid");
            for _ in 0..200 {
                for kind in InvalidKind::ALL {
                    let mut fields = plain_fields(&event);
                    // Shuffled, with an extra field: callers may bring any valid message.
                    let turn = draw.below(fields.len());
                    fields.rotate_left(turn);
                    fields.push(("device".to_owned(), "\"mobile\"".to_owned()));
                    write_invalid(kind, &event, fields, &mut draw, &mut buf);
                    let shown = String::from_utf8_lossy(&buf);
                    assert!(parse_event(&buf).is_err(), "{kind:?} parsed: {shown}");
                    assert!(!buf.is_empty() && !buf.contains(&b'\n'), "{kind:?}: {shown:?}");
                    assert!(!buf.iter().all(u8::is_ascii_whitespace), "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn missing_field_really_misses_it_and_not_utf8_is_not_utf8() {
        let mut draw = Xorshift(7);
        let mut buf = Vec::new();
        let event = events().remove(0);
        for _ in 0..100 {
            write_invalid(InvalidKind::MissingField, &event, plain_fields(&event), &mut draw, &mut buf);
            let value: serde_json::Value = serde_json::from_slice(&buf).expect("still JSON");
            let object = value.as_object().expect("an object");
            assert!(REQUIRED.iter().any(|key| object.get(*key).is_none_or(serde_json::Value::is_null)), "{value}");
            write_invalid(InvalidKind::NotUtf8, &event, plain_fields(&event), &mut draw, &mut buf);
            assert!(std::str::from_utf8(&buf).is_err());
        }
    }
}
