//! The fixed ingredients of the taste model: genres, demographic genre preferences,
//! countries with their time zones, and the day/night listening rhythm.
//!
//! The original system chose genres from a user's age band and gender; those preferences are
//! kept here as a table (`genre_preferences`) so that a generated listener's genres follow
//! their demographics. The collaborative part (taste clusters, favourite artists) is built per
//! seed in [`crate::stream`].

/// Genres of the catalog (a track's `genre` column).
pub const GENRES: [&str; 20] = [
    "pop",
    "rock",
    "hip-hop",
    "r&b",
    "electronic",
    "dance",
    "indie",
    "alternative",
    "metal",
    "punk",
    "jazz",
    "blues",
    "classical",
    "country",
    "folk",
    "latin",
    "reggae",
    "k-pop",
    "soul",
    "ambient",
];

/// Index of a genre in [`GENRES`].
pub type Genre = u8;

fn genre(name: &str) -> Genre {
    // The table below only names genres of GENRES; position() cannot fail for them.
    GENRES.iter().position(|g| *g == name).unwrap_or(0) as Genre
}

/// Share of the catalog's artists in each genre (same order as [`GENRES`]).
pub(crate) const GENRE_SHARE: [f64; 20] =
    [0.14, 0.12, 0.10, 0.06, 0.07, 0.04, 0.06, 0.05, 0.04, 0.02, 0.04, 0.02, 0.04, 0.04, 0.03, 0.05, 0.02, 0.02, 0.02, 0.02];

/// A user's gender as stored in `users.gender`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gender {
    /// Male.
    M,
    /// Female.
    F,
    /// Non-binary or not stated.
    X,
}

impl Gender {
    /// The one-letter code stored in Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::M => "M",
            Gender::F => "F",
            Gender::X => "X",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Age bands (inclusive) with their share of users.
pub(crate) const AGE_BANDS: [(u8, u8, f64); 6] =
    [(13, 17, 0.12), (18, 24, 0.25), (25, 34, 0.27), (35, 49, 0.20), (50, 64, 0.11), (65, 80, 0.05)];

/// Number of demographic groups (age band × gender).
pub(crate) const DEMOGRAPHIC_GROUPS: usize = AGE_BANDS.len() * 3;

/// The demographic group (age band × gender) of a user.
pub(crate) fn demographic_group(age: u8, gender: Gender) -> usize {
    let band = AGE_BANDS.iter().position(|&(lo, hi, _)| (lo..=hi).contains(&age)).unwrap_or(0);
    band * 3 + gender.index()
}

/// The genres an (age band, gender) group favours, with relative strength: the original
/// system's demographic rule, extended to 20 genres.
fn demographic_boosts(group: usize) -> &'static [(&'static str, f64)] {
    const TABLE: [&[(&str, f64)]; DEMOGRAPHIC_GROUPS] = [
        // 13–17: M, F, X
        &[("hip-hop", 4.0), ("electronic", 3.0), ("pop", 3.0), ("metal", 1.5), ("k-pop", 1.0)],
        &[("pop", 5.0), ("k-pop", 4.0), ("r&b", 2.0), ("dance", 2.0), ("indie", 1.0)],
        &[("pop", 3.0), ("k-pop", 3.0), ("indie", 3.0), ("alternative", 2.0), ("electronic", 2.0)],
        // 18–24
        &[("hip-hop", 4.0), ("electronic", 3.0), ("rock", 2.0), ("dance", 2.0), ("metal", 1.5)],
        &[("pop", 4.0), ("r&b", 3.0), ("dance", 2.5), ("indie", 2.0), ("latin", 1.5)],
        &[("indie", 3.0), ("alternative", 3.0), ("electronic", 2.5), ("pop", 2.0), ("punk", 1.5)],
        // 25–34
        &[("rock", 3.0), ("hip-hop", 2.5), ("electronic", 2.5), ("indie", 2.0), ("alternative", 2.0)],
        &[("pop", 3.0), ("indie", 2.5), ("r&b", 2.5), ("soul", 1.5), ("latin", 1.5)],
        &[("indie", 3.0), ("alternative", 2.5), ("electronic", 2.0), ("ambient", 1.5), ("folk", 1.5)],
        // 35–49
        &[("rock", 4.0), ("alternative", 2.0), ("metal", 2.0), ("jazz", 1.5), ("electronic", 1.5)],
        &[("pop", 3.0), ("soul", 2.0), ("rock", 2.0), ("folk", 2.0), ("country", 1.5)],
        &[("indie", 2.0), ("folk", 2.0), ("jazz", 2.0), ("ambient", 2.0), ("rock", 2.0)],
        // 50–64
        &[("rock", 4.0), ("blues", 3.0), ("jazz", 2.5), ("country", 2.0), ("classical", 1.5)],
        &[("soul", 3.0), ("country", 2.5), ("pop", 2.0), ("folk", 2.0), ("classical", 2.0)],
        &[("jazz", 3.0), ("folk", 2.5), ("classical", 2.0), ("blues", 2.0), ("soul", 1.5)],
        // 65–80
        &[("classical", 4.0), ("jazz", 3.5), ("blues", 3.0), ("country", 2.5), ("rock", 1.0)],
        &[("classical", 4.0), ("soul", 3.0), ("jazz", 2.5), ("country", 2.5), ("folk", 2.0)],
        &[("classical", 4.0), ("jazz", 3.0), ("folk", 2.5), ("blues", 2.0), ("ambient", 1.0)],
    ];
    TABLE[group % DEMOGRAPHIC_GROUPS]
}

