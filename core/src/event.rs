//! SPEC §1 events: the model and the strict parser.
//!
//! The parser is a hand-written serde [`Visitor`] over `serde_json`'s deserializer rather than a
//! derived `Deserialize`, because the SPEC is stricter than serde's defaults: a repeated field
//! (known or unknown) is invalid, `1.0` is not an integer, `null` counts as absent only for
//! `ms_played`, and ids must be below 2^63. It is also the hot path of the pipeline, so:
//!
//! * keys are matched as `&str` without allocating; only unknown keys are remembered (for the
//!   duplicate check), borrowed from the payload unless they contain escapes (`Cow`);
//! * values are read as a small [`Scalar`] borrowing strings from the payload; unknown fields'
//!   values are skipped with [`IgnoredAny`];
//! * the first semantic error stops parsing. The visitor stores the structured [`EventError`] in
//!   a slot and returns a placeholder serde error to unwind; [`parse_event`] then returns the
//!   slot's error. Errors that serde itself reports are JSON syntax errors ([`EventError::NotJson`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::timestamp::{format_iso_timestamp, parse_iso_timestamp, TimestampError};

/// SPEC §1: a `"streaming"` event is a listen when it played at least this long (or when
/// `ms_played` is absent).
pub const LISTEN_MIN_MS_PLAYED: u64 = 30_000;

/// The largest valid `user_id`/`track_id`: ids are `0 ≤ id < 2^63`, so they fit a Postgres
/// `BIGINT`.
pub const MAX_ID: u64 = (1 << 63) - 1;

/// What happened (SPEC §1 `event_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The track was played (for `ms_played` milliseconds, when given).
    Streaming,
    /// The listener liked the track: always a listen.
    Like,
    /// The listener skipped the track: never a listen.
    Skip,
}

impl EventType {
    /// The SPEC §1 spelling: `"streaming"`, `"like"` or `"skip"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Streaming => "streaming",
            EventType::Like => "like",
            EventType::Skip => "skip",
        }
    }

    /// The inverse of [`EventType::as_str`] (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<EventType> {
        match name {
            "streaming" => Some(EventType::Streaming),
            "like" => Some(EventType::Like),
            "skip" => Some(EventType::Skip),
            _ => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One valid listening event (SPEC §1), as parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The listener, `< 2^63`.
    pub user_id: u64,
    /// The track, `< 2^63`.
    pub track_id: u64,
    /// Event time in ms since the Unix epoch (ISO forms before 1970 give negative values).
    pub event_time_ms: i64,
    /// What happened.
    pub event_type: EventType,
    /// How long the track played; `None` when absent or `null`.
    pub ms_played: Option<u64>,
}

impl Event {
    /// SPEC §1 listen rule: like, or streaming with `ms_played` absent or ≥ 30 000.
    pub fn is_listen(&self) -> bool {
        is_listen(self.event_type, self.ms_played)
    }

