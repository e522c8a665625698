//! The store role: the only role that touches the database.
//!
//! Consumes `store_get` (reads, direct) and `store_put` (writes, durable) requests; after a write
//! commits it publishes a `store_notify` event on the bus: item changes on topic `items`, job
//! state changes (queued, claimed, finished, retried) on topic `jobs`. Claiming jobs is a write
//! (durable): it changes their state and lease.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{unexpected, RoleHandler};
use crate::bus::{Bus, Delivery, Event, EventKind, Protocol, Role};
use crate::domain::{
    Item, ItemPatch, Job, JobOutcome, JobState, NewJob, NewUser, Principal, TokenHash, User,
    UserPatch,
};
use crate::error::Result;
use crate::store::{Page, Store};

/// Requests the store role answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    InsertUser(NewUser),
    GetUser {
        id: Uuid,
    },
    GetCredentials {
        email: String,
    },
    UpdateUser {
        id: Uuid,
        patch: UserPatch,
    },
    DeleteUser {
        id: Uuid,
    },
    InsertToken {
        hash: TokenHash,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    GetSession {
        hash: TokenHash,
    },
    DeleteToken {
        hash: TokenHash,
    },
    /// Every session of the user but `keep` (a password change keeps the changer's own).
    RevokeSessions {
        user_id: Uuid,
        keep: Option<TokenHash>,
    },
    InsertItem(Item),
    InsertItems(Vec<Item>),
    /// A signed ingest batch: stored once per `key` (see `Store::insert_items_once`).
    InsertItemsOnce {
        key: Vec<u8>,
        expires_at: DateTime<Utc>,
        items: Vec<Item>,
    },
    GetItem {
        id: Uuid,
    },
    UpdateItem {
        id: Uuid,
        owner: Uuid,
        patch: ItemPatch,
    },
    DeleteItem {
        id: Uuid,
        owner: Uuid,
    },
    ListUserItems {
        user_id: Uuid,
        limit: u32,
        offset: u32,
        /// Keyset cursor; absent in messages of older nodes.
        #[serde(default)]
        after: Option<Uuid>,
    },
    SearchItems {
        query: String,
        limit: u32,
        offset: u32,
        #[serde(default)]
        after: Option<Uuid>,
    },
    SampleUserIds {
        limit: u32,
    },
    InsertJob(NewJob),
    GetJob {
        id: Uuid,
    },
    ClaimJobs {
        lease_ms: u64,
        limit: u32,
    },
    FinishJob {
        id: Uuid,
        attempt: u32,
        outcome: JobOutcome,
    },
    RetryJob {
        id: Uuid,
    },
    ListJobs {
        state: JobState,
        limit: u32,
        offset: u32,
    },
    PurgeJobs {
        before: DateTime<Utc>,
    },
    Counts,
    Ping,
}

/// Replies of the store role.
#[derive(Debug, Serialize, Deserialize)]
pub enum StoreReply {
    User(User),
    Credentials { user: User, password_hash: String },
    Session(Option<(Principal, DateTime<Utc>)>),
    Item(Item),
    Items(Vec<Item>),
    Inserted(usize),
    UserIds(Vec<Uuid>),
    Job(Job),
    JobInserted { job: Job, created: bool },
    Jobs(Vec<Job>),
    Purged(u64),
    Counts { users: u64, items: u64 },
    Done,
}

pub struct StoreProtocol;

impl Protocol for StoreProtocol {
    const ROLE: Role = Role::Store;
    type Request = StoreRequest;
    type Reply = StoreReply;

    fn kind(request: &StoreRequest) -> &'static str {
        use StoreRequest::*;
        match request {
            InsertUser(_) => "insert_user",
            GetUser { .. } => "get_user",
            GetCredentials { .. } => "get_credentials",
            UpdateUser { .. } => "update_user",
            DeleteUser { .. } => "delete_user",
            RevokeSessions { .. } => "revoke_sessions",
            InsertToken { .. } => "insert_token",
            GetSession { .. } => "get_session",
            DeleteToken { .. } => "delete_token",
            InsertItem(_) => "insert_item",
            InsertItems(_) => "insert_items",
            InsertItemsOnce { .. } => "insert_items_once",
            GetItem { .. } => "get_item",
            UpdateItem { .. } => "update_item",
            DeleteItem { .. } => "delete_item",
            ListUserItems { .. } => "list_user_items",
            SearchItems { .. } => "search_items",
            SampleUserIds { .. } => "sample_user_ids",
            InsertJob(_) => "insert_job",
            GetJob { .. } => "get_job",
            ClaimJobs { .. } => "claim_jobs",
            FinishJob { .. } => "finish_job",
            RetryJob { .. } => "retry_job",
            ListJobs { .. } => "list_jobs",
            PurgeJobs { .. } => "purge_jobs",
            Counts => "counts",
            Ping => "ping",
        }
    }

    fn delivery(request: &StoreRequest) -> Delivery {
        use StoreRequest::*;
        match request {
            InsertUser(_)
            | UpdateUser { .. }
            | DeleteUser { .. }
            | RevokeSessions { .. }
            | InsertToken { .. }
            | DeleteToken { .. }
            | InsertItem(_)
            | InsertItems(_)
            | InsertItemsOnce { .. }
            | UpdateItem { .. }
            | DeleteItem { .. }
            | InsertJob(_)
            | ClaimJobs { .. }
            | FinishJob { .. }
            | RetryJob { .. }
            | PurgeJobs { .. } => Delivery::Durable,
            _ => Delivery::Direct,
        }
    }
}

