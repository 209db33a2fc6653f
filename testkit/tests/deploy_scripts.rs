//! `deploy/start.sh` and `deploy/stop.sh` against the real servers: they start a working stack
//! on the ports they are given, are idempotent, and keep the topic across a restart with the
//! default (libsql file) storage. Each run uses its own state directory and free ports, so
//! it neither needs nor disturbs a stack a developer is running.
//!
//! `deploy/run.sh` builds and runs the real programs until Ctrl-C; here it runs against a
//! real stack with stand-ins for them (`ENCORE_BIN_DIR`), to check that killing it outright
//! takes its children along. Its checks of its settings (made before it starts anything)
//! and the `free_port` it picks the flow and metrics ports with are tested too; the quick
//! start itself is checked by running it.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use encore_testkit::free_port;
use encore_testkit::processes::{self, Process};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tempfile::TempDir;

const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const TOPIC: &str = "music_streaming_data";
const PARTITIONS: usize = 3;

/// A state directory and ports for one stack; `stop.sh` runs on drop, even after a failure.
struct Stack {
    state: TempDir,
    kafka_port: u16,
    pg_port: u16,
    tansu: PathBuf,
    pg_bin: PathBuf,
}

impl Stack {
    fn new() -> Stack {
        let state = tempfile::Builder::new().prefix("encore-deploy-").tempdir().expect("state directory");
        // As root the cluster runs as the postgres user, which must reach the state directory.
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod state directory");
        Stack {
            state,
            kafka_port: free_port().expect("a free port"),
            pg_port: free_port().expect("a free port"),
            // Resolved here so that the scripts never try to install anything from a test.
            tansu: encore_testkit::tansu_binary().expect("tansu installed"),
            pg_bin: encore_testkit::postgres_bin_dir().expect("postgres binaries installed"),
        }
    }

    /// `bash deploy/SCRIPT` with this stack's settings.
    fn command(&self, script: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(Path::new(DEPLOY_DIR).join(script))
            .env("ENCORE_STATE_DIR", self.state.path())
            .env("ENCORE_KAFKA_PORT", self.kafka_port.to_string())
            .env("ENCORE_PG_PORT", self.pg_port.to_string())
            .env("ENCORE_PARTITIONS", PARTITIONS.to_string())
            .env_remove("ENCORE_STORAGE")
            .env("TANSU_BIN", &self.tansu)
            .env("PG_BIN", &self.pg_bin);
        command
    }

    fn run(&self, script: &str) -> Output {
        let output = self.command(script).output().expect("bash runs");
        assert!(output.status.success(), "{script} failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    fn postgres_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    fn tansu_pid(&self) -> String {
        std::fs::read_to_string(self.state.path().join("tansu.pid")).expect("tansu.pid")
    }

    fn topic_partitions(&self) -> usize {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", self.brokers()).create().expect("client");
        let metadata = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(30)).expect("metadata");
        metadata.topics().iter().find(|topic| topic.name() == TOPIC && topic.error().is_none()).map_or(0, |topic| topic.partitions().len())
    }

    fn select_one(&self) -> i32 {
        let mut client = postgres::Client::connect(&self.postgres_url(), postgres::NoTls).expect("connect to the stack's postgres");
        client.query_one("SELECT 1", &[]).expect("query").get(0)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Path::new(DEPLOY_DIR).join("stop.sh"))
            .env("ENCORE_STATE_DIR", self.state.path())
            .env("PG_BIN", &self.pg_bin)
            .output();
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[test]
fn start_is_idempotent_and_stop_stops_everything() {
    let stack = Stack::new();
    let first = stack.run("start.sh");
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(
        printed.contains(&format!("--brokers {} --topic {TOPIC} --postgres {}", stack.brokers(), stack.postgres_url())),
        "start.sh prints the flags to use: {printed}"
    );
    assert_eq!(stack.select_one(), 1);
    assert_eq!(stack.topic_partitions(), PARTITIONS);
    let pid = stack.tansu_pid();

    // Again: nothing restarted, nothing recreated.
    let second = stack.run("start.sh");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("tansu already running"), "{said}");
    assert!(said.contains("postgres already running"), "{said}");
    assert!(said.contains(&format!("topic {TOPIC} already exists")), "{said}");
    assert_eq!(stack.tansu_pid(), pid);

