//! Items: writes (idempotent by id, owner-only changes, keyed batches) and reads by id or by
//! user, newest first, through the index `(user_id, id DESC)`.
//!
//! An insert is one statement: `ON CONFLICT (id) DO NOTHING` makes a redelivered insert a no-op,
//! and the owner is checked in the same statement (`EXISTS … FOR KEY SHARE`, which also holds a
//! racing deletion of the owner until the insert commits; see [`super::users::delete_user`]).

use chrono::{DateTime, Utc};
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use super::connection::Conn;
use super::errors::op;
use super::rows::{item_from, items_from, ITEM_COLUMNS};
use crate::domain::{now, Extra, Item, ItemPatch, Page};
use crate::error::{Error, Result};
use crate::store::words::item_words;
use crate::store::ExportCursor;

const INSERT_ITEM: &str = "
    INSERT INTO items (id, user_id, title, body, url, ts, lat, lon, keywords, extra, words)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
    WHERE EXISTS (SELECT 1 FROM users WHERE id = $2 FOR KEY SHARE)
    ON CONFLICT (id) DO NOTHING
    RETURNING id";

/// Idempotent by id: a redelivered insert answers with the stored item; an id already used by
/// another owner is a `Conflict`; an owner that does not exist `Unauthorized`.
pub(super) async fn insert_item(c: &Conn, item: Item) -> Result<Item> {
    let words = item_words(&item);
    let inserted = c
        .query_opt(
            "insert an item",
            INSERT_ITEM,
            &[
                &item.id,
                &item.user_id,
                &item.title,
                &item.body,
                &item.url,
                &item.ts,
                &item.location.map(|l| l.lat),
                &item.location.map(|l| l.lon),
                &item.keywords,
                &Json(&item.extra),
                &words,
            ],
        )
        .await?;
    if inserted.is_some() {
        return Ok(item);
    }
    match find_item(c, item.id).await? {
        Some(existing) if existing.user_id == item.user_id => Ok(existing),
        Some(_) => Err(Error::Conflict("an item with this id exists".into())),
        None => Err(Error::Unauthorized("this account no longer exists".into())),
    }
}

/// One statement for a whole batch: the batch as arrays, one per column, `unnest`ed into rows
/// (keywords and words, arrays themselves, travel as JSON arrays).
const INSERT_ITEMS: &str = "
    INSERT INTO items (id, user_id, title, body, url, ts, lat, lon, keywords, extra, words)
    SELECT b.id, b.user_id, b.title, b.body, b.url, b.ts, b.lat, b.lon,
        ARRAY(SELECT k FROM json_array_elements_text(b.keywords) WITH ORDINALITY AS e(k, n)
              ORDER BY n),
        b.extra,
        ARRAY(SELECT json_array_elements_text(b.words))
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                $7::float8[], $8::float8[], $9::json[], $10::json[], $11::json[])
        AS b(id, user_id, title, body, url, ts, lat, lon, keywords, extra, words)
    ON CONFLICT (id) DO NOTHING";

/// A batch of items as the columns of [`INSERT_ITEMS`].
struct Batch<'a> {
    ids: Vec<Uuid>,
    users: Vec<Uuid>,
    titles: Vec<&'a str>,
    bodies: Vec<&'a str>,
    urls: Vec<Option<&'a str>>,
    ts: Vec<DateTime<Utc>>,
    lats: Vec<Option<f64>>,
    lons: Vec<Option<f64>>,
    keywords: Vec<Json<&'a Vec<String>>>,
    extras: Vec<Json<&'a Extra>>,
    words: Vec<Json<Vec<String>>>,
}

impl<'a> Batch<'a> {
    fn of(items: &'a [Item]) -> Self {
        Batch {
            ids: items.iter().map(|i| i.id).collect(),
            users: items.iter().map(|i| i.user_id).collect(),
            titles: items.iter().map(|i| i.title.as_str()).collect(),
            bodies: items.iter().map(|i| i.body.as_str()).collect(),
            urls: items.iter().map(|i| i.url.as_deref()).collect(),
            ts: items.iter().map(|i| i.ts).collect(),
            lats: items.iter().map(|i| i.location.map(|l| l.lat)).collect(),
            lons: items.iter().map(|i| i.location.map(|l| l.lon)).collect(),
            keywords: items.iter().map(|i| Json(&i.keywords)).collect(),
            extras: items.iter().map(|i| Json(&i.extra)).collect(),
            words: items.iter().map(|i| Json(item_words(i))).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.ids,
            &self.users,
            &self.titles,
            &self.bodies,
            &self.urls,
            &self.ts,
            &self.lats,
            &self.lons,
            &self.keywords,
            &self.extras,
            &self.words,
        ]
    }
}

/// Inserts a batch in one statement, skipping items whose id exists; how many were new.
pub(super) async fn insert_new_items(c: &Conn, items: &[Item]) -> Result<usize> {
    if items.is_empty() {
        return Ok(0);
    }
    let batch = Batch::of(items);
    let inserted = c
        .execute("insert items", INSERT_ITEMS, &batch.params())
        .await?;
    Ok(inserted as usize)
}

