//! The store role: the only role that touches the database.
//!
//! Reads are direct requests, writes durable ones; after a write commits the role publishes an
//! event on the bus: item changes on topic `items`, job state changes (queued, claimed, finished,
//! retried) on topic `jobs`, account changes as `user.changed` (for every node's auth cache).
//! Claiming jobs is a write (durable): it changes their state and lease.
//!
//! Every request of the role is declared in the [`requests!`](crate::requests) table below, one
//! line each, and answered by one `Handler` impl further down.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{RoleContext, Spawned};
use crate::bus::{Bus, Event, EventKind, Handler, Service};
use crate::domain::{
    Item, ItemList, ItemPatch, Job, JobOutcome, JobState, NewJob, NewUser, Page, Principal, TokenHash, User,
    UserPatch,
};
use crate::error::Result;
pub use crate::store::ExportCursor;
use crate::store::Store;

crate::requests! {
    role Store, call StoreCall;
    InsertUser => "insert_user", durable, User;
    GetUser => "get_user", direct, User;
    GetUserByEmail => "get_user_by_email", direct, User;
    GetCredentials => "get_credentials", direct, Credentials;
    UpdateUser => "update_user", durable, User;
    DeleteUser => "delete_user", durable, ();
    InsertToken => "insert_token", durable, ();
    GetSession => "get_session", direct, Option<(Principal, DateTime<Utc>)>;
    DeleteToken => "delete_token", durable, ();
    RevokeSessions => "revoke_sessions", durable, ();
    InsertItem => "insert_item", durable, Item;
    InsertItems => "insert_items", durable, usize;
    InsertItemsOnce => "insert_items_once", durable, usize;
    ImportItems => "import_items", durable, usize;
    ExportItems => "export_items", direct, Vec<Item>;
    GetItem => "get_item", direct, Item;
    UpdateItem => "update_item", durable, Item;
    DeleteItem => "delete_item", durable, ();
    ListUserItems => "list_user_items", direct, ItemList;
    SearchItems => "search_items", direct, Vec<Item>;
    SampleUserIds => "sample_user_ids", direct, Vec<Uuid>;
    InsertJob => "insert_job", durable, JobInserted;
    GetJob => "get_job", direct, Job;
    ClaimJobs => "claim_jobs", durable, Vec<Job>;
    FinishJob => "finish_job", durable, Job;
    RetryJob => "retry_job", durable, Job;
    ListJobs => "list_jobs", direct, Vec<Job>;
    PurgeJobs => "purge_jobs", durable, u64;
    Counts => "counts", direct, (u64, u64);
    Ping => "ping", direct, Pong;
}

/// Stores a new user (with the argon2id hash of the password, never the password).
#[derive(Debug, Serialize, Deserialize)]
pub struct InsertUser(pub NewUser);

#[derive(Debug, Serialize, Deserialize)]
pub struct GetUser {
    pub id: Uuid,
}

/// A user by normalised email (an import's `owner` column), without their password hash.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetUserByEmail {
    pub email: String,
}

/// A user and the hash of their password, by normalised email (for the auth role's checks).
#[derive(Debug, Serialize, Deserialize)]
pub struct GetCredentials {
    pub email: String,
}

