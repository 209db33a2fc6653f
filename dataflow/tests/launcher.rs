//! `deploy/launch.sh`, the multi-host launcher, as users run it, on two loopback addresses
//! (127.0.0.2 and 127.0.0.3: each process binds the address of its own hostfile line):
//!
//! * a file-input run as 2 processes equals a 1-process run and the oracle, every output line
//!   prefixed with its process and host; the same through the ssh path (a stand-in `ssh` that
//!   runs the remote command with `sh` on this machine, so the quoting, the hostfile sent
//!   along, the remote wrapper and its exit status are the real ones);
//! * a process that cannot bind its port fails the run: the launcher names it, stops the
//!   other (which would otherwise wait for its peer forever) and exits 1, nothing left running;
//! * Ctrl-C (SIGINT to the launcher) in a Kafka → Postgres run, locally and through the ssh
//!   path (whose stop is EOF on the remote wrapper's stdin): every process commits and exits 0,
//!   the launcher exits 0, and the tables equal the oracle over every message;
//! * usage errors: one `launch: error:` line and status 2;
//! * `--dry-run` prints the exact ssh command for a remote host; a POSIX shell reads it back
//!   into the intended arguments.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use encore_dataflow::sink::postgres::{PgSink, RetryPolicy};
use encore_dataflow::tables::Params;
use encore_dataflow::testing::assert_tables_eq;
use encore_dataflow::testing::{self, oracle};
use encore_testkit::{free_port_on, free_ports_on, retry_on_taken_port, Postgres, Tansu};

const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/launch.sh");
const FLOW: &str = env!("CARGO_BIN_EXE_encore-flow");
const TOPIC: &str = "music_streaming_data";
const PARAMS: Params = Params { history_cap: 4, min_co: 1, neighbors: 3, recommendations: 3, score_precision: 4, count_bits: 5 };
const SMALL: [&str; 8] = ["--history-cap", "4", "--min-co", "1", "--neighbors", "3", "--recommendations", "3"];
const TABLES: [&str; 4] = ["track_neighbors", "user_recommendations", "track_stats", "dead_letters"];

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("encore-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes a hostfile of `host:port` lines and returns its path.
    fn hostfile(&self, lines: &[String]) -> String {
        let path = self.path("hosts");
        std::fs::write(&path, lines.join("\n") + "\n").expect("hostfile");
        path.display().to_string()
    }

    /// A stand-in for ssh: records its options and host, then runs the remote command with
    /// `sh` here, as sshd hands it to the login shell.
    fn fake_ssh(&self) -> String {
        let path = self.path("ssh");
        let log = self.str("ssh.log");
        let script = format!(
            "#!/bin/sh\nwhile [ \"$1\" = -o ]; do echo \"option $2\" >>'{log}'; shift 2; done\necho \"host $1\" >>'{log}'\nshift\nexec sh -c \"$*\"\n"
        );
        std::fs::write(&path, script).expect("fake ssh");
        let status = Command::new("chmod").arg("+x").arg(&path).status().expect("chmod");
        assert!(status.success());
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn launcher() -> Command {
    // Through `env --default-signal=INT`: a shell cannot trap a signal it was started with
    // ignored, and a test run started in the background of a non-interactive shell
    // (`.ci/run &`) hands SIGINT down ignored; the launcher's Ctrl-C stop would then never
    // come, and the tests that send it would hang.
    let mut command = Command::new("env");
    command.args(["--default-signal=INT", "bash", LAUNCHER, "--bin", FLOW]);
    command
}

/// Writes a hostfile of fresh ports on 127.0.0.2 and 127.0.0.3 and returns its path. The
/// processes bind them after the launch, so a port can be taken in between: runs on a hostfile
/// are retried on a fresh one when that happens ([`on_fresh_ports`]).
fn fresh_hosts(scratch: &Scratch) -> String {
    scratch.hostfile(&[
        format!("127.0.0.2:{}", free_port_on("127.0.0.2").expect("a free port")),
        format!("127.0.0.3:{}", free_port_on("127.0.0.3").expect("a free port")),
    ])
}

/// A launcher run that failed: its output.
struct Failed(Output);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

/// `run(hostfile)` on a fresh hostfile, again on fresh ports (a few times) while it fails
/// because a port was taken between its choice and the bind; the last run's output.
fn on_fresh_ports(scratch: &Scratch, mut run: impl FnMut(&str) -> Output) -> Output {
    let outcome = retry_on_taken_port(|_| {
        let output = run(&fresh_hosts(scratch));
        if output.status.success() {
            Ok(output)
        } else {
            Err(Failed(output))
        }
    });
    outcome.unwrap_or_else(|Failed(output)| output)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!("status {}\nstdout:\n{}\nstderr:\n{}", output.status, text(&output.stdout), text(&output.stderr))
}

fn write_input(scratch: &Scratch, lines: &[Vec<u8>]) -> String {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    std::fs::write(scratch.path("events.jsonl"), bytes).expect("input");
    scratch.str("events.jsonl")
}

/// The output of the launcher `command`, run with stdout and stderr captured, once it exits. A launcher still running after 300 s
/// (e.g. one that never stops a waiting process) is killed and the test fails: a guard
/// against a hang, not a speed requirement.
fn finished(command: &mut Command) -> Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the launcher");
    let pid = child.id().to_string();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(Duration::from_secs(300)) {
        Ok(output) => output.expect("the launcher's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the launcher did not finish within 300 s");
        }
    }
}

