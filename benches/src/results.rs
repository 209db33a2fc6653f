//! Machine-readable results: one JSON file per benchmark run, beside the printed tables.
//!
//! ```text
//!  engine / pipeline main ── Recording::start ──► the run's metadata (commit, flags, machine,
//!        │                                         date, load average)
//!        ├─ table_header!("bits", "| B | state | … |")  prints the line; its cells name the columns
//!        ├─ table_row!("bits", "| 5 | 1.0M | … |")      prints the line; its cells become a record
//!        └─ Recording::finish ──► DIR/engine-20261207-103000-464be93.json (path printed)
//! ```
//!
//! **Why records are read back from the printed lines.** The tables change columns often
//! (the benches are where engine changes are measured). A record holds whatever the printed
//! row holds, named by the printed header, so a new or renamed column needs no change here and
//! nothing can drift between the terminal and the file. A cell that is a plain number is
//! stored as a JSON number, anything else (`1.0M`, `0.86 GiB`, `12.8 %`, `n/a`) as the
//! printed string; [`quantity`] reads those units back where a number is wanted (the plots).
//!
//! The recording is process-wide (a `static`), so that printing functions deep in a binary
//! need no extra argument: without [`Recording::start`] the macros only print (the `bits`
//! child processes, whose rows their parent prints and records).
//!
//! The format (`"format": 1`): see [`RunResult`]. Readers take files of this format only.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The version of the result file format this code writes and reads.
pub const FORMAT: u32 = 1;

/// Where result files go without `--results-dir` (relative to the current directory, which is
/// the workspace's root under `cargo run` there).
pub const DEFAULT_DIR: &str = "target/bench-results";

/// One benchmark run: what was run where, and every table it printed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// [`FORMAT`].
    pub format: u32,
    /// The benchmark binary: `engine` or `pipeline`.
    pub bench: String,
    /// `git rev-parse --short HEAD` of the workspace, or `unknown`.
    pub commit: String,
    /// Whether tracked files differed from that commit (`git status`), i.e. the measured code
    /// is not exactly the commit's.
    pub dirty: bool,
    /// The command line, program first.
    pub command: Vec<String>,
    /// Start of the run, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    /// Wall-clock seconds from start to finish.
    pub seconds: f64,
    /// The machine it ran on.
    pub machine: Machine,
    /// The 1/5/15-minute load average at start and at the end (other programs share the
    /// machine); `None` where `/proc/loadavg` is unreadable.
    pub load_average: LoadAverage,
    /// The printed tables, in print order. A table printed twice appears twice.
    pub tables: Vec<Table>,
}

/// The machine a run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Host name (`/proc/sys/kernel/hostname`).
    pub hostname: Option<String>,
    /// CPUs this process may use (`available_parallelism`).
    pub cores: usize,
    /// `MemTotal` of `/proc/meminfo`, bytes.
    pub memory_bytes: Option<u64>,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
}

/// The load average at the start and at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    /// At the start: 1, 5 and 15 minutes.
    pub start: Option<[f64; 3]>,
    /// At the end.
    pub end: Option<[f64; 3]>,
}

/// One printed table: its column names (the header's cells) and one record per row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// A stable name given where the table is printed (`bits`, `latency`, `catch_up`, ...).
    pub name: String,
    /// The header's cells, in order; a repeated name is qualified by the column before it
    /// (`ratio (CPU µs/event)`).
    pub columns: Vec<String>,
    /// Each row: column name → number or printed text. Empty cells are left out.
    pub rows: Vec<Map<String, Value>>,
}