/// Inserts a batch once per `key` (see [`crate::store::Store::insert_items_once`]), in one
/// transaction with the record of the key. The key is recorded with the batch's first item id,
/// which tells a redelivered batch (same first item: inserted again, duplicates skipped) from a
/// replayed request (refused); an expired key is taken over. Racing deliveries of one key on
/// several nodes queue on the key's row.
pub(super) async fn insert_items_once(
    c: &mut Conn,
    key: Vec<u8>,
    expires_at: DateTime<Utc>,
    items: Vec<Item>,
) -> Result<usize> {
    let first = items.first().map(|i| i.id);
    let now = now();
    let result = async {
        let tx = c.begin("begin a keyed insert").await?;
        // Expired keys go as new ones come (one index range), which keeps the table bounded.
        tx.execute("DELETE FROM ingest_seen WHERE expires_at <= $1", &[&now])
            .await
            .map_err(op("forget expired ingest keys"))?;
        let recorded = tx
            .query_opt(
                "INSERT INTO ingest_seen (key, expires_at, first_item) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE
                     SET expires_at = EXCLUDED.expires_at, first_item = EXCLUDED.first_item
                     WHERE ingest_seen.expires_at <= $4
                 RETURNING 1",
                &[&key, &expires_at, &first, &now],
            )
            .await
            .map_err(op("record an ingest key"))?;
        if recorded.is_none() {
            let stored: Option<Uuid> = tx
                .query_one(
                    "SELECT first_item FROM ingest_seen WHERE key = $1",
                    &[&key],
                )
                .await
                .and_then(|row| row.try_get(0))
                .map_err(op("read an ingest key"))?;
            if stored != first {
                return Err(Error::Conflict(
                    "this signed request was accepted before (a replay); sign it again to send the same data once more"
                        .into(),
                ));
            }
            // The same batch redelivered: its inserts below skip what exists.
        }
        let mut inserted = 0;
        if !items.is_empty() {
            let batch = Batch::of(&items);
            let statement = tx
                .prepare_cached(INSERT_ITEMS)
                .await
                .map_err(op("insert items"))?;
            inserted = tx
                .execute(&statement, &batch.params())
                .await
                .map_err(op("insert items"))? as usize;
        }
        tx.commit().await.map_err(op("commit a keyed insert"))?;
        Ok(inserted)
    }
    .await;
    c.settle(result)
}

pub(super) async fn find_item(c: &Conn, id: Uuid) -> Result<Option<Item>> {
    let row = c
        .query_opt(
            "read an item",
            &format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(item_from).transpose()?)
}

pub(super) async fn get_item(c: &Conn, id: Uuid) -> Result<Item> {
    find_item(c, id)
        .await?
        .ok_or_else(|| Error::not_found("item"))
}

/// Applies `patch` if the item belongs to `owner`: the item is read under a row lock, patched,
/// its search words computed again, and written back, in one transaction.
pub(super) async fn update_item(
    c: &mut Conn,
    id: Uuid,
    owner: Uuid,
    patch: ItemPatch,
) -> Result<Item> {
    let result = async {
        let tx = c.begin("begin an item update").await?;
        let row = tx
            .query_opt(
                &format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await
            .map_err(op("read an item"))?
            .ok_or_else(|| Error::not_found("item"))?;
        let mut item = item_from(&row)?;
        if item.user_id != owner {
            return Err(Error::Forbidden("only the owner may change an item".into()));
        }
        patch.apply(&mut item);
        let statement = tx
            .prepare_cached(
                "UPDATE items SET title = $2, body = $3, url = $4, lat = $5, lon = $6,
                     keywords = $7, extra = $8, words = $9
                 WHERE id = $1",
            )
            .await
            .map_err(op("update an item"))?;
        tx.execute(
            &statement,
            &[
                &id,
                &item.title,
                &item.body,
                &item.url,
                &item.location.map(|l| l.lat),
                &item.location.map(|l| l.lon),
                &item.keywords,
                &Json(&item.extra),
                &item_words(&item),
            ],
        )
        .await
        .map_err(op("update an item"))?;
        tx.commit().await.map_err(op("commit an item update"))?;
        Ok(item)
    }
    .await;
    c.settle(result)
}

/// Deletes the item if it belongs to `owner`; returns it as it was.
pub(super) async fn delete_item(c: &Conn, id: Uuid, owner: Uuid) -> Result<Item> {
    let deleted = c
        .query_opt(
            "delete an item",
            &format!("DELETE FROM items WHERE id = $1 AND user_id = $2 RETURNING {ITEM_COLUMNS}"),
            &[&id, &owner],
        )
        .await?;
    match deleted {
        Some(row) => Ok(item_from(&row)?),
        None => match find_item(c, id).await? {
            Some(_) => Err(Error::Forbidden("only the owner may delete an item".into())),
            None => Err(Error::not_found("item")),
        },
    }
}

/// A page of a user's items, newest first (ids are time-ordered: a cursor is a bound on them;
/// no cursor is the newest possible id, so one statement and one plan serve both).
pub(super) async fn list_user_items(c: &Conn, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
    let after = page.after.unwrap_or(Uuid::max());
    let rows = c
        .query(
            "list items",
            &format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE user_id = $1 AND id < $2
                 ORDER BY id DESC LIMIT $3 OFFSET $4"
            ),
            &[
                &user_id,
                &after,
                &i64::from(page.limit),
                &i64::from(page.offset),
            ],
        )
        .await?;
    items_from(&rows)
}

/// A page of every item by id (the primary key's order), after `after` (an export).
pub(super) async fn export_page(
    c: &Conn,
    after: Option<ExportCursor>,
    limit: u32,
) -> Result<Vec<Item>> {
    let after = after.map_or(Uuid::nil(), |cursor| cursor.id);
    let rows = c
        .query(
            "export items",
            &format!("SELECT {ITEM_COLUMNS} FROM items WHERE id > $1 ORDER BY id LIMIT $2"),
            &[&after, &i64::from(limit)],
        )
        .await?;
    items_from(&rows)
}
