//! `encore-flow --metrics-addr`: the Prometheus endpoint of a live Kafka → Postgres run
//! against a real Tansu broker and a real PostgreSQL, scraped over plain TCP and parsed
//! strictly (text format 0.0.4), its counters checked against what was produced and what
//! Postgres holds; that a bare `--metrics-addr PORT` (or `:PORT`) listens on 127.0.0.1
//! only; and bind failures as one-line errors.
//!
//! The run is 2 processes × 1 worker on a 2-partition topic, so each process reads one
//! partition and serves its own endpoint; process 0 also commits. A restart then replays
//! (counted apart) and commits nothing new.
//!
//! Ports: each endpoint binds port 0 and the test reads the address from the line encore-flow
//! logs (`serving metrics at http://ADDR/metrics`), so no other process can take it first.
//! The hostfile's ports must be known before the processes start; a start that finds one
//! taken meanwhile is retried on fresh ports.
//! The Grafana dashboard (`deploy/grafana/encore.json`) is held to the code here too: every
//! metric its queries name must be served by such a run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use encore_dataflow::sink::postgres::{PgSink, RetryPolicy};
use encore_dataflow::testing::{self, assert_one_line_error, assert_success, LineMix};
use encore_testkit::{free_port, retry_on_taken_port, Postgres, Tansu};

const TOPIC: &str = "music_streaming_data";
const PARTITIONS: i32 = 2;
const PRECISION: u32 = 4;

/// One sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: families by name (`(help, type)`) and samples in order.
#[derive(Debug, Default)]
struct Scrape {
    families: BTreeMap<String, (Option<String>, Option<String>)>,
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// The value of the one sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} matches {} samples in\n{}", matching.len(), self.text);
        matching.first().map(|s| s.value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", self.text))
    }

    fn has_family(&self, name: &str) -> bool {
        self.families.contains_key(name)
    }
}

/// `GET /metrics` over a plain TCP connection: checks the status line and headers and
/// returns the body, or why it could not.
fn fetch(addr: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8(response).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {response:?}"))?;
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"), "status line of {head:?}");
    let headers: BTreeMap<String, String> = lines
        .map(|line| {
            let (key, value) = line.split_once(':').unwrap_or_else(|| panic!("header line {line:?}"));
            (key.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let content_type = headers.get("content-type").map(String::as_str).unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "Content-Type {content_type:?}");
    assert_eq!(headers.get("content-length"), Some(&body.len().to_string()), "Content-Length of {head:?}");
    Ok(body.to_owned())
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{k="v",…}` (at the start of `text`); returns the labels and the rest.
fn parse_labels(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').expect("labels open with {");
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label name=\" in {text:?}"));
        assert!(is_label_name(name), "label name {name:?} in {text:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {text:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {text:?}"),
            }
        };
        assert!(labels.insert(name.to_owned(), value).is_none(), "label {name} twice in {text:?}");
        rest = &after[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else {
            assert!(rest.starts_with('}'), "labels continue with , or }} in {text:?}");
        }
    }
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => text.parse().unwrap_or_else(|_| panic!("sample value {text:?}")),
    }
}

/// Parses the text format strictly: only `# HELP`, `# TYPE` and sample lines; every sample
/// belongs to a family declared with HELP and TYPE before it; counters end in `_total` and
/// are ≥ 0; histogram buckets ascend in `le`, are cumulative, end in `+Inf` = `_count`.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape { text: text.to_owned(), ..Scrape::default() };
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP line {line:?}"));
            assert!(is_metric_name(name), "{line:?}");
            let family = scrape.families.entry(name.to_owned()).or_default();
            assert!(family.0.replace(help.to_owned()).is_none(), "HELP of {name} twice");
            assert!(!help.is_empty(), "empty HELP of {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE line {line:?}"));
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line:?}");
            let family = scrape.families.entry(name.to_owned()).or_default();
            assert!(family.1.replace(kind.to_owned()).is_none(), "TYPE of {name} twice");
            assert!(!scrape.samples.iter().any(|s| s.name.starts_with(name)), "TYPE of {name} after its samples");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("sample line {line:?}"));
            let name = &line[..name_end];
            assert!(is_metric_name(name), "{line:?}");
            let (labels, rest) =
                if line[name_end..].starts_with('{') { parse_labels(&line[name_end..]) } else { (BTreeMap::new(), &line[name_end..]) };
            let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("one space before the value in {line:?}"));
            assert!(!value.contains(' '), "no timestamps are sent: {line:?}");
            let value = parse_value(value);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (scrape.families.get(base)?.1.as_deref() == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            let Some((help, kind)) = scrape.families.get(family) else { panic!("{line:?}: no HELP/TYPE of {family}") };
            assert!(help.is_some() && kind.is_some(), "{family} needs HELP and TYPE before {line:?}");
            if kind.as_deref() == Some("counter") {
                assert!(name.ends_with("_total") && value >= 0.0, "counter {line:?}");
            }
            scrape.samples.push(Sample { name: name.to_owned(), labels, value });
        }
    }
    for (name, (help, kind)) in &scrape.families {
        assert!(help.is_some() && kind.is_some(), "{name} has both HELP and TYPE");
        if kind.as_deref() == Some("histogram") {
            check_histogram(&scrape, name);
        }
    }
    scrape
}

