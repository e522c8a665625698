//! Bulk loading (`gorgon seed`): binary `COPY` in batches, several in flight at once (each on a
//! connection of its own), and the items' secondary indexes built once at the end when the load
//! starts on an empty store (one sorted build is cheaper than keeping two indexes up to date per
//! row), side by side, then `ANALYZE` so that the planner knows the new rows (search picks its
//! plan by how common a word is).
//!
//! On a store that already holds items the indexes stay: dropping them would turn every other
//! node's listings and searches into scans while the load runs. A load that dies half-way leaves
//! no index missing for long: every node builds missing indexes when it connects, and
//! `finish_bulk` is idempotent. Items already stored (a load run again) are skipped: a batch
//! whose `COPY` meets an existing id is inserted again with `ON CONFLICT DO NOTHING`. An import
//! (`gorgon import items --store postgres://…`) writes its batches the same way, indexes kept.

use std::pin::pin;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql, Type};

use super::connection::Conn;
use super::errors::op;
use super::items::insert_new_items;
use super::migrations::{ITEM_INDEXES, SCHEMA_LOCK};
use super::PgStore;
use crate::domain::{Item, NewUser};
use crate::error::{Error, Result};
use crate::store::words::item_words;
use crate::store::BulkLoad;

const COPY_USERS: &str =
    "COPY users (id, name, email, grp, admin, created_at, extra, password_hash)
    FROM STDIN (FORMAT binary)";
const USER_TYPES: &[Type] = &[
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::BOOL,
    Type::TIMESTAMPTZ,
    Type::JSON,
    Type::TEXT,
];
const COPY_EMAIL_KEYS: &str = "COPY email_keys (key, user_id) FROM STDIN (FORMAT binary)";
const COPY_ITEMS: &str =
    "COPY items (id, user_id, title, body, url, ts, lat, lon, keywords, extra, words)
    FROM STDIN (FORMAT binary)";
const ITEM_TYPES: &[Type] = &[
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT_ARRAY,
    Type::JSON,
    Type::TEXT_ARRAY,
];