#[derive(Serialize, Deserialize)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password_hash", &"***")
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateUser {
    pub id: Uuid,
    pub patch: UserPatch,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteUser {
    pub id: Uuid,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InsertToken {
    pub hash: TokenHash,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GetSession {
    pub hash: TokenHash,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteToken {
    pub hash: TokenHash,
}

/// Every session of the user but `keep` (a password change keeps the changer's own).
#[derive(Debug, Serialize, Deserialize)]
pub struct RevokeSessions {
    pub user_id: Uuid,
    pub keep: Option<TokenHash>,
}

/// Stores an item whose id the caller chose: a redelivery stores nothing twice.
#[derive(Debug, Serialize, Deserialize)]
pub struct InsertItem(pub Item);

#[derive(Debug, Serialize, Deserialize)]
pub struct InsertItems(pub Vec<Item>);

/// A signed ingest batch: stored once per `key` (see `Store::insert_items_once`).
#[derive(Debug, Serialize, Deserialize)]
pub struct InsertItemsOnce {
    pub key: Vec<u8>,
    pub expires_at: DateTime<Utc>,
    pub items: Vec<Item>,
}

/// A batch of an import (`POST /api/v1/import/items`): stored like `InsertItems` (ids already
/// stored are skipped, so a file sent twice writes nothing twice), but without an event per item:
/// an import of a million rows must not become a million webhook deliveries and SSE messages.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImportItems(pub Vec<Item>);

/// A page of an export (`GET /api/v1/export/items`), after the last item of the previous page.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportItems {
    pub after: Option<ExportCursor>,
    pub limit: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GetItem {
    pub id: Uuid,
}

/// Changes an item of `owner`'s (anyone else's is "not found").
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateItem {
    pub id: Uuid,
    pub owner: Uuid,
    pub patch: ItemPatch,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteItem {
    pub id: Uuid,
    pub owner: Uuid,
}

/// A user's items, newest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListUserItems {
    pub user_id: Uuid,
    pub limit: u32,
    pub offset: u32,
    /// Keyset cursor; absent in messages of older nodes.
    #[serde(default)]
    pub after: Option<Uuid>,
}

/// Items matching every word of `query`, newest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchItems {
    pub query: String,
    pub limit: u32,
    pub offset: u32,
    #[serde(default)]
    pub after: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SampleUserIds {
    pub limit: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InsertJob(pub NewJob);

/// A stored job; `created` is false when its idempotency key had stored it before.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobInserted {
    pub job: Job,
    pub created: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GetJob {
    pub id: Uuid,
}

/// Leases up to `limit` due jobs for `lease_ms`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClaimJobs {
    pub lease_ms: u64,
    pub limit: u32,
}

impl ClaimJobs {
    pub fn new(lease: Duration, limit: u32) -> ClaimJobs {
        ClaimJobs {
            lease_ms: lease.as_millis().min(u64::MAX as u128) as u64,
            limit,
        }
    }
}

/// Records an attempt's outcome; matched on `attempt`, so a stale worker changes nothing.
#[derive(Debug, Serialize, Deserialize)]
pub struct FinishJob {
    pub id: Uuid,
    pub attempt: u32,
    pub outcome: JobOutcome,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RetryJob {
    pub id: Uuid,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListJobs {
    pub state: JobState,
    pub limit: u32,
    pub offset: u32,
}

/// Deletes finished jobs older than `before`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PurgeJobs {
    pub before: DateTime<Utc>,
}

/// Users and items in the store.
#[derive(Debug, Serialize, Deserialize)]
pub struct Counts;

/// Asks the store to prove it answers (readiness).
#[derive(Debug, Serialize, Deserialize)]
pub struct Ping;

/// The store answered: which backend it runs on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pong {
    /// "embedded" or "mongodb".
    pub backend: String,
}

/// The store role's handler: runs requests against the backend, publishes events after writes.
pub struct StoreHandler {
    pub store: Arc<dyn Store>,
    pub bus: Bus,
}

impl Service for StoreHandler {
    const ROLE: crate::bus::Role = crate::bus::Role::Store;
    type Call = StoreCall;

    fn observe(&self, kind: &'static str, elapsed: Duration) {
        metrics::histogram!("gorgon_store_op_duration_seconds", "op" => kind)
            .record(elapsed.as_secs_f64());
    }
}

/// Opens the node's database and starts the role on it.
pub async fn start(ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
    let backend = &ctx.settings.backend;
    let store: Arc<dyn Store> = backend
        .open(ctx.settings.store.clone())
        .await
        .with_context(|| {
            format!(
                "cannot open the {} store at {}",
                backend.name(),
                backend.location()
            )
        })?;
    tracing::info!(backend = backend.name(), at = %backend.location(), "store open");
    ctx.store = Some(store.clone());
    let bus = ctx.bus.clone();
    ctx.spawn(StoreHandler { store, bus }).await
}

impl Handler<InsertUser> for StoreHandler {
    async fn handle(self: Arc<Self>, InsertUser(user): InsertUser) -> Result<User> {
        self.store.insert_user(user).await
    }
}

impl Handler<GetUser> for StoreHandler {
    async fn handle(self: Arc<Self>, r: GetUser) -> Result<User> {
        self.store.get_user(r.id).await
    }
}

impl Handler<GetUserByEmail> for StoreHandler {
    async fn handle(self: Arc<Self>, r: GetUserByEmail) -> Result<User> {
        Ok(self.store.get_credentials(&r.email).await?.user)
    }
}

impl Handler<GetCredentials> for StoreHandler {
    async fn handle(self: Arc<Self>, r: GetCredentials) -> Result<Credentials> {
        let found = self.store.get_credentials(&r.email).await?;
        Ok(Credentials {
            user: found.user,
            password_hash: found.password_hash,
        })
    }
}

impl Handler<UpdateUser> for StoreHandler {
    async fn handle(self: Arc<Self>, r: UpdateUser) -> Result<User> {
        let user = self.store.update_user(r.id, r.patch).await?;
        self.bus.publish(Event::user_changed(r.id));
        Ok(user)
    }
}

impl Handler<DeleteUser> for StoreHandler {
    async fn handle(self: Arc<Self>, r: DeleteUser) -> Result<()> {
        self.store.delete_user(r.id).await?;
        self.bus.publish(Event::user_changed(r.id));
        Ok(())
    }
}

impl Handler<InsertToken> for StoreHandler {
    async fn handle(self: Arc<Self>, r: InsertToken) -> Result<()> {
        self.store
            .insert_token(r.hash, r.user_id, r.expires_at)
            .await
    }
}

impl Handler<GetSession> for StoreHandler {
    async fn handle(self: Arc<Self>, r: GetSession) -> Result<Option<(Principal, DateTime<Utc>)>> {
        self.store.get_session(r.hash).await
    }
}

impl Handler<DeleteToken> for StoreHandler {
    async fn handle(self: Arc<Self>, r: DeleteToken) -> Result<()> {
        if let Some(owner) = self.store.delete_token(r.hash).await? {
            // Other nodes may hold the token in their caches.
            self.bus.publish(Event::user_changed(owner));
        }
        Ok(())
    }
}

impl Handler<RevokeSessions> for StoreHandler {
    async fn handle(self: Arc<Self>, r: RevokeSessions) -> Result<()> {
        self.store.revoke_sessions(r.user_id, r.keep).await?;
        self.bus.publish(Event::user_changed(r.user_id));
        Ok(())
    }
}

impl Handler<InsertItem> for StoreHandler {
    async fn handle(self: Arc<Self>, InsertItem(item): InsertItem) -> Result<Item> {
        let item = self.store.insert_item(item).await?;
        self.bus.publish(item_event(EventKind::ItemCreated, &item));
        Ok(item)
    }
}

impl Handler<InsertItems> for StoreHandler {
    async fn handle(self: Arc<Self>, InsertItems(items): InsertItems) -> Result<usize> {
        let events: Vec<Event> = items
            .iter()
            .map(|i| item_event(EventKind::ItemCreated, i))
            .collect();
        let inserted = self.store.insert_items(items).await?;
        events.into_iter().for_each(|e| self.bus.publish(e));
        Ok(inserted)
    }
}

impl Handler<InsertItemsOnce> for StoreHandler {
    async fn handle(self: Arc<Self>, r: InsertItemsOnce) -> Result<usize> {
        let events: Vec<Event> = r
            .items
            .iter()
            .map(|i| item_event(EventKind::ItemCreated, i))
            .collect();
        let inserted = self
            .store
            .insert_items_once(r.key, r.expires_at, r.items)
            .await?;
        events.into_iter().for_each(|e| self.bus.publish(e));
        Ok(inserted)
    }
}

impl Handler<ImportItems> for StoreHandler {
    async fn handle(self: Arc<Self>, ImportItems(items): ImportItems) -> Result<usize> {
        self.store.insert_items(items).await
    }
}

impl Handler<ExportItems> for StoreHandler {
    async fn handle(self: Arc<Self>, r: ExportItems) -> Result<Vec<Item>> {
        self.store.export_items(r.after, r.limit).await
    }
}

impl Handler<GetItem> for StoreHandler {
    async fn handle(self: Arc<Self>, r: GetItem) -> Result<Item> {
        self.store.get_item(r.id).await
    }
}

impl Handler<UpdateItem> for StoreHandler {
    async fn handle(self: Arc<Self>, r: UpdateItem) -> Result<Item> {
        let item = self.store.update_item(r.id, r.owner, r.patch).await?;
        self.bus.publish(item_event(EventKind::ItemUpdated, &item));
        Ok(item)
    }
}

impl Handler<DeleteItem> for StoreHandler {
    async fn handle(self: Arc<Self>, r: DeleteItem) -> Result<()> {
        let item = self.store.delete_item(r.id, r.owner).await?;
        self.bus.publish(item_event(EventKind::ItemDeleted, &item));
        Ok(())
    }
}

impl ListUserItems {
    pub fn new(user_id: Uuid, page: Page) -> ListUserItems {
        ListUserItems {
            user_id,
            limit: page.limit,
            offset: page.offset,
            after: page.after,
        }
    }

    fn page(&self) -> Page {
        Page {
            limit: self.limit,
            offset: self.offset,
            after: self.after,
        }
    }
}

impl Handler<ListUserItems> for StoreHandler {
    /// A user's newest items held in memory are answered on the caller's thread, without a task.
    fn answer_now(
        &self,
        r: ListUserItems,
    ) -> std::result::Result<Result<ItemList>, ListUserItems> {
        match self.store.recent_user_items(r.user_id, r.page()) {
            Some(items) => Ok(Ok(items)),
            None => Err(r),
        }
    }

    async fn handle(self: Arc<Self>, r: ListUserItems) -> Result<ItemList> {
        self.store.list_user_items(r.user_id, r.page()).await.map(ItemList::from)
    }
}

impl SearchItems {
    pub fn new(query: String, page: Page) -> SearchItems {
        SearchItems {
            query,
            limit: page.limit,
            offset: page.offset,
            after: page.after,
        }
    }
}

impl Handler<SearchItems> for StoreHandler {
    async fn handle(self: Arc<Self>, r: SearchItems) -> Result<Vec<Item>> {
        let page = Page {
            limit: r.limit,
            offset: r.offset,
            after: r.after,
        };
        self.store.search_items(&r.query, page).await
    }
}

impl Handler<SampleUserIds> for StoreHandler {
    async fn handle(self: Arc<Self>, r: SampleUserIds) -> Result<Vec<Uuid>> {
        self.store.sample_user_ids(r.limit).await
    }
}

impl Handler<InsertJob> for StoreHandler {
    async fn handle(self: Arc<Self>, InsertJob(job): InsertJob) -> Result<JobInserted> {
        let (job, created) = self.store.insert_job(job).await?;
        if created {
            self.bus.publish(job_event(&job));
        }
        Ok(JobInserted { job, created })
    }
}

impl Handler<GetJob> for StoreHandler {
    async fn handle(self: Arc<Self>, r: GetJob) -> Result<Job> {
        self.store.get_job(r.id).await
    }
}

impl Handler<ClaimJobs> for StoreHandler {
    async fn handle(self: Arc<Self>, r: ClaimJobs) -> Result<Vec<Job>> {
        let jobs = self
            .store
            .claim_jobs(Duration::from_millis(r.lease_ms), r.limit)
            .await?;
        jobs.iter().for_each(|j| self.bus.publish(job_event(j)));
        Ok(jobs)
    }
}

impl Handler<FinishJob> for StoreHandler {
    async fn handle(self: Arc<Self>, r: FinishJob) -> Result<Job> {
        let job = self.store.finish_job(r.id, r.attempt, r.outcome).await?;
        self.bus.publish(job_event(&job));
        Ok(job)
    }
}

impl Handler<RetryJob> for StoreHandler {
    async fn handle(self: Arc<Self>, r: RetryJob) -> Result<Job> {
        let job = self.store.retry_job(r.id).await?;
        self.bus.publish(job_event(&job));
        Ok(job)
    }
}

impl Handler<ListJobs> for StoreHandler {
    async fn handle(self: Arc<Self>, r: ListJobs) -> Result<Vec<Job>> {
        self.store
            .list_jobs(r.state, Page::new(r.limit, r.offset))
            .await
    }
}

impl Handler<PurgeJobs> for StoreHandler {
    async fn handle(self: Arc<Self>, r: PurgeJobs) -> Result<u64> {
        self.store.purge_jobs(r.before).await
    }
}

impl Handler<Counts> for StoreHandler {
    async fn handle(self: Arc<Self>, _: Counts) -> Result<(u64, u64)> {
        self.store.counts().await
    }
}

impl Handler<Ping> for StoreHandler {
    async fn handle(self: Arc<Self>, _: Ping) -> Result<Pong> {
        self.store.ping().await?;
        Ok(Pong {
            backend: self.store.backend().to_string(),
        })
    }
}

fn item_event(kind: EventKind, item: &Item) -> Event {
    Event {
        kind,
        user_id: item.user_id,
        subject_id: item.id,
        at: crate::domain::now(),
        data: match kind {
            EventKind::ItemDeleted => None,
            _ => serde_json::to_value(item).ok(),
        },
        seq: 0,
    }
}

/// A job event carries the job without its payload: clients have it, and it may be large.
fn job_event(job: &Job) -> Event {
    let kind = match job.state {
        JobState::Queued => EventKind::JobQueued,
        JobState::Running => EventKind::JobRunning,
        JobState::Done => EventKind::JobDone,
        JobState::Failed => EventKind::JobFailed,
        JobState::Dead => EventKind::JobDead,
    };
    let data = serde_json::to_value(Job {
        payload: serde_json::Value::Null,
        ..job.clone()
    })
    .ok();
    Event {
        kind,
        user_id: job.user_id,
        subject_id: job.id,
        at: crate::domain::now(),
        data,
        seq: 0,
    }
}
