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

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::checkpointer::{self, Checkpointer};
use super::pool::ReadPool;
use super::recent::RecentItems;
use super::search_build::{self, SearchBuild};
use super::{BulkLoad, Credentials, Store};
use crate::domain::{
    from_millis, to_millis, Extra, Item, ItemPatch, Job, JobOutcome, JobState, Location, NewJob,
    NewUser, Page, Principal, SearchQuery, TokenHash, User, UserPatch,
};
use crate::error::{Error, Result};

const DB_FILE: &str = "gorgon.db";
const LOCK_FILE: &str = "gorgon.lock";

/// Tunables of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Number of read connections.
    pub readers: usize,
    /// Most writes committed in one transaction.
    pub max_write_batch: usize,
    /// `synchronous=FULL`: survive power loss, not only a process crash.
    pub sync_full: bool,
    /// SQLite page cache per connection, in MiB.
    pub cache_mib: u32,
    /// Bytes of the database file each connection maps into memory (0: plain reads).
    /// A mapping is per connection, so resident memory counts shared pages once per reader.
    pub mmap_mib: u32,
    /// Newest items kept in memory per user (0: none), see [`RecentItems`].
    pub recent_items: u32,
    /// Memory those lists may take, in MiB (0: none).
    pub recent_mib: u32,
    /// How often a thread of its own checkpoints the write-ahead log after commits (`None`:
    /// SQLite's automatic checkpoints, on the writer), see [`super::checkpointer`].
    pub checkpoint_every: Option<std::time::Duration>,
    /// After this long without commits the checkpointer folds the whole log into the database
    /// and truncates it to nothing, so a burst of writes does not leave a large log behind.
    pub checkpoint_idle: std::time::Duration,
    /// Size the write-ahead log is cut back to whenever a checkpoint lets it start over, in MiB
    /// (SQLite's `journal_size_limit`; it otherwise keeps the largest size it ever reached).
    pub wal_limit_mib: u32,
    /// Connections, each with a thread of its own, for searches and deep pages, apart from
    /// those of point reads and first pages. Each busy one takes a core.
    pub heavy_readers: usize,
    /// Scheduling priority of the heavy readers' threads (Linux nice, 0 to 19).
    pub heavy_nice: i32,
    /// Time budget of one search or deep page, waiting for a connection included (`None`:
    /// unbounded); past it the query is stopped with `SearchTimeout`.
    pub search_timeout: Option<std::time::Duration>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            readers: 2,
            max_write_batch: 512,
            sync_full: false,
            cache_mib: 16,
            mmap_mib: 0,
            recent_items: 10,
            recent_mib: 64,
            checkpoint_every: Some(std::time::Duration::from_millis(200)),
            checkpoint_idle: std::time::Duration::from_secs(1),
            wal_limit_mib: 64,
            heavy_readers: 2,
            heavy_nice: 19,
            search_timeout: Some(std::time::Duration::from_secs(2)),
        }
    }
}

type Finish = Box<dyn FnOnce(Option<&Error>) + Send>;
type WriteJob = Box<dyn FnOnce(&Tx<'_>) -> Finish + Send>;

/// A change to the search index, applied when its batch commits.
enum SearchChange {
    Add(SearchRow),
    Remove(SearchRow),
}

/// What the search index holds of an item, exactly as stored.
pub(super) struct SearchRow {
    pub(super) seq: i64,
    pub(super) title: String,
    pub(super) body: String,
    pub(super) keywords: String,
}

impl SearchRow {
    fn of(seq: i64, item: &Item) -> SearchRow {
        SearchRow {
            seq,
            title: item.title.clone(),
            body: item.body.clone(),
            keywords: keywords_json(&item.keywords),
        }
    }
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
struct Tx<'c> {
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
    fn touch(&self, user_id: Uuid) {
        self.touched.borrow_mut().users.push(user_id);
    }

    /// Anyone's items may have changed in this batch.
    fn touch_all(&self) {
        self.touched.borrow_mut().all = true;
    }

    fn index(&self, seq: i64, item: &Item) {
        self.search
            .borrow_mut()
            .push(SearchChange::Add(SearchRow::of(seq, item)));
    }

    fn unindex(&self, row: SearchRow) {
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

fn search_rows(conn: &Connection, sql: &str, key: impl rusqlite::Params) -> Result<Vec<SearchRow>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db_error)?;
    let rows = stmt
        .query_map(key, |r| {
            Ok(SearchRow {
                seq: r.get(0)?,
                title: r.get(1)?,
                body: r.get(2)?,
                keywords: r.get(3)?,
            })
        })
        .map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}

const SEARCH_ROW_BY_ID: &str = "SELECT seq, title, body, keywords FROM items WHERE id = ?1";

/// How long a search may run at normal priority before it is moved to the heavy pool.
const SEARCH_SLICE: std::time::Duration = std::time::Duration::from_millis(3);

/// Searches deeper than this (by offset) skip the normal-priority slice.
const QUICK_SEARCH_MAX_OFFSET: u32 = 100;

/// A user listing deeper than this many items runs with searches, in the heavy pool.
const DEEP_OFFSET: u32 = 1000;

/// Bytes the readiness probe writes to the data directory while the disk is full: this much
/// free space again and the store reports ready.
const SPACE_PROBE_BYTES: usize = 1 << 20;
const SPACE_PROBE_FILE: &str = "gorgon.space-probe";

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
    _lock: File,
}

