//! Malformed messages for dead-letter tests (`--invalid-rate`).
//!
//! Each [`InvalidKind`] breaks exactly one SPEC §1 rule, so every one must be rejected by
//! the strict parser while looking otherwise like a real event. None contains a newline, so a
//! JSON-lines file keeps one message a line. Speed does not matter here (they are rare), so
//! they are formatted with `write!`.

use std::io::Write as _;

use rand::rngs::ChaCha8Rng;

use crate::sample::{below, between};
use crate::timestamp::iso_utc;

/// The ways a generated message can be invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidKind {
    /// Bytes that are not UTF-8 inside an otherwise fine object.
    NotUtf8,
    /// JSON cut off in the middle.
    Truncated,
    /// Text that is not JSON at all.
    NotJson,
    /// A JSON array (of an event).
    Array,
    /// A JSON scalar.
    Scalar,
    /// A required field is missing.
    MissingField,
    /// An id is a string, a float (`1.0`, `1e3`), a boolean, null or an object.
    IdWrongType,
    /// An id is negative.
    NegativeId,
    /// An id is ≥ 2^63.
    IdTooLarge,
    /// `event_timestamp` is not a date-time SPEC §1 accepts.
    BadTimestamp,
    /// `event_timestamp` has a type SPEC §1 does not accept (float, bool, negative integer).
    TimestampWrongType,
    /// `event_type` is not one of the three.
    UnknownEventType,
    /// `event_type` is not a string.
    EventTypeWrongType,
    /// A field appears twice.
    DuplicateField,
    /// `ms_played` is negative, a float, a string or a boolean.
    BadMsPlayed,
}

impl InvalidKind {
    /// Every kind (a malformed message is one of these, drawn uniformly).
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

    /// A kind drawn uniformly.
    pub(crate) fn pick(rng: &mut ChaCha8Rng) -> InvalidKind {
        InvalidKind::ALL[below(rng, InvalidKind::ALL.len())]
    }
}

const BAD_TIMESTAMPS: [&str; 14] = [
    "2024-13-01T00:00:00Z",
    "2024-02-30T12:00:00Z",
    "2023-02-29T10:00:00.000Z",
    "2024-05-01T25:00:00Z",
    "2024-05-01T12:60:00Z",
    "2024-05-01",
    "yesterday",
    "",
    "2024-05-01T12:00:00.Z",
    "2024-05-01T12:00:00.1234567891Z",
    "2024/05/01T12:00:00Z",
    "2024-05-01T12:00:00+2:00",
    "2024-05-01T12:00Z",
    "1714521600123",
];

const BAD_EVENT_TYPES: [&str; 7] = ["play", "STREAMING", "Like", "", "skipped", "streaming ", "stream"];

/// The fields of a plausible event, as JSON text pieces, to be broken one at a time.
struct Fields {
    user_id: String,
    track_id: String,
    event_timestamp: String,
    event_type: String,
    ms_played: Option<String>,
}

impl Fields {
    fn write(&self, buf: &mut Vec<u8>) {
        let mut first = true;
        let mut field = |buf: &mut Vec<u8>, name: &str, value: &str| {
            let _ = write!(buf, "{}\"{name}\":{value}", if first { "{" } else { "," });
            first = false;
        };
        field(buf, "user_id", &self.user_id);
        field(buf, "track_id", &self.track_id);
        field(buf, "event_timestamp", &self.event_timestamp);
        field(buf, "event_type", &self.event_type);
        if let Some(ms) = &self.ms_played {
            field(buf, "ms_played", ms);
        }
        buf.push(b'}');
    }
}