fn check_histogram(scrape: &Scrape, name: &str) {
    let bucket = format!("{name}_bucket");
    let buckets: Vec<&Sample> = scrape.samples.iter().filter(|s| s.name == bucket).collect();
    assert!(!buckets.is_empty(), "{name} has buckets");
    let bounds: Vec<f64> = buckets.iter().map(|s| parse_value(&s.labels["le"])).collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{name}: le ascends: {bounds:?}");
    assert_eq!(bounds.last(), Some(&f64::INFINITY), "{name} ends with +Inf");
    let counts: Vec<f64> = buckets.iter().map(|s| s.value).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{name}: cumulative: {counts:?}");
    let count = scrape.get(&format!("{name}_count"), &[]);
    assert_eq!(counts.last(), Some(&count), "{name}: +Inf bucket = _count");
    assert!(scrape.get(&format!("{name}_sum"), &[]) >= 0.0);
}

fn flow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_encore-flow"))
}

/// Produces `lines[i]` to partition `i mod PARTITIONS`, one record batch per message:
/// Tansu 0.6 reports the base offset of the last batch + 1 as the high watermark, which is
/// then the true end and the watermark gauges can be checked exactly.
fn produce(tansu: &Tansu, lines: &[Vec<u8>], first_index: usize) {
    let partition = |i: usize| Some(((first_index + i) % PARTITIONS as usize) as i32);
    tansu.produce(TOPIC, lines, partition, true).expect("all messages delivered");
}

/// Scrapes `addr` until `done` holds for the parsed metrics; fails (with the last scrape)
/// if it does not within `patience`, so a broken job cannot hang the test.
fn scrape_until(addr: &str, children: &mut [Flow], what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    try_scrape_until(addr, children, what, done).unwrap_or_else(|ended| panic!("{ended}"))
}