/// The search index's definition: one literal for the schema and for a bulk load's scratch copy
/// ([`super::search_build`]), whose tables must match row for row.
macro_rules! search_table {
    () => {
        "CREATE VIRTUAL TABLE IF NOT EXISTS items_fts USING fts5(
    title, body, keywords, content='items', content_rowid='seq', detail='none', columnsize=0
);"
    };
}
pub(super) const SEARCH_TABLE: &str = search_table!();

const SCHEMA: &str = concat!(
    r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    grp INTEGER NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    extra TEXT NOT NULL,
    password_hash TEXT NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users(email);
-- One account per look of an address (`Email::look_alike_key`): `alıce@` cannot join `alice@`.
CREATE TABLE IF NOT EXISTS email_keys (
    key TEXT PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS email_keys_user ON email_keys(user_id);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user_id);
CREATE TABLE IF NOT EXISTS items (
    user_id BLOB NOT NULL,
    id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    url TEXT,
    ts INTEGER NOT NULL,
    lat REAL,
    lon REAL,
    keywords TEXT NOT NULL,
    extra TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
) WITHOUT ROWID;
-- run_after is when the job is next due: the next attempt of a queued or failed job, the end of a
-- running job's lease (then it is claimed again), the finish time of a done or dead one (purge).
-- One index over (state, run_after) thus serves claiming, lease expiry and purging.
CREATE TABLE IF NOT EXISTS jobs (
    id BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    run_after INTEGER NOT NULL,
    idempotency_key TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, run_after);
-- Ingest signatures already used, each until its window ends (replays are refused); `first_item`
-- tells a redelivered batch (the same items) from a replayed request (new ids).
CREATE TABLE IF NOT EXISTS ingest_seen (
    key BLOB PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL,
    first_item BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ingest_seen_expiry ON ingest_seen(expires_at);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(user_id, idempotency_key);
"#,
    search_table!(),
    "\n"
);

/// Each user's unfinished (queued, running or failed) jobs, counted as jobs change, so the
/// per-user quota reads one row rather than counting thousands. Triggers keep it exact on every
/// path that changes a job, in the same transaction. Its users are those with unfinished jobs.
const JOB_QUOTA: &str = r#"
CREATE TABLE IF NOT EXISTS job_quota (
    user_id BLOB PRIMARY KEY NOT NULL,
    unfinished INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS job_quota_insert AFTER INSERT ON jobs
WHEN NEW.state IN ('queued', 'running', 'failed') BEGIN
    INSERT INTO job_quota (user_id, unfinished) VALUES (NEW.user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET unfinished = unfinished + 1;
END;
CREATE TRIGGER IF NOT EXISTS job_quota_update AFTER UPDATE OF state ON jobs
WHEN (OLD.state IN ('queued', 'running', 'failed')) != (NEW.state IN ('queued', 'running', 'failed'))
BEGIN
    INSERT INTO job_quota (user_id, unfinished)
    VALUES (NEW.user_id, CASE WHEN NEW.state IN ('queued', 'running', 'failed') THEN 1 ELSE -1 END)
    ON CONFLICT (user_id) DO UPDATE SET unfinished = unfinished + excluded.unfinished;
    DELETE FROM job_quota WHERE user_id = NEW.user_id AND unfinished <= 0;
END;
CREATE TRIGGER IF NOT EXISTS job_quota_delete AFTER DELETE ON jobs
WHEN OLD.state IN ('queued', 'running', 'failed') BEGIN
    UPDATE job_quota SET unfinished = unfinished - 1 WHERE user_id = OLD.user_id;
    DELETE FROM job_quota WHERE user_id = OLD.user_id AND unfinished <= 0;
END;
"#;

/// Fills `job_quota` from the jobs of a database that had none yet.
const JOB_QUOTA_BACKFILL: &str = "
    INSERT INTO job_quota (user_id, unfinished)
        SELECT user_id, count(*) FROM jobs WHERE state IN ('queued', 'running', 'failed')
        GROUP BY user_id;";

/// Secondary indexes, which bulk loading sets aside and rebuilds (the search index is kept in
/// step by the writer, see [`Tx`], and rebuilt after a bulk load).
const SECONDARY: &str = r#"
CREATE UNIQUE INDEX IF NOT EXISTS items_id ON items(id);
CREATE UNIQUE INDEX IF NOT EXISTS items_seq ON items(seq);
"#;

const DROP_SECONDARY: &str = r#"
DROP INDEX IF EXISTS items_id;
DROP INDEX IF EXISTS items_seq;
"#;

/// Rebuilds the search index in `seq` order: FTS5 flushes its in-memory terms whenever a rowid
/// comes out of order, so its own 'rebuild' (which reads in table order) would flush per row.
const REBUILD_SEARCH: &str = "
    INSERT INTO items_fts(items_fts) VALUES('delete-all');
    INSERT INTO items_fts(rowid, title, body, keywords)
        SELECT seq, title, body, keywords FROM items ORDER BY seq;";

const ITEM_COLUMNS: &str = "id, user_id, title, body, url, ts, lat, lon, keywords, extra";
const USER_COLUMNS: &str = "id, name, email, grp, admin, created_at, extra";
const JOB_COLUMNS: &str =
    "id, user_id, kind, state, payload, result, error, attempts, created_at, updated_at, run_after, idempotency_key";

pub(super) fn db_error(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            Error::Conflict("conflicts with existing data".into())
        }
        // Only a pool's progress handler interrupts statements: its time budget ran out.
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::OperationInterrupted => {
            Error::SearchTimeout("the query ran past its time budget".into())
        }
        _ if is_storage_full(&e) => {
            tracing::warn!(error = %e, "embedded store: the disk is full");
            insufficient_storage()
        }
        _ => {
            tracing::error!(error = %e, "embedded store error");
            Error::Internal(format!("store error: {e}"))
        }
    }
}

/// Whether SQLite failed for want of disk space: `SQLITE_FULL` (a write met ENOSPC), or the
/// I/O errors SQLite reports when growing a file or the shared-memory index meets it.
fn is_storage_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::DiskFull
            || f.extended_code == rusqlite::ffi::SQLITE_IOERR_WRITE
            || f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE)
}

