//! Storage: the `Store` trait every backend implements, and the backends.
//!
//! Only the `store` role touches a `Store`. The trait is the contract: `tests/common/contract.rs`
//! holds the test suite every backend must pass (run by `tests/store_contract.rs`).

mod backend;
mod checkpointer;
pub mod mongo;
mod pool;
mod pool_metrics;
pub mod postgres;
pub mod recent;
mod redact;
mod search_build;
pub mod sqlite;
mod words;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{
    Item, ItemList, ItemPatch, Job, JobOutcome, JobState, NewJob, NewUser, Page, Principal,
    TokenHash, User, UserPatch,
};
use crate::error::Result;

pub use backend::{Backend, BackendOptions, SharedKind, StoreUrl};
pub use mongo::{MongoOptions, MongoStore};
pub use postgres::{PgOptions, PgStore};
pub use sqlite::{SqliteOptions, SqliteStore, StoreError};

/// A user together with what is needed to check their password.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// Where a page of an export starts: just after this item (the last of the previous page). Each
/// backend walks its items in the order of a key it has an index for: the embedded store by
/// `(user_id, id)` (its table's own order, read sequentially), the shared ones by `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportCursor {
    pub user_id: Uuid,
    pub id: Uuid,
}

impl ExportCursor {
    pub fn after(item: &Item) -> ExportCursor {
        ExportCursor {
            user_id: item.user_id,
            id: item.id,
        }
    }
}

