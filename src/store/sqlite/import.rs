//! Imports (`gorgon import items`): rows staged as they come, moved into the items table in key
//! order at the end.
//!
//! Why: an import's rows come in the file's order (usually time order, owners mixed), while the
//! items table is clustered by `(user_id, id)`. Inserted as they came, each row landed on a
//! random page of the table, and every commit wrote each page it touched to the log again: a
//! 200k-row file in time order imported at half the rate of the same rows sorted by owner, most
//! of it the kernel copying pages. So rows are appended to a scratch database beside the store
//! (`import-stage.db`, no journal: it is thrown away if anything goes wrong) while the file is
//! read, and at the end moved into the table in one pass sorted by `(user_id, id)`, appending
//! as a seed does.
//!
//! Idempotency is decided while staging, so each batch's counts are final: an id already in the
//! store (probed through the `id` index) or already staged (a unique index of the stage) is
//! "existing". Every staged row is then new, and the move cannot meet a conflict.
//!
//! Into an empty store the secondary indexes are set aside and built once after the move, and
//! the search index is built aside while rows are staged (`search_build`), as for a seed; the
//! `bulk_load` marker makes an interrupted import rebuild the search index on the next open.
//! Into a store that holds items, the indexes stay and the new rows are indexed after the move,
//! in `seq` order (one FTS5 flush per megabyte, not per row). An import that dies before its
//! move leaves the store as it was (the scratch file is removed on the next open): running the
//! file again imports it.
//!
//! All or nothing comes with the stage: nothing reaches the items table before the move, so an
//! import that must store nothing if any row is bad (`--on-error abort`) reads its file once and
//! drops the stage if it met a bad row, instead of checking the whole file in a pass of its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OptionalExtension};

use super::errors::db_error;
use super::items::insert_item_row;
use super::rows::SearchRow;
use super::schema::{DROP_SECONDARY, SECONDARY};
use super::writer::Tx;
use crate::domain::Item;
use crate::error::Result;

/// The scratch database of a running import, beside the store's. Its table is called `items`
/// like the store's (a plain table, in arrival order, with a unique index on `id`), so a row is
/// staged by the very statement that inserts an item.
pub(super) const STAGE_FILE: &str = "import-stage.db";

const STAGE_SCHEMA: &str = "
    PRAGMA journal_mode=OFF;
    PRAGMA synchronous=OFF;
    PRAGMA temp_store=FILE;
    CREATE TABLE items (
        id BLOB NOT NULL, user_id BLOB NOT NULL, seq INTEGER NOT NULL, title TEXT NOT NULL,
        body TEXT NOT NULL, url TEXT, ts INTEGER NOT NULL, lat REAL, lon REAL,
        keywords TEXT NOT NULL, extra TEXT NOT NULL
    );
    CREATE UNIQUE INDEX items_id ON items(id);";

/// The rows of a running import, and how to tell which ids the store has already.
pub(super) struct Stage {
    conn: Connection,
    /// A read connection to the store, when it held items at the start (else nothing to probe).
    probe: Option<Connection>,
    /// The store held no items at the start: indexes set aside, search index built aside.
    pub(super) into_empty: bool,
    path: PathBuf,
}

impl Stage {
    /// Creates the scratch database (replacing a leftover one).
    pub(super) fn create(dir: &Path, probe: Option<Connection>) -> Result<Stage> {
        let path = dir.join(STAGE_FILE);
        remove_stage(&path)?;
        let conn = Connection::open(&path).map_err(db_error)?;
        conn.execute_batch(STAGE_SCHEMA).map_err(db_error)?;
        Ok(Stage {
            conn,
            into_empty: probe.is_none(),
            probe,
            path,
        })
    }

