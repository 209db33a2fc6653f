//! `oracle`: SPEC §2 computed by the plain sequential implementation over a file of JSON
//! lines, written as the CSV tables `encore-flow --input FILE --output-dir DIR` writes, so that
//! the two can be compared at sizes the test suite does not reach.
//!
//! ```text
//! encore-gen stream --output events.jsonl --events 10000000 --seed 42
//! encore-flow --input events.jsonl --output-dir flow --epoch-events 5000000 -w 2
//! cargo run --release -p encore-benches --bin oracle -- --input events.jsonl --output-dir want
//! diff -r want flow     # silent when the dataflow equals the definition
//! ```
//!
//! The tests check the dataflow against the same oracle after every epoch, on randomised
//! inputs of thousands of events; this checks one end state of millions, where code paths
//! that only large epochs take (early flushes of buffered changes, full re-rankings) run.
//! The oracle keeps every co-listening pair in an ordered map: at 10 M events of the default
//! generator that is ~4.2 GiB and ~5 minutes.
//!
//! `dead_letters.csv` is written too, with the parser's errors in encore-flow's format, so
//! `diff -r` compares the dead letters as well.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use encore_dataflow::sink::csv::write_tables;
use encore_dataflow::source::file::read_lines;
use encore_dataflow::tables::{DeadLetter, Params};
use encore_dataflow::testing::oracle;

/// Writes the SPEC §3 tables of a JSON-lines file as computed by the sequential oracle.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// JSON lines, one event each (as `encore-flow --input`).
    #[arg(long)]
    input: PathBuf,
    /// Directory for the CSV tables (as `encore-flow --output-dir`).
    #[arg(long)]
    output_dir: PathBuf,
    /// `K`.
    #[arg(long, default_value_t = Params::default().history_cap)]
    history_cap: usize,
    /// `C`.
    #[arg(long, default_value_t = Params::default().min_co)]
    min_co: u64,
    /// `k`.
    #[arg(long, default_value_t = Params::default().neighbors)]
    neighbors: usize,
    /// `N`.
    #[arg(long, default_value_t = Params::default().recommendations)]
    recommendations: usize,
    /// `P`.
    #[arg(long, default_value_t = Params::default().score_precision)]
    score_precision: u32,
    /// `B`.
    #[arg(long, default_value_t = Params::default().count_bits)]
    count_bits: u32,
    /// Also write `co_listens.csv` (as `--emit-co-listens`).
    #[arg(long)]
    emit_co_listens: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let params = Params {
        history_cap: args.history_cap,
        min_co: args.min_co,
        neighbors: args.neighbors,
        recommendations: args.recommendations,
        score_precision: args.score_precision,
        count_bits: args.count_bits,
    };
    let start = Instant::now();
    let mut events = Vec::new();
    let mut dead_letters = Vec::new();
    // Read as `encore-flow --input` reads it: an empty line is no event.
    read_lines(&args.input, &mut |number, line| {
        if line.is_empty() {
            return;
        }
        match encore_core::parse_event(line) {
            Ok(event) => events.push(event),
            Err(error) => dead_letters.push(DeadLetter {
                topic: "file".into(),
                partition: 0,
                offset: number as i64,
                payload: line.to_vec(),
                error: error.to_string(),
            }),
        }
    })?;
    eprintln!("read {} events, {} invalid, in {:.1} s", events.len(), dead_letters.len(), start.elapsed().as_secs_f64());
    let tables = oracle::compute(&events, &params);
    eprintln!("computed in {:.1} s", start.elapsed().as_secs_f64());
    write_tables(&args.output_dir, &tables, &dead_letters, params.score_precision, args.emit_co_listens)
        .with_context(|| format!("cannot write {}", args.output_dir.display()))?;
    eprintln!("wrote {} in {:.1} s", args.output_dir.display(), start.elapsed().as_secs_f64());
    Ok(())
}
