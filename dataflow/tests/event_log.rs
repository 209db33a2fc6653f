//! `--emit-events`: the event log of the system encore replaces (`track_stream_event_log`,
//! `track_like_event_log`), against a real Tansu broker and a real PostgreSQL and as CSV.
//!
//! * `kill -9` rounds mid-run, then a run to caught-up: every valid message of the topic is in
//!   the log exactly once, columns equal to the message as parsed (the topic is read back for
//!   each message's partition and offset), and the other tables still equal the oracle;
//! * the unique key is a safety net that fails loudly: an event already in the log fails the
//!   commit with one line, and nothing of that commit is written;
//! * without the flag no log table is created;
//! * `--input … --output-dir … --emit-events` writes both logs as CSV, one row per valid line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use encore_dataflow::sink::postgres::{EventLogRow, PgSink, RetryPolicy};
use encore_dataflow::tables::{LoggedEvent, Params};
use encore_dataflow::testing::{self, oracle};
use encore_dataflow::testing::{assert_one_line_error, assert_success, assert_tables_eq};
use encore_testkit::processes::wait_all;
use encore_testkit::{free_port, retry_on_taken_port, Postgres, Tansu};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TOPIC: &str = "music_streaming_data";
const PARTITIONS: i32 = 4;
const PARAMS: Params = Params { history_cap: 5, min_co: 1, neighbors: 3, recommendations: 3, score_precision: 4, count_bits: 1 };

struct Stack {
    tansu: Tansu,
    postgres: Postgres,
}

impl Stack {
    fn start() -> Stack {
        let tansu = Tansu::start().expect("start Tansu (see encore-testkit)");
        let postgres = Postgres::start().expect("start PostgreSQL (see encore-testkit)");
        tansu.create_topic(TOPIC, PARTITIONS).expect("create the topic");
        Stack { tansu, postgres }
    }

    /// `encore-flow --until-caught-up` into `schema`, small epochs, `extra` flags last.
    fn command(&self, schema: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_encore-flow"));
        command
            .args(["--brokers", &self.tansu.brokers(), "--topic", TOPIC, "--postgres", &self.postgres.url()])
            .args(["--pg-schema", schema, "--until-caught-up", "--epoch-ms", "50", "--epoch-events", "300", "-w", "2"])
            .args(["--history-cap", "5", "--min-co", "1", "--neighbors", "3", "--recommendations", "3", "--count-bits", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn sink(&self, schema: &str) -> PgSink {
        PgSink::connect(&self.postgres.url(), schema, PARAMS.score_precision, false, RetryPolicy::default())
            .and_then(PgSink::with_event_log)
            .expect("connect")
    }

    /// Messages committed so far in `schema` (0 before the first commit).
    fn committed(&self, schema: &str) -> i64 {
        let quick = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
        PgSink::connect(&self.postgres.url(), schema, PARAMS.score_precision, false, quick)
            .and_then(|mut sink| sink.committed_offsets(TOPIC))
            .map(|offsets| offsets.values().sum())
            .unwrap_or(0)
    }

    /// Every message of the topic with its partition and offset, read back from the broker.
    fn messages(&self, expected: usize) -> Vec<(i32, i64, Vec<u8>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.tansu.brokers())
            .set("group.id", "encore-event-log-test")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .expect("a consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment.add_partition_offset(TOPIC, p, Offset::Beginning).expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        let mut messages = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while messages.len() < expected {
            assert!(Instant::now() < deadline, "read {} of {expected} messages back", messages.len());
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => messages.push((message.partition(), message.offset(), message.payload().unwrap_or_default().to_vec())),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(error)) => panic!("reading the topic back: {error}"),
            }
        }
        messages
    }

