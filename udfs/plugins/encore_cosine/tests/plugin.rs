//! Loads the built `libencore_cosine` and calls its `__run` the way Arroyo does; every value
//! must equal `encore_core::rounded_cosine_units`, the dataflow's function, to the last digit.

use std::sync::Arc;

use encore_udf_harness::arrow::array::{Array, ArrayRef, Int64Array};
use encore_udf_harness::{assert_rows, Plugin};

/// `(co, n_i, n_j, precision, count_bits, expected)`.
type Case = (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

fn column(cases: &[Case], field: fn(&Case) -> Option<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(cases.iter().map(field).collect::<Vec<_>>()))
}

#[test]
fn computes_spec_scores_and_null_out_of_range() {
    let plugin = Plugin::load("encore_cosine").expect("plugin built by cargo");
    let mut cases: Vec<Case> = vec![
        (Some(2), Some(2), Some(2), Some(4), Some(0), Some(10_000)),
        (Some(2), Some(3), Some(4), Some(4), Some(0), Some(5_774)),
        (Some(3), Some(5), Some(7), Some(4), Some(0), Some(5_071)),
        (Some(1), Some(2), Some(2), Some(0), Some(0), Some(1)),
        (Some(1), Some(4), Some(4), Some(0), Some(0), Some(0)),
        (Some(1), Some(1), Some(1), Some(18), Some(0), Some(1_000_000_000_000_000_000)),
        // Rounded counts (SPEC §2 step 4): q(99) = 96, q(1000) = 992, q(40) = 40 at B = 5.
        (Some(99), Some(1000), Some(40), Some(4), Some(5), Some(4_819)),
        (Some(99), Some(1000), Some(40), Some(4), Some(0), Some(4_950)),
        // B = 1: q(3) = 2, q(5) = 4, q(7) = 4.
        (Some(3), Some(5), Some(7), Some(4), Some(1), Some(5_000)),
        // B beyond 64 rounds nothing, like 64; a negative B is out of range.
        (Some(100), Some(1000), Some(40), Some(4), Some(1_000), Some(5_000)),
        (Some(100), Some(1000), Some(40), Some(4), Some(-1), None),
        // Out of range: NULL.
        (Some(1), Some(0), Some(2), Some(4), Some(0), None),
        (Some(1), Some(2), Some(0), Some(4), Some(0), None),
        (Some(1), Some(2), Some(2), Some(19), Some(0), None),
        (Some(-1), Some(2), Some(2), Some(4), Some(0), None),
        (Some(1), Some(-2), Some(2), Some(4), Some(0), None),
        (Some(1), Some(2), Some(2), Some(-4), Some(0), None),
        (Some(i64::MAX), Some(1), Some(1), Some(18), Some(0), None),
        // A NULL argument: NULL.
        (None, Some(2), Some(2), Some(4), Some(0), None),
        (Some(1), Some(2), Some(2), None, Some(0), None),
        (Some(1), Some(2), Some(2), Some(4), None, None),
    ];
    // And a sweep checked against the library function itself.
    for co in [0, 1, 2, 5, 37, 1_000] {
        for n_i in [1, 5, 7, 1_000_003] {
            for n_j in [3, 6, 999_983] {
                for bits in [0, 1, 4, 5, 6] {
                    let expected = encore_core::rounded_cosine_units(co as u64, n_i as u64, n_j as u64, 4, bits as u32);
                    cases.push((Some(co), Some(n_i), Some(n_j), Some(4), Some(bits), expected));
                }
            }
        }
    }
    let output = plugin
        .call(&[
            column(&cases, |c| c.0),
            column(&cases, |c| c.1),
            column(&cases, |c| c.2),
            column(&cases, |c| c.3),
            column(&cases, |c| c.4),
        ])
        .expect("no panic");
    assert_rows(&output, cases.len());
    let scores = output.column().as_any().downcast_ref::<Int64Array>().expect("BIGINT result");
    for (row, case) in cases.iter().enumerate() {
        let actual = scores.is_valid(row).then(|| scores.value(row));
        assert_eq!(actual, case.5, "row {row}: {case:?}");
    }
}