    /// Canonical JSON object (no newline) in SPEC §1 format with an ISO 8601 UTC timestamp with
    /// milliseconds (`"2024-05-01T12:00:00.123Z"`); `ms_played` omitted when `None`.
    /// [`parse_event`] reads it back to the same event (for years 0000–9999).
    pub fn to_json(&self) -> String {
        use fmt::Write as _;
        let mut json = format!(
            r#"{{"user_id":{},"track_id":{},"event_timestamp":"{}","event_type":"{}""#,
            self.user_id,
            self.track_id,
            format_iso_timestamp(self.event_time_ms),
            self.event_type.as_str(),
        );
        if let Some(ms_played) = self.ms_played {
            // Writing to a String cannot fail.
            let _ = write!(json, r#","ms_played":{ms_played}"#);
        }
        json.push('}');
        json
    }
}

/// SPEC §1 listen rule on raw columns: `"like"`, or `"streaming"` with `ms_played` absent or
/// ≥ [`LISTEN_MIN_MS_PLAYED`].
pub fn is_listen(event_type: EventType, ms_played: Option<u64>) -> bool {
    match event_type {
        EventType::Like => true,
        EventType::Streaming => ms_played.is_none_or(|ms| ms >= LISTEN_MIN_MS_PLAYED),
        EventType::Skip => false,
    }
}

/// Why a message is invalid. `Display` is the one-line reason written to
/// `dead_letters.error`; it names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The payload is not UTF-8.
    #[error("payload is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Length of the longest valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The payload is not (one complete) JSON value; holds serde_json's message.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The payload is JSON, but not an object.
    #[error("payload is JSON {0}, not an object")]
    NotAnObject(&'static str),
    /// A field occurs more than once (after JSON unescaping of the key).
    #[error("field `{0}` occurs more than once")]
    DuplicateField(String),
    /// A required field is absent.
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    /// A field holds the wrong kind of JSON value.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What the SPEC requires.
        expected: &'static str,
        /// What the payload holds.
        found: &'static str,
    },
    /// `user_id` or `track_id` outside `0 ≤ id < 2^63`.
    #[error("field `{field}` is {value}, outside 0 ≤ id < 2^63")]
    IdOutOfRange {
        /// The field.
        field: &'static str,
        /// The value found.
        value: i128,
    },
    /// An ISO `event_timestamp` that does not parse.
    #[error("field `event_timestamp`: {0}")]
    BadTimestamp(#[from] TimestampError),
    /// An integer `event_timestamp` outside `0 ≤ ms < 2^63`.
    #[error("field `event_timestamp` is {0} ms, outside 0 ≤ ms < 2^63")]
    TimestampOutOfRange(i128),
    /// `event_type` is a string other than `"streaming"`, `"like"`, `"skip"`.
    #[error("field `event_type` is {0:?}, not \"streaming\", \"like\" or \"skip\"")]
    UnknownEventType(String),
    /// `ms_played` is a negative integer.
    #[error("field `ms_played` is {0}, must be ≥ 0")]
    NegativeMsPlayed(i64),
}

/// The strict SPEC §1 parser. Never panics, on any bytes.
///
/// ```
/// use encore_core::{parse_event, EventType};
/// let event = parse_event(br#"{"user_id":1,"track_id":2,"event_timestamp":"2024-05-01T12:00:00Z",
///                              "event_type":"like","device":"mobile"}"#).unwrap();
/// assert_eq!((event.track_id, event.event_type), (2, EventType::Like));
/// assert!(parse_event(br#"{"user_id":1.0}"#).is_err());
/// ```
pub fn parse_event(payload: &[u8]) -> Result<Event, EventError> {
    let text = std::str::from_utf8(payload).map_err(|error| EventError::NotUtf8 { valid_up_to: error.valid_up_to() })?;
    let mut slot = None;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = EventSeed { error: &mut slot }.deserialize(&mut deserializer).and_then(|event| deserializer.end().map(|()| event));
    match parsed {
        Ok(event) => Ok(event),
        // The visitor unwinds with a placeholder after storing the real reason.
        Err(error) => Err(slot.unwrap_or_else(|| EventError::NotJson(error.to_string()))),
    }
}

/// Records `error` as the reason and unwinds the deserializer.
fn fail<T, E: de::Error>(slot: &mut Option<EventError>, error: EventError) -> Result<T, E> {
    *slot = Some(error);
    Err(E::custom("invalid event (see the stored reason)"))
}

/// Deserializes the top-level object; semantic errors go to `error`.
struct EventSeed<'s> {
    error: &'s mut Option<EventError>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Event;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Event, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A field name: the SPEC's fields without allocation, others kept for the duplicate check.
enum Key<'de> {
    UserId,
    TrackId,
    EventTimestamp,
    EventType,
    MsPlayed,
    Other(Cow<'de, str>),
}

impl<'de> Key<'de> {
    fn known(name: &str) -> Option<Key<'de>> {
        Some(match name {
            "user_id" => Key::UserId,
            "track_id" => Key::TrackId,
            "event_timestamp" => Key::EventTimestamp,
            "event_type" => Key::EventType,
            "ms_played" => Key::MsPlayed,
            _ => return None,
        })
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::known(name).unwrap_or(Key::Other(Cow::Borrowed(name))))
    }

    /// Keys with escapes arrive here, unescaped into a scratch buffer.
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key<'de>, E> {
        Ok(Key::known(name).unwrap_or_else(|| Key::Other(Cow::Owned(name.to_owned()))))
    }
}

/// Any JSON value, reduced to what the field checks need.
enum Scalar<'de> {
    Unsigned(u64),
    Negative(i64),
    Float,
    Str(Cow<'de, str>),
    Bool,
    Null,
    Array,
    Object,
}

impl Scalar<'_> {
    /// How the value is described in error messages.
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Unsigned(_) | Scalar::Negative(_) => "an integer",
            Scalar::Float => "a number with a fraction, an exponent or more than 64 bits",
            Scalar::Str(_) => "a string",
            Scalar::Bool => "a boolean",
            Scalar::Null => "null",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        }
    }
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scalar<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Unsigned(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Scalar<'de>, E> {
        Ok(u64::try_from(value).map_or(Scalar::Negative(value), Scalar::Unsigned))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Float)
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(value.to_owned())))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        // Consume the array so that serde_json still checks the syntax of the whole payload.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// `user_id`/`track_id`: an integer `0 ≤ id < 2^63`.
fn id_field(field: &'static str, value: Scalar<'_>) -> Result<u64, EventError> {
    match value {
        Scalar::Unsigned(id) if id <= MAX_ID => Ok(id),
        Scalar::Unsigned(id) => Err(EventError::IdOutOfRange { field, value: i128::from(id) }),
        Scalar::Negative(id) => Err(EventError::IdOutOfRange { field, value: i128::from(id) }),
        other => Err(EventError::WrongType { field, expected: "an integer", found: other.kind() }),
    }
}

