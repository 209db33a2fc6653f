//! One track's partners as a Similarity operator keeps them: `(partner, c)` sorted by
//! partner, 8 bytes an entry, and how an epoch's run of count changes is merged into them
//! (the module docs of [`super`] say why this layout).

use super::super::sorted::replace_tight;

/// A partner of a track: its interned index and `c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) partner: u32,
    pub(super) count: u32,
}

/// `((track, partner), Δc)` by interned index.
pub(super) type Delta = ((u32, u32), i32);

/// One local track's partners.
#[derive(Default)]
pub(super) struct Partners {
    /// Sorted by partner index; counts > 0.
    pub(super) entries: Vec<Entry>,
    /// The entries at the open epoch's start, kept once a full buffer was merged into them.
    pub(super) before: Option<Vec<Entry>>,
}

impl Partners {
    /// Merges a run of the open epoch's changes (sorted by partner, consolidated) into the
    /// entries, keeping the epoch-start entries first.
    pub(super) fn absorb(&mut self, run: &[Delta], scratch: &mut Vec<Entry>) {
        if self.before.is_none() {
            self.before = Some(self.entries.clone());
        }
        merge(&self.entries, run, scratch, |_, _, _| ());
        replace_tight(&mut self.entries, scratch);
    }

    /// Ends the open epoch with its last run of changes: pushes `(partner, c before,
    /// c after)` of every changed count, sorted by partner, into `changes`. `positions` is
    /// scratch.
    pub(super) fn close(&mut self, run: &[Delta], scratch: &mut Vec<Entry>, positions: &mut Vec<u32>, changes: &mut Vec<(u32, u32, u32)>) {
        changes.clear();
        if let Some(before) = self.before.take() {
            merge(&self.entries, run, scratch, |_, _, _| ());
            replace_tight(&mut self.entries, scratch);
            diff(&before, &self.entries, changes);
            return;
        }
        if run.len() <= self.entries.len() / FEW + 16 {
            // Few changes against many entries: find them all (in lockstep), then change the
            // entries in place, moving the entries between changes in bulk.
            search_all(&self.entries, run, positions);
            for (&((_, partner), delta), &at) in run.iter().zip(positions.iter()) {
                let old = match self.entries.get(at as usize) {
                    Some(entry) if entry.partner == partner => entry.count,
                    _ => 0,
                };
                changes.push((partner, old, add(old, delta)));
            }
            apply_in_place(&mut self.entries, changes, positions);
            return;
        }
        // Many changes: one pass over the entries costs less than a search for each.
        merge(&self.entries, run, scratch, |partner, old, new| changes.push((partner, old, new)));
        replace_tight(&mut self.entries, scratch);
    }
}

/// Applies `changes` (`(partner, c before, c after)`, sorted, consolidated) at their
/// `positions` in `entries` (where each is, or would be inserted): the counts in place, then
/// the removals by one forward pass and the inserts by one backward pass, each moving the
/// entries between two changes with one `copy_within`.
///
/// Inserting one by one shifted the vector's tail per insert (at 10 M events ~6 % of the
/// engine's CPU in `memmove`), and merging entry by entry into a copy cost more than the
/// bulk moves here: the merge's loop was ~9 % of the CPU at 10 M events.
fn apply_in_place(entries: &mut Vec<Entry>, changes: &[(u32, u32, u32)], positions: &[u32]) {
    let (mut inserts, mut removals) = (0, 0);
    for (&(_, old, new), &at) in changes.iter().zip(positions) {
        match (old, new) {
            (0, 0) => {}
            (0, _) => inserts += 1,
            (_, 0) => removals += 1,
            _ => entries[at as usize].count = new,
        }
    }
    if removals > 0 {
        // Forward: the entries after each removed one move left, a run between two at once.
        // `(write, read)`: where the next kept run goes, and where it starts.
        let mut kept: Option<(usize, usize)> = None;
        for (&(_, old, new), &at) in changes.iter().zip(positions) {
            if old > 0 && new == 0 {
                let at = at as usize;
                kept = Some(match kept {
                    None => (at, at + 1),
                    Some((write, read)) => {
                        entries.copy_within(read..at, write);
                        (write + at - read, at + 1)
                    }
                });
            }
        }
        if let Some((write, read)) = kept {
            let len = entries.len();
            entries.copy_within(read..len, write);
            entries.truncate(write + len - read);
        }
        if entries.capacity() > 2 * entries.len() + 16 {
            entries.shrink_to(entries.len() + entries.len() / 8);
        }
    }
    if inserts > 0 {
        // Backward: the entries after each insert move right by the inserts before them.
        let len = entries.len();
        if len + inserts > entries.capacity() {
            entries.reserve_exact(inserts + (len + inserts) / 8);
        }
        entries.resize(len + inserts, Entry { partner: 0, count: 0 });
        let (mut write, mut read_end) = (len + inserts, len);
        // Removals before the current change: positions are the vector's before them.
        let mut removed_before = removals;
        for (&(partner, old, new), &at) in changes.iter().zip(positions).rev() {
            match (old, new) {
                (0, 0) => {}
                (0, _) => {
                    let at = at as usize - removed_before;
                    let moved = read_end - at;
                    entries.copy_within(at..read_end, write - moved);
                    write -= moved + 1;
                    entries[write] = Entry { partner, count: new };
                    read_end = at;
                }
                (_, 0) => removed_before -= 1,
                _ => {}
            }
        }
        debug_assert_eq!(write, read_end);
    }
}

