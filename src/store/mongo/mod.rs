//! The shared store on MongoDB: any number of nodes run the `store` role against one MongoDB
//! deployment (a replica set, or a sharded cluster), which replicates and scales the data; Gorgon
//! keeps no state of its own beside it (no in-memory cache of newest items: another node may
//! have written since).
//!
//! Why this shape:
//! - `_id` is the caller's UUIDv7 (binary subtype 4): a redelivered insert meets a duplicate key
//!   and answers with the stored document, and "newest first" is `_id` descending.
//! - Every query walks an index (see [`connection::create_indexes`]); none scans a collection.
//! - Writes wait for a majority's journal (`w: majority, j: true`) and are retried once by the
//!   driver after a failover (the URL may say otherwise: `w=…`, `journal=…`, `retryWrites=false`);
//!   reads go to the primary (whatever the URL's `readPreference`), so a read sees every write
//!   acknowledged before it, whichever node wrote it.
//! - A deployment out of reach fails calls with `Unavailable` (503) after the server selection
//!   timeout, and the same `MongoStore` recovers by itself once it is back.
//!
//! Where things are: [`connection`] (options, the client, indexes), [`docs`] (documents),
//! [`users`], [`items`], [`jobs`], [`search`], [`bulk`] (bulk loading), [`errors`] (the driver's
//! errors mapped). This file holds the store and which module each operation goes to.

mod bulk;
mod connection;
mod docs;
mod errors;
mod items;
mod jobs;
mod pages;
mod search;
mod users;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::Client;
use uuid::Uuid;

use self::connection::{Collections, Connected, PoolCounters, Reachable};
use self::errors::op;
use super::{Credentials, ExportCursor, Store};
use crate::domain::{
    Item, ItemPatch, Job, JobOutcome, JobState, NewJob, NewUser, Page, Principal, TokenHash, User,
    UserPatch,
};
use crate::error::{Error, Result};

pub use self::connection::{MongoOptions, PoolStats};
pub use self::errors::MongoError;

/// The MongoDB backend. Cheap to share: the driver's client holds a connection pool per server.
pub struct MongoStore {
    client: Client,
    collections: Collections,
    options: MongoOptions,
    pool: Arc<PoolCounters>,
    reachable: Arc<Reachable>,
    closed: AtomicBool,
}

impl std::fmt::Debug for MongoStore {
    /// Names the database only: the URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.collections.database.name())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl MongoStore {
    /// Connects to the deployment at `url` (`mongodb://…` or `mongodb+srv://…`) and creates the
    /// indexes that are missing. The database is the URL's path (`mongodb://host/NAME`), else
    /// `options.database`. Fails with `Unavailable` when no server answers within the server
    /// selection timeout, and never quotes the URL in an error.
    pub async fn connect(url: &str, options: MongoOptions) -> Result<MongoStore> {
        let Connected {
            client,
            collections,
            pool,
            reachable,
        } = connection::client(url, &options).await?;
        // Nodes starting together may race on the same index builds: a second try sees them.
        if let Err(first) = connection::create_indexes(&collections, true).await {
            if matches!(first, Error::Unavailable(_)) {
                return Err(first);
            }
            tracing::debug!(error = %first, "creating indexes again");
            connection::create_indexes(&collections, true).await?;
        }
        Ok(MongoStore {
            client,
            collections,
            options,
            pool,
            reachable,
            closed: AtomicBool::new(false),
        })
    }

    /// The database this store uses.
    pub fn database(&self) -> &str {
        self.collections.database.name()
    }

    /// Connection pool figures.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Drops the whole database (for tests that made one of their own).
    pub async fn drop_database(&self) -> Result<()> {
        self.live()?
            .database
            .drop()
            .await
            .map_err(op("drop the database"))
    }

    /// The collections, or `Unavailable` once closed or while the deployment is known to be out
    /// of reach.
    fn live(&self) -> Result<&Collections> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        if !self.reachable.now() {
            return Err(Error::Unavailable(
                "MongoDB is out of reach (no server takes writes)".into(),
            ));
        }
        Ok(&self.collections)
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn insert_user(&self, user: NewUser) -> Result<User> {
        users::insert_user(self.live()?, user).await
    }

    async fn get_user(&self, id: Uuid) -> Result<User> {
        users::get_user(self.live()?, id).await
    }

    async fn get_credentials(&self, email: &str) -> Result<Credentials> {
        users::get_credentials(self.live()?, email).await
    }

