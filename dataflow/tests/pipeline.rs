//! The running pipeline end to end against a real Tansu broker and a real PostgreSQL:
//! messages (valid and invalid) on a 4-partition topic → `encore-flow --until-caught-up` as
//! 1 process × 2 workers and as 2 processes × 1 worker → every table equals the sequential
//! implementation over the topic's messages, dead letters exactly once; appending and
//! rerunning loads the durable state and processes only the new messages; `kill -9` at random
//! moments with other process counts at each restart stays exact against the oracle over
//! the committed offsets; a topic whose head was deleted (retention) continues from the
//! stored state, and a fresh schema on it is refused; tables from before the durable state
//! are replayed once; `kill -9` mid-run and a restart stay exact;
//! Postgres restarted mid-run is waited for, Postgres gone for good ends the run non-zero
//! with one line (the committer's failure stops the workers, nothing hangs). The progress log
//! lines (`state loaded`, `replay read`, `first live commit`) are checked where they must and
//! must not appear.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use encore_dataflow::sink::postgres::{PgSink, RetryPolicy};
use encore_dataflow::tables::Params;
use encore_dataflow::testing::{self, oracle};
use encore_dataflow::testing::{assert_one_line_error, assert_success, assert_tables_eq};
use encore_testkit::processes::wait_all;
use encore_testkit::{free_port_on, retry_on_taken_port, Postgres, Tansu, TansuStorage, TestCa};

const TOPIC: &str = "music_streaming_data";
const PARAMS: Params = Params { history_cap: 5, min_co: 1, neighbors: 3, recommendations: 3, score_precision: 4, count_bits: 1 };

struct Stack {
    tansu: Tansu,
    postgres: Postgres,
    dir: PathBuf,
    /// With [`Stack::start_tls`]: the CA of both servers' certificates.
    ca: Option<TestCa>,
}

impl Stack {
    fn start(name: &str) -> Stack {
        let tansu = Tansu::start().expect("start Tansu (see encore-testkit)");
        let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
        Stack::with(name, tansu, postgres, None)
    }

    /// A broker reachable over TLS only and a Postgres that refuses plain TCP, as managed
    /// services are; both certificates from one throwaway CA.
    fn start_tls(name: &str) -> Stack {
        let ca = TestCa::new("encore test CA").expect("a test CA");
        let tansu = Tansu::start_tls(&ca).expect("start Tansu behind TLS (see encore-testkit)");
        let postgres = Postgres::start_tls(&ca).expect("start PostgreSQL with TLS (see encore-testkit)");
        Stack::with(name, tansu, postgres, Some(ca))
    }

    /// A broker that admits SASL/SCRAM-authenticated clients over TLS only (`SASL_SSL`), and a
    /// TLS-only Postgres, as managed services are.
    fn start_sasl_tls(name: &str) -> Stack {
        let ca = TestCa::new("encore test CA").expect("a test CA");
        let tansu = Tansu::start_sasl_tls(&ca, "encore", "s3cret-pass").expect("start Tansu with SASL behind TLS (see encore-testkit)");
        let postgres = Postgres::start_tls(&ca).expect("start PostgreSQL with TLS (see encore-testkit)");
        Stack::with(name, tansu, postgres, Some(ca))
    }

