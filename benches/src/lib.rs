//! Pieces shared by the benchmark binaries (`src/bin/*`): the result files the `engine` and
//! `pipeline` benches write beside their printed tables ([`results`]), the report that plots
//! them ([`report`], binary `report`), and rows for the raw COPY baselines.

pub mod report;
pub mod results;

/// Members of a list row in the raw Postgres baselines: `N`, the length of a full
/// `user_recommendations` row, the table most rows are written to.
pub const LIST_MEMBERS: usize = 10;

/// The SQL columns of a list row, as `track_neighbors` and `user_recommendations` hold them.
pub const LIST_COLUMNS: &str = "track_id BIGINT, neighbor_ids BIGINT[], scores DOUBLE PRECISION[]";

/// `rows` list rows `(i, [1, 2, …], [0.5, …])` of [`LIST_MEMBERS`] members —
/// `(BIGINT, BIGINT[], DOUBLE PRECISION[])`, one row per list as the sink writes them — in
/// PostgreSQL's binary COPY format, encoded before a clock starts so that raw-COPY figures
/// time the server, not the encoding.
pub fn list_rows_binary_copy(rows: usize) -> Vec<u8> {
    binary_copy((0..rows as i64).map(|i| (i, 0.5)))
}

/// Of the rows of [`list_rows_binary_copy`]`(rows)`, those whose key is `group` modulo
/// `groups`, with every score `score`: new values for a `1/groups` share of the keys, spread
/// over the table, as a commit rewrites lists.
pub fn list_rows_group_binary_copy(rows: usize, groups: i64, group: i64, score: f64) -> Vec<u8> {
    binary_copy((0..rows as i64).filter(|i| i % groups == group).map(|i| (i, score)))
}

fn binary_copy(rows: impl Iterator<Item = (i64, f64)>) -> Vec<u8> {
    // A one-dimensional array without NULLs: dimensions, flags, element type oid, length and
    // lower bound, then each element with its length.
    fn array(data: &mut Vec<u8>, oid: u32, elements: impl Iterator<Item = [u8; 8]>) {
        data.extend_from_slice(&((20 + 12 * LIST_MEMBERS) as i32).to_be_bytes());
        for word in [1i32, 0, oid as i32, LIST_MEMBERS as i32, 1] {
            data.extend_from_slice(&word.to_be_bytes());
        }
        for element in elements {
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&element);
        }
    }
    let mut data = Vec::new();
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
    for (key, score) in rows {
        data.extend_from_slice(&3i16.to_be_bytes());
        data.extend_from_slice(&8i32.to_be_bytes());
        data.extend_from_slice(&key.to_be_bytes());
        array(&mut data, 20, (1..=LIST_MEMBERS as i64).map(i64::to_be_bytes));
        array(&mut data, 701, std::iter::repeat_n(score.to_bits().to_be_bytes(), LIST_MEMBERS));
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of one row: field count, the key, two arrays of LIST_MEMBERS elements.
    const ROW: usize = 2 + 12 + 2 * (4 + 20 + 12 * LIST_MEMBERS);

    /// Header (19 bytes), ROW bytes a row, trailer.
    fn rows_in(data: &[u8]) -> usize {
        (data.len() - 19 - 2) / ROW
    }

    /// The first field of row `row`: its key.
    fn key_of(data: &[u8], row: usize) -> i64 {
        let at = 19 + row * ROW + 2 + 4;
        i64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"))
    }

    #[test]
    fn a_group_is_every_groups_th_key() {
        let all = list_rows_binary_copy(400);
        assert_eq!(rows_in(&all), 400);
        assert_eq!(&all[all.len() - 2..], &(-1i16).to_be_bytes());
        let group = list_rows_group_binary_copy(400, 10, 3, 2.0);
        assert_eq!(rows_in(&group), 40);
        assert_eq!((key_of(&group, 0), key_of(&group, 1), key_of(&group, 39)), (3, 13, 393));
        // The last score of the first row.
        let score_at = 19 + ROW - 8;
        assert_eq!(f64::from_bits(u64::from_be_bytes(group[score_at..score_at + 8].try_into().expect("8 bytes"))), 2.0);
    }
}
