//! The Grafana dashboard `deploy/grafana/encore.json`, read the way its tests need it: every
//! PromQL query it holds ([`queries`]) and the metrics each one selects ([`metric_refs`]).
//!
//! Grafana and Prometheus cannot run here, so the tests check the dashboard against the code
//! instead: `testkit/tests/grafana.rs` that it is a well-formed dashboard model whose every
//! selector keeps to the `process` variable, `dataflow/tests/metrics.rs` that every metric it
//! queries is served by a running `encore-flow --metrics-addr`.
//!
//! The metric names come from a small tokenizer, not a PromQL parser: string literals are
//! skipped (label values, regular expressions), and every remaining identifier that starts
//! with `encore_` is a metric name. Function names, keywords (`by`, `rate`), label names
//! and Grafana's `$__rate_interval` never start with `encore_`, so nothing else is taken.

use std::path::PathBuf;

use serde_json::Value;

/// `deploy/grafana/encore.json` in this repository.
pub fn dashboard_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/encore.json"))
}

/// The dashboard model, parsed; panics (it is for tests) when it cannot be read or parsed.
pub fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One PromQL query of the dashboard and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// E.g. `panel 7 "Lag per partition" target A`, or `variable process`.
    pub place: String,
    /// The PromQL text.
    pub expr: String,
}

/// The panels of the dashboard, those inside collapsed rows included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        found.push(panel);
        found.extend(panel["panels"].as_array().into_iter().flatten());
    }
    found
}

/// Every query: each panel target's `expr`, and each query variable's query (a string, or
/// `{"query": …}` as newer Grafana versions store it).
pub fn queries(dashboard: &Value) -> Vec<Query> {
    let mut found = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let place = format!("panel {} {} target {}", panel["id"], panel["title"], target["refId"].as_str().unwrap_or("?"));
                found.push(Query { place, expr: expr.to_owned() });
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] == "query" {
            let query = &variable["query"];
            if let Some(expr) = query.as_str().or_else(|| query["query"].as_str()) {
                let place = format!("variable {}", variable["name"].as_str().unwrap_or("?"));
                found.push(Query { place, expr: expr.to_owned() });
            }
        }
    }
    found
}

/// A metric selected in a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricRef {
    /// The name as written, e.g. `encore_commit_duration_seconds_bucket`.
    pub name: String,
    /// The metric family: the name without a histogram's `_bucket`, `_sum` or `_count`.
    pub family: String,
    /// The label matchers after the name, without their braces (`process=~"$process"`), if any.
    pub matchers: Option<String>,
}

/// The metrics `expr` selects: identifiers starting with `encore_` outside string literals,
/// in order of appearance (repeats kept).
pub fn metric_refs(expr: &str) -> Vec<MetricRef> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if is_identifier(c) {
            let start = i;
            while i < chars.len() && is_identifier(chars[i]) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if name.starts_with("encore_") {
                let family = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(&name).to_owned();
                let mut after = i;
                while after < chars.len() && chars[after].is_whitespace() {
                    after += 1;
                }
                let matchers = (chars.get(after) == Some(&'{')).then(|| {
                    let end = matcher_end(&chars, after);
                    i = end + 1;
                    chars[after + 1..end.min(chars.len())].iter().collect::<String>().trim().to_owned()
                });
                found.push(MetricRef { name, family, matchers });
            }
        } else {
            i += 1;
        }
    }
    found
}

/// The metric families `expr` selects, each once, sorted.
pub fn metric_families(expr: &str) -> std::collections::BTreeSet<String> {
    metric_refs(expr).into_iter().map(|metric| metric.family).collect()
}

fn is_identifier(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string literal opening at `open` (backslash escapes skipped, except
/// in raw backtick strings).
fn skip_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// The index of the `}` closing the matchers opening at `open` (strings skipped), or the end.
fn matcher_end(chars: &[char], open: usize) -> usize {
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            '}' => return i,
            _ => i += 1,
        }
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<(String, String, Option<String>)> {
        metric_refs(expr).into_iter().map(|m| (m.name, m.family, m.matchers)).collect()
    }

    #[test]
    fn histogram_series_name_their_family_and_functions_are_not_metrics() {
        let expr = r#"histogram_quantile(0.99, sum by (le, process) (rate(encore_commit_duration_seconds_bucket{process=~"$process"}[$__rate_interval])))"#;
        assert_eq!(
            names(expr),
            [(
                "encore_commit_duration_seconds_bucket".to_owned(),
                "encore_commit_duration_seconds".to_owned(),
                Some(r#"process=~"$process""#.to_owned())
            )]
        );
        let mean = "sum(rate(encore_epoch_latency_seconds_sum[5m])) / sum(rate(encore_epoch_latency_seconds_count [5m]))";
        assert_eq!(metric_families(mean).into_iter().collect::<Vec<_>>(), ["encore_epoch_latency_seconds"]);
        assert_eq!(metric_refs(mean)[1].matchers, None);
    }

    #[test]
    fn strings_and_label_names_are_skipped() {
        let expr = r#"sum by (table) (rate(encore_rows_written_total { table != "encore_not_a_metric}", op=~'x|encore_nor_this' }[1m])) > 0 and on() encore_stale_users"#;
        let found = names(expr);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, "encore_rows_written_total");
        assert_eq!(found[0].2.as_deref(), Some(r#"table != "encore_not_a_metric}", op=~'x|encore_nor_this'"#));
        assert_eq!(found[1], ("encore_stale_users".to_owned(), "encore_stale_users".to_owned(), None));
        assert!(metric_refs(r#"label_values(up, job) + "encore_quoted" + `encore_raw`"#).is_empty());
    }

    #[test]
    fn queries_come_from_panels_rows_and_query_variables() {
        let dashboard: Value = serde_json::json!({
            "panels": [
                {"id": 1, "title": "a", "targets": [{"refId": "A", "expr": "encore_a"}, {"refId": "B", "expr": "encore_b"}]},
                {"id": 2, "type": "row", "title": "r", "panels": [{"id": 3, "title": "c", "targets": [{"refId": "A", "expr": "encore_c"}]}]}
            ],
            "templating": {"list": [
                {"name": "process", "type": "query", "query": {"query": "label_values(encore_d, process)"}},
                {"name": "old", "type": "query", "query": "label_values(encore_e, process)"},
                {"name": "DS_PROMETHEUS", "type": "datasource", "query": "prometheus"}
            ]}
        });
        let exprs: Vec<String> = queries(&dashboard).into_iter().map(|q| q.expr).collect();
        assert_eq!(exprs, ["encore_a", "encore_b", "encore_c", "label_values(encore_d, process)", "label_values(encore_e, process)"]);
        assert_eq!(queries(&dashboard)[2].place, r#"panel 3 "c" target A"#);
    }
}
