//! Running the release `encore-flow` binary as 1 or more OS processes, as an operator would.
//!
//! ```text
//!  layout P×W: P processes `encore-flow … -w W [-n P -p i -h hostfile]`, hostfile = P free
//!  127.0.0.1 ports; stdout (the summary line) piped, stderr (RUST_LOG=encore_dataflow=info)
//!  to DIR/<name>-p<i>.log; every 50 ms: try_wait each process, read VmHWM from /proc
//! ```
//!
//! A run is timed from the first spawn to the last exit, so process start, Kafka and Postgres
//! connections, schema creation and the final commit are all inside it. If one process fails
//! the others are killed and the run fails with the failed process's last log lines.

use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Processes × workers per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// OS processes.
    pub processes: usize,
    /// Timely workers per process.
    pub workers: usize,
}

impl Layout {
    /// Workers of all processes.
    pub fn total_workers(self) -> usize {
        self.processes * self.workers
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.processes, self.workers)
    }
}

impl FromStr for Layout {
    type Err = String;

    fn from_str(text: &str) -> Result<Layout, String> {
        let (p, w) = text.split_once(['x', 'X']).ok_or_else(|| format!("expected PROCESSESxWORKERS, got {text:?}"))?;
        let parse = |s: &str| s.trim().parse::<usize>().ok().filter(|n| *n > 0);
        match (parse(p), parse(w)) {
            (Some(processes), Some(workers)) => Ok(Layout { processes, workers }),
            _ => Err(format!("expected positive PROCESSESxWORKERS, got {text:?}")),
        }
    }
}

/// What every encore-flow process of a run gets.
#[derive(Clone, Debug)]
pub struct FlowTarget {
    /// The encore-flow binary.
    pub binary: PathBuf,
    /// `--brokers`.
    pub brokers: String,
    /// `--kafka-config FILE` and `--kafka-option KEY=VALUE` flags, as the benchmark was given them.
    pub kafka_flags: Vec<String>,
    /// `--topic`.
    pub topic: String,
    /// `--postgres`.
    pub postgres: String,
    /// Where process logs and hostfiles go.
    pub log_dir: PathBuf,
}

/// The summary line of one process (`process=… replayed=… consumed=… …`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Messages replayed to rebuild state.
    pub replayed: u64,
    /// Messages consumed live.
    pub consumed: u64,
    /// Seconds of the replay, slowest worker.
    pub replay_seconds: f64,
}

/// A finished run.
#[derive(Clone, Debug, Default)]
pub struct Finished {
    /// First spawn to last exit.
    pub seconds: f64,
    /// Summary lines added up (replay seconds: the slowest).
    pub summary: Summary,
    /// Highest VmHWM seen per process, bytes.
    pub peak_rss: Vec<u64>,
}

/// Running encore-flow processes.
pub struct Running {
    name: String,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    peaks: Vec<u64>,
    /// Each process's metrics endpoint (`127.0.0.1:PORT`).
    metrics: Vec<String>,
    started: Instant,
}

