//! How a worker rebuilds the state of the committed offsets from the durable state (see
//! [`super`], "Durable state"); where it then resumes reading is `partition.rs`'s
//! `resume_at`.

use crate::engine::Listen;
use crate::pipeline;
use crate::sink::postgres::{LoadedState, StateReader};
use crate::tables::TrackStats;

use super::{KafkaSource, SourceError};

/// Rows of state fed between two steps of the dataflow while loading: each step lets History
/// turn them into pair changes and Similarity count those, so that the load never holds
/// more than a chunk's pair changes in flight, while the whole state is one epoch (every
/// operator computes its result once, not once per chunk).
const RESTORE_CHUNK: usize = 1 << 15;
/// Dataflow steps after each chunk.
const RESTORE_STEPS: usize = 4;

/// Loads this worker's share of the durable state and feeds it into the current epoch.
/// Returns the rows loaded.
pub(super) fn restore(
    worker: &mut timely::worker::Worker,
    inputs: &mut pipeline::Inputs,
    reader: &StateReader,
    source: &KafkaSource,
) -> Result<u64, SourceError> {
    let LoadedState { last_listens, track_stats, recommendations } =
        reader.load(&source.topic, &source.committed, worker.peers(), worker.index())?;
    let rows = (last_listens.len() + track_stats.len() + recommendations.len()) as u64;
    inputs.restore_recommendations(recommendations);
    for (track, plays, likes) in track_stats {
        inputs.restored_stats.insert((track, TrackStats { plays, listeners: 0, likes }));
    }
    // Each user's tracks come latest first (see StateReader::load): History fills H(u) and
    // the later (older) ones stay out, without a swap and its pair changes.
    for chunk in last_listens.chunks(RESTORE_CHUNK) {
        for &(user, track, time_ms) in chunk {
            inputs.restored_listens.insert(Listen { user, track, time_ms, like: false });
        }
        inputs.flush();
        for _ in 0..RESTORE_STEPS {
            worker.step();
        }
    }
    Ok(rows)
}