    /// The log in `schema` holds every valid message of the topic exactly once, as parsed; the
    /// other tables equal the oracle and the offsets cover every message.
    fn check(&self, schema: &str, lines: &[Vec<u8>]) {
        let mut want: Vec<EventLogRow> = Vec::new();
        for (partition, offset, payload) in self.messages(lines.len()) {
            if let Ok(event) = encore_core::parse_event(&payload) {
                want.push(EventLogRow::of(&LoggedEvent::new(&event, partition, offset)));
            }
        }
        let mut sink = self.sink(schema);
        let mut got = sink.read_event_log().expect("read the event log");
        let mut per_position: BTreeMap<(i32, i64), usize> = BTreeMap::new();
        for row in &got {
            *per_position.entry((row.partition, row.offset)).or_default() += 1;
        }
        assert!(per_position.values().all(|&n| n == 1), "an event logged twice in {schema}");
        want.sort();
        got.sort();
        assert_eq!(got.len(), want.len(), "rows of the event logs of {schema}");
        for (got, want) in got.iter().zip(&want) {
            assert_eq!(got, want, "event log row of {schema}");
        }
        assert!(want.iter().any(|row| row.like_log) && want.iter().any(|row| !row.like_log), "both logs are exercised");
        assert!(want.iter().any(|row| row.ms_played.is_none()), "a NULL ms_played is exercised");

        let (tables, _dead_letters) = sink.read_tables().expect("read tables");
        let (events, _invalid) = testing::parse_lines(lines);
        let mut want = oracle::compute(&events, &PARAMS);
        want.co_listens.clear(); // not asked for
        assert_tables_eq(&tables, &want, schema);
        let offsets = sink.committed_offsets(TOPIC).expect("offsets");
        assert_eq!(offsets.values().sum::<i64>(), lines.len() as i64, "offsets cover every message");
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.postgres.url(), postgres::NoTls).expect("connect")
    }
}

