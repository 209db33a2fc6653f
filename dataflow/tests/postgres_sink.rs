//! The Postgres sink against a real PostgreSQL (started by `encore-testkit`): schema creation,
//! exact merges of random changes, ranked views, offsets, dead letters, odd schema names, and
//! the failure paths (unreachable server, server restarted between and during commits, a
//! commit whose acknowledgement is lost).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use encore_dataflow::sink::postgres::{CommitStats, PgSink, RetryPolicy, SinkError};
use encore_dataflow::tables::lists_by_key;
use encore_dataflow::tables::{Changes, DeadLetter, RankedList, Tables, TrackStats};
use encore_pgconnect::Target;
use encore_testkit::{Postgres, TestCa};
use postgres::{Client, NoTls};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const TOPIC: &str = "music_streaming_data";

/// Short waits so that failure tests finish quickly, enough attempts to ride out a restart.
fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
    }
}

fn start_postgres() -> Postgres {
    Postgres::start().expect("start a test PostgreSQL (see encore-testkit)")
}

fn sink(pg: &Postgres, schema: &str, emit_co_listens: bool) -> PgSink {
    PgSink::connect(&pg.url(), schema, 4, emit_co_listens, quick_retry(10)).expect("connect the sink")
}

fn client(pg: &Postgres) -> Client {
    Client::connect(&pg.url(), NoTls).expect("connect a plain client")
}

fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    pairs.iter().copied().collect()
}

fn dead_letter(partition: i32, offset: i64, payload: &[u8], error: &str) -> DeadLetter {
    DeadLetter { topic: TOPIC.to_string(), partition, offset, payload: payload.to_vec(), error: error.to_string() }
}

/// Random changes of one keyed table relative to `table`, which is updated to the state they
/// lead to: inserts, updates (old -1, new +1), deletes, plus values that come and go within
/// the batch, all shuffled.
fn random_changes<K: Ord + Copy, V: PartialEq + Clone>(
    rng: &mut ChaCha8Rng,
    table: &mut BTreeMap<K, V>,
    count: usize,
    mut key: impl FnMut(&mut ChaCha8Rng) -> K,
    mut value: impl FnMut(&mut ChaCha8Rng) -> V,
) -> Vec<(K, V, i64)> {
    let mut triples = Vec::new();
    let mut touched = Vec::new();
    for _ in 0..count {
        let k = key(rng);
        if touched.contains(&k) {
            continue;
        }
        touched.push(k);
        match table.get(&k).cloned() {
            Some(old) if rng.random_bool(0.3) => {
                triples.push((k, old, -1));
                table.remove(&k);
            }
            Some(old) => {
                let new = value(rng);
                if new != old {
                    triples.extend([(k, old, -1), (k, new.clone(), 1)]);
                    table.insert(k, new);
                }
            }
            None => {
                let new = value(rng);
                triples.push((k, new.clone(), 1));
                table.insert(k, new);
            }
        }
        if rng.random_bool(0.1) {
            let transient = value(rng);
            triples.extend([(k, transient.clone(), 1), (k, transient, -1)]);
        }
    }
    triples.shuffle(rng);
    triples
}

/// A random list of 1–5 distinct members in rank order (score descending, ties to the
/// smaller id), as the engine emits them.
fn random_list(rng: &mut ChaCha8Rng) -> RankedList {
    let mut members: BTreeMap<u64, i64> = BTreeMap::new();
    for _ in 0..rng.random_range(1..=5) {
        // Few distinct scores, so that ties occur.
        members.insert(rng.random_range(0..40u64), 1_000 * rng.random_range(1..300i64));
    }
    let mut list: RankedList = members.into_iter().collect();
    list.sort_by_key(|&(member, units)| (std::cmp::Reverse(units), member));
    list
}

/// Random changes of a list table whose rows `members` holds one entry per member.
fn random_list_changes(rng: &mut ChaCha8Rng, members: &mut BTreeMap<(u64, u64), i64>, rows: usize) -> Vec<(u64, RankedList, i64)> {
    let mut lists = lists_by_key(members);
    let changes = random_changes(rng, &mut lists, rows, |rng| rng.random_range(0..40u64), random_list);
    *members = lists.iter().flat_map(|(&key, list)| list.iter().map(move |&(member, units)| ((key, member), units))).collect();
    changes
}