fn insufficient_storage() -> Error {
    Error::InsufficientStorage(
        "the store's disk is full: writes fail until space is freed; reads still work".into(),
    )
}

/// The error every write of a batch gets when its commit failed.
fn commit_error(e: &rusqlite::Error) -> Error {
    if is_storage_full(e) {
        insufficient_storage()
    } else {
        Error::Internal(format!("commit failed: {e}"))
    }
}

/// Writes and removes [`SPACE_PROBE_BYTES`] in `dir`: whether the disk has room again.
fn probe_space(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(SPACE_PROBE_FILE);
    let written = File::create(&path).and_then(|mut file| {
        file.write_all(&vec![0u8; SPACE_PROBE_BYTES])?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// Opens a connection; `mmap_mib` is how much of the file it maps for reads.
fn open_connection(path: &Path, options: &SqliteOptions, mmap_mib: u32) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db_error)?;
    let sync = if options.sync_full { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous={sync};
         PRAGMA busy_timeout=5000;
         PRAGMA temp_store=MEMORY;
         PRAGMA mmap_size={};
         PRAGMA cache_size=-{};
         PRAGMA journal_size_limit={};",
        mmap_mib as u64 * 1024 * 1024,
        options.cache_mib as u64 * 1024,
        options.wal_limit_mib as u64 * 1024 * 1024
    ))
    .map_err(db_error)?;
    // The bundled SQLite has STAT4, which re-prepares a statement every time a value bound to
    // an indexed column changes (a third of a read's time). Query planner stability turns that
    // off: our queries have one right index each.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(db_error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        name: row.get(1)?,
        email: row.get(2)?,
        group: row.get(3)?,
        admin: row.get::<_, i64>(4)? != 0,
        created_at: from_millis(row.get(5)?),
        extra: Extra::from_json(&row.get::<_, String>(6)?),
    })
}

fn item_from_row(row: &Row<'_>) -> rusqlite::Result<Item> {
    let lat: Option<f64> = row.get(6)?;
    let lon: Option<f64> = row.get(7)?;
    let keywords: String = row.get(8)?;
    Ok(Item {
        id: row.get(0)?,
        user_id: row.get(1)?,
        title: row.get(2)?,
        body: row.get(3)?,
        url: row.get(4)?,
        ts: from_millis(row.get(5)?),
        location: lat.zip(lon).map(|(lat, lon)| Location { lat, lon }),
        keywords: serde_json::from_str(&keywords).unwrap_or_default(),
        extra: Extra::from_json(&row.get::<_, String>(9)?),
    })
}

/// A column that holds what we did not write: reported, never a panic.
fn bad_column(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, what.into())
}

fn json_column(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<serde_json::Value>> {
    row.get::<_, Option<String>>(column)?
        .map(|text| serde_json::from_str(&text).map_err(|e| bad_column(column, e.to_string())))
        .transpose()
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state_name: String = row.get(3)?;
    let state = JobState::parse(&state_name)
        .ok_or_else(|| bad_column(3, format!("unknown job state {state_name:?}")))?;
    let run_after = from_millis(row.get(10)?);
    Ok(Job {
        id: row.get(0)?,
        user_id: row.get(1)?,
        kind: row.get(2)?,
        state,
        payload: json_column(row, 4)?.unwrap_or_default(),
        result: json_column(row, 5)?,
        error: row.get(6)?,
        attempts: row.get(7)?,
        created_at: from_millis(row.get(8)?),
        updated_at: from_millis(row.get(9)?),
        run_after: matches!(state, JobState::Queued | JobState::Failed).then_some(run_after),
        lease_until: (state == JobState::Running).then_some(run_after),
        idempotency_key: row.get(11)?,
    })
}

fn select_job(conn: &Connection, id: Uuid) -> Result<Job> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], job_from_row).optional())
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("job"))
}

