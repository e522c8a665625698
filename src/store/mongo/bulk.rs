//! Bulk loading (`gorgon seed`): unordered `insert_many` batches, several in flight at once, and
//! the items' secondary indexes built once at the end when the load starts on an empty store
//! (one sorted build is cheaper than keeping two indexes up to date per insert).
//!
//! On a store that already holds items the indexes stay: dropping them would turn every other
//! node's listings and searches into collection scans while the load runs. A load that dies
//! half-way leaves no index missing for long: every node creates missing indexes when it connects,
//! and `finish_bulk` is idempotent.

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document};

use super::connection::{create_indexes, item_indexes};
use super::docs::{item_doc, user_doc};
use super::errors::{only_duplicates, op};
use super::MongoStore;
use crate::domain::{Item, NewUser};
use crate::error::Result;
use crate::store::BulkLoad;

#[async_trait]
impl BulkLoad for MongoStore {
    async fn begin_bulk(&self, _items: u64) -> Result<()> {
        let c = self.live()?;
        let empty = c
            .items
            .find_one(doc! {})
            .projection(doc! { "_id": 1 })
            .await
            .map_err(op("look for items"))?
            .is_none();
        if empty {
            for index in item_indexes() {
                let Some(name) = index.options.as_ref().and_then(|o| o.name.clone()) else {
                    continue;
                };
                match c.items.drop_index(name).await {
                    Ok(()) => {}
                    // Already gone (code 27, IndexNotFound), or no collection yet (26).
                    Err(e) if matches!(error_code(&e), Some(26 | 27)) => {}
                    Err(e) => return Err(op("set the items' indexes aside")(e)),
                }
            }
        }
        Ok(())
    }

    /// Users with the look of their address; a duplicate is a `Conflict`, as in the embedded
    /// store (a seed never makes two accounts with one address).
    async fn bulk_users(&self, users: Vec<NewUser>) -> Result<()> {
        let c = self.live()?;
        if users.is_empty() {
            return Ok(());
        }
        let keys: Vec<Document> = users
            .iter()
            .map(|u| doc! { "_id": u.email.look_alike_key(), "user_id": super::docs::uuid(u.id), "at": super::docs::now() })
            .collect();
        let docs: Vec<Document> = users.iter().map(user_doc).collect();
        c.email_keys
            .insert_many(keys)
            .ordered(false)
            .await
            .map_err(op("insert the addresses of users"))?;
        c.users
            .insert_many(docs)
            .ordered(false)
            .await
            .map_err(op("insert users"))?;
        Ok(())
    }

    /// Items in batches of `bulk_batch`, `bulk_parallelism` at once; items already stored (a load
    /// run again) are skipped. `_id` order is time order, so positions are not needed.
    async fn bulk_items(&self, items: Vec<(u64, Item)>) -> Result<()> {
        let c = self.live()?;
        let batch = self.options.bulk_batch.max(1);
        let docs: Vec<Document> = items.iter().map(|(_, item)| item_doc(item)).collect();
        let mut batches: Vec<Vec<Document>> = Vec::new();
        let mut docs = docs.into_iter().peekable();
        while docs.peek().is_some() {
            batches.push(docs.by_ref().take(batch).collect());
        }
        futures::stream::iter(batches.into_iter().map(|batch| {
            let items = c.items.clone();
            async move {
                match items.insert_many(batch).ordered(false).await {
                    Ok(_) => Ok(()),
                    Err(e) if only_duplicates(&e).is_some() => Ok(()),
                    Err(e) => Err(op("insert items")(e)),
                }
            }
        }))
        .buffer_unordered(self.options.bulk_parallelism.max(1))
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    async fn finish_bulk(&self) -> Result<()> {
        let c = self.live()?;
        create_indexes(c, true).await?;
        Ok(())
    }
}

/// The server's error code, if the failure is a command error.
fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}