fn random_commit(rng: &mut ChaCha8Rng, model: &mut Tables, rows: usize) -> Changes {
    Changes {
        track_neighbors: random_list_changes(rng, &mut model.track_neighbors, rows),
        user_recommendations: random_list_changes(rng, &mut model.user_recommendations, rows),
        track_stats: random_changes(
            rng,
            &mut model.track_stats,
            rows,
            |rng| rng.random_range(0..80u64),
            |rng| TrackStats { plays: rng.random_range(1..1000), listeners: rng.random_range(1..100), likes: rng.random_range(0..100) },
        ),
        co_listens: random_changes(
            rng,
            &mut model.co_listens,
            rows,
            |rng| {
                let a = rng.random_range(0..40u64);
                (a, a + rng.random_range(1..40u64))
            },
            |rng| rng.random_range(1..50u64),
        ),
        last_listens: Vec::new(),
        dead_letters: Vec::new(),
        offsets: BTreeMap::new(),
        ..Changes::default()
    }
}

#[test]
fn random_commits_equal_the_same_changes_applied_in_memory() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", true);
    let mut rng = ChaCha8Rng::seed_from_u64(20261127);
    let mut model = Tables::default();
    let mut letters = Vec::new();
    for commit in 0..25i64 {
        let rows = rng.random_range(0..60);
        let mut changes = random_commit(&mut rng, &mut model, rows);
        if commit % 4 == 1 {
            changes.dead_letters.push(dead_letter(1, commit, b"{\"user_id\":", "truncated JSON"));
            letters.extend(changes.dead_letters.clone());
        }
        let stats = sink.commit(TOPIC, &changes, &offsets(&[(0, 10 * commit + 3), (1, commit + 1)])).expect("commit");
        assert_eq!(stats.attempts, 1);
        let (tables, dead_letters) = sink.read_tables().expect("read back");
        assert_eq!(tables, model, "after commit {commit}");
        assert_eq!(dead_letters, letters);
    }
    assert!(!model.track_neighbors.is_empty() && !model.co_listens.is_empty());
    assert_eq!(sink.committed_offsets(TOPIC).unwrap(), offsets(&[(0, 243), (1, 25)]));
}

#[test]
fn schema_creation_is_idempotent_and_survives_a_race() {
    let pg = start_postgres();
    let mut first = sink(&pg, "public", false);
    let changes = Changes { track_stats: vec![(7, TrackStats { plays: 3, listeners: 2, likes: 1 }, 1)], ..Changes::default() };
    first.commit(TOPIC, &changes, &offsets(&[(0, 1)])).unwrap();
    // A second process starting later finds everything in place, data included.
    let mut second = sink(&pg, "public", false);
    assert_eq!(second.read_tables().unwrap().0.track_stats.len(), 1);
    assert_eq!(second.committed_offsets(TOPIC).unwrap(), offsets(&[(0, 1)]));

    // Several processes creating a fresh schema at the same moment.
    let url = pg.url();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgSink::connect(&url, "raced", 4, true, quick_retry(5)).map(|_| ()))
        })
        .collect();
    for racer in racers {
        racer.join().expect("racer thread").expect("concurrent schema creation");
    }

    let mut client = client(&pg);
    let objects = |client: &mut Client, schema: &str| -> Vec<String> {
        client
            .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1", &[&schema])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let mut expected = vec![
        "dead_letters",
        "encore_last_listen",
        "encore_parameters",
        "encore_progress",
        "track_neighbors",
        "track_neighbors_ranked",
        "track_stats",
        "user_recommendations",
        "user_recommendations_ranked",
    ];
    assert_eq!(objects(&mut client, "public"), expected, "co_listens only with --emit-co-listens");
    expected.insert(0, "co_listens");
    assert_eq!(objects(&mut client, "raced"), expected);
}

