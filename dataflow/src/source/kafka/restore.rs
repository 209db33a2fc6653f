//! How a loaded worker rebuilds the state and where it resumes reading: the two halves of a
//! restart from the durable state (see [`super`], "Durable state").

use crate::engine::Listen;
use crate::pipeline;
use crate::sink::postgres::{LoadedState, StateReader};
use crate::tables::TrackStats;

use super::{StreamError, StreamJob};

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
    job: &StreamJob,
) -> Result<u64, StreamError> {
    let LoadedState { last_listens, track_stats, recommendations } =
        reader.load(&job.topic, &job.committed, worker.peers(), worker.index())?;
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
pub(super) fn resume_at(committed: i64, low: i64, high: i64) -> (i64, bool) {
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
}