/// `event_timestamp`: an ISO 8601 string or integer milliseconds `≥ 0`.
fn timestamp_field(value: Scalar<'_>) -> Result<i64, EventError> {
    match value {
        Scalar::Str(text) => Ok(parse_iso_timestamp(&text)?),
        Scalar::Unsigned(ms) => i64::try_from(ms).map_err(|_| EventError::TimestampOutOfRange(i128::from(ms))),
        Scalar::Negative(ms) => Err(EventError::TimestampOutOfRange(i128::from(ms))),
        other => Err(EventError::WrongType {
            field: "event_timestamp",
            expected: "an ISO 8601 string or integer milliseconds",
            found: other.kind(),
        }),
    }
}

/// `event_type`: exactly one of the three names.
fn event_type_field(value: Scalar<'_>) -> Result<EventType, EventError> {
    match value {
        Scalar::Str(name) => EventType::from_name(&name).ok_or_else(|| EventError::UnknownEventType(name.into_owned())),
        other => Err(EventError::WrongType { field: "event_type", expected: "a string", found: other.kind() }),
    }
}

/// `ms_played`: an integer `≥ 0`, or `null` (= absent).
fn ms_played_field(value: Scalar<'_>) -> Result<Option<u64>, EventError> {
    match value {
        Scalar::Unsigned(ms) => Ok(Some(ms)),
        Scalar::Null => Ok(None),
        Scalar::Negative(ms) => Err(EventError::NegativeMsPlayed(ms)),
        other => Err(EventError::WrongType { field: "ms_played", expected: "an integer or null", found: other.kind() }),
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let slot = self.error;
        let mut user_id = None;
        let mut track_id = None;
        let mut event_time_ms = None;
        let mut event_type = None;
        // Outer Option: seen; inner: the value (`null` = None).
        let mut ms_played: Option<Option<u64>> = None;
        // Unknown keys seen so far. Messages carry a handful of fields, so a linear search
        // beats hashing; `Vec::new` does not allocate until the first unknown key.
        let mut others: Vec<Cow<'de, str>> = Vec::new();

        /// Reads the value of a SPEC field once: a second occurrence is an error.
        macro_rules! field {
            ($target:ident, $name:literal, $check:expr) => {{
                if $target.is_some() {
                    return fail(slot, EventError::DuplicateField($name.to_owned()));
                }
                let value = map.next_value_seed(ScalarSeed)?;
                match $check(value) {
                    Ok(value) => $target = Some(value),
                    Err(error) => return fail(slot, error),
                }
            }};
        }

        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::UserId => field!(user_id, "user_id", |v| id_field("user_id", v)),
                Key::TrackId => field!(track_id, "track_id", |v| id_field("track_id", v)),
                Key::EventTimestamp => field!(event_time_ms, "event_timestamp", timestamp_field),
                Key::EventType => field!(event_type, "event_type", event_type_field),
                Key::MsPlayed => field!(ms_played, "ms_played", ms_played_field),
                Key::Other(name) => {
                    if others.contains(&name) {
                        return fail(slot, EventError::DuplicateField(name.into_owned()));
                    }
                    map.next_value::<IgnoredAny>()?;
                    others.push(name);
                }
            }
        }

        let Some(user_id) = user_id else {
            return fail(slot, EventError::MissingField("user_id"));
        };
        let Some(track_id) = track_id else {
            return fail(slot, EventError::MissingField("track_id"));
        };
        let Some(event_time_ms) = event_time_ms else {
            return fail(slot, EventError::MissingField("event_timestamp"));
        };
        let Some(event_type) = event_type else {
            return fail(slot, EventError::MissingField("event_type"));
        };
        Ok(Event { user_id, track_id, event_time_ms, event_type, ms_played: ms_played.flatten() })
    }

    // Every other JSON value is valid JSON but not an object.

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Event, E> {
        fail(self.error, EventError::NotAnObject("boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Event, E> {
        fail(self.error, EventError::NotAnObject("number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Event, E> {
        fail(self.error, EventError::NotAnObject("number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Event, E> {
        fail(self.error, EventError::NotAnObject("number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Event, E> {
        fail(self.error, EventError::NotAnObject("string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Event, E> {
        fail(self.error, EventError::NotAnObject("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Event, A::Error> {
        fail(self.error, EventError::NotAnObject("array"))
    }
}

#[cfg(test)]
#[path = "event/tests.rs"]
mod tests;