    stack.run("stop.sh");
    assert!(!port_open(stack.kafka_port), "tansu stopped");
    assert!(!port_open(stack.pg_port), "postgres stopped");
    let again = stack.run("stop.sh");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not running"));

    // The libsql file keeps the topic; the cluster keeps its data.
    let restarted = stack.run("start.sh");
    let said = String::from_utf8_lossy(&restarted.stderr);
    assert!(said.contains(&format!("topic {TOPIC} already exists")), "{said}");
    assert_eq!(stack.topic_partitions(), PARTITIONS);
    assert_eq!(stack.select_one(), 1);
}

/// Runs `deploy/run.sh` with its state in a fresh directory, ports no server listens on, and
/// the extra environment `env`; it must fail before starting anything.
fn run_sh_refused(env: &[(&str, &str)]) -> String {
    let state = tempfile::Builder::new().prefix("encore-run-").tempdir().expect("state directory");
    let mut command = Command::new("bash");
    command
        .arg(Path::new(DEPLOY_DIR).join("run.sh"))
        .env("ENCORE_STATE_DIR", state.path())
        .env("ENCORE_KAFKA_PORT", free_port().expect("a free port").to_string())
        .env("ENCORE_PG_PORT", free_port().expect("a free port").to_string())
        .env_remove("ENCORE_METRICS_PORT")
        .env_remove("ENCORE_FLOW_ARGS");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("bash runs");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "run.sh with {env:?}: {said}");
    let left: Vec<_> =
        std::fs::read_dir(state.path()).expect("read state directory").map(|entry| entry.expect("directory entry").file_name()).collect();
    assert!(left.is_empty(), "run.sh started something: {left:?}; {said}");
    said
}

#[test]
fn run_sh_checks_its_metrics_settings_before_starting_anything() {
    for bad in ["0", "65535", "9464x", "-1", "09464"] {
        let said = run_sh_refused(&[("ENCORE_METRICS_PORT", bad)]);
        assert!(
            said.contains("ENCORE_METRICS_PORT must be a port number from 1 to 65534") && said.contains(&format!("got '{bad}'")),
            "{said}"
        );
    }
    // Both processes would get the same address: the second one could not bind it.
    for flags in ["--metrics-addr 127.0.0.1:9100", "--epoch-ms 500 --metrics-addr=127.0.0.1:9100"] {
        let said = run_sh_refused(&[("ENCORE_FLOW_ARGS", flags)]);
        assert!(said.contains("ENCORE_FLOW_ARGS must not hold --metrics-addr"), "{said}");
    }
    let said = run_sh_refused(&[("ENCORE_BIN_DIR", "/nonexistent/encore-bin")]);
    assert!(said.contains("ENCORE_BIN_DIR /nonexistent/encore-bin is not a directory"), "{said}");
    let empty = tempfile::tempdir().expect("a directory");
    let said = run_sh_refused(&[("ENCORE_BIN_DIR", &empty.path().display().to_string())]);
    assert!(said.contains("ENCORE_BIN_DIR: no executable") && said.contains("/encore-gen"), "{said}");
}