/// Commits rewrite values, never keys: the keyed tables leave room on each page, so that the
/// new version of an updated row stays on the page of the old one (a heap-only update, which
/// adds no index entry). Pages filled to the brim would send every new version elsewhere.
#[test]
fn value_updates_stay_on_their_page() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    let list = |units: i64| -> RankedList { vec![(1, units), (2, units - 1), (3, units - 2)] };
    let keys: Vec<u64> = (0..3_000u64).collect();
    let insert = Changes { track_neighbors: keys.iter().map(|&k| (k, list(100), 1)).collect(), ..Changes::default() };
    sink.commit(TOPIC, &insert, &offsets(&[(0, 1)])).unwrap();
    let mut client = client(&pg);
    let pages = |client: &mut Client| -> BTreeMap<i64, i64> {
        client
            .query("SELECT track_id, (ctid::text::point)[0]::int8 FROM track_neighbors", &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    };
    let before = pages(&mut client);
    // Two commits, each rewriting a different fifth of the lists' scores.
    for (round, offset) in [(0u64, 2i64), (1, 3)] {
        let update = Changes {
            track_neighbors: keys.iter().filter(|&&k| k % 5 == round).flat_map(|&k| [(k, list(100), -1), (k, list(200), 1)]).collect(),
            ..Changes::default()
        };
        sink.commit(TOPIC, &update, &offsets(&[(0, offset)])).unwrap();
    }
    let after = pages(&mut client);
    assert_eq!(before.len(), keys.len());
    let moved = before.iter().filter(|(key, page)| after.get(key) != Some(page)).count();
    assert_eq!(moved, 0, "{moved} of {} rows moved to another page when their scores changed", keys.len());
    let updated: i64 = client.query_one("SELECT count(*) FROM track_neighbors WHERE scores[1] = 200 / 10000.0", &[]).unwrap().get(0);
    assert_eq!(updated, 1_200);
}

/// A list is one row, members in the order given (rank order); the ranked views number them
/// from 1 and carry `updated_at` (recommendations).
#[test]
fn lists_are_one_row_and_the_ranked_views_number_their_members() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    let changes = Changes {
        track_neighbors: vec![(1, vec![(3, 7000), (2, 5000), (4, 5000), (5, 1)], 1), (2, vec![(9, 10)], 1)],
        user_recommendations: vec![(8, vec![(20, 13), (10, 12), (30, 12)], 1), (9, vec![(1, 1)], 1)],
        ..Changes::default()
    };
    let stats = sink.commit(TOPIC, &changes, &offsets(&[(0, 1)])).unwrap();
    assert_eq!((stats.tables[0].inserted, stats.tables[1].inserted), (2, 2), "one row per list");
    let mut client = client(&pg);
    let ranks = |client: &mut Client, sql: &str| -> Vec<(i64, i64, i64)> {
        client.query(sql, &[]).unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
    };
    assert_eq!(
        ranks(&mut client, "SELECT track_id, rank, neighbor_id FROM track_neighbors_ranked ORDER BY 1, 2"),
        vec![(1, 1, 3), (1, 2, 2), (1, 3, 4), (1, 4, 5), (2, 1, 9)]
    );
    assert_eq!(
        ranks(&mut client, "SELECT user_id, rank, track_id FROM user_recommendations_ranked ORDER BY 1, 2"),
        vec![(8, 1, 20), (8, 2, 10), (8, 3, 30), (9, 1, 1)]
    );
    let row = client.query_one("SELECT neighbor_ids, scores, updated_at IS NOT NULL FROM track_neighbors WHERE track_id = 1", &[]).unwrap();
    assert_eq!(row.get::<_, Vec<i64>>(0), vec![3, 2, 4, 5]);
    assert_eq!(row.get::<_, Vec<f64>>(1), vec![0.7, 0.5, 0.5, 0.0001], "scores are units / 10^P");
    assert!(row.get::<_, bool>(2));
    // The views' columns, in SPEC §3's order.
    let columns = |client: &mut Client, view: &str| -> Vec<String> {
        client
            .query("SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position", &[&view])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    assert_eq!(columns(&mut client, "track_neighbors_ranked"), ["track_id", "rank", "neighbor_id", "score"]);
    assert_eq!(columns(&mut client, "user_recommendations_ranked"), ["user_id", "rank", "track_id", "score", "updated_at"]);
    assert_eq!(columns(&mut client, "user_recommendations"), ["user_id", "track_ids", "scores", "updated_at"]);
}