/// What can go wrong reading or writing result files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a result file.
    #[error("{path}: not a benchmark result file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where it stops making sense.
        source: serde_json::Error,
    },
    /// A result file of another format version.
    #[error("{path}: result format {found}, this build reads format {FORMAT}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Its `format`.
        found: u32,
    },
    /// Writing the result file (or its directory) failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl RunResult {
    /// Reads and checks a result file.
    pub fn load(path: &Path) -> Result<RunResult, ResultsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ResultsError::Read { path: path.to_owned(), source })?;
        // The version first, so that a future format is named as such rather than as malformed.
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version = serde_json::from_str(&text).map_err(|source| ResultsError::Parse { path: path.to_owned(), source })?;
        if version.format != FORMAT {
            return Err(ResultsError::Format { path: path.to_owned(), found: version.format });
        }
        serde_json::from_str(&text).map_err(|source| ResultsError::Parse { path: path.to_owned(), source })
    }

    /// How plots name the run: short commit (`*` when dirty) and start time (UTC), e.g.
    /// `464be93 2026-12-07 10:30:05`.
    pub fn label(&self) -> String {
        let time = self.started.trim_end_matches('Z').replace('T', " ");
        format!("{}{} {time}", self.commit, if self.dirty { "*" } else { "" })
    }

    /// The tables named `name`, in print order.
    pub fn tables<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Table> + 'a {
        self.tables.iter().filter(move |table| table.name == name)
    }

    /// Adds a printed header line: starts a new table `name` with the line's cells as columns.
    /// Lines that are not table lines are ignored.
    pub fn add_header(&mut self, name: &str, line: &str) {
        if let Some(cells) = cells(line) {
            self.tables.push(Table { name: name.to_owned(), columns: column_names(&cells), rows: Vec::new() });
        }
    }

    /// Adds a printed row line to the last table `name` (one without columns if no header
    /// was added). Separator lines (`|--:|`) and lines that are not table lines are ignored.
    pub fn add_row(&mut self, name: &str, line: &str) {
        let Some(cells) = cells(line) else { return };
        let index = match self.tables.iter().rposition(|table| table.name == name) {
            Some(index) => index,
            None => {
                self.tables.push(Table { name: name.to_owned(), columns: Vec::new(), rows: Vec::new() });
                self.tables.len() - 1
            }
        };
        let table = &mut self.tables[index];
        let mut record = Map::new();
        for (position, cell) in cells.iter().enumerate() {
            if cell.is_empty() {
                continue;
            }
            let column = table.columns.get(position).cloned().unwrap_or_else(|| format!("column {}", position + 1));
            record.insert(column, cell_value(cell));
        }
        table.rows.push(record);
    }
}

/// The cells of a markdown table line (`| a | b |`), trimmed; `None` for other lines and for
/// separator lines.
fn cells(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    let cells: Vec<String> = inner.split('|').map(|cell| cell.trim().to_owned()).collect();
    let separator = cells.iter().all(|cell| !cell.is_empty() && cell.chars().all(|c| matches!(c, '-' | ':')));
    (!separator).then_some(cells)
}

/// Header cells as unique column names: a repeated name is qualified by the column before it.
fn column_names(cells: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(cells.len());
    for (position, cell) in cells.iter().enumerate() {
        let mut name = if cell.is_empty() { format!("column {}", position + 1) } else { cell.clone() };
        if names.contains(&name) {
            if let Some(before) = position.checked_sub(1).map(|p| &cells[p]) {
                name = format!("{name} ({before})");
            }
            while names.contains(&name) {
                name.push('\'');
            }
        }
        names.push(name);
    }
    names
}

/// A cell as a JSON number if it is a plain number, else as its text.
fn cell_value(cell: &str) -> Value {
    if let Ok(integer) = cell.parse::<i64>() {
        return Value::from(integer);
    }
    match cell.parse::<f64>() {
        Ok(number) if number.is_finite() => Value::from(number),
        _ => Value::from(cell),
    }
}

/// The number a field stands for: a JSON number as it is, a printed quantity through
/// [`quantity`]; `None` for anything else (`n/a`, `—`, `> 60 s drain`).
pub fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => quantity(text),
        _ => None,
    }
}

/// Reads a printed quantity: a number with an optional unit as the benches print them.
///
/// `k` and `M` multiply (`100k`, `1.0M`); `KiB`, `MiB` and `GiB` give bytes; `%`, `×`, `x`,
/// `ms` and `s` are dropped (the column name says the unit). A range `a–b` stands for its
/// end `b` (the growth tables' windows). Anything else is not a quantity.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Some((_, end)) = text.split_once('–') {
        return quantity(end);
    }
    const UNITS: [(&str, f64); 10] = [
        ("GiB", (1u64 << 30) as f64),
        ("MiB", (1u64 << 20) as f64),
        ("KiB", 1024.0),
        ("ms", 1.0),
        ("s", 1.0),
        ("%", 1.0),
        ("×", 1.0),
        ("x", 1.0),
        ("k", 1e3),
        ("M", 1e6),
    ];
    let (digits, factor) =
        UNITS.iter().find_map(|(unit, factor)| text.strip_suffix(unit).map(|digits| (digits.trim_end(), *factor))).unwrap_or((text, 1.0));
    digits.parse::<f64>().ok().filter(|n| n.is_finite()).map(|n| n * factor)
}

