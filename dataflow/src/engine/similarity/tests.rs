//! Tests of the Similarity operator: its closing paths, flushes, who sends what, the
//! order of staged changes, and what a change within a rounding step costs.

use super::*;

fn entries(list: &[(u32, u32)]) -> Vec<Entry> {
    list.iter().map(|&(partner, count)| Entry { partner, count }).collect()
}

/// The three ways of closing an epoch give the same counts and the same changes.
#[test]
fn closing_paths_agree() {
    let start = entries(&[(1, 3), (4, 1), (6, 2), (9, 5)]);
    let mut run: Vec<Delta> =
        [(4, -1), (2, 1), (9, 1), (2, 1), (10, 4), (6, 1), (6, -1)].iter().map(|&(partner, delta)| ((0, partner), delta)).collect();
    consolidate(&mut run);
    let expected_entries = entries(&[(1, 3), (2, 2), (6, 2), (9, 6), (10, 4)]);
    let expected_changes = vec![(2, 0, 2), (4, 1, 0), (9, 5, 6), (10, 0, 4)];
    let mut scratch = Vec::new();
    for path in ["search", "merge", "early"] {
        let mut p = Partners { entries: start.clone(), ..Partners::default() };
        let mut last = run.clone();
        if path == "merge" {
            // Forty new partners make the run long enough for the merging path.
            last.extend((100..140).map(|partner| ((0, partner), 1)));
        }
        if path == "early" {
            p.absorb(&run, &mut scratch);
            last.clear();
        }
        let mut changes = Vec::new();
        p.close(&last, &mut scratch, &mut Vec::new(), &mut changes);
        let mut expected = expected_entries.clone();
        let mut expected_changes = expected_changes.clone();
        if path == "merge" {
            expected.extend((100..140).map(|partner| Entry { partner, count: 1 }));
            expected_changes.extend((100..140).map(|partner| (partner, 0, 1)));
        }
        assert_eq!(p.entries, expected, "{path}");
        assert_eq!(changes, expected_changes, "{path}");
        assert!(p.before.is_none(), "{path}");
    }
}

/// An epoch bigger than the buffer gives the same changes as one merged at its end.
#[test]
fn flushed_epochs_emit_like_unflushed_ones() {
    let run = |flush: bool| {
        let mut s = Similarity::new(Scoring { min_co: 1, precision: 4, count_bits: 0 }, true);
        for (track, n) in [(1, 3), (2, 3), (3, 3)] {
            s.count(track, n, 1);
        }
        s.pair(1, 2, 1);
        s.pair(1, 3, 1);
        let mut out = Vec::new();
        s.finish(|r| out.push(r));
        s.pair(1, 2, 1);
        if flush {
            s.flush();
        }
        s.pair(1, 3, -1);
        s.pair(1, 4, 1);
        out.clear();
        s.finish(|r| out.push(r));
        out.sort();
        out
    };
    let flushed = run(true);
    assert_eq!(flushed, run(false));
    // c(1,2) 1 → 2, c(1,3) 1 → 0, c(1,4) 0 → 1 (n(4) = 0: no score).
    assert_eq!(flushed.iter().filter(|r| matches!(r, PairRecord::CoListen { .. })).count(), 4);
}

/// Each worker sends the count changes of its own tracks' lists (it holds both directions
/// of their pairs), and a change of `q(n(j))` for the lists of `j`'s partners where it
/// matters to them: not where the pair scores at or below a list's floor before and after.
#[test]
fn each_worker_sends_what_its_tracks_see() {
    // Two "workers": a owns track 1, b owns track 2; both know n(1), n(2).
    let run = |owner_of: u64| {
        let mut s = Similarity::new(Scoring { min_co: 2, precision: 4, count_bits: 0 }, true);
        let (mine, other) = if owner_of == 1 { (1, 2) } else { (2, 1) };
        let mut epochs = Vec::new();
        for _ in 0..2 {
            s.pair(mine, other, 1);
        }
        s.count(1, 2, 1);
        s.count(2, 3, 1);
        let mut out = Vec::new();
        s.finish(|r| out.push(r));
        epochs.push(std::mem::take(&mut out));
        // As the neighbours operator reports after the first epoch: 2 leads N(1) (kept where 2
        // is local), 1 leads N(2).
        s.set_leads(2, 1, true);
        s.set_leads(1, 2, true);
        // Second epoch: only n(2) grows 3 → 4.
        s.count(2, 3, -1);
        s.count(2, 4, 1);
        s.finish(|r| out.push(r));
        epochs.push(std::mem::take(&mut out));
        // Third: N(1)'s floor is above s(1,2) before and after n(2) 4 → 5 (7071 → 6325).
        s.set_floor(1, 7_100);
        s.count(2, 4, -1);
        s.count(2, 5, 1);
        s.finish(|r| out.push(r));
        epochs.push(out);
        epochs
    };
    let (a, b) = (run(1), run(2));
    // c(1,2) 0 → 2, n(1) 0 → 2, n(2) 0 → 3: s = 2·10^4/sqrt(6) = 8165 each way.
    assert_eq!(
        a[0],
        vec![
            PairRecord::Score { key: 1, item: 2, score: 8165 },
            PairRecord::CoListen { a: 1, b: 2, count: 2, diff: 1 },
            PairRecord::Rescale { key: 1, from: 0, to: 2 },
        ]
    );
    assert_eq!(b[0], vec![PairRecord::Score { key: 2, item: 1, score: 8165 }, PairRecord::Rescale { key: 2, from: 0, to: 3 }]);
    // n(2) 3 → 4: 2's worker rescales N(2) and tells N(1), where 2 leads; 1's sends nothing.
    assert!(a[1].is_empty(), "{:?}", a[1]);
    assert_eq!(b[1], vec![PairRecord::Rescale { key: 2, from: 3, to: 4 }, PairRecord::Score { key: 1, item: 2, score: 7071 }]);
    // Below N(1)'s floor before and after: N(1) hears nothing.
    assert!(a[2].is_empty(), "{:?}", a[2]);
    assert_eq!(b[2], vec![PairRecord::Rescale { key: 2, from: 4, to: 5 }]);
}