/// `updated_at` is the time of the commit that last changed the row: a later commit that
/// changes one list moves its stamp only, and a replayed commit that writes a list as it is
/// moves nothing.
#[test]
fn updated_at_moves_only_with_a_change_of_the_row() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    let mut client = client(&pg);
    let stamps = |client: &mut Client| -> BTreeMap<i64, std::time::SystemTime> {
        client.query("SELECT user_id, updated_at FROM user_recommendations", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let first = Changes { user_recommendations: vec![(1, vec![(5, 10)], 1), (2, vec![(6, 10)], 1)], ..Changes::default() };
    sink.commit(TOPIC, &first, &offsets(&[(0, 1)])).unwrap();
    let before = stamps(&mut client);
    std::thread::sleep(Duration::from_millis(20));
    let second = Changes { user_recommendations: vec![(1, vec![(5, 10)], -1), (1, vec![(5, 11)], 1)], ..Changes::default() };
    sink.commit(TOPIC, &second, &offsets(&[(0, 2)])).unwrap();
    let after = stamps(&mut client);
    assert!(after[&1] > before[&1], "a changed row takes the commit's time");
    assert_eq!(after[&2], before[&2], "an untouched row keeps its time");
    // The same commit again: its update finds the row as it is, and the upsert leaves it.
    sink.commit(TOPIC, &second, &offsets(&[(0, 2)])).unwrap();
    assert_eq!(stamps(&mut client), after);
}

/// A schema with the older tables, one row per list member, is refused with one line that
/// says what to do, and deploy/migrate-list-rows.sql converts it, keeping the lists in order.
#[test]
fn member_rows_of_an_older_encore_are_refused_and_converted_by_the_script() {
    let pg = start_postgres();
    let mut client = client(&pg);
    client
        .batch_execute(
            "CREATE SCHEMA old;
             CREATE TABLE old.track_neighbors (track_id BIGINT, neighbor_id BIGINT, score DOUBLE PRECISION, PRIMARY KEY (track_id, neighbor_id));
             CREATE TABLE old.user_recommendations (user_id BIGINT, track_id BIGINT, score DOUBLE PRECISION, PRIMARY KEY (user_id, track_id));
             CREATE VIEW old.user_recommendations_ranked AS SELECT user_id, track_id, score,
                 row_number() OVER (PARTITION BY user_id ORDER BY score DESC, track_id) AS rank FROM old.user_recommendations;
             INSERT INTO old.track_neighbors VALUES (1, 4, 0.5), (1, 2, 0.5), (1, 3, 0.7), (2, 9, 0.001);
             INSERT INTO old.user_recommendations VALUES (8, 30, 0.0012), (8, 20, 0.0013), (8, 10, 0.0012);",
        )
        .unwrap();
    let err = PgSink::connect(&pg.url(), "old", 4, false, quick_retry(3)).unwrap_err();
    assert!(matches!(&err, SinkError::MemberRows { tables, .. } if tables == "track_neighbors, user_recommendations"), "{err}");
    let line = err.to_string();
    assert!(!line.contains('\n') && line.contains("--pg-schema") && line.contains("deploy/migrate-list-rows.sql"), "{line}");

    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/migrate-list-rows.sql")).unwrap();
    client.batch_execute(&format!("SET search_path TO old; {script}")).unwrap();
    let mut sink = PgSink::connect(&pg.url(), "old", 4, false, quick_retry(3)).expect("the converted schema is accepted");
    let (tables, _) = sink.read_tables().unwrap();
    assert_eq!(lists_by_key(&tables.track_neighbors), BTreeMap::from([(1, vec![(3, 7000), (2, 5000), (4, 5000)]), (2, vec![(9, 10)])]));
    assert_eq!(lists_by_key(&tables.user_recommendations), BTreeMap::from([(8, vec![(20, 13), (10, 12), (30, 12)])]));
    let ranked: Vec<(i64, i64)> = client
        .query("SELECT rank, track_id FROM old.user_recommendations_ranked ORDER BY rank", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ranked, vec![(1, 20), (2, 10), (3, 30)]);
}

#[test]
fn offsets_round_trip_per_topic_and_never_move_backwards() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    assert!(sink.committed_offsets(TOPIC).unwrap().is_empty());
    sink.commit(TOPIC, &Changes::default(), &offsets(&[(0, 5), (1, 7), (3, 0)])).unwrap();
    // Partitions left out keep their offset; other topics are separate.
    sink.commit(TOPIC, &Changes::default(), &offsets(&[(1, 9)])).unwrap();
    sink.commit("other", &Changes::default(), &offsets(&[(0, 100)])).unwrap();
    assert_eq!(sink.committed_offsets(TOPIC).unwrap(), offsets(&[(0, 5), (1, 9), (3, 0)]));
    assert_eq!(sink.committed_offsets("other").unwrap(), offsets(&[(0, 100)]));

    // A commit that would move partition 0 back is refused as a whole.
    let changes = Changes { track_stats: vec![(1, TrackStats::default(), 1)], ..Changes::default() };
    let err = sink.commit(TOPIC, &changes, &offsets(&[(0, 4), (1, 10)])).unwrap_err();
    assert!(matches!(err, SinkError::Fenced { partition: 0, offset: 4, .. }), "{err}");
    assert_eq!(sink.committed_offsets(TOPIC).unwrap(), offsets(&[(0, 5), (1, 9), (3, 0)]));
    assert!(sink.read_tables().unwrap().0.track_stats.is_empty());
    // The sink is still usable afterwards.
    sink.commit(TOPIC, &changes, &offsets(&[(0, 6)])).unwrap();
    assert_eq!(sink.read_tables().unwrap().0.track_stats.len(), 1);
}

