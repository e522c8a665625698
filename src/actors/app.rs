//! The app role: the application logic for users, items and jobs.
//!
//! It decides who may do what (self or admin for users, owner or admin for jobs; admin rights are
//! always read from the store, never from a cached token), builds the records to store, and asks
//! the store role to read or write them. Requests with nothing to decide (reading an item, a
//! user's items, a search; writing one's own item) go from the HTTP layer to the store role
//! directly. The job workers (`crate::jobs::worker`) run beside it, started with it.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use super::auth::CheckPassword;
use super::store::{self, JobInserted};
use super::{RoleContext, Spawned};
use crate::bus::{Bus, Handler, Service};
use crate::domain::password::{self, Password};
use crate::domain::{
    Item, ItemPatch, Job, JobState, NewItem, NewJob, Principal, TokenHash, User, UserInput,
    UserPatch, UserPatchInput,
};
use crate::error::{Error, Result};

crate::requests! {
    role App, call AppCall;
    CreateUser => "create_user", secret, User;
    GetUser => "get_user", direct, User;
    UpdateUser => "update_user", secret, User;
    DeleteUser => "delete_user", durable, ();
    SubmitJob => "submit_job", durable, JobInserted;
    GetJob => "get_job", direct, Job;
    ListJobs => "list_jobs", direct, Vec<Job>;
    RetryJob => "retry_job", durable, Job;
    CheckAdmin => "check_admin", direct, ();
    CreateItem => "create_item", durable, Item;
    UpdateItem => "update_item", durable, Item;
    DeleteItem => "delete_item", durable, ();
}

// `actor` is the authenticated caller in every request.

/// An admin creates an account. Carries a password: direct, never queued. `id` is chosen by the
/// caller.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateUser {
    pub actor: Principal,
    pub id: Uuid,
    /// `Debug` shows no password.
    pub input: UserInput,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GetUser {
    pub actor: Principal,
    pub id: Uuid,
}

