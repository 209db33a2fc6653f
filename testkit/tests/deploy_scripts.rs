//! `deploy/start.sh` and `deploy/stop.sh` against the real servers: they start a working stack
//! on the ports they are given, are idempotent, and keep the topic across a restart with the
//! default (libsql file) storage. Each run uses its own state directory and free ports, so
//! it neither needs nor disturbs a stack a developer is running.
//!
//! `deploy/run.sh` builds and runs the real programs until Ctrl-C; here it runs against a
//! real stack with stand-ins for them (`ENCORE_BIN_DIR`), to check that killing it outright
//! takes its children along. Its checks of its settings (made before it starts anything)
//! and the `free_port` it picks the flow and metrics ports with are tested too; the quick
//! start itself is checked by running it. `deploy/watch.sh --once`, the progress screen, runs
//! against a real Postgres holding SPEC §3's tables and views (made by hand here) and two
//! stand-in metrics endpoints, and must show what they hold.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use encore_testkit::processes::{self, Process};
use encore_testkit::{free_port, Postgres};
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

/// A stand-in metrics endpoint on a free port: the n-th request gets `scrapes[n]` (the last
/// one from then on). Returns its URL; it serves until the test process ends.
fn serve_metrics(scrapes: Vec<String>) -> String {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
    let url = format!("http://{}/metrics", listener.local_addr().expect("local address"));
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => head.extend_from_slice(&chunk[..read]),
                }
            }
            let body = &scrapes[n.min(scrapes.len() - 1)];
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// One scrape of a process, in encore-flow's format: `samples` are `(name, labels, value)`,
/// `process="P"` put first.
fn exposition(process: u32, samples: &[(&str, &str, &str)]) -> String {
    let mut text = String::new();
    for (name, labels, value) in samples {
        let family = ["_sum", "_count", "_bucket"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name);
        let kind = if family.ends_with("_total") {
            "counter"
        } else if family != *name {
            "histogram"
        } else {
            "gauge"
        };
        if !text.contains(&format!("# TYPE {family} ")) {
            text.push_str(&format!("# HELP {family} a stand-in\n# TYPE {family} {kind}\n"));
        }
        let labels = if labels.is_empty() { String::new() } else { format!(",{labels}") };
        text.push_str(&format!("{name}{{process=\"{process}\"{labels}}} {value}\n"));
    }
    text
}

/// The words of the screen line starting (after its indent) with `label`.
fn screen_line<'a>(screen: &'a str, label: &str) -> &'a str {
    screen.lines().find(|line| line.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no line {label:?} in\n{screen}"))
}