/// B = 2: q(4) = q(5) = 4, q(6) = 6, q(12) = q(13) = 12. A change of n or c that leaves
/// its rounded value alone visits no pair and emits nothing; one that changes it rescores
/// the track's pairs. (One state holding both directions of every pair stands for all
/// workers; `n` arrives rounded, as upstream sends it.)
#[test]
fn changes_within_a_rounding_step_cost_nothing() {
    let mut s = Similarity::new(Scoring { min_co: 2, precision: 4, count_bits: 2 }, false);
    let both = |s: &mut Similarity, a: u64, b: u64, diff: i32| {
        s.pair(a, b, diff);
        s.pair(b, a, diff);
    };
    let mut out = Vec::new();
    for (track, n) in [(1, 12), (2, 4), (3, 4)] {
        s.count(track, n, 1);
    }
    for _ in 0..5 {
        both(&mut s, 1, 2, 1);
    }
    both(&mut s, 1, 3, 1);
    s.finish(|r| out.push(r));
    // s(1,2) = q(5)·10^4 / sqrt(12·4) = 5774 both ways; c(1,3) = 1 < C. Every track's n
    // changed: each list rescales.
    out.sort();
    assert_eq!(
        out,
        vec![
            PairRecord::Score { key: 1, item: 2, score: 5774 },
            PairRecord::Score { key: 2, item: 1, score: 5774 },
            PairRecord::Rescale { key: 1, from: 0, to: 12 },
            PairRecord::Rescale { key: 2, from: 0, to: 4 },
            PairRecord::Rescale { key: 3, from: 0, to: 4 },
        ]
    );

    // n(2) 4 → 5 (q(n) stays 4: a retraction and assertion of 4) and c(1,2) 5 → 4 (q
    // stays 4): no record, no pair visited.
    out.clear();
    let visited = s.rescored_pairs.get();
    s.count(2, 4, -1);
    s.count(2, 4, 1);
    both(&mut s, 1, 2, -1);
    s.finish(|r| out.push(r));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.rescored_pairs.get(), visited, "no pair visited for an unchanged q(n)");

    // Track 1 gains 100 partners below C, then n(1) 12 → 13 (q stays 12): nothing.
    for partner in 100..200 {
        both(&mut s, 1, partner, 1);
    }
    s.finish(|r| out.push(r));
    s.count(1, 12, -1);
    s.count(1, 12, 1);
    s.finish(|r| out.push(r));
    assert!(out.is_empty() && s.rescored_pairs.get() == visited, "{out:?}");

    // n(2) 5 → 6: q(n(2)) 4 → 6, s(1,2) 5774 → 4·10^4 / sqrt(12·6) = 4714: N(2) rescales,
    // N(1) hears of its leader 2 (as the neighbours operator reported it) and of nothing else.
    s.set_leads(2, 1, true);
    s.count(2, 4, -1);
    s.count(2, 6, 1);
    s.finish(|r| out.push(r));
    assert_eq!(out, vec![PairRecord::Rescale { key: 2, from: 4, to: 6 }, PairRecord::Score { key: 1, item: 2, score: 4714 }]);
    assert!(s.rescored_pairs.get() > visited);
}