/// Sets `positions` to where each partner of `run` is, or would be inserted, in `entries`.
///
/// One binary search per change waited on a cache miss at most of its ~log2(n) probes: at
/// 10 M events, where a popular track has tens of thousands of partners, the searches were
/// ~12 % of the engine's CPU. Here the searches of a run advance in lockstep, one probe of
/// each per step, so the loads of one step do not depend on each other and the processor
/// overlaps their misses. (Every search of a vector halves the same sizes, as `std`'s does.)
fn search_all(entries: &[Entry], run: &[Delta], positions: &mut Vec<u32>) {
    positions.clear();
    positions.resize(run.len(), 0);
    if entries.is_empty() {
        return;
    }
    let mut size = entries.len();
    while size > 1 {
        let half = size / 2;
        for (base, &((_, partner), _)) in positions.iter_mut().zip(run) {
            let mid = *base as usize + half;
            *base = std::hint::select_unpredictable(entries[mid].partner <= partner, mid as u32, *base);
        }
        size -= half;
    }
    for (base, &((_, partner), _)) in positions.iter_mut().zip(run) {
        *base += u32::from(entries[*base as usize].partner < partner);
    }
}

/// A run of changes is searched for in the entries when it has at most one change per this
/// many entries (plus 16), and merged with them otherwise: a search costs ~log2(n) probes
/// where a merge costs one sequential step per entry.
const FEW: usize = 8;

/// `count + delta` for a complete epoch, which never takes a count below zero.
fn add(count: u32, delta: i32) -> u32 {
    let sum = count as i64 + delta as i64;
    debug_assert!(sum >= 0, "co-listening count {count} + {delta} below zero");
    // A co-listening count is at most the number of users, far below 2^32 on any machine.
    u32::try_from(sum.max(0)).unwrap_or(u32::MAX)
}

/// Merges `entries` and a run of changes (sorted by partner, consolidated) into `out`,
/// dropping zero counts; reports every changed count as `(partner, before, after)`.
///
/// Each change's place is found by galloping from the last one's, and the entries between
/// two changes are copied in one piece: an entry-by-entry merge of a popular track's vector
/// was ~9 % of the engine's CPU at 10 M events.
fn merge(entries: &[Entry], run: &[Delta], out: &mut Vec<Entry>, mut changed: impl FnMut(u32, u32, u32)) {
    out.clear();
    out.reserve(entries.len() + run.len());
    let mut at = 0;
    for &((_, partner), delta) in run {
        let next = at + gallop(&entries[at..], partner);
        out.extend_from_slice(&entries[at..next]);
        at = next;
        let before = match entries.get(at) {
            Some(entry) if entry.partner == partner => {
                at += 1;
                entry.count
            }
            _ => 0,
        };
        let after = add(before, delta);
        changed(partner, before, after);
        if after > 0 {
            out.push(Entry { partner, count: after });
        }
    }
    out.extend_from_slice(&entries[at..]);
}

/// How many of `entries` (sorted) come before `partner`, probing 1, 2, 4, … ahead, then
/// bisecting the last step: O(log d) probes for a place d entries ahead.
fn gallop(entries: &[Entry], partner: u32) -> usize {
    let mut bound = 1;
    while bound <= entries.len() && entries[bound - 1].partner < partner {
        bound *= 2;
    }
    let (lo, hi) = (bound / 2, bound.min(entries.len()));
    lo + entries[lo..hi].partition_point(|e| e.partner < partner)
}

/// `(partner, before, after)` for every partner whose count differs between two sorted lists.
fn diff(before: &[Entry], after: &[Entry], changes: &mut Vec<(u32, u32, u32)>) {
    let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
    loop {
        match (b.peek(), a.peek()) {
            (None, None) => break,
            (Some(x), Some(y)) if x.partner == y.partner => {
                if x.count != y.count {
                    changes.push((x.partner, x.count, y.count));
                }
                b.next();
                a.next();
            }
            (Some(x), y) if y.is_none_or(|y| x.partner < y.partner) => {
                changes.push((x.partner, x.count, 0));
                b.next();
            }
            (_, Some(y)) => {
                changes.push((y.partner, 0, y.count));
                a.next();
            }
            (Some(_), None) => unreachable!("handled above"),
        }
    }
}
