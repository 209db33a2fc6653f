//! One worker's partitions: where each starts reading, how far its position is verified, and
//! what a message or an end of partition means for it; and the consumer that reads them.
//!
//! ```text
//!  assign: per partition, check its low watermark, start at resume_at(committed)
//!  poll ─► message  ─► Partition::message: rewind (seek to its beginning) | skip (delivered
//!      │                twice, or in the loaded state) | Committed (a replay's) | Live
//!      ├─► end of partition ─► Partition::end: rewind | caught up at the start's high watermark
//!      └─► error ─► ErrorWatch: end the job (permanent, or persisting) or keep polling
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::warn;

use super::client::{consumer, LoggingContext};
use super::consumer_errors::ErrorWatch;
use super::{KafkaSource, SourceError, KAFKA_TIMEOUT};
use crate::metrics::{Metrics, PartitionGauges};

/// How far a partition's position is verified against the committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Nothing left to check.
    Verified,
    /// Started one message early ([`resume_at`]): the first answer must be a message at or
    /// before the committed offset, or the broker may have skipped messages.
    ResumedEarly,
    /// Read again from its beginning after a failed check: its first message must still come
    /// at or before the committed offset, or messages after it are gone (deleted since the
    /// start-up check): refused, as at start.
    Rewound,
}

/// What a message means for its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Nothing to feed: delivered twice, or in the state loaded at start.
    Skip,
    /// Before the committed offset, on a worker that replays the topic: a replay epoch's.
    Committed,
    /// At or after the committed offset: a live epoch's.
    Live,
}

/// The partition ends or starts after offsets the job needs (`needed`; `low` is where it
/// starts or ends instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gap {
    needed: i64,
    low: i64,
}

/// One partition's reading state.
#[derive(Debug)]
struct Partition {
    /// The next offset to take: anything below was taken already.
    next: i64,
    /// Its high watermark at start: caught up once `next` reaches it and its end was seen.
    target: i64,
    /// The offset committed in Postgres: messages below it are in the rebuilt state.
    committed: i64,
    position: Position,
    /// Below the committed offset: replayed (`true`) or in the loaded state.
    replay: bool,
    caught_up: bool,
    /// The next offset after the open epoch's last live message, reported when it closes.
    advanced: Option<i64>,
    gauge: Arc<PartitionGauges>,
}

/// What the caller must do after a partition's event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Read the partition again from its beginning (the position check failed).
    Rewind,
    /// Carry on; for a message, what it is.
    Take(Arrival),
}

impl Partition {
    /// A message at `offset` arrived.
    fn message(&mut self, offset: i64) -> Result<Next, Gap> {
        match self.position {
            Position::ResumedEarly if offset > self.committed => return Ok(self.rewind()),
            Position::Rewound if offset > self.committed => return Err(Gap { needed: self.committed, low: offset }),
            _ => self.position = Position::Verified,
        }
        if offset < self.next {
            return Ok(Next::Take(Arrival::Skip)); // delivered twice
        }
        self.next = offset + 1;
        Ok(Next::Take(match offset < self.committed {
            true if self.replay => Arrival::Committed,
            true => Arrival::Skip,
            false => {
                self.advanced = Some(offset + 1);
                Arrival::Live
            }
        }))
    }

    /// The consumer reached the partition's end.
    fn end(&mut self) -> Result<Next, Gap> {
        if self.position == Position::ResumedEarly {
            return Ok(self.rewind());
        }
        if self.next < self.committed {
            // The partition ends before the committed offset: recreated or truncated.
            return Err(Gap { needed: self.committed, low: self.next });
        }
        // A partition counts as caught up only once the consumer has seen its end: Tansu 0.6
        // reports the base offset of its last batch + 1 as the high watermark, short of the
        // true end, and the event makes the check right for every broker.
        self.caught_up |= self.next >= self.target;
        Ok(Next::Take(Arrival::Skip))
    }

    /// The broker answered a fetch one message before the committed offset with a message
    /// after it (or none): read the partition from its beginning instead, skipping what the
    /// state holds.
    fn rewind(&mut self) -> Next {
        self.next = 0;
        self.position = Position::Rewound;
        Next::Rewind
    }
}

/// What one poll brought.
pub(super) enum Polled<'a> {
    /// Nothing to read now.
    Nothing,
    /// An event the reader handled itself (an end of partition, a tolerated error, a
    /// message to skip).
    Handled,
    /// A message to feed.
    Message(BorrowedMessage<'a>, Arrival),
}

/// One worker's consumer, assigned its partitions at their starting offsets.
pub(super) struct Reader {
    consumer: BaseConsumer<LoggingContext>,
    partitions: BTreeMap<i32, Partition>,
    errors: ErrorWatch,
}

