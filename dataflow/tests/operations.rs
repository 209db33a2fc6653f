//! Operating encore-flow against a real Tansu broker and a real PostgreSQL (issue 22): a topic
//! written in each of Kafka's compression codecs (none, gzip, snappy, lz4, zstd) is consumed
//! exactly; a broker gone for good ends the job with one line and a non-zero exit instead of
//! an endless loop of consumer errors; SIGINT, SIGTERM and SIGHUP all stop a live job cleanly
//! (what is complete is committed, exit 0).

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use encore_dataflow::sink::postgres::{PgSink, RetryPolicy};
use encore_dataflow::tables::Params;
use encore_dataflow::testing::{self, oracle};
use encore_dataflow::testing::{assert_one_line_error, assert_success, assert_tables_eq};
use encore_testkit::{free_port, retry_on_taken_port, Postgres, Tansu};

const PARAMS: Params = Params { history_cap: 5, min_co: 1, neighbors: 3, recommendations: 3, score_precision: 4, count_bits: 5 };

/// One broker and one Postgres for the codec tests (each test has its own topic and schema).
/// Kept in a static, so never dropped: the testkit's watchdogs stop them after the test
/// process ends.
fn servers() -> &'static (Tansu, Postgres) {
    static SERVERS: OnceLock<(Tansu, Postgres)> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let tansu = Tansu::start().expect("start Tansu (see encore-testkit)");
        let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
        (tansu, postgres)
    })
}

