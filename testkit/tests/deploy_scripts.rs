//! `deploy/start.sh` and `deploy/stop.sh` against the real servers: they start a working stack
//! on the ports they are given, are idempotent, and keep the topic across a restart with the
//! default (libsql file) storage. Each run uses its own state directory and free ports, so
//! it neither needs nor disturbs a stack a developer is running.

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
