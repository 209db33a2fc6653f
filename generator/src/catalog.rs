//! The music catalog: users, artists, albums and tracks, as a pure function of
//! (seed, [`CatalogSizes`]).
//!
//! The stream needs the catalog's structure (who is which age, which artist makes which
//! tracks in which genre, how popular they are) to pick ids; Postgres needs it plus names.
//! Both come from here, so `encore-gen stream` never needs a database to agree with
//! `encore-gen catalog`. Structure and names are drawn from separate ChaCha streams of the
//! seed ([`Catalog::generate`], [`CatalogNames::generate`]), so the stream does not pay for
//! names it never prints.
//!
//! Ids are 1-based and dense: `user_id` ∈ 1..=users, and so on. Albums of one artist, and
//! tracks of one album, get consecutive ids, as in real catalogs.

mod names;

pub use names::CatalogNames;

use crate::sample::{below, between, rng_for, unit, Cdf, Purpose};
use crate::taste::{Country, Gender, Genre, AGE_BANDS, COUNTRIES, GENRES, GENRE_SHARE};

/// How many of each entity to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CatalogSizes {
    /// Number of users.
    pub users: u32,
    /// Number of artists.
    pub artists: u32,
    /// Number of albums.
    pub albums: u32,
    /// Number of tracks.
    pub tracks: u32,
}

/// Sizes that cannot make a catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Some size is zero.
    #[error("catalog sizes must be positive (users {users}, artists {artists}, albums {albums}, tracks {tracks})")]
    Zero {
        /// Users asked for.
        users: u32,
        /// Artists asked for.
        artists: u32,
        /// Albums asked for.
        albums: u32,
        /// Tracks asked for.
        tracks: u32,
    },
    /// Fewer tracks than albums: every album needs a track.
    #[error("--tracks ({tracks}) must be at least --albums ({albums}): every album has a track")]
    FewerTracksThanAlbums {
        /// Tracks asked for.
        tracks: u32,
        /// Albums asked for.
        albums: u32,
    },
}

impl CatalogSizes {
    /// Default album count for a track count: ten tracks an album.
    pub fn default_albums(tracks: u32) -> u32 {
        (tracks / 10).max(1)
    }

    /// Checked sizes; `albums` defaults to [`CatalogSizes::default_albums`].
    pub fn new(users: u32, artists: u32, albums: Option<u32>, tracks: u32) -> Result<Self, SizeError> {
        let albums = albums.unwrap_or_else(|| Self::default_albums(tracks));
        if users == 0 || artists == 0 || albums == 0 || tracks == 0 {
            return Err(SizeError::Zero { users, artists, albums, tracks });
        }
        if tracks < albums {
            return Err(SizeError::FewerTracksThanAlbums { tracks, albums });
        }
        Ok(CatalogSizes { users, artists, albums, tracks })
    }
}

impl Default for CatalogSizes {
    /// 100 000 users, 5 000 artists, 5 000 albums, 50 000 tracks.
    fn default() -> Self {
        CatalogSizes { users: 100_000, artists: 5_000, albums: 5_000, tracks: 50_000 }
    }
}

/// A row of `users` (without the name, see [`CatalogNames`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    /// `users.user_id`.
    pub user_id: u64,
    /// 13–80.
    pub age: u8,
    /// M, F or X.
    pub gender: Gender,
    /// Country (and so time zone).
    pub country: &'static Country,
}

/// A row of `artists` (without the name), plus the fame that drives its popularity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Artist {
    /// `artists.artist_id`.
    pub artist_id: u64,
    /// Main genre; most of the artist's tracks have it.
    pub genre: Genre,
    /// Heavy-tailed fame (≥ 1): how often listeners come across the artist.
    pub fame: f64,
}

/// A row of `albums` (without the title).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Album {
    /// `albums.album_id`.
    pub album_id: u64,
    /// The album's artist.
    pub artist_id: u64,
}

/// A row of `tracks` (without the title).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Track {
    /// `tracks.track_id`.
    pub track_id: u64,
    /// The album's artist.
    pub artist_id: u64,
    /// The album.
    pub album_id: u64,
    /// Index into [`GENRES`].
    pub genre: Genre,
    /// 0–100.
    pub popularity: u8,
    /// 90 000–420 000 (1.5–7 minutes).
    pub duration_ms: u32,
}

impl Track {
    /// The genre's name.
    pub fn genre_name(&self) -> &'static str {
        GENRES[usize::from(self.genre)]
    }
}

