//! A panic inside a UDF must come back to the host as `RunResult::Err`, not abort the process:
//! the `#[udf]` macro wraps the row loop in `catch_unwind`. encore's own UDFs never panic, so
//! this fixture crate (same macro, same build) panics on purpose on a negative input.

use std::sync::Arc;

use encore_udf_harness::arrow::array::{Array, ArrayRef, Int64Array};
use encore_udf_harness::{assert_rows, HarnessError, Plugin};

fn batch(values: &[i64]) -> [ArrayRef; 1] {
    [Arc::new(Int64Array::from(values.to_vec()))]
}

#[test]
fn a_panicking_udf_returns_an_error_and_the_plugin_stays_usable() {
    let plugin = Plugin::load("encore_udf_panic_probe").expect("plugin built by cargo");

    let before = plugin.call(&batch(&[1, 2, 3])).expect("no panic");
    assert_rows(&before, 3);

    let failed = plugin.call(&batch(&[1, -1, 3]));
    assert!(matches!(failed, Err(HarnessError::UdfFailed)), "expected RunResult::Err");

    // The process is alive, the plugin still answers, and the earlier result is still readable
    // (its buffers are released by the plugin when `before` drops, after this check).
    let after = plugin.call(&batch(&[7])).expect("no panic");
    let values = after.column().as_any().downcast_ref::<Int64Array>().expect("BIGINT result");
    assert_eq!(values.value(0), 7);
    let earlier = before.column().as_any().downcast_ref::<Int64Array>().expect("BIGINT result");
    assert_eq!(earlier.values().to_vec(), vec![1, 2, 3]);
}

#[test]
fn results_outlive_the_plugin_handle() {
    let output = {
        let plugin = Plugin::load("encore_udf_panic_probe").expect("plugin built by cargo");
        plugin.call(&batch(&[4, 5])).expect("no panic")
    };
    // `plugin` is gone; the output's own handle keeps the library (and its release callbacks)
    // loaded, so reading and then dropping the column is sound.
    let values = output.column().as_any().downcast_ref::<Int64Array>().expect("BIGINT result");
    assert_eq!(values.values().to_vec(), vec![4, 5]);
}
