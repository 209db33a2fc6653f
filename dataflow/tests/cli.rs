//! `encore-flow` as users run it: `--input FILE --output-dir DIR` as one and as two OS
//! processes, the CSV files against the oracle, and clear one-line errors for bad flags and
//! unreachable services.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use encore_dataflow::tables::Params;
use encore_dataflow::testing::assert_one_line_error;
use encore_dataflow::testing::{self, oracle};
use encore_testkit::processes::wait_all;
use encore_testkit::{free_port, retry_on_taken_port};

fn flow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_encore-flow"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("encore-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Starts `encore-flow ARGS -n 2 -p i -h HOSTFILE` for i = 0, 1 (a fresh hostfile in `dir`).
/// The processes bind the hostfile's ports after it is written, so a port can be taken in
/// between: callers retry such a start ([`retry_on_taken_port`]).
fn spawn_two_processes(dir: &Path, args: &[&str]) -> Vec<Child> {
    let hostfile = dir.join("hosts");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port().expect("a free port"), free_port().expect("a free port")),
    )
    .unwrap();
    (0..2)
        .map(|process| {
            flow()
                .args(args)
                .args(["-n", "2", "-p", &process.to_string(), "-h", hostfile.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn encore-flow")
        })
        .collect()
}

const SMALL: [&str; 12] =
    ["--history-cap", "4", "--min-co", "1", "--neighbors", "3", "--recommendations", "3", "--count-bits", "2", "--epoch-events", "97"];

#[test]
fn one_and_two_processes_write_the_same_tables_as_the_oracle() {
    let dir = scratch("processes");
    let lines = testing::random_lines(5, 2_500);
    let input = dir.join("events.jsonl");
    testing::write_lines(&input, &lines);

    let single = dir.join("single");
    let output = flow()
        .args(["--input", input.to_str().unwrap(), "--output-dir", single.to_str().unwrap(), "--emit-co-listens"])
        .args(SMALL)
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("events=2500"), "summary line: {summary}");

    let pair = dir.join("pair");
    let mut args = vec!["--input", input.to_str().unwrap(), "--output-dir", pair.to_str().unwrap(), "--emit-co-listens"];
    args.extend(SMALL);
    retry_on_taken_port(|_| wait_all(spawn_two_processes(&dir, &args), Duration::from_secs(300)))
        .unwrap_or_else(|stderr| panic!("{stderr}"));

    for table in ["track_neighbors", "user_recommendations", "track_stats", "co_listens", "dead_letters"] {
        let file = format!("{table}.csv");
        assert_eq!(read(&single.join(&file)), read(&pair.join(&file)), "{table}: 1 process vs 2 processes");
    }

    // And the CSV equals the oracle, score for score.
    let params = Params { history_cap: 4, min_co: 1, neighbors: 3, recommendations: 3, score_precision: 4, count_bits: 2 };
    let (events, invalid) = testing::parse_lines(&lines);
    let want = oracle::compute(&events, &params);
    // One line per member, by track and then in rank order (SPEC §4).
    let mut expected = String::from("track_id,neighbor_id,score\n");
    for (i, list) in encore_dataflow::tables::lists_by_key(&want.track_neighbors) {
        for (j, units) in list {
            expected.push_str(&format!("{i},{j},{}\n", units as f64 / 1e4));
        }
    }
    assert_eq!(read(&single.join("track_neighbors.csv")), expected);
    let dead = read(&single.join("dead_letters.csv"));
    assert_eq!(dead.lines().count(), invalid.len() + 1, "a dead letter per invalid line");
    assert!(dead.starts_with("topic,kafka_partition,kafka_offset,error\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_fail_with_one_line() {
    let output = flow().args(["--input", "/nonexistent/events.jsonl", "--output-dir", "/tmp/x"]).output().unwrap();
    assert_one_line_error(&output, "/nonexistent/events.jsonl");

    let output = flow().args(["--input", "x", "--output-dir", "y", "-n", "2", "-p", "2"]).output().unwrap();
    assert_one_line_error(&output, "-p 2");

    let output = flow().args(["--input", "x", "--postgres", "postgres://nowhere/x"]).output().unwrap();
    assert_one_line_error(&output, "--input with --postgres");

    // A --kafka-config file that cannot be read, or names another cluster, stops the start
    // before any connection (the Postgres URL leads nowhere).
    let dir = scratch("kafka-config");
    let config = dir.join("client.properties");
    let kafka = |config: &Path| {
        let config = config.to_str().unwrap().to_owned();
        flow()
            .args(["--brokers", "127.0.0.1:9", "--topic", "t", "--postgres", "postgres://nowhere/x", "--kafka-config", &config])
            .output()
            .unwrap()
    };
    assert_one_line_error(&kafka(&config), "cannot read --kafka-config");
    std::fs::write(&config, "bootstrap.servers=elsewhere:9092\n").unwrap();
    assert_one_line_error(&kafka(&config), "line 1: bootstrap.servers=elsewhere:9092 differs from --brokers 127.0.0.1:9");
    let _ = std::fs::remove_dir_all(&dir);

    // clap's own usage errors: non-zero, and the first line says what is wrong.
    let output = flow().args(["--input", "x"]).output().unwrap();
    assert!(!output.status.success());
    let output = flow().args(["--input", "x", "--output-dir", "y", "--score-precision", "99"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("score-precision"));

    let help = flow().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--brokers", "--postgres", "--input", "--output-dir", "--until-caught-up", "-h, --hostfile", "--history-cap"] {
        assert!(text.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn unreachable_services_fail_with_one_line_in_bounded_time() {
    let dead_port = free_port().expect("a free port");
    let started = Instant::now();
    let output = flow()
        .args(["--brokers", "127.0.0.1:9", "--topic", "t", "--postgres", &format!("postgres://postgres@127.0.0.1:{dead_port}/x")])
        .output()
        .unwrap();
    assert_one_line_error(&output, "Postgres");
    assert!(started.elapsed() < Duration::from_secs(120), "bounded retries, not a hang");

    let postgres = encore_testkit::Postgres::start().expect("start PostgreSQL");
    let output =
        flow().args(["--brokers", &format!("127.0.0.1:{dead_port}"), "--topic", "t", "--postgres", &postgres.url()]).output().unwrap();
    assert_one_line_error(&output, "Kafka");
}

/// A peer process lost mid-run: the survivor exits non-zero at once with one line.
#[test]
fn a_lost_peer_process_stops_the_others() {
    let dir = scratch("peer");
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-latest-small/events.jsonl");
    let out = dir.join("out");
    // Both running 1.5 s after the start; again on fresh ports if one ended for a port taken.
    let mut processes = retry_on_taken_port(|_| {
        let mut processes = spawn_two_processes(&dir, &["--input", input, "--output-dir", out.to_str().unwrap(), "--epoch-events", "1000"]);
        std::thread::sleep(Duration::from_millis(1_500));
        match processes.iter_mut().position(|child| child.try_wait().unwrap().is_some()) {
            None => Ok(processes),
            Some(ended) => {
                for child in &mut processes {
                    let _ = child.kill();
                }
                let output = processes.swap_remove(ended).wait_with_output().expect("wait");
                Err(format!("process {ended} ended before process 1 was killed: {}", String::from_utf8_lossy(&output.stderr)))
            }
        }
    })
    .unwrap_or_else(|ended| panic!("{ended}"));
    let mut peer = processes.pop().expect("process 1");
    peer.kill().expect("kill -9 process 1");
    let _ = peer.wait();
    let started = Instant::now();
    let output = processes.pop().expect("process 0").wait_with_output().expect("wait");
    assert_one_line_error(&output, "lost a peer process");
    assert!(started.elapsed() < Duration::from_secs(60), "the survivor does not hang");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C while a process still waits for its peers (timely retries the connection without
/// end): it exits at once with one line rather than after the launcher's patience runs out.
#[test]
fn an_interrupt_while_connecting_to_peers_exits_at_once() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    /// Kills the process if the test fails before it ends.
    struct Reap(Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let postgres = encore_testkit::Postgres::start().expect("start PostgreSQL");
    let tansu = encore_testkit::Tansu::start().expect("start Tansu");
    tansu.create_topic("t", 1).expect("create topic");
    let dir = scratch("connecting");
    let hosts = dir.join("hosts");
    // Process 1 alone: process 0 never comes. Again on fresh ports if process 1 ended because
    // its port was taken after the hostfile was written.
    let mut child = retry_on_taken_port(|_| {
        std::fs::write(
            &hosts,
            format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port().expect("a free port"), free_port().expect("a free port")),
        )
        .unwrap();
        let mut child = Reap(
            flow()
                .args(["--brokers", &tansu.brokers(), "--topic", "t", "--postgres", &postgres.url()])
                .args(["-n", "2", "-p", "1", "-h", hosts.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn encore-flow"),
        );
        // timely reports each failed attempt on stdout.
        let (lines, received) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(|line| drop(lines.send(line))));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = received.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            match line {
                Ok(line) if line.contains("error connecting to worker 0") => return Ok(child),
                Ok(_) => {}
                Err(_) => {
                    let _ = child.0.kill();
                    let mut stderr = String::new();
                    let _ = child.0.stderr.take().expect("stderr").read_to_string(&mut stderr);
                    return Err(format!("process 1 never tried to connect to process 0: {stderr}"));
                }
            }
        }
    })
    .unwrap_or_else(|failed| panic!("{failed}"));
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still running 30 s after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.0.stderr.take().expect("stderr").read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("encore-flow: interrupted while connecting"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
