//! The Kafka side of the pipeline benchmark: a producer that learns where every message
//! landed, and the raw consume + parse baseline.
//!
//! ```text
//!  EventStream ──► send(key = user_id, opaque = message index) ──► broker
//!                       delivery report: (index, partition, offset) ──► Deliveries
//!  raw baseline:  BaseConsumer per thread, its partitions from the beginning ──► parse_event
//! ```
//!
//! The producer is configured like `encore-gen stream` (acks=all, idempotent, lz4, murmur2
//! on the user id), so the pre-filled topic looks like a real one; only the linger differs
//! between the bulk fill (20 ms, as the generator) and the paced latency run (1 ms: a
//! message's latency should not start with a wait for a batch to fill).

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use encore_generator::stream::EventStream;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

/// A broker and the user's librdkafka settings for it (`--kafka-config`, `--kafka-option`),
/// applied over the benchmark's own settings of every client, as encore-flow applies them.
#[derive(Clone, Debug)]
pub struct Kafka {
    /// Bootstrap servers.
    pub brokers: String,
    /// The user's settings, in the order they apply.
    pub settings: Vec<(String, String)>,
}

impl Kafka {
    /// `own`, the benchmark's settings of one client, with the broker and the user's on top.
    fn config(&self, own: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in own {
            config.set(*key, value);
        }
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }
}

/// How long a flush may wait for acknowledgements before the run fails.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// The raw consumer gives up when no message arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where each acknowledged message landed.
#[derive(Default)]
pub struct Deliveries {
    /// `(message index, partition, offset)` in acknowledgement order; only when recording.
    landed: Mutex<Vec<(usize, i32, i64)>>,
    /// Per partition, one past the highest acknowledged offset.
    ends: Mutex<BTreeMap<i32, i64>>,
    record: bool,
    failed: Mutex<(u64, Option<String>)>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(message) => {
                let (partition, offset) = (message.partition(), message.offset());
                if let Ok(mut ends) = self.ends.lock() {
                    let end = ends.entry(partition).or_default();
                    *end = (*end).max(offset + 1);
                }
                if self.record {
                    if let Ok(mut landed) = self.landed.lock() {
                        landed.push((index, partition, offset));
                    }
                }
            }
            Err((error, _)) => {
                if let Ok(mut failed) = self.failed.lock() {
                    failed.0 += 1;
                    failed.1.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// A producer for the benchmark topic.
pub struct BenchProducer {
    producer: BaseProducer<Deliveries>,
    topic: String,
    key: String,
}

impl BenchProducer {
    /// `linger_ms` trades batching for latency; `record` keeps every message's landing place.
    pub fn connect(kafka: &Kafka, topic: &str, linger_ms: u32, record: bool) -> Result<BenchProducer> {
        let brokers = &kafka.brokers;
        let producer: BaseProducer<Deliveries> = kafka
            .config(&[
                ("client.id", "encore-pipeline-bench".into()),
                // As encore-gen: durable, exactly once into the log, compressed, keyed like Java.
                ("acks", "all".into()),
                ("enable.idempotence", "true".into()),
                ("compression.type", "lz4".into()),
                ("linger.ms", linger_ms.to_string()),
                ("batch.size", "1000000".into()),
                ("batch.num.messages", "100000".into()),
                ("queue.buffering.max.messages", "500000".into()),
                ("queue.buffering.max.kbytes", "262144".into()),
                ("message.timeout.ms", "30000".into()),
                ("allow.auto.create.topics", "false".into()),
                ("partitioner", "murmur2_random".into()),
            ])
            .create_with_context(Deliveries { record, ..Deliveries::default() })
            .context("creating the Kafka producer")?;
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .with_context(|| format!("Kafka at {brokers} did not answer"))?;
        if !metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()) {
            bail!("topic {topic} does not exist on {brokers}");
        }
        Ok(BenchProducer { producer, topic: topic.to_owned(), key: String::new() })
    }

    /// Enqueues one message (index `index`, key `user`), waiting while the queue is full.
    pub fn send(&mut self, index: usize, user: Option<u64>, payload: &[u8]) -> Result<()> {
        self.key.clear();
        if let Some(user) = user {
            self.key.push_str(&user.to_string());
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(&self.topic, index).payload(payload);
        if user.is_some() {
            record = record.key(self.key.as_bytes());
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    self.producer.poll(Duration::from_millis(5));
                    self.check()?;
                    record = returned;
                }
                Err((error, _)) => return Err(anyhow!("cannot enqueue a message: {error}")),
            }
        }
    }

    /// Serves delivery reports; fails if any message was not delivered.
    pub fn check(&self) -> Result<()> {
        self.producer.poll(Duration::ZERO);
        let failed = self.producer.context().failed.lock().map_err(|_| anyhow!("poisoned"))?;
        if failed.0 > 0 {
            bail!("{} message(s) not delivered: {}", failed.0, failed.1.clone().unwrap_or_default());
        }
        Ok(())
    }

    /// Waits until every enqueued message is acknowledged.
    pub fn flush(&self) -> Result<()> {
        self.producer.flush(FLUSH_TIMEOUT).map_err(|e| anyhow!("flushing the producer: {e}"))?;
        self.check()
    }

    /// Per partition, one past the highest acknowledged offset.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        self.producer.context().ends.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Takes the recorded `(message index, partition, offset)` triples.
    pub fn take_landed(&self) -> Vec<(usize, i32, i64)> {
        self.producer.context().landed.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }
}

/// Produces the next `events` messages of `stream` as fast as the broker takes them.
/// Returns the seconds until the last acknowledgement.
pub fn fill(producer: &mut BenchProducer, stream: &mut EventStream, events: u64) -> Result<f64> {
    let started = Instant::now();
    let mut payload = Vec::with_capacity(512);
    for index in 0..events {
        let message = stream.next_message(&mut payload);
        producer.send(index as usize, message.key(), &payload)?;
        if index % 10_000 == 0 {
            producer.check()?;
        }
    }
    producer.flush()?;
    Ok(started.elapsed().as_secs_f64())
}

/// What the raw consumer read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Consumed {
    /// Messages read.
    pub messages: u64,
    /// Of which parsed as valid SPEC §1 events.
    pub valid: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Wall-clock seconds, consumer creation included, slowest thread.
    pub seconds: f64,
}

