//! `report`: plots of benchmark result files and one HTML page that shows them.
//!
//! ```text
//! cargo run -p encore-benches --bin report -- --out target/bench-report target/bench-results/*.json
//! ```
//!
//! Each result file is one run of the `engine` or `pipeline` bench (`--results-dir`, default
//! `target/bench-results`). Every plot takes one series per file, so that the runs of two
//! commits given together are compared on each plot; a plot none of the files has data for is
//! listed as skipped. A file that is missing or not a result file ends the command with one
//! line and status 1, before anything is written.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use encore_benches::report;
use encore_benches::results::RunResult;

/// Renders SVG plots of benchmark result files and DIR/report.html, which shows them with a
/// table of each run's commit, date, command line, machine and load average.
///
/// Result files come from the engine and pipeline benches (--results-dir, default
/// target/bench-results). Each plot draws one series per result file (labelled by commit and
/// start time), so runs of two commits given together compare on one plot; a plot with no
/// data in the given files is skipped and listed as such on the page.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Directory for the SVGs and report.html (created if missing).
    #[arg(long, value_name = "DIR", default_value = "target/bench-report")]
    out: PathBuf,
    /// Result files (JSON) written by the engine or pipeline bench.
    #[arg(value_name = "RESULT.json", required = true)]
    results: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("report: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = Vec::new();
    for path in &args.results {
        runs.push((path.clone(), RunResult::load(path)?));
    }
    let report = report::render(&runs, &args.out)?;
    for (plot, path, series) in &report.drawn {
        println!("{}: {} series, {}", plot.title, series.len(), path.display());
    }
    for plot in &report.skipped {
        let tables: Vec<&str> = plot.sources.iter().map(|source| source.table).collect();
        println!("{}: skipped, no table {} in these files", plot.title, tables.join(" or "));
    }
    println!("report: {}", report.page.display());
    Ok(())
}
