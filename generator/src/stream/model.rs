//! The per-seed taste model: who likes which artists, built once before streaming.
//!
//! * **Demographic genres**: each listener's genre mix comes from their age band × gender
//!   ([`crate::taste::genre_preferences`]).
//! * **Taste clusters**: groups of listeners sharing a pool of artists from one main and one
//!   secondary genre, drawn with fame^0.5 weights so pools reach into the long tail. A listener
//!   joins a cluster of a genre their demographics favour. This is the collaborative
//!   structure: listeners of one cluster co-listen the same not-so-popular artists, which
//!   item-item co-listening can find and popularity cannot.
//! * **Favourite artists**: six from the listener's cluster pool, two famous ones of a
//!   favoured genre.
//! * **Popularity**: an artist's tracks are kept sorted by popularity so that picking a
//!   skewed rank gives Zipf-like choice within an artist.

use crate::catalog::Catalog;
use crate::sample::{below, exponential, rng_for, skewed_rank, unit, Cdf, Purpose};
use crate::taste::{demographic_group, genre_preferences, COUNTRIES, DEMOGRAPHIC_GROUPS, GENRES, GENRE_SHARE};

/// Favourite artists per listener.
pub(crate) const FAVOURITES: usize = 8;
/// Artists in a taste cluster's pool.
const POOL_SIZE: usize = 24;
/// Recently played tracks a listener remembers (for repeats).
pub(crate) const RECENT: usize = 8;
/// No current artist (start of a session).
pub(crate) const NO_ARTIST: u32 = u32::MAX;

/// A listener: fixed taste plus the state of their current session.
#[derive(Clone, Debug)]
pub(crate) struct Listener {
    /// Demographic group (age band × gender): selects the genre mix.
    pub(crate) group: u8,
    /// Index into [`COUNTRIES`].
    pub(crate) country: u8,
    /// UTC offset of the listener's time zone, minutes.
    pub(crate) utc_offset_minutes: i16,
    /// Index of the listener's taste cluster.
    pub(crate) cluster: u32,
    /// Favourite artists (indices).
    pub(crate) favourites: [u32; FAVOURITES],
    /// Mean time between sessions, ms: heavy listeners come back sooner.
    pub(crate) session_gap_ms: f32,
    /// Plays left in the current session.
    pub(crate) session_left: u16,
    /// Artist of the previous play in this session, or [`NO_ARTIST`].
    pub(crate) artist: u32,
    /// Ring of recently played track indices.
    pub(crate) recent: [u32; RECENT],
    /// Valid entries in `recent`.
    pub(crate) recent_len: u8,
    /// Next slot of `recent` to overwrite.
    pub(crate) recent_next: u8,
}

/// Artists of one genre with two ways to draw them.
#[derive(Clone, Debug, Default)]
pub(crate) struct GenreArtists {
    pub(crate) artists: Vec<u32>,
    /// Proportional to fame: what a listener exploring the genre hears of.
    pub(crate) by_fame: Cdf,
    /// Proportional to fame^0.5: how taste clusters pick their artists.
    pub(crate) by_root_fame: Cdf,
}

/// Everything the listening simulation needs from the catalog, in flat arrays.
#[derive(Clone, Debug)]
pub(crate) struct Model {
    /// Per track: (artist index, duration ms).
    pub(crate) tracks: Vec<(u32, u32)>,
    /// Track indices of artist `a`: `artist_tracks[artist_offsets[a]..artist_offsets[a + 1]]`,
    /// most popular first.
    pub(crate) artist_tracks: Vec<u32>,
    pub(crate) artist_offsets: Vec<u32>,
    /// Artists with at least one track, per genre; a genre without any falls back to all.
    pub(crate) genre_artists: Vec<GenreArtists>,
    /// Genre mix per demographic group.
    pub(crate) group_genres: Vec<Cdf>,
    /// Artist pools of the taste clusters.
    pub(crate) cluster_pools: Vec<Vec<u32>>,
}

