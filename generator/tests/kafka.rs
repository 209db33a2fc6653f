//! `encore-gen stream --brokers` against a real broker (Tansu from encore-testkit): the round
//! trip, keys and partitions, failing fast, and Ctrl-C.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use encore_testkit::{cli::SMALL_CATALOG, run_bin, Tansu, TestCa};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

fn encore_gen(args: &[&str]) -> Output {
    run_bin(env!("CARGO_BIN_EXE_encore-gen"), args)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A consumed message: partition, key, payload.
struct Consumed {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// Reads every partition of `topic` from the beginning until `expected` messages arrived and
/// then two more seconds have passed without a new one (to catch extra copies).
fn consume_all(brokers: &str, topic: &str, partitions: i32, expected: usize) -> Vec<Consumed> {
    consume_all_with(brokers, &[], topic, partitions, expected)
}

/// As [`consume_all`], with extra client settings (TLS).
fn consume_all_with(brokers: &str, options: &[(String, String)], topic: &str, partitions: i32, expected: usize) -> Vec<Consumed> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("group.id", "encore-gen-test").set("enable.auto.commit", "false");
    for (key, value) in options {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut consumed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                consumed.push(Consumed {
                    partition: message.partition(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                });
                quiet_since = Instant::now();
            }
            Some(Err(error)) => panic!("consume failed: {error}"),
            None if consumed.len() >= expected && quiet_since.elapsed() > Duration::from_secs(2) => break,
            None => {}
        }
    }
    consumed
}

