//! Recommend's state against models: refreshes, registrations, the budget, restores.

use std::collections::BTreeMap;

use super::*;

/// Applies one epoch to `r` (as the operator does) and returns the emitted row changes,
/// retractions first, and the users refreshed.
fn epoch(
    r: &mut Recommender,
    at: Epoch,
    lists: &[(u64, &[(u64, i64)])],
    members: &[(u64, u64, isize)],
    listened: &[u64],
    budget: usize,
) -> (Vec<(u64, RankedList, isize)>, Refreshed) {
    for &(track, list) in lists {
        r.neighbors_changed(track, &list.to_vec());
    }
    for &(user, track, diff) in members {
        r.membership_changed(user, track, diff);
    }
    for &user in listened {
        r.listened(user, at);
    }
    let mut out = Vec::new();
    let refreshed = r.refresh(at, 2, budget, |user, list, diff| out.push((user, list.clone(), diff)));
    out.sort_by_key(|(user, list, diff)| (*diff, *user, list.clone()));
    (out, refreshed)
}

#[test]
fn a_listen_refreshes_its_user_from_its_history_and_the_lists() {
    let mut r = Recommender::default();
    // N(1) = [6: 20, 5: 10]; user 7 takes track 1 and listens: recommended 6 then 5.
    let out = epoch(&mut r, 1, &[(1, &[(6, 20), (5, 10)])], &[(7, 1, 1)], &[7], 0).0;
    assert_eq!(out, vec![(7, vec![(6, 20), (5, 10)], 1)]);
    // N(2) = [5: 15] and user 7 takes track 2: 5 sums to 25. One row: old out, new in.
    let out = epoch(&mut r, 2, &[(2, &[(5, 15)])], &[(7, 2, 1)], &[7], 0).0;
    assert_eq!(out, vec![(7, vec![(6, 20), (5, 10)], -1), (7, vec![(5, 25), (6, 20)], 1)]);
    // Track 5 enters H(7): never recommended.
    let out = epoch(&mut r, 3, &[], &[(7, 5, 1)], &[7], 0).0;
    assert_eq!(out, vec![(7, vec![(5, 25), (6, 20)], -1), (7, vec![(6, 20)], 1)]);
    // A listen that changes nothing writes nothing.
    assert!(epoch(&mut r, 4, &[], &[], &[7], 0).0.is_empty());
}

#[test]
fn a_changed_list_makes_its_watchers_stale_and_the_background_refreshes_them_oldest_first() {
    let mut r = Recommender::default();
    epoch(&mut r, 1, &[(1, &[(9, 10)])], &[(7, 1, 1)], &[7], 0);
    epoch(&mut r, 2, &[], &[(8, 1, 1)], &[8], 0);
    epoch(&mut r, 3, &[], &[(6, 2, 1)], &[6], 0);
    assert_eq!(r.stale.len(), 0);
    // N(1) changes: users 7 and 8 (not 6) are stale; with no budget they keep their lists.
    assert!(epoch(&mut r, 4, &[(1, &[(9, 12)])], &[], &[], 0).0.is_empty());
    assert_eq!(r.stale.iter().map(|&(e, u)| (e, r.users[u as usize].id)).collect::<Vec<_>>(), vec![(1, 7), (2, 8)]);
    // A budget of one refreshes 7 (refreshed at epoch 1), then 8.
    assert_eq!(epoch(&mut r, 5, &[], &[], &[], 1).0, vec![(7, vec![(9, 10)], -1), (7, vec![(9, 12)], 1)]);
    assert_eq!(epoch(&mut r, 6, &[], &[], &[], 1).0, vec![(8, vec![(9, 10)], -1), (8, vec![(9, 12)], 1)]);
    assert!(r.stale.is_empty());
    // Another change reaches only the users refreshed since: all three hold a stale mark once.
    epoch(&mut r, 7, &[(1, &[]), (2, &[(3, 1)])], &[], &[], 0);
    assert_eq!(r.stale.len(), 3);
    // A listen refreshes its user whatever the budget; an emptied list deletes the row.
    assert_eq!(epoch(&mut r, 8, &[], &[], &[8], 0).0, vec![(8, vec![(9, 12)], -1)]);
    assert_eq!(r.stale.len(), 2);
}

#[test]
fn a_restore_takes_the_stored_lists_and_makes_everyone_stale() {
    let mut r = Recommender::default();
    epoch(&mut r, 1, &[(1, &[(9, 10), (8, 5)])], &[(7, 1, 1), (6, 1, 1)], &[], 0);
    // The stored rows: 7's is current, 6's is an older one, 5 has a row but no history.
    r.restore(vec![(7, vec![(9, 10), (8, 5)]), (6, vec![(8, 5)]), (5, vec![(4, 1)])]);
    assert_eq!(r.stale.len(), 3);
    let out = epoch(&mut r, 2, &[], &[], &[], usize::MAX).0;
    assert_eq!(out, vec![(5, vec![(4, 1)], -1), (6, vec![(8, 5)], -1), (6, vec![(9, 10), (8, 5)], 1)]);
}

