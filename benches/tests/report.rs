//! The report from small real runs of the engine bench: two runs (`--which bits` and
//! `--which all`) write their result files, the `report` binary renders them, and every plot
//! their tables feed must exist, parse as SVG, and draw each series of each run with one
//! circle per point; the report page must show every plot and list the pipeline's plots,
//! which these runs have no data for, as skipped. Missing and malformed result files end the
//! report with one line.
//!
//! Small: ~50 000 events of state, a few seconds in the test profile.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use encore_benches::report::{run_labels, PLOTS};
use encore_benches::results::{number, RunResult};
use encore_testkit::{assert_one_line_error, assert_success, run_bin};

const ENGINE: &str = env!("CARGO_BIN_EXE_engine");
const REPORT: &str = env!("CARGO_BIN_EXE_report");

/// Plots the engine's tables feed; the rest need the pipeline bench.
const ENGINE_PLOTS: [&str; 6] = [
    "events_per_second_vs_state.svg",
    "cpu_per_event_vs_state.svg",
    "latency_vs_epoch_size.svg",
    "rows_per_event.svg",
    "peak_rss_vs_state.svg",
    "scaling.svg",
];
const PIPELINE_PLOTS: [&str; 2] = ["catch_up_vs_limit.svg", "live_latency_vs_rate.svg"];

/// Runs the engine bench with `args` into `dir` and returns its one result file.
fn engine_run(dir: &Path, args: &[&str]) -> PathBuf {
    let dir_arg = dir.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--results-dir", &dir_arg]);
    let output = run_bin(ENGINE, &all);
    assert_success(&output);
    let files: Vec<PathBuf> = std::fs::read_dir(dir).expect("the results directory").map(|entry| entry.expect("an entry").path()).collect();
    assert_eq!(files.len(), 1, "one result file per run: {files:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("results: {}", files[0].display())), "the path is printed: {stdout}");
    files[0].clone()
}

/// What a plot's SVG holds: its legend lines `LABEL (N points)` and its circles.
struct Drawn {
    legend: Vec<(String, usize)>,
    circles: usize,
}

fn read_svg(path: &Path) -> Drawn {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let document = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "svg", "{}", path.display());
    let circles = root.descendants().filter(|node| node.tag_name().name() == "circle").count();
    let legend = root
        .descendants()
        .filter(|node| node.tag_name().name() == "text")
        .filter_map(|node| node.text().map(str::trim))
        .filter_map(|text| {
            let (label, count) = text.strip_suffix(" points)")?.rsplit_once(" (")?;
            Some((label.to_owned(), count.parse().ok()?))
        })
        .collect();
    Drawn { legend, circles }
}

