//! The shared store on PostgreSQL: any number of nodes run the `store` role against one
//! PostgreSQL primary (with streaming standbys for failover), which keeps and replicates the
//! data; Gorgon keeps no state of its own beside it (no in-memory cache of newest items: another
//! node may have written since).
//!
//! Why this shape:
//! - Ids are the caller's UUIDv7 as `uuid` primary keys: a redelivered insert meets
//!   `ON CONFLICT DO NOTHING` and answers with the stored row, and "newest first" is `id DESC`.
//! - Every request is one statement where it can be (data-modifying `WITH`s: a user and the look
//!   of their address, an item and its owner check, a job and its quota), prepared once per
//!   connection and then one round trip; transactions only where a read decides the write (item
//!   and user updates, deletions of a user, keyed batches).
//! - Every query walks an index; none scans a table (search: see [`search`]).
//! - Reads and writes go to the primary (the only server a connection is made to when the URL
//!   names several hosts), so a read sees every write acknowledged before it, whichever node
//!   wrote it; with a synchronous standby an acknowledged write is on two servers.
//! - A database out of reach fails calls with `Unavailable` (503), at once while the last
//!   connection attempt failed under [`PgOptions::fail_fast`] ago, and the same `PgStore`
//!   recovers by itself once a server takes writes again (after a restart, or on a promoted
//!   standby named in the URL).
//!
//! Where things are: [`connection`] (options, the pool, a lent connection, fail-fast),
//! [`migrations`] (the schema, embedded and versioned), [`rows`] (rows to values), [`users`],
//! [`items`], [`search`], [`jobs`], [`bulk`] (binary `COPY`), [`errors`] (the driver's errors
//! mapped). This file holds the store and which module each operation goes to.

mod bulk;
mod connection;
mod errors;
mod items;
mod jobs;
mod migrations;
mod rows;
mod search;
mod users;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use self::connection::{Conn, Connector};
use super::{Credentials, ExportCursor, Store};
use crate::domain::{
    Item, ItemPatch, Job, JobOutcome, JobState, NewJob, NewUser, Page, Principal, TokenHash, User,
    UserPatch,
};
use crate::error::{Error, Result};

pub use self::connection::{PgOptions, PoolStats};
pub use self::errors::PgError;

/// The PostgreSQL backend. Cheap to share: it holds a pool of connections.
pub struct PgStore {
    connector: Connector,
    database: String,
    options: PgOptions,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for PgStore {
    /// Names the database only: the URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.database)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host1,host2/database?…`, or
    /// the `key=value` form) and applies the schema migrations it lacks. Fails with `Unavailable`
    /// when no server taking writes answers, and never quotes the URL in an error.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore> {
        let (connector, database) = connection::connector(url, &options)?;
        let mut conn = connector.conn().await?;
        migrations::apply(&mut conn).await?;
        drop(conn);
        let closed = Arc::new(AtomicBool::new(false));
        spawn_pool_metrics(connector.clone(), closed.clone());
        Ok(PgStore {
            connector,
            database,
            options,
            closed,
        })
    }

    /// The database this store uses.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Connection pool figures.
    pub fn pool_stats(&self) -> PoolStats {
        self.connector.stats()
    }

    /// A connection for one call, or `Unavailable` once closed or while the database is known to
    /// be out of reach.
    async fn conn(&self) -> Result<Conn> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        self.connector.conn().await
    }
}

/// Publishes the pool's figures as metrics once a second until the store closes or is dropped
/// (then `closed` has no other holder).
fn spawn_pool_metrics(connector: Connector, closed: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !closed.load(Ordering::Acquire) && Arc::strong_count(&closed) > 1 {
            tick.tick().await;
            connector.publish();
        }
    });
}

#[async_trait]
impl Store for PgStore {
    async fn insert_user(&self, user: NewUser) -> Result<User> {
        users::insert_user(&self.conn().await?, user).await
    }

    async fn get_user(&self, id: Uuid) -> Result<User> {
        users::get_user(&self.conn().await?, id).await
    }

    async fn get_credentials(&self, email: &str) -> Result<Credentials> {
        users::get_credentials(&self.conn().await?, email).await
    }

    async fn update_user(&self, id: Uuid, patch: UserPatch) -> Result<User> {
        users::update_user(&mut self.conn().await?, id, patch).await
    }

    async fn delete_user(&self, id: Uuid) -> Result<()> {
        users::delete_user(&mut self.conn().await?, id).await
    }

    async fn insert_token(
        &self,
        hash: TokenHash,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        users::insert_token(&self.conn().await?, hash, user_id, expires_at).await
    }

    async fn get_session(&self, hash: TokenHash) -> Result<Option<(Principal, DateTime<Utc>)>> {
        users::get_session(&self.conn().await?, hash).await
    }