impl Model {
    /// Builds the model and the listeners (in user order) for `catalog`.
    pub(crate) fn new(catalog: &Catalog) -> (Model, Vec<Listener>) {
        let mut rng = rng_for(catalog.seed, Purpose::Taste);
        let artist_count = catalog.artists.len();

        let tracks: Vec<(u32, u32)> = catalog.tracks.iter().map(|t| ((t.artist_id - 1) as u32, t.duration_ms)).collect();
        let mut by_artist: Vec<Vec<u32>> = vec![Vec::new(); artist_count];
        for (index, track) in catalog.tracks.iter().enumerate() {
            by_artist[(track.artist_id - 1) as usize].push(index as u32);
        }
        let mut artist_tracks = Vec::with_capacity(tracks.len());
        let mut artist_offsets = Vec::with_capacity(artist_count + 1);
        artist_offsets.push(0);
        for list in &mut by_artist {
            // Most popular first; ties by id so the order is total.
            list.sort_by_key(|&t| (std::cmp::Reverse(catalog.tracks[t as usize].popularity), t));
            artist_tracks.extend_from_slice(list);
            artist_offsets.push(artist_tracks.len() as u32);
        }

        let playable: Vec<u32> = (0..artist_count as u32).filter(|&a| !by_artist[a as usize].is_empty()).collect();
        let genre_artists_of = |members: Vec<u32>| {
            let by_fame = Cdf::new(members.iter().map(|&a| catalog.artists[a as usize].fame));
            let by_root_fame = Cdf::new(members.iter().map(|&a| catalog.artists[a as usize].fame.sqrt()));
            GenreArtists { artists: members, by_fame, by_root_fame }
        };
        let genre_artists: Vec<GenreArtists> = (0..GENRES.len())
            .map(|g| {
                let members: Vec<u32> = playable.iter().copied().filter(|&a| usize::from(catalog.artists[a as usize].genre) == g).collect();
                genre_artists_of(if members.is_empty() { playable.clone() } else { members })
            })
            .collect();
        let group_genres: Vec<Cdf> = (0..DEMOGRAPHIC_GROUPS).map(|g| Cdf::new(genre_preferences(g))).collect();

        // Clusters: about one per 400 listeners, at least one per genre (the first 20 take the
        // genres in order), the rest with main genres in proportion to the catalog.
        let cluster_count = (catalog.users.len() / 400).clamp(GENRES.len(), 1_000);
        let genre_mix = Cdf::new(GENRE_SHARE);
        let mut clusters_by_genre: Vec<Vec<u32>> = vec![Vec::new(); GENRES.len()];
        let mut cluster_pools = Vec::with_capacity(cluster_count);
        for cluster in 0..cluster_count {
            let main = if cluster < GENRES.len() { cluster } else { genre_mix.sample(&mut rng) };
            let secondary = genre_mix.sample(&mut rng);
            let mut pool = Vec::with_capacity(POOL_SIZE);
            while pool.len() < POOL_SIZE.min(playable.len()) {
                let genre = &genre_artists[if unit(&mut rng) < 0.7 { main } else { secondary }];
                let artist = genre.artists[genre.by_root_fame.sample(&mut rng)];
                if !pool.contains(&artist) {
                    pool.push(artist);
                } else if pool.len() >= genre.artists.len() {
                    // A small genre is exhausted: widen to any playable artist.
                    let any = playable[below(&mut rng, playable.len())];
                    if !pool.contains(&any) {
                        pool.push(any);
                    }
                }
            }
            clusters_by_genre[main].push(cluster as u32);
            cluster_pools.push(pool);
        }

        let model = Model { tracks, artist_tracks, artist_offsets, genre_artists, group_genres, cluster_pools };
        let listeners = catalog
            .users
            .iter()
            .map(|user| {
                let group = demographic_group(user.age, user.gender);
                let country = COUNTRIES.iter().position(|c| std::ptr::eq(c, user.country)).unwrap_or(0);
                let genre = model.group_genres[group].sample(&mut rng);
                let candidates = &clusters_by_genre[genre];
                let cluster = candidates[below(&mut rng, candidates.len())];
                let pool = &model.cluster_pools[cluster as usize];
                let mut favourites = [0u32; FAVOURITES];
                for (slot, favourite) in favourites.iter_mut().enumerate() {
                    *favourite = if slot < 6 {
                        pool[skewed_rank(&mut rng, pool.len(), 1.3)]
                    } else {
                        let genre = &model.genre_artists[model.group_genres[group].sample(&mut rng)];
                        genre.artists[genre.by_fame.sample(&mut rng)]
                    };
                }
                // Intensity 0.25–5: a long tail of heavy listeners.
                let intensity = (0.25 + exponential(&mut rng, 1.0)).min(5.0);
                Listener {
                    group: group as u8,
                    country: country as u8,
                    utc_offset_minutes: user.country.utc_offset_minutes as i16,
                    cluster,
                    favourites,
                    session_gap_ms: (6.0 * 3_600_000.0 / intensity) as f32,
                    session_left: 0,
                    artist: NO_ARTIST,
                    recent: [0; RECENT],
                    recent_len: 0,
                    recent_next: 0,
                }
            })
            .collect();
        (model, listeners)
    }

    /// Tracks of artist `artist`, most popular first (never empty for a playable artist).
    #[inline]
    pub(crate) fn tracks_of(&self, artist: u32) -> &[u32] {
        let a = artist as usize;
        &self.artist_tracks[self.artist_offsets[a] as usize..self.artist_offsets[a + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogSizes;

    #[test]
    fn listeners_favour_playable_artists_of_their_cluster() {
        let catalog = Catalog::generate(5, CatalogSizes::new(3_000, 400, None, 4_000).expect("sizes"));
        let (model, listeners) = Model::new(&catalog);
        assert_eq!(listeners.len(), 3_000);
        assert_eq!(model.cluster_pools.len(), GENRES.len());
        for listener in &listeners {
            let pool = &model.cluster_pools[listener.cluster as usize];
            assert_eq!(pool.len(), POOL_SIZE);
            assert!(listener.favourites[..6].iter().all(|a| pool.contains(a)));
            assert!(listener.favourites.iter().all(|&a| !model.tracks_of(a).is_empty()));
        }
        // Tracks of an artist are sorted by popularity.
        for artist in 0..400 {
            let pops: Vec<u8> = model.tracks_of(artist).iter().map(|&t| catalog.tracks[t as usize].popularity).collect();
            assert!(pops.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn tiny_catalogs_still_build() {
        let catalog = Catalog::generate(9, CatalogSizes::new(3, 2, Some(2), 2).expect("sizes"));
        let (model, listeners) = Model::new(&catalog);
        assert_eq!(listeners.len(), 3);
        assert!(model.cluster_pools.iter().all(|p| p.len() == 2));
    }
}
