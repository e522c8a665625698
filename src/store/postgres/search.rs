//! Keyword search: each item keeps the folded words of its title, body and keywords in a `text[]`
//! column (`words`) under a GIN index; a search asks for items whose words contain all of the
//! query's (`words @> $1`), newest first (`id DESC`).
//!
//! Why not `tsvector`: its parser splits and stems words its own way (`café-style`, `snake_case`,
//! `don't`), so it would not find what the embedded store finds; the words here are cut by the one
//! tokenizer of searches and folded as the embedded store folds them
//! ([`crate::store::words`]), so every backend finds the same items. Both index types give the
//! planner the same choice, which is what matters for newest-first pages:
//!
//! - a common word: walk the primary key backwards (newest first) and keep rows whose words
//!   match; the page is full after a few dozen rows, nothing is sorted;
//! - a rare word: read its few matches through the GIN index and sort those (top-N).
//!
//! The planner picks by the word's frequency (`ANALYZE` keeps the most common words of the
//! column), so the statement is planned for its very words every time (the unnamed statement:
//! one round trip, never a generic plan that would pick one way for all words).

use tokio_postgres::types::Type;
use uuid::Uuid;

use super::connection::Conn;
use super::rows::{items_from, ITEM_COLUMNS};
use crate::domain::{Item, Page, SearchQuery};
use crate::error::Result;
use crate::store::words::query_words;

/// Items holding every word of `query`, newest first; a cursor is a bound on the id (which also
/// holds when the cursor's item was deleted since).
pub(super) async fn search_items(c: &Conn, query: &str, page: Page) -> Result<Vec<Item>> {
    let query = SearchQuery::parse(query)?;
    let words = query_words(&query);
    let after = page.after.unwrap_or(Uuid::max());
    let rows = c
        .query_planned(
            "search items",
            &format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE words @> $1 AND id < $2
                 ORDER BY id DESC LIMIT $3 OFFSET $4"
            ),
            &[
                (&words, Type::TEXT_ARRAY),
                (&after, Type::UUID),
                (&i64::from(page.limit), Type::INT8),
                (&i64::from(page.offset), Type::INT8),
            ],
        )
        .await?;
    items_from(&rows)
}
