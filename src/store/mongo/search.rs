//! Keyword search without `$text`: each item keeps the words of its title, body and keywords in
//! an array field (`words`) under a multikey index `{words: 1, _id: -1}`; a search asks for
//! items holding `$all` the query's words, newest first (`_id` descending).
//!
//! Why not `$text`: a text index answers by relevance, so newest-first (the order the API
//! promises) means sorting every match; the compound multikey index walks one word's entries
//! already in `_id` order and stops after a page. Words are cut with the same tokenizer as
//! queries ([`words_of`]) and folded like the embedded store's index ([`fold`]), so both backends
//! find the same items.

use std::collections::BTreeSet;

use mongodb::bson::{doc, Document};
use mongodb::Collection;

use super::docs::{item_from, uuid};
use super::pages::find_page;
use crate::domain::search::{fold, words_of};
use crate::domain::{Item, Page, SearchQuery};
use crate::error::Result;

/// The name of the search index.
pub(super) const WORDS_INDEX: &str = "words_newest";

/// What an item is found by: the distinct folded words of its title, body and keywords.
pub(super) fn item_words(item: &Item) -> Vec<String> {
    let texts = [item.title.as_str(), item.body.as_str()]
        .into_iter()
        .chain(item.keywords.iter().map(String::as_str));
    let words: BTreeSet<String> = texts.flat_map(words_of).map(|w| fold(&w)).collect();
    words.into_iter().collect()
}

/// Items holding every word of `query`, newest first.
pub(super) async fn search_items(
    items: &Collection<Document>,
    query: &str,
    page: Page,
) -> Result<Vec<Item>> {
    let query = SearchQuery::parse(query)?;
    let words: BTreeSet<String> = query.words().iter().map(|w| fold(w)).collect();
    // Longest first: the index scan is bounded by one of the words, and a long word is likely
    // a rare one (fewer entries to walk than "the").
    let mut words: Vec<String> = words.into_iter().collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    // One word is an equality: the index's range for that word, already newest first. More
    // words walk the longest word's range and check the others per document.
    let mut filter = match words.as_slice() {
        [word] => doc! { "words": word },
        _ => doc! { "words": { "$all": words } },
    };
    // Newest first is `_id` descending: a cursor is a bound on it, which also holds when the
    // cursor's item was deleted since.
    if let Some(after) = page.after {
        filter.insert("_id", doc! { "$lt": uuid(after) });
    }
    let docs = find_page(
        items,
        filter,
        doc! { "_id": -1 },
        Some(doc! { "words": 0 }),
        page,
        "search items",
    )
    .await?;
    docs.iter()
        .map(|d| item_from(d).map_err(Into::into))
        .collect()
}
