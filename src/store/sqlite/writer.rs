//! The one writer: a thread that takes queued writes and commits them in batches (group commit),
//! each write in a savepoint of its own, with the search index's changes of a batch applied just
//! before its commit. A caller's reply comes once its batch has committed.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use rusqlite::{params, Connection};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::errors::{commit_error, db_error, insufficient_storage, StoreError};
use super::rows::SearchRow;
use super::SqliteStore;
use crate::domain::Item;
use crate::error::{Error, Result};
use crate::store::checkpointer::Checkpointer;
use crate::store::recent::RecentItems;

pub(super) type Finish = Box<dyn FnOnce(Option<&Error>) + Send>;
pub(super) type WriteJob = Box<dyn FnOnce(&Tx<'_>) -> Finish + Send>;

/// A change to the search index, applied when its batch commits.
enum SearchChange {
    Add(SearchRow),
    Remove(SearchRow),
}

/// The writer's connection during one batch, with the search-index changes of its writes.
///
/// Why not triggers: FTS5 flushes its pending terms to a new segment at every savepoint, and
/// every write runs in one, so triggers made each write flush and merge the index (a third of
/// the writer's time under load). Collected here, the changes of a whole batch are applied
/// together just before its commit: one flush per batch.
///
/// Every write that changes a user's items calls [`Tx::touch`] (or [`Tx::touch_all`]), so the
/// writer can forget those users' [`RecentItems`] lists once the batch has committed.
pub(super) struct Tx<'c> {
    conn: &'c Connection,
    search: RefCell<Vec<SearchChange>>,
    touched: RefCell<Touched>,
    /// A write of the batch failed for want of disk space.
    storage_full: Cell<bool>,
}

/// Whose items a batch changed.
#[derive(Default)]
struct Touched {
    users: Vec<Uuid>,
    all: bool,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Tx<'_> {
    /// The user's items changed in this batch.
    pub(super) fn touch(&self, user_id: Uuid) {
        self.touched.borrow_mut().users.push(user_id);
    }

    /// Anyone's items may have changed in this batch.
    pub(super) fn touch_all(&self) {
        self.touched.borrow_mut().all = true;
    }

    pub(super) fn index(&self, seq: i64, item: &Item) {
        self.search
            .borrow_mut()
            .push(SearchChange::Add(SearchRow::of(seq, item)));
    }

    pub(super) fn unindex(&self, row: SearchRow) {
        self.search.borrow_mut().push(SearchChange::Remove(row));
    }

    fn apply_search_changes(&self) -> rusqlite::Result<()> {
        let mut changes = std::mem::take(&mut *self.search.borrow_mut());
        if changes.is_empty() {
            return Ok(());
        }
        // FTS5 flushes its pending terms whenever a rowid is lower than the last one written;
        // in ascending order the whole batch is flushed once, at commit. The sort is stable, so
        // a removal and re-add of one row keep their order.
        changes.sort_by_key(|c| match c {
            SearchChange::Add(row) | SearchChange::Remove(row) => row.seq,
        });
        let mut add = self.conn.prepare_cached(
            "INSERT INTO items_fts(rowid, title, body, keywords) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut remove = self.conn.prepare_cached(
            "INSERT INTO items_fts(items_fts, rowid, title, body, keywords)
             VALUES ('delete', ?1, ?2, ?3, ?4)",
        )?;
        for change in changes {
            let (statement, row) = match &change {
                SearchChange::Add(row) => (&mut add, row),
                SearchChange::Remove(row) => (&mut remove, row),
            };
            statement.execute(params![row.seq, row.title, row.body, row.keywords])?;
        }
        Ok(())
    }
}

/// Runs `f` in a savepoint: its changes (search changes included) are kept only if it succeeds.
fn in_savepoint<T>(tx: &Tx<'_>, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
    let mark = tx.search.borrow().len();
    tx.execute_batch("SAVEPOINT op").map_err(db_error)?;
    let result = f(tx);
    if tx.is_autocommit() {
        // SQLite rolled the whole transaction back (it may, on a full disk or an I/O error):
        // there is no savepoint left, and the writer fails the batch.
        tx.search.borrow_mut().truncate(mark);
        return result.and(Err(StoreError::RolledBack.into()));
    }
    let end = if result.is_ok() {
        "RELEASE op"
    } else {
        tx.search.borrow_mut().truncate(mark);
        "ROLLBACK TO op; RELEASE op"
    };
    tx.execute_batch(end).map_err(db_error)?;
    result
}

pub(super) fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<WriteJob>,
    max_batch: usize,
    recent: Option<Arc<RecentItems>>,
    checkpointer: Option<Checkpointer>,
    storage_full: Arc<AtomicBool>,
) {
    while let Ok(first) = jobs.recv() {
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        let tx = Tx {
            conn: &conn,
            search: RefCell::new(Vec::new()),
            touched: RefCell::new(Touched::default()),
            storage_full: Cell::new(false),
        };
        let mut finishes: Vec<Finish> = Vec::with_capacity(16);
        finishes.push(first(&tx));
        // A transaction SQLite rolled back takes no more writes.
        while finishes.len() < max_batch && !conn.is_autocommit() {
            match jobs.try_recv() {
                Ok(job) => finishes.push(job(&tx)),
                Err(_) => break,
            }
        }
        let outcome = match began {
            Err(e) => Err(commit_error(e)),
            Ok(()) if conn.is_autocommit() => Err(if tx.storage_full.get() {
                insufficient_storage()
            } else {
                StoreError::RolledBack.into()
            }),
            Ok(()) => tx
                .apply_search_changes()
                .and_then(|_| conn.execute_batch("COMMIT"))
                .map_err(commit_error),
        };
        if tx.storage_full.get() || matches!(outcome, Err(Error::InsufficientStorage(_))) {
            storage_full.store(true, Ordering::Relaxed);
        } else if outcome.is_ok() {
            storage_full.store(false, Ordering::Relaxed);
        }
        metrics::histogram!("gorgon_store_write_batch_size").record(finishes.len() as f64);
        // Before any write of the batch is answered (a rolled-back batch changed nothing, and
        // forgetting lists then costs only a re-read).
        if let Some(recent) = &recent {
            let touched = tx.touched.take();
            if touched.all {
                recent.clear();
            } else {
                touched.users.into_iter().for_each(|u| recent.invalidate(u));
            }
        }
        match outcome {
            Ok(()) => {
                if let Some(checkpointer) = &checkpointer {
                    checkpointer.signal.committed();
                }
                finishes.into_iter().for_each(|f| f(None))
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                finishes.into_iter().for_each(|f| f(Some(&e)));
            }
        }
    }
    // Every sender is gone: fold the WAL back so the next start opens quickly.
    if let Some(checkpointer) = checkpointer {
        checkpointer.stop();
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}

impl SqliteStore {
    /// Queues `f` for the writer; resolves once its batch has committed.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let job: WriteJob = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            if matches!(result, Err(Error::InsufficientStorage(_))) {
                conn.storage_full.set(true);
            }
            Box::new(move |commit_error| {
                let reply = match commit_error {
                    None => result,
                    Some(e) => Err(e.clone()),
                };
                let _ = tx.send(reply);
            })
        });
        {
            let writer = self.writer.lock();
            let sender = writer
                .as_ref()
                .ok_or_else(|| Error::Unavailable("the store is closed".into()))?;
            sender
                .send(job)
                .map_err(|_| Error::Unavailable("the store writer stopped".into()))?;
        }
        rx.await
            .map_err(|_| Error::Unavailable("the store writer stopped".into()))?
    }
}