/// Pids of the live encore-flow processes whose command line mentions `marker` (a scratch
/// directory, unique to one test).
fn flow_processes_mentioning(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = text(&cmdline).replace('\0', " ");
        if cmdline.contains("encore-flow") && cmdline.contains(marker) && !cmdline.contains("launch.sh") {
            pids.push(pid);
        }
    }
    pids
}

/// Every stdout line comes from a process: `[p<i> <host>] …` with one of `prefixes`.
fn assert_prefixed(output: &Output, prefixes: &[&str]) {
    let stdout = text(&output.stdout);
    assert!(!stdout.is_empty(), "the processes printed something");
    for line in stdout.lines() {
        assert!(prefixes.iter().any(|prefix| line.starts_with(prefix)), "unprefixed line {line:?} in\n{stdout}");
    }
}

/// The CSV tables of a file-input run.
fn tables(dir: &Path) -> Vec<String> {
    TABLES.iter().map(|table| read(&dir.join(format!("{table}.csv")))).collect()
}

#[test]
fn two_hosts_write_what_one_process_writes_locally_and_over_ssh() {
    let scratch = Scratch::new("file");
    let lines = testing::random_lines(11, 3_000);
    let input = write_input(&scratch, &lines);
    let hosts = scratch.str("hosts");

    let single = scratch.str("single");
    let output = Command::new(FLOW).args(["--input", &input, "--output-dir", &single]).args(SMALL).output().expect("run");
    assert!(output.status.success(), "{}", describe(&output));

    // Locally: both addresses are loopback, so no ssh.
    let local = scratch.str("local");
    let logs = scratch.str("logs");
    let output = on_fresh_ports(&scratch, |hosts| {
        finished(launcher().args(["-w", "2", "--log-dir", &logs, hosts, "--", "--input", &input, "--output-dir", &local]).args(SMALL))
    });
    assert!(output.status.success(), "{}", describe(&output));
    assert_prefixed(&output, &["[p0 127.0.0.2] ", "[p1 127.0.0.3] "]);
    assert!(text(&output.stdout).contains("[p0 127.0.0.2] events=3000 "), "p0's summary line, prefixed");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("(local, pid "), "{stderr}");
    assert!(stderr.contains(&format!("-n 2 -p 1 -h {hosts} -w 2")), "the flags the launcher adds: {stderr}");
    assert!(stderr.contains("launch: all 2 processes exited 0"), "{stderr}");
    assert!(read(&Path::new(&logs).join("p0.log")).contains("[p0 127.0.0.2] events=3000 "));
    assert!(!read(&Path::new(&logs).join("p1.log")).contains("[p0"), "p1's log holds p1's lines");
    assert_eq!(tables(Path::new(&local)), tables(Path::new(&single)), "2 processes × 2 workers = 1 process");

    // The oracle, for the single run (and so for both).
    let (events, _) = testing::parse_lines(&lines);
    let want = oracle::compute(&events, &PARAMS);
    // One line per member, by track and then in rank order (SPEC §4).
    let mut expected = String::from("track_id,neighbor_id,score\n");
    for (i, list) in encore_dataflow::tables::lists_by_key(&want.track_neighbors) {
        for (j, units) in list {
            expected.push_str(&format!("{i},{j},{}\n", units as f64 / 1e4));
        }
    }
    assert_eq!(read(&Path::new(&single).join("track_neighbors.csv")), expected);

    // Through the ssh path: the remote wrapper writes the hostfile it is sent and runs
    // encore-flow in --remote-dir, where the relative input path is resolved.
    std::fs::copy(&input, scratch.path("remote-events.jsonl")).expect("copy input");
    let ssh = scratch.fake_ssh();
    let remote = scratch.str("remote");
    let output = on_fresh_ports(&scratch, |hosts| {
        finished(
            launcher()
                .args(["--always-ssh", "--ssh", &ssh, "-o", "ConnectTimeout=5", "--remote-dir", &scratch.str(""), hosts])
                .args(["--", "--input", "remote-events.jsonl", "--output-dir", &remote])
                .args(SMALL),
        )
    });
    assert!(output.status.success(), "{}", describe(&output));
    assert_prefixed(&output, &["[p0 127.0.0.2] ", "[p1 127.0.0.3] "]);
    assert!(text(&output.stderr).contains("(ssh, pid "));
    assert_eq!(tables(Path::new(&remote)), tables(Path::new(&single)), "over ssh = 1 process");
    let ssh_log = read(&scratch.path("ssh.log"));
    for expected in ["option BatchMode=yes", "option ConnectTimeout=5", "host 127.0.0.2", "host 127.0.0.3"] {
        assert!(ssh_log.lines().any(|line| line == expected), "{expected:?} in the ssh calls:\n{ssh_log}");
    }
}