#[test]
fn kill_nine_rounds_then_restart_log_each_event_exactly_once() {
    let stack = Stack::start();
    let lines = testing::random_lines(37, 12_000);
    stack.tansu.produce(TOPIC, &lines, |_| None, false).expect("all messages delivered");
    let total = lines.len() as i64;
    // Each round kills the job (SIGKILL) as soon as it has committed something new; the next
    // one restarts from whatever Postgres holds, replaying the committed messages unlogged.
    let mut killed_mid_run = 0;
    for round in 0..6 {
        let before = stack.committed("crash");
        if before == total {
            break;
        }
        let mut child = stack.command("crash", &["--emit-events"]).spawn().expect("spawn encore-flow");
        loop {
            std::thread::sleep(Duration::from_millis(5));
            if child.try_wait().expect("poll child").is_some() {
                break;
            }
            if stack.committed("crash") > before {
                child.kill().expect("kill -9");
                killed_mid_run += 1;
                break;
            }
        }
        let output = child.wait_with_output().expect("encore-flow ends");
        // A round that finished by itself must have succeeded (a duplicate would fail it).
        if output.status.code().is_some() {
            assert_success(&output);
        }
        eprintln!("round {round}: killed with {} of {total} messages committed", stack.committed("crash"));
    }
    assert!(killed_mid_run >= 3, "at least three kills landed between two commits ({killed_mid_run})");
    let output = stack.command("crash", &["--emit-events"]).output().expect("encore-flow runs");
    assert_success(&output);
    stack.check("crash", &lines);

    // Without the flag, nothing of the log exists.
    let output = stack.command("plain", &[]).output().expect("encore-flow runs");
    assert_success(&output);
    let row = stack
        .client()
        .query_one("SELECT to_regclass('plain.track_stream_event_log') IS NULL AND to_regclass('plain.track_like_event_log') IS NULL", &[])
        .expect("query");
    assert!(row.get::<_, bool>(0), "no event log tables without --emit-events");

    // The unique key is the safety net: an event that is in the log already (here put there
    // by hand, at the position of the next message of partition 0) fails the commit with one
    // line, and the commit writes nothing, offsets included. Removed, the run logs it once.
    // The first of them, the next message of partition 0, is valid.
    let mut more = vec![br#"{"user_id":3,"track_id":4,"event_timestamp":1714557600000,"event_type":"like"}"#.to_vec()];
    more.extend(testing::random_lines(41, 200));
    stack.tansu.produce(TOPIC, &more, |_| Some(0), false).expect("all messages delivered");
    let next = stack.sink("crash").committed_offsets(TOPIC).expect("offsets")[&0];
    let mut client = stack.client();
    for table in ["track_stream_event_log", "track_like_event_log"] {
        client
            .execute(
                &format!("INSERT INTO crash.{table} (user_id, track_id, kafka_partition, kafka_offset) VALUES (0, 0, 0, $1)"),
                &[&next],
            )
            .expect("a row by hand");
    }
    let output = stack.command("crash", &["--emit-events"]).output().expect("encore-flow runs");
    assert_one_line_error(&output, "duplicate key value violates unique constraint");
    assert_eq!(stack.committed("crash"), total, "nothing committed past the duplicate");
    client.batch_execute("DELETE FROM crash.track_stream_event_log WHERE user_id = 0 AND event_timestamp IS NULL; DELETE FROM crash.track_like_event_log WHERE user_id = 0 AND event_timestamp IS NULL").expect("remove them");
    let output = stack.command("crash", &["--emit-events"]).output().expect("encore-flow runs");
    assert_success(&output);
    let all: Vec<Vec<u8>> = lines.iter().chain(&more).cloned().collect();
    stack.check("crash", &all);
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("encore-event-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

#[test]
fn output_dir_writes_both_logs_as_csv() {
    let dir = scratch("csv");
    let mut lines = testing::random_lines(43, 2_000);
    // An event time beyond what timestamptz holds: kept, with an empty timestamp.
    lines.push(br#"{"user_id":1,"track_id":2,"event_timestamp":9223372036854775807,"event_type":"skip","ms_played":12}"#.to_vec());
    let input = dir.join("events.jsonl");
    testing::write_lines(&input, &lines);
    let out = dir.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_encore-flow"))
        .args(["--input", input.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--emit-events", "-w", "2"])
        .args(["--epoch-events", "300"])
        .output()
        .expect("run");
    assert_success(&output);

    let header = "user_id,track_id,event_timestamp,kafka_partition,kafka_offset,event_type,ms_played\n";
    let (mut stream, mut likes) = (String::from(header), String::from(header));
    for (number, line) in lines.iter().enumerate() {
        let Ok(event) = encore_core::parse_event(line) else { continue };
        let time = if event.event_time_ms == i64::MAX { String::new() } else { encore_core::format_iso_timestamp(event.event_time_ms) };
        let ms_played = event.ms_played.map(|ms| ms.to_string()).unwrap_or_default();
        let row = format!("{},{},{time},0,{number},{},{ms_played}\n", event.user_id, event.track_id, event.event_type);
        (if event.event_type == encore_core::EventType::Like { &mut likes } else { &mut stream }).push_str(&row);
    }
    let read = |table: &str| std::fs::read_to_string(out.join(format!("{table}.csv"))).expect("a CSV file");
    assert_eq!(read("track_stream_event_log"), stream);
    assert_eq!(read("track_like_event_log"), likes);
    assert!(stream.ends_with("1,2,,0,2000,skip,12\n"), "the far-future event is there");
    assert!(likes.lines().count() > 10 && stream.lines().count() > 10);

    // Two processes (the events of process 1 cross the network to process 0): the same files.
    // The hostfile's ports are bound after it is written: a run that finds one taken
    // meanwhile is retried on fresh ports.
    let pair = dir.join("pair");
    let hostfile = dir.join("hosts");
    retry_on_taken_port(|_| {
        let ports = [free_port().expect("a free port"), free_port().expect("a free port")];
        std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).expect("hostfile");
        let children: Vec<_> = (0..2)
            .map(|process| {
                Command::new(env!("CARGO_BIN_EXE_encore-flow"))
                    .args(["--input", input.to_str().unwrap(), "--output-dir", pair.to_str().unwrap(), "--emit-events"])
                    .args(["--epoch-events", "300", "-n", "2", "-p", &process.to_string(), "-h", hostfile.to_str().unwrap()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn encore-flow")
            })
            .collect();
        wait_all(children, Duration::from_secs(300))
    })
    .unwrap_or_else(|stderr| panic!("two processes: {stderr}"));
    let read_pair = |table: &str| std::fs::read_to_string(pair.join(format!("{table}.csv"))).expect("a CSV file");
    assert_eq!(read_pair("track_stream_event_log"), stream, "2 processes");
    assert_eq!(read_pair("track_like_event_log"), likes, "2 processes");

    // Without the flag, no log files.
    let plain = dir.join("plain");
    let output = Command::new(env!("CARGO_BIN_EXE_encore-flow"))
        .args(["--input", input.to_str().unwrap(), "--output-dir", plain.to_str().unwrap()])
        .output()
        .expect("run");
    assert_success(&output);
    assert!(plain.join("track_stats.csv").exists() && !plain.join("track_stream_event_log.csv").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
