//! Loads the built `libencore_event_time_ms` and calls its `__run` the way Arroyo does.

use std::sync::Arc;

use encore_udf_harness::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use encore_udf_harness::{assert_rows, Plugin};

#[test]
fn reads_spec_timestamps_and_nulls_the_rest() {
    let plugin = Plugin::load("encore_event_time_ms").expect("plugin built by cargo");
    let cases: &[(Option<&str>, Option<i64>)] = &[
        (Some("2024-05-01T12:00:00.123Z"), Some(1_714_564_800_123)),
        (Some("2024-05-01T14:00:00.123999999+02:00"), Some(1_714_564_800_123)),
        (Some("2024-05-01T12:00:00"), Some(1_714_564_800_000)),
        (Some("1969-12-31T23:59:59.999Z"), Some(-1)),
        (Some("2024-02-29T00:00:00Z"), Some(1_709_164_800_000)),
        (Some("2023-02-29T00:00:00Z"), None),
        (Some("2024-05-01T24:00:00Z"), None),
        (Some("2024-05-01 12:00:00Z"), None),
        (Some("2024-05-01T12:00:00+24:00"), None),
        (Some("2024-05-01T12:00:00.1234567890Z"), None),
        (Some("1714564800123"), None),
        (Some(""), None),
        (None, None),
    ];
    let timestamps: ArrayRef = Arc::new(StringArray::from(cases.iter().map(|c| c.0).collect::<Vec<_>>()));
    let output = plugin.call(&[timestamps]).expect("no panic");
    assert_rows(&output, cases.len());
    let times = output.column().as_any().downcast_ref::<Int64Array>().expect("BIGINT result");
    for (row, case) in cases.iter().enumerate() {
        let actual = times.is_valid(row).then(|| times.value(row));
        assert_eq!(actual, case.1, "row {row}: {case:?}");
    }
}