/// [`scrape_until`], but a process that ended meanwhile is an error: its stderr, all
/// processes stopped.
fn try_scrape_until(addr: &str, children: &mut [Flow], what: &str, done: impl Fn(&Scrape) -> bool) -> Result<Scrape, String> {
    let patience = Duration::from_secs(240);
    let started = Instant::now();
    loop {
        if let Some(ended) = children.iter_mut().position(|flow| flow.child.try_wait().expect("poll encore-flow").is_some()) {
            let stderr = stop_all(children).swap_remove(ended);
            return Err(format!("encore-flow exited while waiting for {what}; its stderr:\n{stderr}"));
        }
        let last = match fetch(addr) {
            Ok(text) => {
                let scrape = parse(&text);
                if done(&scrape) {
                    return Ok(scrape);
                }
                text
            }
            Err(error) => error,
        };
        assert!(started.elapsed() < patience, "no {what} at {addr} after {patience:?}; last scrape:\n{last}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The local addresses of the TCP sockets listening on `port`, from the kernel's tables
/// (`/proc/net/tcp`, and `/proc/net/tcp6` as its raw hex): what a process bound, whoever
/// can connect.
fn listening_on(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("{table}: {e}"));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some((address, hex_port)), Some(&state)) = (fields[1].split_once(':'), fields.get(3)) else {
                panic!("{table} line {line:?}");
            };
            if state != LISTEN || u16::from_str_radix(hex_port, 16) != Ok(port) {
                continue;
            }
            if address.len() == 8 {
                // The address's bytes in network order, printed as a native-endian number.
                let native = u32::from_str_radix(address, 16).expect("hex address");
                found.push(std::net::Ipv4Addr::from(native.to_ne_bytes()).to_string());
            } else {
                found.push(format!("tcp6 {address}"));
            }
        }
    }
    found
}

/// A running encore-flow whose stderr a thread reads: for the metrics address it bound, and
/// whole for the messages of a failure.
struct Flow {
    child: Child,
    /// `HOST:PORT` its metrics endpoint bound.
    metrics: String,
    /// The reader; `None` once joined.
    stderr: Option<JoinHandle<String>>,
}

impl Flow {
    /// Everything it wrote to stderr (once it has ended).
    fn stderr(&mut self) -> String {
        self.stderr.take().and_then(|reader| reader.join().ok()).unwrap_or_default()
    }
}

/// Kills every process; their stderr.
fn stop_all(children: &mut [Flow]) -> Vec<String> {
    children
        .iter_mut()
        .map(|flow| {
            let _ = flow.child.kill();
            let _ = flow.child.wait();
            flow.stderr()
        })
        .collect()
}

/// Starts process 0 and 1 of a 2-process cluster (a fresh hostfile in `dir`) with
/// `--metrics-addr metrics[p]` (port 0), and reads the address each bound from its log line.
/// A process that ends first is an error: its stderr, the other one killed.
fn spawn_processes(tansu: &Tansu, postgres: &Postgres, dir: &Path, metrics: &[&str]) -> Result<Vec<Flow>, String> {
    let hostfile = dir.join("hosts");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port().expect("a free port"), free_port().expect("a free port")),
    )
    .expect("hostfile");
    let mut started = Vec::new();
    for process in 0..2 {
        let mut child = flow()
            .args(["--brokers", &tansu.brokers(), "--topic", TOPIC, "--postgres", &postgres.url()])
            .args(["--emit-co-listens", "--epoch-ms", "50", "--history-cap", "5", "--min-co", "1"])
            .args(["--neighbors", "3", "--recommendations", "3", "--metrics-addr", metrics[process]])
            .args(["-n", "2", "-p", &process.to_string(), "-h", &hostfile.display().to_string()])
            // The bound address is logged at info.
            .env("RUST_LOG", "warn,encore_flow=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn encore-flow");
        let (address, bound) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().expect("stderr"));
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in lines.lines().map_while(Result::ok) {
                if let Some(rest) = line.split_once("serving metrics at http://").map(|(_, rest)| rest) {
                    let _ = address.send(rest.split('/').next().unwrap_or_default().to_owned());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        // A guard against a hang, not a speed requirement: the bind comes first at start.
        match bound.recv_timeout(Duration::from_secs(60)) {
            Ok(metrics) => started.push(Flow { child, metrics, stderr: Some(stderr) }),
            Err(_) => {
                let mut failed = Flow { child, metrics: String::new(), stderr: Some(stderr) };
                let stderr = stop_all(std::slice::from_mut(&mut failed)).remove(0);
                stop_all(&mut started);
                return Err(format!("encore-flow -p {process} did not serve metrics; its stderr:\n{stderr}"));
            }
        }
    }
    Ok(started)
}