/// Refuses a new job of a user who has `cap` unfinished jobs already (a redelivered insert of a
/// stored job is not new). Inside the writer, so concurrent submissions cannot overshoot.
fn check_unfinished_jobs(conn: &Connection, job: &NewJob, cap: u32) -> Result<()> {
    let stored: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)")
        .and_then(|mut s| s.query_row([job.id], |r| r.get(0)))
        .map_err(db_error)?;
    if stored {
        return Ok(());
    }
    let unfinished: i64 = conn
        .prepare_cached("SELECT unfinished FROM job_quota WHERE user_id = ?1")
        .and_then(|mut s| s.query_row([job.user_id], |r| r.get(0)).optional())
        .map_err(db_error)?
        .unwrap_or(0);
    if unfinished >= i64::from(cap) {
        return Err(Error::rate_limited(
            format!(
                "you have {cap} unfinished jobs, the most allowed; submit more once some are done"
            ),
            UNFINISHED_JOBS_RETRY,
        ));
    }
    Ok(())
}

/// When a user at the unfinished-jobs quota is told to come back: jobs take seconds.
const UNFINISHED_JOBS_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

fn jobs_from(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<Job>> {
    let rows = stmt.query_map(params, job_from_row).map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}

fn keywords_json(keywords: &[String]) -> String {
    serde_json::to_string(keywords).unwrap_or_else(|_| "[]".into())
}

fn insert_item_row(
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

/// Fails with `Unauthorized` when the user does not exist: a write by an account deleted a moment
/// ago (whose token a node still trusted) must not leave rows nobody owns.
fn require_user(conn: &Connection, user_id: Uuid) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .and_then(|mut s| s.exists([user_id]))
        .map_err(db_error)?;
    if found {
        Ok(())
    } else {
        Err(Error::Unauthorized("this account no longer exists".into()))
    }
}

/// Inserts a batch, skipping items whose id exists; how many were new.
fn insert_new_items(tx: &Tx<'_>, seqs: &AtomicI64, items: &[Item]) -> Result<usize> {
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

/// `Conflict` when another account has an address that looks like `email`.
fn check_look_alike(conn: &Connection, key: &str, user_id: Uuid) -> Result<()> {
    let owner: Option<Uuid> = conn
        .prepare_cached("SELECT user_id FROM email_keys WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(db_error)?;
    match owner {
        Some(owner) if owner != user_id => Err(Error::Conflict(
            "an address that looks like this one is already registered".into(),
        )),
        _ => Ok(()),
    }
}

fn set_email_key(conn: &Connection, key: &str, user_id: Uuid) -> Result<()> {
    conn.prepare_cached("DELETE FROM email_keys WHERE user_id = ?1")
        .and_then(|mut s| s.execute([user_id]))
        .and_then(|_| {
            conn.prepare_cached("INSERT OR REPLACE INTO email_keys (key, user_id) VALUES (?1, ?2)")
        })
        .and_then(|mut s| s.execute(params![key, user_id]))
        .map_err(db_error)?;
    Ok(())
}

/// Inserts a user and the look of their address; `Conflict` when the email is taken or looks
/// like one that is (a redelivered insert of the same user is a `Conflict` the caller resolves).
fn insert_user_row(conn: &Connection, user: &NewUser) -> Result<()> {
    let key = user.email.look_alike_key();
    check_look_alike(conn, &key, user.id)?;
    conn.prepare_cached(
        "INSERT INTO users (id, name, email, grp, admin, created_at, extra, password_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            user.id,
            user.name.as_str(),
            user.email.as_str(),
            user.group,
            user.admin as i64,
            to_millis(user.created_at),
            user.extra.to_json(),
            user.password_hash,
        ])
    })
    .map_err(db_error)?;
    set_email_key(conn, &key, user.id)
}

/// Fills `email_keys` for the users of a database that had none yet (an older one); accounts
/// that already look alike keep working, the first one keeping the key.
fn backfill_email_keys(conn: &Connection) -> Result<()> {
    let users: Vec<(Uuid, String)> = conn
        .prepare("SELECT id, email FROM users")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db_error)?;
    let mut insert = conn
        .prepare("INSERT OR IGNORE INTO email_keys (key, user_id) VALUES (?1, ?2)")
        .map_err(db_error)?;
    for (id, email) in users {
        insert
            .execute(params![crate::domain::user::look_alike_key(&email), id])
            .map_err(db_error)?;
    }
    Ok(())
}

fn select_user(conn: &Connection, id: Uuid) -> Result<User> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], user_from_row).optional())
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("user"))
}

