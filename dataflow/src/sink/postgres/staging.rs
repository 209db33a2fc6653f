//! From [`Changes`] to the bytes a commit sends: consolidation of the `(key, value, diff)`
//! triples into one action per key, and their encoding in PostgreSQL's binary `COPY` format.
//!
//! Both happen before the transaction opens, once per [`commit`](super::PgSink::commit): the
//! transaction stays short, bad changes are refused before any I/O, and a retried commit
//! resends exactly the same bytes.
//!
//! # Binary COPY format (PostgreSQL docs, "COPY", section "Binary Format")
//!
//! ```text
//! header   "PGCOPY\n\xff\r\n\0"  i32 flags = 0  i32 extension length = 0
//! row      i16 field count, then per field: i32 byte length (-1 = NULL) + the value in its
//!          type's binary send format: int8 / int4 / int2 = 8 / 4 / 2 bytes big-endian,
//!          float8 = IEEE-754 bits big-endian, text = UTF-8, bytea = raw
//! trailer  i16 -1
//! ```
//!
//! We encode it ourselves instead of using `postgres::binary_copy::BinaryCopyInWriter`, which
//! would cost one trip through the client's runtime (`block_on`) per row inside the open
//! transaction; the `pg_copy` benchmark measures both.

use super::error::Failure;
use super::sql::{TableSpec, CO_LISTENS, LAST_LISTENS, TRACK_NEIGHBORS, TRACK_STATS, USER_RECOMMENDATIONS};
use super::SinkError;
use crate::tables::{score_value, Changes, DeadLetter, RankedList, TrackStats};

/// Type oids of the array elements (`pg_type`): `int8`, `float8`.
const INT8_OID: u32 = 20;
const FLOAT8_OID: u32 = 701;
use std::io::Read as _;

/// The fixed start of every binary COPY stream: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// What a key becomes after consolidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action<V> {
    /// A new key (only a +1): its row is inserted.
    Insert(V),
    /// A key whose old value was retracted and a new one added: its row is updated.
    Update(V),
    /// A key with only a retraction: its row is deleted.
    Delete,
}

/// Staging `op` codes (a `SMALLINT` column).
pub(super) const OP_DELETE: i16 = 0;
/// See [`OP_DELETE`].
pub(super) const OP_INSERT: i16 = 1;
/// See [`OP_DELETE`].
pub(super) const OP_UPDATE: i16 = 2;

/// Nets the triples of one table to one action per key, sorted by key.
///
/// Per key, equal `(key, value)` pairs are summed first, so that a value that came and went
/// within the batch cancels out. What remains must describe a keyed table: at most one value
/// with diff +1 (the new row) and at most one with diff -1 (the old row). Anything else means
/// the producer of the changes is broken, and writing it would corrupt the table, so it is
/// refused with [`SinkError::InvalidChanges`].
pub(super) fn consolidate<K, V>(table: &'static str, triples: &[(K, V, i64)]) -> Result<Vec<(K, Action<V>)>, SinkError>
where
    K: Ord + Copy + std::fmt::Debug,
    V: Ord + Clone,
{
    let mut sorted: Vec<&(K, V, i64)> = triples.iter().collect();
    sorted.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut actions = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let key = sorted[i].0;
        let (mut added, mut removed) = (None, 0usize);
        while i < sorted.len() && sorted[i].0 == key {
            let value = &sorted[i].1;
            let mut diff = 0i64;
            while i < sorted.len() && sorted[i].0 == key && sorted[i].1 == *value {
                diff = diff.saturating_add(sorted[i].2);
                i += 1;
            }
            match diff {
                0 => {}
                1 if added.is_none() => added = Some(value.clone()),
                -1 => removed += 1,
                _ => {
                    return Err(SinkError::InvalidChanges {
                        table,
                        reason: format!("key {key:?} nets to diff {diff} for one of its values"),
                    })
                }
            }
        }
        if removed > 1 {
            return Err(SinkError::InvalidChanges { table, reason: format!("key {key:?} retracts {removed} different values") });
        }
        match (added, removed) {
            (Some(value), 0) => actions.push((key, Action::Insert(value))),
            (Some(value), _) => actions.push((key, Action::Update(value))),
            (None, 1) => actions.push((key, Action::Delete)),
            (None, _) => {}
        }
    }
    Ok(actions)
}

/// A binary COPY stream under construction.
struct CopyEncoder {
    bytes: Vec<u8>,
}