/// Starts the cluster ([`spawn_processes`]) and scrapes process 0 until `ready` holds, again on
/// fresh hostfile ports if a process ended because one was taken meanwhile; the processes and
/// that scrape.
fn start_until(
    tansu: &Tansu,
    postgres: &Postgres,
    dir: &Path,
    metrics: &[&str],
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> (Vec<Flow>, Scrape) {
    retry_on_taken_port(|_| {
        let mut children = spawn_processes(tansu, postgres, dir, metrics)?;
        let address = children[0].metrics.clone();
        let scrape = try_scrape_until(&address, &mut children, what, &ready)?;
        Ok::<_, String>((children, scrape))
    })
    .unwrap_or_else(|failed| panic!("{failed}"))
}

#[test]
fn live_run_serves_metrics_that_match_the_topic_and_postgres() {
    let tansu = Tansu::start().expect("start Tansu (see encore-testkit)");
    tansu.create_topic(TOPIC, PARTITIONS).expect("create the topic");
    let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
    let dir = std::env::temp_dir().join(format!("encore-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");

    let mix = LineMix { users: 30, tracks: 40, lines: 1_200, window_seconds: 300, invalid_percent: 8 };
    let lines: Vec<Vec<u8>> = testing::generate(5, &mix).into_iter().map(|line| line.bytes).collect();
    let (events, invalid) = testing::parse_lines(&lines);
    let listens = events.iter().filter(|e| e.is_listen()).count() as f64;
    assert!(!invalid.is_empty() && listens > 0.0, "the mix has invalid lines and listens");
    let (first, second) = lines.split_at(800);
    produce(&tansu, first, 0);

    let per_partition = |total: usize| [total.div_ceil(2) as f64, (total / 2) as f64];
    let committed_all = |scrape: &Scrape, total: usize| {
        let want = per_partition(total);
        (0..PARTITIONS)
            .all(|p| scrape.value("encore_partition_committed_offset", &[("partition", &p.to_string())]) == Some(want[p as usize]))
    };

    // A bare port and `:PORT`: both mean loopback (checked below, once both serve); port 0,
    // the address bound read from the log. Process 0 commits everything produced so far (its
    // committed offsets say so).
    let (mut children, early) =
        start_until(&tansu, &postgres, &dir, &["0", ":0"], "commit of the first messages", |s| committed_all(s, first.len()));
    let metrics: Vec<String> = children.iter().map(|flow| flow.metrics.clone()).collect();
    let ports: Vec<u16> =
        metrics.iter().map(|addr| addr.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).expect("a port")).collect();
    assert!(early.get("encore_commits_total", &[]) >= 1.0);

    // More messages while it runs: consumed live, and the watermark poller sees the new end.
    produce(&tansu, second, first.len());
    let want = per_partition(lines.len());
    let caught_up = |process: usize, scrape: &Scrape| {
        let p = process.to_string();
        let gauges = |name: &str| scrape.value(name, &[("partition", &p)]);
        gauges("encore_partition_next_offset") == Some(want[process])
            && gauges("encore_partition_high_watermark") == Some(want[process])
            && gauges("encore_partition_lag") == Some(0.0)
    };
    let one = scrape_until(&metrics[1], &mut children, "process 1 caught up", |s| caught_up(1, s));
    let zero = scrape_until(&metrics[0], &mut children, "process 0 caught up and committed", |s| {
        caught_up(0, s)
            && committed_all(s, lines.len())
            && s.value("encore_rows_written_total", &[("table", "dead_letters")]) == Some(invalid.len() as f64)
    });

    eprintln!("process 0 scrape:\n{}\nprocess 1 scrape:\n{}", zero.text, one.text);
    for &port in &ports {
        assert_ne!(port, 0);
        assert_eq!(listening_on(port), ["127.0.0.1"], "the socket listening on port {port}");
    }

    // Each process reads (and shows) its own partition; the labels say which process.
    for (process, scrape) in [(0, &zero), (1, &one)] {
        let readers: BTreeSet<String> =
            scrape.samples.iter().filter(|s| s.name == "encore_partition_next_offset").map(|s| s.labels["partition"].clone()).collect();
        assert_eq!(readers, BTreeSet::from([process.to_string()]), "partitions of process {process}");
        assert!(scrape.samples.iter().all(|s| s.labels["process"] == process.to_string()), "process label");
        assert_eq!(scrape.get("encore_events_replayed_total", &[]), 0.0);
        assert_eq!(scrape.get("encore_replaying_workers", &[]), 0.0);
        assert_eq!(scrape.get("encore_state_load_seconds", &[]), 0.0, "nothing to load on a first start");
    }
    assert!(!one.has_family("encore_commits_total") && !one.has_family("encore_rows_written_total"), "only process 0 commits");

    // Consumption, summed over the processes, is exactly what was produced.
    let sum = |name: &str| zero.get(name, &[]) + one.get(name, &[]);
    assert_eq!(sum("encore_events_consumed_total"), lines.len() as f64);
    assert_eq!(sum("encore_invalid_messages_total"), invalid.len() as f64);
    assert_eq!(sum("encore_listens_total"), listens);

    // Rows written against what Postgres holds (the run started from empty tables).
    let mut sink = PgSink::connect(&postgres.url(), "public", PRECISION, true, RetryPolicy::default()).expect("connect");
    let (tables, dead_letters) = sink.read_tables().expect("read the tables");
    let rows = |table: &str, op: &str| zero.get("encore_rows_written_total", &[("table", table), ("op", op)]);
    let net = |table: &str| rows(table, "insert") - rows(table, "delete");
    // A list is one row: one per track with neighbours, one per user with recommendations.
    for (table, held) in [
        ("track_neighbors", encore_dataflow::tables::lists_by_key(&tables.track_neighbors).len()),
        ("user_recommendations", encore_dataflow::tables::lists_by_key(&tables.user_recommendations).len()),
        ("track_stats", tables.track_stats.len()),
        ("co_listens", tables.co_listens.len()),
    ] {
        assert!(held > 0 && rows(table, "insert") > 0.0, "{table} has rows");
        assert_eq!(net(table), held as f64, "{table}: inserted - deleted = rows held");
    }
    // A track's statistics only grow: never deleted, and updated as plays accumulate.
    assert_eq!(rows("track_stats", "delete"), 0.0);
    assert!(rows("track_stats", "update") > 0.0);
    assert_eq!(rows("dead_letters", "insert"), dead_letters.len() as f64);
    let plays: u64 = tables.track_stats.values().map(|stats| stats.plays).sum();
    assert_eq!(plays as f64, listens, "plays in track_stats = listens counted");
    let offsets = sink.committed_offsets(TOPIC).expect("offsets");
    for (p, offset) in offsets {
        assert_eq!(zero.get("encore_partition_committed_offset", &[("partition", &p.to_string())]), offset as f64);
    }

    // Commits: one histogram observation each; epochs latency at most one per commit.
    let commits = zero.get("encore_commits_total", &[]);
    assert!(commits >= 2.0, "at least the two productions' commits");
    assert_eq!(zero.get("encore_commit_duration_seconds_count", &[]), commits);
    let epochs = zero.get("encore_epoch_latency_seconds_count", &[]);
    assert!(epochs >= 1.0 && epochs <= commits, "{epochs} epoch latencies for {commits} commits");
    assert!(zero.get("encore_last_committed_epoch", &[]) >= 1.0);
    assert!(zero.get("encore_last_commit_timestamp_seconds", &[]) > 1.7e9);

    // Ctrl-C: both commit what they have and exit 0, their summaries agreeing with the metrics.
    assert_eq!(interrupt(children), lines.len());

    // A restart loads the committed state (each process its share of the rows, counted apart
    // from live consumption; no message is replayed) and goes live; with nothing new it
    // commits nothing, and process 0 shows the offsets it read.
    let state_rows: i64 = {
        let mut client = postgres::Client::connect(&postgres.url(), postgres::NoTls).expect("connect");
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM encore_last_listen) + (SELECT count(*) FROM track_stats) \
                 + (SELECT count(*) FROM user_recommendations)",
                &[],
            )
            .expect("count the state");
        row.get(0)
    };
    assert!(state_rows > 0);
    let loaded = |scrape: &Scrape| {
        scrape.value("encore_replaying_workers", &[]) == Some(0.0)
            && scrape.value("encore_state_rows_loaded_total", &[]).is_some_and(|rows| rows > 0.0)
    };
    let (mut children, zero) = start_until(&tansu, &postgres, &dir, &["127.0.0.1:0", "127.0.0.1:0"], "process 0 loaded", loaded);
    let metrics: Vec<String> = children.iter().map(|flow| flow.metrics.clone()).collect();
    let one = scrape_until(&metrics[1], &mut children, "process 1 loaded", loaded);
    let rows = zero.get("encore_state_rows_loaded_total", &[]) + one.get("encore_state_rows_loaded_total", &[]);
    assert_eq!(rows, state_rows as f64, "every row of the state loaded once, over both processes");
    for scrape in [&zero, &one] {
        assert!(scrape.get("encore_state_load_seconds", &[]) > 0.0, "the load took its time:\n{}", scrape.text);
    }
    for scrape in [&zero, &one] {
        assert_eq!(scrape.get("encore_events_consumed_total", &[]), 0.0);
        assert_eq!(scrape.get("encore_events_replayed_total", &[]), 0.0);
    }
    assert!(committed_all(&zero, lines.len()), "committed offsets read at start:\n{}", zero.text);
    assert_eq!(zero.get("encore_commits_total", &[]), 0.0);
    assert_eq!(zero.get("encore_commit_duration_seconds_count", &[]), 0.0);
    assert_eq!(zero.get("encore_last_committed_epoch", &[]), -1.0);
    assert_eq!(zero.get("encore_last_commit_timestamp_seconds", &[]), 0.0);
    assert_eq!(interrupt(children), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends SIGINT to every child; each must exit 0. Returns the live messages their summary
/// lines report (`consumed=N`), summed.
fn interrupt(children: Vec<Flow>) -> usize {
    for flow in &children {
        let status = Command::new("kill").args(["-INT", &flow.child.id().to_string()]).status().expect("kill -INT");
        assert!(status.success());
    }
    let mut consumed = 0;
    for mut flow in children {
        // Its stdout to the end first (it could fill the pipe and block), then its status.
        let mut stdout = Vec::new();
        flow.child.stdout.take().expect("stdout").read_to_end(&mut stdout).expect("read stdout");
        let status = flow.child.wait().expect("encore-flow runs");
        let output = Output { status, stdout, stderr: flow.stderr().into_bytes() };
        assert_success(&output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let field = stdout.split_whitespace().find_map(|f| f.strip_prefix("consumed=")).expect("summary line");
        consumed += field.parse::<usize>().expect("a count");
    }
    consumed
}

#[test]
fn metrics_address_taken_or_invalid_fails_before_the_job_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    // Nothing listens at these brokers and Postgres: the bind must fail first, at once.
    let run = |metrics_addr: &str| {
        flow()
            .args(["--brokers", "127.0.0.1:1", "--topic", TOPIC, "--postgres", "postgres://postgres@127.0.0.1:1/postgres"])
            .args(["--metrics-addr", metrics_addr])
            .output()
            .expect("run encore-flow")
    };
    let taken = run(&addr);
    assert_one_line_error(&taken, &format!("cannot serve metrics on {addr}: "));
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert_eq!(stderr.matches("in use").count(), 1, "the cause is said once: {stderr}");
    // A bare port is the loopback address, and the error names it so.
    let port = addr.rsplit_once(':').expect("host:port").1;
    assert_one_line_error(&run(port), &format!("cannot serve metrics on {addr}: "));
    assert_one_line_error(&run("127.0.0.1:port"), "cannot serve metrics on 127.0.0.1:port: ");
    assert_one_line_error(&run("no-port-given"), "cannot serve metrics on no-port-given: ");

    // Metrics describe the Kafka job: with a file input the flag is refused.
    let output = flow().args(["--input", "x.jsonl", "--output-dir", "out", "--metrics-addr", &addr]).output().expect("run");
    assert_one_line_error(&output, "--metrics-addr needs Kafka input");

    // --help says what a bare port binds and how to expose the endpoint.
    let help = flow().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("--metrics-addr <[HOST:]PORT>"), "{help}");
    assert!(help.contains("A bare PORT (or :PORT) binds 127.0.0.1") && help.contains("e.g. 0.0.0.0:9464"), "{help}");
}