/// The run being recorded in this process, if any.
static RECORDING: Mutex<Option<RunResult>> = Mutex::new(None);

/// Records the printed header `line` of table `table` (no-op without a recording).
pub fn record_header(table: &str, line: &str) {
    if let Ok(mut recording) = RECORDING.lock() {
        if let Some(run) = recording.as_mut() {
            run.add_header(table, line);
        }
    }
}

/// Records the printed row `line` of table `table` (no-op without a recording).
pub fn record_row(table: &str, line: &str) {
    if let Ok(mut recording) = RECORDING.lock() {
        if let Some(run) = recording.as_mut() {
            run.add_row(table, line);
        }
    }
}

/// Prints a table's header line, like `println!`, and starts that table in the recording:
/// `table_header!("bits", "| B | state | ... |")`.
#[macro_export]
macro_rules! table_header {
    ($table:expr, $($format:tt)*) => {{
        let line = format!($($format)*);
        println!("{line}");
        $crate::results::record_header($table, &line);
    }};
}

/// Prints a table row, like `println!`, and records it as a record of that table:
/// `table_row!("bits", "| {bits} | {} | ... |", short(state))`.
#[macro_export]
macro_rules! table_row {
    ($table:expr, $($format:tt)*) => {{
        let line = format!($($format)*);
        println!("{line}");
        $crate::results::record_row($table, &line);
    }};
}

/// The recording of this process's run, from [`start`](Recording::start) to
/// [`finish`](Recording::finish).
#[derive(Debug)]
pub struct Recording {
    dir: PathBuf,
    started: Instant,
}

impl Recording {
    /// Starts recording a run of `bench`: reads the commit, command line, machine, date and
    /// load average now; the file goes to `dir` (or [`DEFAULT_DIR`]) at [`finish`](Self::finish).
    pub fn start(bench: &str, dir: Option<&Path>) -> Recording {
        let run = RunResult {
            format: FORMAT,
            bench: bench.to_owned(),
            commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|changes| !changes.is_empty()),
            command: std::env::args().collect(),
            started: utc_timestamp(SystemTime::now()),
            seconds: 0.0,
            machine: Machine::read(),
            load_average: LoadAverage { start: load_average(), end: None },
            tables: Vec::new(),
        };
        if let Ok(mut recording) = RECORDING.lock() {
            *recording = Some(run);
        }
        Recording { dir: dir.map_or_else(|| PathBuf::from(DEFAULT_DIR), Path::to_owned), started: Instant::now() }
    }

    /// Ends the recording, writes the result file and prints its path; returns the path.
    pub fn finish(self) -> Result<PathBuf, ResultsError> {
        let run = RECORDING.lock().ok().and_then(|mut recording| recording.take());
        let Some(mut run) = run else {
            return Err(ResultsError::Write {
                path: self.dir,
                source: std::io::Error::other("no run was being recorded (or its lock was poisoned)"),
            });
        };
        run.seconds = self.started.elapsed().as_secs_f64();
        run.load_average.end = load_average();
        let path = write(&run, &self.dir)?;
        println!("\nresults: {}", path.display());
        Ok(path)
    }
}

/// Writes `run` into `dir` (created if missing) as `BENCH-YYYYMMDD-HHMMSS-COMMIT.json` (a
/// suffix `-2`, `-3`, ... if that exists); returns the path.
pub fn write(run: &RunResult, dir: &Path) -> Result<PathBuf, ResultsError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ResultsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    let stamp: String = run.started.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect::<String>().replace('T', "-");
    let stem = format!("{}-{stamp}-{}", run.bench, run.commit);
    let mut path = dir.join(format!("{stem}.json"));
    let mut suffix = 1;
    while path.exists() {
        suffix += 1;
        path = dir.join(format!("{stem}-{suffix}.json"));
    }
    let text = serde_json::to_string_pretty(run).map_err(|error| ResultsError::Write { path: path.clone(), source: error.into() })?;
    std::fs::write(&path, text + "\n").map_err(write_error(&path))?;
    Ok(path)
}