/// SPEC §2 step 6's `R(u)` at `N = 2` for `history` over `lists`.
fn definition(history: &[u64], lists: &BTreeMap<u64, RankedList>) -> RankedList {
    let mut scores: BTreeMap<u64, i64> = BTreeMap::new();
    for i in history {
        for &(j, s) in lists.get(i).map_or(&[][..], |l| &l[..]) {
            if !history.contains(&j) {
                *scores.entry(j).or_default() += s;
            }
        }
    }
    let mut ranked: RankedList = scores.into_iter().collect();
    ranked.sort_by_key(|&(j, s)| (Reverse(s), j));
    ranked.truncate(2);
    ranked
}

/// Over random epochs of list and history changes: every user that listened holds the
/// definition over the current lists; with an unlimited budget every user does; with a
/// budget of `M`, at most `M` are refreshed in the background per epoch and a stale user
/// waits at most `⌈users / M⌉` epochs (only users refreshed before it can go first, each
/// once).
#[test]
fn refreshed_lists_equal_the_definition() {
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};
    const USERS: u64 = 12;
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let m = if seed % 2 == 0 { usize::MAX } else { 2 };
        let mut r = Recommender::default();
        let mut lists: BTreeMap<u64, RankedList> = BTreeMap::new();
        let mut histories: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut stored: BTreeMap<u64, RankedList> = BTreeMap::new();
        let mut stale_since: BTreeMap<u64, Epoch> = BTreeMap::new();
        for at in 1..300 {
            let mut changed: BTreeMap<u64, RankedList> = BTreeMap::new();
            for _ in 0..rng.random_range(0..3) {
                let mut list: BTreeMap<u64, i64> = BTreeMap::new();
                for _ in 0..rng.random_range(0..4) {
                    list.insert(rng.random_range(0..30u64), rng.random_range(1..9i64));
                }
                let mut list: RankedList = list.into_iter().collect();
                list.sort_by_key(|&(j, s)| (Reverse(s), j));
                changed.insert(rng.random_range(0..20u64), list);
            }
            lists.extend(changed.clone());
            // A few users listen; each toggles one track of its history.
            let mut members = Vec::new();
            let mut listened = Vec::new();
            for _ in 0..rng.random_range(0..3) {
                let user = rng.random_range(0..USERS);
                if listened.contains(&user) {
                    continue;
                }
                listened.push(user);
                let track = rng.random_range(0..30u64);
                let history = histories.entry(user).or_default();
                let diff = match history.iter().position(|&t| t == track) {
                    Some(at) => {
                        history.remove(at);
                        -1
                    }
                    None => {
                        history.push(track);
                        1
                    }
                };
                members.push((user, track, diff));
            }
            let changed: Vec<(u64, &[(u64, i64)])> = changed.iter().map(|(t, l)| (*t, &l[..])).collect();
            let (out, refreshed) = epoch(&mut r, at, &changed, &members, &listened, m);
            assert!(refreshed.background as usize <= m && refreshed.active == listened.len() as u64, "seed {seed} epoch {at}");
            for (user, list, diff) in out {
                if diff < 0 {
                    assert_eq!(stored.remove(&user), Some(list), "seed {seed} epoch {at}: retracted a row not stored");
                } else {
                    assert_eq!(stored.insert(user, list), None, "seed {seed} epoch {at}: two rows for user {user}");
                }
            }
            let definition = |user: u64| definition(&histories[&user], &lists);
            for &user in &listened {
                assert_eq!(stored.get(&user).cloned().unwrap_or_default(), definition(user), "seed {seed} epoch {at}: user {user}");
            }
            if m == usize::MAX {
                assert!(r.stale.is_empty());
                for &user in histories.keys() {
                    assert_eq!(stored.get(&user).cloned().unwrap_or_default(), definition(user), "seed {seed} epoch {at}: user {user}");
                }
            }
            // How long each stale user has waited.
            let stale: BTreeSet<u64> = r.stale.iter().map(|&(_, u)| r.users[u as usize].id).collect();
            stale_since.retain(|user, _| stale.contains(user));
            for &user in &stale {
                let since = *stale_since.entry(user).or_insert(at);
                assert!(at - since < USERS.div_ceil(2), "seed {seed} epoch {at}: user {user} stale since epoch {since}");
            }
        }
        // An unlimited epoch brings every user to the definition.
        epoch(&mut r, 1000, &[], &[], &[], usize::MAX);
        assert!(r.stale.is_empty());
    }
}