    async fn update_user(&self, id: Uuid, patch: UserPatch) -> Result<User> {
        users::update_user(self.live()?, id, patch).await
    }

    async fn delete_user(&self, id: Uuid) -> Result<()> {
        users::delete_user(self.live()?, id).await
    }

    async fn insert_token(
        &self,
        hash: TokenHash,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        users::insert_token(self.live()?, hash, user_id, expires_at).await
    }

    async fn get_session(&self, hash: TokenHash) -> Result<Option<(Principal, DateTime<Utc>)>> {
        users::get_session(self.live()?, hash).await
    }

    async fn delete_token(&self, hash: TokenHash) -> Result<Option<Uuid>> {
        users::delete_token(self.live()?, hash).await
    }

    async fn revoke_sessions(&self, user_id: Uuid, keep: Option<TokenHash>) -> Result<u64> {
        users::revoke_sessions(self.live()?, user_id, keep).await
    }

    async fn insert_item(&self, item: Item) -> Result<Item> {
        items::insert_item(self.live()?, item).await
    }

    async fn insert_items(&self, items: Vec<Item>) -> Result<usize> {
        items::insert_new_items(self.live()?, &items).await
    }

    async fn insert_items_once(
        &self,
        key: Vec<u8>,
        expires_at: DateTime<Utc>,
        items: Vec<Item>,
    ) -> Result<usize> {
        items::insert_items_once(self.live()?, key, expires_at, items).await
    }

    async fn get_item(&self, id: Uuid) -> Result<Item> {
        items::get_item(self.live()?, id).await
    }

    async fn update_item(&self, id: Uuid, owner: Uuid, patch: ItemPatch) -> Result<Item> {
        items::update_item(self.live()?, id, owner, patch).await
    }

    async fn delete_item(&self, id: Uuid, owner: Uuid) -> Result<Item> {
        items::delete_item(self.live()?, id, owner).await
    }

    async fn list_user_items(&self, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
        items::list_user_items(self.live()?, user_id, page).await
    }

    async fn search_items(&self, query: &str, page: Page) -> Result<Vec<Item>> {
        search::search_items(&self.live()?.items, query, page).await
    }

    async fn sample_user_ids(&self, limit: u32) -> Result<Vec<Uuid>> {
        users::sample_user_ids(self.live()?, limit).await
    }

    /// From the collections' metadata, not a scan: exact after clean writes, an estimate after
    /// an unclean shutdown or on a sharded cluster (orphans), which is what stats need.
    async fn counts(&self) -> Result<(u64, u64)> {
        let c = self.live()?;
        let users = c
            .users
            .estimated_document_count()
            .await
            .map_err(op("count users"))?;
        let items = c
            .items
            .estimated_document_count()
            .await
            .map_err(op("count items"))?;
        Ok((users, items))
    }

    async fn insert_job(&self, job: NewJob) -> Result<(Job, bool)> {
        jobs::insert_job(self.live()?, job).await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        jobs::get_job(self.live()?, id).await
    }

    async fn claim_jobs(&self, lease: std::time::Duration, limit: u32) -> Result<Vec<Job>> {
        jobs::claim_jobs(self.live()?, lease, limit).await
    }

    async fn finish_job(&self, id: Uuid, attempt: u32, outcome: JobOutcome) -> Result<Job> {
        jobs::finish_job(self.live()?, id, attempt, outcome).await
    }

    async fn retry_job(&self, id: Uuid) -> Result<Job> {
        jobs::retry_job(self.live()?, id).await
    }

    async fn list_jobs(&self, state: JobState, page: Page) -> Result<Vec<Job>> {
        jobs::list_jobs(self.live()?, state, page).await
    }

    async fn purge_jobs(&self, before: DateTime<Utc>) -> Result<u64> {
        jobs::purge_jobs(self.live()?, before).await
    }

    async fn export_items(&self, after: Option<ExportCursor>, limit: u32) -> Result<Vec<Item>> {
        items::export_page(self.live()?, after, limit).await
    }

    async fn export_users(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Credentials>> {
        users::export_page(self.live()?, after, limit).await
    }

    fn backend(&self) -> &'static str {
        "mongodb"
    }

    /// A `ping` command on the primary (readiness).
    async fn ping(&self) -> Result<()> {
        self.live()?
            .database
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(op("ping"))?;
        Ok(())
    }

    /// Later calls fail with `Unavailable`; the client's pools and monitors stop.
    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.reachable.closing();
        self.client.clone().shutdown().immediate(true).await;
    }
}