impl CopyEncoder {
    fn new(rows: usize, row_bytes: usize) -> CopyEncoder {
        let mut bytes = Vec::with_capacity(COPY_HEADER.len() + rows * row_bytes + 2);
        bytes.extend_from_slice(COPY_HEADER);
        CopyEncoder { bytes }
    }

    fn row(&mut self, fields: i16) {
        self.bytes.extend_from_slice(&fields.to_be_bytes());
    }

    fn int8(&mut self, value: i64) {
        self.bytes.extend_from_slice(&8i32.to_be_bytes());
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    fn int2(&mut self, value: i16) {
        self.bytes.extend_from_slice(&2i32.to_be_bytes());
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    fn int4(&mut self, value: i32) {
        self.bytes.extend_from_slice(&4i32.to_be_bytes());
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    /// A one-dimensional array without NULLs of 8-byte elements of type `oid` (array_send):
    /// dimensions, flags, element type, then per dimension its length and lower bound (1),
    /// then each element with its length.
    fn array8(&mut self, oid: u32, elements: impl ExactSizeIterator<Item = [u8; 8]>) -> Result<(), SinkError> {
        let count = elements.len();
        let len = i32::try_from(20 + 12 * count).map_err(|_| SinkError::OutOfRange { what: "array length", value: count as u64 })?;
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(&1i32.to_be_bytes());
        self.bytes.extend_from_slice(&0i32.to_be_bytes());
        self.bytes.extend_from_slice(&oid.to_be_bytes());
        self.bytes.extend_from_slice(&(count as i32).to_be_bytes());
        self.bytes.extend_from_slice(&1i32.to_be_bytes());
        for element in elements {
            self.bytes.extend_from_slice(&8i32.to_be_bytes());
            self.bytes.extend_from_slice(&element);
        }
        Ok(())
    }

    fn null(&mut self) {
        self.bytes.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// `text` and `bytea` share the layout: length, then the bytes.
    fn varlena(&mut self, value: &[u8]) -> Result<(), SinkError> {
        let len = i32::try_from(value.len())
            .map_err(|_| SinkError::OutOfRange { what: "dead letter field length", value: value.len() as u64 })?;
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(value);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&(-1i16).to_be_bytes());
        self.bytes
    }
}

/// One table's consolidated changes, encoded for `COPY pg_temp.encore_stage_<table>`.
#[derive(Debug)]
pub(super) struct StagedTable {
    pub(super) spec: &'static TableSpec,
    pub(super) copy_data: Vec<u8>,
    pub(super) inserts: u64,
    pub(super) updates: u64,
    pub(super) deletes: u64,
}

/// Everything one commit writes besides the offsets.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// Only tables with at least one action: empty tables skip their COPY and merge.
    pub(super) tables: Vec<StagedTable>,
    /// `COPY pg_temp.encore_stage_dead_letters` data, when there are dead letters.
    pub(super) dead_letters: Option<Vec<u8>>,
    pub(super) dead_letter_count: u64,
}

impl Staged {
    /// Whether there is nothing to write besides offsets.
    pub(super) fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.dead_letters.is_none()
    }

    /// Consolidates and encodes `changes`; `co_listens` is left out unless `emit_co_listens`
    /// (its table does not exist then).
    pub(super) fn new(changes: &Changes, score_precision: u32, emit_co_listens: bool) -> Result<Staged, SinkError> {
        let mut staged = Staged::default();
        let score = |units: i64| score_value(units, score_precision);
        // A list row: the key, the members' ids and their scores, as two arrays.
        let lists = |spec: &'static TableSpec, triples: &[(u64, RankedList, i64)], staged: &mut Staged| {
            let actions = consolidate(spec.name, triples)?;
            staged.push(spec, &actions, |encoder, &key, value: Option<&RankedList>| {
                encoder.int8(bigint(key, spec.keys[0])?);
                match value {
                    Some(list) => {
                        for &(member, _) in list {
                            bigint(member, spec.values[0].0)?;
                        }
                        encoder.array8(INT8_OID, list.iter().map(|&(member, _)| (member as i64).to_be_bytes()))?;
                        encoder.array8(FLOAT8_OID, list.iter().map(|&(_, units)| score(units).to_bits().to_be_bytes()))?;
                    }
                    None => (0..2).for_each(|_| encoder.null()),
                }
                Ok(())
            })
        };
        lists(&TRACK_NEIGHBORS, &changes.track_neighbors, &mut staged)?;
        lists(&USER_RECOMMENDATIONS, &changes.user_recommendations, &mut staged)?;

        let actions = consolidate(TRACK_STATS.name, &changes.track_stats)?;
        staged.push(&TRACK_STATS, &actions, |encoder, &track, value: Option<&TrackStats>| {
            encoder.int8(bigint(track, "track_id")?);
            match value {
                Some(stats) => {
                    encoder.int8(bigint(stats.plays, "plays")?);
                    encoder.int8(bigint(stats.listeners, "listeners")?);
                    encoder.int8(bigint(stats.likes, "likes")?);
                }
                None => (0..3).for_each(|_| encoder.null()),
            }
            Ok(())
        })?;

        if emit_co_listens {
            let actions = consolidate(CO_LISTENS.name, &changes.co_listens)?;
            staged.push(&CO_LISTENS, &actions, |encoder, &(a, b), value: Option<&u64>| {
                encoder.int8(bigint(a, "track_a")?);
                encoder.int8(bigint(b, "track_b")?);
                match value {
                    Some(&users) => encoder.int8(bigint(users, "users")?),
                    None => encoder.null(),
                }
                Ok(())
            })?;
        }

        let actions = consolidate(LAST_LISTENS.name, &changes.last_listens)?;
        staged.push(&LAST_LISTENS, &actions, |encoder, &(user, track), value: Option<&i64>| {
            encoder.int8(bigint(user, "user_id")?);
            encoder.int8(bigint(track, "track_id")?);
            match value {
                Some(&last_ms) => encoder.int8(last_ms),
                None => encoder.null(),
            }
            Ok(())
        })?;

        if !changes.dead_letters.is_empty() {
            staged.dead_letters = Some(encode_dead_letters(&changes.dead_letters)?);
            staged.dead_letter_count = changes.dead_letters.len() as u64;
        }
        Ok(staged)
    }