/// The store role's handler: runs requests against the backend, publishes events after writes.
pub struct StoreHandler {
    pub store: Arc<dyn Store>,
    pub bus: Bus,
}

impl RoleHandler for StoreHandler {
    type Protocol = StoreProtocol;

    /// A user's newest items held in memory are answered by the actor itself, without a task.
    fn answer_now(
        &self,
        request: StoreRequest,
    ) -> std::result::Result<Result<StoreReply>, StoreRequest> {
        if let StoreRequest::ListUserItems {
            user_id,
            limit,
            offset,
            after,
        } = request
        {
            if let Some(items) = self.store.recent_user_items(
                user_id,
                Page {
                    limit,
                    offset,
                    after,
                },
            ) {
                return Ok(Ok(StoreReply::Items(items)));
            }
        }
        Err(request)
    }

    async fn handle(self: Arc<Self>, request: StoreRequest) -> Result<StoreReply> {
        let kind = StoreProtocol::kind(&request);
        let started = Instant::now();
        let result = execute(self.store.as_ref(), &self.bus, request).await;
        metrics::histogram!("gorgon_store_op_duration_seconds", "op" => kind)
            .record(started.elapsed().as_secs_f64());
        result
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
    }
}

async fn execute(store: &dyn Store, bus: &Bus, request: StoreRequest) -> Result<StoreReply> {
    use StoreRequest::*;
    Ok(match request {
        InsertUser(user) => StoreReply::User(store.insert_user(user).await?),
        GetUser { id } => StoreReply::User(store.get_user(id).await?),
        GetCredentials { email } => {
            let c = store.get_credentials(&email).await?;
            StoreReply::Credentials {
                user: c.user,
                password_hash: c.password_hash,
            }
        }
        UpdateUser { id, patch } => {
            let user = store.update_user(id, patch).await?;
            bus.publish(Event::user_changed(id));
            StoreReply::User(user)
        }
        DeleteUser { id } => {
            store.delete_user(id).await?;
            bus.publish(Event::user_changed(id));
            StoreReply::Done
        }
        RevokeSessions { user_id, keep } => {
            store.revoke_sessions(user_id, keep).await?;
            bus.publish(Event::user_changed(user_id));
            StoreReply::Done
        }
        InsertToken {
            hash,
            user_id,
            expires_at,
        } => {
            store.insert_token(hash, user_id, expires_at).await?;
            StoreReply::Done
        }
        GetSession { hash } => StoreReply::Session(store.get_session(hash).await?),
        DeleteToken { hash } => {
            if let Some(owner) = store.delete_token(hash).await? {
                // Other nodes may hold the token in their caches.
                bus.publish(Event::user_changed(owner));
            }
            StoreReply::Done
        }
        InsertItem(item) => {
            let item = store.insert_item(item).await?;
            bus.publish(item_event(EventKind::ItemCreated, &item));
            StoreReply::Item(item)
        }
        InsertItems(items) => {
            let events: Vec<Event> = items
                .iter()
                .map(|i| item_event(EventKind::ItemCreated, i))
                .collect();
            let inserted = store.insert_items(items).await?;
            events.into_iter().for_each(|e| bus.publish(e));
            StoreReply::Inserted(inserted)
        }
        InsertItemsOnce {
            key,
            expires_at,
            items,
        } => {
            let events: Vec<Event> = items
                .iter()
                .map(|i| item_event(EventKind::ItemCreated, i))
                .collect();
            let inserted = store.insert_items_once(key, expires_at, items).await?;
            events.into_iter().for_each(|e| bus.publish(e));
            StoreReply::Inserted(inserted)
        }
        GetItem { id } => StoreReply::Item(store.get_item(id).await?),
        UpdateItem { id, owner, patch } => {
            let item = store.update_item(id, owner, patch).await?;
            bus.publish(item_event(EventKind::ItemUpdated, &item));
            StoreReply::Item(item)
        }
        DeleteItem { id, owner } => {
            let item = store.delete_item(id, owner).await?;
            bus.publish(item_event(EventKind::ItemDeleted, &item));
            StoreReply::Done
        }
        ListUserItems {
            user_id,
            limit,
            offset,
            after,
        } => StoreReply::Items(
            store
                .list_user_items(
                    user_id,
                    Page {
                        limit,
                        offset,
                        after,
                    },
                )
                .await?,
        ),
        SearchItems {
            query,
            limit,
            offset,
            after,
        } => StoreReply::Items(
            store
                .search_items(
                    &query,
                    Page {
                        limit,
                        offset,
                        after,
                    },
                )
                .await?,
        ),
        SampleUserIds { limit } => StoreReply::UserIds(store.sample_user_ids(limit).await?),
        InsertJob(job) => {
            let (job, created) = store.insert_job(job).await?;
            if created {
                bus.publish(job_event(&job));
            }
            StoreReply::JobInserted { job, created }
        }
        GetJob { id } => StoreReply::Job(store.get_job(id).await?),
        ClaimJobs { lease_ms, limit } => {
            let jobs = store
                .claim_jobs(std::time::Duration::from_millis(lease_ms), limit)
                .await?;
            jobs.iter().for_each(|j| bus.publish(job_event(j)));
            StoreReply::Jobs(jobs)
        }
        FinishJob {
            id,
            attempt,
            outcome,
        } => {
            let job = store.finish_job(id, attempt, outcome).await?;
            bus.publish(job_event(&job));
            StoreReply::Job(job)
        }
        RetryJob { id } => {
            let job = store.retry_job(id).await?;
            bus.publish(job_event(&job));
            StoreReply::Job(job)
        }
        ListJobs {
            state,
            limit,
            offset,
        } => StoreReply::Jobs(store.list_jobs(state, Page::new(limit, offset)).await?),
        PurgeJobs { before } => StoreReply::Purged(store.purge_jobs(before).await?),
        Counts => {
            let (users, items) = store.counts().await?;
            StoreReply::Counts { users, items }
        }
        Ping => {
            store.ping().await?;
            StoreReply::Done
        }
    })
}

