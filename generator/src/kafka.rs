//! Sending the stream to a Kafka topic with librdkafka (the `rdkafka` crate).
//!
//! ```text
//!  next_message ──► BaseProducer::send (librdkafka queue) ──► batches per partition, lz4 ──► broker
//!        ▲                 │ QueueFull: poll, retry                                  │
//!        └──── poll() ◄────┴──────────── delivery reports (counted in Deliveries) ◄──┘
//! ```
//!
//! # Delivery guarantee
//!
//! Every message is delivered at least once, in order per partition, or the run fails:
//! `acks=all` makes the broker confirm only what its in-sync replicas hold, librdkafka retries
//! transient errors within `message.timeout.ms`, and with idempotence (on by default) the
//! broker drops the duplicates that retries would otherwise create, so each message lands
//! exactly once. A message that still fails (broker gone for 30 s, topic deleted) is counted;
//! [`KafkaSink::check`] and [`KafkaSink::flush`] turn any failure into an error, so the
//! command never reports success for events the topic does not hold.
//!
//! # Failing fast
//!
//! Before the first send the topic's metadata is fetched with a timeout: an unreachable broker
//! or a missing topic is a one-line error within [`METADATA_TIMEOUT`], never a hang. Topics are
//! not auto-created (Tansu with file storage stalls on that, and a typo should not create a
//! topic).
//!
//! # Keys and partitions
//!
//! The key is the `user_id` in decimal, so a listener's events stay in order in one
//! partition. Malformed messages have no key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

/// How long to wait for the broker to answer the metadata request before giving up.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `flush` waits for in-flight messages at the end or on Ctrl-C.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why producing failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// The producer could not be created (bad configuration value).
    #[error("cannot create the Kafka producer: {0}")]
    Config(KafkaError),
    /// The broker did not answer in time.
    #[error("Kafka broker {brokers} unreachable within {}s: {reason}", METADATA_TIMEOUT.as_secs())]
    Unreachable {
        /// `--brokers` as given.
        brokers: String,
        /// librdkafka's error.
        reason: String,
    },
    /// The topic does not exist.
    #[error("topic {topic:?} does not exist on {brokers} (create it first, e.g. with deploy/start.sh)")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// `--brokers` as given.
        brokers: String,
    },
    /// Enqueueing a message failed for a reason other than a full queue.
    #[error("cannot enqueue a message: {0}")]
    Send(KafkaError),
    /// The broker rejected messages or they timed out.
    #[error("{failed} message(s) were not delivered: {first_error}")]
    DeliveryFailed {
        /// Messages that failed.
        failed: u64,
        /// The first failure.
        first_error: String,
    },
    /// Messages were still in flight when the flush timed out.
    #[error("{in_flight} message(s) still in flight after {}s", FLUSH_TIMEOUT.as_secs())]
    FlushTimeout {
        /// Messages not yet acknowledged.
        in_flight: i32,
    },
}

/// Delivery reports, counted by librdkafka's callback (runs inside `poll`).
#[derive(Default)]
pub struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Deliveries {
    fn record_error(&self, error: String) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(error);
        }
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // librdkafka logs every failed reconnect as an error; the outcome reaches the user as
        // one line (metadata check, delivery reports), so its log stays at debug
        // (`RUST_LOG=encore_generator=debug` shows it).
        tracing::debug!(?level, facility, message, "librdkafka");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A fatal error (say, the idempotent producer's state is lost) fails all later
        // deliveries; remember why, so the report names the cause.
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal)) {
            self.record_error(format!("fatal producer error: {reason}"));
        }
        tracing::debug!(%error, reason, "librdkafka error");
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.record_error(error.to_string());
            }
        }
    }
}

/// Serves delivery reports and fails if any message was not delivered.
fn check_deliveries(producer: &BaseProducer<Deliveries>) -> Result<(), KafkaSinkError> {
    producer.poll(Duration::ZERO);
    let deliveries = producer.context();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first_error = deliveries.first_error.lock().map(|e| e.clone().unwrap_or_default()).unwrap_or_default();
        return Err(KafkaSinkError::DeliveryFailed { failed, first_error });
    }
    Ok(())
}

/// Producer settings that are not fixed.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `HOST:PORT[,HOST:PORT…]`.
    pub brokers: String,
    /// The topic to produce to.
    pub topic: String,
    /// Use the idempotent producer (needs broker support for `InitProducerId`).
    pub idempotence: bool,
    /// Extra librdkafka settings (`--kafka-option`: TLS, SASL, ...), applied last.
    pub extra: Vec<(String, String)>,
}

