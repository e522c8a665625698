//! Keyword search without `$text`: each item keeps the words of its title, body and keywords in
//! an array field (`words`) under a multikey index `{words: 1, _id: -1}`; a search asks for
//! items holding `$all` the query's words, newest first (`_id` descending).
//!
//! Why not `$text`: a text index answers by relevance, so newest-first (the order the API
//! promises) means sorting every match; the compound multikey index walks one word's entries
//! already in `_id` order and stops after a page. Words are cut with the same tokenizer as
//! queries and folded like the embedded store's index ([`crate::store::words`]), so both
//! backends find the same items.

use mongodb::bson::{doc, Document};
use mongodb::Collection;

use super::docs::{item_from, uuid};
use super::pages::find_page;
use crate::domain::{Item, Page, SearchQuery};
use crate::error::Result;
use crate::store::words::query_words;

/// The name of the search index.
pub(super) const WORDS_INDEX: &str = "words_newest";

/// Items holding every word of `query`, newest first.
pub(super) async fn search_items(
    items: &Collection<Document>,
    query: &str,
    page: Page,
) -> Result<Vec<Item>> {
    let query = SearchQuery::parse(query)?;
    // Longest first: the index scan is bounded by one of the words.
    let words = query_words(&query);
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
