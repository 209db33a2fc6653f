//! `encore-gen stream --output`: determinism, strict validity, malformed messages, ids.
//!
//! The CLI tests run the real binary; the library tests look at many more events than a
//! file would hold comfortably.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use encore_core::{parse_event, EventType};
use encore_generator::catalog::{Catalog, CatalogSizes};
use encore_generator::stream::{EventKind, EventStream, InvalidKind, Message};
use encore_testkit::{cli::SMALL_CATALOG, run_bin};

fn sizes() -> CatalogSizes {
    CatalogSizes::new(5_000, 500, Some(600), 5_000).expect("valid sizes")
}

fn encore_gen(args: &[&str]) -> Output {
    run_bin(env!("CARGO_BIN_EXE_encore-gen"), args)
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// Runs `stream --output` and returns the file's bytes.
fn stream_to_file(dir: &Path, name: &str, extra: &[&str]) -> Vec<u8> {
    let path: PathBuf = dir.join(name);
    let path_text = path.to_str().expect("UTF-8 temp path");
    let mut args = vec!["stream", "--output", path_text];
    args.extend_from_slice(extra);
    args.extend_from_slice(&SMALL_CATALOG);
    let output = encore_gen(&args);
    assert!(output.status.success(), "encore-gen failed: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::read(&path).expect("output file")
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    assert_eq!(lines.pop(), Some(&b""[..]), "the file ends with a newline");
    lines
}

#[test]
fn same_seed_same_bytes_different_seed_different_events() {
    let dir = temp_dir();
    let a = stream_to_file(dir.path(), "a", &["--events", "30000", "--seed", "7"]);
    let b = stream_to_file(dir.path(), "b", &["--events", "30000", "--seed", "7"]);
    let c = stream_to_file(dir.path(), "c", &["--events", "30000", "--seed", "8"]);
    assert_eq!(lines(&a).len(), 30_000);
    assert!(a == b, "same seed, different bytes");
    let a_lines: HashSet<&[u8]> = lines(&a).into_iter().collect();
    let shared = lines(&c).into_iter().filter(|l| a_lines.contains(l)).count();
    assert!(shared < 300, "seeds 7 and 8 share {shared} of 30 000 events");
}

#[test]
fn skip_continues_the_same_stream() {
    let dir = temp_dir();
    let whole = stream_to_file(dir.path(), "whole.jsonl", &["--events", "300", "--seed", "9", "--invalid-rate", "0.1"]);
    let rest = stream_to_file(dir.path(), "rest.jsonl", &["--events", "200", "--seed", "9", "--invalid-rate", "0.1", "--skip", "100"]);
    assert_eq!(lines(&rest), lines(&whole)[100..].to_vec());
}

#[test]
fn pacing_does_not_change_the_bytes() {
    let dir = temp_dir();
    let fast = stream_to_file(dir.path(), "fast", &["--events", "3000", "--seed", "3"]);
    let paced = stream_to_file(dir.path(), "paced", &["--events", "3000", "--seed", "3", "--rate", "20000"]);
    assert!(fast == paced);
}

#[test]
fn every_generated_event_passes_the_strict_parser_unchanged() {
    let catalog = Catalog::generate(11, sizes());
    let mut stream = EventStream::new(&catalog, 0.0);
    let mut payload = Vec::new();
    let mut kinds = HashSet::new();
    for _ in 0..200_000 {
        let Message::Event(generated) = stream.next_message(&mut payload) else {
            panic!("no malformed messages without --invalid-rate");
        };
        let parsed = parse_event(&payload).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&payload)));
        assert_eq!(parsed.user_id, generated.user_id);
        assert_eq!(parsed.track_id, generated.track_id);
        assert_eq!(parsed.event_time_ms, generated.time_ms, "{}", String::from_utf8_lossy(&payload));
        assert_eq!(parsed.ms_played, generated.ms_played.map(u64::from));
        let expected = match generated.kind {
            EventKind::Streaming => EventType::Streaming,
            EventKind::Like => EventType::Like,
            EventKind::Skip => EventType::Skip,
        };
        assert_eq!(parsed.event_type, expected);
        kinds.insert((generated.kind, std::mem::discriminant(&generated.timestamp), generated.null_ms_played));
    }
    // All three event types, all four timestamp forms, and explicit nulls occurred.
    assert!(kinds.len() >= 3 * 4, "{kinds:?}");
}

#[test]
fn every_kind_of_malformed_message_is_rejected() {
    let catalog = Catalog::generate(12, sizes());
    let mut stream = EventStream::new(&catalog, 1.0);
    let mut payload = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..30_000 {
        let Message::Invalid(kind) = stream.next_message(&mut payload) else {
            panic!("--invalid-rate 1 gives only malformed messages");
        };
        seen.insert(kind);
        if let Ok(event) = parse_event(&payload) {
            panic!("{kind:?} accepted as {event:?}: {:?}", String::from_utf8_lossy(&payload));
        }
    }
    assert_eq!(seen.len(), InvalidKind::ALL.len());
}

#[test]
fn invalid_rate_mixes_in_only_invalid_messages_at_about_that_rate() {
    let dir = temp_dir();
    let mixed = stream_to_file(dir.path(), "mixed", &["--events", "40000", "--seed", "5", "--invalid-rate", "0.1"]);
    let clean = stream_to_file(dir.path(), "clean", &["--events", "40000", "--seed", "5"]);
    let mixed = lines(&mixed);
    assert_eq!(mixed.len(), 40_000);
    let (valid, invalid): (Vec<&[u8]>, Vec<&[u8]>) = mixed.into_iter().partition(|l| parse_event(l).is_ok());
    let share = invalid.len() as f64 / 40_000.0;
    assert!((0.09..=0.11).contains(&share), "invalid share {share}");
    // The valid messages are exactly the clean stream's events, in order: nothing that looks
    // valid was damaged, and nothing malformed slipped through as valid.
    let clean = lines(&clean);
    assert_eq!(valid[..], clean[..valid.len()]);
}

#[test]
fn event_ids_exist_in_the_same_seeds_catalog() {
    let catalog = Catalog::generate(21, sizes());
    let mut stream = EventStream::new(&catalog, 0.0);
    let mut users = HashSet::new();
    let mut tracks = HashSet::new();
    for _ in 0..100_000 {
        let event = stream.next_event();
        assert!(catalog.has_user(event.user_id), "{event:?}");
        assert!(catalog.has_track(event.track_id), "{event:?}");
        users.insert(event.user_id);
        tracks.insert(event.track_id);
    }
    // The stream reaches most listeners and a broad part of the catalog.
    assert!(users.len() > 4_000, "{} users", users.len());
    assert!(tracks.len() > 2_000, "{} tracks", tracks.len());
}

#[test]
fn bad_flags_fail_with_a_one_line_reason() {
    for args in [
        &["stream", "--output", "/dev/null", "--events", "1", "--invalid-rate", "2"][..],
        &["stream", "--events", "1"][..],
        &["stream", "--output", "/dev/null", "--events", "1", "--tracks", "10", "--albums", "20"][..],
        &["stream", "--output", "/nonexistent-dir/x.jsonl", "--events", "1"][..],
    ] {
        let output = encore_gen(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(!output.stderr.is_empty(), "{args:?} printed no reason");
        // The exit line appends every cause (`{:#}`): none may be said twice.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let parts: Vec<&str> = stderr.trim().split(": ").collect();
        for (index, part) in parts.iter().enumerate() {
            assert!(part.len() < 12 || !parts[index + 1..].contains(part), "a cause repeated in {stderr:?}");
        }
    }
}
