//! `encore-gen catalog` against a real PostgreSQL (from encore-testkit): row counts, value
//! ranges, replacement on re-run, schemas, and agreement with the stream of the same seed.

use std::collections::HashSet;
use std::process::{Command, Output};

use encore_generator::catalog::{Catalog, CatalogSizes};
use encore_generator::stream::EventStream;
use encore_testkit::{run_bin, Postgres, TestCa, CERT_ROLE};
use postgres::{Client, NoTls};

const SIZES: [&str; 8] = ["--users", "3000", "--artists", "400", "--albums", "900", "--tracks", "6000"];

fn encore_gen(args: &[&str]) -> Output {
    run_bin(env!("CARGO_BIN_EXE_encore-gen"), args)
}

fn write_catalog(url: &str, seed: &str, extra: &[&str]) {
    let mut args = vec!["catalog", "--postgres", url, "--seed", seed];
    args.extend_from_slice(&SIZES);
    args.extend_from_slice(extra);
    let output = encore_gen(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn count(client: &mut Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).expect("count").get(0)
}

/// A digest of a table's full content, to compare two runs.
fn digest(client: &mut Client, table: &str, key: &str) -> String {
    let sql = format!("SELECT md5(string_agg(t::text, '|' ORDER BY {key})) FROM {table} t");
    client.query_one(&sql, &[]).expect("digest").get(0)
}

#[test]
fn catalog_rows_ranges_rerun_and_stream_ids() {
    let postgres = Postgres::start().expect("postgres");
    let url = postgres.url();
    write_catalog(&url, "5", &[]);
    let mut client = Client::connect(&url, NoTls).expect("connect");

    assert_eq!(count(&mut client, "users"), 3_000);
    assert_eq!(count(&mut client, "artists"), 400);
    assert_eq!(count(&mut client, "albums"), 900);
    assert_eq!(count(&mut client, "tracks"), 6_000);

    let row = client
        .query_one(
            "SELECT min(age), max(age), count(DISTINCT gender), bool_and(gender IN ('M','F','X')),
                    count(DISTINCT country), bool_and(name <> '') FROM users",
            &[],
        )
        .expect("users");
    let (min_age, max_age): (i32, i32) = (row.get(0), row.get(1));
    assert!(min_age >= 13 && max_age <= 80 && max_age > min_age);
    assert_eq!(row.get::<_, i64>(2), 3);
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(5));
    assert!(row.get::<_, i64>(4) >= 10);
    let row = client
        .query_one(
            "SELECT count(DISTINCT genre), min(popularity), max(popularity), min(duration_ms), max(duration_ms)
             FROM tracks",
            &[],
        )
        .expect("tracks");
    assert_eq!(row.get::<_, i64>(0), 20);
    assert!(row.get::<_, i32>(1) >= 0 && row.get::<_, i32>(2) <= 100);
    assert!(row.get::<_, i32>(3) >= 90_000 && row.get::<_, i32>(4) <= 420_000);
    // Referential integrity: every track's album exists and belongs to the track's artist.
    let orphans: i64 = client
        .query_one(
            "SELECT count(*) FROM tracks t LEFT JOIN albums a ON a.album_id = t.album_id
             LEFT JOIN artists r ON r.artist_id = t.artist_id
             WHERE a.album_id IS NULL OR r.artist_id IS NULL OR a.artist_id <> t.artist_id",
            &[],
        )
        .expect("join")
        .get(0);
    assert_eq!(orphans, 0);

    // Re-running with the same seed replaces the tables with identical content; another
    // seed replaces them with different content.
    let before = digest(&mut client, "tracks", "track_id") + &digest(&mut client, "users", "user_id");
    write_catalog(&url, "5", &[]);
    assert_eq!(count(&mut client, "tracks"), 6_000);
    assert_eq!(before, digest(&mut client, "tracks", "track_id") + &digest(&mut client, "users", "user_id"));
    write_catalog(&url, "6", &[]);
    assert_eq!(count(&mut client, "users"), 3_000);
    assert_ne!(before, digest(&mut client, "tracks", "track_id") + &digest(&mut client, "users", "user_id"));
    write_catalog(&url, "5", &[]);

    // Every id of seed 5's stream exists in the catalog Postgres holds.
    let users: HashSet<u64> =
        client.query("SELECT user_id FROM users", &[]).expect("ids").iter().map(|r| r.get::<_, i64>(0) as u64).collect();
    let tracks: HashSet<u64> =
        client.query("SELECT track_id FROM tracks", &[]).expect("ids").iter().map(|r| r.get::<_, i64>(0) as u64).collect();
    let sizes = CatalogSizes::new(3_000, 400, Some(900), 6_000).expect("sizes");
    let mut stream = EventStream::new(&Catalog::generate(5, sizes), 0.0);
    for _ in 0..100_000 {
        let event = stream.next_event();
        assert!(users.contains(&event.user_id), "{event:?}");
        assert!(tracks.contains(&event.track_id), "{event:?}");
    }
}

