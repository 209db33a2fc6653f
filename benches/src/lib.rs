//! Pieces shared by the benchmark binaries (`src/bin/*`).

/// `rows` rows `(i / 20, i % 20, 0.5)` — `(BIGINT, BIGINT, DOUBLE PRECISION)`, 20 neighbours
/// per track as `track_neighbors` holds them — in PostgreSQL's binary COPY format, encoded
/// before a clock starts so that raw-COPY figures time the server, not the encoding.
pub fn neighbor_rows_binary_copy(rows: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(19 + rows * 38 + 2);
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
    for i in 0..rows as i64 {
        data.extend_from_slice(&3i16.to_be_bytes());
        for field in [(i / 20).to_be_bytes(), (i % 20).to_be_bytes(), 0.5f64.to_bits().to_be_bytes()] {
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&field);
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    data
}