// ---- typed client -------------------------------------------------------------------------

async fn call(bus: &Bus, request: StoreRequest) -> Result<StoreReply> {
    bus.call::<StoreProtocol>(request).await
}

macro_rules! expect {
    ($reply:expr, $pat:pat => $out:expr, $kind:literal) => {
        match $reply {
            $pat => Ok($out),
            _ => Err(unexpected("store", $kind)),
        }
    };
}

pub async fn insert_user(bus: &Bus, user: NewUser) -> Result<User> {
    expect!(call(bus, StoreRequest::InsertUser(user)).await?, StoreReply::User(u) => u, "insert_user")
}

pub async fn get_user(bus: &Bus, id: Uuid) -> Result<User> {
    expect!(call(bus, StoreRequest::GetUser { id }).await?, StoreReply::User(u) => u, "get_user")
}

pub async fn get_credentials(bus: &Bus, email: String) -> Result<(User, String)> {
    expect!(
        call(bus, StoreRequest::GetCredentials { email }).await?,
        StoreReply::Credentials { user, password_hash } => (user, password_hash),
        "get_credentials"
    )
}

pub async fn update_user(bus: &Bus, id: Uuid, patch: UserPatch) -> Result<User> {
    expect!(call(bus, StoreRequest::UpdateUser { id, patch }).await?, StoreReply::User(u) => u, "update_user")
}

pub async fn delete_user(bus: &Bus, id: Uuid) -> Result<()> {
    expect!(call(bus, StoreRequest::DeleteUser { id }).await?, StoreReply::Done => (), "delete_user")
}

pub async fn revoke_sessions(bus: &Bus, user_id: Uuid, keep: Option<TokenHash>) -> Result<()> {
    expect!(call(bus, StoreRequest::RevokeSessions { user_id, keep }).await?, StoreReply::Done => (), "revoke_sessions")
}

pub async fn insert_token(
    bus: &Bus,
    hash: TokenHash,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    expect!(
        call(bus, StoreRequest::InsertToken { hash, user_id, expires_at }).await?,
        StoreReply::Done => (),
        "insert_token"
    )
}

pub async fn get_session(bus: &Bus, hash: TokenHash) -> Result<Option<(Principal, DateTime<Utc>)>> {
    expect!(call(bus, StoreRequest::GetSession { hash }).await?, StoreReply::Session(s) => s, "get_session")
}

pub async fn delete_token(bus: &Bus, hash: TokenHash) -> Result<()> {
    expect!(call(bus, StoreRequest::DeleteToken { hash }).await?, StoreReply::Done => (), "delete_token")
}

pub async fn insert_item(bus: &Bus, item: Item) -> Result<Item> {
    expect!(call(bus, StoreRequest::InsertItem(item)).await?, StoreReply::Item(i) => i, "insert_item")
}