/// Pair changes of an epoch staged while an earlier epoch's n changes could still come,
/// then more of the same epoch once it opens: a user's +1 of a pair is staged, its -1
/// comes later, and a flush (after 64 changes in tests) lands between them. The staged
/// +1 must be counted first, or the flush takes c(1,2) below zero (a debug assertion; in
/// release the -1 was lost, leaving c(1,2) = 1 for good).
#[test]
fn staged_pair_changes_count_before_later_ones_of_their_epoch() {
    use differential_dataflow::input::Input as _;
    use timely::dataflow::operators::capture::{Capture, Extract};
    use timely::dataflow::operators::{Input, Probe};

    let (sender, receiver) = std::sync::mpsc::channel();
    let sender = std::sync::Mutex::new(sender);
    timely::execute(timely::Config::thread(), move |worker| {
        let mut pairs_in = timely::dataflow::InputHandle::<Epoch, CapacityContainerBuilder<Vec<PairChange>>>::new();
        let (mut counts_in, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (counts_in, counts) = scope.new_collection::<(u64, isize), isize>();
            let pairs = scope.input_from(&mut pairs_in);
            let scoring = Scoring { min_co: 1, precision: 4, count_bits: 0 };
            let neighbours = crate::engine::neighbours::neighbour_lists(pairs, counts, scoring, 3, true);
            let (probe, out) = neighbours.records.probe();
            out.capture_into(sender.lock().expect("one worker").clone());
            (counts_in, probe)
        });
        let both = |pairs: &mut Vec<PairChange>, a: u64, b: u64, diff: i32| pairs.extend([(a, b, diff), (b, a, diff)]);
        // Epoch 1's +1 arrives while epoch 0's n changes are still open: staged.
        pairs_in.advance_to(1);
        let mut first = Vec::new();
        both(&mut first, 1, 2, 1);
        pairs_in.send_batch(&mut first);
        pairs_in.flush();
        for _ in 0..10 {
            worker.step();
        }
        // Epoch 0 ends; epoch 1 opens with the same user's -1 and enough to flush.
        counts_in.advance_to(1);
        counts_in.flush();
        for _ in 0..10 {
            worker.step();
        }
        let mut later = Vec::new();
        both(&mut later, 1, 2, -1);
        for partner in 100..140 {
            both(&mut later, 3, partner, 1);
        }
        pairs_in.send_batch(&mut later);
        pairs_in.advance_to(2);
        counts_in.advance_to(2);
        pairs_in.flush();
        counts_in.flush();
        worker.step_while(|| probe.less_than(&2));
    })
    .expect("dataflow runs");
    let records: Vec<PairRecord> = receiver.extract().into_iter().flat_map(|(_, records)| records).collect();
    assert!(records.iter().any(|r| matches!(r, PairRecord::CoListen { a: 3, .. })), "the filler counted: {records:?}");
    assert!(
        !records.iter().any(|r| matches!(r, PairRecord::CoListen { a: 1, b: 2, .. })),
        "c(1,2) went 0 → 1 → 0 within epoch 1: no change to report, got {:?}",
        records.iter().filter(|r| matches!(r, PairRecord::CoListen { a: 1, .. })).collect::<Vec<_>>()
    );
}

/// Closing by search and in place (few changes against many entries: inserts, removals and
/// updates mixed) and by the galloping merge give the entries and changes of a plain map,
/// on random runs.
#[test]
fn closing_agrees_with_a_map() {
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut scratch = Vec::new();
    for case in 0..3_000 {
        let len = rng.random_range(0..[10, 200, 3_000][case % 3]);
        let mut keys: Vec<u32> = (0..len).map(|_| rng.random_range(0..10_000u32)).collect();
        keys.sort_unstable();
        keys.dedup();
        let start: Vec<Entry> = keys.iter().map(|&partner| Entry { partner, count: rng.random_range(1..4) }).collect();
        let mut run: Vec<Delta> = Vec::new();
        // Up to 40 changes: on the short vectors more than the searching path takes.
        for _ in 0..rng.random_range(0..40) {
            if !start.is_empty() && rng.random_range(0..2) == 0 {
                // An existing partner: up, down, or to zero.
                let entry = start[rng.random_range(0..start.len())];
                let delta = [1, -1, -(entry.count as i32)][rng.random_range(0..3)];
                run.push(((0, entry.partner), delta));
            } else {
                let partner = rng.random_range(0..10_000u32);
                if keys.binary_search(&partner).is_err() {
                    run.push(((0, partner), rng.random_range(1..3)));
                }
            }
        }
        run.sort_unstable_by_key(|(key, _)| *key);
        run.dedup_by_key(|(key, _)| *key);
        let mut map: std::collections::BTreeMap<u32, u32> = start.iter().map(|e| (e.partner, e.count)).collect();
        let mut expected_changes = Vec::new();
        for &((_, partner), delta) in &run {
            let before = map.get(&partner).copied().unwrap_or(0);
            let after = (before as i32 + delta) as u32;
            expected_changes.push((partner, before, after));
            if after == 0 {
                map.remove(&partner);
            } else {
                map.insert(partner, after);
            }
        }
        let expected: Vec<Entry> = map.into_iter().map(|(partner, count)| Entry { partner, count }).collect();
        let mut p = Partners { entries: start.clone(), ..Partners::default() };
        let mut changes = Vec::new();
        p.close(&run, &mut scratch, &mut Vec::new(), &mut changes);
        assert_eq!(p.entries, expected, "case {case}: {run:?}");
        assert_eq!(changes, expected_changes, "case {case}");
    }
}