/// Writes a message of `kind` into `buf` (cleared first), shaped like an event of `user_id`
/// and `track_id` at `time_ms`.
pub(crate) fn write_invalid(kind: InvalidKind, rng: &mut ChaCha8Rng, user_id: u64, track_id: u64, time_ms: i64, buf: &mut Vec<u8>) {
    buf.clear();
    let mut fields = Fields {
        user_id: user_id.to_string(),
        track_id: track_id.to_string(),
        event_timestamp: format!("\"{}\"", iso_utc(time_ms)),
        event_type: "\"streaming\"".to_owned(),
        ms_played: Some(between(rng, 30_000, 300_000).to_string()),
    };
    let id_is_user = below(rng, 2) == 0;
    let set_id = |fields: &mut Fields, value: String| {
        if id_is_user {
            fields.user_id = value;
        } else {
            fields.track_id = value;
        }
    };
    match kind {
        InvalidKind::NotUtf8 => {
            fields.write(buf);
            // Replace a byte inside the event type's string with one no UTF-8 text contains.
            let position = buf.windows(9).position(|w| w == b"streaming").map_or(1, |p| p + 3);
            buf[position] = [0xff, 0xc3, 0x80][below(rng, 3)];
            if buf[position] == 0xc3 {
                // A lone lead byte followed by ASCII: invalid too.
                buf[position + 1] = b'a';
            }
        }
        InvalidKind::Truncated => {
            fields.write(buf);
            let cut = between(rng, 1, buf.len() as u64 - 2) as usize;
            buf.truncate(cut);
        }
        InvalidKind::NotJson => {
            let texts = [
                format!("user_id={user_id} track_id={track_id} event_type=streaming"),
                format!("{user_id},{track_id},{},streaming", iso_utc(time_ms)),
                "<event/>".to_owned(),
                format!("{{user_id: {user_id}, track_id: {track_id}}}"),
                format!("{{'user_id': {user_id}, 'track_id': {track_id}, 'event_type': 'like'}}"),
            ];
            buf.extend_from_slice(texts[below(rng, texts.len())].as_bytes());
        }
        InvalidKind::Array => {
            buf.push(b'[');
            fields.write(buf);
            buf.push(b']');
        }
        InvalidKind::Scalar => {
            let scalars = ["null", "true", "42", "\"streaming\"", "1.5"];
            buf.extend_from_slice(scalars[below(rng, scalars.len())].as_bytes());
        }
        InvalidKind::MissingField => {
            let mut object = Vec::new();
            fields.write(&mut object);
            let text = String::from_utf8_lossy(&object).into_owned();
            let name = ["user_id", "track_id", "event_timestamp", "event_type"][below(rng, 4)];
            let value = match name {
                "user_id" => &fields.user_id,
                "track_id" => &fields.track_id,
                "event_timestamp" => &fields.event_timestamp,
                _ => &fields.event_type,
            };
            // Remove the field (and the comma that joined it to the next one, or to the
            // previous one for the last field).
            let with_comma_after = format!("\"{name}\":{value},");
            let with_comma_before = format!(",\"{name}\":{value}");
            let text = if text.contains(&with_comma_after) {
                text.replacen(&with_comma_after, "", 1)
            } else {
                text.replacen(&with_comma_before, "", 1)
            };
            buf.extend_from_slice(text.as_bytes());
        }
        InvalidKind::IdWrongType => {
            let id = if id_is_user { user_id } else { track_id };
            let values = [
                format!("\"{id}\""),
                format!("{id}.0"),
                format!("{id}e0"),
                "true".to_owned(),
                "null".to_owned(),
                format!("{{\"id\":{id}}}"),
                format!("[{id}]"),
            ];
            set_id(&mut fields, values[below(rng, values.len())].clone());
            fields.write(buf);
        }
        InvalidKind::NegativeId => {
            let id = if id_is_user { user_id } else { track_id };
            set_id(&mut fields, format!("-{}", id.max(1)));
            fields.write(buf);
        }
        InvalidKind::IdTooLarge => {
            let values = ["9223372036854775808", "18446744073709551615", "18446744073709551616", "99999999999999999999999"];
            set_id(&mut fields, values[below(rng, values.len())].to_owned());
            fields.write(buf);
        }
        InvalidKind::BadTimestamp => {
            fields.event_timestamp = format!("\"{}\"", BAD_TIMESTAMPS[below(rng, BAD_TIMESTAMPS.len())]);
            fields.write(buf);
        }
        InvalidKind::TimestampWrongType => {
            let values = [format!("{time_ms}.5"), "true".to_owned(), format!("-{time_ms}"), "null".to_owned(), "{}".to_owned()];
            fields.event_timestamp = values[below(rng, values.len())].clone();
            fields.write(buf);
        }
        InvalidKind::UnknownEventType => {
            fields.event_type = format!("\"{}\"", BAD_EVENT_TYPES[below(rng, BAD_EVENT_TYPES.len())]);
            fields.write(buf);
        }
        InvalidKind::EventTypeWrongType => {
            let values = ["1", "null", "true", "[\"streaming\"]", "{\"type\":\"like\"}"];
            fields.event_type = values[below(rng, values.len())].to_owned();
            fields.write(buf);
        }
        InvalidKind::DuplicateField => {
            fields.write(buf);
            buf.pop();
            let duplicates = [
                format!(",\"user_id\":{}", user_id + 1),
                format!(",\"track_id\":{track_id}"),
                ",\"event_type\":\"like\"".to_owned(),
                format!(",\"event_timestamp\":{time_ms}"),
                ",\"ms_played\":1000".to_owned(),
            ];
            buf.extend_from_slice(duplicates[below(rng, duplicates.len())].as_bytes());
            buf.push(b'}');
        }
        InvalidKind::BadMsPlayed => {
            let values = ["-1", "-30000", "30000.0", "\"30000\"", "true", "1.5e4", "18446744073709551616"];
            fields.ms_played = Some(values[below(rng, values.len())].to_owned());
            fields.write(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{rng_for, Purpose};

    #[test]
    fn no_kind_writes_a_newline_or_nothing() {
        let mut rng = rng_for(1, Purpose::Invalid);
        let mut buf = Vec::new();
        for _ in 0..50 {
            for kind in InvalidKind::ALL {
                write_invalid(kind, &mut rng, 12, 34, 1_714_521_600_000, &mut buf);
                assert!(!buf.is_empty(), "{kind:?}");
                assert!(!buf.contains(&b'\n'), "{kind:?}");
                assert!(!buf.iter().all(u8::is_ascii_whitespace), "{kind:?}");
            }
        }
    }

    #[test]
    fn missing_field_really_misses_it() {
        let mut rng = rng_for(2, Purpose::Invalid);
        let mut buf = Vec::new();
        for _ in 0..100 {
            write_invalid(InvalidKind::MissingField, &mut rng, 12, 34, 1_714_521_600_000, &mut buf);
            let value: serde_json::Value = serde_json::from_slice(&buf).expect("still JSON");
            let object = value.as_object().expect("an object");
            assert_eq!(object.len(), 4, "{}", String::from_utf8_lossy(&buf));
        }
    }

    #[test]
    fn not_utf8_is_not_utf8() {
        let mut rng = rng_for(3, Purpose::Invalid);
        let mut buf = Vec::new();
        for _ in 0..30 {
            write_invalid(InvalidKind::NotUtf8, &mut rng, 12, 34, 1_714_521_600_000, &mut buf);
            assert!(std::str::from_utf8(&buf).is_err());
        }
    }
}
