//! Tests of the strict SPEC §1 parser: a table of invalid inputs with the reason each must
//! name, a table of valid forms, and property tests (no panics, `to_json` round-trips).

use super::*;
use proptest::prelude::*;

const VALID: &str = r#"{"user_id":1,"track_id":2,"event_timestamp":"2024-05-01T12:00:00.123Z","event_type":"like"}"#;

/// A valid event with `extra` spliced in before the closing brace.
fn with(extra: &str) -> String {
    format!("{},{}}}", &VALID[..VALID.len() - 1], extra)
}

/// The four required fields with `user_id` replaced by `user_id_json`.
fn user_id(user_id_json: &str) -> String {
    format!(r#"{{"user_id":{user_id_json},"track_id":2,"event_timestamp":0,"event_type":"skip"}}"#)
}

fn event(user_id: u64, track_id: u64, ms: i64, event_type: EventType, ms_played: Option<u64>) -> Event {
    Event { user_id, track_id, event_time_ms: ms, event_type, ms_played }
}

#[test]
fn rejects_invalid_messages_with_a_reason_naming_the_fault() {
    let timestamp = |json: &str| format!(r#"{{"user_id":1,"track_id":2,"event_timestamp":{json},"event_type":"like"}}"#);
    let event_type = |json: &str| format!(r#"{{"user_id":1,"track_id":2,"event_timestamp":0,"event_type":{json}}}"#);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\xff\xfe{}".to_vec(), "not valid UTF-8"),
        (b"{\"user_id\":\"\xc3\x28\"}".to_vec(), "not valid UTF-8 (first bad byte at offset 12)"),
        (b"".to_vec(), "not JSON"),
        (b"   ".to_vec(), "not JSON"),
        (b"{".to_vec(), "not JSON"),
        (b"{\"user_id\":1,}".to_vec(), "not JSON"),
        (format!("{VALID} {{}}").into_bytes(), "not JSON: trailing characters"),
        (format!("{VALID}x").into_bytes(), "not JSON"),
        (b"[1,2]".to_vec(), "JSON array, not an object"),
        (b"\"text\"".to_vec(), "JSON string, not an object"),
        (b"42".to_vec(), "JSON number, not an object"),
        (b"-4.5".to_vec(), "JSON number, not an object"),
        (b"null".to_vec(), "JSON null, not an object"),
        (b"true".to_vec(), "JSON boolean, not an object"),
        // Repeated fields, known or unknown, also when spelled with escapes.
        (with(r#""user_id":1"#).into_bytes(), "field `user_id` occurs more than once"),
        (with(r#""event_type":"like""#).into_bytes(), "field `event_type` occurs more than once"),
        (with(r#""ms_played":null,"ms_played":null"#).into_bytes(), "field `ms_played` occurs more than once"),
        (with(r#""device":"a","device":"a""#).into_bytes(), "field `device` occurs more than once"),
        (with(r#""device":"a","dev\u0069ce":"b""#).into_bytes(), "field `device` occurs more than once"),
        (with(r#""user\u005fid":1"#).into_bytes(), "field `user_id` occurs more than once"),
        // Missing fields.
        (b"{}".to_vec(), "required field `user_id` is missing"),
        (br#"{"user_id":1,"event_timestamp":0,"event_type":"like"}"#.to_vec(), "required field `track_id` is missing"),
        (br#"{"user_id":1,"track_id":2,"event_type":"like"}"#.to_vec(), "required field `event_timestamp` is missing"),
        (br#"{"user_id":1,"track_id":2,"event_timestamp":0}"#.to_vec(), "required field `event_type` is missing"),
        // Wrong types; `null` is not absent for required fields.
        (user_id("1.0").into_bytes(), "field `user_id` must be an integer, found a number with a fraction"),
        // serde_json reads `-0` as the float -0.0 (keeping the sign), indistinguishable from
        // `-0.0`; it is rejected like every other float rather than special-cased.
        (user_id("-0").into_bytes(), "field `user_id` must be an integer, found a number"),
        (user_id("1e3").into_bytes(), "field `user_id` must be an integer, found a number with a fraction"),
        (user_id("18446744073709551616").into_bytes(), "more than 64 bits"),
        (user_id(r#""1""#).into_bytes(), "field `user_id` must be an integer, found a string"),
        (user_id("null").into_bytes(), "field `user_id` must be an integer, found null"),
        (user_id("true").into_bytes(), "found a boolean"),
        (user_id("[1]").into_bytes(), "found an array"),
        (user_id(r#"{"id":1}"#).into_bytes(), "found an object"),
        (br#"{"user_id":1,"track_id":2.5,"event_timestamp":0,"event_type":"like"}"#.to_vec(), "field `track_id` must be an integer"),
        // Ids out of range.
        (user_id("-1").into_bytes(), "field `user_id` is -1, outside 0 ≤ id < 2^63"),
        (user_id("9223372036854775808").into_bytes(), "field `user_id` is 9223372036854775808, outside"),
        (user_id("18446744073709551615").into_bytes(), "outside 0 ≤ id < 2^63"),
        (
            br#"{"user_id":1,"track_id":-9223372036854775808,"event_timestamp":0,"event_type":"like"}"#.to_vec(),
            "field `track_id` is -9223372036854775808",
        ),
        // Timestamps.
        (timestamp("null").into_bytes(), "field `event_timestamp` must be an ISO 8601 string or integer milliseconds, found null"),
        (timestamp("1.5").into_bytes(), "field `event_timestamp` must be"),
        (timestamp("-1").into_bytes(), "field `event_timestamp` is -1 ms"),
        (timestamp("9223372036854775808").into_bytes(), "field `event_timestamp` is 9223372036854775808 ms"),
        (timestamp(r#""2023-02-29T00:00:00Z""#).into_bytes(), "field `event_timestamp`: no such date 2023-02-29"),
        (timestamp(r#""2024-01-01T24:00:00Z""#).into_bytes(), "field `event_timestamp`: no such time 24:00:00"),
        (timestamp(r#""2024-01-01T12:00:00+24:00""#).into_bytes(), "offset 24:00 out of range"),
        (timestamp(r#""2024-01-01T12:00:00.1234567890Z""#).into_bytes(), "more than 9 digits"),
        (timestamp(r#""2024-01-01t12:00:00Z""#).into_bytes(), "expected `T` at byte 10"),
        (timestamp(r#""2024-01-01 12:00:00Z""#).into_bytes(), "expected `T` at byte 10"),
        (timestamp(r#""2024-01-01T12:00""#).into_bytes(), "expected `:` at byte 16"),
        (timestamp(r#""2024-01-01T12:00:00z""#).into_bytes(), "expected `.`, `Z`, `+`, `-` or the end at byte 19"),
        (timestamp(r#""""#).into_bytes(), "field `event_timestamp`: expected a 4-digit year at byte 0"),
        // Event types: exact and case-sensitive.
        (event_type(r#""play""#).into_bytes(), r#"field `event_type` is "play", not "streaming", "like" or "skip""#),
        (event_type(r#""Like""#).into_bytes(), r#"field `event_type` is "Like""#),
        (event_type(r#""like ""#).into_bytes(), r#"field `event_type` is "like ""#),
        (event_type("1").into_bytes(), "field `event_type` must be a string, found an integer"),
        (event_type("null").into_bytes(), "field `event_type` must be a string, found null"),
        // ms_played.
        (with(r#""ms_played":-1"#).into_bytes(), "field `ms_played` is -1, must be ≥ 0"),
        (with(r#""ms_played":1.0"#).into_bytes(), "field `ms_played` must be an integer or null, found a number"),
        (with(r#""ms_played":"30000""#).into_bytes(), "field `ms_played` must be an integer or null, found a string"),
    ];
    for (payload, reason) in cases {
        let shown = String::from_utf8_lossy(&payload).into_owned();
        let error = parse_event(&payload).expect_err(&shown);
        let message = error.to_string();
        assert!(message.contains(reason), "{shown}: {message:?} lacks {reason:?}");
        assert!(!message.contains('\n'), "{shown}: {message:?} is not one line");
    }
}

#[test]
fn accepts_every_valid_form() {
    let cases: &[(&str, Event)] = &[
        (VALID, event(1, 2, 1_714_564_800_123, EventType::Like, None)),
        // Integer milliseconds, including 0.
        (
            r#"{"user_id":0,"track_id":9223372036854775807,"event_timestamp":0,"event_type":"skip"}"#,
            event(0, MAX_ID, 0, EventType::Skip, None),
        ),
        (
            r#"{"user_id":1,"track_id":2,"event_timestamp":9223372036854775807,"event_type":"skip"}"#,
            event(1, 2, i64::MAX, EventType::Skip, None),
        ),
        // Offsets, no offset (UTC), fractions truncated.
        (
            r#"{"user_id":1,"track_id":2,"event_timestamp":"2024-05-01T14:00:00.1239999+02:00","event_type":"streaming","ms_played":30000}"#,
            event(1, 2, 1_714_564_800_123, EventType::Streaming, Some(30_000)),
        ),
        (
            r#"{"user_id":1,"track_id":2,"event_timestamp":"2024-05-01T12:00:00","event_type":"streaming","ms_played":null}"#,
            event(1, 2, 1_714_564_800_000, EventType::Streaming, None),
        ),
        (
            r#"{"user_id":1,"track_id":2,"event_timestamp":"1969-12-31T23:59:59.999Z","event_type":"streaming","ms_played":0}"#,
            event(1, 2, -1, EventType::Streaming, Some(0)),
        ),
        // Any field order, whitespace, extra fields of every kind, escapes in values and keys.
        (
            "\n { \"event_type\" : \"str\\u0065aming\", \"device\": {\"os\": [1, null, {\"a\": 2.5}]},\
             \"track_id\": 2, \"ms_played\": 18446744073709551615, \"country\": null,\
             \"user\\u005fid\": 1, \"session_id\": \"x\", \"event_timestamp\": 1714564800123 } ",
            event(1, 2, 1_714_564_800_123, EventType::Streaming, Some(u64::MAX)),
        ),
    ];
    for (payload, expected) in cases {
        assert_eq!(parse_event(payload.as_bytes()).as_ref(), Ok(expected), "{payload}");
    }
}

#[test]
fn listen_rule_follows_the_spec() {
    assert!(is_listen(EventType::Like, None));
    assert!(is_listen(EventType::Like, Some(0)));
    assert!(is_listen(EventType::Streaming, None));
    assert!(is_listen(EventType::Streaming, Some(30_000)));
    assert!(!is_listen(EventType::Streaming, Some(29_999)));
    assert!(!is_listen(EventType::Skip, None));
    assert!(!is_listen(EventType::Skip, Some(60_000)));
    assert!(event(1, 2, 0, EventType::Streaming, Some(45_000)).is_listen());
}

#[test]
fn to_json_is_canonical() {
    assert_eq!(
        event(1, 2, 1_714_564_800_123, EventType::Streaming, Some(31_000)).to_json(),
        r#"{"user_id":1,"track_id":2,"event_timestamp":"2024-05-01T12:00:00.123Z","event_type":"streaming","ms_played":31000}"#
    );
    assert_eq!(event(1, 2, 1_714_564_800_123, EventType::Like, None).to_json(), VALID);
}

#[test]
fn event_type_serde_uses_spec_names() {
    assert_eq!(serde_json::to_string(&EventType::Streaming).ok().as_deref(), Some(r#""streaming""#));
    for event_type in [EventType::Streaming, EventType::Like, EventType::Skip] {
        assert_eq!(EventType::from_name(event_type.as_str()), Some(event_type));
        assert_eq!(event_type.to_string(), event_type.as_str());
    }
}

fn any_event() -> impl Strategy<Value = Event> {
    (
        0..=MAX_ID,
        0..=MAX_ID,
        -62_167_219_200_000i64..=253_402_300_799_999,
        prop_oneof![Just(EventType::Streaming), Just(EventType::Like), Just(EventType::Skip)],
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(user_id, track_id, ms, event_type, ms_played)| event(user_id, track_id, ms, event_type, ms_played))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_event(&payload);
    }

    #[test]
    fn json_like_text_never_panics(payload in r#"[{}\[\]",:0-9a-z_.\-+ ]{0,120}"#) {
        let _ = parse_event(payload.as_bytes());
    }

    #[test]
    fn to_json_round_trips(event in any_event()) {
        prop_assert_eq!(parse_event(event.to_json().as_bytes()), Ok(event));
    }

    #[test]
    fn a_repeated_field_is_always_rejected(event in any_event(), field in 0usize..4) {
        let json = event.to_json();
        let name = ["user_id", "track_id", "event_timestamp", "event_type"][field];
        let repeated = format!(r#"{},"{name}":0}}"#, &json[..json.len() - 1]);
        prop_assert_eq!(parse_event(repeated.as_bytes()), Err(EventError::DuplicateField(name.to_owned())));
    }
}