/// Runs the launcher over a hostfile in which `blocked` (0 or 1) names a port this test
/// holds, so that process cannot bind it and fails.
fn run_with_a_blocked_port(blocked: usize) -> (Output, String) {
    let scratch = Scratch::new(&format!("blocked-{blocked}"));
    let hosts = ["127.0.0.2", "127.0.0.3"];
    let holder = TcpListener::bind((hosts[blocked], 0)).expect("hold a port");
    let held = holder.local_addr().expect("address").port();
    let lines: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(p, host)| format!("{host}:{}", if p == blocked { held } else { free_port_on(host).expect("a free port") }))
        .collect();
    let hostfile = scratch.hostfile(&lines);
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-latest-small/events.jsonl");
    let output = finished(launcher().args(["--grace", "30", &hostfile, "--", "--input", input, "--output-dir", &scratch.str("out")]));
    let left = flow_processes_mentioning(&scratch.str(""));
    assert!(left.is_empty(), "encore-flow processes left running: {left:?}\n{}", describe(&output));
    drop(holder);
    (output, scratch.str(""))
}

#[test]
fn a_process_that_cannot_bind_fails_the_run_and_is_named() {
    // p1 cannot bind: p0 loses its peer and exits too; the launcher names p1 as the cause
    // (p0's last line says it lost a peer).
    let (output, _) = run_with_a_blocked_port(1);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = text(&output.stderr);
    let failed: Vec<&str> = stderr.lines().filter(|line| line.starts_with("launch: failed: ")).collect();
    assert_eq!(failed.len(), 1, "one cause named:\n{stderr}");
    assert!(failed[0].starts_with("launch: failed: p1 on 127.0.0.3 exited with status 1; last line: [p1 127.0.0.3] "), "{stderr}");
    assert!(failed[0].contains("Address already in use"), "{stderr}");
    // p0 ended too, on its own (a lost peer) or stopped by the launcher: either way reported.
    let after = stderr.split_once(failed[0]).expect("the failed line").1;
    assert!(after.lines().any(|line| line.contains("p0 on 127.0.0.2 ")), "{stderr}");
}

#[test]
fn a_failed_process_makes_the_launcher_stop_the_others() {
    // p0 cannot bind; p1 connects to the port this test holds (it is listening, never
    // answers) and would wait for its peer forever: the launcher stops it with SIGINT.
    let (output, _) = run_with_a_blocked_port(0);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("launch: failed: p0 on 127.0.0.2 exited with status 1; last line: [p0 127.0.0.2] "), "{stderr}");
    assert!(stderr.contains("launch: stopping p1 (SIGINT"), "{stderr}");
    assert!(stderr.contains("launch: p1 on 127.0.0.3 was killed by SIGINT"), "{stderr}");
}