pub async fn insert_items(bus: &Bus, items: Vec<Item>) -> Result<usize> {
    expect!(call(bus, StoreRequest::InsertItems(items)).await?, StoreReply::Inserted(n) => n, "insert_items")
}

/// Stores a signed ingest batch once per `key`; `Conflict` for a replay (see
/// `Store::insert_items_once`).
pub async fn insert_items_once(
    bus: &Bus,
    key: Vec<u8>,
    expires_at: DateTime<Utc>,
    items: Vec<Item>,
) -> Result<usize> {
    expect!(
        call(bus, StoreRequest::InsertItemsOnce { key, expires_at, items }).await?,
        StoreReply::Inserted(n) => n,
        "insert_items_once"
    )
}

pub async fn get_item(bus: &Bus, id: Uuid) -> Result<Item> {
    expect!(call(bus, StoreRequest::GetItem { id }).await?, StoreReply::Item(i) => i, "get_item")
}

pub async fn update_item(bus: &Bus, id: Uuid, owner: Uuid, patch: ItemPatch) -> Result<Item> {
    expect!(
        call(bus, StoreRequest::UpdateItem { id, owner, patch }).await?,
        StoreReply::Item(i) => i,
        "update_item"
    )
}

pub async fn delete_item(bus: &Bus, id: Uuid, owner: Uuid) -> Result<()> {
    expect!(call(bus, StoreRequest::DeleteItem { id, owner }).await?, StoreReply::Done => (), "delete_item")
}

pub async fn list_user_items(bus: &Bus, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
    expect!(
        call(bus, StoreRequest::ListUserItems { user_id, limit: page.limit, offset: page.offset, after: page.after }).await?,
        StoreReply::Items(i) => i,
        "list_user_items"
    )
}

pub async fn search_items(bus: &Bus, query: String, page: Page) -> Result<Vec<Item>> {
    expect!(
        call(bus, StoreRequest::SearchItems { query, limit: page.limit, offset: page.offset, after: page.after }).await?,
        StoreReply::Items(i) => i,
        "search_items"
    )
}

pub async fn sample_user_ids(bus: &Bus, limit: u32) -> Result<Vec<Uuid>> {
    expect!(call(bus, StoreRequest::SampleUserIds { limit }).await?, StoreReply::UserIds(ids) => ids, "sample_user_ids")
}

pub async fn counts(bus: &Bus) -> Result<(u64, u64)> {
    expect!(call(bus, StoreRequest::Counts).await?, StoreReply::Counts { users, items } => (users, items), "counts")
}

pub async fn ping(bus: &Bus) -> Result<()> {
    expect!(call(bus, StoreRequest::Ping).await?, StoreReply::Done => (), "ping")
}

/// Stores a new job; `(job, false)` when its idempotency key had already stored it.
pub async fn insert_job(bus: &Bus, job: NewJob) -> Result<(Job, bool)> {
    expect!(
        call(bus, StoreRequest::InsertJob(job)).await?,
        StoreReply::JobInserted { job, created } => (job, created),
        "insert_job"
    )
}

pub async fn get_job(bus: &Bus, id: Uuid) -> Result<Job> {
    expect!(call(bus, StoreRequest::GetJob { id }).await?, StoreReply::Job(j) => j, "get_job")
}

pub async fn claim_jobs(bus: &Bus, lease: std::time::Duration, limit: u32) -> Result<Vec<Job>> {
    let lease_ms = lease.as_millis().min(u64::MAX as u128) as u64;
    expect!(
        call(bus, StoreRequest::ClaimJobs { lease_ms, limit }).await?,
        StoreReply::Jobs(j) => j,
        "claim_jobs"
    )
}

pub async fn finish_job(bus: &Bus, id: Uuid, attempt: u32, outcome: JobOutcome) -> Result<Job> {
    expect!(
        call(bus, StoreRequest::FinishJob { id, attempt, outcome }).await?,
        StoreReply::Job(j) => j,
        "finish_job"
    )
}

pub async fn retry_job(bus: &Bus, id: Uuid) -> Result<Job> {
    expect!(call(bus, StoreRequest::RetryJob { id }).await?, StoreReply::Job(j) => j, "retry_job")
}

pub async fn list_jobs(bus: &Bus, state: JobState, page: Page) -> Result<Vec<Job>> {
    expect!(
        call(bus, StoreRequest::ListJobs { state, limit: page.limit, offset: page.offset }).await?,
        StoreReply::Jobs(j) => j,
        "list_jobs"
    )
}

pub async fn purge_jobs(bus: &Bus, before: DateTime<Utc>) -> Result<u64> {
    expect!(call(bus, StoreRequest::PurgeJobs { before }).await?, StoreReply::Purged(n) => n, "purge_jobs")
}
