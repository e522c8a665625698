//! The search index of a bulk load into an empty store, built on a thread and in a scratch
//! database of its own while the store's writer inserts the rows, then copied in.
//!
//! Why: a bulk load is bound by the one writer thread SQLite allows, and nearly half of its work
//! was the search index (tokenizing, flushing, the final merge) while the second core sat idle.
//! An FTS5 index lives in ordinary "shadow" tables (`items_fts_data`, `items_fts_idx`), so an
//! index built by an identical FTS5 table elsewhere can be copied in row for row. Seeding 1M
//! items went from 11.0-11.8 s to the figure in the README's Performance section.
//!
//! Safety: the store's `bulk_load` marker stays set until the copy has committed, so a crash at
//! any point makes the next open rebuild the index from the items themselves. The copy runs on
//! a connection of its own: FTS5 notices changes made by other connections (`data_version`) and
//! drops what it had cached, but not changes made through its own connection with plain SQL.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::sqlite::{db_error, SearchRow, StoreError, SEARCH_TABLE};
use crate::error::{Error, Result};

/// The scratch database, next to the store's.
pub(super) const SCRATCH_FILE: &str = "search-build.db";

/// Batches of rows in flight to the builder: enough to keep it busy, little memory.
const QUEUE: usize = 2;

pub(super) struct SearchBuild {
    rows: mpsc::Sender<Vec<SearchRow>>,
    thread: JoinHandle<Result<()>>,
    scratch: PathBuf,
}

impl SearchBuild {
    /// Creates the scratch database (replacing a leftover one) and starts the builder.
    pub fn start(dir: &Path) -> Result<SearchBuild> {
        let scratch = dir.join(SCRATCH_FILE);
        remove_scratch(&scratch)?;
        let conn = Connection::open(&scratch).map_err(db_error)?;
        // A scratch file: if anything goes wrong it is thrown away and the index rebuilt.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=OFF;
             PRAGMA synchronous=OFF;
             {SEARCH_TABLE}
             INSERT INTO items_fts(items_fts, rank) VALUES('hashsize', 268435456);
             INSERT INTO items_fts(items_fts, rank) VALUES('automerge', 0);"
        ))
        .map_err(db_error)?;
        let (rows, received) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("gorgon-search-build".into())
            .spawn(move || build(conn, received))
            .map_err(|e| StoreError::Thread("the search index builder", e))?;
        Ok(SearchBuild {
            rows,
            thread,
            scratch,
        })
    }

    /// Where to queue rows for the index; queuing waits while the builder is two batches behind.
    /// Every queue must be dropped before [`install`](Self::install), which waits for the last.
    pub fn queue(&self) -> SearchQueue {
        SearchQueue(self.rows.clone())
    }

    /// Waits for the builder to index and merge everything, then copies the index into the
    /// store at `database` (whose search index must be empty) and removes the scratch file.
    /// Blocking: call it on a blocking thread.
    pub fn install(self, database: &Path) -> Result<()> {
        drop(self.rows);
        let started = std::time::Instant::now();
        self.thread
            .join()
            .map_err(|_| Error::from(StoreError::Gone("the search index builder panicked")))??;
        let merged = started.elapsed();
        let conn = Connection::open(database).map_err(db_error)?;
        conn.execute(
            "ATTACH DATABASE ?1 AS build",
            [self.scratch.display().to_string()],
        )
        .map_err(db_error)?;
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             DELETE FROM main.items_fts_data;
             DELETE FROM main.items_fts_idx;
             INSERT INTO main.items_fts_data (id, block) SELECT id, block FROM build.items_fts_data;
             INSERT INTO main.items_fts_idx (segid, term, pgno)
                 SELECT segid, term, pgno FROM build.items_fts_idx;
             COMMIT;
             DETACH DATABASE build;",
        )
        .map_err(db_error)?;
        drop(conn);
        tracing::debug!(waited = ?merged, copied = ?(started.elapsed() - merged), "search index installed");
        remove_scratch(&self.scratch)
    }
}

impl SearchBuild {
    /// Stops the builder and throws its index away (an import that stores nothing). Blocking.
    pub fn discard(self) -> Result<()> {
        drop(self.rows);
        // The builder's own outcome does not matter: its index is not used.
        let _ = self.thread.join();
        remove_scratch(&self.scratch)
    }
}

pub(super) struct SearchQueue(mpsc::Sender<Vec<SearchRow>>);

impl SearchQueue {
    pub async fn add(self, rows: Vec<SearchRow>) -> Result<()> {
        self.0
            .send(rows)
            .await
            .map_err(|_| StoreError::Gone("the search index builder stopped").into())
    }
}

/// Indexes each batch in one transaction, rowids ascending (FTS5 flushes its pending terms
/// whenever a rowid is lower than the last), then merges the batches' segments into one.
fn build(conn: Connection, mut received: mpsc::Receiver<Vec<SearchRow>>) -> Result<()> {
    while let Some(mut rows) = received.blocking_recv() {
        rows.sort_unstable_by_key(|row| row.seq);
        conn.execute_batch("BEGIN").map_err(db_error)?;
        {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO items_fts(rowid, title, body, keywords) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(db_error)?;
            for row in &rows {
                insert
                    .execute(rusqlite::params![
                        row.seq,
                        row.title,
                        row.body,
                        row.keywords
                    ])
                    .map_err(db_error)?;
            }
        }
        conn.execute_batch("COMMIT").map_err(db_error)?;
    }
    conn.execute_batch("INSERT INTO items_fts(items_fts) VALUES('optimize');")
        .map_err(db_error)
}

/// Removes a scratch database (a load's search index, an import's stage) left by an earlier
/// process, or by this one once done with it.
pub(super) fn remove_scratch(scratch: &Path) -> Result<()> {
    match std::fs::remove_file(scratch) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::File {
            what: "remove",
            path: scratch.to_path_buf(),
            source,
        }
        .into()),
    }
}