#[test]
fn round_trip_through_four_partitions_exactly_once_and_same_bytes_as_the_file() {
    let tansu = Tansu::start().expect("tansu");
    tansu.create_topic("listens", 4).expect("topic");
    let n = 20_000;
    let events = n.to_string();
    let brokers = tansu.brokers();
    let mut args = vec!["stream", "--brokers", &brokers, "--topic", "listens"];
    args.extend_from_slice(&["--events", &events, "--seed", "9", "--invalid-rate", "0.05"]);
    args.extend_from_slice(&SMALL_CATALOG);
    let output = encore_gen(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let summary = stderr_of(&output);
    assert!(summary.contains("20000 messages"), "{summary}");
    assert_eq!(summary.lines().count(), 1, "one summary line off a terminal: {summary}");

    let consumed = consume_all(&brokers, "listens", 4, n);
    assert_eq!(consumed.len(), n, "exactly N messages");

    // Same seed to a file: the same payload bytes, each as often as in the file. (Malformed
    // messages such as `null` repeat; valid events never do.)
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("events.jsonl");
    let mut args = vec!["stream", "--output", file.to_str().expect("UTF-8 path")];
    args.extend_from_slice(&["--events", &events, "--seed", "9", "--invalid-rate", "0.05"]);
    args.extend_from_slice(&SMALL_CATALOG);
    let output = encore_gen(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let bytes = std::fs::read(&file).expect("file");
    let mut from_file: HashMap<&[u8], usize> = HashMap::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        *from_file.entry(line).or_default() += 1;
    }
    let mut from_kafka: HashMap<&[u8], usize> = HashMap::new();
    for message in &consumed {
        *from_kafka.entry(message.payload.as_slice()).or_default() += 1;
    }
    assert!(from_file == from_kafka, "Kafka payloads differ from the file's lines");
    let valid: Vec<&[u8]> = consumed.iter().map(|c| c.payload.as_slice()).filter(|p| encore_core::parse_event(p).is_ok()).collect();
    let distinct_valid: HashSet<&[u8]> = valid.iter().copied().collect();
    assert_eq!(distinct_valid.len(), valid.len(), "no event twice");
    assert!(valid.len() > n * 9 / 10);

    // Keys: the user id for events, none for malformed messages; a user's events all sit in
    // one partition, in time order.
    let mut partition_of_user: HashMap<u64, i32> = HashMap::new();
    let mut last_time: HashMap<u64, i64> = HashMap::new();
    let mut used_partitions = HashSet::new();
    for message in &consumed {
        used_partitions.insert(message.partition);
        match encore_core::parse_event(&message.payload) {
            Ok(event) => {
                let key = message.key.as_deref().expect("events are keyed");
                assert_eq!(key, event.user_id.to_string().as_bytes());
                let partition = *partition_of_user.entry(event.user_id).or_insert(message.partition);
                assert_eq!(partition, message.partition, "user {} in two partitions", event.user_id);
                let last = last_time.insert(event.user_id, event.event_time_ms);
                assert!(last.is_none_or(|t| t < event.event_time_ms), "user {} out of order", event.user_id);
            }
            Err(_) => assert!(message.key.is_none(), "malformed messages have no key"),
        }
    }
    assert_eq!(used_partitions.len(), 4);
}

/// A broker reachable over TLS only: a `--kafka-config` file turns TLS on and a
/// `--kafka-option` names the CA, so both reach the producer.
#[test]
fn kafka_config_and_options_reach_a_tls_broker() {
    let ca = TestCa::new("encore test CA").expect("CA");
    let tansu = Tansu::start_tls(&ca).expect("tansu behind TLS");
    tansu.create_topic("listens", 2).expect("topic");
    let brokers = tansu.brokers();
    let options = tansu.client_options();
    let (file_settings, flag_settings): (Vec<_>, Vec<_>) = options.iter().partition(|(key, _)| key == "security.protocol");
    assert!(!file_settings.is_empty() && !flag_settings.is_empty(), "{options:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("client.properties");
    let mut text = format!("# as a managed service hands it out\nbootstrap.servers={brokers}\n");
    for (key, value) in &file_settings {
        text.push_str(&format!("{key}={value}\n"));
    }
    std::fs::write(&config, text).expect("write the config file");
    let config = config.display().to_string();
    let flags: Vec<String> = flag_settings.iter().map(|(key, value)| format!("{key}={value}")).collect();
    let mut args = vec!["stream", "--brokers", &brokers, "--topic", "listens", "--events", "500", "--seed", "3", "--kafka-config", &config];
    for flag in &flags {
        args.extend_from_slice(&["--kafka-option", flag]);
    }
    args.extend_from_slice(&SMALL_CATALOG);
    let output = encore_gen(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(consume_all_with(&brokers, &options, "listens", 2, 500).len(), 500);

    let output = encore_gen(&["stream", "--brokers", &brokers, "--events", "1", "--kafka-option", "no-equals-sign"]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("expected KEY=VALUE"), "{}", stderr_of(&output));
    // A file for another cluster is refused before anything is sent.
    let output = encore_gen(&["stream", "--brokers", "127.0.0.1:1", "--events", "1", "--kafka-config", &config]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains(&format!("line 2: bootstrap.servers={brokers} differs from --brokers 127.0.0.1:1")), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// A broker that admits SASL/SCRAM-authenticated clients only: the credentials come from a
/// `--kafka-config` file, off the command line; a wrong one is a one-line error that points
/// at them.
#[test]
fn sasl_credentials_from_a_kafka_config_file() {
    let tansu = Tansu::start_sasl("producer", "pa55word").expect("tansu with SASL");
    tansu.create_topic("listens", 2).expect("topic");
    let brokers = tansu.brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("client.properties");
    let text: String = tansu.client_options().iter().map(|(key, value)| format!("{key}={value}\n")).collect();
    std::fs::write(&config, text).expect("write the config file");
    let config = config.display().to_string();
    let mut args = vec!["stream", "--brokers", &brokers, "--topic", "listens", "--events", "300", "--kafka-config", &config];
    args.extend_from_slice(&SMALL_CATALOG);
    let output = encore_gen(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(consume_all_with(&brokers, &tansu.client_options(), "listens", 2, 300).len(), 300);

    args.extend_from_slice(&["--kafka-option", "sasl.password=wrong"]);
    let output = encore_gen(&args);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("check sasl.username and sasl.password"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn an_unreachable_broker_is_a_quick_one_line_error() {
    // A port nobody listens on: bind one, note it, release it.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let brokers = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let output = encore_gen(&["stream", "--brokers", &brokers, "--events", "10", "--seed", "1"]);
    let elapsed = started.elapsed();
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unreachable") && stderr.contains(&brokers), "{stderr}");
    // The SPEC bound (30 s) is part of the contract, not a speed measurement.
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[test]
fn a_missing_topic_is_a_one_line_error_and_is_not_created() {
    let tansu = Tansu::start().expect("tansu");
    let brokers = tansu.brokers();
    // Twice: the first attempt must not have created the topic.
    for _ in 0..2 {
        let output = encore_gen(&["stream", "--brokers", &brokers, "--topic", "no_such_topic", "--events", "10"]);
        assert!(!output.status.success());
        let stderr = stderr_of(&output);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no_such_topic") && stderr.contains("does not exist"), "{stderr}");
    }
}

#[test]
fn ctrl_c_flushes_what_is_in_flight_and_prints_totals() {
    let tansu = Tansu::start().expect("tansu");
    tansu.create_topic("endless", 2).expect("topic");
    let brokers = tansu.brokers();
    let mut args = vec!["stream", "--brokers", &brokers, "--topic", "endless", "--events", "0", "--rate", "2000"];
    args.extend_from_slice(&SMALL_CATALOG);
    let child = Command::new(env!("CARGO_BIN_EXE_encore-gen"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("encore-gen starts");
    std::thread::sleep(Duration::from_secs(3));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let output = child.wait_with_output().expect("encore-gen exits");
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    // "encore-gen: interrupted after N messages ..."
    let sent: usize = stderr
        .split("interrupted after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {stderr:?}"));
    assert!(sent > 0);
    assert_eq!(consume_all(&brokers, "endless", 2, sent).len(), sent, "everything sent was flushed");
}

#[test]
fn a_broker_lost_mid_stream_fails_the_run_instead_of_hanging() {
    let mut tansu = Tansu::start().expect("tansu");
    tansu.create_topic("doomed", 1).expect("topic");
    let brokers = tansu.brokers();
    let mut args = vec!["stream", "--brokers", &brokers, "--topic", "doomed", "--events", "0", "--rate", "1000"];
    args.extend_from_slice(&SMALL_CATALOG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_encore-gen"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("encore-gen starts");
    std::thread::sleep(Duration::from_secs(2));
    tansu.kill().expect("kill tansu");
    // Undeliverable messages fail after message.timeout.ms (30 s); allow generous slack
    // before calling it a hang.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("encore-gen still running 2 minutes after the broker died");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().expect("stderr");
    let stderr = stderr_of(&output);
    assert!(!status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not delivered"), "{stderr}");
}