#[test]
fn a_report_of_two_small_engine_runs_plots_each_run() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let bits = engine_run(
        &scratch.path().join("bits"),
        &["--which", "bits", "--workers", "1", "--checkpoints", "20000,50000", "--load-epoch", "10000"]
            .into_iter()
            .chain(["--epoch-sizes", "100,1000", "--epoch-counts", "3,2"])
            .collect::<Vec<_>>(),
    );
    let all = engine_run(
        &scratch.path().join("all"),
        &["--which", "all", "--workers", "1,2", "--load-events", "20000", "--growth-epoch", "5000", "--window", "10000"]
            .into_iter()
            .chain(["--epoch-sizes", "1,100,1000", "--epoch-counts", "4,3,2"])
            .collect::<Vec<_>>(),
    );

    // The files hold what the runs measured: a row per checkpoint and epoch size, read back
    // from the printed table with positive rates.
    let bits_run = RunResult::load(&bits).expect("the bits result loads");
    let table = bits_run.tables("bits").next().expect("the bits table");
    assert_eq!(table.rows.len(), 4, "2 checkpoints × 2 epoch sizes: {table:?}");
    assert!(table.rows.iter().all(|row| row.get("events/s").and_then(number).is_some_and(|rate| rate > 0.0)), "{table:?}");
    assert_eq!(bits_run.command[1..3], ["--which", "bits"]);
    let all_run = RunResult::load(&all).expect("the all result loads");
    for name in ["latency", "scratch", "amplification", "memory"] {
        assert!(all_run.tables(name).next().is_some_and(|table| !table.rows.is_empty()), "table {name} in {all_run:?}");
    }

    let out = scratch.path().join("report");
    let output = run_bin(REPORT, &["--out", &out.display().to_string(), &bits.display().to_string(), &all.display().to_string()]);
    assert_success(&output);
    let runs = vec![(bits.clone(), bits_run), (all.clone(), all_run)];
    let labels = run_labels(&runs);
    assert_ne!(labels[0], labels[1], "each run has its own label");

    // Which runs feed which plot: the bits run the state plots, the all run the latency
    // table's, the growth tables' and the worker counts'.
    let fed_by = |file: &str| -> BTreeSet<&str> {
        let plot = PLOTS.iter().find(|plot| plot.file == file).expect("a plot of the report");
        let tables: Vec<&str> = plot.sources.iter().map(|source| source.table).collect();
        let mut runs_in = BTreeSet::new();
        for ((_, run), label) in runs.iter().zip(&labels) {
            if tables.iter().any(|table| run.tables(table).next().is_some()) {
                runs_in.insert(label.as_str());
            }
        }
        runs_in
    };
    for file in ENGINE_PLOTS {
        let drawn = read_svg(&out.join(file));
        assert!(!drawn.legend.is_empty(), "{file}: a legend line per series");
        let points: usize = drawn.legend.iter().map(|(_, points)| points).sum();
        assert!(drawn.legend.iter().all(|(_, points)| *points > 0), "{file}: {:?}", drawn.legend);
        assert_eq!(drawn.circles, points, "{file}: one circle per point of every series");
        let runs_drawn: BTreeSet<&str> = labels
            .iter()
            .filter(|label| drawn.legend.iter().any(|(legend, _)| legend.starts_with(label.as_str())))
            .map(String::as_str)
            .collect();
        assert_eq!(runs_drawn, fed_by(file), "{file}: a series for each run with data for it");
    }
    assert_eq!(fed_by("latency_vs_epoch_size.svg").len(), 2, "one plot compares both runs");
    for file in PIPELINE_PLOTS {
        assert!(!out.join(file).exists(), "{file} has no data in engine runs");
    }

    let page = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    for file in ENGINE_PLOTS {
        assert!(page.contains(&format!("<img src=\"{file}\"")), "the page shows {file}");
    }
    let skipped = page.split("<h2>Skipped").nth(1).expect("a skipped section");
    for file in PIPELINE_PLOTS {
        assert!(skipped.contains(file) && !page.contains(&format!("<img src=\"{file}\"")), "{file} listed as skipped");
    }
    for (path, run) in &runs {
        assert!(page.contains(&path.display().to_string()) && page.contains(&run.commit), "the runs table names {}", path.display());
    }

    // A missing file and a malformed one: one line naming the file, nothing written.
    let missing = scratch.path().join("missing.json");
    let failed_out = scratch.path().join("failed");
    let output =
        run_bin(REPORT, &["--out", &failed_out.display().to_string(), &bits.display().to_string(), &missing.display().to_string()]);
    assert_one_line_error("report", &output, &missing.display().to_string());
    let malformed = scratch.path().join("malformed.json");
    let text = std::fs::read_to_string(&bits).expect("the bits result");
    std::fs::write(&malformed, text.lines().take(20).collect::<Vec<_>>().join("\n")).expect("the start of a result file");
    let output = run_bin(REPORT, &["--out", &failed_out.display().to_string(), &malformed.display().to_string()]);
    assert_one_line_error("report", &output, "not a benchmark result file");
    assert!(!failed_out.exists(), "nothing is written when a file is bad");
}

#[test]
fn help_explains_the_report() {
    let output = run_bin(REPORT, &["--help"]);
    assert_success(&output);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--out <DIR>") && help.contains("RESULT.json") && help.contains("skipped"), "{help}");
    let output = run_bin(REPORT, &[]);
    assert!(!output.status.success(), "at least one result file is required");
}
