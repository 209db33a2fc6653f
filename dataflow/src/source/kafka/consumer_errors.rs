//! Which Kafka consumer errors end the job, and when.
//!
//! librdkafka reports every problem it meets while fetching as an error event and keeps
//! trying: a broker that is down, a topic it may not read, a batch in a compression codec it
//! was built without. Some of these heal (a broker restart), some never do, and retrying the
//! ones that never do is an endless loop that consumes nothing and says nothing beyond a
//! warning per poll. Skipping the offending messages is no way out either: the tables would
//! no longer equal their definition over the topic. So a worker ends the job when
//!
//! * an error is **permanent** ([`permanent`]): no retry can change it, e.g. `NotImplemented`
//!   (a batch in a codec or message format this librdkafka cannot decode), an authorization
//!   or authentication failure, any error librdkafka itself calls fatal; or
//! * errors **persist**: they keep coming for longer than the limit (`--kafka-error-timeout`)
//!   with no message and no end-of-partition event in between, i.e. fetching has not worked
//!   once in all that time.
//!
//! ```text
//!  error ──► permanent? ── yes ──► end the job with its reason
//!              │ no
//!              ▼
//!  streak: started by the first error after progress (a message or an end of partition) or
//!          after a pause of more than STREAK_GAP without errors; an error arriving when the
//!          streak is older than the limit ends the job
//! ```
//!
//! Errors are judged when they arrive, never in their absence: a broker that recovers stops
//! producing errors, and a healthy idle topic produces no progress events either, so "no
//! progress for a while" alone would end healthy idle jobs. librdkafka repeats an unchanged
//! broker error at most every 30 s (it suppresses identical ones in between), and reconnects
//! every ≤ 10 s, so while a broker stays down an error arrives at least every ~40 s:
//! [`STREAK_GAP`] is longer than that, and the job ends within about 40 s after the limit.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A pause without errors longer than this ends a streak. Longer than librdkafka's 30 s
/// suppression of an identical broker error plus its 10 s reconnect backoff, so a broker that
/// stays down keeps one streak going.
pub(super) const STREAK_GAP: Duration = Duration::from_secs(60);

/// Default of `--kafka-error-timeout`: how long errors may persist before the job ends. Long
/// enough to ride out a broker restart or a leader moving; short enough that a dead broker
/// or a misconfiguration shows as a failed job within a couple of minutes.
pub const DEFAULT_ERROR_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a permanent error can never heal, for the exit line; `None` for errors that may.
pub(super) fn permanent(error: &KafkaError) -> Option<&'static str> {
    let code = match error {
        KafkaError::MessageConsumptionFatal(_) => return Some("librdkafka calls it fatal"),
        KafkaError::MessageConsumption(code) => *code,
        _ => return None,
    };
    match code {
        // Raised for a batch whose codec or message format this build cannot decode; it is
        // raised again on every fetch of the same batch.
        RDKafkaErrorCode::NotImplemented => Some("a compression codec or message format this build of librdkafka cannot decode"),
        RDKafkaErrorCode::UnsupportedCompressionType => Some("the broker cannot serve this compression codec"),
        // The same bytes fail again on every fetch.
        RDKafkaErrorCode::BadCompression => Some("a batch whose compressed data is corrupt"),
        RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed => {
            Some("the broker does not authorize this client: check its ACLs and credentials")
        }
        RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication => {
            Some("authentication failed: check sasl.username and sasl.password")
        }
        _ => None,
    }
}

/// One worker's judge of its consumer's errors.
#[derive(Debug)]
pub(super) struct ErrorWatch {
    limit: Duration,
    streak: Option<Streak>,
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    first: Instant,
    last: Instant,
    errors: u64,
}

impl ErrorWatch {
    /// Errors may persist for `limit` before the job ends.
    pub(super) fn new(limit: Duration) -> ErrorWatch {
        ErrorWatch { limit, streak: None }
    }

    /// Fetching worked (a message or an end-of-partition event): any streak is over.
    pub(super) fn progress(&mut self) {
        self.streak = None;
    }

    /// Judges `error`, seen at `now`: `Some(reason)` when it must end the job.
    pub(super) fn error(&mut self, error: &KafkaError, now: Instant) -> Option<String> {
        if let Some(why) = permanent(error) {
            return Some(format!("cannot consume: {error} ({why})"));
        }
        let streak = match self.streak {
            Some(streak) if now.saturating_duration_since(streak.last) <= STREAK_GAP => {
                Streak { last: now, errors: streak.errors + 1, ..streak }
            }
            _ => Streak { first: now, last: now, errors: 1 },
        };
        self.streak = Some(streak);
        let persisted = now.saturating_duration_since(streak.first);
        (persisted > self.limit).then(|| {
            format!(
                "consumer errors for {} s with nothing consumed ({} errors, more than --kafka-error-timeout {} s; the last: {error})",
                persisted.as_secs(),
                streak.errors,
                self.limit.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumption(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageConsumption(code)
    }

    #[test]
    fn permanent_errors_end_the_job_at_once() {
        let mut watch = ErrorWatch::new(Duration::from_secs(60));
        let now = Instant::now();
        // The error a zstd topic gave a build without zstd, forever (issue 22).
        let reason = watch.error(&consumption(RDKafkaErrorCode::NotImplemented), now).expect("permanent");
        assert!(reason.contains("NotImplemented") && reason.contains("compression codec"), "{reason}");
        assert!(watch.error(&KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fail), now).is_some());
        assert!(watch.error(&consumption(RDKafkaErrorCode::TopicAuthorizationFailed), now).is_some());
        // A broker that went away may come back.
        assert!(permanent(&consumption(RDKafkaErrorCode::BrokerTransportFailure)).is_none());
        assert!(permanent(&consumption(RDKafkaErrorCode::AllBrokersDown)).is_none());
    }

    #[test]
    fn errors_end_the_job_once_they_persist_beyond_the_limit() {
        let limit = Duration::from_secs(60);
        let mut watch = ErrorWatch::new(limit);
        let start = Instant::now();
        let down = consumption(RDKafkaErrorCode::BrokerTransportFailure);
        // A broker down: an error every 30 s (librdkafka suppresses identical ones between).
        for seconds in [0, 30, 60] {
            assert_eq!(watch.error(&down, start + Duration::from_secs(seconds)), None, "at {seconds} s");
        }
        let reason = watch.error(&down, start + Duration::from_secs(90)).expect("persisted for 90 s");
        assert!(reason.contains("consumer errors for 90 s") && reason.contains("BrokerTransportFailure"), "{reason}");
    }

    #[test]
    fn progress_or_a_pause_ends_a_streak() {
        let limit = Duration::from_secs(60);
        let down = consumption(RDKafkaErrorCode::BrokerTransportFailure);
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);

        // A message consumed in between: the broker works again.
        let mut watch = ErrorWatch::new(limit);
        assert_eq!(watch.error(&down, at(0)), None);
        assert_eq!(watch.error(&down, at(50)), None);
        watch.progress();
        assert_eq!(watch.error(&down, at(100)), None, "a new streak starts");
        assert_eq!(watch.error(&down, at(150)), None);
        assert!(watch.error(&down, at(161)).is_some(), "and ends the job once it persists");

        // A blip, a quiet idle topic (no progress events), then an unrelated blip much later.
        let mut watch = ErrorWatch::new(limit);
        assert_eq!(watch.error(&down, at(0)), None);
        assert_eq!(watch.error(&down, at(0) + STREAK_GAP + Duration::from_secs(1)), None);
    }
}