/// Produces `lines` as message values spread over the topic's partitions.
fn produce(tansu: &Tansu, lines: &[Vec<u8>]) {
    tansu.produce(TOPIC, lines, |_| None, false).expect("all messages delivered");
}

/// Messages committed so far (0 while the tables do not exist yet).
fn committed(postgres: &Postgres) -> i64 {
    let quick = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    PgSink::connect(&postgres.url(), "public", PARAMS.score_precision, false, quick)
        .and_then(|mut sink| sink.committed_offsets(TOPIC))
        .map(|offsets| offsets.values().sum())
        .unwrap_or(0)
}

/// The sums of `replayed=`, `restored=` and `consumed=` over the summary lines of p0 and p1, each of
/// which must be there exactly once, prefixed.
fn summaries(stdout: &str) -> (u64, u64, u64) {
    let field = |line: &str, name: &str| -> u64 {
        line.split(' ')
            .find_map(|word| word.strip_prefix(name))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
    };
    let mut sums = (0, 0, 0);
    for (p, host) in [(0, "127.0.0.2"), (1, "127.0.0.3")] {
        let prefix = format!("[p{p} {host}] process={p} ");
        let lines: Vec<&str> = stdout.lines().filter(|line| line.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 1, "one summary line of p{p} in\n{stdout}");
        sums.0 += field(lines[0], "replayed=");
        sums.1 += field(lines[0], "restored=");
        sums.2 += field(lines[0], "consumed=");
    }
    sums
}

/// The response to `GET /metrics` from `address`.
fn scrape(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: encore\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    response
}

