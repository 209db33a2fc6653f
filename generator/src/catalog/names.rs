//! Fake names and titles for the catalog (the `fake` crate on the seed's own ChaCha stream).

use fake::faker::lorem::en::{Word, Words};
use fake::faker::name::en::{FirstName, LastName, Name};
use fake::Fake;
use rand::rngs::ChaCha8Rng;

use super::Catalog;
use crate::sample::{below, rng_for, unit, Purpose};

/// Names of a [`Catalog`]'s users and artists and titles of its albums and tracks, each
/// indexed like the catalog's vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogNames {
    /// `users.name`.
    pub users: Vec<String>,
    /// `artists.name`.
    pub artists: Vec<String>,
    /// `albums.title`.
    pub albums: Vec<String>,
    /// `tracks.title`.
    pub tracks: Vec<String>,
}

impl CatalogNames {
    /// The names for `catalog`: a function of its seed and sizes.
    pub fn generate(catalog: &Catalog) -> CatalogNames {
        let mut rng = rng_for(catalog.seed, Purpose::Names);
        let users = (0..catalog.users.len()).map(|_| Name().fake_with_rng(&mut rng)).collect();
        let artists = (0..catalog.artists.len()).map(|_| artist_name(&mut rng)).collect();
        let albums = (0..catalog.albums.len()).map(|_| title(&mut rng, 1..4)).collect();
        let tracks = (0..catalog.tracks.len()).map(|_| title(&mut rng, 1..5)).collect();
        CatalogNames { users, artists, albums, tracks }
    }
}

/// A solo artist ("Ada Lovelace"), a band ("The Velvet Stones") or a one-word act ("Lumen").
fn artist_name(rng: &mut ChaCha8Rng) -> String {
    let kind = unit(rng);
    if kind < 0.5 {
        let first: String = FirstName().fake_with_rng(rng);
        let last: String = LastName().fake_with_rng(rng);
        format!("{first} {last}")
    } else if kind < 0.85 {
        let adjective = capitalised(&Word().fake_with_rng::<String, _>(rng));
        let noun = capitalised(&Word().fake_with_rng::<String, _>(rng));
        format!("The {adjective} {noun}s")
    } else {
        let word: String = Word().fake_with_rng(rng);
        let suffix = ["", "x", " DJ", " Collective", " Trio"][below(rng, 5)];
        format!("{}{suffix}", capitalised(&word))
    }
}

/// A title of `words` lorem words in title case.
fn title(rng: &mut ChaCha8Rng, words: std::ops::Range<usize>) -> String {
    let words: Vec<String> = Words(words).fake_with_rng(rng);
    words.iter().map(|w| capitalised(w)).collect::<Vec<_>>().join(" ")
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogSizes;

    #[test]
    fn names_are_deterministic_and_non_empty() {
        let sizes = CatalogSizes::new(50, 10, Some(20), 60).expect("valid sizes");
        let catalog = Catalog::generate(3, sizes);
        let a = CatalogNames::generate(&catalog);
        assert_eq!(a, CatalogNames::generate(&catalog));
        assert_ne!(a, CatalogNames::generate(&Catalog::generate(4, sizes)));
        assert_eq!(a.users.len(), 50);
        assert_eq!(a.tracks.len(), 60);
        assert!(a.users.iter().chain(&a.artists).chain(&a.albums).chain(&a.tracks).all(|n| !n.trim().is_empty()));
    }

    #[test]
    fn capitalises_unicode() {
        assert_eq!(capitalised("élan"), "Élan");
        assert_eq!(capitalised(""), "");
    }
}
