//! Items: writes (idempotent by id, owner-only changes, keyed batches) and reads by id or by
//! user, newest first, through the index `{user_id: 1, _id: -1}`.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::docs::{bytes, item_doc, item_from, now, time, uuid, Fields};
use super::errors::{is_duplicate, only_duplicates, op};
use super::pages::find_page;
use super::users::require_user;
use super::Collections;
use crate::domain::{Item, ItemPatch, Page};
use crate::error::{Error, Result};
use crate::store::ExportCursor;

/// Reads leave out the search words: they can be as long as the body.
fn without_words() -> Document {
    doc! { "words": 0 }
}

/// Idempotent by id: a redelivered insert (duplicate key) answers with the stored item; an id
/// already used by another owner is a `Conflict`; an owner that does not exist `Unauthorized`.
pub(super) async fn insert_item(c: &Collections, item: Item) -> Result<Item> {
    match c.items.insert_one(item_doc(&item)).await {
        Ok(_) => {}
        Err(e) if is_duplicate(&e) => {
            let existing = get_item(c, item.id).await?;
            return if existing.user_id == item.user_id {
                Ok(existing)
            } else {
                Err(Error::Conflict("an item with this id exists".into()))
            };
        }
        Err(e) => return Err(op("insert an item")(e)),
    }
    // After the insert, so a redelivered item stays idempotent; see `users::delete_user`.
    if let Err(e) = require_user(c, item.user_id).await {
        if matches!(e, Error::Unauthorized(_)) {
            c.items
                .delete_one(doc! { "_id": uuid(item.id) })
                .await
                .map_err(op("remove an orphan item"))?;
        }
        return Err(e);
    }
    Ok(item)
}

/// Inserts a batch (unordered: one failure does not stop the rest), skipping items whose id
/// exists; how many were new.
pub(super) async fn insert_new_items(c: &Collections, items: &[Item]) -> Result<usize> {
    if items.is_empty() {
        return Ok(0);
    }
    let docs: Vec<Document> = items.iter().map(item_doc).collect();
    match c.items.insert_many(docs).ordered(false).await {
        Ok(done) => Ok(done.inserted_ids.len()),
        Err(e) => match only_duplicates(&e) {
            Some(skipped) => Ok(items.len().saturating_sub(skipped)),
            None => Err(op("insert items")(e)),
        },
    }
}

/// Inserts a batch once per `key` (see [`crate::store::Store::insert_items_once`]): the key is
/// recorded first, with the batch's first item id, which tells a redelivered batch (same first
/// item: inserted again, duplicates skipped) from a replayed request (refused).
pub(super) async fn insert_items_once(
    c: &Collections,
    key: Vec<u8>,
    expires_at: DateTime<Utc>,
    items: Vec<Item>,
) -> Result<usize> {
    let first = items.first().map_or(Bson::Null, |i| uuid(i.id));
    let seen =
        doc! { "_id": bytes(&key), "expires_at": time(expires_at), "first_item": first.clone() };
    loop {
        match c.ingest_seen.insert_one(&seen).await {
            Ok(_) => break,
            Err(e) if is_duplicate(&e) => {}
            Err(e) => return Err(op("record an ingest key")(e)),
        }
        let stored = c
            .ingest_seen
            .find_one(doc! { "_id": bytes(&key) })
            .await
            .map_err(op("read an ingest key"))?;
        let Some(stored) = stored else {
            continue; // expired and removed in the meantime: record it again
        };
        let f = Fields::of("ingest key", &stored);
        if f.time("expires_at")? <= Utc::now() {
            // Expired but not yet removed (MongoDB's TTL monitor runs once a minute): forgotten,
            // so it is taken over, unless another writer did first.
            let taken = c
                .ingest_seen
                .replace_one(
                    doc! { "_id": bytes(&key), "expires_at": { "$lte": now() } },
                    &seen,
                )
                .await
                .map_err(op("record an ingest key"))?;
            if taken.matched_count == 1 {
                break;
            }
            continue;
        }
        if stored.get("first_item").unwrap_or(&Bson::Null) == &first {
            break; // the same batch redelivered: its inserts below skip what exists
        }
        return Err(Error::Conflict(
            "this signed request was accepted before (a replay); sign it again to send the same data once more"
                .into(),
        ));
    }
    insert_new_items(c, &items).await
}