#[test]
fn a_replayed_commit_changes_nothing() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut model = Tables::default();
    let mut changes = random_commit(&mut rng, &mut model, 50);
    changes.co_listens.clear();
    model.co_listens.clear();
    changes.dead_letters.push(dead_letter(0, 0, b"?", "not JSON"));
    let first = sink.commit(TOPIC, &changes, &offsets(&[(0, 1)])).unwrap();
    assert_eq!(first.attempts, 1);
    // The same commit again (offsets unchanged, so the fence lets it through): its inserts
    // meet existing rows, the commit is redone with upserts and the tables stay as they are.
    let again = sink.commit(TOPIC, &changes, &offsets(&[(0, 1)])).unwrap();
    assert_eq!(again.attempts, 2, "fast inserts, then upserts");
    let (tables, letters) = sink.read_tables().unwrap();
    assert_eq!(tables, model);
    assert_eq!(letters.len(), 1);

    // An "insert" of a key that exists takes the new value.
    let (&key, _) = model.track_stats.iter().next().unwrap();
    let stats = TrackStats { plays: 99, listeners: 9, likes: 0 };
    let insert = Changes { track_stats: vec![(key, stats, 1)], ..Changes::default() };
    assert_eq!(sink.commit(TOPIC, &insert, &offsets(&[(0, 2)])).unwrap().attempts, 2);
    assert_eq!(sink.read_tables().unwrap().0.track_stats[&key], stats);

    // An "update" of a key that is missing creates the row.
    let missing = 1_000_000;
    let update = Changes { track_stats: vec![(missing, TrackStats::default(), -1), (missing, stats, 1)], ..Changes::default() };
    assert_eq!(sink.commit(TOPIC, &update, &offsets(&[(0, 3)])).unwrap().attempts, 2);
    assert_eq!(sink.read_tables().unwrap().0.track_stats[&missing], stats);
}

#[test]
fn incoherent_changes_write_nothing() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    let changes = Changes {
        track_stats: vec![(1, TrackStats::default(), 1)],
        track_neighbors: vec![(1, vec![(2, 10)], 1), (1, vec![(2, 11)], 1)],
        ..Changes::default()
    };
    let err = sink.commit(TOPIC, &changes, &offsets(&[(0, 1)])).unwrap_err();
    assert!(matches!(err, SinkError::InvalidChanges { table: "track_neighbors", .. }), "{err}");
    assert!(sink.committed_offsets(TOPIC).unwrap().is_empty());
    assert_eq!(sink.read_tables().unwrap().0, Tables::default());
}

