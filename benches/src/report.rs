//! The benchmark report: SVG plots of one or more result files ([`crate::results`]) and one
//! HTML page that shows them with a table of each run's metadata.
//!
//! ```text
//!  result files ──► for each plot of PLOTS: its sources (table, x column, y columns, series split)
//!                     ├─ rows found in some file ─► DIR/<plot>.svg, one series per file × split
//!                     └─ none                    ─► listed as skipped, with the tables it needs
//!               ──► DIR/report.html: runs (commit, date, command, machine, load), plots, skipped
//! ```
//!
//! A series is labelled with its run's [`label`](crate::results::RunResult::label) (commit and
//! start time), so that the runs of two commits given together share each plot. Plots read
//! columns by the names the benches print (the header cells): when a column is renamed, its
//! plot reads nothing and is skipped until [`PLOTS`] follows; columns chosen by suffix (the
//! `rows/ev` of each table) follow new tables by themselves.

mod plot;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::results::{number, RunResult};

pub use plot::Series;

/// What can go wrong writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The output directory or a file in it cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// plotters failed to draw a plot.
    #[error("drawing {path}: {reason}")]
    Draw {
        /// The SVG file.
        path: PathBuf,
        /// plotters' error.
        reason: String,
    },
}

/// One plot of the report.
#[derive(Clone, Copy, Debug)]
pub struct Plot {
    /// The SVG's file name.
    pub file: &'static str,
    /// Title, above the plot and in the report.
    pub title: &'static str,
    /// One sentence in the report: what the plot shows and which bench flags produce it.
    pub about: &'static str,
    /// Axis descriptions.
    pub x_label: &'static str,
    /// See `x_label`.
    pub y_label: &'static str,
    /// Logarithmic axes.
    pub x_log: bool,
    /// See `x_log`.
    pub y_log: bool,
    /// y values are divided by this (e.g. bytes shown as GiB).
    pub y_divisor: f64,
    /// Where its points come from.
    pub sources: &'static [Source],
}

/// Points of a plot from one table: a series per result file, per value of the `split`
/// columns and per y column.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// The table's name (see the benches' `table_header!` calls).
    pub table: &'static str,
    /// The x of a row.
    pub x: X,
    /// The y columns.
    pub y: Columns,
    /// What splits the rows into series.
    pub split: &'static [Split],
    /// Only rows whose column (first) contains the text (second).
    pub only: Option<(&'static str, &'static str)>,
    /// Prefix of this source's series labels (after the run's label), e.g. what the table is.
    pub name: &'static str,
}

