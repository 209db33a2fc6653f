//! The harness against the real servers: each test starts its own, so they run in parallel.

use std::time::{Duration, Instant};

use encore_testkit::{Postgres, Tansu, TansuStorage, TestCa};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn count_rows(url: &str) -> Result<i64, postgres::Error> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    client.batch_execute("CREATE TABLE IF NOT EXISTS listens (user_id BIGINT, track_id BIGINT)")?;
    client.execute("INSERT INTO listens VALUES ($1, $2)", &[&7_i64, &42_i64])?;
    client.query_one("SELECT count(*) FROM listens", &[])?.try_get(0)
}

#[test]
fn postgres_answers_queries_and_survives_a_restart() {
    let mut postgres = Postgres::start().expect("postgres starts");
    assert!(postgres.url().starts_with("postgres://postgres@127.0.0.1:"));
    assert_eq!(count_rows(&postgres.url()).expect("query"), 1);

    postgres.stop().expect("postgres stops");
    assert!(postgres::Client::connect(&postgres.url(), postgres::NoTls).is_err(), "a stopped server refuses connections");
    postgres.start_again().expect("postgres starts again");
    // The row written before the stop is still there (fast shutdown keeps the data).
    assert_eq!(count_rows(&postgres.url()).expect("query after restart"), 2);
}

#[test]
fn two_clusters_run_side_by_side_and_vanish_on_drop() {
    let first = Postgres::start().expect("first cluster");
    let second = Postgres::start().expect("second cluster");
    assert_ne!(first.port(), second.port());
    let data_dir = first.data_dir();
    assert!(data_dir.join("PG_VERSION").is_file());
    drop(first);
    assert!(!data_dir.exists(), "the cluster's directory is removed on drop");
    assert_eq!(count_rows(&second.url()).expect("second still serves"), 1);
}

fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new().set("bootstrap.servers", brokers).set("acks", "all").create().expect("producer")
}

/// Reads partition `partition` of `topic` from the beginning until `count` messages arrived.
fn consume(brokers: &str, topic: &str, partition: i32, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    consume_with(brokers, &[], topic, partition, count)
}

/// As [`consume`], with extra client settings (TLS).
fn consume_with(brokers: &str, options: &[(String, String)], topic: &str, partition: i32, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("group.id", "testkit").set("enable.auto.commit", "false");
    for (key, value) in options {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut messages = Vec::new();
    while messages.len() < count && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("a message, not an error");
            messages.push((message.key().unwrap_or_default().to_vec(), message.payload().unwrap_or_default().to_vec()));
        }
    }
    messages
}

#[test]
fn tansu_round_trips_a_message_on_an_explicit_topic() {
    let tansu = Tansu::start().expect("tansu starts");
    assert_eq!(tansu.brokers(), format!("127.0.0.1:{}", tansu.port()));
    tansu.create_topic("music_streaming_data", 4).expect("topic created");

    let producer = producer(&tansu.brokers());
    producer
        .send(BaseRecord::to("music_streaming_data").partition(2).key("7").payload(r#"{"user_id":7,"track_id":42}"#))
        .map_err(|(error, _)| error)
        .expect("enqueued");
    producer.flush(TIMEOUT).expect("delivered");

    let messages = consume(&tansu.brokers(), "music_streaming_data", 2, 1);
    assert_eq!(messages, vec![(b"7".to_vec(), br#"{"user_id":7,"track_id":42}"#.to_vec())]);
}

#[test]
fn a_tls_broker_serves_clients_that_trust_its_ca_and_no_others() {
    let ca = TestCa::new("encore test CA").expect("CA");
    let tansu = Tansu::start_tls(&ca).expect("tansu starts with TLS");
    tansu.create_topic("secure", 2).expect("topic created over TLS");
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| format!("message {i}").into_bytes()).collect();
    tansu.produce("secure", &payloads, |_| Some(1), false).expect("produced over TLS");
    let messages = consume_with(&tansu.brokers(), &tansu.client_options(), "secure", 1, 5);
    assert_eq!(messages.into_iter().map(|(_, payload)| payload).collect::<Vec<_>>(), payloads);

    // Plain text, or TLS without trusting the CA, reads nothing.
    let other = TestCa::new("another CA").expect("CA");
    let untrusted =
        [("security.protocol".to_string(), "SSL".to_string()), ("ssl.ca.location".to_string(), other.root_path().display().to_string())];
    for options in [&[][..], &untrusted[..]] {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", tansu.brokers()).set("socket.timeout.ms", "3000").set("log_level", "0");
        for (key, value) in options {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config.create().expect("consumer");
        assert!(consumer.fetch_metadata(Some("secure"), Duration::from_secs(3)).is_err(), "{options:?}");
    }
}

#[test]
fn creating_an_existing_topic_is_an_error() {
    let tansu = Tansu::start().expect("tansu starts");
    tansu.create_topic("twice", 1).expect("first creation");
    let error = tansu.create_topic("twice", 1).expect_err("second creation fails");
    assert!(error.to_string().contains("twice"), "{error}");
}

#[test]
fn a_sqlite_broker_keeps_its_messages_across_a_kill() {
    let mut tansu = Tansu::start_with(TansuStorage::Sqlite).expect("tansu starts");
    tansu.create_topic("durable", 1).expect("topic created");
    let producer = producer(&tansu.brokers());
    producer.send(BaseRecord::to("durable").key("k").payload("kept")).map_err(|(error, _)| error).expect("enqueued");
    producer.flush(TIMEOUT).expect("delivered");
    drop(producer);

    let port = tansu.port();
    tansu.kill().expect("killed");
    assert!(!tansu.is_running());
    tansu.restart().expect("restarted");
    assert_eq!(tansu.port(), port, "the broker comes back at the same address");
    assert_eq!(consume(&tansu.brokers(), "durable", 0, 1), vec![(b"k".to_vec(), b"kept".to_vec())]);
}