/// The catalog's structure for one seed and size.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// The seed it was generated from.
    pub seed: u64,
    /// Its sizes.
    pub sizes: CatalogSizes,
    /// `users`, ordered by id (index = id − 1).
    pub users: Vec<User>,
    /// `artists`, ordered by id.
    pub artists: Vec<Artist>,
    /// `albums`, ordered by id.
    pub albums: Vec<Album>,
    /// `tracks`, ordered by id.
    pub tracks: Vec<Track>,
}

/// Shortest and longest track.
pub const DURATION_MS: (u32, u32) = (90_000, 420_000);

impl Catalog {
    /// The catalog of `seed` with `sizes`: the same arguments always give the same catalog.
    pub fn generate(seed: u64, sizes: CatalogSizes) -> Catalog {
        let users = generate_users(seed, sizes.users);
        let (artists, albums, tracks) = generate_music(seed, sizes);
        Catalog { seed, sizes, users, artists, albums, tracks }
    }

    /// Whether `user_id` is a user of this catalog.
    pub fn has_user(&self, user_id: u64) -> bool {
        (1..=self.users.len() as u64).contains(&user_id)
    }

    /// Whether `track_id` is a track of this catalog.
    pub fn has_track(&self, track_id: u64) -> bool {
        (1..=self.tracks.len() as u64).contains(&track_id)
    }
}

fn generate_users(seed: u64, count: u32) -> Vec<User> {
    let mut rng = rng_for(seed, Purpose::Users);
    let bands = Cdf::new(AGE_BANDS.iter().map(|b| b.2));
    let countries = Cdf::new(COUNTRIES.iter().map(|c| f64::from(c.weight)));
    (1..=u64::from(count))
        .map(|user_id| {
            let (lo, hi, _) = AGE_BANDS[bands.sample(&mut rng)];
            let age = between(&mut rng, u64::from(lo), u64::from(hi)) as u8;
            let g = unit(&mut rng);
            let gender = if g < 0.48 {
                Gender::M
            } else if g < 0.96 {
                Gender::F
            } else {
                Gender::X
            };
            let country = &COUNTRIES[countries.sample(&mut rng)];
            User { user_id, age, gender, country }
        })
        .collect()
}

/// Splits `total` items over `weights.len()` owners: `minimum` each first (while items last),
/// the rest drawn in proportion to the weights. Returns each owner's count.
fn spread(rng: &mut rand::rngs::ChaCha8Rng, total: u32, weights: &[f64], minimum: u32) -> Vec<u32> {
    let mut counts = vec![0u32; weights.len()];
    let mut left = total;
    for count in counts.iter_mut() {
        let given = minimum.min(left);
        *count = given;
        left -= given;
    }
    let cdf = Cdf::new(weights.iter().copied());
    for _ in 0..left {
        counts[cdf.sample(rng)] += 1;
    }
    counts
}