impl Reader {
    /// Assigns `partitions`, each from where it must start: from offset 0 when `replay`,
    /// else from its committed offset ([`resume_at`]). Refuses a partition that no longer
    /// holds what the job needs.
    pub(super) fn assign(
        source: &KafkaSource,
        client_id: &str,
        partitions: &[i32],
        metrics: &Metrics,
        replay: bool,
    ) -> Result<Reader, SourceError> {
        let consumer = consumer(source, client_id)?;
        let mut assignment = TopicPartitionList::new();
        let mut reading = BTreeMap::new();
        for &p in partitions {
            let committed = source.committed(p);
            let (low, high) = consumer.fetch_watermarks(&source.topic, p, KAFKA_TIMEOUT)?;
            let needed = if replay { 0 } else { committed };
            if low > needed {
                return Err(SourceError::Truncated { topic: source.topic.clone(), partition: p, needed, low });
            }
            let gauge = metrics.partition(p);
            gauge.set_high_watermark(high);
            let (start, verify) = if replay { (0, false) } else { resume_at(committed, low, high) };
            let position = if verify { Position::ResumedEarly } else { Position::Verified };
            let partition = Partition { next: start, target: high, committed, position, replay, caught_up: false, advanced: None, gauge };
            reading.insert(p, partition);
            let offset = if start == 0 { Offset::Beginning } else { Offset::Offset(start) };
            assignment.add_partition_offset(&source.topic, p, offset)?;
        }
        consumer.assign(&assignment)?;
        Ok(Reader { consumer, partitions: reading, errors: ErrorWatch::new(source.error_timeout) })
    }

    /// Polls the consumer once, without blocking, and handles what it can.
    pub(super) fn poll(&mut self, source: &KafkaSource) -> Result<Polled<'_>, SourceError> {
        let polled = match self.consumer.poll(Duration::ZERO) {
            None => return Ok(Polled::Nothing),
            Some(polled) => polled,
        };
        let (p, next) = match &polled {
            Ok(message) => {
                self.errors.progress();
                let Some(partition) = self.partitions.get_mut(&message.partition()) else { return Ok(Polled::Handled) };
                (message.partition(), partition.message(message.offset()))
            }
            Err(KafkaError::PartitionEOF(p)) => {
                self.errors.progress();
                let Some(partition) = self.partitions.get_mut(p) else { return Ok(Polled::Handled) };
                let next = partition.end();
                tracing::debug!(p, next = partition.next, target = partition.target, committed = partition.committed, "end of partition");
                (*p, next)
            }
            Err(error) => return consumer_error(&mut self.errors, error, source).map(|()| Polled::Handled),
        };
        let gap = |Gap { needed, low }| SourceError::Truncated { topic: source.topic.clone(), partition: p, needed, low };
        match next.map_err(gap)? {
            Next::Rewind => {
                let committed = self.partitions[&p].committed;
                let got = polled.as_ref().ok().map(|message| message.offset());
                warn!(
                    p,
                    committed,
                    ?got,
                    "the broker may have skipped messages from the committed offset on: reading the partition from its beginning"
                );
                self.consumer.seek(&source.topic, p, Offset::Beginning, KAFKA_TIMEOUT)?;
                Ok(Polled::Handled)
            }
            Next::Take(Arrival::Skip) => Ok(Polled::Handled),
            Next::Take(arrival) => Ok(polled.map_or(Polled::Handled, |message| Polled::Message(message, arrival))),
        }
    }

    /// Whether any partition has a committed offset, i.e. something to replay.
    pub(super) fn any_committed(&self) -> bool {
        self.partitions.values().any(|partition| partition.committed > 0)
    }

    /// Whether every partition has been read up to its committed offset.
    pub(super) fn replayed(&self) -> bool {
        self.partitions.values().all(|partition| partition.next >= partition.committed)
    }

    /// Whether every partition has been read up to its high watermark at start, and its end seen.
    pub(super) fn caught_up(&self) -> bool {
        self.partitions.values().all(|partition| partition.caught_up)
    }

    /// Messages still to read up to the high watermarks seen at start.
    pub(super) fn rest(&self) -> u64 {
        self.partitions.values().map(|partition| (partition.target - partition.next).max(0) as u64).sum()
    }

    /// `(partition, next offset)` of every partition with live messages in the open epoch,
    /// which then has none.
    pub(super) fn take_advanced(&mut self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions.iter_mut().filter_map(|(&p, partition)| partition.advanced.take().map(|next| (p, next)))
    }

    /// Publishes every partition's next offset to its gauge.
    pub(super) fn publish_offsets(&self) {
        for partition in self.partitions.values() {
            partition.gauge.set_next_offset(partition.next);
        }
    }
}

