//! The taste model is measured, not just described: on generated data, item-item
//! co-listening must predict users' held-out tracks clearly better than popularity, and the
//! demographic, session and day/night structure must be visible in the events.

use std::collections::{HashMap, HashSet};

use encore_generator::catalog::{Catalog, CatalogSizes};
use encore_generator::stream::{EventKind, EventStream, GeneratedEvent};
use encore_generator::taste::GENRES;

fn is_listen(event: &GeneratedEvent) -> bool {
    match event.kind {
        EventKind::Like => true,
        EventKind::Streaming => event.ms_played.is_none_or(|ms| ms >= 30_000),
        EventKind::Skip => false,
    }
}

/// Top `k` of `scores` by score descending, ties by smaller id.
fn top_k(scores: HashMap<u64, f64>, k: usize) -> Vec<u64> {
    let mut ranked: Vec<(u64, f64)> = scores.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(k).map(|(track, _)| track).collect()
}

#[test]
fn co_listening_predicts_held_out_tracks_much_better_than_popularity() {
    const HISTORY_CAP: usize = 50;
    const NEIGHBOURS: usize = 20;
    const TOP: usize = 10;
    let sizes = CatalogSizes::new(20_000, 2_000, None, 20_000).expect("sizes");
    let catalog = Catalog::generate(2024, sizes);
    let mut stream = EventStream::new(&catalog, 0.0);

    // Each user's distinct listened tracks in order of first listen.
    let mut listened: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    for _ in 0..600_000 {
        let event = stream.next_event();
        if is_listen(&event) && seen.insert((event.user_id, event.track_id)) {
            listened.entry(event.user_id).or_default().push(event.track_id);
        }
    }

    // Hold out the last fifth (at least two) of the tracks of users with ten or more.
    let mut train: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut held_out: HashMap<u64, HashSet<u64>> = HashMap::new();
    for (&user, tracks) in &listened {
        let split = if tracks.len() >= 10 { tracks.len() - (tracks.len() / 5).max(2) } else { tracks.len() };
        let history = &tracks[..split];
        train.insert(user, history[history.len().saturating_sub(HISTORY_CAP)..].to_vec());
        if split < tracks.len() {
            held_out.insert(user, tracks[split..].iter().copied().collect());
        }
    }
    assert!(held_out.len() > 5_000, "{} users with a holdout", held_out.len());

    // Item-item cosine over the training histories (SPEC §2, min co-count 2, 20 neighbours).
    let mut n: HashMap<u64, u64> = HashMap::new();
    let mut co: HashMap<(u64, u64), u64> = HashMap::new();
    for history in train.values() {
        for &i in history {
            *n.entry(i).or_default() += 1;
            for &j in history {
                if i < j {
                    *co.entry((i, j)).or_default() += 1;
                }
            }
        }
    }
    let mut neighbours: HashMap<u64, Vec<(u64, f64)>> = HashMap::new();
    for (&(i, j), &c) in &co {
        if c >= 2 {
            let s = c as f64 / ((n[&i] * n[&j]) as f64).sqrt();
            neighbours.entry(i).or_default().push((j, s));
            neighbours.entry(j).or_default().push((i, s));
        }
    }
    for list in neighbours.values_mut() {
        list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        list.truncate(NEIGHBOURS);
    }
    let mut by_popularity: Vec<(u64, u64)> = n.iter().map(|(&t, &c)| (t, c)).collect();
    by_popularity.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    let (mut co_hits, mut pop_hits, mut co_found, mut pop_found, mut relevant) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for (user, hidden) in &held_out {
        let history = &train[user];
        let known: HashSet<u64> = history.iter().copied().collect();
        let mut scores: HashMap<u64, f64> = HashMap::new();
        for i in history {
            for &(j, s) in neighbours.get(i).map_or(&[][..], Vec::as_slice) {
                if !known.contains(&j) {
                    *scores.entry(j).or_default() += s;
                }
            }
        }
        let co_top = top_k(scores, TOP);
        let pop_top: Vec<u64> = by_popularity.iter().map(|&(t, _)| t).filter(|t| !known.contains(t)).take(TOP).collect();
        let co_hit = co_top.iter().filter(|t| hidden.contains(t)).count();
        let pop_hit = pop_top.iter().filter(|t| hidden.contains(t)).count();
        co_hits += usize::from(co_hit > 0);
        pop_hits += usize::from(pop_hit > 0);
        co_found += co_hit;
        pop_found += pop_hit;
        relevant += hidden.len().min(TOP);
    }
    let users = held_out.len() as f64;
    let (co_rate, pop_rate) = (co_hits as f64 / users, pop_hits as f64 / users);
    let (co_recall, pop_recall) = (co_found as f64 / relevant as f64, pop_found as f64 / relevant as f64);
    let lift = co_rate / pop_rate.max(1e-9);
    println!(
        "taste model, {} held-out users: hit-rate@10 co-listening {co_rate:.4} vs popularity {pop_rate:.4} \
         (lift {lift:.2}x); recall@10 {co_recall:.4} vs {pop_recall:.4} (lift {:.2}x)",
        held_out.len(),
        co_recall / pop_recall.max(1e-9)
    );
    assert!(pop_rate > 0.0, "popularity finds something (the baseline is not degenerate)");
    assert!(lift >= 1.5, "co-listening lift {lift:.2} < 1.5");
    assert!(co_recall >= 1.5 * pop_recall, "recall {co_recall:.4} vs {pop_recall:.4}");
}