/// Every metric a query of the Grafana dashboard (`deploy/grafana/encore.json`, its panels and
/// its `process` variable) selects is served by a running `encore-flow --metrics-addr`, so
/// the dashboard cannot drift from the code. Both processes of a live run are scraped once
/// process 0 has committed (then every family either serves exists, sink ones included); a
/// name counts as served when a sample or a `# TYPE` line has it, or, for `_bucket`, `_sum`
/// and `_count`, when its base name is a histogram.
#[test]
fn every_metric_the_grafana_dashboard_queries_is_served() {
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for query in encore_testkit::grafana::queries(&encore_testkit::grafana::dashboard()) {
        for metric in encore_testkit::grafana::metric_refs(&query.expr) {
            wanted.entry(metric.name).or_default().insert(query.place.clone());
        }
    }
    assert!(wanted.len() >= 10, "the dashboard's queries name encore metrics: {wanted:?}");

    let tansu = Tansu::start().expect("start Tansu (see encore-testkit)");
    tansu.create_topic(TOPIC, PARTITIONS).expect("create the topic");
    let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
    let dir = std::env::temp_dir().join(format!("encore-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let mix = LineMix { users: 10, tracks: 12, lines: 200, window_seconds: 300, invalid_percent: 5 };
    let lines: Vec<Vec<u8>> = testing::generate(9, &mix).into_iter().map(|line| line.bytes).collect();
    produce(&tansu, &lines, 0);

    let (mut children, zero) = start_until(&tansu, &postgres, &dir, &["127.0.0.1:0", "127.0.0.1:0"], "process 0's first commit", |s| {
        s.value("encore_commits_total", &[]).is_some_and(|commits| commits >= 1.0)
    });
    let address = children[1].metrics.clone();
    let one = scrape_until(&address, &mut children, "process 1 live", |s| s.value("encore_replaying_workers", &[]) == Some(0.0));
    interrupt(children);
    let _ = std::fs::remove_dir_all(&dir);

    let served = |name: &str| {
        [&zero, &one].iter().any(|scrape| {
            scrape.has_family(name)
                || scrape.samples.iter().any(|sample| sample.name == name)
                || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|base| scrape.families.get(base).is_some_and(|f| f.1.as_deref() == Some("histogram")))
                })
        })
    };
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(name, _)| !served(name))
        .map(|(name, places)| format!("{name} (in {})", places.iter().cloned().collect::<Vec<_>>().join("; ")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} metric(s) the dashboard queries are not served by encore-flow:\n  {}\nserved families: {:?}",
        missing.len(),
        missing.join("\n  "),
        zero.families.keys().chain(one.families.keys()).collect::<BTreeSet<_>>()
    );
}
