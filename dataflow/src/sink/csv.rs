//! `--output-dir DIR`: the final state of each SPEC §3 table as `DIR/<table>.csv`.
//!
//! A header row, then the table's columns in SPEC §3 order, rows sorted by primary key; the
//! lists (`track_neighbors`, `user_recommendations`) one line per member, by key and then in
//! rank order, as their ranked views without `rank` and `updated_at` (SPEC §4).
//! Scores are written as [`score_value`] (`units / 10^P`) in Rust's shortest round-trip form,
//! so a reader recovers the exact double Postgres would hold. `dead_letters.csv` has the
//! columns `topic,kafka_partition,kafka_offset,error`, in order of arrival position.
//! `co_listens.csv` is written only when co-listens are emitted.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::engine::Epoch;
use crate::sink::EpochSink;
use crate::tables::{lists_by_key, score_value, Changes, DeadLetter, LoggedEvent, Tables};

/// A sink that keeps the current tables in memory, for `--output-dir` and tests.
#[derive(Debug, Default)]
pub struct MemorySink {
    /// The current value of every table.
    pub tables: Tables,
    /// Every dead letter so far.
    pub dead_letters: Vec<DeadLetter>,
    /// The last closed epoch.
    pub last_epoch: Option<Epoch>,
    /// Every valid event so far (with `--emit-events`), in no particular order.
    pub events: Vec<LoggedEvent>,
}

impl EpochSink for MemorySink {
    fn epoch_closed(&mut self, epoch: Epoch, changes: Changes) {
        self.tables.apply(&changes);
        self.dead_letters.extend(changes.dead_letters);
        self.events.extend(changes.events);
        self.last_epoch = Some(epoch);
    }
}

/// Writes every table of `tables` (and `dead_letters`) into `dir`, creating it if needed.
pub fn write_tables(
    dir: &Path,
    tables: &Tables,
    dead_letters: &[DeadLetter],
    score_precision: u32,
    emit_co_listens: bool,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let score = |units: i64| score_value(units, score_precision);

    write_csv(dir, "track_neighbors", "track_id,neighbor_id,score", |out| {
        for (track, list) in lists_by_key(&tables.track_neighbors) {
            for (neighbor, units) in list {
                writeln!(out, "{track},{neighbor},{}", score(units))?;
            }
        }
        Ok(())
    })?;
    write_csv(dir, "user_recommendations", "user_id,track_id,score", |out| {
        for (user, list) in lists_by_key(&tables.user_recommendations) {
            for (track, units) in list {
                writeln!(out, "{user},{track},{}", score(units))?;
            }
        }
        Ok(())
    })?;
    write_csv(dir, "track_stats", "track_id,plays,listeners,likes", |out| {
        for (track, stats) in &tables.track_stats {
            writeln!(out, "{track},{},{},{}", stats.plays, stats.listeners, stats.likes)?;
        }
        Ok(())
    })?;
    if emit_co_listens {
        write_csv(dir, "co_listens", "track_a,track_b,users", |out| {
            for (&(a, b), users) in &tables.co_listens {
                writeln!(out, "{a},{b},{users}")?;
            }
            Ok(())
        })?;
    }
    let mut sorted: Vec<&DeadLetter> = dead_letters.iter().collect();
    sorted.sort_by(|x, y| (&x.topic, x.partition, x.offset).cmp(&(&y.topic, y.partition, y.offset)));
    write_csv(dir, "dead_letters", "topic,kafka_partition,kafka_offset,error", |out| {
        for letter in sorted {
            writeln!(out, "{},{},{},{}", quoted(&letter.topic), letter.partition, letter.offset, quoted(&letter.error))?;
        }
        Ok(())
    })
}

/// Writes `track_stream_event_log.csv` (streaming and skip events) and
/// `track_like_event_log.csv` (likes) into `dir` (`--emit-events`): the columns of the
/// Postgres tables but `created_timestamp` (the time of a database write; a file has none),
/// rows in `(kafka_partition, kafka_offset)` order. `event_timestamp` is ISO 8601 in UTC with
/// milliseconds (`2024-05-01T10:00:00.123Z`), empty where Postgres would hold NULL (beyond
/// its range), as is an absent `ms_played`.
pub fn write_event_logs(dir: &Path, events: &[LoggedEvent]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut sorted: Vec<&LoggedEvent> = events.iter().collect();
    sorted.sort_unstable_by_key(|event| (event.partition, event.offset));
    let header = "user_id,track_id,event_timestamp,kafka_partition,kafka_offset,event_type,ms_played";
    for (table, likes) in [(crate::sink::postgres::STREAM_EVENT_LOG, false), (crate::sink::postgres::LIKE_EVENT_LOG, true)] {
        write_csv(dir, table, header, |out| {
            for event in sorted.iter().filter(|event| event.is_like() == likes) {
                let time = crate::sink::postgres::pg_timestamp(event.time_ms)
                    .map(|_| encore_core::format_iso_timestamp(event.time_ms))
                    .unwrap_or_default();
                let ms_played = event.ms_played.map(|ms| ms.to_string()).unwrap_or_default();
                writeln!(
                    out,
                    "{},{},{time},{},{},{},{ms_played}",
                    event.user, event.track, event.partition, event.offset, event.event_type
                )?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn write_csv(dir: &Path, table: &str, header: &str, rows: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> io::Result<()> {
    // Write beside the target and rename, so a reader never sees a half-written table.
    let path = dir.join(format!("{table}.csv"));
    let partial = dir.join(format!(".{table}.csv.partial"));
    let mut out = BufWriter::new(File::create(&partial)?);
    writeln!(out, "{header}")?;
    rows(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(partial, path)
}

/// RFC 4180 quoting, only where a field needs it.
fn quoted(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quoted("missing field `user_id`"), "missing field `user_id`");
        assert_eq!(quoted("a, b"), "\"a, b\"");
        assert_eq!(quoted("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