#[test]
fn watch_sh_once_shows_rates_lag_commit_latency_stale_users_and_a_users_recommendations() {
    let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
    let mut client = postgres::Client::connect(&postgres.url(), postgres::NoTls).expect("connect");
    client
        .batch_execute(
            "CREATE TABLE users (user_id BIGINT PRIMARY KEY, name TEXT, age INT, gender TEXT, country TEXT);
             CREATE TABLE artists (artist_id BIGINT PRIMARY KEY, name TEXT);
             CREATE TABLE tracks (track_id BIGINT PRIMARY KEY, title TEXT, artist_id BIGINT, album_id BIGINT, genre TEXT,
                                  popularity INT, duration_ms INT);
             CREATE TABLE user_recommendations (user_id BIGINT PRIMARY KEY, track_ids BIGINT[], scores DOUBLE PRECISION[],
                                                updated_at TIMESTAMPTZ);
             CREATE TABLE track_neighbors (track_id BIGINT PRIMARY KEY, neighbor_ids BIGINT[], scores DOUBLE PRECISION[],
                                           updated_at TIMESTAMPTZ);
             CREATE TABLE track_stats (track_id BIGINT PRIMARY KEY, plays BIGINT, listeners BIGINT, likes BIGINT);
             CREATE TABLE dead_letters (id BIGSERIAL PRIMARY KEY, topic TEXT, kafka_partition INT, kafka_offset BIGINT,
                                        payload BYTEA, error TEXT, received_at TIMESTAMPTZ DEFAULT now());
             CREATE TABLE encore_progress (topic TEXT NOT NULL, kafka_partition INT NOT NULL, next_offset BIGINT NOT NULL,
                                           committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (topic, kafka_partition));
             -- SPEC §3's views: one row per member, rank 1-based in list order.
             CREATE VIEW user_recommendations_ranked AS
               SELECT r.user_id, m.rank, m.track_id, m.score, r.updated_at
                 FROM user_recommendations r, unnest(r.track_ids, r.scores) WITH ORDINALITY AS m(track_id, score, rank);
             CREATE VIEW track_neighbors_ranked AS
               SELECT n.track_id, m.rank, m.neighbor_id, m.score
                 FROM track_neighbors n, unnest(n.neighbor_ids, n.scores) WITH ORDINALITY AS m(neighbor_id, score, rank);

             INSERT INTO artists VALUES (1, 'The Testers'), (2, 'Nobody Else');
             INSERT INTO tracks (track_id, title, artist_id) VALUES (101, 'First Song', 1), (102, 'Second Song', 2),
                                                                    (103, 'Third Song', 1);
             INSERT INTO users (user_id, name) VALUES (7, 'Ada Lovelace'), (8, 'Short List');
             -- User 7 has the longest list; user 8 was refreshed later but has one track.
             INSERT INTO user_recommendations VALUES (7, '{103,101,102}', '{0.9,0.5,0.25}', now() - interval '3 seconds'),
                                                     (8, '{101}', '{0.1}', now());
             INSERT INTO track_neighbors VALUES (101, '{102,103}', '{0.75,0.5}', now());
             INSERT INTO track_stats VALUES (101, 30, 12, 1), (102, 5, 3, 0);
             INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, error) VALUES ('music_streaming_data', 0, 4, 'bad');
             INSERT INTO encore_progress (topic, kafka_partition, next_offset) VALUES
               ('music_streaming_data', 0, 490), ('music_streaming_data', 1, 300), ('music_streaming_data', 2, 200),
               ('music_streaming_data', 3, 100);",
        )
        .expect("the tables, views and rows");
    let refreshed: String = client
        .query_one("SELECT to_char(updated_at AT TIME ZONE 'UTC', 'HH24:MI:SS') FROM user_recommendations WHERE user_id = 7", &[])
        .expect("query")
        .get(0);

    // Process 0 reads partitions 0 and 1 and commits; process 1 reads 2 and 3. Between the two
    // scrapes of --once: 10 commits took 0.5 s in all, and the counters grew.
    let p0 = |events: &str, commit_sum: &str, commits: &str, active: &str| {
        exposition(
            0,
            &[
                ("encore_events_consumed_total", "", events),
                ("encore_replaying_workers", "", "0"),
                ("encore_partition_next_offset", "partition=\"0\"", "495"),
                ("encore_partition_next_offset", "partition=\"1\"", "303"),
                ("encore_partition_high_watermark", "partition=\"0\"", "500"),
                ("encore_partition_high_watermark", "partition=\"1\"", "310"),
                ("encore_partition_lag", "partition=\"0\"", "5"),
                ("encore_partition_lag", "partition=\"1\"", "7"),
                ("encore_commit_duration_seconds_bucket", "le=\"+Inf\"", commits),
                ("encore_commit_duration_seconds_sum", "", commit_sum),
                ("encore_commit_duration_seconds_count", "", commits),
                ("encore_stale_users", "", "40"),
                ("encore_stale_refresh_age_seconds", "", "12.5"),
                ("encore_users_refreshed_total", "reason=\"active\"", active),
                ("encore_users_refreshed_total", "reason=\"background\"", "50"),
            ],
        )
    };
    let p1 = |events: &str, background: &str| {
        exposition(
            1,
            &[
                ("encore_events_consumed_total", "", events),
                ("encore_replaying_workers", "", "0"),
                ("encore_partition_next_offset", "partition=\"2\"", "200"),
                ("encore_partition_next_offset", "partition=\"3\"", "100"),
                ("encore_partition_high_watermark", "partition=\"2\"", "211"),
                ("encore_partition_high_watermark", "partition=\"3\"", "100"),
                ("encore_partition_lag", "partition=\"2\"", "11"),
                ("encore_partition_lag", "partition=\"3\"", "0"),
                ("encore_stale_users", "", "2"),
                ("encore_stale_refresh_age_seconds", "", "3"),
                ("encore_users_refreshed_total", "reason=\"active\"", "10"),
                ("encore_users_refreshed_total", "reason=\"background\"", background),
            ],
        )
    };
    let urls = [
        serve_metrics(vec![p0("1000", "1.0", "10", "100"), p0("3000", "1.5", "20", "300")]),
        serve_metrics(vec![p1("500", "0"), p1("1500", "30")]),
    ];

    let state = tempfile::Builder::new().prefix("encore-watch-").tempdir().expect("state directory");
    let pg_bin = encore_testkit::postgres_bin_dir().expect("postgres binaries installed");
    let output = Command::new("bash")
        .arg(Path::new(DEPLOY_DIR).join("watch.sh"))
        .arg("--once")
        .env("ENCORE_STATE_DIR", state.path())
        .env("ENCORE_PG_PORT", postgres.port().to_string())
        .env("ENCORE_METRICS_URLS", urls.join(" "))
        .env("PATH", format!("{}:{}", pg_bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env_remove("ENCORE_TOPIC")
        .output()
        .expect("bash runs");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "watch.sh --once failed: {}\n{screen}", String::from_utf8_lossy(&output.stderr));
    eprintln!("{screen}");
    assert!(!screen.contains("not answering") && !screen.contains("endpoint"), "{screen}");

    // events/s: both processes' counters grew between the scrapes (by how much per second
    // depends on the time between them, so only the form is checked).
    let events = screen_line(&screen, "events/s");
    let words: Vec<&str> = events.split_whitespace().collect();
    assert!(words[1].parse::<u64>().is_ok_and(|rate| rate > 0), "{events}");
    assert!(events.contains("consumed (p0 ") && events.contains(", p1 "), "{events}");
    // Lag, commit latency, stale users: exactly what the endpoints say.
    assert_eq!(screen_line(&screen, "lag").split_whitespace().nth(1), Some("23"), "5 + 7 + 11 + 0");
    let commit = screen_line(&screen, "commit");
    assert!(commit.contains("50.0 ms mean of 10 commits since the last sample"), "{commit}");
    let stale = screen_line(&screen, "stale users");
    assert!(stale.contains("42 (p0 40, p1 2); the stalest refreshed 12.5 s ago"), "{stale}");
    assert!(stale.contains("refreshed/s: active ") && stale.contains(", background "), "{stale}");
    // Per partition: topic end and consumed from the metrics, committed from encore_progress.
    let total: Vec<&str> = screen_line(&screen, "total").split_whitespace().collect();
    assert_eq!(total, ["total", "1121", "1098", "1090", "23"]);
    assert_eq!(screen_line(&screen, "0 ").split_whitespace().collect::<Vec<_>>(), ["0", "500", "495", "490", "5"]);
    assert!(screen.contains("tracks listened to: 2   dead letters: 1"), "{screen}");

    // The user with the longest list, its tracks in rank order with titles and artists.
    let heading = format!("Recommendations for user 7 (Ada Lovelace), refreshed {refreshed} UTC (");
    let at = screen.find(&heading).unwrap_or_else(|| panic!("{heading:?} in\n{screen}"));
    let list: Vec<Vec<&str>> = screen[at..].lines().skip(1).take(3).map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(
        list,
        [
            vec!["1.", "0.9000", "Third", "Song", "The", "Testers"],
            vec!["2.", "0.5000", "First", "Song", "The", "Testers"],
            vec!["3.", "0.2500", "Second", "Song", "Nobody", "Else"]
        ]
    );
    let neighbours = screen.find("Neighbours of track 101 \"First Song\" by The Testers (30 plays, 12 listeners)").expect("the track");
    let first: Vec<&str> = screen[neighbours..].lines().nth(1).expect("a neighbour").split_whitespace().collect();
    assert_eq!(first, ["1.", "0.7500", "Second", "Song", "Nobody", "Else"]);
}