/// A connected producer for one topic.
pub struct KafkaSink {
    producer: BaseProducer<Deliveries>,
    topic: String,
    brokers: String,
    partitions: usize,
    key: itoa::Buffer,
}

impl KafkaSink {
    /// Creates the producer and checks that the broker answers and the topic exists.
    pub fn connect(options: &KafkaOptions) -> Result<KafkaSink, KafkaSinkError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("client.id", "encore-gen")
            // Durability: the broker acknowledges only once all in-sync replicas have the batch.
            .set("acks", "all")
            // Exactly once into the log: the broker discards duplicates of retried batches
            // (implies retries and at most 5 in-flight requests per connection, keeping order).
            .set("enable.idempotence", if options.idempotence { "true" } else { "false" })
            // Events are small, repetitive JSON: lz4 shrinks them several-fold at almost no CPU.
            .set("compression.type", "lz4")
            // Batching: wait up to 20 ms to fill batches; a generator cares about throughput,
            // not per-event latency, and fuller batches compress better.
            .set("linger.ms", "20")
            // Up to ~1 MB per partition batch (stays under the broker's default 1 MB limit
            // after compression framing) and as many messages as fit.
            .set("batch.size", "1000000")
            .set("batch.num.messages", "100000")
            // Headroom so the generator rarely waits on the queue, bounded so it cannot eat
            // the machine's memory (~256 MB at most).
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "262144")
            // A message not acknowledged within 30 s fails (and so does the run), never hangs.
            .set("message.timeout.ms", "30000")
            // Give up a TCP connect after 10 s so an unreachable broker is reported quickly.
            .set("socket.connection.setup.timeout.ms", "10000")
            // Never create topics implicitly: Tansu's file storage stalls on auto-create, and
            // a mistyped topic should be an error, not a new topic.
            .set("allow.auto.create.topics", "false")
            // Hash keys like the Java client (murmur2), so a user's events land in the same
            // partition as with any other Kafka producer; unkeyed messages go anywhere.
            .set("partitioner", "murmur2_random");
        for (key, value) in &options.extra {
            config.set(key, value);
        }
        let producer: BaseProducer<Deliveries> = config.create_with_context(Deliveries::default()).map_err(KafkaSinkError::Config)?;

        let metadata =
            producer.client().fetch_metadata(Some(&options.topic), METADATA_TIMEOUT).map_err(|error| KafkaSinkError::Unreachable {
                brokers: options.brokers.clone(),
                reason: format!("{error}{}", encore_kafkaconf::unreachable_hint(&options.extra)),
            })?;
        let topic = metadata.topics().iter().find(|t| t.name() == options.topic);
        let partitions = match topic {
            Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => topic.partitions().len(),
            _ => return Err(KafkaSinkError::TopicMissing { topic: options.topic.clone(), brokers: options.brokers.clone() }),
        };
        Ok(KafkaSink { producer, topic: options.topic.clone(), brokers: options.brokers.clone(), partitions, key: itoa::Buffer::new() })
    }

    /// Number of partitions of the topic.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The brokers this sink talks to.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Enqueues one message, waiting (and serving delivery reports) while the queue is full.
    pub fn send(&mut self, key: Option<u64>, payload: &[u8]) -> Result<(), KafkaSinkError> {
        let KafkaSink { producer, topic, key: key_text, .. } = self;
        let key = key.map(|k| key_text.format(k).as_bytes());
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Back-pressure: let librdkafka drain batches and report deliveries.
                    producer.poll(Duration::from_millis(5));
                    check_deliveries(producer)?;
                    record = returned;
                }
                Err((error, _)) => return Err(KafkaSinkError::Send(error)),
            }
        }
    }

    /// Serves delivery reports and fails if any message was not delivered.
    pub fn check(&self) -> Result<(), KafkaSinkError> {
        check_deliveries(&self.producer)
    }

    /// Messages acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }

    /// Waits until everything enqueued is acknowledged (or [`FLUSH_TIMEOUT`] passes).
    pub fn flush(&self) -> Result<(), KafkaSinkError> {
        let flushed = self.producer.flush(FLUSH_TIMEOUT);
        self.check()?;
        match flushed {
            Ok(()) => Ok(()),
            Err(_) => Err(KafkaSinkError::FlushTimeout { in_flight: self.producer.in_flight_count() }),
        }
    }
}