/// Reads every partition up to `ends` from the beginning with `threads` consumers (partition
/// `p` to thread `p mod threads`, as encore-flow assigns them to workers), parsing each
/// payload with `encore_core::parse_event` unless `parse` is false.
pub fn consume(kafka: &Kafka, topic: &str, ends: &BTreeMap<i32, i64>, threads: usize, parse: bool) -> Result<Consumed> {
    let threads = threads.max(1);
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let mine: BTreeMap<i32, i64> = ends.iter().filter(|(p, _)| **p as usize % threads == thread).map(|(p, e)| (*p, *e)).collect();
            let (kafka, topic, barrier) = (kafka.clone(), topic.to_owned(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                consume_partitions(&kafka, &topic, &mine, thread, parse)
            })
        })
        .collect();
    let mut total = Consumed::default();
    for handle in handles {
        let part = handle.join().map_err(|_| anyhow!("a consumer thread panicked"))??;
        total.messages += part.messages;
        total.valid += part.valid;
        total.bytes += part.bytes;
        total.seconds = total.seconds.max(part.seconds);
    }
    Ok(total)
}

fn consume_partitions(kafka: &Kafka, topic: &str, ends: &BTreeMap<i32, i64>, thread: usize, parse: bool) -> Result<Consumed> {
    let started = Instant::now();
    let mut result = Consumed::default();
    if ends.is_empty() {
        return Ok(result);
    }
    // The settings of encore-flow's consumers (source/kafka.rs) that matter for speed.
    let consumer: BaseConsumer = kafka
        .config(&[
            ("group.id", format!("encore-pipeline-raw-{thread}")),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            ("queued.max.messages.kbytes", "65536".into()),
        ])
        .create()
        .context("creating the raw consumer")?;
    let mut assignment = TopicPartitionList::new();
    for &p in ends.keys() {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|&p| (p, 0)).collect();
    let mut last_message = Instant::now();
    while next.iter().any(|(p, n)| *n < ends[p]) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if last_message.elapsed() > STALL_TIMEOUT {
                    bail!("raw consumer stalled: at {next:?}, expected {ends:?}");
                }
            }
            Some(Err(error)) => bail!("raw consumer: {error}"),
            Some(Ok(message)) => {
                last_message = Instant::now();
                let Some(n) = next.get_mut(&message.partition()) else { continue };
                if message.offset() < *n {
                    continue;
                }
                *n = message.offset() + 1;
                let payload = message.payload().unwrap_or_default();
                result.messages += 1;
                result.bytes += payload.len() as u64;
                if parse && encore_core::parse_event(payload).is_ok() {
                    result.valid += 1;
                }
            }
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// Whether every partition of `topic` is empty (high watermark 0), as the benchmark needs
/// when it is pointed at an existing broker.
pub fn topic_is_empty(kafka: &Kafka, topic: &str) -> Result<bool> {
    let brokers = &kafka.brokers;
    let consumer: BaseConsumer = kafka.config(&[("group.id", "encore-pipeline-check".into())]).create().context("creating a consumer")?;
    let metadata =
        consumer.fetch_metadata(Some(topic), Duration::from_secs(15)).with_context(|| format!("Kafka at {brokers} did not answer"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else {
        bail!("topic {topic} does not exist on {brokers}: create it first");
    };
    for partition in found.partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(15))?;
        if high > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}