/// A partial update of a user. May carry the current and a new password: direct, never queued
/// (the store gets the new password's hash only).
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateUser {
    pub actor: Principal,
    pub id: Uuid,
    /// `Debug` shows no password.
    pub patch: UserPatchInput,
    /// The session the change was made with: a password change revokes every other one.
    #[serde(default)]
    pub session: Option<TokenHash>,
    /// The client's address, for the login limits a current-password check counts against.
    #[serde(default)]
    pub client: Option<IpAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteUser {
    pub actor: Principal,
    pub id: Uuid,
}

/// `payload` is a JSON object (checked at the edge); `kind` is checked here, against the kinds
/// this node's job registry knows. `id` is chosen by the caller, so a redelivered submission
/// stores the job once.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitJob {
    pub actor: Principal,
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GetJob {
    pub actor: Principal,
    pub id: Uuid,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListJobs {
    pub actor: Principal,
    pub state: JobState,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RetryJob {
    pub actor: Principal,
    pub id: Uuid,
}

/// Whether the caller may use the operator's routes (queues, dead letters): an admin now, or
/// 403. Answers nothing else.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckAdmin {
    pub actor: Principal,
}

/// Item writes as queued by builds before requests were types (the HTTP layer now writes
/// to the store role directly): still handled, so an upgrade loses none waiting in Redis.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateItem {
    pub actor: Principal,
    pub id: Uuid,
    pub ts: DateTime<Utc>,
    pub item: NewItem,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateItem {
    pub actor: Principal,
    pub id: Uuid,
    pub patch: ItemPatch,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteItem {
    pub actor: Principal,
    pub id: Uuid,
}

/// The app role's handler.
pub struct AppHandler {
    pub bus: Bus,
    /// The job kinds submissions may name.
    pub job_kinds: Vec<String>,
    /// Wakes this node's job workers when a job is queued here.
    pub wake_workers: Arc<Notify>,
    /// Unfinished jobs a user (not an admin) may have; `None`: no limit.
    pub max_unfinished_jobs: Option<u32>,
}

impl Service for AppHandler {
    const ROLE: crate::bus::Role = crate::bus::Role::App;
    type Call = AppCall;
}

/// Starts the role; the node's job workers (started after the roles) wait on its wake-up.
pub async fn start(ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
    let wake_workers = Arc::new(Notify::new());
    ctx.wake_workers = Some(wake_workers.clone());
    let handler = AppHandler {
        bus: ctx.bus.clone(),
        job_kinds: ctx.job_kinds.clone(),
        wake_workers,
        max_unfinished_jobs: ctx.settings.user_max_unfinished_jobs,
    };
    ctx.spawn(handler).await
}

fn forbid_unless(allowed: bool, what: &str) -> Result<()> {
    if allowed {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("you may not {what}")))
    }
}

/// Whether the caller is an admin *now*: admin rights are read from the store, never taken
/// from a token validated before a demotion (a cached non-admin has nothing to lose by waiting).
async fn admin_now(bus: &Bus, actor: &Principal) -> Result<bool> {
    if !actor.admin {
        return Ok(false);
    }
    match bus.call(store::GetUser { id: actor.user_id }).await {
        Ok(user) => Ok(user.admin),
        Err(Error::NotFound(_)) => Err(Error::Unauthorized("this account no longer exists".into())),
        Err(e) => Err(e),
    }
}

/// Self, or an admin now, may manage a user.
async fn may_manage(bus: &Bus, actor: &Principal, user_id: Uuid) -> Result<bool> {
    if actor.user_id == user_id {
        return Ok(true);
    }
    admin_now(bus, actor).await
}

impl Handler<CreateUser> for AppHandler {
    async fn handle(self: Arc<Self>, r: CreateUser) -> Result<User> {
        forbid_unless(
            admin_now(&self.bus, &r.actor).await?,
            "create users (admin only)",
        )?;
        let user = super::auth::new_user(r.id, r.input).await?;
        self.bus.call(store::InsertUser(user)).await
    }
}

impl Handler<GetUser> for AppHandler {
    async fn handle(self: Arc<Self>, r: GetUser) -> Result<User> {
        forbid_unless(
            may_manage(&self.bus, &r.actor, r.id).await?,
            "read another user",
        )?;
        self.bus.call(store::GetUser { id: r.id }).await
    }
}

impl Handler<UpdateUser> for AppHandler {
    async fn handle(self: Arc<Self>, r: UpdateUser) -> Result<User> {
        update_user_now(&self.bus, r).await
    }
}

impl Handler<DeleteUser> for AppHandler {
    async fn handle(self: Arc<Self>, r: DeleteUser) -> Result<()> {
        forbid_unless(
            may_manage(&self.bus, &r.actor, r.id).await?,
            "delete another user",
        )?;
        self.bus.call(store::DeleteUser { id: r.id }).await
    }
}

impl Handler<SubmitJob> for AppHandler {
    async fn handle(self: Arc<Self>, r: SubmitJob) -> Result<JobInserted> {
        if !self.job_kinds.contains(&r.kind) {
            return Err(Error::invalid(
                "kind",
                format!("unknown job kind; known: {}", self.job_kinds.join(", ")),
            ));
        }
        let new = NewJob {
            id: r.id,
            user_id: r.actor.user_id,
            kind: r.kind,
            payload: r.payload,
            idempotency_key: r.idempotency_key,
            created_at: crate::domain::now(),
            max_unfinished: self.max_unfinished_jobs.filter(|_| !r.actor.admin),
        };
        let inserted = self.bus.call(store::InsertJob(new)).await?;
        if inserted.created {
            self.wake_workers.notify_one();
        }
        Ok(inserted)
    }
}

impl Handler<GetJob> for AppHandler {
    async fn handle(self: Arc<Self>, r: GetJob) -> Result<Job> {
        let job = self.bus.call(store::GetJob { id: r.id }).await?;
        forbid_unless(
            may_manage(&self.bus, &r.actor, job.user_id).await?,
            "read another user's job",
        )?;
        Ok(job)
    }
}

impl Handler<ListJobs> for AppHandler {
    async fn handle(self: Arc<Self>, r: ListJobs) -> Result<Vec<Job>> {
        forbid_unless(
            admin_now(&self.bus, &r.actor).await?,
            "list jobs (admin only)",
        )?;
        self.bus
            .call(store::ListJobs {
                state: r.state,
                limit: r.limit,
                offset: r.offset,
            })
            .await
    }
}

impl Handler<RetryJob> for AppHandler {
    async fn handle(self: Arc<Self>, r: RetryJob) -> Result<Job> {
        forbid_unless(
            admin_now(&self.bus, &r.actor).await?,
            "retry jobs (admin only)",
        )?;
        let job = self.bus.call(store::RetryJob { id: r.id }).await?;
        self.wake_workers.notify_one();
        Ok(job)
    }
}

impl Handler<CheckAdmin> for AppHandler {
    async fn handle(self: Arc<Self>, r: CheckAdmin) -> Result<()> {
        forbid_unless(
            admin_now(&self.bus, &r.actor).await?,
            "use the operator's routes (admin only)",
        )
    }
}

impl Handler<CreateItem> for AppHandler {
    async fn handle(self: Arc<Self>, r: CreateItem) -> Result<Item> {
        let item = r.item.into_item(r.id, r.actor.user_id, r.ts);
        self.bus.call(store::InsertItem(item)).await
    }
}

impl Handler<UpdateItem> for AppHandler {
    async fn handle(self: Arc<Self>, r: UpdateItem) -> Result<Item> {
        self.bus
            .call(store::UpdateItem {
                id: r.id,
                owner: r.actor.user_id,
                patch: r.patch,
            })
            .await
    }
}

impl Handler<DeleteItem> for AppHandler {
    async fn handle(self: Arc<Self>, r: DeleteItem) -> Result<()> {
        self.bus
            .call(store::DeleteItem {
                id: r.id,
                owner: r.actor.user_id,
            })
            .await
    }
}

/// A partial update of a user. Changing one's own password or email needs the current password
/// (checked within the login limits); a new password revokes every session of the user but the one the
/// change was made with (all of them when an admin resets someone else's).
async fn update_user_now(bus: &Bus, request: UpdateUser) -> Result<User> {
    let UpdateUser {
        actor,
        id,
        patch,
        session,
        client,
    } = request;
    forbid_unless(may_manage(bus, &actor, id).await?, "change another user")?;
    if patch.admin.is_some() {
        forbid_unless(
            admin_now(bus, &actor).await?,
            "change the admin flag (admin only)",
        )?;
    }
    let own = actor.user_id == id;
    let new_password = patch.password.as_deref().map(Password::parse).transpose()?;
    // Who holds only a token (left on a shared machine, say) must not take the account over:
    // a new password or email of one's own needs the current password.
    if own && (new_password.is_some() || patch.email.is_some()) {
        let current = patch.current_password.ok_or_else(|| {
            Error::invalid(
                "current_password",
                "is required to change your own password or email",
            )
        })?;
        let email = bus.call(store::GetUser { id }).await?.email;
        bus.call(CheckPassword {
            email,
            password: current,
            client,
        })
        .await
        .map_err(|e| match e {
            Error::Unauthorized(_) => Error::invalid("current_password", "does not match"),
            other => other,
        })?;
    }
    let password_hash = match new_password {
        Some(new) => Some(password::hash(new).await?),
        None => None,
    };
    let new_password = password_hash.is_some();
    let user = bus
        .call(store::UpdateUser {
            id,
            patch: UserPatch {
                name: patch.name,
                email: patch.email,
                group: patch.group,
                extra: patch.extra,
                admin: patch.admin,
                password_hash,
            },
        })
        .await?;
    if new_password {
        bus.call(store::RevokeSessions {
            user_id: id,
            keep: session.filter(|_| own),
        })
        .await?;
    }
    Ok(user)
}