#[test]
fn dead_letters_keep_binary_payloads_and_are_never_duplicated() {
    let pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    let every_byte: Vec<u8> = (0..=255).collect();
    let letters = vec![
        dead_letter(0, 3, &every_byte, "not valid UTF-8"),
        dead_letter(0, 4, &[], "empty message"),
        dead_letter(2, 0, &[0xff, 0xfe, 0x00], "a reason quoting \0 a NUL"),
    ];
    let changes = Changes { dead_letters: letters.clone(), ..Changes::default() };
    sink.commit(TOPIC, &changes, &offsets(&[(0, 5), (2, 1)])).unwrap();
    // The same messages again (a replayed commit) and one new one.
    let mut again = changes.clone();
    again.dead_letters.push(dead_letter(0, 5, b"[]", "not an object"));
    sink.commit(TOPIC, &again, &offsets(&[(0, 6), (2, 1)])).unwrap();

    let (_, stored) = sink.read_tables().unwrap();
    let mut expected = letters;
    expected[2].error = "a reason quoting \u{fffd} a NUL".to_string();
    expected.push(dead_letter(0, 5, b"[]", "not an object"));
    assert_eq!(stored, expected);
}

#[test]
fn schema_name_with_quotes_and_spaces() {
    let pg = start_postgres();
    let schema = "enc\"ore; DROP TABLE x; --";
    let mut sink = sink(&pg, schema, false);
    let changes = Changes {
        user_recommendations: vec![(1, vec![(2, 1234)], 1)],
        dead_letters: vec![dead_letter(0, 0, b"x", "bad")],
        ..Changes::default()
    };
    sink.commit(TOPIC, &changes, &offsets(&[(0, 1)])).unwrap();
    let (tables, letters) = sink.read_tables().unwrap();
    assert_eq!(tables.user_recommendations, BTreeMap::from([((1, 2), 1234)]));
    assert_eq!(letters.len(), 1);

    let mut client = client(&pg);
    let count = |client: &mut Client, schema: &str| -> i64 {
        client.query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1", &[&schema]).unwrap().get(0)
    };
    // The four SPEC §3 tables written here, encore_progress, encore_parameters and the
    // durable state (encore_last_listen).
    assert_eq!(count(&mut client, schema), 7);
    assert_eq!(count(&mut client, "public"), 0);
}

#[test]
fn unreachable_postgres_fails_after_bounded_retries() {
    // A port nobody listens on: bind, note it, release it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let err = PgSink::connect(&url, "public", 4, false, quick_retry(3)).unwrap_err();
    assert!(matches!(err, SinkError::Unreachable { attempts: 3, .. }), "{err}");
    assert!(!err.to_string().contains('\n'));

    let err = PgSink::connect("postgres://127.0.0.1:x/", "public", 4, false, quick_retry(3)).unwrap_err();
    assert!(matches!(err, SinkError::Config(_)), "{err}");
}

#[test]
fn permanent_errors_are_not_retried() {
    let pg = start_postgres();
    let url = pg.url();
    let url = format!("{}/no_such_database", url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base));
    let err = PgSink::connect(&url, "public", 4, false, quick_retry(3)).unwrap_err();
    match &err {
        SinkError::Postgres { reason, .. } => assert!(reason.contains("3D000"), "{err}"),
        other => panic!("expected a Postgres error, got {other}"),
    }
}

