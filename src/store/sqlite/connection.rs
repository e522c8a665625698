//! The embedded store's tunables, and how each of its connections is opened with them (WAL,
//! synchronous level, caches, memory map, statement cache).

use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::Connection;

use super::errors::db_error;
use crate::error::Result;

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

/// Opens a connection; `mmap_mib` is how much of the file it maps for reads.
pub(super) fn open_connection(
    path: &Path,
    options: &SqliteOptions,
    mmap_mib: u32,
) -> Result<Connection> {
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
