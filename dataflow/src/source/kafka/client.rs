//! The Kafka consumers' settings: encore's own, then the user's (a `--kafka-config` file's,
//! then the `--kafka-option`s, merged by `encore_kafkaconf`), in that order; and the client
//! context that routes librdkafka's errors to our logs.

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use tracing::warn;

use super::KafkaSource;

/// The consumers' client context: logs librdkafka's error callbacks, minus end-of-partition
/// events, which the consume loop handles and which are not errors.
pub(super) struct LoggingContext;

impl ClientContext for LoggingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for LoggingContext {}

/// Builds the consumer of one worker.
pub(super) fn consumer(source: &KafkaSource, client_id: &str) -> Result<BaseConsumer<LoggingContext>, KafkaError> {
    consumer_config(source, client_id).create_with_context(LoggingContext)
}

/// The consumers' settings: ours, then the user's `--kafka-option`s over them. Every setting
/// says why it has its value.
fn consumer_config(source: &KafkaSource, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.brokers)
        // Required by librdkafka; offsets are never committed to the group (see below).
        .set("group.id", &source.group)
        .set("client.id", client_id)
        // Progress lives in Postgres, in the same transaction as the results: Kafka's group
        // offsets would be a second, inconsistent truth.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only reached when an assigned offset is out of range (deleted since the start-up
        // checks): "earliest" is then the low watermark, and the first message's offset shows
        // the gap, which the consume loop refuses (`partition.rs`, `resume_at`).
        .set("auto.offset.reset", "earliest")
        // End-of-partition events tell the job that a partition holds fewer messages than the
        // committed offsets say, or that a resumed partition answered nothing.
        .set("enable.partition.eof", "true")
        // Bounds the prefetch per consumer (one per worker): 64 MiB keeps throughput while
        // leaving memory to the dataflow.
        .set("queued.max.messages.kbytes", "65536")
        // Fail a dead broker in seconds rather than minutes.
        .set("socket.timeout.ms", "10000")
        // A fetch that finds no new message waits this long at the broker. Apache Kafka
        // answers as soon as data arrives, but Tansu answers only at the deadline, so
        // librdkafka's 500 ms default adds most of that to every event's latency there
        // (benches/README.md, "Kafka fetch wait"). Shorter waits cost idle CPU on Tansu.
        .set("fetch.wait.max.ms", "100");
    for (key, value) in &source.kafka_options {
        config.set(key, value);
    }
    config
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sink::postgres::StateReader;
    use crate::source::kafka::{Recovery, DEFAULT_ERROR_TIMEOUT};

    fn source(kafka_options: &[(&str, &str)]) -> KafkaSource {
        KafkaSource {
            brokers: "127.0.0.1:9092".into(),
            topic: "t".into(),
            group: "g".into(),
            kafka_options: kafka_options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            until_caught_up: false,
            epoch_ms: 250,
            epoch_events: 10_000,
            committed: BTreeMap::new(),
            recovery: Recovery::Load(Box::new(
                StateReader::new_for("postgres://127.0.0.1/encore", "public", 4, false).expect("a valid URL"),
            )),
            error_timeout: DEFAULT_ERROR_TIMEOUT,
        }
    }

    #[test]
    fn the_fetch_wait_is_short_unless_the_user_says_otherwise() {
        // librdkafka's 500 ms default adds latency on Tansu (benches/README.md).
        assert_eq!(consumer_config(&source(&[]), "c").get("fetch.wait.max.ms"), Some("100"));
        let config = consumer_config(&source(&[("fetch.wait.max.ms", "500"), ("enable.auto.commit", "true")]), "c");
        assert_eq!(config.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(config.get("enable.auto.commit"), Some("true"), "--kafka-option is applied last");
    }

    #[test]
    fn tls_and_scram_settings_are_accepted() {
        // librdkafka built without OpenSSL refuses these when the client is created.
        for options in [
            &[("security.protocol", "SSL")][..],
            &[
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", "probe"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ],
            &[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "PLAIN"), ("sasl.username", "u"), ("sasl.password", "p")],
        ] {
            let created = consumer_config(&source(options), "c").create_with_context::<_, BaseConsumer<LoggingContext>>(LoggingContext);
            assert!(created.is_ok(), "{options:?}: {:?}", created.err());
        }
    }
}