#[test]
fn commits_over_checked_tls_survive_a_restart_and_a_wrong_certificate_fails_at_once() {
    let ca = TestCa::new("encore test CA").unwrap();
    let mut pg = Postgres::start_tls(&ca).unwrap();
    let tls = format!("sslmode=verify-full&sslrootcert={}", ca.root_path().display());
    let url = format!("{}?{tls}", pg.url());
    let mut sink = PgSink::connect(&url, "public", 4, true, quick_retry(10)).expect("connect over TLS");
    let mut rng = ChaCha8Rng::seed_from_u64(443);
    let mut model = Tables::default();
    let first = random_commit(&mut rng, &mut model, 40);
    sink.commit(TOPIC, &first, &offsets(&[(0, 1)])).unwrap();
    pg.stop().unwrap();
    pg.start_again().unwrap();
    let second = random_commit(&mut rng, &mut model, 40);
    let stats = sink.commit(TOPIC, &second, &offsets(&[(0, 2)])).unwrap();
    assert!(stats.attempts >= 2, "the old connection died with the server: {stats:?}");
    assert_eq!(sink.read_tables().unwrap().0, model);
    // The server saw the sink's session encrypted (the cluster refuses plain TCP anyway).
    let mut client = Target::parse(&url).unwrap().connect().unwrap();
    let sessions: Vec<bool> = client
        .query("SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = 'encore-flow'", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(sessions, [true]);

    // The certificate names 127.0.0.1, not localhost: no retries, one line naming the cause.
    let wrong_name = format!("postgres://postgres@localhost:{}/postgres?{tls}", pg.port());
    let err = PgSink::connect(&wrong_name, "public", 4, false, quick_retry(10)).unwrap_err();
    match &err {
        SinkError::Postgres { reason, .. } => {
            assert!(reason.contains("certificate not valid for name \"localhost\""), "{err}")
        }
        other => panic!("expected a permanent error, got {other}"),
    }
    // A certificate file that does not exist is named before anything connects.
    let err = PgSink::connect(&format!("{}?sslrootcert=/nonexistent/ca.pem", pg.url()), "public", 4, false, quick_retry(10)).unwrap_err();
    assert!(err.to_string().starts_with("cannot use root certificate /nonexistent/ca.pem:"), "{err}");
}

#[test]
fn postgres_restarted_between_commits() {
    let mut pg = start_postgres();
    let mut sink = sink(&pg, "public", false);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut model = Tables::default();
    let mut first = random_commit(&mut rng, &mut model, 30);
    first.co_listens.clear();
    model.co_listens.clear();
    first.dead_letters.push(dead_letter(0, 1, b"{", "EOF"));
    sink.commit(TOPIC, &first, &offsets(&[(0, 2)])).unwrap();

    pg.stop().unwrap();
    pg.start_again().unwrap();

    let mut second = random_commit(&mut rng, &mut model, 30);
    second.co_listens.clear();
    model.co_listens.clear();
    second.dead_letters.push(dead_letter(0, 2, b"}", "not JSON"));
    let stats = sink.commit(TOPIC, &second, &offsets(&[(0, 3)])).unwrap();
    assert!(stats.attempts >= 2, "the old connection died with the server: {stats:?}");
    assert!(!stats.ack_lost);

    let (tables, letters) = sink.read_tables().unwrap();
    assert_eq!(tables, model);
    assert_eq!(letters.iter().map(|l| l.offset).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(sink.committed_offsets(TOPIC).unwrap(), offsets(&[(0, 3)]));
}

#[test]
fn postgres_down_during_a_commit_is_waited_for() {
    let mut pg = start_postgres();
    let mut sink = PgSink::connect(&pg.url(), "public", 4, false, quick_retry(60)).unwrap();
    pg.stop().unwrap();
    // Bring it back while the sink is retrying.
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        pg.start_again().map(|()| pg)
    });
    let changes = Changes { track_stats: vec![(5, TrackStats { plays: 1, listeners: 1, likes: 0 }, 1)], ..Changes::default() };
    let stats = sink.commit(TOPIC, &changes, &offsets(&[(0, 1)])).unwrap();
    let _pg = restarter.join().expect("restarter thread").expect("restart PostgreSQL");
    assert!(stats.attempts >= 2, "{stats:?}");
    assert_eq!(sink.read_tables().unwrap().0.track_stats.len(), 1);
    assert_eq!(sink.committed_offsets(TOPIC).unwrap(), offsets(&[(0, 1)]));
}

