//! Tests of the Similarity operator: its closing paths, flushes, who emits a pair, the
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
        p.close(&last, &mut scratch, &mut changes);
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

/// A pair whose count and `n(min)` change is emitted once, by the smaller track's owner,
/// in both directions; a pair where only `n(max)` changed by the larger's owner.
#[test]
fn one_worker_emits_each_pair() {
    // Two "workers": a owns track 1, b owns track 2; both know n(1), n(2).
    let run = |first_epoch: bool, owner_of: u64| {
        let mut s = Similarity::new(Scoring { min_co: 2, precision: 4, count_bits: 0 }, true);
        let (mine, other) = if owner_of == 1 { (1, 2) } else { (2, 1) };
        for _ in 0..2 {
            s.pair(mine, other, 1);
        }
        s.count(1, 2, 1);
        s.count(2, 3, 1);
        let mut out = Vec::new();
        s.finish(|r| out.push(r));
        if first_epoch {
            return out;
        }
        // Second epoch: only n(2) grows 3 → 4.
        out.clear();
        s.count(2, 3, -1);
        s.count(2, 4, 1);
        s.finish(|r| out.push(r));
        out
    };
    let first = run(true, 1);
    assert_eq!(first.len(), 3, "{first:?}"); // s both ways and c(1,2)
    assert!(run(true, 2).is_empty());
    let second = run(false, 2);
    assert_eq!(second.len(), 2, "{second:?}"); // s both ways, old to new
    assert!(second.iter().all(|r| matches!(r, PairRecord::Similar { old, new, .. } if old != new && *old > 0)));
    assert!(run(false, 1).is_empty());
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
    // s(1,2) = q(5)·10^4 / sqrt(12·4) = 5774 both ways; c(1,3) = 1 < C.
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|r| matches!(r, PairRecord::Similar { old: 0, new: 5774, .. })), "{out:?}");

    // n(2) 4 → 5 (q(n) stays 4: a retraction and assertion of 4) and c(1,2) 5 → 4 (q
    // stays 4): no record, no pair visited.
    out.clear();
    let visited = s.rescored_pairs;
    s.count(2, 4, -1);
    s.count(2, 4, 1);
    both(&mut s, 1, 2, -1);
    s.finish(|r| out.push(r));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.rescored_pairs, visited, "no pair visited for an unchanged q(n)");

    // Track 1 gains 100 partners below C, then n(1) 12 → 13 (q stays 12): nothing.
    for partner in 100..200 {
        both(&mut s, 1, partner, 1);
    }
    s.finish(|r| out.push(r));
    s.count(1, 12, -1);
    s.count(1, 12, 1);
    s.finish(|r| out.push(r));
    assert!(out.is_empty() && s.rescored_pairs == visited, "{out:?}");

    // n(2) 5 → 6: q(n(2)) 4 → 6, s(1,2) 5774 → 4·10^4 / sqrt(12·6) = 4714.
    s.count(2, 4, -1);
    s.count(2, 6, 1);
    s.finish(|r| out.push(r));
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|r| matches!(r, PairRecord::Similar { old: 5774, new: 4714, .. })), "{out:?}");
    assert!(s.rescored_pairs > visited);
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
            let (probe, out) = similarities(pairs, counts, Scoring { min_co: 1, precision: 4, count_bits: 0 }, true).probe();
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
