//! Keyword search: the FTS5 query of a parsed search, and a page of its matches, newest first.

use rusqlite::{params, Connection, OptionalExtension};

use super::errors::db_error;
use super::rows::item_from_row;
use crate::domain::{Item, Page, SearchQuery};
use crate::error::Result;

/// The FTS5 query of a search: every word quoted (so none is an operator), all of them required.
pub(super) fn fts_query(query: &SearchQuery) -> String {
    let words: Vec<String> = query.words().iter().map(|w| format!("\"{w}\"")).collect();
    words.join(" ")
}

/// A page of the items matching an FTS5 `query`, newest first (ascending `seq`).
pub(super) fn select_search(conn: &Connection, query: &str, page: Page) -> Result<Vec<Item>> {
    // Search walks the index in `seq` order, so a cursor becomes a bound on `seq`: the cursor
    // item's own, or, if it was deleted since, that of the nearest older item (included).
    let after_seq = match page.after {
        None => i64::MIN,
        Some(after) => {
            let exact: Option<i64> = conn
                .prepare_cached("SELECT seq FROM items WHERE id = ?1")
                .and_then(|mut s| s.query_row([after], |r| r.get(0)).optional())
                .map_err(db_error)?;
            let older = || -> Result<Option<i64>> {
                conn.prepare_cached("SELECT seq FROM items WHERE id < ?1 ORDER BY id DESC LIMIT 1")
                    .and_then(|mut s| s.query_row([after], |r| r.get::<_, i64>(0)).optional())
                    .map_err(db_error)
                    .map(|seq| seq.map(|s| s - 1))
            };
            match exact {
                Some(seq) => seq,
                None => match older()? {
                    Some(seq) => seq,
                    None => return Ok(Vec::new()),
                },
            }
        }
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT i.id, i.user_id, i.title, i.body, i.url, i.ts, i.lat, i.lon, i.keywords, i.extra
             FROM items_fts f JOIN items i ON i.seq = f.rowid
             WHERE items_fts MATCH ?1 AND f.rowid > ?4 ORDER BY f.rowid LIMIT ?2 OFFSET ?3",
        )
        .map_err(db_error)?;
    let rows = stmt
        .query_map(
            params![query, page.limit, page.offset, after_seq],
            item_from_row,
        )
        .map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}
