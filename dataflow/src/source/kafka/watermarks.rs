//! What the job asks the broker besides messages: the topic's partition count at start, and
//! the high watermarks that served metrics show while it runs.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tracing::warn;

use super::client::consumer;
use super::{KafkaSource, SourceError, KAFKA_TIMEOUT};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Attempts of the start-up metadata request (with backoff) before giving up.
const KAFKA_ATTEMPTS: u32 = 3;
/// How often served metrics refresh the high watermarks of this process's partitions.
pub const WATERMARK_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on one watermark request of the metrics poller: a slow broker delays the next
/// refresh, never the job (the poller has a thread and a client of its own).
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The partitions of the source's topic, asking with bounded retries.
pub fn partition_count(source: &KafkaSource) -> Result<i32, SourceError> {
    let consumer = consumer(source, "encore-flow-metadata")?;
    let mut last_error = String::new();
    for attempt in 0..KAFKA_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 << attempt));
        }
        match consumer.fetch_metadata(Some(&source.topic), KAFKA_TIMEOUT) {
            Ok(metadata) => {
                let Some(topic) = metadata.topics().iter().find(|t| t.name() == source.topic) else {
                    return Err(SourceError::NoTopic(source.topic.clone()));
                };
                if topic.error().is_some() || topic.partitions().is_empty() {
                    return Err(SourceError::NoTopic(source.topic.clone()));
                }
                return Ok(topic.partitions().len() as i32);
            }
            Err(error) => last_error = error.to_string(),
        }
    }
    let reason = format!("{last_error}{}", encore_kafkaconf::unreachable_hint(&source.kafka_options));
    Err(SourceError::KafkaUnreachable { brokers: source.brokers.clone(), reason })
}

/// Refreshes the high watermarks of the partitions this process reads (as registered in
/// `metrics` by its workers) every [`WATERMARK_INTERVAL`], until the `shutdown` is finished.
/// Off the hot path: a thread and a Kafka client of its own, since `fetch_watermarks` blocks.
pub(crate) fn watch_watermarks(source: KafkaSource, metrics: Arc<Metrics>, shutdown: Shutdown) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new().name("watermarks".to_owned()).spawn(move || {
        let consumer = match consumer(&source, "encore-flow-watermarks") {
            Ok(consumer) => consumer,
            Err(error) => return warn!(%error, "no watermark client: metrics show the watermarks seen at start"),
        };
        while !shutdown.wait_finished(WATERMARK_INTERVAL) {
            for p in metrics.partitions() {
                match consumer.fetch_watermarks(&source.topic, p, WATERMARK_TIMEOUT) {
                    Ok((_low, high)) => metrics.partition(p).set_high_watermark(high),
                    Err(error) => {
                        metrics.watermark_error();
                        tracing::debug!(%error, p, "watermark request failed");
                    }
                }
            }
        }
    });
    spawned.map_err(|error| warn!(%error, "no watermark thread: metrics show the watermarks seen at start")).ok()
}
