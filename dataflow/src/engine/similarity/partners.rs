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
        if run.len() <= self.entries.len() / 16 + 16 {
            // Few changes: find each by binary search, once, and change the counts in place,
            // unless several insert or remove an entry.
            positions.clear();
            let mut moves = 0;
            for &((_, partner), delta) in run {
                let (at, old) = match self.entries.binary_search_by_key(&partner, |e| e.partner) {
                    Ok(at) => (at, self.entries[at].count),
                    Err(at) => (at, 0),
                };
                let new = add(old, delta);
                moves += usize::from(old == 0 || new == 0);
                if moves > MOVES_IN_PLACE {
                    break;
                }
                changes.push((partner, old, new));
                positions.push(at as u32);
            }
            if moves <= MOVES_IN_PLACE {
                // Last first, so that an insert or removal leaves the earlier positions valid.
                for (&(partner, old, new), &at) in changes.iter().zip(positions.iter()).rev() {
                    let at = at as usize;
                    match (old, new) {
                        (0, _) => self.entries.insert(at, Entry { partner, count: new }),
                        (_, 0) => {
                            self.entries.remove(at);
                        }
                        _ => self.entries[at].count = new,
                    }
                }
                return;
            }
            changes.clear();
        }
        // Many changes, or several that insert or remove an entry: one pass over the entries
        // costs less than shifting the tail of a long vector for each of them.
        merge(&self.entries, run, scratch, |partner, old, new| changes.push((partner, old, new)));
        replace_tight(&mut self.entries, scratch);
    }
}

/// Entries a run may insert or remove in place (each shifts the vector's tail); beyond this
/// the run is merged in one pass. At 10 M events the shifts of inserting new partners into
/// popular tracks' vectors were ~6 % of the engine's CPU (`memmove`).
const MOVES_IN_PLACE: usize = 2;

/// `count + delta` for a complete epoch, which never takes a count below zero.
fn add(count: u32, delta: i32) -> u32 {
    let sum = count as i64 + delta as i64;
    debug_assert!(sum >= 0, "co-listening count {count} + {delta} below zero");
    // A co-listening count is at most the number of users, far below 2^32 on any machine.
    u32::try_from(sum.max(0)).unwrap_or(u32::MAX)
}

/// Merges `entries` and a run of changes (sorted by partner, consolidated) into `out`,
/// dropping zero counts; reports every changed count as `(partner, before, after)`.
fn merge(entries: &[Entry], run: &[Delta], out: &mut Vec<Entry>, mut changed: impl FnMut(u32, u32, u32)) {
    out.clear();
    out.reserve(entries.len() + run.len());
    let mut old = entries.iter().copied().peekable();
    for &((_, partner), delta) in run {
        while let Some(entry) = old.next_if(|e| e.partner < partner) {
            out.push(entry);
        }
        let before = old.next_if(|e| e.partner == partner).map_or(0, |e| e.count);
        let after = add(before, delta);
        changed(partner, before, after);
        if after > 0 {
            out.push(Entry { partner, count: after });
        }
    }
    out.extend(old);
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