/// A consumer error: ends the job when the topic is gone, the error is permanent, or errors
/// persist ([`ErrorWatch`]).
fn consumer_error(errors: &mut ErrorWatch, error: &KafkaError, source: &KafkaSource) -> Result<(), SourceError> {
    warn!(%error, "Kafka consumer error");
    if matches!(error, KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) {
        return Err(SourceError::NoTopic(source.topic.clone()));
    }
    match errors.error(error, Instant::now()) {
        Some(reason) => Err(SourceError::KafkaFailed { brokers: source.brokers.clone(), topic: source.topic.clone(), reason }),
        None => Ok(()),
    }
}

/// Where a loaded worker starts reading a partition with `committed` offset and watermarks
/// `low` ≤ `committed` and `high`, and whether its first message must be checked.
///
/// Kafka answers a fetch at any offset with the batch holding it, and the client drops the
/// messages before the offset. Tansu 0.6's memory storage answers a fetch inside a record
/// batch with the *next* batch, silently skipping the rest of that one, and reports the base
/// offset of its last batch + 1 as the high watermark. So a loaded worker starts one message
/// early, at `committed − 1`, which it consumed before and which must still be there, and
/// checks the first answer: a message at or before `committed` means nothing it needs was
/// skipped (`committed` itself comes first when `committed − 1` ended a batch); a later one,
/// or none at all, means messages may have been skipped, and the worker reads the partition
/// from its beginning instead, skipping the committed messages (correct on every broker, at
/// the cost of reading the partition). Where `committed − 1` is gone (`low == committed`)
/// there is nothing to check against; a high watermark below `committed` is not to be
/// trusted: from the beginning.
fn resume_at(committed: i64, low: i64, high: i64) -> (i64, bool) {
    if committed <= 1 || high < committed {
        (0, false)
    } else if low < committed {
        (committed - 1, true)
    } else {
        (committed, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(next: i64, committed: i64, position: Position, replay: bool) -> Partition {
        let gauge = Metrics::new(0, false).partition(0);
        Partition { next, target: 10, committed, position, replay, caught_up: false, advanced: None, gauge }
    }

    #[test]
    fn a_loaded_worker_resumes_one_message_early_where_it_can_check() {
        // Nothing committed, or only offset 0: from the beginning.
        assert_eq!(resume_at(0, 0, 10), (0, false));
        assert_eq!(resume_at(1, 0, 10), (0, false));
        // The last committed message is still there: start at it and check the answer.
        assert_eq!(resume_at(5, 0, 10), (4, true));
        assert_eq!(resume_at(5, 0, 5), (4, true));
        // Retention took everything before the committed offset: nothing to check against.
        assert_eq!(resume_at(5, 5, 10), (5, false));
        // A high watermark short of the committed offset (Tansu 0.6's memory storage, or a
        // recreated topic): read from the beginning, where a real truncation is detected.
        assert_eq!(resume_at(5, 0, 3), (0, false));
    }

    #[test]
    fn a_resumed_partition_checks_its_first_answer() {
        // The last committed message comes first: nothing was skipped.
        let mut p = partition(4, 5, Position::ResumedEarly, false);
        assert_eq!(p.message(4), Ok(Next::Take(Arrival::Skip)), "in the loaded state");
        assert_eq!(p.message(5), Ok(Next::Take(Arrival::Live)));
        assert_eq!((p.next, p.advanced), (6, Some(6)));
        // A later message first: read again from the beginning, skipping the committed ones,
        // and the first message of that read must come at or before the committed offset.
        let mut p = partition(4, 5, Position::ResumedEarly, false);
        assert_eq!(p.message(7), Ok(Next::Rewind));
        assert_eq!(p.next, 0);
        assert_eq!(p.message(0), Ok(Next::Take(Arrival::Skip)));
        let mut p = partition(4, 5, Position::ResumedEarly, false);
        assert_eq!(p.end(), Ok(Next::Rewind), "no answer at all");
        assert_eq!(p.message(6), Err(Gap { needed: 5, low: 6 }), "messages after the committed offset are gone");
    }

    #[test]
    fn a_partition_is_caught_up_at_its_end_and_refused_when_it_ends_too_early() {
        let mut p = partition(3, 5, Position::Verified, true);
        assert_eq!(p.message(3), Ok(Next::Take(Arrival::Committed)), "replayed");
        assert_eq!(p.end(), Err(Gap { needed: 5, low: 4 }));
        let mut p = partition(10, 5, Position::Verified, false);
        assert_eq!(p.end(), Ok(Next::Take(Arrival::Skip)));
        assert!(p.caught_up);
    }
}
