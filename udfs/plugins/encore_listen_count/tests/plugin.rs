//! Loads the built `libencore_listen_count` and calls its `__run` the way Arroyo does.

use std::sync::Arc;

use encore_udf_harness::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use encore_udf_harness::{assert_rows, Plugin};

#[test]
fn counts_listens_by_the_spec_rule() {
    let plugin = Plugin::load("encore_listen_count").expect("plugin built by cargo");
    // (event_type, ms_played, expected result)
    let cases: &[(Option<&str>, Option<i64>, Option<i64>)] = &[
        (Some("like"), None, Some(1)),
        (Some("like"), Some(0), Some(1)),
        (Some("streaming"), None, Some(1)),
        (Some("streaming"), Some(30_000), Some(1)),
        (Some("streaming"), Some(29_999), Some(0)),
        (Some("streaming"), Some(i64::MAX), Some(1)),
        (Some("skip"), None, Some(0)),
        (Some("skip"), Some(60_000), Some(0)),
        // Invalid events are not listens.
        (Some("Like"), None, Some(0)),
        (Some("play"), Some(60_000), Some(0)),
        (Some("streaming"), Some(-1), Some(0)),
        // NULL in the non-nullable argument: NULL out (arroyo-udf-plugin's rule).
        (None, Some(60_000), None),
    ];
    let event_types: ArrayRef = Arc::new(StringArray::from(cases.iter().map(|c| c.0).collect::<Vec<_>>()));
    let ms_played: ArrayRef = Arc::new(Int64Array::from(cases.iter().map(|c| c.1).collect::<Vec<_>>()));
    let output = plugin.call(&[event_types, ms_played]).expect("no panic");
    assert_rows(&output, cases.len());
    let counts = output.column().as_any().downcast_ref::<Int64Array>().expect("BIGINT result");
    for (row, case) in cases.iter().enumerate() {
        let actual = counts.is_valid(row).then(|| counts.value(row));
        assert_eq!(actual, case.2, "row {row}: {case:?}");
    }
}

#[test]
fn an_empty_batch_gives_an_empty_column() {
    let plugin = Plugin::load("encore_listen_count").expect("plugin built by cargo");
    let event_types: ArrayRef = Arc::new(StringArray::from(Vec::<Option<&str>>::new()));
    let ms_played: ArrayRef = Arc::new(Int64Array::from(Vec::<Option<i64>>::new()));
    let output = plugin.call(&[event_types, ms_played]).expect("no panic");
    assert_rows(&output, 0);
}