/// Where [`CuttingProxy`] cuts the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The client's COMMIT never reaches the server: the transaction is rolled back.
    BeforeCommit,
    /// The COMMIT reaches the server and commits, but its answer never reaches the client.
    AfterCommit,
}

/// A TCP proxy in front of Postgres that cuts the first connection that sends `COMMIT` after
/// [`arm`](Self::arm), at the chosen moment; other traffic passes unchanged.
struct CuttingProxy {
    port: u16,
    armed: Arc<Mutex<Option<Cut>>>,
}

impl CuttingProxy {
    fn start(upstream_port: u16) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&armed);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                relay(client, server, Arc::clone(&shared));
            }
        });
        CuttingProxy { port, armed }
    }

    fn arm(&self, cut: Cut) {
        *self.armed.lock().unwrap() = Some(cut);
    }

    /// Whether the armed cut has happened.
    fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

fn relay(client: TcpStream, server: TcpStream, armed: Arc<Mutex<Option<Cut>>>) {
    // Set when this connection's COMMIT went through and its answer must be swallowed.
    let swallow = Arc::new(AtomicBool::new(false));
    let cut = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let swallow_up = Arc::clone(&swallow);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf) {
                Ok(0) | Err(_) => return cut(&from_client, &to_server),
                Ok(n) => n,
            };
            let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
            let mut armed = armed.lock().unwrap();
            match (*armed, commit) {
                (Some(Cut::BeforeCommit), true) => {
                    *armed = None;
                    return cut(&from_client, &to_server);
                }
                (Some(Cut::AfterCommit), true) => {
                    *armed = None;
                    swallow_up.store(true, Ordering::SeqCst);
                }
                _ => {}
            }
            drop(armed);
            if to_server.write_all(&buf[..n]).is_err() {
                return cut(&from_client, &to_server);
            }
        }
    });
    let (mut from_server, mut to_client) = (server, client);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf) {
                Ok(0) | Err(_) => return cut(&from_server, &to_client),
                Ok(n) => n,
            };
            // The first answer after the COMMIT went up is the COMMIT's: drop it and hang up.
            if swallow.load(Ordering::SeqCst) || to_client.write_all(&buf[..n]).is_err() {
                return cut(&from_server, &to_client);
            }
        }
    });
}

/// Runs one commit through a proxy that cuts the connection around its COMMIT; returns the
/// commit's stats and checks that the data landed exactly once either way.
fn commit_through_cut(cut: Cut) -> CommitStats {
    let pg = start_postgres();
    let proxy = CuttingProxy::start(pg.port());
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let mut sink = PgSink::connect(&url, "public", 4, false, quick_retry(10)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut model = Tables::default();
    let mut first = random_commit(&mut rng, &mut model, 40);
    first.co_listens.clear();
    model.co_listens.clear();
    sink.committed_offsets(TOPIC).unwrap();
    sink.commit(TOPIC, &first, &offsets(&[(0, 10), (1, 4)])).unwrap();

    let mut second = random_commit(&mut rng, &mut model, 40);
    second.co_listens.clear();
    model.co_listens.clear();
    second.dead_letters.push(dead_letter(1, 4, b"\x00", "not JSON"));
    proxy.arm(cut);
    let stats = sink.commit(TOPIC, &second, &offsets(&[(0, 12), (1, 5)])).unwrap();
    assert!(proxy.fired(), "the proxy saw the COMMIT");

    let (tables, letters) = sink.read_tables().unwrap();
    assert_eq!(tables, model);
    assert_eq!(letters.len(), 1);
    assert_eq!(sink.committed_offsets(TOPIC).unwrap(), offsets(&[(0, 12), (1, 5)]));
    stats
}

#[test]
fn connection_lost_before_commit_retries_the_transaction() {
    let stats = commit_through_cut(Cut::BeforeCommit);
    assert_eq!((stats.attempts, stats.ack_lost), (2, false), "{stats:?}");
}

#[test]
fn lost_commit_acknowledgement_is_recognised_not_replayed() {
    let stats = commit_through_cut(Cut::AfterCommit);
    assert_eq!((stats.attempts, stats.ack_lost), (1, true), "{stats:?}");
}
