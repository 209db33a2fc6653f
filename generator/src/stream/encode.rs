//! SPEC §1 JSON for a generated event, written by hand into a reused buffer.
//!
//! serde_json would allocate a map or need a derive per variant; the generator's target
//! (hundreds of thousands of events a second on two cores) wants no allocation per event, so
//! fields are appended with `itoa` and the timestamp writer of [`crate::timestamp`]. Every
//! string written here is plain ASCII without characters that need escaping.

use crate::taste::COUNTRIES;
use crate::timestamp::{push_local_datetime, push_offset};

/// `event_type` of a generated event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A play (full or short).
    Streaming,
    /// The listener liked the track.
    Like,
    /// The listener skipped the track.
    Skip,
}

impl EventKind {
    /// The SPEC §1 `event_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Streaming => "streaming",
            EventKind::Like => "like",
            EventKind::Skip => "skip",
        }
    }
}

/// How `event_timestamp` is written; all are valid SPEC §1 forms of the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimestampForm {
    /// `2024-05-01T12:00:00.123Z`, the original producer's form (most events).
    UtcMillis,
    /// The listener's wall-clock time with its offset: `2024-05-01T17:30:00.123+05:30`.
    LocalOffset(i16),
    /// Integer milliseconds since the epoch.
    EpochMillis,
    /// Microseconds (`.123456Z`), which the parser truncates to the millisecond.
    UtcMicros(u16),
}

/// Extra fields a consumer must ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extras {
    /// None.
    None,
    /// `"device"` and `"country"`.
    DeviceAndCountry {
        /// Index into [`DEVICES`].
        device: u8,
        /// Index into [`COUNTRIES`].
        country: u8,
    },
}

/// Devices named in the `device` extra field.
pub const DEVICES: [&str; 5] = ["android", "ios", "web", "desktop", "smart_speaker"];

/// One generated listening event and the way it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GeneratedEvent {
    /// `user_id`.
    pub user_id: u64,
    /// `track_id`.
    pub track_id: u64,
    /// The event time, ms since the epoch.
    pub time_ms: i64,
    /// `event_type`.
    pub kind: EventKind,
    /// `ms_played`, absent when `None`.
    pub ms_played: Option<u32>,
    /// Write an absent `ms_played` as `"ms_played":null` (valid: null counts as absent).
    pub null_ms_played: bool,
    /// How the timestamp is written.
    pub timestamp: TimestampForm,
    /// Extra fields.
    pub extras: Extras,
}

impl GeneratedEvent {
    /// Appends the event's JSON object (no newline) to `buf`.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        buf.extend_from_slice(b"{\"user_id\":");
        buf.extend_from_slice(numbers.format(self.user_id).as_bytes());
        buf.extend_from_slice(b",\"track_id\":");
        buf.extend_from_slice(numbers.format(self.track_id).as_bytes());
        buf.extend_from_slice(b",\"event_timestamp\":");
        match self.timestamp {
            TimestampForm::UtcMillis => {
                buf.push(b'"');
                push_local_datetime(buf, self.time_ms, 0);
                buf.extend_from_slice(b"Z\"");
            }
            TimestampForm::LocalOffset(minutes) => {
                buf.push(b'"');
                push_local_datetime(buf, self.time_ms, i32::from(minutes));
                push_offset(buf, i32::from(minutes));
                buf.push(b'"');
            }
            TimestampForm::EpochMillis => buf.extend_from_slice(numbers.format(self.time_ms).as_bytes()),
            TimestampForm::UtcMicros(micros) => {
                buf.push(b'"');
                push_local_datetime(buf, self.time_ms, 0);
                let micros = micros % 1000;
                buf.extend_from_slice(&[b'0' + (micros / 100) as u8, b'0' + (micros / 10 % 10) as u8, b'0' + (micros % 10) as u8]);
                buf.extend_from_slice(b"Z\"");
            }
        }
        buf.extend_from_slice(b",\"event_type\":\"");
        buf.extend_from_slice(self.kind.as_str().as_bytes());
        buf.push(b'"');
        match self.ms_played {
            Some(ms) => {
                buf.extend_from_slice(b",\"ms_played\":");
                buf.extend_from_slice(numbers.format(ms).as_bytes());
            }
            None if self.null_ms_played => buf.extend_from_slice(b",\"ms_played\":null"),
            None => {}
        }
        if let Extras::DeviceAndCountry { device, country } = self.extras {
            buf.extend_from_slice(b",\"device\":\"");
            buf.extend_from_slice(DEVICES[usize::from(device) % DEVICES.len()].as_bytes());
            buf.extend_from_slice(b"\",\"country\":\"");
            buf.extend_from_slice(COUNTRIES[usize::from(country) % COUNTRIES.len()].code.as_bytes());
            buf.push(b'"');
        }
        buf.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(timestamp: TimestampForm) -> GeneratedEvent {
        GeneratedEvent {
            user_id: 17,
            track_id: 4242,
            time_ms: 1_714_521_600_123,
            kind: EventKind::Streaming,
            ms_played: Some(201_000),
            null_ms_played: false,
            timestamp,
            extras: Extras::None,
        }
    }

    fn json(e: &GeneratedEvent) -> String {
        let mut buf = Vec::new();
        e.write_json(&mut buf);
        String::from_utf8(buf).expect("ASCII")
    }

    #[test]
    fn writes_the_original_producer_form() {
        assert_eq!(
            json(&event(TimestampForm::UtcMillis)),
            r#"{"user_id":17,"track_id":4242,"event_timestamp":"2024-05-01T00:00:00.123Z","event_type":"streaming","ms_played":201000}"#
        );
    }

    #[test]
    fn writes_every_variant_as_json() {
        let mut like = event(TimestampForm::LocalOffset(-300));
        like.kind = EventKind::Like;
        like.ms_played = None;
        like.null_ms_played = true;
        like.extras = Extras::DeviceAndCountry { device: 1, country: 7 };
        assert_eq!(
            json(&like),
            r#"{"user_id":17,"track_id":4242,"event_timestamp":"2024-04-30T19:00:00.123-05:00","event_type":"like","ms_played":null,"device":"ios","country":"GB"}"#
        );
        assert!(json(&event(TimestampForm::EpochMillis)).contains(r#""event_timestamp":1714521600123,"#));
        assert!(json(&event(TimestampForm::UtcMicros(45))).contains(r#""2024-05-01T00:00:00.123045Z""#));
        for form in [TimestampForm::UtcMillis, TimestampForm::LocalOffset(330), TimestampForm::EpochMillis, TimestampForm::UtcMicros(999)] {
            let value: serde_json::Value = serde_json::from_str(&json(&event(form))).expect("valid JSON");
            assert_eq!(value["user_id"], 17);
        }
    }
}
