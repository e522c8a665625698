//! What keyword search finds an item by, for the backends that index words themselves (MongoDB,
//! PostgreSQL): the words of its title, body and keywords, cut by the one tokenizer of searches
//! ([`words_of`]) and folded as the embedded store's index folds them ([`fold`]), so every
//! backend finds the same items for the same query.

use std::collections::BTreeSet;

use crate::domain::search::{fold, words_of};
use crate::domain::{Item, SearchQuery};

/// The distinct folded words of an item's title, body and keywords, sorted.
pub(in crate::store) fn item_words(item: &Item) -> Vec<String> {
    let texts = [item.title.as_str(), item.body.as_str()]
        .into_iter()
        .chain(item.keywords.iter().map(String::as_str));
    let words: BTreeSet<String> = texts.flat_map(words_of).map(|w| fold(&w)).collect();
    words.into_iter().collect()
}

/// The distinct folded words of a search, longest first: an index walk bounded by one word is
/// cheapest with a long one, which is likely a rare one (fewer entries than "the").
pub(in crate::store) fn query_words(query: &SearchQuery) -> Vec<String> {
    let words: BTreeSet<String> = query.words().iter().map(|w| fold(w)).collect();
    let mut words: Vec<String> = words.into_iter().collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    words
}
