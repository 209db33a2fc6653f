//! `deploy/start.sh` and `deploy/stop.sh` against the real servers: they start a working stack
//! on the ports they are given, are idempotent, and keep the topic across a restart with the
//! default (libsql file) storage. Each run uses its own state directory and free ports, so
//! it neither needs nor disturbs a stack a developer is running.
//!
//! `deploy/run.sh` itself needs a release build and runs until Ctrl-C, so only its checks of
//! the metrics settings (made before it starts anything) and the `free_port` it picks the
//! flow and metrics ports with are tested here; the quick start is checked by running it.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

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

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

impl Stack {
    fn new() -> Stack {
        let state = tempfile::Builder::new()
            .prefix("encore-deploy-")
            .tempdir()
            .expect("state directory");
        // As root the cluster runs as the postgres user, which must reach the state directory.
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod state directory");
        Stack {
            state,
            kafka_port: free_port(),
            pg_port: free_port(),
            // Resolved here so that the scripts never try to install anything from a test.
            tansu: encore_testkit::tansu_binary().expect("tansu installed"),
            pg_bin: encore_testkit::postgres_bin_dir().expect("postgres binaries installed"),
        }
    }

    fn run(&self, script: &str) -> Output {
        let output = Command::new("bash")
            .arg(Path::new(DEPLOY_DIR).join(script))
            .env("ENCORE_STATE_DIR", self.state.path())
            .env("ENCORE_KAFKA_PORT", self.kafka_port.to_string())
            .env("ENCORE_PG_PORT", self.pg_port.to_string())
            .env("ENCORE_PARTITIONS", PARTITIONS.to_string())
            .env_remove("ENCORE_STORAGE")
            .env("TANSU_BIN", &self.tansu)
            .env("PG_BIN", &self.pg_bin)
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
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
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("client");
        let metadata = consumer
            .fetch_metadata(Some(TOPIC), Duration::from_secs(30))
            .expect("metadata");
        metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == TOPIC && topic.error().is_none())
            .map_or(0, |topic| topic.partitions().len())
    }

    fn select_one(&self) -> i32 {
        let mut client = postgres::Client::connect(&self.postgres_url(), postgres::NoTls)
            .expect("connect to the stack's postgres");
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
        printed.contains(&format!(
            "--brokers {} --topic {TOPIC} --postgres {}",
            stack.brokers(),
            stack.postgres_url()
        )),
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
    assert!(
        said.contains(&format!("topic {TOPIC} already exists")),
        "{said}"
    );
    assert_eq!(stack.tansu_pid(), pid);

    stack.run("stop.sh");
    assert!(!port_open(stack.kafka_port), "tansu stopped");
    assert!(!port_open(stack.pg_port), "postgres stopped");
    let again = stack.run("stop.sh");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not running"));

    // The libsql file keeps the topic; the cluster keeps its data.
    let restarted = stack.run("start.sh");
    let said = String::from_utf8_lossy(&restarted.stderr);
    assert!(
        said.contains(&format!("topic {TOPIC} already exists")),
        "{said}"
    );
    assert_eq!(stack.topic_partitions(), PARTITIONS);
    assert_eq!(stack.select_one(), 1);
}

/// Runs `deploy/run.sh` with its state in a fresh directory, ports no server listens on, and
/// the extra environment `env`; it must fail before starting anything.
fn run_sh_refused(env: &[(&str, &str)]) -> String {
    let state = tempfile::Builder::new()
        .prefix("encore-run-")
        .tempdir()
        .expect("state directory");
    let mut command = Command::new("bash");
    command
        .arg(Path::new(DEPLOY_DIR).join("run.sh"))
        .env("ENCORE_STATE_DIR", state.path())
        .env("ENCORE_KAFKA_PORT", free_port().to_string())
        .env("ENCORE_PG_PORT", free_port().to_string())
        .env_remove("ENCORE_METRICS_PORT")
        .env_remove("ENCORE_FLOW_ARGS");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("bash runs");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "run.sh with {env:?}: {said}");
    let left: Vec<_> = std::fs::read_dir(state.path())
        .expect("read state directory")
        .map(|entry| entry.expect("directory entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "run.sh started something: {left:?}; {said}"
    );
    said
}

#[test]
fn run_sh_checks_its_metrics_settings_before_starting_anything() {
    for bad in ["0", "65535", "9464x", "-1", "09464"] {
        let said = run_sh_refused(&[("ENCORE_METRICS_PORT", bad)]);
        assert!(
            said.contains("ENCORE_METRICS_PORT must be a port number from 1 to 65534")
                && said.contains(&format!("got '{bad}'")),
            "{said}"
        );
    }
    // Both processes would get the same address: the second one could not bind it.
    for flags in [
        "--metrics-addr 127.0.0.1:9100",
        "--epoch-ms 500 --metrics-addr=127.0.0.1:9100",
    ] {
        let said = run_sh_refused(&[("ENCORE_FLOW_ARGS", flags)]);
        assert!(
            said.contains("ENCORE_FLOW_ARGS must not hold --metrics-addr"),
            "{said}"
        );
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
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("free_port prints a port");
    assert!(
        found > taken && found <= taken.saturating_add(100),
        "{taken} taken, free_port said {found}"
    );
}