fn flow(tansu: &Tansu, topic: &str, url: &str, schema: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_encore-flow"));
    command
        .args(["--brokers", &tansu.brokers(), "--topic", topic, "--postgres", url, "--pg-schema", schema])
        .args(["--emit-co-listens", "--epoch-ms", "50", "--epoch-events", "300"])
        .args(["--history-cap", "5", "--min-co", "1", "--neighbors", "3", "--recommendations", "3"])
        .env("RUST_LOG", "warn,encore_dataflow=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn sink(url: &str, schema: &str) -> PgSink {
    PgSink::connect(url, schema, PARAMS.score_precision, true, RetryPolicy::default()).expect("connect")
}

/// Every table in `schema` equals the oracle over `lines`, each invalid line is a dead letter,
/// and the committed offsets cover every message.
fn check(url: &str, schema: &str, topic: &str, lines: &[Vec<u8>]) {
    let mut sink = sink(url, schema);
    let (tables, dead_letters) = sink.read_tables().expect("read tables");
    let (events, invalid) = testing::parse_lines(lines);
    assert_tables_eq(&tables, &oracle::compute(&events, &PARAMS), schema);
    assert_eq!(dead_letters.len(), invalid.len(), "dead letters of {schema}");
    let offsets = sink.committed_offsets(topic).expect("offsets");
    assert_eq!(offsets.values().sum::<i64>(), lines.len() as i64, "offsets cover every message");
}

/// Messages committed so far in `schema` (0 while nothing is).
fn committed(url: &str, schema: &str, topic: &str) -> i64 {
    let once = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    PgSink::connect(url, schema, PARAMS.score_precision, true, once)
        .and_then(|mut sink| sink.committed_offsets(topic))
        .map(|offsets| offsets.values().sum::<i64>())
        .unwrap_or(0)
}

/// Writes a topic with `compression.type=codec` (the producer compresses every batch with it,
/// and Tansu's memory storage keeps the batches as written), consumes it to caught-up, and
/// checks the tables. A build without the codec fails already at the producer (librdkafka
/// refuses the setting), and a consumer without it loops on NotImplemented (issue 22).
fn consume_topic_written_with(codec: &str, seed: u64) {
    let (tansu, postgres) = servers();
    let (topic, schema) = (format!("events_{codec}"), format!("codec_{codec}"));
    tansu.create_topic(&topic, 2).expect("create the topic");
    let lines = testing::random_lines(seed, 600);
    tansu
        .produce_with(&topic, &lines, |_| None, false, &[("compression.type", codec)])
        .unwrap_or_else(|error| panic!("produce with compression.type={codec}: {error}"));
    let output = flow(tansu, &topic, &postgres.url(), &schema).arg("--until-caught-up").output().expect("encore-flow runs");
    assert_success(&output);
    check(&postgres.url(), &schema, &topic, &lines);
}

#[test]
fn a_topic_without_compression_is_consumed_exactly() {
    consume_topic_written_with("none", 41);
}

#[test]
fn a_gzip_topic_is_consumed_exactly() {
    consume_topic_written_with("gzip", 43);
}

#[test]
fn a_snappy_topic_is_consumed_exactly() {
    consume_topic_written_with("snappy", 47);
}

#[test]
fn an_lz4_topic_is_consumed_exactly() {
    consume_topic_written_with("lz4", 53);
}

#[test]
fn a_zstd_topic_is_consumed_exactly() {
    consume_topic_written_with("zstd", 59);
}

/// Waits for `child` to exit; a job still running after `failsafe` is killed and the test
/// fails (the failure this guards against is a job that never ends).
fn wait_ended(mut child: std::process::Child, failsafe: Duration) -> Output {
    let deadline = Instant::now() + failsafe;
    while child.try_wait().expect("poll encore-flow").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("encore-flow output");
            panic!("encore-flow still running {failsafe:?} after the broker died:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("encore-flow output")
}

/// A live job whose broker dies for good: librdkafka retries for ever and reports an error now
/// and then; once those errors have persisted beyond `--kafka-error-timeout` the job ends with
/// one line naming Kafka and a non-zero exit, and what it committed before stays exact.
#[test]
fn a_broker_gone_for_good_ends_the_job_with_one_line() {
    broker_gone_for_good(1);
}

/// As above with 2 processes: each ends, none waits for ever for a peer that stopped.
#[test]
fn a_broker_gone_for_good_ends_every_process_of_a_cluster() {
    broker_gone_for_good(2);
}

fn broker_gone_for_good(processes: usize) {
    let mut tansu = Tansu::start().expect("start Tansu (see encore-testkit)");
    let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
    let topic = "music_streaming_data";
    tansu.create_topic(topic, 2).expect("create the topic");
    let lines = testing::random_lines(61, 400);
    tansu.produce(topic, &lines, |_| None, false).expect("all messages delivered");

    let hosts = tempfile::NamedTempFile::new().expect("a hostfile");
    // Running until everything is committed; again on fresh ports if a process ended first
    // because a hostfile port was taken after the file was written (nothing is read then).
    let children = retry_on_taken_port(|_| {
        let ports: Vec<String> = (0..processes).map(|_| format!("127.0.0.1:{}", free_port().expect("a free port"))).collect();
        std::fs::write(hosts.path(), ports.join("\n")).expect("write the hostfile");
        let mut children: Vec<_> = (0..processes)
            .map(|process| {
                let mut command = flow(&tansu, topic, &postgres.url(), "gone");
                command.args(["--kafka-error-timeout", "1"]);
                if processes > 1 {
                    let hostfile = hosts.path().display().to_string();
                    command.args(["-n", &processes.to_string(), "-p", &process.to_string(), "-h", &hostfile]);
                }
                command.spawn().expect("spawn encore-flow")
            })
            .collect();
        while committed(&postgres.url(), "gone", topic) < lines.len() as i64 {
            if let Some(ended) = children.iter_mut().position(|child| child.try_wait().expect("poll encore-flow").is_some()) {
                for child in &mut children {
                    let _ = child.kill();
                }
                let output = children.swap_remove(ended).wait_with_output().expect("encore-flow output");
                return Err(format!("process {ended} ended before the commit: {}", String::from_utf8_lossy(&output.stderr)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(children)
    })
    .unwrap_or_else(|ended| panic!("{ended}"));
    tansu.kill().expect("kill the broker");

    for child in children {
        let output = wait_ended(child, Duration::from_secs(300));
        // A process either names the broker's failure or, when a peer ended first, the lost peer.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = if stderr.contains("lost a peer process") { "lost a peer process" } else { "consumer errors for" };
        assert_one_line_error(&output, expected);
        let line = stderr.lines().last().unwrap_or_default();
        assert!(expected != "consumer errors for" || line.contains("--kafka-error-timeout 1 s"), "{line}");
        eprintln!("the exit line: {line}");
    }
    check(&postgres.url(), "gone", topic, &lines);
}

/// Stopping a live job the ways services are stopped: Ctrl-C (SIGINT), `docker stop`,
/// systemd and Kubernetes (SIGTERM), a closed terminal (SIGHUP). Each time the job commits
/// what is complete and exits 0 with its summary line; the messages produced before the signal
/// and committed then are exact, and a final catch-up run has nothing left but what came later.
#[test]
fn sigint_sigterm_and_sighup_commit_what_is_complete_and_exit_0() {
    let (tansu, postgres) = servers();
    let topic = "events_signals";
    tansu.create_topic(topic, 2).expect("create the topic");
    let lines = testing::random_lines(67, 900);
    let mut produced = 0;
    for (round, signal) in ["INT", "TERM", "HUP"].into_iter().enumerate() {
        let batch = &lines[round * 300..(round + 1) * 300];
        tansu.produce(topic, batch, |_| None, false).expect("all messages delivered");
        produced += batch.len() as i64;
        let child = flow(tansu, topic, &postgres.url(), "signals").spawn().expect("spawn encore-flow");
        // Live: the job has committed every message produced so far.
        while committed(&postgres.url(), "signals", topic) < produced {
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let output = wait_ended(child, Duration::from_secs(120));
        assert_success(&output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("process=0 "), "SIG{signal}: the summary line of a clean stop: {stdout}");
        check(&postgres.url(), "signals", topic, &lines[..produced as usize]);
    }
}

/// Postgres passwords kept off the command line, and never printed: a role that must log in
/// with a password runs from `--postgres-password-file`, from libpq's password file
/// (PGPASSFILE) and, discouraged, from the URL itself (which draws a warning). With every log
/// at debug level, neither the password nor a wrong one shows in any output line, also when
/// the login fails.
#[test]
fn postgres_passwords_come_from_files_and_are_never_printed() {
    const PASSWORD: &str = "pw-3f9c-never-print-me";
    const WRONG: &str = "pw-wrong-never-print-me-either";
    let (tansu, postgres) = servers();
    let topic = "events_passwords";
    tansu.create_topic(topic, 2).expect("create the topic");
    let lines = testing::random_lines(71, 300);
    tansu.produce(topic, &lines, |_| None, false).expect("all messages delivered");
    let url = postgres.add_password_role("encore_secret", PASSWORD).expect("a role with a password");
    let dir = tempfile::tempdir().expect("a scratch directory");
    let secret_file = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path.display().to_string()
    };
    let run = |url: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut command = flow(tansu, topic, url, "passwords");
        command.args(["--until-caught-up"]).args(args).env_remove("PGPASSWORD").env("HOME", dir.path()).env("RUST_LOG", "debug");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("encore-flow runs");
        for text in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(text);
            assert!(!text.contains(PASSWORD) && !text.contains(WRONG), "a password in the output:\n{text}");
        }
        output
    };

    let file = secret_file("password", &format!("{PASSWORD}\n"));
    assert_success(&run(&url, &["--postgres-password-file", &file], &[]));
    check(&postgres.url(), "passwords", topic, &lines);

    let passfile = secret_file("pgpass", &format!("127.0.0.1:{}:postgres:encore_secret:{PASSWORD}\n", postgres.port()));
    assert_success(&run(&url, &[], &[("PGPASSFILE", &passfile)]));

    let wrong = secret_file("wrong", &format!("{WRONG}\n"));
    assert_one_line_error(&run(&url, &["--postgres-password-file", &wrong], &[]), "password authentication failed");

    let in_url = url.replacen("encore_secret@", &format!("encore_secret:{PASSWORD}@"), 1);
    let mut command = flow(tansu, topic, &in_url, "passwords");
    let output = command.arg("--until-caught-up").env_remove("PGPASSWORD").output().expect("encore-flow runs");
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the --postgres URL holds a password"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}