/// `deploy/run.sh` killed with SIGKILL (no trap runs, nothing is stopped in order): the
/// kernel sends its encore-flow processes and its generator their parent-death signal, and
/// nothing it started is left running.
#[test]
fn a_killed_run_sh_takes_its_children_along() {
    let stack = Stack::new();
    let bin = tempfile::tempdir().expect("a directory");
    for program in ["encore-gen", "encore-flow"] {
        let path = bin.path().join(program);
        std::fs::write(&path, encore_testkit::processes::STAND_IN).expect("write a stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let output = tempfile::tempdir().expect("a directory");
    let stderr_path = output.path().join("stderr");
    let file = |name: &str| std::fs::File::create(output.path().join(name)).expect("output file");
    let path = format!("{}:{}", stack.pg_bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut run = processes::TermOnDrop::new(
        stack
            .command("run.sh")
            .env("ENCORE_BIN_DIR", bin.path())
            .env("PATH", path)
            .env_remove("ENCORE_METRICS_PORT")
            .env_remove("ENCORE_FLOW_PORT")
            .env_remove("ENCORE_FLOW_ARGS")
            .stdin(Stdio::null())
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .expect("start run.sh"),
    );
    let said = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // Running: the children started ("metrics:" comes after them) and it watches them.
    // The deadline guards against a hang (start.sh creates a cluster), not a speed limit.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !said().contains("encore: metrics: ") {
        if let Some(status) = run.get().try_wait().expect("poll run.sh") {
            panic!("run.sh ended ({status}) before starting its children:\n{}", said());
        }
        assert!(Instant::now() < deadline, "run.sh did not start its children:\n{}", said());
        std::thread::sleep(Duration::from_millis(100));
    }
    let children = processes::descendants(run.get().id());
    let state = stack.state.path();
    for name in ["generator", "flow-p0", "flow-p1"] {
        let pid: u32 = std::fs::read_to_string(state.join(format!("{name}.pid"))).expect("pid file").trim().parse().expect("a pid");
        assert!(children.iter().any(|child| child.pid == pid), "{name} (pid {pid}) is a child of run.sh: {children:?}");
        // Past setsid and setpriv, whose command lines name the program too: the parent-death
        // signal is armed only once setpriv has run. A kill before that is the window run.sh
        // documents (caught by the pid check at the next start), not what this test is about;
        // under load it lasted long enough to make the test flaky.
        let stand_in = format!("{}/encore-", bin.path().display());
        let armed_by = Instant::now() + Duration::from_secs(60);
        loop {
            let command_line = Process::read(pid).map(|p| p.command_line()).unwrap_or_default();
            if command_line.contains(&stand_in) && !command_line.contains("setpriv") && !command_line.contains("setsid") {
                break;
            }
            assert!(Instant::now() < armed_by, "{name} does not run the stand-in: {command_line}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(run.get().try_wait().expect("poll run.sh").is_none(), "run.sh still running:\n{}", said());

    let mut run = run.take();
    run.kill().expect("kill -9 run.sh");
    run.wait().expect("reap run.sh");

    // A guard against a hang, not a speed requirement.
    if let Err(left) = processes::wait_until_gone(&children, Duration::from_secs(60)) {
        panic!("still running 60 s after run.sh was killed: {left:?}");
    }
    // They were stopped by the kernel's SIGTERM, not by run.sh (which sends SIGINT, and was
    // given no chance to).
    assert!(!said().contains("stopping encore-flow"), "{}", said());
    let log = |name: &str| std::fs::read_to_string(state.join(name)).expect("a log");
    assert!(log("generator.log").contains("stand-in ended by SIGTERM"), "{}", log("generator.log"));
    for p in 0..2 {
        let text = log(&format!("flow-p{p}.log"));
        assert!(text.contains(&format!("[p{p}] stand-in ended by SIGTERM")), "{text}");
    }
}

/// `free_port` of deploy/lib.sh, which run.sh uses for the flow and metrics ports, skips a
/// port something listens on.
#[test]
fn free_port_skips_a_listening_port() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
    let taken = listener.local_addr().expect("local address").port();
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"set -euo pipefail; source "$1/lib.sh"; free_port "$2""#)
        .arg("free_port")
        .arg(DEPLOY_DIR)
        .arg(taken.to_string())
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let found: u16 = String::from_utf8_lossy(&output.stdout).trim().parse().expect("free_port prints a port");
    assert!(found > taken && found <= taken.saturating_add(100), "{taken} taken, free_port said {found}");
}
