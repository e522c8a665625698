//! The embedded store: SQLite in WAL mode, one writer thread with group commit, pooled readers.
//!
//! Why this shape:
//! - SQLite allows one writer at a time, so all writes go to one thread that drains its queue into
//!   a single transaction (group commit): many concurrent writers share one fsync.
//! - Each write runs in its own savepoint, so one failing write (say, a duplicate email) does not
//!   undo the others in its batch, and a caller gets its reply only after the batch committed:
//!   a 2xx always means the write is on disk (WAL; `synchronous=NORMAL` survives a process crash,
//!   `--sync full` also a power loss).
//! - Point reads use a small pool of connections and run on the calling task: they take
//!   microseconds, less than a hop to a blocking thread would cost. Reads whose cost grows with
//!   the data run on blocking threads ([`ReadPool`]): listings read from the database on one
//!   pool, searches and deep pages on another, with a time budget (`--search-timeout`), so the
//!   runtime's threads never wait on them and cheap reads never queue behind expensive ones.
//! - A full disk fails writes with `InsufficientStorage` (507) and makes [`Store::ping`] (so
//!   `/readyz`) fail until a probe write to the data directory succeeds again.
//! - Items are stored clustered by `(user_id, id)` with time-ordered UUIDv7 ids: a user's newest
//!   items (the hot read, `/info/{uid}`) sit side by side on one or two pages, newest last.
//!   A unique index on `id` serves reads by id, and an integer `seq` (unique, indexed) is what
//!   the FTS5 search index points at.
//! - The search index keeps only which rows hold a word (`detail='none'`): search matches all
//!   words anywhere, which needs no positions, and the index builds several times faster.
//!
//! Where things are: [`connection`] (tunables, opening a connection), [`schema`], [`rows`] (row
//! mapping), [`writer`] (the writer thread and its batches), [`users`], [`items`], [`jobs`] and
//! [`search`] (the statements of each), [`bulk`] (bulk loading), [`import`] (imports, staged),
//! [`errors`] (SQLite's errors mapped). This file holds the store itself: opening it, and which
//! connection, pool or write each operation of the [`Store`] trait goes to.

mod bulk;
mod connection;
mod errors;
mod import;
mod items;
mod jobs;
mod rows;
mod schema;
mod search;
mod users;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::Connection;
use uuid::Uuid;

use self::connection::open_connection;
use self::errors::probe_space;
use self::writer::{writer_loop, WriteJob};
use super::checkpointer;
use super::pool::ReadPool;
use super::recent::RecentItems;
use super::search_build::{self, SearchBuild};
use super::{Credentials, ExportCursor, Store};
use crate::domain::{
    to_millis, Item, ItemList, ItemPatch, Job, JobOutcome, JobState, NewJob, NewUser, Page,
    Principal, SearchQuery, TokenHash, User, UserPatch,
};
use crate::error::{Error, Result};

pub use self::connection::SqliteOptions;
// For the store's other SQLite parts (checkpointer, bulk search index builder).
pub(super) use self::errors::db_error;
pub use self::errors::StoreError;
pub(super) use self::rows::SearchRow;
pub(super) use self::schema::SEARCH_TABLE;

const DB_FILE: &str = "gorgon.db";
const LOCK_FILE: &str = "gorgon.lock";

/// How long a search may run at normal priority before it is moved to the heavy pool.
const SEARCH_SLICE: std::time::Duration = std::time::Duration::from_millis(3);

/// Searches deeper than this (by offset) skip the normal-priority slice.
const QUICK_SEARCH_MAX_OFFSET: u32 = 100;

/// A user listing deeper than this many items runs with searches, in the heavy pool.
const DEEP_OFFSET: u32 = 1000;