fn generate_music(seed: u64, sizes: CatalogSizes) -> (Vec<Artist>, Vec<Album>, Vec<Track>) {
    let mut rng = rng_for(seed, Purpose::Music);
    let genres = Cdf::new(GENRE_SHARE);

    // Fame is Pareto-distributed (α = 1.1, capped): a few stars, a long tail.
    let artists: Vec<Artist> = (1..=u64::from(sizes.artists))
        .map(|artist_id| {
            let genre = genres.sample(&mut rng) as Genre;
            let fame = (1.0 - unit(&mut rng)).powf(-1.0 / 1.1).min(10_000.0);
            Artist { artist_id, genre, fame }
        })
        .collect();
    let max_fame_ln = artists.iter().map(|a| a.fame.ln()).fold(1.0, f64::max);

    // Famous artists release more albums; an album of a famous artist has more tracks.
    let artist_weights: Vec<f64> = artists.iter().map(|a| a.fame.sqrt()).collect();
    let albums_per_artist = spread(&mut rng, sizes.albums, &artist_weights, 1);
    let mut albums = Vec::with_capacity(sizes.albums as usize);
    for (artist, &count) in artists.iter().zip(&albums_per_artist) {
        for _ in 0..count {
            albums.push(Album { album_id: albums.len() as u64 + 1, artist_id: artist.artist_id });
        }
    }
    let album_weights: Vec<f64> = albums.iter().map(|a| artist_weights[(a.artist_id - 1) as usize] * (0.5 + unit(&mut rng))).collect();
    let tracks_per_album = spread(&mut rng, sizes.tracks, &album_weights, 1);

    let mut tracks = Vec::with_capacity(sizes.tracks as usize);
    for (album, &count) in albums.iter().zip(&tracks_per_album) {
        let artist = &artists[(album.artist_id - 1) as usize];
        let fame_level = artist.fame.ln() / max_fame_ln; // 0..=1
        for _ in 0..count {
            let genre = if unit(&mut rng) < 0.85 { artist.genre } else { below(&mut rng, GENRES.len()) as Genre };
            // Popularity: mostly the artist's fame, partly the track's own appeal.
            let appeal = unit(&mut rng);
            let popularity = (100.0 * (0.7 * fame_level + 0.3 * appeal * appeal)).round().clamp(0.0, 100.0) as u8;
            // Around 3.5 minutes, from 1.5 to 7 (mean of two uniforms: a triangle).
            let shape = (unit(&mut rng) + unit(&mut rng)) / 2.0;
            let duration_ms = DURATION_MS.0 + (shape * f64::from(DURATION_MS.1 - DURATION_MS.0)) as u32;
            tracks.push(Track {
                track_id: tracks.len() as u64 + 1,
                artist_id: artist.artist_id,
                album_id: album.album_id,
                genre,
                popularity,
                duration_ms,
            });
        }
    }
    (artists, albums, tracks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> CatalogSizes {
        CatalogSizes::new(2_000, 300, Some(700), 5_000).expect("valid sizes")
    }

    #[test]
    fn sizes_are_validated() {
        assert!(CatalogSizes::new(1, 1, None, 1).is_ok());
        assert!(matches!(CatalogSizes::new(0, 1, None, 1), Err(SizeError::Zero { .. })));
        assert!(matches!(CatalogSizes::new(1, 1, Some(10), 5), Err(SizeError::FewerTracksThanAlbums { .. })));
        assert_eq!(CatalogSizes::new(1, 1, None, 50_000).map(|s| s.albums), Ok(5_000));
    }

    #[test]
    fn counts_ids_and_ranges() {
        let catalog = Catalog::generate(42, small());
        assert_eq!(catalog.users.len(), 2_000);
        assert_eq!(catalog.artists.len(), 300);
        assert_eq!(catalog.albums.len(), 700);
        assert_eq!(catalog.tracks.len(), 5_000);
        for (i, u) in catalog.users.iter().enumerate() {
            assert_eq!(u.user_id, i as u64 + 1);
            assert!((13..=80).contains(&u.age));
        }
        for (i, a) in catalog.albums.iter().enumerate() {
            assert_eq!(a.album_id, i as u64 + 1);
            assert!((1..=300).contains(&a.artist_id));
        }
        for (i, t) in catalog.tracks.iter().enumerate() {
            assert_eq!(t.track_id, i as u64 + 1);
            assert!(t.popularity <= 100);
            assert!((DURATION_MS.0..=DURATION_MS.1).contains(&t.duration_ms));
            assert_eq!(catalog.albums[(t.album_id - 1) as usize].artist_id, t.artist_id);
        }
        // Every album has a track; every artist (300 ≤ 700 albums) has an album.
        let mut album_has_track = vec![false; 700];
        catalog.tracks.iter().for_each(|t| album_has_track[(t.album_id - 1) as usize] = true);
        assert!(album_has_track.iter().all(|&b| b));
        let mut artist_has_album = vec![false; 300];
        catalog.albums.iter().for_each(|a| artist_has_album[(a.artist_id - 1) as usize] = true);
        assert!(artist_has_album.iter().all(|&b| b));
    }

    #[test]
    fn deterministic_per_seed() {
        let a = Catalog::generate(7, small());
        let b = Catalog::generate(7, small());
        let c = Catalog::generate(8, small());
        assert_eq!(a.users, b.users);
        assert_eq!(a.tracks, b.tracks);
        assert_ne!(a.tracks, c.tracks);
    }

    #[test]
    fn popularity_and_demographics_are_spread() {
        let catalog = Catalog::generate(1, small());
        let popular = catalog.tracks.iter().filter(|t| t.popularity >= 50).count();
        assert!(popular > 0 && popular < catalog.tracks.len() / 2, "{popular}");
        let genders = [Gender::M, Gender::F, Gender::X].map(|g| catalog.users.iter().filter(|u| u.gender == g).count());
        assert!(genders.iter().all(|&n| n > 20), "{genders:?}");
        let distinct_genres: std::collections::HashSet<_> = catalog.tracks.iter().map(|t| t.genre).collect();
        assert_eq!(distinct_genres.len(), GENRES.len());
    }
}