    async fn delete_token(&self, hash: TokenHash) -> Result<Option<Uuid>> {
        users::delete_token(&self.conn().await?, hash).await
    }

    async fn revoke_sessions(&self, user_id: Uuid, keep: Option<TokenHash>) -> Result<u64> {
        users::revoke_sessions(&self.conn().await?, user_id, keep).await
    }

    async fn insert_item(&self, item: Item) -> Result<Item> {
        items::insert_item(&self.conn().await?, item).await
    }

    async fn insert_items(&self, items: Vec<Item>) -> Result<usize> {
        items::insert_new_items(&self.conn().await?, &items).await
    }

    async fn insert_items_once(
        &self,
        key: Vec<u8>,
        expires_at: DateTime<Utc>,
        items: Vec<Item>,
    ) -> Result<usize> {
        items::insert_items_once(&mut self.conn().await?, key, expires_at, items).await
    }

    async fn get_item(&self, id: Uuid) -> Result<Item> {
        items::get_item(&self.conn().await?, id).await
    }

    async fn update_item(&self, id: Uuid, owner: Uuid, patch: ItemPatch) -> Result<Item> {
        items::update_item(&mut self.conn().await?, id, owner, patch).await
    }

    async fn delete_item(&self, id: Uuid, owner: Uuid) -> Result<Item> {
        items::delete_item(&self.conn().await?, id, owner).await
    }

    async fn list_user_items(&self, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
        items::list_user_items(&self.conn().await?, user_id, page).await
    }

    async fn search_items(&self, query: &str, page: Page) -> Result<Vec<Item>> {
        search::search_items(&self.conn().await?, query, page).await
    }

    async fn sample_user_ids(&self, limit: u32) -> Result<Vec<Uuid>> {
        users::sample_user_ids(&self.conn().await?, limit).await
    }

    /// Exact while a table is small; past 100,000 rows the planner's estimate (kept by
    /// `ANALYZE` and autovacuum), which is what stats need, rather than a scan of every row.
    async fn counts(&self) -> Result<(u64, u64)> {
        let c = self.conn().await?;
        let row = c
            .query_opt(
                "count users and items",
                "SELECT
                     CASE WHEN u.reltuples < 100000 THEN (SELECT count(*) FROM users)
                          ELSE u.reltuples::bigint END,
                     CASE WHEN i.reltuples < 100000 THEN (SELECT count(*) FROM items)
                          ELSE i.reltuples::bigint END
                 FROM pg_class u, pg_class i
                 WHERE u.oid = 'users'::regclass AND i.oid = 'items'::regclass",
                &[],
            )
            .await?
            .ok_or_else(|| Error::Internal("the store's tables are missing".into()))?;
        let count = |n: usize| -> Result<u64> {
            let n: i64 = row.try_get(n).map_err(c.op("count users and items"))?;
            Ok(n.max(0) as u64)
        };
        Ok((count(0)?, count(1)?))
    }

    async fn insert_job(&self, job: NewJob) -> Result<(Job, bool)> {
        jobs::insert_job(&self.conn().await?, job).await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        jobs::get_job(&self.conn().await?, id).await
    }

    async fn claim_jobs(&self, lease: std::time::Duration, limit: u32) -> Result<Vec<Job>> {
        jobs::claim_jobs(&self.conn().await?, lease, limit).await
    }

    async fn finish_job(&self, id: Uuid, attempt: u32, outcome: JobOutcome) -> Result<Job> {
        jobs::finish_job(&self.conn().await?, id, attempt, outcome).await
    }

    async fn retry_job(&self, id: Uuid) -> Result<Job> {
        jobs::retry_job(&self.conn().await?, id).await
    }

    async fn list_jobs(&self, state: JobState, page: Page) -> Result<Vec<Job>> {
        jobs::list_jobs(&self.conn().await?, state, page).await
    }

    async fn purge_jobs(&self, before: DateTime<Utc>) -> Result<u64> {
        jobs::purge_jobs(&self.conn().await?, before).await
    }

    async fn export_items(&self, after: Option<ExportCursor>, limit: u32) -> Result<Vec<Item>> {
        items::export_page(&self.conn().await?, after, limit).await
    }

    async fn export_users(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Credentials>> {
        users::export_page(&self.conn().await?, after, limit).await
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    /// `SELECT 1` on the primary (readiness).
    async fn ping(&self) -> Result<()> {
        self.conn().await?.query("ping", "SELECT 1", &[]).await?;
        Ok(())
    }

    /// Later calls fail with `Unavailable`; idle connections close now, lent ones when their
    /// call ends.
    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.connector.pool.close();
    }
}