#[test]
fn demographics_sessions_repeats_and_day_night_rhythm_show_in_the_events() {
    let sizes = CatalogSizes::new(10_000, 1_000, None, 10_000).expect("sizes");
    let catalog = Catalog::generate(77, sizes);
    let mut stream = EventStream::new(&catalog, 0.0);
    let classical = GENRES.iter().position(|g| *g == "classical").expect("genre") as u8;
    let (mut teen, mut teen_classical, mut senior, mut senior_classical) = (0u32, 0u32, 0u32, 0u32);
    let mut by_local_hour = [0u32; 24];
    let mut last: HashMap<u64, (i64, u64, u64)> = HashMap::new(); // user → (time, track, artist)
    let (mut follow_ups, mut same_artist, mut repeats) = (0u32, 0u32, 0u32);
    let mut recent: HashMap<u64, Vec<u64>> = HashMap::new();
    let total = 400_000;
    for _ in 0..total {
        let event = stream.next_event();
        let user = &catalog.users[(event.user_id - 1) as usize];
        let track = &catalog.tracks[(event.track_id - 1) as usize];
        if user.age <= 17 {
            teen += 1;
            teen_classical += u32::from(track.genre == classical);
        } else if user.age >= 65 {
            senior += 1;
            senior_classical += u32::from(track.genre == classical);
        }
        let local = event.time_ms + i64::from(user.country.utc_offset_minutes) * 60_000;
        by_local_hour[(local.rem_euclid(86_400_000) / 3_600_000) as usize] += 1;
        if let Some((time, _, artist)) = last.insert(event.user_id, (event.time_ms, event.track_id, track.artist_id)) {
            // Within a session (next play less than 10 minutes after the previous ended).
            if event.time_ms - time < 10 * 60_000 {
                follow_ups += 1;
                same_artist += u32::from(artist == track.artist_id);
            }
        }
        let history = recent.entry(event.user_id).or_default();
        repeats += u32::from(history.contains(&event.track_id));
        history.push(event.track_id);
        if history.len() > 8 {
            history.remove(0);
        }
    }
    let teen_share = f64::from(teen_classical) / f64::from(teen);
    let senior_share = f64::from(senior_classical) / f64::from(senior);
    let continuity = f64::from(same_artist) / f64::from(follow_ups);
    let repeat_share = f64::from(repeats) / f64::from(total);
    let night: u32 = by_local_hour[2..6].iter().sum();
    let evening: u32 = by_local_hour[18..22].iter().sum();
    println!(
        "classical share teens {teen_share:.3} vs 65+ {senior_share:.3}; same artist within a session {continuity:.2}; \
         repeats {repeat_share:.2}; plays 02–06h {night} vs 18–22h {evening}"
    );
    assert!(senior_share > 3.0 * teen_share, "age shapes genres");
    assert!(continuity > 0.35, "sessions keep to an artist");
    assert!((0.08..0.4).contains(&repeat_share), "recent tracks come back");
    assert!(f64::from(night) < 0.3 * f64::from(evening), "people sleep at night");
}
