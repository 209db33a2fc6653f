//! Writing the catalog to Postgres (SPEC §3 catalog tables) with binary COPY.
//!
//! All four tables are created if missing, emptied and filled in **one transaction**, so a
//! reader sees the old catalog or the new one, never a mix, and re-running with the same seed
//! replaces the catalog with an identical one. `TRUNCATE` (not `DROP`) keeps views and grants
//! that others defined on the tables. Rows travel in binary COPY: no SQL is built from data,
//! and it is several times faster than INSERTs. If anything fails, the transaction is rolled
//! back when dropped and the previous catalog stays.

use std::time::Duration;

use encore_pgconnect::quote_ident;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, Transaction};

use crate::catalog::{Catalog, CatalogNames};

/// Why writing the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse, or names certificates that cannot be used.
    #[error(transparent)]
    Url(#[from] encore_pgconnect::Error),
    /// Connecting failed.
    #[error("cannot connect to Postgres: {}", connect_reason(.0))]
    Connect(postgres::Error),
    /// A statement or the COPY failed.
    #[error("writing the catalog failed: {0}")]
    Write(postgres::Error),
}

/// The client's error with its cause, which it keeps apart ("invalid configuration" alone
/// would not say that a password is missing).
fn connect_reason(err: &postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(cause) => encore_pgconnect::with_password_hint(format!("{err}: {cause}")),
        None => err.to_string(),
    }
}

/// Rows written per table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogCounts {
    /// `users` rows.
    pub users: u64,
    /// `artists` rows.
    pub artists: u64,
    /// `albums` rows.
    pub albums: u64,
    /// `tracks` rows.
    pub tracks: u64,
}

/// Connects to `url`, waiting at most 10 s unless the URL sets `connect_timeout`. TLS and the
/// `PG*` environment fallbacks (PGPASSWORD, PGSSLMODE, ...) work as in libpq and
/// `encore-flow` (encore-pgconnect).
pub fn connect(url: &str) -> Result<Client, PgError> {
    let mut target = encore_pgconnect::Target::parse(url)?;
    let config = target.config_mut();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("encore-gen");
    target.connect().map_err(PgError::Connect)
}

/// Replaces the catalog tables in `schema` with `catalog` in one transaction.
pub fn write_catalog(client: &mut Client, schema: &str, catalog: &Catalog, names: &CatalogNames) -> Result<CatalogCounts, PgError> {
    let s = quote_ident(schema);
    let mut tx = client.transaction().map_err(PgError::Write)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.users (user_id BIGINT PRIMARY KEY, name TEXT NOT NULL,
             age INTEGER NOT NULL, gender TEXT NOT NULL, country TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.artists (artist_id BIGINT PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.albums (album_id BIGINT PRIMARY KEY, title TEXT NOT NULL,
             artist_id BIGINT NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.tracks (track_id BIGINT PRIMARY KEY, title TEXT NOT NULL,
             artist_id BIGINT NOT NULL, album_id BIGINT NOT NULL, genre TEXT NOT NULL,
             popularity INTEGER NOT NULL, duration_ms INTEGER NOT NULL);
         TRUNCATE {s}.users, {s}.artists, {s}.albums, {s}.tracks;"
    ))
    .map_err(PgError::Write)?;

    let users = copy_rows(
        &mut tx,
        &format!("COPY {s}.users (user_id, name, age, gender, country) FROM STDIN (FORMAT binary)"),
        &[Type::INT8, Type::TEXT, Type::INT4, Type::TEXT, Type::TEXT],
        catalog.users.iter().zip(&names.users),
        |(user, name), row| {
            let (id, age) = (user.user_id as i64, i32::from(user.age));
            row(&[&id, name, &age, &user.gender.as_str(), &user.country.code])
        },
    )?;
    let artists = copy_rows(
        &mut tx,
        &format!("COPY {s}.artists (artist_id, name) FROM STDIN (FORMAT binary)"),
        &[Type::INT8, Type::TEXT],
        catalog.artists.iter().zip(&names.artists),
        |(artist, name), row| row(&[&(artist.artist_id as i64), name]),
    )?;
    let albums = copy_rows(
        &mut tx,
        &format!("COPY {s}.albums (album_id, title, artist_id) FROM STDIN (FORMAT binary)"),
        &[Type::INT8, Type::TEXT, Type::INT8],
        catalog.albums.iter().zip(&names.albums),
        |(album, title), row| row(&[&(album.album_id as i64), title, &(album.artist_id as i64)]),
    )?;
    let tracks = copy_rows(
        &mut tx,
        &format!(
            "COPY {s}.tracks (track_id, title, artist_id, album_id, genre, popularity, duration_ms)
             FROM STDIN (FORMAT binary)"
        ),
        &[Type::INT8, Type::TEXT, Type::INT8, Type::INT8, Type::TEXT, Type::INT4, Type::INT4],
        catalog.tracks.iter().zip(&names.tracks),
        |(track, title), row| {
            let (id, artist, album) = (track.track_id as i64, track.artist_id as i64, track.album_id as i64);
            let (popularity, duration) = (i32::from(track.popularity), track.duration_ms as i32);
            row(&[&id, title, &artist, &album, &track.genre_name(), &popularity, &duration])
        },
    )?;
    tx.commit().map_err(PgError::Write)?;
    Ok(CatalogCounts { users, artists, albums, tracks })
}

/// Runs one binary COPY, writing a row per item; returns the rows written.
fn copy_rows<I, F>(tx: &mut Transaction<'_>, statement: &str, types: &[Type], items: I, mut write: F) -> Result<u64, PgError>
where
    I: Iterator,
    F: FnMut(I::Item, &mut dyn FnMut(&[&(dyn ToSql + Sync)]) -> Result<(), postgres::Error>) -> Result<(), postgres::Error>,
{
    let sink = tx.copy_in(statement).map_err(PgError::Write)?;
    let mut writer = BinaryCopyInWriter::new(sink, types);
    for item in items {
        write(item, &mut |values| writer.write(values)).map_err(PgError::Write)?;
    }
    writer.finish().map_err(PgError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("public"), "\"public\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