/// Starts `layout` with `args` after the common flags; `name` names the log files.
pub fn start(target: &FlowTarget, layout: Layout, schema: &str, args: &[String], name: &str) -> Result<Running> {
    std::fs::create_dir_all(&target.log_dir).with_context(|| format!("creating {}", target.log_dir.display()))?;
    let hostfile = target.log_dir.join(format!("{name}-hosts.txt"));
    if layout.processes > 1 {
        let mut hosts = String::new();
        for _ in 0..layout.processes {
            hosts.push_str(&format!("127.0.0.1:{}\n", encore_testkit::free_port().context("binding a free port")?));
        }
        std::fs::write(&hostfile, hosts).with_context(|| format!("writing {}", hostfile.display()))?;
    }
    let started = Instant::now();
    let mut running =
        Running { name: name.to_owned(), children: Vec::new(), logs: Vec::new(), peaks: Vec::new(), metrics: Vec::new(), started };
    for process in 0..layout.processes {
        // Served by every run (a few atomics per epoch): the latency runs read the staleness.
        let metrics = format!("127.0.0.1:{}", encore_testkit::free_port().context("binding a free port")?);
        let log = target.log_dir.join(format!("{name}-p{process}.log"));
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(&target.binary);
        command
            .args(["--brokers", &target.brokers, "--topic", &target.topic, "--postgres", &target.postgres])
            .args(&target.kafka_flags)
            .args(["--pg-schema", schema, "-w", &layout.workers.to_string(), "--metrics-addr", &metrics])
            .args(args)
            .env("RUST_LOG", "encore_dataflow=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if layout.processes > 1 {
            command.args(["-n", &layout.processes.to_string(), "-p", &process.to_string(), "-h"]).arg(&hostfile);
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                running.kill();
                return Err(anyhow!("starting {}: {error}", target.binary.display()));
            }
        };
        running.children.push(child);
        running.logs.push(log);
        running.peaks.push(0);
        running.metrics.push(metrics);
    }
    Ok(running)
}

impl Running {
    /// Seconds since the first spawn.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// How many `replay read` lines the processes have logged (one per worker with partitions
    /// once its consumer reached the committed offsets; the dataflow may still be computing).
    pub fn replays_read(&self) -> usize {
        self.logs.iter().filter_map(|log| std::fs::read_to_string(log).ok()).map(|text| text.matches("replay read").count()).sum()
    }

