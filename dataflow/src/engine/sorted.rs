//! Sorted vectors as the engine's operators keep them: consolidation of `(record, diff)`
//! batches and copying into per-key vectors without slack (Similarity's partner counts,
//! Recommend's membership changes).

/// Sorts by record and sums the diffs of equal records, dropping zeros.
pub(crate) fn consolidate<T: Ord + Copy, D: Copy + std::ops::AddAssign + PartialEq + Default>(changes: &mut Vec<(T, D)>) {
    changes.sort_unstable_by_key(|&(pair, _)| pair);
    let mut write = 0;
    for read in 0..changes.len() {
        if write > 0 && changes[write - 1].0 == changes[read].0 {
            let diff = changes[read].1;
            changes[write - 1].1 += diff;
        } else {
            changes[write] = changes[read];
            write += 1;
        }
    }
    changes.truncate(write);
    changes.retain(|&(_, diff)| diff != D::default());
}

/// Copies `from` into `to`, keeping `to`'s capacity near its length: the engine keeps one
/// such vector per user or per track, so slack would add up to a large share of its state.
/// (Copied rather than swapped with a scratch buffer, which would hand every owner the
/// largest capacity seen.)
pub(crate) fn replace_tight<T: Copy>(to: &mut Vec<T>, from: &[T]) {
    if from.len() > to.capacity() {
        to.reserve_exact(from.len() - to.len() + from.len() / 8);
    }
    to.clear();
    to.extend_from_slice(from);
    if to.capacity() > 2 * to.len() + 16 {
        to.shrink_to(to.len() + to.len() / 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consolidation_sums_and_drops_zeros() {
        let mut changes = vec![((2, 1), 3), ((1, 1), 4), ((2, 1), -3), ((1, 1), 1), ((1, 0), 2)];
        consolidate(&mut changes);
        assert_eq!(changes, vec![((1, 0), 2), ((1, 1), 5)]);
    }
}