    /// Stages the items whose ids neither the store nor the stage has, each with the next
    /// `seq`; returns their search rows (what the search index will hold of them).
    pub(super) fn add(&mut self, seqs: &AtomicI64, items: &[Item]) -> Result<Vec<SearchRow>> {
        let tx = self.conn.transaction().map_err(db_error)?;
        let mut added = Vec::with_capacity(items.len());
        {
            let mut stored = match &self.probe {
                Some(probe) => Some(
                    probe
                        .prepare_cached("SELECT 1 FROM items WHERE id = ?1")
                        .map_err(db_error)?,
                ),
                None => None,
            };
            for item in items {
                if let Some(stored) = stored.as_mut() {
                    let found: Option<i64> = stored
                        .query_row([item.id], |r| r.get(0))
                        .optional()
                        .map_err(db_error)?;
                    if found.is_some() {
                        continue;
                    }
                }
                let seq = seqs.fetch_sub(1, Ordering::Relaxed);
                if insert_item_row(&tx, item, seq, true).map_err(db_error)? == 1 {
                    added.push(SearchRow::of(seq, item));
                }
            }
        }
        tx.commit().map_err(db_error)?;
        Ok(added)
    }

    /// Moves every staged row into the items table, in `(user_id, id)` order; into a store that
    /// held items, then indexes them for search in `seq` order. One transaction: all or none.
    pub(super) fn move_into(&self, tx: &Tx<'_>) -> Result<u64> {
        tx.touch_all();
        let moved = copy_rows(
            &self.conn,
            "SELECT user_id, id, seq, title, body, url, ts, lat, lon, keywords, extra
             FROM items ORDER BY user_id, id",
            tx,
            "INSERT INTO items (user_id, id, seq, title, body, url, ts, lat, lon, keywords, extra)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        if !self.into_empty {
            copy_rows(
                &self.conn,
                "SELECT seq, title, body, keywords FROM items ORDER BY seq",
                tx,
                "INSERT INTO items_fts(rowid, title, body, keywords) VALUES (?1, ?2, ?3, ?4)",
            )?;
        }
        Ok(moved)
    }

    /// Closes and deletes the scratch database.
    pub(super) fn remove(self) -> Result<()> {
        let path = self.path.clone();
        drop(self);
        remove_stage(&path)
    }
}

/// Runs `insert` on `to` for each row `select` reads from `from`, its values as they are;
/// how many rows.
fn copy_rows(from: &Connection, select: &str, to: &Connection, insert: &str) -> Result<u64> {
    let mut rows = from.prepare(select).map_err(db_error)?;
    let columns = rows.column_count();
    let mut insert = to.prepare(insert).map_err(db_error)?;
    let mut cursor = rows.query([]).map_err(db_error)?;
    let mut copied = 0;
    while let Some(row) = cursor.next().map_err(db_error)? {
        let values = (0..columns)
            .map(|i| row.get_ref(i).map(ToSqlOutput::Borrowed))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error)?;
        insert
            .execute(rusqlite::params_from_iter(values))
            .map_err(db_error)?;
        copied += 1;
    }
    Ok(copied)
}

/// Sets the secondary indexes aside (an import into an empty store builds them after its move).
pub(super) fn set_indexes_aside(tx: &Tx<'_>) -> Result<()> {
    tx.execute_batch(DROP_SECONDARY).map_err(db_error)
}

/// Builds the secondary indexes, their sort spilling to a file rather than memory (as a seed's).
pub(super) fn build_indexes(tx: &Tx<'_>) -> Result<()> {
    tx.execute_batch("PRAGMA temp_store=FILE;")
        .map_err(db_error)?;
    let built = tx.execute_batch(SECONDARY).map_err(db_error);
    tx.execute_batch("PRAGMA temp_store=MEMORY;")
        .map_err(db_error)?;
    built
}

/// Removes a scratch database left by an import that did not finish (or this one's).
pub(super) fn remove_stage(path: &Path) -> Result<()> {
    crate::store::search_build::remove_scratch(path)
}

/// The running import's stage, shared with the blocking threads that stage batches.
pub(super) type SharedStage = Arc<Mutex<Stage>>;