fn select_item(conn: &Connection, id: Uuid) -> Result<Item> {
    conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], item_from_row).optional())
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("item"))
}

/// A page of a user's items, newest first (ids are time-ordered: a cursor is a bound on them).
fn select_user_items(conn: &Connection, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
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

/// A page of the items matching an FTS5 `query`, newest first (ascending `seq`).
fn select_search(conn: &Connection, query: &str, page: Page) -> Result<Vec<Item>> {
    // Search walks the index in `seq` order, so a cursor becomes a bound on `seq`: the cursor
    // item's own, or, if it was deleted since, that of the nearest older item (included).
    let after_seq = match page.after {
        None => i64::MIN,
        Some(after) => {
            let exact: Option<i64> = conn
                .prepare_cached("SELECT seq FROM items WHERE id = ?1")
                .and_then(|mut s| s.query_row([after], |r| r.get(0)).optional())
                .map_err(db_error)?;
            let older = || -> Result<Option<i64>> {
                conn.prepare_cached("SELECT seq FROM items WHERE id < ?1 ORDER BY id DESC LIMIT 1")
                    .and_then(|mut s| s.query_row([after], |r| r.get::<_, i64>(0)).optional())
                    .map_err(db_error)
                    .map(|seq| seq.map(|s| s - 1))
            };
            match exact {
                Some(seq) => seq,
                None => match older()? {
                    Some(seq) => seq,
                    None => return Ok(Vec::new()),
                },
            }
        }
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT i.id, i.user_id, i.title, i.body, i.url, i.ts, i.lat, i.lon, i.keywords, i.extra
             FROM items_fts f JOIN items i ON i.seq = f.rowid
             WHERE items_fts MATCH ?1 AND f.rowid > ?4 ORDER BY f.rowid LIMIT ?2 OFFSET ?3",
        )
        .map_err(db_error)?;
    let rows = stmt
        .query_map(
            params![query, page.limit, page.offset, after_seq],
            item_from_row,
        )
        .map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
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
        return result.and(Err(Error::Internal(
            "the store rolled its transaction back".into(),
        )));
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

/// The FTS5 query of a search: every word quoted (so none is an operator), all of them required.
fn fts_query(query: &SearchQuery) -> String {
    let words: Vec<String> = query.words().iter().map(|w| format!("\"{w}\"")).collect();
    words.join(" ")
}

fn writer_loop(
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
            Err(e) => Err(commit_error(&e)),
            Ok(()) if conn.is_autocommit() => Err(if tx.storage_full.get() {
                insufficient_storage()
            } else {
                Error::Internal("the store rolled its transaction back".into())
            }),
            Ok(()) => tx
                .apply_search_changes()
                .and_then(|_| conn.execute_batch("COMMIT"))
                .map_err(|e| commit_error(&e)),
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
    /// Opens (creating if needed) the store in `dir`. Fails if another process holds it.
    pub fn open(dir: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock = File::create(dir.join(LOCK_FILE))
            .map_err(|e| Error::Internal(format!("cannot create lock file: {e}")))?;
        if lock.try_lock().is_err() {
            return Err(Error::Conflict(format!(
                "the embedded store in {} is open in another process; one process owns it",
                dir.display()
            )));
        }
        // A bulk load's scratch search index outlived its process: the marker below rebuilds.
        search_build::remove_scratch(&dir.join(search_build::SCRATCH_FILE))?;
        let path = dir.join(DB_FILE);
        // The writer maps nothing: its reads are index probes, and a bulk load's index build
        // scans the whole table, which through a mapping stayed resident in the process (365 of
        // the 590 MB peak RSS of seeding 1M items).
        let writer = open_connection(&path, &options, 0)?;
        let had_email_keys: bool = writer
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'email_keys')",
                [],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        let had_quota: bool = writer
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'job_quota')",
                [],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        writer.execute_batch(SCHEMA).map_err(db_error)?;
        writer.execute_batch(JOB_QUOTA).map_err(db_error)?;
        if !had_quota {
            writer.execute_batch(JOB_QUOTA_BACKFILL).map_err(db_error)?;
        }
        if !had_email_keys {
            backfill_email_keys(&writer)?;
        }
        let interrupted_bulk: Option<String> = writer
            .query_row("SELECT value FROM meta WHERE key = 'bulk_load'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_error)?;
        writer.execute_batch(SECONDARY).map_err(db_error)?;
        if interrupted_bulk.is_some() {
            tracing::warn!("a bulk load was interrupted: rebuilding the search index");
            writer
                .execute_batch(&format!(
                    "{REBUILD_SEARCH} DELETE FROM meta WHERE key = 'bulk_load';"
                ))
                .map_err(db_error)?;
        }
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
            .map_err(|e| Error::Internal(format!("cannot start the store writer: {e}")))?;
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

    /// Queues `f` for the writer; resolves once its batch has committed.
    async fn write<T, F>(&self, f: F) -> Result<T>
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

#[async_trait]
impl Store for SqliteStore {
    async fn insert_user(&self, user: NewUser) -> Result<User> {
        self.write(move |conn| {
            if let Err(e) = insert_user_row(conn, &user) {
                return match e {
                    Error::Conflict(why) => match select_user(conn, user.id) {
                        // The same id and email again: a redelivered insert; nothing changes.
                        Ok(existing) if existing.email == user.email.as_str() => Ok(existing),
                        _ if why.contains("looks like") => Err(Error::Conflict(why)),
                        _ => Err(Error::Conflict("email already registered".into())),
                    },
                    other => Err(other),
                };
            }
            select_user(conn, user.id)
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> Result<User> {
        self.read(|conn| select_user(conn, id))
    }

    async fn get_credentials(&self, email: &str) -> Result<Credentials> {
        self.read(|conn| {
            let found = conn
                .prepare_cached(&format!(
                    "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = ?1"
                ))
                .and_then(|mut s| {
                    s.query_row([email], |row| {
                        Ok(Credentials {
                            user: user_from_row(row)?,
                            password_hash: row.get(7)?,
                        })
                    })
                    .optional()
                })
                .map_err(db_error)?;
            found.ok_or_else(|| Error::not_found("user"))
        })
    }

    async fn update_user(&self, id: Uuid, patch: UserPatch) -> Result<User> {
        self.write(move |conn| {
            let mut user = select_user(conn, id)?;
            if let Some(name) = patch.name {
                user.name = name.as_str().to_string();
            }
            if let Some(email) = patch.email {
                if email.as_str() != user.email {
                    let key = email.look_alike_key();
                    check_look_alike(conn, &key, id)?;
                    set_email_key(conn, &key, id)?;
                }
                user.email = email.as_str().to_string();
            }
            if let Some(group) = patch.group {
                user.group = group;
            }
            if let Some(extra) = patch.extra {
                user.extra = extra;
            }
            if let Some(admin) = patch.admin {
                user.admin = admin;
            }
            conn.prepare_cached(
                "UPDATE users SET name = ?2, email = ?3, grp = ?4, admin = ?5, extra = ?6,
                 password_hash = COALESCE(?7, password_hash) WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    user.name,
                    user.email,
                    user.group,
                    user.admin as i64,
                    user.extra.to_json(),
                    patch.password_hash,
                ])
            })
            .map_err(|e| match db_error(e) {
                Error::Conflict(_) => Error::Conflict("email already registered".into()),
                other => other,
            })?;
            Ok(user)
        })
        .await
    }

    async fn delete_user(&self, id: Uuid) -> Result<()> {
        self.write(move |conn| {
            let deleted = conn
                .execute("DELETE FROM users WHERE id = ?1", [id])
                .map_err(db_error)?;
            if deleted == 0 {
                return Err(Error::not_found("user"));
            }
            conn.execute("DELETE FROM email_keys WHERE user_id = ?1", [id])
                .map_err(db_error)?;
            let rows = search_rows(
                conn,
                "SELECT seq, title, body, keywords FROM items WHERE user_id = ?1",
                [id],
            )?;
            rows.into_iter().for_each(|row| conn.unindex(row));
            conn.touch(id);
            conn.execute("DELETE FROM items WHERE user_id = ?1", [id])
                .map_err(db_error)?;
            conn.execute("DELETE FROM tokens WHERE user_id = ?1", [id])
                .map_err(db_error)?;
            conn.execute("DELETE FROM jobs WHERE user_id = ?1", [id])
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn insert_token(
        &self,
        hash: TokenHash,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let now = to_millis(Utc::now());
        self.write(move |conn| {
            // Expired tokens of this user go as a new one comes, which keeps the table bounded.
            conn.prepare_cached("DELETE FROM tokens WHERE user_id = ?1 AND expires_at <= ?2")
                .and_then(|mut s| s.execute(params![user_id, now]))
                .map_err(db_error)?;
            conn.prepare_cached(
                "INSERT INTO tokens (hash, user_id, expires_at) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![&hash.0[..], user_id, to_millis(expires_at)]))
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, hash: TokenHash) -> Result<Option<(Principal, DateTime<Utc>)>> {
        let now = to_millis(Utc::now());
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT t.user_id, u.admin, t.expires_at FROM tokens t
                 JOIN users u ON u.id = t.user_id
                 WHERE t.hash = ?1 AND t.expires_at > ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![&hash.0[..], now], |row| {
                    Ok((
                        Principal {
                            user_id: row.get(0)?,
                            admin: row.get::<_, i64>(1)? != 0,
                        },
                        from_millis(row.get(2)?),
                    ))
                })
                .optional()
            })
            .map_err(db_error)
        })
    }

    async fn delete_token(&self, hash: TokenHash) -> Result<Option<Uuid>> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM tokens WHERE hash = ?1 RETURNING user_id")
                .and_then(|mut s| s.query_row([&hash.0[..]], |r| r.get(0)).optional())
                .map_err(db_error)
        })
        .await
    }

    async fn revoke_sessions(&self, user_id: Uuid, keep: Option<TokenHash>) -> Result<u64> {
        self.write(move |conn| {
            let keep = keep.map(|k| k.0.to_vec()).unwrap_or_default();
            conn.prepare_cached("DELETE FROM tokens WHERE user_id = ?1 AND hash != ?2")
                .and_then(|mut s| s.execute(params![user_id, keep]))
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }

    async fn insert_item(&self, item: Item) -> Result<Item> {
        let seqs = self.next_seq.clone();
        self.write(move |conn| {
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
        })
        .await
    }

    async fn insert_items(&self, items: Vec<Item>) -> Result<usize> {
        let seqs = self.next_seq.clone();
        self.write(move |conn| insert_new_items(conn, &seqs, &items))
            .await
    }

    async fn insert_items_once(
        &self,
        key: Vec<u8>,
        expires_at: DateTime<Utc>,
        items: Vec<Item>,
    ) -> Result<usize> {
        let seqs = self.next_seq.clone();
        self.write(move |conn| {
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
            insert_new_items(conn, &seqs, &items)
        })
        .await
    }

    async fn get_item(&self, id: Uuid) -> Result<Item> {
        self.read(|conn| select_item(conn, id))
    }

    async fn update_item(&self, id: Uuid, owner: Uuid, patch: ItemPatch) -> Result<Item> {
        self.write(move |conn| {
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
        })
        .await
    }

    async fn delete_item(&self, id: Uuid, owner: Uuid) -> Result<Item> {
        self.write(move |conn| {
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
        })
        .await
    }

    async fn list_user_items(&self, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
        let Some(recent) = self.recent.as_ref().filter(|r| r.covers(page)) else {
            if page.offset > DEEP_OFFSET {
                return self
                    .heavy
                    .run(self.search_timeout, move |conn| {
                        select_user_items(conn, user_id, page)
                    })
                    .await;
            }
            return self
                .pages
                .run(None, move |conn| select_user_items(conn, user_id, page))
                .await;
        };
        if let Some(items) = recent.get(user_id, page.limit) {
            return Ok(items);
        }
        let ticket = recent.ticket(user_id);
        let newest = Page::new(recent.depth(), 0);
        let mut items = self
            .pages
            .run(None, move |conn| select_user_items(conn, user_id, newest))
            .await?;
        recent.fill(ticket, &items);
        items.truncate(page.limit as usize);
        Ok(items)
    }

    fn recent_user_items(&self, user_id: Uuid, page: Page) -> Option<Vec<Item>> {
        let recent = self.recent.as_ref().filter(|r| r.covers(page))?;
        recent.get(user_id, page.limit)
    }

    /// Most searches are a first page FTS5 answers in a millisecond: they run at normal priority
    /// on a connection of their own. One still working after [`SEARCH_SLICE`], or asking for a
    /// deep offset, runs in the heavy pool at low priority within the whole budget: only the
    /// expensive ones yield to cheap reads.
    async fn search_items(&self, query: &str, page: Page) -> Result<Vec<Item>> {
        let query = fts_query(&SearchQuery::parse(query)?);
        // A deep offset walks every match it skips: straight to the heavy pool.
        if page.offset <= QUICK_SEARCH_MAX_OFFSET {
            let quick = {
                let query = query.clone();
                self.quick
                    .try_within(SEARCH_SLICE, move |conn| select_search(conn, &query, page))
                    .await?
            };
            if let Some(found) = quick {
                return Ok(found);
            }
            metrics::counter!("gorgon_store_searches_demoted_total").increment(1);
        }
        self.heavy
            .run(self.search_timeout, move |conn| {
                select_search(conn, &query, page)
            })
            .await
    }

    async fn sample_user_ids(&self, limit: u32) -> Result<Vec<Uuid>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id FROM users LIMIT ?1")
                .map_err(db_error)?;
            let rows = stmt.query_map([limit], |r| r.get(0)).map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
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
        self.write(move |conn| {
            if let Some(key) = &job.idempotency_key {
                let existing = conn
                    .prepare_cached(&format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = ?1 AND idempotency_key = ?2"
                    ))
                    .and_then(|mut s| {
                        s.query_row(params![job.user_id, key], job_from_row)
                            .optional()
                    })
                    .map_err(db_error)?;
                if let Some(existing) = existing {
                    if existing.kind == job.kind && existing.payload == job.payload {
                        return Ok((existing, false));
                    }
                    return Err(Error::Conflict(
                        "this Idempotency-Key was used for a different job".into(),
                    ));
                }
            }
            if let Some(cap) = job.max_unfinished {
                check_unfinished_jobs(conn, &job, cap)?;
            }
            let created = to_millis(job.created_at);
            // Due by the store's clock, the one claims compare with.
            let due = to_millis(Utc::now());
            let payload = serde_json::to_string(&job.payload)
                .map_err(|e| Error::Internal(format!("job payload: {e}")))?;
            let inserted = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO jobs (id, user_id, kind, state, payload, attempts,
                     created_at, updated_at, run_after, idempotency_key)
                     VALUES (?1, ?2, ?3, 'queued', ?4, 0, ?5, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        job.id,
                        job.user_id,
                        job.kind,
                        payload,
                        created,
                        due,
                        job.idempotency_key
                    ])
                })
                .map_err(db_error)?;
            if inserted == 1 {
                // The error undoes the insert (each write has its own savepoint).
                require_user(conn, job.user_id)?;
            }
            // A redelivered insert (same id) returns what the first one stored.
            let stored = select_job(conn, job.id)?;
            if inserted == 0 && stored.user_id != job.user_id {
                return Err(Error::Conflict("a job with this id exists".into()));
            }
            Ok((stored, inserted == 1))
        })
        .await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.read(|conn| select_job(conn, id))
    }

    async fn claim_jobs(&self, lease: std::time::Duration, limit: u32) -> Result<Vec<Job>> {
        let lease = lease.as_millis().min(i64::MAX as u128) as i64;
        // Idle workers poll often: a read answers "nothing due" without costing a commit.
        let now = to_millis(Utc::now());
        let due: bool = self.read(|conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs
                 WHERE state IN ('queued', 'failed', 'running') AND run_after <= ?1)",
            )
            .and_then(|mut s| s.query_row([now], |r| r.get(0)))
            .map_err(db_error)
        })?;
        if !due {
            return Ok(Vec::new());
        }
        self.write(move |conn| {
            // The clock is read in the writer, so a claim waiting in the queue does not use a
            // stale "now"; the one writer makes select-and-update a single atomic step.
            let now = to_millis(Utc::now());
            let mut stmt = conn
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                         run_after = ?1 + ?2, updated_at = ?1
                     WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('queued', 'failed', 'running') AND run_after <= ?1
                         ORDER BY run_after LIMIT ?3)
                     RETURNING {JOB_COLUMNS}"
                ))
                .map_err(db_error)?;
            jobs_from(&mut stmt, params![now, lease, limit])
        })
        .await
    }

    async fn finish_job(&self, id: Uuid, attempt: u32, outcome: JobOutcome) -> Result<Job> {
        self.write(move |conn| {
            let now = to_millis(Utc::now());
            let state = outcome.state().name();
            let (result, error, run_after) = match &outcome {
                JobOutcome::Done(value) => (
                    Some(
                        serde_json::to_string(value)
                            .map_err(|e| Error::Internal(format!("job result: {e}")))?,
                    ),
                    None,
                    now,
                ),
                JobOutcome::Failed { error, run_after } => {
                    (None, Some(error.clone()), to_millis(*run_after))
                }
                JobOutcome::Dead { error } => (None, Some(error.clone()), now),
            };
            let changed = conn
                .prepare_cached(
                    "UPDATE jobs SET state = ?3, result = ?4, error = COALESCE(?5, error),
                         run_after = ?6, updated_at = ?7
                     WHERE id = ?1 AND state = 'running' AND attempts = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![id, attempt, state, result, error, run_after, now])
                })
                .map_err(db_error)?;
            if changed == 0 {
                select_job(conn, id)?;
                return Err(Error::Conflict(format!(
                    "attempt {attempt} of job {id} is no longer running"
                )));
            }
            select_job(conn, id)
        })
        .await
    }

    async fn retry_job(&self, id: Uuid) -> Result<Job> {
        self.write(move |conn| {
            let now = to_millis(Utc::now());
            let changed = conn
                .prepare_cached(
                    "UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?2, updated_at = ?2
                     WHERE id = ?1 AND state IN ('failed', 'dead')",
                )
                .and_then(|mut s| s.execute(params![id, now]))
                .map_err(db_error)?;
            let job = select_job(conn, id)?;
            if changed == 0 {
                return Err(Error::Conflict(format!(
                    "only failed or dead jobs can be retried; this one is {}",
                    job.state.name()
                )));
            }
            Ok(job)
        })
        .await
    }

    async fn list_jobs(&self, state: JobState, page: Page) -> Result<Vec<Job>> {
        self.pages
            .run(None, move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1
                     ORDER BY id DESC LIMIT ?2 OFFSET ?3"
                    ))
                    .map_err(db_error)?;
                jobs_from(&mut stmt, params![state.name(), page.limit, page.offset])
            })
            .await
    }

    async fn purge_jobs(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = to_millis(before);
        self.write(move |conn| {
            let purged = conn
                .prepare_cached(
                    "DELETE FROM jobs WHERE state IN ('done', 'dead') AND run_after < ?1",
                )
                .and_then(|mut s| s.execute([before]))
                .map_err(db_error)?;
            Ok(purged as u64)
        })
        .await
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
                Err(e) => return Err(Error::Internal(format!("the space probe failed: {e}"))),
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

#[async_trait]
impl BulkLoad for SqliteStore {
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
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('bulk_load', 'running')",
                [],
            )
            .map_err(db_error)?;
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
            let database = self.path.clone();
            tokio::task::spawn_blocking(move || build.install(&database))
                .await
                .map_err(|e| Error::Internal(format!("the search index copy failed: {e}")))??;
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
