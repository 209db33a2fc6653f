//! `deploy/grafana/encore.json` is a dashboard model Grafana loads as it is provisioned: the
//! fields Grafana requires, panels with unique ids on the 24-column grid without overlaps,
//! at least one PromQL query per panel, every data source reference either the dashboard's
//! `DS_PROMETHEUS` variable or the provisioned data source, only defined variables in the
//! queries, and every encore metric selected for the `process` variable.
//!
//! That the metrics the queries name exist is checked against a running encore-flow in
//! `dataflow/tests/metrics.rs`; the compose wiring in `compose.rs`.

use std::collections::BTreeSet;
use std::path::Path;

use encore_testkit::grafana::{self, metric_refs, queries};
use serde_json::Value;

/// The dashboard's data source variable, which every reference may name.
const DS_VARIABLE: &str = "DS_PROMETHEUS";

/// Grafana's global variables a query may use without defining them.
const GLOBAL_VARIABLES: [&str; 6] = ["__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"];

/// Panel types that hold queries.
const QUERY_PANELS: [&str; 6] = ["timeseries", "stat", "gauge", "bargauge", "table", "heatmap"];

/// The uid of the provisioned Prometheus data source.
fn provisioned_uid() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/provisioning/datasources/prometheus.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let yaml: serde_norway::Value = serde_norway::from_str(&text).expect("the data sources parse");
    yaml["datasources"][0]["uid"].as_str().expect("a uid").to_owned()
}

/// Why `reference` (a panel's, a target's or a variable's `datasource`) does not resolve to
/// Prometheus, if it does not.
fn unresolved(reference: &Value, uid: &str) -> Option<String> {
    if reference["type"] != "prometheus" {
        return Some(format!("type {} is not prometheus", reference["type"]));
    }
    match reference["uid"].as_str() {
        Some(u) if u == format!("${{{DS_VARIABLE}}}") || u == format!("${DS_VARIABLE}") || u == uid => None,
        other => Some(format!("uid {other:?} is neither ${{{DS_VARIABLE}}} nor the provisioned {uid:?}")),
    }
}

/// The variables (`$name`, `${name}`) `expr` uses.
fn variables(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let braced = rest.starts_with('{');
        let name: String = rest.trim_start_matches('{').chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.insert(name.clone());
        }
        rest = &rest[usize::from(braced) + name.len()..];
    }
    found
}

#[test]
fn the_dashboard_is_a_valid_model_whose_every_panel_queries_encore_per_process() {
    let dashboard = grafana::dashboard();
    let uid = provisioned_uid();

    for field in ["title", "uid"] {
        assert!(dashboard[field].as_str().is_some_and(|s| !s.trim().is_empty()), "{field}: a non-empty string");
    }
    let dashboard_uid = dashboard["uid"].as_str().expect("uid");
    assert!(dashboard_uid.len() <= 40 && dashboard_uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion ≥ 36: {}", dashboard["schemaVersion"]);
    assert!(dashboard["id"].is_null(), "a provisioned dashboard has no id of its own");
    assert!(dashboard["time"]["from"].is_string() && dashboard["time"]["to"].is_string());

    // The variables: the data source (defaulting to the provisioned one) and `process`.
    let list = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| list.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("variable {name}"));
    let defined: BTreeSet<String> = list.iter().filter_map(|v| v["name"].as_str()).map(str::to_owned).collect();
    assert_eq!(defined.len(), list.len(), "variable names are unique");
    let ds = variable(DS_VARIABLE);
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(ds["current"]["value"], uid.as_str(), "opens on the provisioned data source");
    let process = variable("process");
    assert_eq!(process["type"], "query");
    assert_eq!(unresolved(&process["datasource"], &uid), None, "variable process");
    let process_query = queries(&dashboard).into_iter().find(|q| q.place == "variable process").expect("the process variable's query");
    assert!(process_query.expr.starts_with("label_values(encore_") && process_query.expr.ends_with(", process)"), "{}", process_query.expr);
    assert_eq!(process["includeAll"], true);
    assert_eq!(process["multi"], true);
    assert_eq!(process["allValue"], ".*", "All matches every process in process=~\"$process\"");

    let panels = grafana::panels(&dashboard);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in &panels {
        let id = panel["id"].as_u64().unwrap_or_else(|| panel_error(panel, "an integer id"));
        assert!(ids.insert(id), "panel id {id} is used twice");
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "panel {id} has a title");
        let kind = panel["type"].as_str().unwrap_or_default();

        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|key| grid[key].as_u64().unwrap_or_else(|| panel_error(panel, "gridPos h, w, x, y")));
        assert!(h >= 1 && w >= 1 && x + w <= 24, "panel {id} {title:?}: gridPos {grid} fits the 24 columns");
        for cell in (x..x + w).flat_map(|column| (y..y + h).map(move |row| (column, row))) {
            assert!(cells.insert(cell), "panel {id} {title:?} overlaps another at {cell:?}");
        }
        if kind == "row" {
            continue;
        }
        assert!(QUERY_PANELS.contains(&kind), "panel {id} {title:?}: type {kind:?}");
        assert_eq!(unresolved(&panel["datasource"], &uid), None, "panel {id} {title:?}");

        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panel_error(panel, "at least one target"));
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or_else(|| panel_error(panel, "a refId per target"));
            assert!(ref_ids.insert(ref_id), "panel {id} {title:?}: refId {ref_id} twice");
            assert_eq!(unresolved(&target["datasource"], &uid), None, "panel {id} {title:?} target {ref_id}");
            let expr = target["expr"].as_str().filter(|e| !e.trim().is_empty()).unwrap_or_else(|| panel_error(panel, "an expr per target"));
            let metrics = metric_refs(expr);
            assert!(!metrics.is_empty(), "panel {id} {title:?} target {ref_id} queries an encore metric: {expr}");
            // Per process: every selector keeps to the chosen processes.
            for metric in &metrics {
                let matchers = metric.matchers.as_deref().unwrap_or_default();
                assert!(
                    matchers.split(',').any(|m| m.trim() == r#"process=~"$process""#),
                    "panel {id} {title:?} target {ref_id}: {} without process=~\"$process\" in {expr}",
                    metric.name
                );
            }
            for name in variables(expr) {
                assert!(
                    defined.contains(&name) || GLOBAL_VARIABLES.contains(&name.as_str()),
                    "panel {id} {title:?} target {ref_id}: ${name} is not a variable of the dashboard"
                );
            }
        }
    }
    // Every family the issue asks to see is shown somewhere.
    let shown: BTreeSet<String> = queries(&dashboard).iter().flat_map(|q| grafana::metric_families(&q.expr)).collect();
    for family in [
        "encore_events_consumed_total",
        "encore_partition_lag",
        "encore_epoch_latency_seconds",
        "encore_commit_duration_seconds",
        "encore_rows_written_total",
        "encore_invalid_messages_total",
        "encore_stale_users",
        "encore_stale_refresh_age_seconds",
        "encore_users_refreshed_total",
        "encore_process_start_time_seconds",
        "encore_state_load_seconds",
    ] {
        assert!(shown.contains(family), "no panel shows {family}");
    }
}

fn panel_error(panel: &Value, what: &str) -> ! {
    panic!("panel {} {}: needs {what}", panel["id"], panel["title"])
}

#[test]
fn variables_are_found_in_every_spelling() {
    let found = variables(r#"rate(x{process=~"$process", a="${DS_PROMETHEUS}"}[$__rate_interval]) $"#);
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["DS_PROMETHEUS", "__rate_interval", "process"]);
}