/// The database, as the store role sees it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails with `Conflict` when the email is taken.
    async fn insert_user(&self, user: NewUser) -> Result<User>;
    async fn get_user(&self, id: Uuid) -> Result<User>;
    async fn get_credentials(&self, email: &str) -> Result<Credentials>;
    async fn update_user(&self, id: Uuid, patch: UserPatch) -> Result<User>;
    /// Removes the user with their items and tokens.
    async fn delete_user(&self, id: Uuid) -> Result<()>;

    async fn insert_token(
        &self,
        hash: TokenHash,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
    /// The token's owner, if the token exists and has not expired.
    async fn get_session(&self, hash: TokenHash) -> Result<Option<(Principal, DateTime<Utc>)>>;
    /// Removes a token; returns whose it was (`None` if it did not exist).
    async fn delete_token(&self, hash: TokenHash) -> Result<Option<Uuid>>;
    /// Removes every token of the user but `keep`; returns how many went.
    async fn revoke_sessions(&self, user_id: Uuid, keep: Option<TokenHash>) -> Result<u64>;

    /// Idempotent by id: inserting an item whose id exists with the same owner returns the
    /// stored item (a redelivered message never writes twice). An owner that does not exist
    /// (a deleted account) is `Unauthorized`.
    async fn insert_item(&self, item: Item) -> Result<Item>;
    /// Inserts a batch in one transaction; items whose id exists are skipped.
    async fn insert_items(&self, items: Vec<Item>) -> Result<usize>;
    /// Inserts a batch like [`insert_items`](Store::insert_items), once per `key`: if `key` was
    /// stored before and has not expired, nothing is written and the answer is `Conflict` (a
    /// replayed request). `key` is kept until `expires_at`. The same batch delivered again (same
    /// key, same first item id: a redelivered message, not a replay) answers as the first did.
    async fn insert_items_once(
        &self,
        key: Vec<u8>,
        expires_at: DateTime<Utc>,
        items: Vec<Item>,
    ) -> Result<usize>;
    async fn get_item(&self, id: Uuid) -> Result<Item>;
    /// Applies `patch` if the item belongs to `owner`; `Forbidden` otherwise.
    async fn update_item(&self, id: Uuid, owner: Uuid, patch: ItemPatch) -> Result<Item>;
    /// Deletes the item if it belongs to `owner`; returns it as it was.
    async fn delete_item(&self, id: Uuid, owner: Uuid) -> Result<Item>;
    /// A user's items, newest first.
    async fn list_user_items(&self, user_id: Uuid, page: Page) -> Result<Vec<Item>>;
    /// The same page if the backend holds it in memory, answered without waiting; `None`
    /// means "ask [`list_user_items`](Store::list_user_items)".
    fn recent_user_items(&self, _user_id: Uuid, _page: Page) -> Option<ItemList> {
        None
    }
    /// Items matching every word of `query` in title, body or keywords, newest first.
    async fn search_items(&self, query: &str, page: Page) -> Result<Vec<Item>>;
    /// Up to `limit` user ids (used by the random provider to pick authors).
    async fn sample_user_ids(&self, limit: u32) -> Result<Vec<Uuid>>;
    /// Counts of users and items, for stats and seeding reports.
    async fn counts(&self) -> Result<(u64, u64)>;
    /// Stores a queued job, due at once. With an idempotency key already used by the same user,
    /// returns the stored job instead (and `false`), or `Conflict` if its kind or payload differ.
    async fn insert_job(&self, job: NewJob) -> Result<(Job, bool)>;
    async fn get_job(&self, id: Uuid) -> Result<Job>;
    /// Claims up to `limit` due jobs in one write: queued or failed jobs whose `run_after` has
    /// come, and running jobs whose lease has ended (their worker is gone). Each becomes
    /// `running` with one more attempt and a lease until now + `lease`. No job is handed to
    /// two claims whose leases overlap.
    async fn claim_jobs(&self, lease: std::time::Duration, limit: u32) -> Result<Vec<Job>>;
    /// Records how attempt number `attempt` of a running job ended. `Conflict` if the job is no
    /// longer running that attempt (its lease ended and another worker claimed it).
    async fn finish_job(&self, id: Uuid, attempt: u32, outcome: JobOutcome) -> Result<Job>;
    /// Puts a failed or dead job back to queued with its attempts reset; `Conflict` otherwise.
    async fn retry_job(&self, id: Uuid) -> Result<Job>;
    /// Jobs in `state`, newest first.
    async fn list_jobs(&self, state: JobState, page: Page) -> Result<Vec<Job>>;
    /// Deletes done and dead jobs last changed before `before`; returns how many.
    async fn purge_jobs(&self, before: DateTime<Utc>) -> Result<u64>;
    /// A page of every item, in the backend's export order (see [`ExportCursor`]), after
    /// `after`: keyset paging, so each page costs the same however deep, and an export holds
    /// one page at a time.
    async fn export_items(&self, after: Option<ExportCursor>, limit: u32) -> Result<Vec<Item>>;
    /// A page of every user with their password hash, by id, after `after`.
    async fn export_users(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Credentials>>;
    /// Its name in `/readyz` and the cluster table: "embedded", "mongodb", "postgres".
    fn backend(&self) -> &'static str;
    /// Cheap round trip proving the backend answers (readiness).
    async fn ping(&self) -> Result<()>;
    /// Flushes and closes; later calls fail with `Unavailable`.
    async fn close(&self);
}

/// Bulk loading for `gorgon seed` and `gorgon import`: bypasses per-request work, keeps the same
/// guarantees once `finish_bulk` (or `finish_import`) returns.
#[async_trait]
pub trait BulkLoad: Store {
    /// Starts an import (`gorgon import items`, a process that owns the store while it runs):
    /// unlike a seed, every write stays idempotent by id, so the same file run twice writes
    /// nothing twice. By default nothing to prepare.
    async fn begin_import(&self) -> Result<()> {
        Ok(())
    }
    /// Stores a batch of an import, skipping items whose id is stored already (or was in an
    /// earlier batch); how many were new. By default [`Store::insert_items`].
    async fn import_items(&self, items: Vec<Item>) -> Result<usize> {
        self.insert_items(items).await
    }
    /// Whether an import's rows stay out of the store until `finish_import(true)` (the
    /// embedded store stages them): then an import that must store all or nothing needs no
    /// check pass first, `finish_import(false)` drops everything. By default rows are stored
    /// batch by batch.
    fn stages_imports(&self) -> bool {
        false
    }
    /// Ends an import, also a failed one: builds what `begin_import` set aside; with a stage,
    /// moves the staged rows in (`keep`) or drops them. Called once every `import_items` call
    /// has returned.
    async fn finish_import(&self, _keep: bool) -> Result<()> {
        Ok(())
    }

    /// Starts a load of up to `items` items.
    async fn begin_bulk(&self, items: u64) -> Result<()>;
    async fn bulk_users(&self, users: Vec<NewUser>) -> Result<()>;
    /// Each item comes with its position in time order within this load (0 the oldest), so the
    /// backend can keep newest-first orders without sorting, whatever order items arrive in.
    async fn bulk_items(&self, items: Vec<(u64, Item)>) -> Result<()>;
    /// Rebuilds what `begin_bulk` set aside (secondary indexes, the search index). Called once
    /// every `bulk_items` call has returned.
    async fn finish_bulk(&self) -> Result<()>;
}
