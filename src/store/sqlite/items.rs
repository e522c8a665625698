//! Items: writes (idempotent by id, owner-only changes, keyed batches) and reads by id or by
//! user, newest first. Every write keeps the search index and the recent-items lists in step
//! through [`Tx`].

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::errors::db_error;
use super::rows::{item_from_row, keywords_json, search_rows, ITEM_COLUMNS, SEARCH_ROW_BY_ID};
use super::users::require_user;
use super::writer::Tx;
use crate::domain::{to_millis, Item, ItemPatch, Page};
use crate::error::{Error, Result};
use crate::store::ExportCursor;

/// Idempotent by id; an owner that does not exist is `Unauthorized`.
pub(super) fn insert_item(conn: &Tx<'_>, seqs: &AtomicI64, item: Item) -> Result<Item> {
    let seq = seqs.fetch_sub(1, Ordering::Relaxed);
    if insert_item_row(conn, &item, seq, true).map_err(db_error)? == 1 {
        // After the insert, so a redelivered item stays idempotent; the error undoes it.
        require_user(conn, item.user_id)?;
        conn.index(seq, &item);
        conn.touch(item.user_id);
        return Ok(item);
    }
    let existing = select_item(conn, item.id)?;
    if existing.user_id == item.user_id {
        Ok(existing)
    } else {
        Err(Error::Conflict("an item with this id exists".into()))
    }
}

/// Inserts a batch once per `key` (see [`crate::store::Store::insert_items_once`]).
pub(super) fn insert_items_once(
    conn: &Tx<'_>,
    seqs: &AtomicI64,
    key: Vec<u8>,
    expires_at: DateTime<Utc>,
    items: Vec<Item>,
) -> Result<usize> {
    let now = to_millis(Utc::now());
    // Expired keys go as new ones come (one index range), which keeps the table bounded.
    conn.prepare_cached("DELETE FROM ingest_seen WHERE expires_at <= ?1")
        .and_then(|mut s| s.execute([now]))
        .map_err(db_error)?;
    let first = items.first().map(|i| i.id);
    let seen: Option<Option<Uuid>> = conn
        .prepare_cached("SELECT first_item FROM ingest_seen WHERE key = ?1")
        .and_then(|mut s| s.query_row([&key], |r| r.get(0)).optional())
        .map_err(db_error)?;
    match seen {
        Some(stored) if stored == first => {} // redelivered: the inserts below skip
        Some(_) => {
            return Err(Error::Conflict(
                "this signed request was accepted before (a replay); sign it again to send the same data once more"
                    .into(),
            ))
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO ingest_seen (key, expires_at, first_item) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![key, to_millis(expires_at), first]))
            .map_err(db_error)?;
        }
    }
    insert_new_items(conn, seqs, &items)
}

pub(super) fn update_item(conn: &Tx<'_>, id: Uuid, owner: Uuid, patch: ItemPatch) -> Result<Item> {
    let mut item = select_item(conn, id)?;
    if item.user_id != owner {
        return Err(Error::Forbidden("only the owner may change an item".into()));
    }
    patch.apply(&mut item);
    conn.touch(owner);
    for old in search_rows(conn, SEARCH_ROW_BY_ID, [id])? {
        let seq = old.seq;
        conn.unindex(old);
        conn.index(seq, &item);
    }
    conn.prepare_cached(
        "UPDATE items SET title = ?2, body = ?3, url = ?4, lat = ?5, lon = ?6,
         keywords = ?7, extra = ?8 WHERE user_id = ?9 AND id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            item.title,
            item.body,
            item.url,
            item.location.map(|l| l.lat),
            item.location.map(|l| l.lon),
            keywords_json(&item.keywords),
            item.extra.to_json(),
            owner,
        ])
    })
    .map_err(db_error)?;
    Ok(item)
}

pub(super) fn delete_item(conn: &Tx<'_>, id: Uuid, owner: Uuid) -> Result<Item> {
    let item = select_item(conn, id)?;
    if item.user_id != owner {
        return Err(Error::Forbidden("only the owner may delete an item".into()));
    }
    conn.touch(owner);
    for old in search_rows(conn, SEARCH_ROW_BY_ID, [id])? {
        conn.unindex(old);
    }
    conn.execute(
        "DELETE FROM items WHERE user_id = ?1 AND id = ?2",
        params![owner, id],
    )
    .map_err(db_error)?;
    Ok(item)
}

pub(super) fn insert_item_row(
    conn: &Connection,
    item: &Item,
    seq: i64,
    or_ignore: bool,
) -> rusqlite::Result<usize> {
    let sql = if or_ignore {
        "INSERT OR IGNORE INTO items (id, user_id, title, body, url, ts, lat, lon, keywords, extra, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    } else {
        "INSERT INTO items (id, user_id, title, body, url, ts, lat, lon, keywords, extra, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    };
    conn.prepare_cached(sql)?.execute(params![
        item.id,
        item.user_id,
        item.title,
        item.body,
        item.url,
        to_millis(item.ts),
        item.location.map(|l| l.lat),
        item.location.map(|l| l.lon),
        keywords_json(&item.keywords),
        item.extra.to_json(),
        seq,
    ])
}

/// Inserts a batch, skipping items whose id exists; how many were new.
pub(super) fn insert_new_items(tx: &Tx<'_>, seqs: &AtomicI64, items: &[Item]) -> Result<usize> {
    let mut inserted = 0;
    for item in items {
        let seq = seqs.fetch_sub(1, Ordering::Relaxed);
        if insert_item_row(tx, item, seq, true).map_err(db_error)? == 1 {
            tx.index(seq, item);
            tx.touch(item.user_id);
            inserted += 1;
        }
    }
    Ok(inserted)
}

pub(super) fn select_item(conn: &Connection, id: Uuid) -> Result<Item> {
    conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], item_from_row).optional())
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("item"))
}

/// A page of a user's items, newest first (ids are time-ordered: a cursor is a bound on them).
pub(super) fn select_user_items(conn: &Connection, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
    // The newest possible id: no cursor is the same query, one plan.
    let after = page.after.unwrap_or(Uuid::max());
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE user_id = ?1 AND id < ?4
             ORDER BY id DESC LIMIT ?2 OFFSET ?3"
        ))
        .map_err(db_error)?;
    let rows = stmt
        .query_map(
            params![user_id, page.limit, page.offset, after],
            item_from_row,
        )
        .map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}

/// A page of every item in the table's own order, `(user_id, id)`, after `after` (an export):
/// the primary key's range, read sequentially, whatever the depth.
pub(super) fn select_export_page(
    conn: &Connection,
    after: Option<ExportCursor>,
    limit: u32,
) -> Result<Vec<Item>> {
    // The lowest key: no cursor is the same query, one plan.
    let after = after.unwrap_or(ExportCursor {
        user_id: Uuid::nil(),
        id: Uuid::nil(),
    });
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE (user_id, id) > (?1, ?2)
             ORDER BY user_id, id LIMIT ?3"
        ))
        .map_err(db_error)?;
    let rows = stmt
        .query_map(params![after.user_id, after.id, limit], item_from_row)
        .map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}
