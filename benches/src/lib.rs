//! Pieces shared by the benchmark binaries (`src/bin/*`): the result files the `engine` and
//! `pipeline` benches write beside their printed tables ([`results`]), the report that plots
//! them ([`report`], binary `report`), and rows for the raw COPY baselines.

pub mod report;
pub mod results;

/// `rows` rows `(i / 20, i % 20, 0.5)` — `(BIGINT, BIGINT, DOUBLE PRECISION)`, 20 neighbours
/// per track as `track_neighbors` holds them — in PostgreSQL's binary COPY format, encoded
/// before a clock starts so that raw-COPY figures time the server, not the encoding.
pub fn neighbor_rows_binary_copy(rows: usize) -> Vec<u8> {
    binary_copy((0..rows as i64).map(|i| (i / 20, i % 20, 0.5)))
}

/// Of the rows of [`neighbor_rows_binary_copy`]`(rows)`, the whole lists of the tracks equal
/// to `group` modulo `groups`, with score `score`: new values for a `1/groups` share of the
/// keys, spread over the table in runs of 20 as a commit rewrites whole neighbour lists.
pub fn neighbor_rows_group_binary_copy(rows: usize, groups: i64, group: i64, score: f64) -> Vec<u8> {
    binary_copy((0..rows as i64).filter(|i| (i / 20) % groups == group).map(|i| (i / 20, i % 20, score)))
}

fn binary_copy(rows: impl Iterator<Item = (i64, i64, f64)>) -> Vec<u8> {
    let mut data = Vec::new();
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
    for (track, neighbor, score) in rows {
        data.extend_from_slice(&3i16.to_be_bytes());
        for field in [track.to_be_bytes(), neighbor.to_be_bytes(), score.to_bits().to_be_bytes()] {
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&field);
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header (19 bytes), 38 bytes a row (field count, three length-prefixed fields), trailer.
    fn rows_in(data: &[u8]) -> usize {
        (data.len() - 19 - 2) / 38
    }

    /// The first field of row `row`: its track.
    fn track_of(data: &[u8], row: usize) -> i64 {
        let at = 19 + row * 38 + 2 + 4;
        i64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"))
    }

    #[test]
    fn a_group_is_whole_lists_of_every_groups_th_track() {
        let all = neighbor_rows_binary_copy(400);
        assert_eq!(rows_in(&all), 400);
        assert_eq!(&all[all.len() - 2..], &(-1i16).to_be_bytes());
        let group = neighbor_rows_group_binary_copy(400, 10, 3, 2.0);
        assert_eq!(rows_in(&group), 40, "tracks 3 and 13, 20 rows each");
        assert_eq!((track_of(&group, 0), track_of(&group, 19), track_of(&group, 20)), (3, 3, 13));
        let score_at = 19 + 2 + 2 * 12 + 4;
        assert_eq!(f64::from_bits(u64::from_be_bytes(group[score_at..score_at + 8].try_into().expect("8 bytes"))), 2.0);
    }
}