/// Waits until `total` messages are committed (the run goes on: no --until-caught-up), then
/// runs `while_running`, sends SIGINT to the launcher and returns its output.
/// A launcher that ends before the stop is returned as [`Failed`] (to be retried if a port
/// was taken).
fn interrupt_once_committed(mut launcher: Child, postgres: &Postgres, total: i64, while_running: impl FnOnce()) -> Result<Output, Failed> {
    // A guard against a hang, not a speed requirement.
    let deadline = Instant::now() + Duration::from_secs(300);
    while committed(postgres) < total {
        if launcher.try_wait().expect("poll the launcher").is_some() {
            return Err(Failed(launcher.wait_with_output().expect("output")));
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-INT", &launcher.id().to_string()]).status();
            panic!("not caught up after 300 s:\n{}", describe(&launcher.wait_with_output().expect("output")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    while_running();
    let status = Command::new("kill").args(["-INT", &launcher.id().to_string()]).status().expect("kill -INT");
    assert!(status.success());
    Ok(launcher.wait_with_output().expect("the launcher exits"))
}

#[test]
fn ctrl_c_commits_and_exits_zero_locally_and_over_ssh() {
    let scratch = Scratch::new("kafka");
    let tansu = Tansu::start().expect("start Tansu (see encore-testkit)");
    tansu.create_topic(TOPIC, 4).expect("create the topic");
    let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
    let lines = testing::random_lines(23, 4_000);
    let (first, second) = lines.split_at(2_500);
    let brokers = tansu.brokers();
    let url = postgres.url();
    let flow_args = |command: &mut Command| {
        command
            .args(["--", "--brokers", &brokers, "--topic", TOPIC, "--postgres", &url, "--epoch-ms", "50", "--emit-co-listens"])
            .args(["--epoch-events", "300"])
            .args(SMALL)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    };

    // Locally: SIGINT goes straight to each encore-flow. The hostfile's and the metrics ports
    // are chosen before the processes bind them: a run that finds one taken meanwhile ends
    // before committing anything and is retried on fresh ports.
    produce(&tansu, first);
    let mut scraped = String::new();
    let output = retry_on_taken_port(|_| {
        let hosts = fresh_hosts(&scratch);
        // --metrics-port: process p serves metrics at the port + p, on loopback.
        let metrics_port = free_ports_on("127.0.0.1", 2).expect("two free ports");
        let mut command = launcher();
        command.args(["--metrics-port", &metrics_port.to_string(), &hosts]);
        flow_args(&mut command);
        interrupt_once_committed(command.spawn().expect("launcher"), &postgres, first.len() as i64, || {
            scraped = scrape(&format!("127.0.0.1:{}", metrics_port + 1));
        })
    })
    .unwrap_or_else(|failed| panic!("the launcher ended before the stop: {failed}"));
    assert!(scraped.starts_with("HTTP/1."), "{scraped}");
    assert!(scraped.contains("encore_events_consumed_total{") && scraped.contains("process=\"1\""), "p1's metrics: {scraped}");
    assert!(output.status.success(), "a clean Ctrl-C stop exits 0: {}", describe(&output));
    assert_prefixed(&output, &["[p0 127.0.0.2] ", "[p1 127.0.0.3] "]);
    let stdout = text(&output.stdout);
    assert_eq!(summaries(&stdout), (0, 0, first.len() as u64), "replayed, restored and consumed, both processes");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("launch: stopping p0 p1 (SIGINT"), "{stderr}");
    assert!(stderr.contains("launch: all 2 processes exited 0"), "{stderr}");

    // Through the ssh path: the stop is EOF on the remote wrapper's stdin, which sends SIGINT.
    produce(&tansu, second);
    let ssh = scratch.fake_ssh();
    let output = retry_on_taken_port(|_| {
        let mut command = launcher();
        command.args(["--always-ssh", "--ssh", &ssh, &fresh_hosts(&scratch)]);
        flow_args(&mut command);
        interrupt_once_committed(command.spawn().expect("launcher"), &postgres, lines.len() as i64, || ())
    })
    .unwrap_or_else(|failed| panic!("the launcher ended before the stop over ssh: {failed}"));
    assert!(output.status.success(), "a clean Ctrl-C stop over ssh exits 0: {}", describe(&output));
    let stdout = text(&output.stdout);
    // The second run loads the state of the first (nothing replayed) and consumes the rest.
    let (replayed, restored, consumed) = summaries(&stdout);
    assert_eq!((replayed, consumed), (0, second.len() as u64), "the second run resumes");
    assert!(restored > 0, "from the state of the first run's messages");
    assert!(flow_processes_mentioning(&scratch.str("")).is_empty() && flow_processes_mentioning(&url).is_empty());

    // The launcher killed outright (SIGKILL, no chance to stop anyone): its local processes
    // get SIGINT from the kernel and stop, rather than run on unattended.
    let mut command = launcher();
    command.arg(fresh_hosts(&scratch));
    flow_args(&mut command);
    let mut killed = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("launcher");
    let deadline = Instant::now() + Duration::from_secs(60);
    while flow_processes_mentioning(&url).len() < 2 {
        assert!(Instant::now() < deadline, "both processes start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    killed.kill().expect("kill -9 the launcher");
    killed.wait().expect("reap the launcher");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !flow_processes_mentioning(&url).is_empty() {
        if Instant::now() > deadline {
            let left = flow_processes_mentioning(&url);
            for pid in &left {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            panic!("still running 60 s after the launcher died: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Exactly once across the three runs and their stops.
    let mut sink = PgSink::connect(&url, "public", PARAMS.score_precision, true, RetryPolicy::default()).expect("connect");
    let (tables, dead_letters) = sink.read_tables().expect("read tables");
    let (events, invalid) = testing::parse_lines(&lines);
    assert_tables_eq(&tables, &oracle::compute(&events, &PARAMS), "after two launches");
    assert_eq!(dead_letters.len(), invalid.len(), "each invalid message once");
}

/// The launcher killed outright (SIGKILL: no trap runs) with both kinds of child running: a
/// local process, which its parent-death signal stops, and one through the ssh path (a host
/// that is not this machine, reached by the stand-in ssh), whose remote wrapper sees its
/// stdin close and stops it. Every process the launcher started, prefixers and the ssh
/// chain included, must end. A stand-in for encore-flow keeps it cheap; the real one is
/// killed so in `ctrl_c_commits_and_exits_zero_locally_and_over_ssh`.
#[test]
fn a_killed_launcher_leaves_nothing_running() {
    use encore_testkit::processes;

    let scratch = Scratch::new("killed");
    let stand_in = scratch.path("encore-flow");
    std::fs::write(&stand_in, encore_testkit::processes::STAND_IN).expect("stand-in");
    let status = Command::new("chmod").arg("+x").arg(&stand_in).status().expect("chmod");
    assert!(status.success());
    let stand_in = stand_in.display().to_string();
    let ssh = scratch.fake_ssh();
    let hosts =
        scratch.hostfile(&[format!("127.0.0.2:{}", free_port_on("127.0.0.2").expect("a free port")), "remote.invalid:2101".to_owned()]);
    let logs = scratch.str("logs");
    let file = |name: &str| std::fs::File::create(scratch.path(name)).expect("output file");
    let mut launched = processes::TermOnDrop::new(
        launcher()
            .args(["--bin", &stand_in, "--ssh", &ssh, "--log-dir", &logs, &hosts, "--", "--input", "x"])
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .expect("launcher"),
    );
    let said = || read(&scratch.path("stderr"));

    // Both started, each its own way, and both stand-ins run (the remote one under ssh, sh
    // and the wrapper). The deadline guards against a hang, not a speed requirement.
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = |stderr: &str| stderr.contains("p0 on 127.0.0.2 (local, pid ") && stderr.contains("p1 on remote.invalid (ssh, pid ");
    let children = loop {
        let children = processes::descendants(launched.get().id());
        // `bash SCRIPT ARGS`, as the kernel runs a script through its #! line.
        let running = children.iter().filter(|p| p.command_line().starts_with(&format!("bash {stand_in} "))).count();
        if running == 2 && started(&said()) {
            break children;
        }
        assert!(launched.get().try_wait().expect("poll").is_none(), "the launcher ended:\n{}", said());
        assert!(Instant::now() < deadline, "{running} stand-ins running:\n{}", said());
        std::thread::sleep(Duration::from_millis(50));
    };
    // The remote wrapper (`bash -c SCRIPT encore-launch …`, which the stand-in ssh runs here).
    let command_lines: Vec<String> = children.iter().map(|p| p.command_line()).collect();
    assert!(command_lines.iter().any(|line| line.starts_with("bash -c ") && line.contains(" encore-launch ")), "{command_lines:#?}");

    let mut launched = launched.take();
    launched.kill().expect("kill -9 the launcher");
    launched.wait().expect("reap the launcher");
    if let Err(left) = processes::wait_until_gone(&children, Duration::from_secs(60)) {
        panic!("still running 60 s after the launcher was killed: {left:?}\n{}", said());
    }
    // Stopped by SIGINT from the kernel (local) and from the wrapper (remote), not by the
    // launcher, which had no chance to say so.
    assert!(!said().contains("launch: stopping"), "{}", said());
    for (p, host) in [(0, "127.0.0.2"), (1, "remote.invalid")] {
        let log = read(&Path::new(&logs).join(format!("p{p}.log")));
        assert!(log.contains(&format!("[p{p} {host}] stand-in ended by SIGINT")), "p{p}: {log}");
    }
}

/// Runs the launcher with `args` and asserts a usage error: status 2, nothing on stdout, one
/// `launch: error:` line containing `expected`.
fn assert_usage_error(args: &[&str], expected: &str) {
    let output = launcher().args(args).output().expect("run the launcher");
    assert_eq!(output.status.code(), Some(2), "{args:?}: {}", describe(&output));
    assert!(output.stdout.is_empty(), "{args:?}: nothing started");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(stderr.starts_with("launch: error: ") && stderr.contains(expected), "{args:?}: {expected:?} in {stderr}");
}

#[test]
fn bad_hostfiles_and_flags_are_one_line_errors() {
    let scratch = Scratch::new("errors");
    let flags = ["--", "--input", "x", "--output-dir", "y"];
    let with = |hostfile: &str, extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.push(hostfile.to_owned());
        args.extend(flags.iter().map(|s| s.to_string()));
        args
    };
    let check = |contents: Option<&str>, extra: &[&'static str], expected: &str| {
        let path = scratch.path("hosts");
        let _ = std::fs::remove_file(&path);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).expect("hostfile");
        }
        let args = with(&path.display().to_string(), extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&args, expected);
    };

    check(None, &[], "does not exist");
    check(Some(""), &[], "names no process");
    check(Some("# only a comment\n\n"), &[], "names no process");
    check(Some("127.0.0.2:2101\n127.0.0.3\n"), &[], "line 2: expected host:port");
    check(Some("127.0.0.2:2101 127.0.0.3:2101\n"), &[], "line 1: expected host:port");
    check(Some("# cluster\n127.0.0.2:0\n"), &[], "line 2: port 0 is not in 1-65535");
    check(Some("127.0.0.2:99999\n"), &[], "port 99999");
    check(Some("::1:2101\n"), &[], "IPv6 as [address]:port");
    check(Some("127.0.0.2:2101\n127.0.0.2:2101\n"), &[], "line 2: 127.0.0.2:2101 is already line 1");
    check(Some("127.0.0.2:2101\n"), &["-w", "0"], "--workers must be a positive number");
    check(Some("127.0.0.2:2101\n"), &["--grace", "soon"], "--grace must be a number");
    check(Some("127.0.0.2:2101\n"), &["--frobnicate"], "unknown option '--frobnicate'");
    check(Some("127.0.0.2:2101\n"), &["--bin", "/nonexistent/encore-flow"], "/nonexistent/encore-flow does not exist");

    std::fs::write(scratch.path("hosts"), "127.0.0.2:2101\n").expect("hostfile");
    let hosts = scratch.str("hosts");
    assert_usage_error(&[], "no hostfile given");
    assert_usage_error(&[&hosts], "no encore-flow flags: put them after --");
    assert_usage_error(&[&hosts, "--"], "no encore-flow flags");
    assert_usage_error(&[&hosts, "other", "--", "--input", "x"], "one hostfile only");
    assert_usage_error(&[&hosts, "-w"], "-w needs a value");
    for flag in ["-n", "-p", "-h", "-w", "--processes", "--process=1", "--hostfile", "--workers"] {
        assert_usage_error(&[&hosts, "--", "--input", "x", flag, "2"], "the launcher sets -n, -p, -h and -w itself");
    }

    let help = launcher().arg("--help").output().expect("help");
    assert!(help.status.success());
    let help = text(&help.stdout);
    for option in [
        "--workers",
        "--remote-bin",
        "--remote-dir",
        "--ssh CMD",
        "--ssh-option",
        "--dry-run",
        "--metrics-host",
        "0.0.0.0 (every interface)",
        "BatchMode=yes",
        "What a remote host needs",
    ] {
        assert!(help.contains(option), "--help mentions {option}");
    }
}

/// The words a shell reads from `command_line` (quotes removed), the program included.
fn shell_words(shell: &str, command_line: &str) -> Vec<String> {
    let script = format!("set -- {command_line}\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done");
    let output = Command::new(shell).arg("-c").arg(script).output().expect("run the shell");
    assert!(output.status.success(), "{}", describe(&output));
    let mut words: Vec<String> = text(&output.stdout).split('\0').map(str::to_owned).collect();
    assert_eq!(words.pop().as_deref(), Some(""), "every word ends with NUL");
    words
}

#[test]
fn dry_run_prints_the_exact_ssh_command_for_remote_hosts() {
    let scratch = Scratch::new("dry");
    let hosts = scratch.hostfile(&[
        "127.0.0.2:2101".to_owned(),
        "192.0.2.10:2101".to_owned(),
        "[2001:db8::7]:2102".to_owned(),
        "node-c.invalid:2101".to_owned(),
    ]);
    let output = Command::new("bash")
        .arg(LAUNCHER)
        .args(["--dry-run", "-w", "3", "--bin", "/nonexistent/here/encore-flow", "--remote-bin", "/opt/encore/encore-flow"])
        .args(["--remote-dir", "/srv/encore", "-o", "User=encore", &hosts])
        .args(["--", "--input", "my events.jsonl", "--output-dir", "it's/out"])
        .env("RUST_LOG", "encore_dataflow=info")
        .output()
        .expect("dry run");
    assert!(output.status.success(), "a dry run needs no binary: {}", describe(&output));
    let stdout = text(&output.stdout);
    let commands: Vec<&str> = stdout.split("\n# ").collect();
    assert_eq!(commands.len(), 4, "one command per hostfile line:\n{stdout}");

    // p0 is local: encore-flow itself, with the hostfile's local path.
    assert!(commands[0].starts_with("# p0 on 127.0.0.2 (local)\n"), "{stdout}");
    let local_line = commands[0].lines().nth(1).expect("p0's command");
    assert_eq!(
        shell_words("sh", local_line),
        [
            "/nonexistent/here/encore-flow",
            "--input",
            "my events.jsonl",
            "--output-dir",
            "it's/out",
            "-n",
            "4",
            "-p",
            "0",
            "-h",
            &hosts,
            "-w",
            "3"
        ]
    );

    // p1, p2 (IPv6) and p3 (a name that does not resolve here) go over ssh.
    for (p, host) in [(1, "192.0.2.10"), (2, "2001:db8::7"), (3, "node-c.invalid")] {
        let block = commands[p];
        assert!(block.starts_with(&format!("p{p} on {host} (ssh): in /srv/encore runs /opt/encore/encore-flow ")), "{block}");
        let ssh_line = block.split_once('\n').expect("the command follows").1;
        let ssh_words = shell_words("bash", ssh_line);
        assert_eq!(ssh_words[..6], ["ssh", "-o", "BatchMode=yes", "-o", "User=encore", host], "ssh's options and host");
        assert_eq!(ssh_words.len(), 7, "then one remote command: {ssh_words:?}");
        // What the remote login shell (POSIX sh) makes of that command: bash -c SCRIPT NAME ARGS.
        let remote = shell_words("sh", &ssh_words[6]);
        assert_eq!(remote[..2], ["bash", "-c"]);
        assert!(remote[2].contains("mktemp") && remote[2].contains("kill -$signal"), "the wrapper script");
        let hostfile_text = "127.0.0.2:2101\n192.0.2.10:2101\n[2001:db8::7]:2102\nnode-c.invalid:2101";
        let p_text = p.to_string();
        let want = [
            "encore-launch",
            "/srv/encore",
            "/opt/encore/encore-flow",
            hostfile_text,
            "60",
            "encore_dataflow=info",
            "--input",
            "my events.jsonl",
            "--output-dir",
            "it's/out",
            "-n",
            "4",
            "-p",
            &p_text,
            "-w",
            "3",
        ];
        assert_eq!(remote[3..], want, "the wrapper's arguments for p{p}");
    }

    // --metrics-port: the port + p on each host's loopback; --metrics-host exposes them, on
    // each process's own hostfile host or one address for all (IPv6 in brackets). --bin as
    // above: without it the launcher looks for a release build, which a fresh clone lacks.
    let metrics_dry_run = |extra: &[&str]| {
        let output = Command::new("bash")
            .arg(LAUNCHER)
            .args(["--dry-run", "--bin", "/nonexistent/here/encore-flow", "--metrics-port", "9464"])
            .args(extra)
            .arg(&hosts)
            .args(["--", "--brokers", "k:9092", "--topic", "t", "--postgres", "u"])
            .output()
            .expect("dry run");
        assert!(output.status.success(), "{}", describe(&output));
        text(&output.stdout)
    };
    let remote_p2 = |addr: &str| format!(" --metrics-addr {addr} -n 4 -p 2 -h <the hostfile, sent along> -w 1\n");
    let stdout = metrics_dry_run(&[]);
    assert!(stdout.contains(" --metrics-addr 127.0.0.1:9464 -n 4 -p 0 "), "{stdout}");
    assert!(stdout.contains("# p2 on 2001:db8::7 (ssh): in "), "{stdout}");
    assert!(stdout.contains(&remote_p2("127.0.0.1:9466")), "{stdout}");
    let stdout = metrics_dry_run(&["--metrics-host", "hostfile"]);
    assert!(stdout.contains(" --metrics-addr 127.0.0.2:9464 -n 4 -p 0 "), "{stdout}");
    assert!(stdout.contains(&remote_p2("[2001:db8::7]:9466")), "{stdout}");
    let stdout = metrics_dry_run(&["--metrics-host", "0.0.0.0"]);
    assert!(stdout.contains(" --metrics-addr 0.0.0.0:9464 -n 4 -p 0 "), "{stdout}");
    assert!(stdout.contains(&remote_p2("0.0.0.0:9466")), "{stdout}");
    assert!(metrics_dry_run(&["--metrics-host", "::"]).contains(&remote_p2("[::]:9466")));
    assert_usage_error(&[&hosts, "--metrics-port", "9464", "--", "--brokers", "k", "--metrics-addr", "x:1"], "do not pass --metrics-addr");
    assert_usage_error(&[&hosts, "--metrics-host", "0.0.0.0", "--", "--brokers", "k"], "--metrics-host needs --metrics-port");
    assert_usage_error(
        &[&hosts, "--metrics-port", "9464", "--metrics-host", "a b", "--", "--brokers", "k"],
        "--metrics-host must be an address",
    );
}