    /// The largest value of the unlabelled gauge `name` over the processes' metrics
    /// endpoints (`None` if no process answered with it).
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.metrics.iter().filter_map(|addr| scrape(addr, name)).reduce(f64::max)
    }

    /// The highest VmHWM seen so far per process, bytes (sampled by [`check_alive`](Self::check_alive)).
    pub fn peaks(&self) -> &[u64] {
        &self.peaks
    }

    /// Fails if a process has exited (a live run must not end on its own).
    pub fn check_alive(&mut self) -> Result<()> {
        self.sample_memory();
        for index in 0..self.children.len() {
            if let Some(status) = self.children[index].try_wait()? {
                let tail = self.tail(index);
                self.kill();
                bail!("{} process {index} exited early ({status}):\n{tail}", self.name);
            }
        }
        Ok(())
    }

    /// Asks every process to stop (SIGINT: commit the current epoch and exit).
    pub fn interrupt(&self) -> Result<()> {
        for child in &self.children {
            let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().context("running kill")?;
            if !status.success() {
                bail!("kill -INT {} failed", child.id());
            }
        }
        Ok(())
    }

    /// Waits for every process to exit 0, up to `timeout` from now; kills them all on failure.
    pub fn wait(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let mut done: Vec<Option<Instant>> = vec![None; self.children.len()];
        while done.iter().any(Option::is_none) {
            self.sample_memory();
            let mut failed = None;
            for (index, (child, done)) in self.children.iter_mut().zip(done.iter_mut()).enumerate() {
                if done.is_none() {
                    match child.try_wait()? {
                        Some(status) if !status.success() => failed = Some((index, status)),
                        Some(_) => *done = Some(Instant::now()),
                        None => {}
                    }
                }
            }
            if let Some((index, status)) = failed {
                let tail = self.tail(index);
                self.kill();
                bail!("{} process {index} failed ({status}):\n{tail}", self.name);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not finish within {} s (logs in {})", self.name, timeout.as_secs(), self.logs[0].display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let last = done.iter().flatten().max().copied().unwrap_or_else(Instant::now);
        let mut finished = Finished { seconds: (last - self.started).as_secs_f64(), peak_rss: self.peaks.clone(), ..Finished::default() };
        for child in &mut self.children {
            let mut out = String::new();
            if let Some(stdout) = child.stdout.as_mut() {
                stdout.read_to_string(&mut out)?;
            }
            let summary = parse_summary(&out).ok_or_else(|| anyhow!("no summary line from encore-flow: {out:?}"))?;
            finished.summary.replayed += summary.replayed;
            finished.summary.consumed += summary.consumed;
            finished.summary.replay_seconds = finished.summary.replay_seconds.max(summary.replay_seconds);
        }
        Ok(finished)
    }

    /// Kills every process still running (our own children only).
    pub fn kill(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn sample_memory(&mut self) {
        for (child, peak) in self.children.iter().zip(self.peaks.iter_mut()) {
            if let Some(hwm) = vm_hwm(child.id()) {
                *peak = (*peak).max(hwm);
            }
        }
    }

    fn tail(&self, index: usize) -> String {
        let text = std::fs::read_to_string(&self.logs[index]).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of the sample `name{process="…"}` served at `addr` (plain HTTP, one request).
fn scrape(addr: &str, name: &str) -> Option<f64> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let prefix = format!("{name}{{");
    text.lines().find(|line| line.starts_with(&prefix))?.rsplit(' ').next()?.parse().ok()
}

/// `process=0 replayed=0 consumed=1000000 invalid=0 replay_seconds=0.000 seconds=12.3`.
fn parse_summary(out: &str) -> Option<Summary> {
    let line = out.lines().rev().find(|line| line.starts_with("process="))?;
    let field = |name: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    Some(Summary {
        replayed: field("replayed")?.parse().ok()?,
        consumed: field("consumed")?.parse().ok()?,
        replay_seconds: field("replay_seconds")?.parse().ok()?,
    })
}

/// The process's peak resident set (VmHWM), bytes.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for the timely hostfile).
/// The release `encore-flow`: `explicit` if given, else built with cargo (so that the figures
/// are those of the current source) next to this benchmark's own binary.
pub fn binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--flow-bin {} is not a file", path.display());
        }
        return Ok(path.to_owned());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("building encore-flow: {cargo} build --release -p encore-dataflow --bin encore-flow");
    let mut build = Command::new(&cargo);
    build.args(["build", "--release", "-p", "encore-dataflow", "--bin", "encore-flow"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    // Under `cargo run` this process has the variables cargo sets for a running package.
    // Build scripts that watch one (ring's watches CARGO_MANIFEST_DIR) would then be rerun,
    // and rebuilt again by the next `cargo run`: ~1.5 minutes of every benchmark run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let set_for_the_package = name.starts_with("CARGO_PKG_")
            || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"]
                .contains(&name.as_str());
        if set_for_the_package {
            build.env_remove(&name);
        }
    }
    let status = build.status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("building encore-flow failed ({status})");
    }
    let dir = std::env::current_exe()?.parent().map(Path::to_owned).ok_or_else(|| anyhow!("no directory of the benchmark binary"))?;
    let path = dir.join("encore-flow");
    if !path.is_file() {
        bail!("{} not found after the build (pass --flow-bin)", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_parse_as_processes_by_workers() {
        assert_eq!("2x1".parse::<Layout>(), Ok(Layout { processes: 2, workers: 1 }));
        assert_eq!("1X4".parse::<Layout>().map(|l| l.total_workers()), Ok(4));
        assert!("0x1".parse::<Layout>().is_err());
        assert!("2".parse::<Layout>().is_err());
        assert!("ax1".parse::<Layout>().is_err());
        assert_eq!(Layout { processes: 1, workers: 2 }.to_string(), "1x2");
    }

    #[test]
    fn the_summary_line_of_encore_flow_is_read() {
        let out = "noise\nprocess=1 replayed=250 consumed=1000 invalid=3 replay_seconds=1.500 seconds=9.000\n";
        let summary = parse_summary(out).expect("a summary");
        assert_eq!((summary.replayed, summary.consumed), (250, 1000));
        assert!((summary.replay_seconds - 1.5).abs() < 1e-9);
        assert!(parse_summary("process=0 replayed=x consumed=1 replay_seconds=0").is_none());
        assert!(parse_summary("").is_none());
    }
}
