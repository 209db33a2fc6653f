//! The per-epoch stash of the engine's operators and the sink: data of epochs that cannot be
//! processed yet, each epoch with the capability (or capabilities) to emit at it, released
//! earliest first once the operator's frontier says nothing more can arrive for it.
//!
//! An operator decides when an epoch is complete, and that rule is where the copies differ:
//! most release an epoch once every input frontier has passed it (`!frontier.less_equal`),
//! History already at the frontier's own epoch (`!frontier.less_than`: it applies listens of
//! that epoch as they arrive), and Similarity applies the pair changes of one open epoch at
//! once besides (see its docs). So the rule is the caller's closure, written beside its reason.

use std::collections::BTreeMap;

use super::Epoch;

/// Staged data `D` per epoch, with a capability `C` held for each staged epoch.
#[derive(Debug)]
pub(crate) struct EpochStash<C, D> {
    epochs: BTreeMap<Epoch, (C, D)>,
}

impl<C, D> Default for EpochStash<C, D> {
    fn default() -> Self {
        EpochStash { epochs: BTreeMap::new() }
    }
}

impl<C, D: Default> EpochStash<C, D> {
    /// The data staged for `epoch`; if the epoch is new, `capability()` is held for it.
    pub(crate) fn stage(&mut self, epoch: Epoch, capability: impl FnOnce() -> C) -> &mut D {
        &mut self.epochs.entry(epoch).or_insert_with(|| (capability(), D::default())).1
    }
}

impl<C, D> EpochStash<C, D> {
    /// The earliest staged epoch.
    pub(crate) fn first_epoch(&self) -> Option<Epoch> {
        self.epochs.keys().next().copied()
    }

    /// Removes the earliest staged epoch, with its capability and data, if `complete` says
    /// nothing more can arrive for it; `None` otherwise (then no later epoch is complete
    /// either, epochs being totally ordered).
    pub(crate) fn pop_complete(&mut self, complete: impl FnOnce(&Epoch) -> bool) -> Option<(Epoch, C, D)> {
        let entry = self.epochs.first_entry()?;
        if !complete(entry.key()) {
            return None;
        }
        let (epoch, (capability, data)) = entry.remove_entry();
        Some((epoch, capability, data))
    }

    /// Every staged epoch, earliest first, emptying the stash.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (Epoch, C, D)> {
        std::mem::take(&mut self.epochs).into_iter().map(|(epoch, (capability, data))| (epoch, capability, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_complete_epochs_in_order_and_holds_one_capability_each() {
        let mut stash: EpochStash<&str, Vec<u32>> = EpochStash::default();
        stash.stage(5, || "five").push(1);
        stash.stage(3, || "three").push(2);
        stash.stage(5, || panic!("held already")).push(3);
        assert_eq!(stash.first_epoch(), Some(3));
        assert_eq!(stash.pop_complete(|&e| e < 3), None);
        assert_eq!(stash.pop_complete(|&e| e < 6), Some((3, "three", vec![2])));
        assert_eq!(stash.pop_complete(|&e| e < 5), None);
        assert_eq!(stash.drain().collect::<Vec<_>>(), vec![(5, "five", vec![1, 3])]);
        assert_eq!(stash.first_epoch(), None);
    }
}