    /// Encodes one table's actions as staging rows `(op, keys.., values..)`; a delete
    /// carries NULL values.
    fn push<K, V>(
        &mut self,
        spec: &'static TableSpec,
        actions: &[(K, Action<V>)],
        mut encode: impl FnMut(&mut CopyEncoder, &K, Option<&V>) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        if actions.is_empty() {
            return Ok(());
        }
        let fields = spec.staging_fields();
        // 2 bytes of field count, then 4 bytes of length and at most 8 of value per field
        // (a list's arrays grow the buffer as needed).
        let mut encoder = CopyEncoder::new(actions.len(), 2 + 12 * fields);
        let (mut inserts, mut updates, mut deletes) = (0, 0, 0);
        for (key, action) in actions {
            encoder.row(fields as i16);
            let (op, value, count) = match action {
                Action::Insert(value) => (OP_INSERT, Some(value), &mut inserts),
                Action::Update(value) => (OP_UPDATE, Some(value), &mut updates),
                Action::Delete => (OP_DELETE, None, &mut deletes),
            };
            *count += 1;
            encoder.int2(op);
            encode(&mut encoder, key, value)?;
        }
        self.tables.push(StagedTable { spec, copy_data: encoder.finish(), inserts, updates, deletes });
        Ok(())
    }
}

/// Dead letters as staging rows `(topic, kafka_partition, kafka_offset, payload, error)`.
fn encode_dead_letters(dead_letters: &[DeadLetter]) -> Result<Vec<u8>, SinkError> {
    let mut encoder = CopyEncoder::new(dead_letters.len(), 64);
    for letter in dead_letters {
        encoder.row(5);
        // TEXT cannot hold NUL; a reason quoting a payload might. U+FFFD marks the spot.
        encoder.varlena(letter.topic.replace('\0', "\u{fffd}").as_bytes())?;
        encoder.int4(letter.partition);
        encoder.int8(letter.offset);
        encoder.varlena(&letter.payload)?;
        encoder.varlena(letter.error.replace('\0', "\u{fffd}").as_bytes())?;
    }
    Ok(encoder.finish())
}

