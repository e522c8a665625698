//! The embedded store's schema: tables, indexes and triggers, what a bulk load sets aside and
//! rebuilds, and the upgrades an older database gets when it is opened.

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::errors::db_error;
use crate::error::Result;

/// The search index's definition: one literal for the schema and for a bulk load's scratch copy
/// ([`crate::store::search_build`]), whose tables must match row for row.
macro_rules! search_table {
    () => {
        "CREATE VIRTUAL TABLE IF NOT EXISTS items_fts USING fts5(
    title, body, keywords, content='items', content_rowid='seq', detail='none', columnsize=0
);"
    };
}
pub(in crate::store) const SEARCH_TABLE: &str = search_table!();

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
pub(super) const SECONDARY: &str = r#"
CREATE UNIQUE INDEX IF NOT EXISTS items_id ON items(id);
CREATE UNIQUE INDEX IF NOT EXISTS items_seq ON items(seq);
"#;

pub(super) const DROP_SECONDARY: &str = r#"
DROP INDEX IF EXISTS items_id;
DROP INDEX IF EXISTS items_seq;
"#;

/// Rebuilds the search index in `seq` order: FTS5 flushes its in-memory terms whenever a rowid
/// comes out of order, so its own 'rebuild' (which reads in table order) would flush per row.
const REBUILD_SEARCH: &str = "
    INSERT INTO items_fts(items_fts) VALUES('delete-all');
    INSERT INTO items_fts(rowid, title, body, keywords)
        SELECT seq, title, body, keywords FROM items ORDER BY seq;";

/// Creates what is missing, upgrades an older database (fills tables it did not have yet), and
/// finishes the work of a bulk load that was interrupted. Runs on the writer's connection.
pub(super) fn create(writer: &Connection) -> Result<()> {
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
        backfill_email_keys(writer)?;
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
    Ok(())
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
