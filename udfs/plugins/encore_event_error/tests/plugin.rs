//! Loads the built `libencore_event_error` and calls its `__run` the way Arroyo does.

use std::sync::Arc;

use encore_udf_harness::arrow::array::{Array, ArrayRef, StringArray};
use encore_udf_harness::{assert_rows, Plugin};

#[test]
fn gives_null_for_valid_events_and_the_dead_letter_reason_otherwise() {
    let plugin = Plugin::load("encore_event_error").expect("plugin built by cargo");
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (Some(r#"{"user_id":1,"track_id":2,"event_timestamp":"2024-05-01T12:00:00Z","event_type":"like"}"#), None),
        (
            Some(r#"{"user_id":1,"track_id":2,"event_timestamp":1714564800000,"event_type":"streaming","ms_played":null,"device":"tv"}"#),
            None,
        ),
        (
            Some(r#"{"user_id":1,"user_id":1,"track_id":2,"event_timestamp":0,"event_type":"like"}"#),
            Some("field `user_id` occurs more than once"),
        ),
        (
            Some(r#"{"user_id":1.0,"track_id":2,"event_timestamp":0,"event_type":"like"}"#),
            Some("field `user_id` must be an integer, found a number with a fraction, an exponent or more than 64 bits"),
        ),
        (
            Some(r#"{"user_id":1,"track_id":2,"event_timestamp":"2023-02-29T00:00:00Z","event_type":"like"}"#),
            Some("field `event_timestamp`: no such date 2023-02-29"),
        ),
        (Some("[]"), Some("payload is JSON array, not an object")),
        (Some(""), Some("payload is not JSON: EOF while parsing a value at line 1 column 0")),
        (None, None),
    ];
    let payloads: ArrayRef = Arc::new(StringArray::from(cases.iter().map(|c| c.0).collect::<Vec<_>>()));
    let output = plugin.call(&[payloads]).expect("no panic");
    assert_rows(&output, cases.len());
    let errors = output.column().as_any().downcast_ref::<StringArray>().expect("TEXT result");
    for (row, case) in cases.iter().enumerate() {
        let actual = errors.is_valid(row).then(|| errors.value(row));
        assert_eq!(actual, case.1, "row {row}: {case:?}");
        // The same text the dataflow writes to dead_letters.error.
        if let Some(payload) = case.0 {
            let expected = encore_core::parse_event(payload.as_bytes()).err().map(|e| e.to_string());
            assert_eq!(actual.map(str::to_owned), expected, "row {row}");
        }
    }
}