/// Reads a binary `COPY … TO STDOUT` stream of rows of `N` non-NULL `BIGINT`s (the format
/// above), calling `row` for each: streamed, so a table of millions of rows is never held as
/// bytes.
pub(super) fn read_int8_rows<const N: usize>(
    reader: impl std::io::Read,
    table: &'static str,
    mut row: impl FnMut([i64; N]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let bad = |reason: String| Failure::Sink(SinkError::BadRow { table, reason });
    let mut reader = std::io::BufReader::with_capacity(1 << 16, reader);
    let mut header = [0u8; COPY_HEADER.len()];
    reader.read_exact(&mut header).map_err(Failure::Io)?;
    if header[..11] != COPY_HEADER[..11] {
        return Err(bad("not a binary COPY stream".to_owned()));
    }
    // A header extension (flags, then its length) is allowed and skipped.
    let extension = u32::from_be_bytes([header[15], header[16], header[17], header[18]]);
    std::io::copy(&mut (&mut reader).take(u64::from(extension)), &mut std::io::sink()).map_err(Failure::Io)?;
    let mut fields = [0u8; 2];
    let mut field = [0u8; 12];
    loop {
        reader.read_exact(&mut fields).map_err(Failure::Io)?;
        match i16::from_be_bytes(fields) {
            -1 => return Ok(()),
            n if n as usize == N => {}
            n => return Err(bad(format!("a row of {n} fields, expected {N}"))),
        }
        let mut values = [0i64; N];
        for value in &mut values {
            reader.read_exact(&mut field).map_err(Failure::Io)?;
            let len = i32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            if len != 8 {
                return Err(bad(format!("a field of length {len} where a non-NULL BIGINT was expected")));
            }
            *value = i64::from_be_bytes(field[4..].try_into().expect("8 bytes"));
        }
        row(values)?;
    }
}

/// SPEC §1 keeps ids below 2^63 and counts never get near it, but a `BIGINT` column must
/// refuse, not wrap, anything larger.
fn bigint(value: u64, what: &'static str) -> Result<i64, SinkError> {
    i64::try_from(value).map_err(|_| SinkError::OutOfRange { what, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_insert_delete_and_cancellation() {
        let triples = vec![
            (1u64, 10i64, -1i64), // update 1: 10 -> 11
            (1, 11, 1),
            (2, 20, 1),  // insert 2
            (3, 30, -1), // delete 3
            (4, 40, 1),  // 4 appears and disappears within the batch
            (4, 40, -1),
            (5, 50, -1), // 5 changes and changes back
            (5, 51, 1),
            (5, 51, -1),
            (5, 50, 1),
        ];
        let actions = consolidate("t", &triples).unwrap();
        assert_eq!(actions, vec![(1, Action::Update(11)), (2, Action::Insert(20)), (3, Action::Delete)]);
    }

    #[test]
    fn incoherent_changes_are_refused() {
        assert!(consolidate("t", &[(1u64, 1i64, 1i64), (1, 2, 1)]).is_err());
        assert!(consolidate("t", &[(1u64, 1i64, 2i64)]).is_err());
        assert!(consolidate("t", &[(1u64, 1i64, -1i64), (1, 2, -1)]).is_err());
    }

    #[test]
    fn copy_stream_layout() {
        let mut encoder = CopyEncoder::new(1, 0);
        encoder.row(2);
        encoder.int8(-2);
        encoder.null();
        let bytes = encoder.finish();
        let mut expected = COPY_HEADER.to_vec();
        expected.extend_from_slice(&[0, 2, 0, 0, 0, 8, 255, 255, 255, 255, 255, 255, 255, 254]);
        expected.extend_from_slice(&[255, 255, 255, 255, 255, 255]);
        assert_eq!(bytes, expected);
        assert_eq!(COPY_HEADER.len(), 19);
    }

    #[test]
    fn int8_rows_read_back_what_was_encoded() {
        let mut encoder = CopyEncoder::new(2, 38);
        for row in [[1i64, -2, i64::MAX], [0, 7, i64::MIN]] {
            encoder.row(3);
            row.iter().for_each(|&v| encoder.int8(v));
        }
        let bytes = encoder.finish();
        let mut rows = Vec::new();
        assert!(read_int8_rows::<3>(bytes.as_slice(), "t", |row| {
            rows.push(row);
            Ok(())
        })
        .is_ok());
        assert_eq!(rows, vec![[1, -2, i64::MAX], [0, 7, i64::MIN]]);
        // A NULL, a wrong field count and a cut stream are refused, not misread.
        let mut encoder = CopyEncoder::new(1, 38);
        encoder.row(3);
        encoder.int8(1);
        encoder.null();
        encoder.int8(2);
        assert!(read_int8_rows::<3>(encoder.finish().as_slice(), "t", |_| Ok(())).is_err());
        assert!(read_int8_rows::<2>(bytes.as_slice(), "t", |_| Ok(())).is_err());
        assert!(read_int8_rows::<3>(&bytes[..bytes.len() - 5], "t", |_| Ok(())).is_err());
    }

    #[test]
    fn ids_beyond_bigint_are_refused() {
        let changes = Changes { track_stats: vec![(u64::MAX, TrackStats::default(), 1)], ..Changes::default() };
        assert!(matches!(Staged::new(&changes, 4, false), Err(SinkError::OutOfRange { .. })));
    }
}
