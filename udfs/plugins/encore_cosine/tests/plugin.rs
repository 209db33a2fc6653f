//! Loads the built `libencore_cosine` and calls its `__run` the way Arroyo does; every value
//! must equal `encore_udfs::cosine_units`, the dataflow's function, to the last digit.

use std::sync::Arc;

use encore_udf_harness::arrow::array::{Array, ArrayRef, Int64Array};
use encore_udf_harness::{assert_rows, Plugin};

type Case = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

fn column(cases: &[Case], field: fn(&Case) -> Option<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(
        cases.iter().map(field).collect::<Vec<_>>(),
    ))
}

#[test]
fn computes_spec_scores_and_null_out_of_range() {
    let plugin = Plugin::load("encore_cosine").expect("plugin built by cargo");
    // (co, n_i, n_j, precision, expected)
    let mut cases: Vec<Case> = vec![
        (Some(2), Some(2), Some(2), Some(4), Some(10_000)),
        (Some(2), Some(3), Some(4), Some(4), Some(5_774)),
        (Some(3), Some(5), Some(7), Some(4), Some(5_071)),
        (Some(1), Some(2), Some(2), Some(0), Some(1)),
        (Some(1), Some(4), Some(4), Some(0), Some(0)),
        (
            Some(1),
            Some(1),
            Some(1),
            Some(18),
            Some(1_000_000_000_000_000_000),
        ),
        // Out of range: NULL.
        (Some(1), Some(0), Some(2), Some(4), None),
        (Some(1), Some(2), Some(0), Some(4), None),
        (Some(1), Some(2), Some(2), Some(19), None),
        (Some(-1), Some(2), Some(2), Some(4), None),
        (Some(1), Some(-2), Some(2), Some(4), None),
        (Some(1), Some(2), Some(2), Some(-4), None),
        (Some(i64::MAX), Some(1), Some(1), Some(18), None),
        // A NULL argument: NULL.
        (None, Some(2), Some(2), Some(4), None),
        (Some(1), Some(2), Some(2), None, None),
    ];
    // And a sweep checked against the library function itself.
    for co in 0..6 {
        for n_i in [1, 5, 7, 1_000_003] {
            for n_j in [3, 6, 999_983] {
                let expected = encore_udfs::cosine_units(co as u64, n_i as u64, n_j as u64, 4);
                cases.push((Some(co), Some(n_i), Some(n_j), Some(4), expected));
            }
        }
    }
    let output = plugin
        .call(&[
            column(&cases, |c| c.0),
            column(&cases, |c| c.1),
            column(&cases, |c| c.2),
            column(&cases, |c| c.3),
        ])
        .expect("no panic");
    assert_rows(&output, cases.len());
    let scores = output
        .column()
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("BIGINT result");
    for (row, case) in cases.iter().enumerate() {
        let actual = scores.is_valid(row).then(|| scores.value(row));
        assert_eq!(actual, case.4, "row {row}: {case:?}");
    }
}