/// The embedded store. Owns its data directory exclusively (a lock file) while open.
pub struct SqliteStore {
    path: PathBuf,
    /// Point reads, on the calling task.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Listings read from the database, on blocking threads.
    pages: Arc<ReadPool>,
    /// Searches, deep pages and full counts, on blocking threads, with a time budget.
    heavy: Arc<ReadPool>,
    /// Searches' first slice, at normal priority: a connection of its own, so neither listings
    /// nor the heavy pool wait for it.
    quick: Arc<ReadPool>,
    search_timeout: Option<std::time::Duration>,
    /// The last write failed for want of disk space (cleared by a successful commit or probe).
    storage_full: Arc<AtomicBool>,
    /// Next `seq` for a new item; only the writer thread takes from it. `seq` counts down,
    /// so that ascending `seq` is newest first: the order in which FTS5 walks a match lazily
    /// (descending would make it load a common word's whole list for every search).
    next_seq: Arc<AtomicI64>,
    /// `seq` of position 0 of the running bulk load.
    bulk_base: AtomicI64,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Users' newest items in memory; `None` when turned off.
    recent: Option<Arc<RecentItems>>,
    /// The search index of a running bulk load into an empty store, built aside.
    search_build: Mutex<Option<SearchBuild>>,
    /// The rows of a running import, staged (see [`import`]).
    import_stage: Mutex<Option<import::SharedStage>>,
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`. Fails if another process holds it.
    pub fn open(dir: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::File {
            what: "create the data directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = File::create(dir.join(LOCK_FILE)).map_err(|source| StoreError::File {
            what: "create the lock file",
            path: dir.join(LOCK_FILE),
            source,
        })?;
        if lock.try_lock().is_err() {
            return Err(Error::Conflict(format!(
                "the embedded store in {} is open in another process; one process owns it",
                dir.display()
            )));
        }
        // A bulk load's scratch search index outlived its process: the marker below rebuilds.
        search_build::remove_scratch(&dir.join(search_build::SCRATCH_FILE))?;
        // So did an import's stage: its rows never reached the store; the file is run again.
        import::remove_stage(&dir.join(import::STAGE_FILE))?;
        let path = dir.join(DB_FILE);
        // The writer maps nothing: its reads are index probes, and a bulk load's index build
        // scans the whole table, which through a mapping stayed resident in the process (365 of
        // the 590 MB peak RSS of seeding 1M items).
        let writer = open_connection(&path, &options, 0)?;
        schema::create(&writer)?;
        let next_seq: i64 = writer
            .query_row("SELECT coalesce(min(seq), 0) - 1 FROM items", [], |r| {
                r.get(0)
            })
            .map_err(db_error)?;
        let readers = (0..options.readers.max(1))
            .map(|_| open_connection(&path, &options, options.mmap_mib).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let pool = |name, size: usize, nice| {
            (0..size.max(1))
                .map(|_| open_connection(&path, &options, options.mmap_mib))
                .collect::<Result<Vec<_>>>()
                .and_then(|conns| ReadPool::new(name, conns, nice))
                .map(Arc::new)
        };
        let pages = pool("pages", options.readers, 0)?;
        let heavy = pool("heavy", options.heavy_readers, options.heavy_nice)?;
        let quick = pool("quick", 1, 0)?;
        let storage_full = Arc::new(AtomicBool::new(false));
        let recent = RecentItems::new(
            options.recent_items,
            u64::from(options.recent_mib) * 1024 * 1024,
        )
        .map(Arc::new);
        let checkpointer = match options.checkpoint_every {
            Some(every) => {
                writer
                    .execute_batch("PRAGMA wal_autocheckpoint=0")
                    .map_err(db_error)?;
                Some(checkpointer::start(
                    &path,
                    every,
                    options.checkpoint_idle,
                    u64::from(options.wal_limit_mib) * 1024 * 1024,
                )?)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel::<WriteJob>();
        let max_batch = options.max_write_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("gorgon-store-writer".into())
            .spawn({
                let recent = recent.clone();
                let storage_full = storage_full.clone();
                move || writer_loop(writer, rx, max_batch, recent, checkpointer, storage_full)
            })
            .map_err(|e| StoreError::Thread("the store writer", e))?;
        Ok(SqliteStore {
            path,
            readers,
            next_reader: AtomicUsize::new(0),
            pages,
            heavy,
            quick,
            search_timeout: options.search_timeout,
            storage_full,
            next_seq: Arc::new(AtomicI64::new(next_seq)),
            bulk_base: AtomicI64::new(next_seq),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            recent,
            search_build: Mutex::new(None),
            import_stage: Mutex::new(None),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a free read connection (or waits for one).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Some(conn) = self.readers[(start + i) % n].try_lock() {
                return f(&conn);
            }
        }
        let conn = self.readers[start].lock();
        f(&conn)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_user(&self, user: NewUser) -> Result<User> {
        self.write(move |conn| users::insert_user(conn, user)).await
    }

    async fn get_user(&self, id: Uuid) -> Result<User> {
        self.read(|conn| users::select_user(conn, id))
    }

    async fn get_credentials(&self, email: &str) -> Result<Credentials> {
        self.read(|conn| users::get_credentials(conn, email))
    }

    async fn update_user(&self, id: Uuid, patch: UserPatch) -> Result<User> {
        self.write(move |conn| users::update_user(conn, id, patch))
            .await
    }

    async fn delete_user(&self, id: Uuid) -> Result<()> {
        self.write(move |conn| users::delete_user(conn, id)).await
    }

    async fn insert_token(
        &self,
        hash: TokenHash,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let now = to_millis(Utc::now());
        self.write(move |conn| users::insert_token(conn, hash, user_id, expires_at, now))
            .await
    }

    async fn get_session(&self, hash: TokenHash) -> Result<Option<(Principal, DateTime<Utc>)>> {
        let now = to_millis(Utc::now());
        self.read(|conn| users::get_session(conn, hash, now))
    }

    async fn delete_token(&self, hash: TokenHash) -> Result<Option<Uuid>> {
        self.write(move |conn| users::delete_token(conn, hash))
            .await
    }

    async fn revoke_sessions(&self, user_id: Uuid, keep: Option<TokenHash>) -> Result<u64> {
        self.write(move |conn| users::revoke_sessions(conn, user_id, keep))
            .await
    }

    async fn insert_item(&self, item: Item) -> Result<Item> {
        let seqs = self.next_seq.clone();
        self.write(move |conn| items::insert_item(conn, &seqs, item))
            .await
    }

    async fn insert_items(&self, items: Vec<Item>) -> Result<usize> {
        let seqs = self.next_seq.clone();
        self.write(move |conn| items::insert_new_items(conn, &seqs, &items))
            .await
    }

    async fn insert_items_once(
        &self,
        key: Vec<u8>,
        expires_at: DateTime<Utc>,
        items: Vec<Item>,
    ) -> Result<usize> {
        let seqs = self.next_seq.clone();
        self.write(move |conn| items::insert_items_once(conn, &seqs, key, expires_at, items))
            .await
    }

    async fn get_item(&self, id: Uuid) -> Result<Item> {
        self.read(|conn| items::select_item(conn, id))
    }

    async fn update_item(&self, id: Uuid, owner: Uuid, patch: ItemPatch) -> Result<Item> {
        self.write(move |conn| items::update_item(conn, id, owner, patch))
            .await
    }

    async fn delete_item(&self, id: Uuid, owner: Uuid) -> Result<Item> {
        self.write(move |conn| items::delete_item(conn, id, owner))
            .await
    }

    async fn list_user_items(&self, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
        let Some(recent) = self.recent.as_ref().filter(|r| r.covers(page)) else {
            if page.offset > DEEP_OFFSET {
                return self
                    .heavy
                    .run(self.search_timeout, move |conn| {
                        items::select_user_items(conn, user_id, page)
                    })
                    .await;
            }
            return self
                .pages
                .run(None, move |conn| {
                    items::select_user_items(conn, user_id, page)
                })
                .await;
        };
        if let Some(items) = recent.get(user_id, page.limit) {
            return Ok(items.into_vec());
        }
        let ticket = recent.ticket(user_id);
        let newest = Page::new(recent.depth(), 0);
        let mut items = self
            .pages
            .run(None, move |conn| {
                items::select_user_items(conn, user_id, newest)
            })
            .await?;
        recent.fill(ticket, &items);
        items.truncate(page.limit as usize);
        Ok(items)
    }

    fn recent_user_items(&self, user_id: Uuid, page: Page) -> Option<ItemList> {
        let recent = self.recent.as_ref().filter(|r| r.covers(page))?;
        recent.get(user_id, page.limit)
    }

    /// Most searches are a first page FTS5 answers in a millisecond: they run at normal priority
    /// on a connection of their own. One still working after [`SEARCH_SLICE`], or asking for a
    /// deep offset, runs in the heavy pool at low priority within the whole budget: only the
    /// expensive ones yield to cheap reads.
    async fn search_items(&self, query: &str, page: Page) -> Result<Vec<Item>> {
        let query = search::fts_query(&SearchQuery::parse(query)?);
        // A deep offset walks every match it skips: straight to the heavy pool.
        if page.offset <= QUICK_SEARCH_MAX_OFFSET {
            let quick = {
                let query = query.clone();
                self.quick
                    .try_within(SEARCH_SLICE, move |conn| {
                        search::select_search(conn, &query, page)
                    })
                    .await?
            };
            if let Some(found) = quick {
                return Ok(found);
            }
            metrics::counter!("gorgon_store_searches_demoted_total").increment(1);
        }
        self.heavy
            .run(self.search_timeout, move |conn| {
                search::select_search(conn, &query, page)
            })
            .await
    }

    async fn sample_user_ids(&self, limit: u32) -> Result<Vec<Uuid>> {
        self.read(|conn| users::sample_user_ids(conn, limit))
    }

    async fn counts(&self) -> Result<(u64, u64)> {
        // Counting walks whole tables: no budget, but never on the runtime's threads.
        self.heavy
            .run(None, |conn| {
                let users: i64 = conn
                    .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
                    .map_err(db_error)?;
                let items: i64 = conn
                    .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
                    .map_err(db_error)?;
                Ok((users as u64, items as u64))
            })
            .await
    }

    async fn insert_job(&self, job: NewJob) -> Result<(Job, bool)> {
        self.write(move |conn| jobs::insert_job(conn, job)).await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.read(|conn| jobs::select_job(conn, id))
    }

    async fn claim_jobs(&self, lease: std::time::Duration, limit: u32) -> Result<Vec<Job>> {
        let lease = lease.as_millis().min(i64::MAX as u128) as i64;
        // Idle workers poll often: a read answers "nothing due" without costing a commit.
        let now = to_millis(Utc::now());
        let due: bool = self.read(|conn| jobs::any_due(conn, now))?;
        if !due {
            return Ok(Vec::new());
        }
        self.write(move |conn| jobs::claim_jobs(conn, lease, limit))
            .await
    }

    async fn finish_job(&self, id: Uuid, attempt: u32, outcome: JobOutcome) -> Result<Job> {
        self.write(move |conn| jobs::finish_job(conn, id, attempt, outcome))
            .await
    }

    async fn retry_job(&self, id: Uuid) -> Result<Job> {
        self.write(move |conn| jobs::retry_job(conn, id)).await
    }

    async fn list_jobs(&self, state: JobState, page: Page) -> Result<Vec<Job>> {
        self.pages
            .run(None, move |conn| jobs::list_jobs(conn, state, page))
            .await
    }

    async fn purge_jobs(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = to_millis(before);
        self.write(move |conn| jobs::purge_jobs(conn, before)).await
    }

    async fn export_items(&self, after: Option<ExportCursor>, limit: u32) -> Result<Vec<Item>> {
        self.pages
            .run(None, move |conn| {
                items::select_export_page(conn, after, limit)
            })
            .await
    }

    async fn export_users(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Credentials>> {
        self.pages
            .run(None, move |conn| {
                users::select_users_page(conn, after, limit)
            })
            .await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<()> {
        if self.writer.lock().is_none() {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        if self.storage_full.load(Ordering::Relaxed) {
            // Not ready while writes fail; ready again by itself once the disk has room.
            let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
            match tokio::task::spawn_blocking(move || probe_space(&dir)).await {
                Ok(Ok(())) => self.storage_full.store(false, Ordering::Relaxed),
                Ok(Err(e)) => {
                    return Err(Error::InsufficientStorage(format!(
                        "the store's disk is full ({e}): writes fail until space is freed"
                    )))
                }
                Err(e) => return Err(StoreError::Task("the space probe", e).into()),
            }
        }
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(db_error)
        })
    }

    async fn close(&self) {
        drop(self.writer.lock().take());
        let thread = self.writer_thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
