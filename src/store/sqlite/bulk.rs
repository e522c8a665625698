//! Bulk loading (`gorgon seed`): secondary indexes set aside while rows stream in, the search
//! index built aside (into an empty store) or in large runs, everything rebuilt at the end. A
//! `bulk_load` marker makes an interrupted load rebuild the search index on the next open.
//!
//! Imports (`gorgon import items`) stage their rows and move them in key order at the end: see
//! [`super::import`].

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use super::errors::{db_error, StoreError};
use super::import::{build_indexes, set_indexes_aside, Stage};
use super::items::{insert_item_row, insert_new_items};
use super::rows::SearchRow;
use super::schema::{DROP_SECONDARY, SECONDARY};
use super::users::insert_user_row;
use super::SqliteStore;
use crate::domain::{Item, NewUser};
use crate::error::Result;
use crate::store::search_build::SearchBuild;
use crate::store::BulkLoad;

const MARK_BULK: &str = "INSERT OR REPLACE INTO meta (key, value) VALUES ('bulk_load', 'running')";

#[async_trait]
impl BulkLoad for SqliteStore {
    /// See [`super::import`]: rows are staged, then moved in key order.
    async fn begin_import(&self) -> Result<()> {
        let empty: bool = self.read(|conn| {
            conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM items)", [], |r| r.get(0))
                .map_err(db_error)
        })?;
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let path = self.path.clone();
        let stage = tokio::task::spawn_blocking(move || {
            let probe = match empty {
                true => None,
                false => Some(
                    Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .map_err(db_error)?,
                ),
            };
            Stage::create(&dir, probe)
        })
        .await
        .map_err(|e| StoreError::Task("the import's stage", e))??;
        if empty {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            *self.search_build.lock() = Some(SearchBuild::start(dir)?);
            self.write(|conn| {
                conn.execute(MARK_BULK, []).map_err(db_error)?;
                set_indexes_aside(conn)
            })
            .await?;
        }
        *self.import_stage.lock() = Some(Arc::new(Mutex::new(stage)));
        Ok(())
    }

    async fn import_items(&self, items: Vec<Item>) -> Result<usize> {
        let seqs = self.next_seq.clone();
        let Some(stage) = self.import_stage.lock().clone() else {
            // Not begun: written as any batch is.
            return self
                .write(move |conn| insert_new_items(conn, &seqs, &items))
                .await;
        };
        let rows = tokio::task::spawn_blocking(move || stage.lock().add(&seqs, &items))
            .await
            .map_err(|e| StoreError::Task("staging an import's rows", e))??;
        let staged = rows.len();
        let queue = self.search_build.lock().as_ref().map(SearchBuild::queue);
        if let Some(queue) = queue {
            queue.add(rows).await?;
        }
        Ok(staged)
    }

    fn stages_imports(&self) -> bool {
        true
    }

    async fn finish_import(&self, keep: bool) -> Result<()> {
        let Some(stage) = self.import_stage.lock().take() else {
            return Ok(());
        };
        let stage = Arc::try_unwrap(stage)
            .map_err(|_| StoreError::Gone("the import's stage is still in use"))?
            .into_inner();
        let stage = self
            .write(move |conn| {
                if keep {
                    let moved = stage.move_into(conn)?;
                    tracing::debug!(moved, "import moved into the items table");
                }
                if stage.into_empty {
                    build_indexes(conn)?;
                }
                Ok(stage)
            })
            .await?;
        let build = self.search_build.lock().take();
        if let Some(build) = build {
            if keep {
                self.install(build).await?;
            } else {
                tokio::task::spawn_blocking(move || build.discard())
                    .await
                    .map_err(|e| StoreError::Task("dropping the import's search index", e))??;
            }
            self.write(|conn| {
                conn.execute("DELETE FROM meta WHERE key = 'bulk_load'", [])
                    .map(|_| ())
                    .map_err(db_error)
            })
            .await?;
        }
        tokio::task::spawn_blocking(move || stage.remove())
            .await
            .map_err(|e| StoreError::Task("removing the import's stage", e))?
    }

    async fn begin_bulk(&self, items: u64) -> Result<()> {
        // Reserve `items` seqs: position p of the load gets base - p, newest lowest.
        let base = self.next_seq.fetch_sub(items as i64, Ordering::Relaxed);
        self.bulk_base.store(base, Ordering::Relaxed);
        let empty: bool = self.read(|conn| {
            conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM items)", [], |r| r.get(0))
                .map_err(db_error)
        })?;
        if empty {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            *self.search_build.lock() = Some(SearchBuild::start(dir)?);
        }
        self.write(move |conn| {
            conn.execute_batch(DROP_SECONDARY).map_err(db_error)?;
            if !empty {
                // Each batch of the load is one sorted run of the search index: let it stay in
                // memory until the commit instead of flushing every megabyte.
                // No merging while loading: one merge of all the runs at the end is cheaper.
                conn.execute_batch(
                    "INSERT INTO items_fts(items_fts, rank) VALUES('hashsize', 268435456);
                     INSERT INTO items_fts(items_fts, rank) VALUES('automerge', 0);",
                )
                .map_err(db_error)?;
            }
            conn.execute(MARK_BULK, []).map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn bulk_users(&self, users: Vec<NewUser>) -> Result<()> {
        self.write(move |conn| {
            for user in &users {
                insert_user_row(conn, user)?;
            }
            Ok(())
        })
        .await
    }

    async fn bulk_items(&self, items: Vec<(u64, Item)>) -> Result<()> {
        let base = self.bulk_base.load(Ordering::Relaxed);
        let seq = move |position: u64| base - position as i64;
        // Indexed aside when the load has a builder.
        let queue = self.search_build.lock().as_ref().map(SearchBuild::queue);
        let index_here = queue.is_none();
        if let Some(queue) = queue {
            let rows = items
                .iter()
                .map(|(position, item)| SearchRow::of(seq(*position), item))
                .collect();
            queue.add(rows).await?;
        }
        self.write(move |conn| {
            conn.touch_all();
            for (position, item) in &items {
                insert_item_row(conn, item, seq(*position), false).map_err(db_error)?;
                if index_here {
                    conn.index(seq(*position), item);
                }
            }
            Ok(())
        })
        .await
    }

    async fn finish_bulk(&self) -> Result<()> {
        let build = self.search_build.lock().take();
        let merge_here = build.is_none();
        // Meanwhile a builder merges the search index it built.
        self.write(move |conn| {
            let started = std::time::Instant::now();
            // The index sort spills to a temporary file rather than to memory, on one thread
            // (the search index builder has the other core). Measured on 1M items against
            // in-memory spills with 4 sorter threads: indexes 3.7 -> 3.0 s, seed peak RSS 300
            // -> 249 MB (4 threads on file: 2.7 s but 294 MB).
            conn.execute_batch("PRAGMA temp_store=FILE;").map_err(db_error)?;
            let built = conn.execute_batch(SECONDARY).map_err(db_error);
            conn.execute_batch("PRAGMA temp_store=MEMORY;").map_err(db_error)?;
            built?;
            let indexed = started.elapsed();
            if merge_here {
                // The search index was filled batch by batch during the load.
                conn.execute_batch(
                    "INSERT INTO items_fts(items_fts) VALUES('optimize');
                     INSERT INTO items_fts(items_fts, rank) VALUES('hashsize', 1048576);",
                )
                .map_err(db_error)?;
            }
            tracing::debug!(?indexed, search = ?(started.elapsed() - indexed), "bulk load indexes built");
            Ok(())
        })
        .await?;
        if let Some(build) = build {
            self.install(build).await?;
        }
        self.write(|conn| {
            conn.execute_batch(
                "INSERT INTO items_fts(items_fts, rank) VALUES('automerge', 8);
                 DELETE FROM meta WHERE key = 'bulk_load';",
            )
            .map_err(db_error)
        })
        .await
    }
}

impl SqliteStore {
    /// Copies a search index built aside into the store, on a blocking thread.
    async fn install(&self, build: SearchBuild) -> Result<()> {
        let database = self.path.clone();
        tokio::task::spawn_blocking(move || build.install(&database))
            .await
            .map_err(|e| StoreError::Task("the search index copy", e))?
    }
}