pub(super) async fn find_item(c: &Collections, id: Uuid) -> Result<Option<Document>> {
    c.items
        .find_one(doc! { "_id": uuid(id) })
        .projection(without_words())
        .await
        .map_err(op("read an item"))
}

pub(super) async fn get_item(c: &Collections, id: Uuid) -> Result<Item> {
    let found = find_item(c, id)
        .await?
        .ok_or_else(|| Error::not_found("item"))?;
    Ok(item_from(&found)?)
}

/// Applies `patch` if the item belongs to `owner`. The search words follow from title, body and
/// keywords together, so the update is conditional on the revision it was computed from (`rev`),
/// and computed again if another update came first.
pub(super) async fn update_item(
    c: &Collections,
    id: Uuid,
    owner: Uuid,
    patch: ItemPatch,
) -> Result<Item> {
    for _ in 0..UPDATE_TRIES {
        let stored = find_item(c, id)
            .await?
            .ok_or_else(|| Error::not_found("item"))?;
        let mut item = item_from(&stored)?;
        if item.user_id != owner {
            return Err(Error::Forbidden("only the owner may change an item".into()));
        }
        let rev = stored.get("rev").cloned().unwrap_or(Bson::Null);
        patch.clone().apply(&mut item);
        let mut set = item_doc(&item);
        set.remove("_id");
        set.remove("rev");
        let changed = c
            .items
            .find_one_and_update(
                doc! { "_id": uuid(id), "user_id": uuid(owner), "rev": rev },
                doc! { "$set": set, "$inc": { "rev": 1_i64 } },
            )
            .projection(without_words())
            .return_document(ReturnDocument::After)
            .await
            .map_err(op("update an item"))?;
        if let Some(changed) = changed {
            return Ok(item_from(&changed)?);
        }
    }
    Err(Error::Conflict(
        "the item kept changing while this update was applied; try again".into(),
    ))
}

/// Attempts of one update racing others on the same item before it gives up.
const UPDATE_TRIES: usize = 20;

/// Deletes the item if it belongs to `owner`; returns it as it was.
pub(super) async fn delete_item(c: &Collections, id: Uuid, owner: Uuid) -> Result<Item> {
    let deleted = c
        .items
        .find_one_and_delete(doc! { "_id": uuid(id), "user_id": uuid(owner) })
        .projection(without_words())
        .await
        .map_err(op("delete an item"))?;
    match deleted {
        Some(deleted) => Ok(item_from(&deleted)?),
        None => match find_item(c, id).await? {
            Some(_) => Err(Error::Forbidden("only the owner may delete an item".into())),
            None => Err(Error::not_found("item")),
        },
    }
}

/// A page of a user's items, newest first (ids are time-ordered: a cursor is a bound on them).
pub(super) async fn list_user_items(
    c: &Collections,
    user_id: Uuid,
    page: Page,
) -> Result<Vec<Item>> {
    let mut filter = doc! { "user_id": uuid(user_id) };
    if let Some(after) = page.after {
        filter.insert("_id", doc! { "$lt": uuid(after) });
    }
    let docs = find_page(
        &c.items,
        filter,
        doc! { "_id": -1 },
        Some(without_words()),
        page,
        "list items",
    )
    .await?;
    docs.iter()
        .map(|d| item_from(d).map_err(Into::into))
        .collect()
}

/// A page of every item by `_id` (the primary index's order), after `after` (an export).
pub(super) async fn export_page(
    c: &Collections,
    after: Option<ExportCursor>,
    limit: u32,
) -> Result<Vec<Item>> {
    let filter = match after {
        Some(cursor) => doc! { "_id": { "$gt": uuid(cursor.id) } },
        None => doc! {},
    };
    let docs = find_page(
        &c.items,
        filter,
        doc! { "_id": 1 },
        Some(without_words()),
        Page::new(limit, 0),
        "export items",
    )
    .await?;
    docs.iter()
        .map(|d| item_from(d).map_err(Into::into))
        .collect()
}