    fn with(name: &str, tansu: Tansu, postgres: Postgres, ca: Option<TestCa>) -> Stack {
        tansu.create_topic(TOPIC, 4).expect("create the topic");
        let dir = std::env::temp_dir().join(format!("encore-pipeline-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Stack { tansu, postgres, dir, ca }
    }

    /// The results database's URL: with TLS, `verify-full` against the test CA.
    fn postgres_url(&self) -> String {
        match &self.ca {
            None => self.postgres.url(),
            Some(ca) => format!("{}?sslmode=verify-full&sslrootcert={}", self.postgres.url(), ca.root_path().display()),
        }
    }

    /// Produces `lines` as message values, keyed by a hash of the line so that they spread
    /// over every partition.
    fn produce(&self, lines: &[Vec<u8>]) {
        self.tansu.produce(TOPIC, lines, |_| None, false).expect("all messages delivered");
    }

    fn command(&self, schema: &str, cluster: &[String]) -> Command {
        self.command_to(&self.postgres_url(), schema, cluster)
    }

    /// `cluster` may hold other flags too; `--count-bits` there replaces `PARAMS`' own.
    fn command_to(&self, url: &str, schema: &str, cluster: &[String]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_encore-flow"));
        if !cluster.iter().any(|arg| arg == "--count-bits") {
            command.args(["--count-bits", &PARAMS.count_bits.to_string()]);
        }
        command
            .args(["--brokers", &self.tansu.brokers(), "--topic", TOPIC, "--postgres", url])
            .args(["--pg-schema", schema, "--until-caught-up", "--emit-co-listens", "--epoch-ms", "50"])
            .args(["--epoch-events", "300", "--history-cap", "5", "--min-co", "1", "--neighbors", "3"])
            .args(["--recommendations", "3"])
            .args(self.kafka_flags())
            .args(cluster)
            // The progress lines the tests look for are INFO.
            .env("RUST_LOG", "warn,encore_dataflow=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// The broker's client settings as a user of a managed service passes them: a
    /// `--kafka-config` file (with the matching `bootstrap.servers` line such files carry)
    /// holding `security.protocol` and the SASL settings (the password stays off the command
    /// line), the CA file as a `--kafka-option`. Over plain TCP the file holds
    /// `bootstrap.servers` only.
    fn kafka_flags(&self) -> Vec<String> {
        let brokers = self.tansu.brokers();
        let config = self.dir.join("client.properties");
        let mut text = format!("# the broker's client settings\nbootstrap.servers={brokers}\n");
        let mut flags = vec!["--kafka-config".to_owned(), config.display().to_string()];
        for (key, value) in self.tansu.client_options() {
            if key == "security.protocol" || key.starts_with("sasl.") {
                text.push_str(&format!("{key}={value}\n"));
            } else {
                flags.extend(["--kafka-option".to_owned(), format!("{key}={value}")]);
            }
        }
        std::fs::write(&config, text).expect("write the client settings");
        flags
    }

    /// Runs `processes` × `workers` on 127.0.0.1 to caught-up; every process must exit 0.
    /// Returns each process's stderr (its log).
    fn run_flow(&self, schema: &str, processes: usize, workers: usize) -> Vec<String> {
        self.run_flow_on(schema, &vec!["127.0.0.1"; processes], workers)
    }

    /// Runs one process per address in `hosts` (each binds its own address, as its hostfile
    /// line says) with `workers` each, to caught-up; every process must exit 0. Returns each
    /// process's stderr.
    fn run_flow_on(&self, schema: &str, hosts: &[&str], workers: usize) -> Vec<String> {
        self.run_flow_with(schema, hosts, workers, &[])
    }

    /// [`run_flow_on`](Self::run_flow_on) with `extra` flags. A process that fails ends the
    /// others; a run that failed because a hostfile port was taken after it was written (no
    /// process has read anything then) is run again on fresh ports.
    fn run_flow_with(&self, schema: &str, hosts: &[&str], workers: usize, extra: &[String]) -> Vec<String> {
        retry_on_taken_port(|_| wait_all(self.spawn_flow_on(schema, hosts, workers, extra), Duration::from_secs(600)))
            .unwrap_or_else(|stderr| panic!("encore-flow failed: {stderr}"))
            .into_iter()
            .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
            .collect()
    }

    /// Starts one process per address in `hosts` with `workers` each and `extra` flags.
    fn spawn_flow_on(&self, schema: &str, hosts: &[&str], workers: usize, extra: &[String]) -> Vec<Child> {
        let hostfile = self.dir.join(format!("hosts-{schema}-{}", hosts.len()));
        let lines: Vec<String> = hosts.iter().map(|host| format!("{host}:{}", free_port_on(host).expect("a free port"))).collect();
        std::fs::write(&hostfile, lines.join("\n")).expect("hostfile");
        (0..hosts.len())
            .map(|process| {
                let mut args = vec!["-w".to_owned(), workers.to_string()];
                if hosts.len() > 1 {
                    args.extend(["-n".to_owned(), hosts.len().to_string(), "-p".to_owned(), process.to_string()]);
                    args.extend(["-h".to_owned(), hostfile.display().to_string()]);
                }
                args.extend(extra.iter().cloned());
                self.command(schema, &args).spawn().expect("spawn encore-flow")
            })
            .collect()
    }

    /// Every message of the topic, per partition in offset order (read with a consumer of
    /// its own, to the end of each partition).
    fn read_topic(&self) -> BTreeMap<i32, Vec<Vec<u8>>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::Message;
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", self.tansu.brokers())
            .set("group.id", "encore-test-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        for (key, value) in self.tansu.client_options() {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config.create().expect("a consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            assignment.add_partition_offset(TOPIC, p, rdkafka::Offset::Beginning).expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        let mut topic: BTreeMap<i32, Vec<Vec<u8>>> = (0..4).map(|p| (p, Vec::new())).collect();
        let mut ended = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while ended.len() < 4 {
            assert!(std::time::Instant::now() < deadline, "the topic could not be read to its end");
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let messages = topic.get_mut(&message.partition()).expect("one of 4 partitions");
                    assert_eq!(message.offset(), messages.len() as i64, "offsets from 0 without gaps");
                    messages.push(message.payload().unwrap_or_default().to_vec());
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                }
                Some(Err(error)) => panic!("reading the topic: {error}"),
                None => {}
            }
        }
        topic
    }

    /// The tables in `schema` equal the oracle over exactly the messages below the offsets
    /// stored beside them, partition by partition; but `user_recommendations`, which a job
    /// killed mid-run leaves as of each user's last refresh (SPEC §2 step 6): exact only at
    /// rest, checked after the last run.
    fn check_committed(&self, schema: &str) -> i64 {
        let quick = RetryPolicy::default();
        let mut sink = PgSink::connect(&self.postgres_url(), schema, PARAMS.score_precision, true, quick).expect("connect");
        let committed = sink.committed_offsets(TOPIC).expect("offsets");
        let topic = self.read_topic();
        let mut prefix = Vec::new();
        for (p, messages) in &topic {
            let upto = committed.get(p).copied().unwrap_or(0) as usize;
            assert!(upto <= messages.len(), "partition {p} committed beyond its end");
            prefix.extend(messages[..upto].iter().cloned());
        }
        self.check_tables(schema, &prefix, &PARAMS, false);
        prefix.len() as i64
    }

    /// The tables in `schema` equal the oracle over `lines` (at rest: after a run that ended
    /// with `--until-caught-up`), and the dead letters are the invalid lines, each exactly once.
    fn check(&self, schema: &str, lines: &[Vec<u8>]) {
        self.check_with(schema, lines, &PARAMS);
    }

    /// [`check`](Self::check) of tables computed with `params`.
    fn check_with(&self, schema: &str, lines: &[Vec<u8>], params: &Params) {
        self.check_tables(schema, lines, params, true);
    }

    /// [`check_with`](Self::check_with), `user_recommendations` included only `at_rest`.
    fn check_tables(&self, schema: &str, lines: &[Vec<u8>], params: &Params, at_rest: bool) {
        let mut sink =
            PgSink::connect(&self.postgres_url(), schema, params.score_precision, true, RetryPolicy::default()).expect("connect");
        let (tables, dead_letters) = sink.read_tables().expect("read tables");
        let (events, invalid) = testing::parse_lines(lines);
        let mut want = oracle::compute(&events, params);
        if !at_rest {
            want.user_recommendations = tables.user_recommendations.clone();
        }
        assert_tables_eq(&tables, &want, schema);

        let mut got_payloads: Vec<&[u8]> = dead_letters.iter().map(|d| d.payload.as_slice()).collect();
        let mut want_payloads: Vec<&[u8]> = invalid.iter().map(|(line, _)| lines[*line].as_slice()).collect();
        got_payloads.sort();
        want_payloads.sort();
        assert_eq!(got_payloads, want_payloads, "dead letters of {schema}: each invalid message exactly once");
        let mut positions: Vec<(i32, i64)> = dead_letters.iter().map(|d| (d.partition, d.offset)).collect();
        positions.sort();
        positions.dedup();
        assert_eq!(positions.len(), dead_letters.len(), "no dead letter twice");

        let offsets = sink.committed_offsets(TOPIC).expect("offsets");
        assert_eq!(offsets.values().sum::<i64>(), lines.len() as i64, "offsets cover every message");
    }
}

impl Stack {
    /// Messages committed so far in `schema` (0 when Postgres is not answering).
    fn committed(&self, schema: &str) -> i64 {
        let quick = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
        PgSink::connect(&self.postgres_url(), schema, PARAMS.score_precision, true, quick)
            .and_then(|mut sink| sink.committed_offsets(TOPIC))
            .map(|offsets| offsets.values().sum())
            .unwrap_or(0)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn until_caught_up_is_exact_for_workers_and_processes_and_resumes_after_append() {
    let stack = Stack::start("exact");
    let lines = testing::random_lines(7, 3_000);
    let (first, second) = lines.split_at(2_000);
    stack.produce(first);

    let logs = stack.run_flow("one_by_two", 1, 2);
    stack.check("one_by_two", first);
    assert_progress_lines(&logs[0], Rebuilt::Nothing, 1);
    let logs = stack.run_flow("two_by_one", 2, 1);
    stack.check("two_by_one", first);
    assert_progress_lines(&logs[0], Rebuilt::Nothing, 1);
    assert_progress_lines(&logs[1], Rebuilt::Nothing, 0); // only process 0 commits

    // Appended messages: the next run loads the state of the first 2 000 from Postgres
    // (each worker its share), reads only the rest from Kafka, and adds it.
    stack.produce(second);
    let logs = stack.run_flow("one_by_two", 1, 2);
    stack.check("one_by_two", &lines);
    assert_progress_lines(&logs[0], Rebuilt::Loaded(2), 1);
    // And a run with nothing new changes nothing, and commits nothing live.
    let logs = stack.run_flow("one_by_two", 1, 2);
    stack.check("one_by_two", &lines);
    assert_progress_lines(&logs[0], Rebuilt::Loaded(2), 0);

    // Other SPEC §2 parameters would replay another state under these tables: refused, with
    // what the tables hold and what was asked, and nothing written.
    let other_bits = ["--count-bits".to_owned(), "2".to_owned()];
    let output = stack.command("one_by_two", &other_bits).output().expect("encore-flow runs");
    let flags = "--history-cap 5 --min-co 1 --neighbors 3 --recommendations 3 --score-precision 4";
    assert_one_line_error(
        &output,
        &format!("computed with {flags} --count-bits 1 --emit-co-listens, this run asks for {flags} --count-bits 2 --emit-co-listens"),
    );
    // Tables from an encore-flow that recorded no parameters (before --count-bits) were
    // computed with exact counts: continuing them with rounded ones is refused too.
    let mut client = postgres::Client::connect(&stack.postgres_url(), postgres::NoTls).expect("connect");
    client.batch_execute("DELETE FROM one_by_two.encore_parameters").expect("forget the parameters");
    let output = stack.command("one_by_two", &[]).output().expect("encore-flow runs");
    assert_one_line_error(&output, "computed with exact counts (--count-bits 0) by an encore-flow that recorded no parameters");
    stack.check("one_by_two", &lines);

    // Parameters recorded by a start that committed nothing bind nothing: replaced.
    PgSink::connect(&stack.postgres_url(), "uncommitted", PARAMS.score_precision, true, RetryPolicy::default()).expect("create the tables");
    client
        .batch_execute("INSERT INTO uncommitted.encore_parameters (topic, parameters) VALUES ('music_streaming_data', '--count-bits 3')")
        .expect("a record without commits");
    stack.run_flow("uncommitted", 1, 1);
    stack.check("uncommitted", &lines);
}

/// How a run rebuilt the state of the committed offsets, as its log says.
#[derive(Clone, Copy, Debug)]
enum Rebuilt {
    /// Nothing was committed.
    Nothing,
    /// Loaded from Postgres: one "state loaded" line per worker.
    Loaded(usize),
    /// Replayed from the topic: one "replay read" line per worker with partitions.
    Replayed(usize),
}

/// A process's log says how the state was rebuilt, and holds `first_live` "first live
/// commit" lines (process 0, once it committed live messages).
fn assert_progress_lines(log: &str, rebuilt: Rebuilt, first_live: usize) {
    let (loaded, replayed) = match rebuilt {
        Rebuilt::Nothing => (0, 0),
        Rebuilt::Loaded(workers) => (workers, 0),
        Rebuilt::Replayed(workers) => (0, workers),
    };
    assert_eq!(log.matches("state loaded").count(), loaded, "state loaded lines in:\n{log}");
    assert_eq!(log.matches("replay read").count(), replayed, "replay read lines in:\n{log}");
    assert_eq!(log.matches("first live commit").count(), first_live, "first live commit lines in:\n{log}");
    assert!(!log.contains("replay done"), "the old, misleading line is gone");
}

#[test]
fn kill_nine_mid_run_then_restart_is_exact() {
    let stack = Stack::start("crash");
    let lines = testing::random_lines(11, 12_000);
    stack.produce(&lines);
    let total = lines.len() as i64;
    let committed = || stack.committed("crash");
    // Each round kills the job (SIGKILL) as soon as it has committed something new, and the
    // next round restarts from whatever Postgres holds. Where a kill lands is printed.
    let mut killed_mid_run = 0;
    for round in 0..4 {
        let before = committed();
        if before == total {
            break;
        }
        let mut child = stack.command("crash", &[]).spawn().expect("spawn encore-flow");
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let now = committed();
            if child.try_wait().expect("poll child").is_some() {
                break;
            }
            if now > before {
                child.kill().expect("kill -9");
                killed_mid_run += 1;
                break;
            }
        }
        let _ = child.wait();
        eprintln!("round {round}: killed with {} of {total} messages committed", committed());
    }
    assert!(killed_mid_run > 0, "at least one kill landed between two commits");
    stack.run_flow("crash", 1, 2);
    stack.check("crash", &lines);
}

/// Seeded messages in the topic, encore-flow running on them into `schema`, and Postgres
/// stopped once its first epoch is committed (the job still running): the messages and the job.
fn stop_postgres_after_a_commit(stack: &mut Stack, schema: &str, seed: u64) -> (Vec<Vec<u8>>, Child) {
    let lines = testing::random_lines(seed, 12_000);
    stack.produce(&lines);
    let mut child = stack.command(schema, &[]).spawn().expect("spawn encore-flow");
    while stack.committed(schema) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.try_wait().expect("poll child").is_none(), "the job is still running when Postgres stops");
    stack.postgres.stop().expect("stop PostgreSQL");
    (lines, child)
}

#[test]
fn postgres_restarted_during_a_run_finishes_exact() {
    let mut stack = Stack::start("pg-restart");
    let (lines, child) = stop_postgres_after_a_commit(&mut stack, "restart", 13);
    std::thread::sleep(Duration::from_secs(2));
    stack.postgres.start_again().expect("start PostgreSQL again");
    let output = child.wait_with_output().expect("encore-flow runs");
    assert_success(&output);
    stack.check("restart", &lines);
}

/// Postgres gone for good mid-run: the committer's commit fails after its bounded retries, it
/// stops the workers (worker 0 may be blocked handing it the next epoch: it is released), and
/// the process exits non-zero with one line; what was committed before stays consistent.
#[test]
fn postgres_gone_mid_run_fails_with_one_line() {
    let mut stack = Stack::start("pg-gone");
    let (lines, child) = stop_postgres_after_a_commit(&mut stack, "gone", 19);
    let output = child.wait_with_output().expect("encore-flow runs");
    assert_one_line_error(&output, "Postgres");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(log.matches("first live commit").count(), 1, "one commit landed before the stop:\n{log}");

    // Back up, a rerun finishes exact from whatever was committed.
    stack.postgres.start_again().expect("start PostgreSQL again");
    stack.run_flow("gone", 1, 1);
    stack.check("gone", &lines);
}

/// A password kept out of the URL (and so out of `ps`): a role that must authenticate
/// (scram-sha-256) runs with the password from PGPASSWORD; without it, the run ends with one
/// line that names the cause.
#[test]
fn a_url_without_password_takes_it_from_pgpassword() {
    let stack = Stack::start("password");
    let lines = testing::random_lines(23, 500);
    stack.produce(&lines);
    let url = stack.postgres.add_password_role("encore_pw", "kept out of argv").expect("a role with a password");
    let output = stack.command_to(&url, "password", &[]).env_remove("PGPASSWORD").output().expect("encore-flow runs");
    assert_one_line_error(&output, "password missing (give it in the URL or in PGPASSWORD)");

    let output = stack.command_to(&url, "password", &[]).env("PGPASSWORD", "kept out of argv").output().expect("encore-flow runs");
    assert_success(&output);
    stack.check("password", &lines);
}

/// TLS on both sides, as with managed Kafka and Postgres services: the broker is reachable
/// over TLS only and Postgres refuses plain TCP. encore-flow gets TLS from a `--kafka-config`
/// file (`security.protocol=SSL`), the broker's CA from `--kafka-option ssl.ca.location=CA`,
/// and a `sslmode=verify-full` URL, and the tables are exact with 2 processes.
#[test]
fn tls_to_kafka_and_postgres_is_exact() {
    let stack = Stack::start_tls("tls");
    let lines = testing::random_lines(29, 800);
    stack.produce(&lines);
    let logs = stack.run_flow("tls", 2, 1);
    stack.check("tls", &lines);
    assert!(logs[0].contains("encrypted, certificate and host name checked"), "{}", logs[0]);
}

/// SASL/SCRAM-SHA-512 over TLS (`SASL_SSL`), as managed Kafka services require: the broker
/// refuses clients that do not authenticate; encore-flow reads the protocol and credentials
/// from its `--kafka-config` file (the CA comes as a `--kafka-option`), and the tables are
/// exact with 2 workers.
#[test]
fn sasl_ssl_scram_to_kafka_is_exact() {
    let stack = Stack::start_sasl_tls("sasl");
    let lines = testing::random_lines(31, 800);
    stack.produce(&lines);
    stack.run_flow("sasl", 1, 2);
    stack.check("sasl", &lines);

    // The broker does check: with a wrong password (a --kafka-option applies after the file)
    // the job stops with one line. Tansu closes the connection on a failed authentication,
    // which librdkafka reports as unreachable; the line points at the credentials.
    let output =
        stack.command("sasl_wrong", &["--kafka-option".to_owned(), "sasl.password=wrong".to_owned()]).output().expect("encore-flow runs");
    testing::assert_one_line_error(&output, "check sasl.username and sasl.password");
}

/// Rescaling: stop, change the process count, start. 1 process to caught-up, more messages,
/// then 3 processes on three different loopback addresses: exact over all messages.
#[test]
fn rescale_from_one_process_to_three_hosts() {
    let stack = Stack::start("rescale");
    let lines = testing::random_lines(17, 3_000);
    let (first, second) = lines.split_at(1_000);
    stack.produce(first);
    stack.run_flow("rescale", 1, 1);
    stack.check("rescale", first);
    stack.produce(second);
    stack.run_flow_on("rescale", &["127.0.0.2", "127.0.0.3", "127.0.0.4"], 1);
    stack.check("rescale", &lines);
}

/// A small deterministic generator of test choices (xorshift64*): the rounds below are the
/// same on every run, so a failure can be rerun as it happened.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Durable state under crashes and rescaling: 24 rounds, each starting the job with another
/// layout than the last (1 × 2, 2 × 1, 1 × 1 workers) and killing every process of it with
/// SIGKILL: in odd rounds as soon as it has committed something new (a random 0–150 ms
/// later: between two commits), in even rounds after a random 50–850 ms (before its first
/// commit, while it loads the state, between commits or after it finished). 2 000 more
/// messages arrive every third round. After every kill the tables equal the oracle over
/// exactly the messages below the stored offsets of each partition (the recommendations as
/// of each user's last refresh aside); then a last run completes them, at rest: every user
/// refreshed after the restarts, recommendations included.
#[test]
fn kill_nine_rounds_with_durable_state_and_other_process_counts_stay_exact() {
    let stack = Stack::start("rounds");
    let lines = testing::random_lines(23, 16_000);
    let mut batches = lines.chunks(2_000);
    let mut choices = Choices(0x5eed_1234_abcd_0001);
    let layouts: [(&[&str], usize); 3] = [(&["127.0.0.1"], 2), (&["127.0.0.1", "127.0.0.1"], 1), (&["127.0.0.1"], 1)];
    let (mut between_commits, mut committed_before) = (0, 0);
    for round in 0..24 {
        if round % 3 == 0 {
            stack.produce(batches.next().expect("8 batches for 24 rounds"));
        }
        let (hosts, workers) = layouts[round % 3];
        // Budgets that leave users stale across kills (each restart makes them all stale).
        let refresh = ["0", "1", "all", "1000"][round % 4];
        let mut children = stack.spawn_flow_on("rounds", hosts, workers, &["--refresh-idle".to_owned(), refresh.to_owned()]);
        let started = std::time::Instant::now();
        let alive = |children: &mut Vec<Child>| children.iter_mut().all(|c| c.try_wait().expect("poll encore-flow").is_none());
        if round % 2 == 1 {
            while alive(&mut children) && stack.committed("rounds") == committed_before && started.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(choices.below(150)));
        } else {
            std::thread::sleep(Duration::from_millis(50 + choices.below(800)));
        }
        let running = alive(&mut children);
        let moved = stack.committed("rounds") > committed_before;
        for child in &mut children {
            let _ = child.kill(); // SIGKILL; an error means it had exited already
        }
        for mut child in children {
            let _ = child.wait();
        }
        between_commits += usize::from(running && moved);
        let committed = stack.check_committed("rounds");
        assert!(committed >= committed_before, "committed offsets never move back");
        let when = match (running, moved) {
            (false, _) => "after it ended",
            (true, false) => "before its first commit",
            (true, true) => "after a commit, running",
        };
        eprintln!(
            "round {round}: {} process(es) × {workers}, --refresh-idle {refresh}, killed {when}, {committed} messages committed",
            hosts.len()
        );
        committed_before = committed;
    }
    assert!(between_commits >= 4, "only {between_commits} of 24 kills hit a job between two commits");
    stack.run_flow("rounds", 2, 1);
    stack.check("rounds", &lines);
}

/// Retention deleted the head of every partition after a commit (up to the stored offset,
/// or one short of it): a restart loads the stored state and needs only the messages after
/// the stored offsets, and continues exactly. A fresh schema on the truncated topic is
/// refused with one line, as its tables would miss the deleted messages.
#[test]
fn a_topic_whose_head_was_deleted_continues_from_the_stored_state() {
    let tansu = Tansu::start_with(TansuStorage::Sqlite).expect("start Tansu with SQLite storage (see encore-testkit)");
    let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
    let mut stack = Stack::with("retention", tansu, postgres, None);
    let lines = testing::random_lines(29, 3_000);
    let (first, second) = lines.split_at(1_800);
    stack.produce(first);
    stack.run_flow("retention", 1, 2);
    stack.check("retention", first);

    let committed = {
        let mut sink =
            PgSink::connect(&stack.postgres_url(), "retention", PARAMS.score_precision, true, RetryPolicy::default()).expect("connect");
        sink.committed_offsets(TOPIC).expect("offsets")
    };
    let deleted: Vec<(i32, i64)> = committed.iter().map(|(&p, &next)| (p, if p % 2 == 0 { next } else { next - 1 })).collect();
    stack.tansu.delete_records_before(TOPIC, &deleted).expect("delete the head of every partition");
    stack.produce(second);
    let logs = stack.run_flow("retention", 2, 1);
    assert_progress_lines(&logs[0], Rebuilt::Loaded(1), 1);
    stack.check("retention", &lines);

    let output = stack.command("fresh", &[]).output().expect("encore-flow runs");
    assert_one_line_error(&output, "but the job needs its messages from offset 0 on");
}

/// Tables written before the durable state (offsets, no state, no recorded parameters):
/// replayed once from the topic, their state stored with the first commit, and loaded from
/// then on.
#[test]
fn tables_from_before_the_durable_state_are_replayed_once() {
    let stack = Stack::start("legacy");
    let exact = Params { count_bits: 0, ..PARAMS };
    let bits = ["--count-bits".to_owned(), "0".to_owned()];
    let lines = testing::random_lines(31, 3_000);
    let (first, second) = lines.split_at(2_000);
    stack.produce(first);
    stack.run_flow_with("legacy", &["127.0.0.1"], 2, &bits);
    let mut client = postgres::Client::connect(&stack.postgres_url(), postgres::NoTls).expect("connect");
    client
        .batch_execute("DELETE FROM legacy.encore_parameters; TRUNCATE legacy.encore_last_listen")
        .expect("make the tables look like an older encore-flow's");

    stack.produce(second);
    let logs = stack.run_flow_with("legacy", &["127.0.0.1"], 2, &bits);
    assert_progress_lines(&logs[0], Rebuilt::Replayed(2), 1);
    stack.check_with("legacy", &lines, &exact);
    let row = client
        .query_one("SELECT durable_state, (SELECT count(*) FROM legacy.encore_last_listen) FROM legacy.encore_parameters", &[])
        .expect("the record");
    assert!(row.get::<_, bool>(0), "the first commit records the state as complete");
    assert!(row.get::<_, i64>(1) > 0, "and writes it");

    let logs = stack.run_flow_with("legacy", &["127.0.0.1", "127.0.0.1"], 1, &bits);
    assert_progress_lines(&logs[0], Rebuilt::Loaded(1), 0);
    stack.check_with("legacy", &lines, &exact);
}