/// The x value of a row.
#[derive(Clone, Copy, Debug)]
pub enum X {
    /// A column's number ([`number`]).
    Column(&'static str),
    /// The threads of a `P × W` layout column: P·W.
    Threads(&'static str),
}

/// A part of a series' identity.
#[derive(Clone, Copy, Debug)]
pub enum Split {
    /// A column's value: `B 5`.
    Column(&'static str),
    /// The process count of a `P × W` layout column, and what follows the layout (`+
    /// --emit-events`): `2 processes`.
    Processes(&'static str),
}

/// The y columns of a source.
#[derive(Clone, Copy, Debug)]
pub enum Columns {
    /// These columns.
    Named(&'static [&'static str]),
    /// Every column whose name ends with this text.
    Suffix(&'static str),
}

const GIB: f64 = (1u64 << 30) as f64;

/// Every plot of the report, in report order.
pub const PLOTS: &[Plot] = &[
    Plot {
        file: "events_per_second_vs_state.svg",
        title: "Engine throughput against state",
        about: "engine --which bits: events/s of the measured epochs after each checkpoint (--checkpoints), per count precision B and epoch size.",
        x_label: "events of state",
        y_label: "events/s",
        x_log: true,
        y_log: false,
        y_divisor: 1.0,
        sources: &[Source { table: "bits", x: X::Column("state"), y: Columns::Named(&["events/s"]), split: &[Split::Column("B"), Split::Column("epoch events")], only: None, name: "" }],
    },
    Plot {
        file: "cpu_per_event_vs_state.svg",
        title: "Engine CPU per event against state",
        about: "engine --which bits: process CPU time (all workers) per event of the measured epochs, per B and epoch size; barely moved by other load, unlike wall time.",
        x_label: "events of state",
        y_label: "CPU µs per event",
        x_log: true,
        y_log: false,
        y_divisor: 1.0,
        sources: &[Source {
            table: "bits",
            x: X::Column("state"),
            y: Columns::Named(&["CPU µs/event"]),
            split: &[Split::Column("B"), Split::Column("epoch events")],
            only: None,
            name: "",
        }],
    },
    Plot {
        file: "latency_vs_epoch_size.svg",
        title: "Engine epoch latency percentiles against epoch size",
        about: "engine --which latency (after --load-events in one epoch, per worker count) and --which bits (after each checkpoint): p50 and p99 of the time from input in memory to every output change delivered.",
        x_label: "events per epoch",
        y_label: "ms per epoch",
        x_log: true,
        y_log: true,
        y_divisor: 1.0,
        sources: &[
            Source { table: "latency", x: X::Column("epoch events"), y: Columns::Named(&["p50 ms", "p99 ms"]), split: &[Split::Column("workers")], only: None, name: "" },
            Source { table: "bits", x: X::Column("epoch events"), y: Columns::Named(&["p50 ms", "p99 ms"]), split: &[Split::Column("B"), Split::Column("state")], only: None, name: "" },
        ],
    },
    Plot {
        file: "rows_per_event.svg",
        title: "Result rows changed per event, per table",
        about: "engine --which bits (after each checkpoint, per B and epoch size) and --which memory/amplification (per window of the growth run): distinct keys of each result table changed per input event, i.e. rows a commit of that epoch writes.",
        x_label: "events of state",
        y_label: "rows per event",
        x_log: true,
        y_log: false,
        y_divisor: 1.0,
        sources: &[
            Source { table: "bits", x: X::Column("state"), y: Columns::Suffix("rows/ev"), split: &[Split::Column("B"), Split::Column("epoch events")], only: None, name: "" },
            Source { table: "amplification", x: X::Column("events"), y: Columns::Suffix("rows/ev"), split: &[], only: None, name: "growth" },
        ],
    },
    Plot {
        file: "peak_rss_vs_state.svg",
        title: "Peak RSS against state",
        about: "engine --which bits (VmHWM of each B's process after each checkpoint) and --which memory (VmHWM after each window of the growth run).",
        x_label: "events of state",
        y_label: "peak RSS, GiB",
        x_log: true,
        y_log: false,
        y_divisor: GIB,
        sources: &[
            Source { table: "bits", x: X::Column("state"), y: Columns::Named(&["peak RSS"]), split: &[Split::Column("B")], only: None, name: "" },
            Source { table: "memory", x: X::Column("events"), y: Columns::Named(&["VmHWM (peak)"]), split: &[], only: None, name: "growth" },
        ],
    },
    Plot {
        file: "scaling.svg",
        title: "Scaling against workers and processes",
        about: "engine --which latency: events/s of the small epochs per worker count (--workers), per epoch size; pipeline: catch-up events/s per layout (--layouts), against its threads (processes × workers), per process count.",
        x_label: "threads (processes × workers)",
        y_label: "events/s",
        x_log: false,
        y_log: true,
        y_divisor: 1.0,
        sources: &[
            Source { table: "latency", x: X::Column("workers"), y: Columns::Named(&["events/s"]), split: &[Split::Column("epoch events")], only: None, name: "engine" },
            Source {
                table: "catch_up",
                x: X::Threads("processes × workers"),
                y: Columns::Named(&["events/s"]),
                split: &[Split::Processes("processes × workers")],
                only: None,
                name: "pipeline catch-up",
            },
        ],
    },
    Plot {
        file: "catch_up_vs_limit.svg",
        title: "Catch-up against the consume + parse limit",
        about: "pipeline: end-to-end catch-up events/s per layout against the raw Kafka consume + JSON parse rate of the same run, both by threads.",
        x_label: "threads (consumer threads; processes × workers)",
        y_label: "events/s",
        x_log: false,
        y_log: false,
        y_divisor: 1.0,
        sources: &[
            Source {
                table: "limits",
                x: X::Column("threads"),
                y: Columns::Named(&["events/s"]),
                split: &[],
                only: Some(("path", "JSON parse")),
                name: "consume + parse limit",
            },
            Source {
                table: "catch_up",
                x: X::Threads("processes × workers"),
                y: Columns::Named(&["events/s"]),
                split: &[Split::Processes("processes × workers")],
                only: None,
                name: "catch-up",
            },
        ],
    },
    Plot {
        file: "live_latency_vs_rate.svg",
        title: "Live latency against the offered rate",
        about: "pipeline --latency-rates: p50 and p99 from produce to the commit that holds the event, against the rate sent; a rate whose messages were not all committed within the drain has no point.",
        x_label: "events/s sent",
        y_label: "ms",
        x_log: true,
        y_log: true,
        y_divisor: 1.0,
        sources: &[Source {
            table: "latency_live",
            x: X::Column("sent events/s"),
            y: Columns::Named(&["p50 ms", "p99 ms"]),
            split: &[],
            only: None,
            name: "",
        }],
    },
];

/// What [`render`] wrote.
#[derive(Clone, Debug)]
pub struct Report {
    /// `DIR/report.html`.
    pub page: PathBuf,
    /// The plots drawn, with their series.
    pub drawn: Vec<(Plot, PathBuf, Vec<Series>)>,
    /// The plots without data in any file.
    pub skipped: Vec<Plot>,
}

/// Draws every plot of [`PLOTS`] that has data in `runs` into `out` (created if missing) and
/// writes `out/report.html`.
pub fn render(runs: &[(PathBuf, RunResult)], out: &Path) -> Result<Report, ReportError> {
    std::fs::create_dir_all(out).map_err(|source| ReportError::Write { path: out.to_owned(), source })?;
    let mut drawn = Vec::new();
    let mut skipped = Vec::new();
    for plot in PLOTS {
        let series = series_of(plot, runs);
        if series.is_empty() {
            skipped.push(*plot);
            continue;
        }
        let path = out.join(plot.file);
        plot::draw(plot, &series, &path)?;
        drawn.push((*plot, path, series));
    }
    let page = out.join("report.html");
    let html = page_html(runs, &drawn, &skipped);
    std::fs::write(&page, html).map_err(|source| ReportError::Write { path: page.clone(), source })?;
    Ok(Report { page, drawn, skipped })
}

/// The series of `plot` in `runs`: per run, source, split values and y column, the points in
/// x order (a repeated x keeps its last y). Series without points are left out.
pub fn series_of(plot: &Plot, runs: &[(PathBuf, RunResult)]) -> Vec<Series> {
    let mut all: Vec<Series> = Vec::new();
    for ((_, run), run_label) in runs.iter().zip(run_labels(runs)) {
        for source in plot.sources {
            for table in run.tables(source.table) {
                let y_columns: Vec<&str> = match source.y {
                    Columns::Named(names) => names.to_vec(),
                    Columns::Suffix(suffix) => table.columns.iter().map(String::as_str).filter(|c| c.ends_with(suffix)).collect(),
                };
                for row in &table.rows {
                    if let Some((column, text)) = source.only {
                        if !row.get(column).and_then(Value::as_str).is_some_and(|value| value.contains(text)) {
                            continue;
                        }
                    }
                    let Some(x) = x_of(source.x, row) else { continue };
                    let split: Vec<String> = source.split.iter().filter_map(|split| split_of(*split, row)).collect();
                    for &column in &y_columns {
                        let Some(y) = row.get(column).and_then(number) else { continue };
                        let mut parts = vec![run_label.clone()];
                        parts.extend((!source.name.is_empty()).then(|| source.name.to_owned()));
                        parts.extend(split.iter().cloned());
                        if y_columns.len() > 1 {
                            parts.push(column.to_owned());
                        }
                        let label = parts.join(" · ");
                        let index = match all.iter().position(|series| series.label == label) {
                            Some(index) => index,
                            None => {
                                all.push(Series { label, run: run_label.clone(), points: Vec::new() });
                                all.len() - 1
                            }
                        };
                        all[index].points.push((x, y / plot.y_divisor));
                    }
                }
            }
        }
    }
    for series in &mut all {
        series.points.retain(|&(x, y)| (!plot.x_log || x > 0.0) && (!plot.y_log || y > 0.0));
        series.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        // A repeated x (the same checkpoint at two epoch sizes) keeps its last y.
        series.points.reverse();
        series.points.dedup_by(|a, b| a.0 == b.0);
        series.points.reverse();
    }
    all.retain(|series| !series.points.is_empty());
    all
}

/// Each run's label in plots and on the page: [`RunResult::label`], followed by the file's
/// name where two runs would otherwise share it (one commit, the same minute), by its path
/// where that is shared too, and by its position among the files where even that is.
pub fn run_labels(runs: &[(PathBuf, RunResult)]) -> Vec<String> {
    let name = |path: &Path| path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned());
    let mut labels: Vec<String> = runs.iter().map(|(_, run)| run.label()).collect();
    for step in 0..3 {
        let shared: Vec<bool> = labels.iter().map(|label| labels.iter().filter(|other| *other == label).count() > 1).collect();
        if !shared.contains(&true) {
            break;
        }
        for (index, label) in labels.iter_mut().enumerate().filter(|(index, _)| shared[*index]) {
            let (path, run) = &runs[index];
            let qualifier = match step {
                0 => name(path),
                1 => path.display().to_string(),
                _ => format!("#{}", index + 1),
            };
            *label = format!("{} ({qualifier})", run.label());
        }
    }
    labels
}

fn x_of(x: X, row: &serde_json::Map<String, Value>) -> Option<f64> {
    match x {
        X::Column(column) => row.get(column).and_then(number),
        X::Threads(column) => {
            let text = row.get(column)?.as_str()?;
            let (processes, rest) = text.split_once('×')?;
            let workers = rest.split_whitespace().next()?;
            Some(processes.trim().parse::<f64>().ok()? * workers.parse::<f64>().ok()?)
        }
    }
}

fn split_of(split: Split, row: &serde_json::Map<String, Value>) -> Option<String> {
    match split {
        Split::Column(column) => row.get(column).map(|value| format!("{column} {}", text_of(value))),
        Split::Processes(column) => {
            let text = row.get(column)?.as_str()?;
            let (processes, rest) = text.split_once('×')?;
            let processes = processes.trim();
            let more = rest.trim().split_once(' ').map_or("", |(_, more)| more).trim();
            let noun = if processes == "1" { "process" } else { "processes" };
            Some(if more.is_empty() { format!("{processes} {noun}") } else { format!("{processes} {noun} {more}") })
        }
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn page_html(runs: &[(PathBuf, RunResult)], drawn: &[(Plot, PathBuf, Vec<Series>)], skipped: &[Plot]) -> String {
    let mut html = String::new();
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>encore benchmark report</title>\n<style>\n\
         body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }\n\
         table { border-collapse: collapse; font-size: 0.85em; }\n\
         th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }\n\
         code { font-size: 0.9em; word-break: break-all; }\n\
         img { max-width: 100%; border: 1px solid #eee; }\n\
         </style>\n</head>\n<body>\n<h1>encore benchmark report</h1>\n",
    );
    let _ = writeln!(
        html,
        "<p>{} result file(s); {} plot(s), {} skipped for want of data. Each series is one run (commit and start time, UTC; \
         <code>*</code>: uncommitted changes) and, where a table has several, one value of the columns named in its label.</p>",
        runs.len(),
        drawn.len(),
        skipped.len()
    );
    html.push_str("<h2>Runs</h2>\n<table>\n<tr><th>run</th><th>file</th><th>bench</th><th>commit</th><th>started (UTC)</th><th>seconds</th><th>command</th><th>machine</th><th>load average, start → end</th><th>tables</th></tr>\n");
    for ((path, run), label) in runs.iter().zip(run_labels(runs)) {
        let load = |average: Option<[f64; 3]>| average.map_or_else(|| "n/a".to_owned(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"));
        let mut tables: Vec<String> = Vec::new();
        for table in &run.tables {
            let entry = format!("{} ({} rows)", table.name, table.rows.len());
            if !tables.contains(&entry) {
                tables.push(entry);
            }
        }
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}{}</td><td>{}</td><td>{:.0}</td><td><code>{}</code></td><td>{}{}</td><td>{} → {}</td><td>{}</td></tr>",
            escape(&label),
            escape(&path.display().to_string()),
            escape(&run.bench),
            escape(&run.commit),
            if run.dirty { " (uncommitted changes)" } else { "" },
            escape(&run.started),
            run.seconds,
            escape(&run.command.join(" ")),
            escape(&run.machine.describe()),
            run.machine.hostname.as_deref().map(|host| format!(" ({})", escape(host))).unwrap_or_default(),
            load(run.load_average.start),
            load(run.load_average.end),
            escape(&tables.join(", ")),
        );
    }
    html.push_str("</table>\n<h2>Plots</h2>\n");
    for (plot, path, series) in drawn {
        let file = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(
            html,
            "<h3>{}</h3>\n<p>{} ({} series; <a href=\"{}\">{}</a>)</p>\n<img src=\"{}\" alt=\"{}\">",
            escape(plot.title),
            escape(plot.about),
            series.len(),
            escape(&file),
            escape(&file),
            escape(&file),
            escape(plot.title)
        );
    }
    if !skipped.is_empty() {
        html.push_str("<h2>Skipped: no data in these result files</h2>\n<ul>\n");
        for plot in skipped {
            let tables: Vec<&str> = plot.sources.iter().map(|source| source.table).collect();
            let _ = writeln!(
                html,
                "<li>{} (<code>{}</code>): needs table {} — {}</li>",
                escape(plot.title),
                escape(plot.file),
                escape(&tables.join(" or ")),
                escape(plot.about)
            );
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_with_as_many_threads_stay_apart_by_process_count() {
        let mut run = empty_run();
        run.add_header("catch_up", "| processes × workers | seconds | events/s |");
        for line in ["| 1 × 1 | 2.0 | 100 |", "| 1 × 2 | 1.0 | 200 |", "| 2 × 1 | 1.5 | 150 |", "| 2 × 1 + --emit-events | 1.6 | 140 |"]
        {
            run.add_row("catch_up", line);
        }
        let plot = PLOTS.iter().find(|plot| plot.file == "catch_up_vs_limit.svg").expect("the plot");
        let series = series_of(plot, &[(PathBuf::from("run.json"), run)]);
        let found: Vec<(String, Vec<(f64, f64)>)> =
            series.into_iter().map(|s| (s.label.rsplit(" · ").next().unwrap_or_default().to_owned(), s.points)).collect();
        assert_eq!(
            found,
            [
                ("1 process".to_owned(), vec![(1.0, 100.0), (2.0, 200.0)]),
                ("2 processes".to_owned(), vec![(2.0, 150.0)]),
                ("2 processes + --emit-events".to_owned(), vec![(2.0, 140.0)]),
            ]
        );
    }

    fn empty_run() -> RunResult {
        RunResult {
            format: crate::results::FORMAT,
            bench: "pipeline".into(),
            commit: "abc1234".into(),
            dirty: false,
            command: Vec::new(),
            started: "2026-12-07T10:00:00Z".into(),
            seconds: 0.0,
            machine: Default::default(),
            load_average: Default::default(),
            tables: Vec::new(),
        }
    }
}