impl Machine {
    /// This machine, from `/proc` (fields left empty where it is unreadable).
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|name| name.trim().to_owned()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes: meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024),
            cpu_model: cpuinfo
                .lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned()),
        }
    }

    /// One line: `8 cores, 24.0 GiB, Intel(R) Xeon(R) ...`.
    pub fn describe(&self) -> String {
        let mut text = format!("{} cores", self.cores);
        if let Some(bytes) = self.memory_bytes {
            let _ = write!(text, ", {:.1} GiB", bytes as f64 / (1u64 << 30) as f64);
        }
        if let Some(model) = &self.cpu_model {
            let _ = write!(text, ", {model}");
        }
        text
    }
}

/// `/proc/loadavg`'s three averages.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|field| field.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// A git command's trimmed output in the workspace, `None` if it fails.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").arg("-C").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = encore_core::civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn empty_run() -> RunResult {
        RunResult {
            format: FORMAT,
            bench: "engine".into(),
            commit: "abc1234".into(),
            dirty: false,
            command: vec!["engine".into()],
            started: utc_timestamp(UNIX_EPOCH + Duration::from_secs(1_796_000_000)),
            seconds: 1.0,
            machine: Machine::read(),
            load_average: LoadAverage::default(),
            tables: Vec::new(),
        }
    }

    #[test]
    fn printed_lines_become_records_named_by_the_header() {
        let mut run = empty_run();
        run.add_header("bits", "| B | state | events/s | ratio | recs rows/ev | ratio | peak RSS |");
        run.add_row("bits", "|--:|------:|---:|--:|--:|--:|--:|");
        run.add_row("bits", "| 5 | 1.0M | 15229 | 3.58× | 43.63 | 2.15× |  |");
        run.add_row("bits", "not a table line");
        let table = run.tables("bits").next().expect("the table");
        assert_eq!(table.columns[5], "ratio (recs rows/ev)", "a repeated name is qualified by the column before it");
        assert_eq!(table.rows.len(), 1, "the separator and other lines are not rows");
        let row = &table.rows[0];
        assert_eq!(row["B"], Value::from(5));
        assert_eq!(row["state"], Value::from("1.0M"));
        assert_eq!(row["recs rows/ev"], Value::from(43.63));
        assert!(!row.contains_key("peak RSS"), "empty cells are left out");
        assert_eq!(number(&row["state"]), Some(1e6));
        assert_eq!(number(&row["ratio"]), Some(3.58));
    }

    #[test]
    fn a_new_header_starts_a_new_table_and_extra_cells_are_kept() {
        let mut run = empty_run();
        run.add_header("latency", "| workers | p50 ms |");
        run.add_row("latency", "| 1 | 2.5 |");
        run.add_header("latency", "| workers | p50 ms | stale refresh age |");
        run.add_row("latency", "| 2 | 1.5 | 3 | 9 |");
        let tables: Vec<&Table> = run.tables("latency").collect();
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[1].rows[0]["stale refresh age"], Value::from(3));
        assert_eq!(tables[1].rows[0]["column 4"], Value::from(9));
        assert_eq!(tables[0].rows.len(), 1);
    }

    #[test]
    fn quantities_read_back_the_units_the_benches_print() {
        assert_eq!(quantity("100k"), Some(1e5));
        assert_eq!(quantity("0.50 GiB"), Some(0.5 * (1u64 << 30) as f64));
        assert_eq!(quantity("12.5 %"), Some(12.5));
        assert_eq!(quantity("2.0M–2.1M"), Some(2.1e6));
        for text in ["n/a", "—", "> 60 s drain", "1 × 2", "0.86 GiB (0.88 GiB)", ""] {
            assert_eq!(quantity(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_written_file_loads_back_equal_and_other_formats_are_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut run = empty_run();
        run.add_header("t", "| a | b |");
        run.add_row("t", "| 1 | x |");
        let path = write(&run, dir.path()).expect("written");
        let again = write(&run, dir.path()).expect("written again");
        assert_ne!(path, again, "a second file of the same second does not overwrite the first");
        assert_eq!(RunResult::load(&path).expect("loads"), run);
        std::fs::write(&path, r#"{"format": 99}"#).expect("overwrite");
        assert!(matches!(RunResult::load(&path), Err(ResultsError::Format { found: 99, .. })));
        std::fs::write(&path, "{").expect("overwrite");
        assert!(matches!(RunResult::load(&path), Err(ResultsError::Parse { .. })));
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century year divisible by 400) 12:34:56.
        assert_eq!(utc_timestamp(UNIX_EPOCH + Duration::from_secs(951_827_696)), "2000-02-29T12:34:56Z");
    }
}
