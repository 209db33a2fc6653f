//! Malformed messages for dead-letter tests (`--invalid-rate`): encore-core's one list of
//! SPEC §1 counterexamples ([`encore_core::invalid`]), each shaped like a plausible streaming
//! event and broken in one way only, drawn from the generator's own invalid stream (so the
//! valid events are the same with or without them).

use encore_core::invalid::{self, plain_fields, Draw};
use encore_core::{Event, EventType};
use rand::rngs::ChaCha8Rng;

pub use encore_core::invalid::InvalidKind;

use crate::sample::{below, between};

/// The generator's draws, exactly specified (`sample.rs`), for encore-core's builder.
struct Sampled<'a>(&'a mut ChaCha8Rng);

impl Draw for Sampled<'_> {
    fn below(&mut self, n: usize) -> usize {
        below(self.0, n)
    }
}

/// A kind drawn uniformly.
pub(crate) fn pick_kind(rng: &mut ChaCha8Rng) -> InvalidKind {
    InvalidKind::ALL[below(rng, InvalidKind::ALL.len())]
}

/// Writes a message of `kind` into `buf` (cleared first), shaped like a streaming event of
/// `user_id` and `track_id` at `time_ms`.
pub(crate) fn write_invalid(kind: InvalidKind, rng: &mut ChaCha8Rng, user_id: u64, track_id: u64, time_ms: i64, buf: &mut Vec<u8>) {
    let ms_played = between(rng, 30_000, 300_000);
    let event = Event { user_id, track_id, event_time_ms: time_ms, event_type: EventType::Streaming, ms_played: Some(ms_played) };
    invalid::write_invalid(kind, &event, plain_fields(&event), &mut Sampled(rng), buf);
}