#[test]
fn another_schema_and_a_bad_url() {
    let postgres = Postgres::start().expect("postgres");
    let url = postgres.url();
    write_catalog(&url, "1", &["--pg-schema", "music catalog"]);
    let mut client = Client::connect(&url, NoTls).expect("connect");
    assert_eq!(count(&mut client, "\"music catalog\".artists"), 400);
    let in_public: i64 = client
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'users'", &[])
        .expect("catalog query")
        .get(0);
    assert_eq!(in_public, 0);

    let output = encore_gen(&["catalog", "--postgres", "postgresql://nobody@127.0.0.1:1/none", "--users", "10"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to Postgres"), "{stderr}");
}

/// A password kept out of the URL (and so out of `ps`) is taken from PGPASSWORD.
#[test]
fn a_url_without_password_takes_it_from_pgpassword() {
    let postgres = Postgres::start().expect("postgres");
    let url = postgres.add_password_role("catalog_writer", "not on the command line").expect("a role with a password");
    let run = |password: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_encore-gen"));
        command.args(["catalog", "--postgres", &url, "--pg-schema", "guarded", "--seed", "1"]);
        command.args(SIZES);
        match password {
            Some(password) => command.env("PGPASSWORD", password),
            None => command.env_remove("PGPASSWORD"),
        };
        command.output().expect("encore-gen runs")
    };
    let refused = run(None);
    assert!(!refused.status.success());
    let reason = String::from_utf8_lossy(&refused.stderr);
    assert!(reason.contains("password missing (give it in the URL or in PGPASSWORD)"), "{reason}");

    let output = run(Some("not on the command line"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut client = Client::connect(&postgres.url(), NoTls).expect("connect");
    assert_eq!(count(&mut client, "guarded.artists"), 400);
}

/// TLS settings and a client certificate from the environment, as libpq takes them; the
/// cluster refuses plain TCP and lets the role in by certificate only.
#[test]
fn tls_and_a_client_certificate_from_the_environment() {
    let ca = TestCa::new("encore test CA").expect("CA");
    let postgres = Postgres::start_tls(&ca).expect("postgres with TLS");
    let url = postgres.add_cert_role().expect("role");
    let (cert, key) = ca.issue(ca.dir(), "client", CERT_ROLE, &[]).expect("client certificate");
    let run = |with_cert: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_encore-gen"));
        command.args(["catalog", "--postgres", &url, "--pg-schema", "over_tls", "--seed", "1"]);
        command.args(SIZES);
        command.env("PGSSLMODE", "verify-full").env("PGSSLROOTCERT", ca.root_path());
        if with_cert {
            command.env("PGSSLCERT", &cert).env("PGSSLKEY", &key);
        }
        command.output().expect("encore-gen runs")
    };
    let refused = run(false);
    assert!(!refused.status.success());
    let reason = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(reason.trim().lines().count(), 1, "{reason}");
    assert!(reason.contains("certificate"), "{reason}");

    let output = run(true);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tls = format!("sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}", ca.root_path().display(), cert.display(), key.display());
    let mut client = encore_pgconnect::Target::parse(&format!("{url}?{tls}")).unwrap().connect().expect("connect");
    assert_eq!(count(&mut client, "over_tls.artists"), 400);
}