#[async_trait]
impl BulkLoad for PgStore {
    /// Sets the items' secondary indexes aside when no item is stored yet.
    async fn begin_bulk(&self, _items: u64) -> Result<()> {
        let mut c = self.conn().await?;
        let result = async {
            let tx = c.begin("begin a bulk load").await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await
                .map_err(op("lock the schema"))?;
            let empty: bool = tx
                .query_one("SELECT NOT EXISTS (SELECT 1 FROM items)", &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(op("look for items"))?;
            if empty {
                for (name, _) in ITEM_INDEXES {
                    tx.batch_execute(&format!("DROP INDEX IF EXISTS {name}"))
                        .await
                        .map_err(op("set the items' indexes aside"))?;
                }
            }
            tx.commit().await.map_err(op("begin a bulk load"))
        }
        .await;
        c.settle(result)
    }

    /// Users with the look of their address, in one transaction; a duplicate is a `Conflict`, as
    /// in the other backends (a seed never makes two accounts with one address).
    async fn bulk_users(&self, users: Vec<NewUser>) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let result = async {
            let tx = c.begin("begin loading users").await?;
            let sink = tx
                .copy_in(COPY_EMAIL_KEYS)
                .await
                .map_err(op("load the addresses of users"))?;
            let mut writer = pin!(BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::UUID]));
            for user in &users {
                let key = user.email.look_alike_key();
                writer
                    .as_mut()
                    .write(&[&key, &user.id])
                    .await
                    .map_err(op("load the addresses of users"))?;
            }
            writer
                .finish()
                .await
                .map_err(op("load the addresses of users"))?;
            let sink = tx.copy_in(COPY_USERS).await.map_err(op("load users"))?;
            let mut writer = pin!(BinaryCopyInWriter::new(sink, USER_TYPES));
            for user in &users {
                let extra = Json(&user.extra);
                let row: [&(dyn ToSql + Sync); 8] = [
                    &user.id,
                    &user.name.as_str(),
                    &user.email.as_str(),
                    &user.group,
                    &user.admin,
                    &user.created_at,
                    &extra,
                    &user.password_hash,
                ];
                writer
                    .as_mut()
                    .write(&row)
                    .await
                    .map_err(op("load users"))?;
            }
            writer.finish().await.map_err(op("load users"))?;
            tx.commit().await.map_err(op("commit loaded users"))
        }
        .await;
        c.settle(result)
    }

    /// Items in batches of `bulk_batch` rows, each in id order (appends to the primary key),
    /// `bulk_parallelism` batches at once.
    async fn bulk_items(&self, items: Vec<(u64, Item)>) -> Result<()> {
        let mut items: Vec<Item> = items.into_iter().map(|(_, item)| item).collect();
        items.sort_unstable_by_key(|i| i.id);
        let batch = self.options.bulk_batch.max(1);
        let mut batches: Vec<Vec<Item>> = Vec::new();
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            batches.push(rest.by_ref().take(batch).collect());
        }
        let loads: Vec<_> = batches
            .into_iter()
            .map(|batch| async move { copy_new_items(&self.conn().await?, &batch).await })
            .collect();
        futures::stream::iter(loads)
            .buffer_unordered(self.options.bulk_parallelism.max(1))
            .try_collect::<Vec<usize>>()
            .await?;
        Ok(())
    }

    /// An import's batch by binary `COPY` (the indexes stay), or, when an id of it is stored
    /// already (the file run again), by `INSERT … ON CONFLICT DO NOTHING`: counted either way.
    async fn import_items(&self, mut items: Vec<Item>) -> Result<usize> {
        items.sort_unstable_by_key(|i| i.id);
        copy_new_items(&self.conn().await?, &items).await
    }

    /// Builds the missing item indexes side by side, then refreshes the planner's statistics.
    async fn finish_bulk(&self) -> Result<()> {
        let memory = format!("{}MB", self.options.bulk_index_memory_mb.max(1));
        let builds: Vec<_> = ITEM_INDEXES
            .iter()
            .map(|&(name, sql)| {
                let memory = memory.clone();
                async move {
                    let mut c = self.conn().await?;
                    let result = async {
                        let tx = c.begin("begin an index build").await?;
                        tx.batch_execute(&format!(
                            "SET LOCAL statement_timeout = 0; \
                         SET LOCAL maintenance_work_mem = '{memory}'"
                        ))
                        .await
                        .map_err(op("begin an index build"))?;
                        tracing::info!(index = name, "PostgreSQL: building an index");
                        tx.batch_execute(sql).await.map_err(op("build an index"))?;
                        tx.commit().await.map_err(op("build an index"))
                    }
                    .await;
                    c.settle(result)
                }
            })
            .collect();
        futures::stream::iter(builds)
            .buffer_unordered(self.options.bulk_parallelism.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        let mut c = self.conn().await?;
        let result = async {
            let tx = c.begin("analyze the loaded tables").await?;
            tx.batch_execute("SET LOCAL statement_timeout = 0; ANALYZE users; ANALYZE items")
                .await
                .map_err(op("analyze the loaded tables"))?;
            tx.commit().await.map_err(op("analyze the loaded tables"))
        }
        .await;
        c.settle(result)
    }
}

/// Stores the items whose ids are new: one `COPY` when none is stored yet, else (a load or an
/// import run again) inserts that skip what is stored. How many were new.
async fn copy_new_items(c: &Conn, items: &[Item]) -> Result<usize> {
    match copy_items(c, items).await {
        Ok(()) => Ok(items.len()),
        Err(Error::Conflict(_)) => {
            let mut inserted = 0;
            for chunk in items.chunks(1000) {
                inserted += insert_new_items(c, chunk).await?;
            }
            Ok(inserted)
        }
        Err(e) => Err(e),
    }
}

/// One binary `COPY` of `items`; `Conflict` when one of them is stored already.
async fn copy_items(c: &Conn, items: &[Item]) -> Result<()> {
    let result = async {
        let sink = c.client().copy_in(COPY_ITEMS).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, ITEM_TYPES));
        for item in items {
            let (lat, lon) = (item.location.map(|l| l.lat), item.location.map(|l| l.lon));
            let extra = Json(&item.extra);
            let words = item_words(item);
            let row: [&(dyn ToSql + Sync); 11] = [
                &item.id,
                &item.user_id,
                &item.title,
                &item.body,
                &item.url,
                &item.ts,
                &lat,
                &lon,
                &item.keywords,
                &extra,
                &words,
            ];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await
    }
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(Error::Conflict(
            "an item of the batch is stored already".into(),
        )),
        Err(e) => Err(c.op("load items")(e)),
    }
}