/// Genre weights of a demographic group: three quarters from the group's favoured genres,
/// one quarter from the catalog's overall mix (so nobody listens to one genre only).
pub(crate) fn genre_preferences(group: usize) -> [f64; GENRES.len()] {
    let boosts = demographic_boosts(group);
    let boost_total: f64 = boosts.iter().map(|(_, w)| w).sum();
    let mut weights = GENRE_SHARE.map(|share| 0.25 * share);
    for (name, w) in boosts {
        weights[usize::from(genre(name))] += 0.75 * w / boost_total;
    }
    weights
}

/// A listener's country: ISO 3166 code, a representative UTC offset in minutes, and its share
/// of users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Country {
    /// ISO 3166-1 alpha-2 code stored in `users.country`.
    pub code: &'static str,
    /// UTC offset of its (most populous) time zone, in minutes.
    pub utc_offset_minutes: i32,
    /// Relative share of users, in permille.
    pub(crate) weight: u32,
}

const fn country(code: &'static str, utc_offset_minutes: i32, weight: u32) -> Country {
    Country { code, utc_offset_minutes, weight }
}

/// Countries users come from, spread over time zones so that the stream's day/night rhythms
/// overlap like a global service's.
pub const COUNTRIES: [Country; 24] = [
    country("US", -300, 180),
    country("US", -480, 80),
    country("BR", -180, 70),
    country("MX", -360, 50),
    country("CA", -300, 30),
    country("AR", -180, 25),
    country("CO", -300, 20),
    country("GB", 0, 60),
    country("DE", 60, 60),
    country("FR", 60, 50),
    country("ES", 60, 35),
    country("IT", 60, 30),
    country("NL", 60, 20),
    country("SE", 60, 15),
    country("PL", 60, 20),
    country("TR", 180, 25),
    country("NG", 60, 15),
    country("ZA", 120, 15),
    country("IN", 330, 90),
    country("ID", 420, 40),
    country("PH", 480, 30),
    country("JP", 540, 40),
    country("KR", 540, 25),
    country("AU", 600, 25),
];

/// Relative listening activity by local hour of day: low at night, a morning commute, an
/// evening peak.
pub(crate) const ACTIVITY_BY_HOUR: [f64; 24] = [
    0.20, 0.10, 0.05, 0.03, 0.03, 0.05, 0.20, 0.50, 0.70, 0.60, 0.55, 0.60, 0.75, 0.70, 0.60, 0.60, 0.70, 0.85, 0.95, 1.00, 1.00, 0.90,
    0.70, 0.40,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_genre_exists() {
        for group in 0..DEMOGRAPHIC_GROUPS {
            for (name, _) in demographic_boosts(group) {
                assert!(GENRES.contains(name), "{name}");
            }
        }
        assert!((GENRE_SHARE.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn demographics_shift_genres() {
        let teen_girl = genre_preferences(demographic_group(15, Gender::F));
        let senior_man = genre_preferences(demographic_group(70, Gender::M));
        let kpop = usize::from(genre("k-pop"));
        let classical = usize::from(genre("classical"));
        assert!(teen_girl[kpop] > 5.0 * senior_man[kpop]);
        assert!(senior_man[classical] > 5.0 * teen_girl[classical]);
        assert!(teen_girl.iter().all(|&w| w > 0.0));
    }

    #[test]
    fn groups_cover_all_ages() {
        assert_eq!(demographic_group(13, Gender::M), 0);
        assert_eq!(demographic_group(80, Gender::X), DEMOGRAPHIC_GROUPS - 1);
        assert_eq!(demographic_group(30, Gender::F), 7);
    }
}
