//! The app role: the application logic for users, items and jobs.
//!
//! It decides who may do what (self or admin for users, owner for item writes, owner or admin
//! for jobs; admin rights are always read from the store, never from a cached token), builds the
//! records to store, and asks the store role to read or write them. The
//! job workers (`crate::jobs::worker`) run beside it, started with it.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{auth, store, unexpected, RoleHandler};
use crate::bus::{Bus, Delivery, Protocol, Role};
use crate::domain::password::{self, Password};
use crate::domain::{
    Item, ItemPatch, Job, JobState, NewItem, NewJob, Principal, TokenHash, User, UserInput,
    UserPatch, UserPatchInput,
};
use crate::error::{Error, Result};
use crate::jobs::JobRegistry;
use crate::store::Page;

/// Requests the app role answers. `actor` is the authenticated caller.
#[derive(Debug, Serialize, Deserialize)]
pub enum AppRequest {
    /// `id` is chosen by the caller, so a redelivered request creates nothing twice.
    CreateUser {
        actor: Principal,
        id: Uuid,
        input: UserInput,
    },
    GetUser {
        actor: Principal,
        id: Uuid,
    },
    UpdateUser {
        actor: Principal,
        id: Uuid,
        patch: UserPatchInput,
        /// The session the change was made with: a password change revokes every other one.
        #[serde(default)]
        session: Option<TokenHash>,
        /// The client's address, for the login limits a current-password check counts against.
        #[serde(default)]
        client: Option<IpAddr>,
    },
    DeleteUser {
        actor: Principal,
        id: Uuid,
    },
    /// `id` and `ts` are chosen by the caller, so a redelivered request creates nothing twice.
    CreateItem {
        actor: Principal,
        id: Uuid,
        ts: DateTime<Utc>,
        item: NewItem,
    },
    GetItem {
        id: Uuid,
    },
    UpdateItem {
        actor: Principal,
        id: Uuid,
        patch: ItemPatch,
    },
    DeleteItem {
        actor: Principal,
        id: Uuid,
    },
    ListUserItems {
        user_id: Uuid,
        limit: u32,
        offset: u32,
        /// Keyset cursor (`?after=`); absent in messages of older nodes.
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
    /// `payload` is a JSON object (checked at the edge); `kind` is checked here, against the
    /// kinds this role's registry knows.
    SubmitJob {
        actor: Principal,
        id: Uuid,
        kind: String,
        payload: serde_json::Value,
        idempotency_key: Option<String>,
    },
    GetJob {
        actor: Principal,
        id: Uuid,
    },
    ListJobs {
        actor: Principal,
        state: JobState,
        limit: u32,
        offset: u32,
    },
    RetryJob {
        actor: Principal,
        id: Uuid,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AppReply {
    User(User),
    Item(Item),
    Items(Vec<Item>),
    Job(Job),
    /// `created` is false when an Idempotency-Key found the job stored before.
    JobSubmitted {
        job: Job,
        created: bool,
    },
    Jobs(Vec<Job>),
    Done,
}

pub struct AppProtocol;

impl Protocol for AppProtocol {
    const ROLE: Role = Role::App;
    type Request = AppRequest;
    type Reply = AppReply;

    fn kind(request: &AppRequest) -> &'static str {
        use AppRequest::*;
        match request {
            CreateUser { .. } => "create_user",
            GetUser { .. } => "get_user",
            UpdateUser { .. } => "update_user",
            DeleteUser { .. } => "delete_user",
            CreateItem { .. } => "create_item",
            GetItem { .. } => "get_item",
            UpdateItem { .. } => "update_item",
            DeleteItem { .. } => "delete_item",
            ListUserItems { .. } => "list_user_items",
            SearchItems { .. } => "search_items",
            SubmitJob { .. } => "submit_job",
            GetJob { .. } => "get_job",
            ListJobs { .. } => "list_jobs",
            RetryJob { .. } => "retry_job",
        }
    }

    fn delivery(request: &AppRequest) -> Delivery {
        use AppRequest::*;
        match request {
            GetUser { .. }
            | GetItem { .. }
            | ListUserItems { .. }
            | SearchItems { .. }
            | GetJob { .. }
            | ListJobs { .. } => Delivery::Direct,
            _ => Delivery::Durable,
        }
    }
}

/// The app role's handler.
pub struct AppHandler {
    pub bus: Bus,
    /// The job kinds submissions may name.
    pub jobs: JobRegistry,
    /// Wakes this node's job workers when a job is queued here.
    pub wake_workers: Arc<Notify>,
    /// Unfinished jobs a user (not an admin) may have; `None`: no limit.
    pub max_unfinished_jobs: Option<u32>,
}

impl RoleHandler for AppHandler {
    type Protocol = AppProtocol;

    async fn handle(self: Arc<Self>, request: AppRequest) -> Result<AppReply> {
        execute(&self, request).await
    }
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
    match store::get_user(bus, actor.user_id).await {
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

async fn execute(handler: &AppHandler, request: AppRequest) -> Result<AppReply> {
    use AppRequest::*;
    let bus = &handler.bus;
    Ok(match request {
        CreateUser { actor, id, input } => {
            forbid_unless(admin_now(bus, &actor).await?, "create users (admin only)")?;
            AppReply::User(store::insert_user(bus, auth::new_user(id, input).await?).await?)
        }
        GetUser { actor, id } => {
            forbid_unless(may_manage(bus, &actor, id).await?, "read another user")?;
            AppReply::User(store::get_user(bus, id).await?)
        }
        UpdateUser {
            actor,
            id,
            patch,
            session,
            client,
        } => AppReply::User(update_user_now(bus, actor, id, patch, session, client).await?),
        DeleteUser { actor, id } => {
            forbid_unless(may_manage(bus, &actor, id).await?, "delete another user")?;
            store::delete_user(bus, id).await?;
            AppReply::Done
        }
        CreateItem {
            actor,
            id,
            ts,
            item,
        } => AppReply::Item(store::insert_item(bus, item.into_item(id, actor.user_id, ts)).await?),
        GetItem { id } => AppReply::Item(store::get_item(bus, id).await?),
        UpdateItem { actor, id, patch } => {
            AppReply::Item(store::update_item(bus, id, actor.user_id, patch).await?)
        }
        DeleteItem { actor, id } => {
            store::delete_item(bus, id, actor.user_id).await?;
            AppReply::Done
        }
        ListUserItems {
            user_id,
            limit,
            offset,
            after,
        } => AppReply::Items(
            store::list_user_items(
                bus,
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
        } => AppReply::Items(
            store::search_items(
                bus,
                query,
                Page {
                    limit,
                    offset,
                    after,
                },
            )
            .await?,
        ),
        GetJob { actor, id } => {
            let job = store::get_job(bus, id).await?;
            forbid_unless(
                may_manage(bus, &actor, job.user_id).await?,
                "read another user's job",
            )?;
            AppReply::Job(job)
        }
        ListJobs {
            actor,
            state,
            limit,
            offset,
        } => {
            forbid_unless(admin_now(bus, &actor).await?, "list jobs (admin only)")?;
            AppReply::Jobs(store::list_jobs(bus, state, Page::new(limit, offset)).await?)
        }
        SubmitJob {
            actor,
            id,
            kind,
            payload,
            idempotency_key,
        } => {
            if handler.jobs.get(&kind).is_none() {
                return Err(Error::invalid(
                    "kind",
                    format!(
                        "unknown job kind; known: {}",
                        handler.jobs.kinds().join(", ")
                    ),
                ));
            }
            let new = NewJob {
                id,
                user_id: actor.user_id,
                kind,
                payload,
                idempotency_key,
                created_at: crate::domain::now(),
                max_unfinished: handler.max_unfinished_jobs.filter(|_| !actor.admin),
            };
            let (job, created) = store::insert_job(bus, new).await?;
            if created {
                handler.wake_workers.notify_one();
            }
            AppReply::JobSubmitted { job, created }
        }
        RetryJob { actor, id } => {
            forbid_unless(admin_now(bus, &actor).await?, "retry jobs (admin only)")?;
            let job = store::retry_job(bus, id).await?;
            handler.wake_workers.notify_one();
            AppReply::Job(job)
        }
    })
}

/// A partial update of a user. Changing one's own password or email needs the current password
/// (checked within the login limits); a new password revokes every session of the user but the one the
/// change was made with (all of them when an admin resets someone else's).
async fn update_user_now(
    bus: &Bus,
    actor: Principal,
    id: Uuid,
    patch: UserPatchInput,
    session: Option<TokenHash>,
    client: Option<IpAddr>,
) -> Result<User> {
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
        let email = store::get_user(bus, id).await?.email;
        auth::check_password(bus, email, current, client)
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
    let user = store::update_user(
        bus,
        id,
        UserPatch {
            name: patch.name,
            email: patch.email,
            group: patch.group,
            extra: patch.extra,
            admin: patch.admin,
            password_hash,
        },
    )
    .await?;
    if new_password {
        store::revoke_sessions(bus, id, session.filter(|_| own)).await?;
    }
    Ok(user)
}

// ---- typed client -------------------------------------------------------------------------

async fn call(bus: &Bus, request: AppRequest) -> Result<AppReply> {
    bus.call::<AppProtocol>(request).await
}

fn user(reply: AppReply, kind: &str) -> Result<User> {
    match reply {
        AppReply::User(u) => Ok(u),
        _ => Err(unexpected("app", kind)),
    }
}

fn item(reply: AppReply, kind: &str) -> Result<Item> {
    match reply {
        AppReply::Item(i) => Ok(i),
        _ => Err(unexpected("app", kind)),
    }
}

fn items(reply: AppReply, kind: &str) -> Result<Vec<Item>> {
    match reply {
        AppReply::Items(i) => Ok(i),
        _ => Err(unexpected("app", kind)),
    }
}

fn done(reply: AppReply, kind: &str) -> Result<()> {
    match reply {
        AppReply::Done => Ok(()),
        _ => Err(unexpected("app", kind)),
    }
}

pub async fn create_user(bus: &Bus, actor: Principal, input: UserInput) -> Result<User> {
    user(
        call(
            bus,
            AppRequest::CreateUser {
                actor,
                id: crate::domain::new_id(),
                input,
            },
        )
        .await?,
        "create_user",
    )
}

pub async fn get_user(bus: &Bus, actor: Principal, id: Uuid) -> Result<User> {
    user(
        call(bus, AppRequest::GetUser { actor, id }).await?,
        "get_user",
    )
}

pub async fn update_user(
    bus: &Bus,
    actor: Principal,
    id: Uuid,
    patch: UserPatchInput,
    session: Option<TokenHash>,
    client: Option<IpAddr>,
) -> Result<User> {
    user(
        call(
            bus,
            AppRequest::UpdateUser {
                actor,
                id,
                patch,
                session,
                client,
            },
        )
        .await?,
        "update_user",
    )
}

pub async fn delete_user(bus: &Bus, actor: Principal, id: Uuid) -> Result<()> {
    done(
        call(bus, AppRequest::DeleteUser { actor, id }).await?,
        "delete_user",
    )
}

pub async fn create_item(bus: &Bus, actor: Principal, new: NewItem) -> Result<Item> {
    item(
        call(
            bus,
            AppRequest::CreateItem {
                actor,
                id: crate::domain::new_id(),
                ts: crate::domain::now(),
                item: new,
            },
        )
        .await?,
        "create_item",
    )
}

pub async fn get_item(bus: &Bus, id: Uuid) -> Result<Item> {
    item(call(bus, AppRequest::GetItem { id }).await?, "get_item")
}

pub async fn update_item(bus: &Bus, actor: Principal, id: Uuid, patch: ItemPatch) -> Result<Item> {
    item(
        call(bus, AppRequest::UpdateItem { actor, id, patch }).await?,
        "update_item",
    )
}

pub async fn delete_item(bus: &Bus, actor: Principal, id: Uuid) -> Result<()> {
    done(
        call(bus, AppRequest::DeleteItem { actor, id }).await?,
        "delete_item",
    )
}

pub async fn list_user_items(bus: &Bus, user_id: Uuid, page: Page) -> Result<Vec<Item>> {
    items(
        call(
            bus,
            AppRequest::ListUserItems {
                user_id,
                limit: page.limit,
                offset: page.offset,
                after: page.after,
            },
        )
        .await?,
        "list_user_items",
    )
}

pub async fn search_items(bus: &Bus, query: String, page: Page) -> Result<Vec<Item>> {
    items(
        call(
            bus,
            AppRequest::SearchItems {
                query,
                limit: page.limit,
                offset: page.offset,
                after: page.after,
            },
        )
        .await?,
        "search_items",
    )
}

fn job(reply: AppReply, kind: &str) -> Result<Job> {
    match reply {
        AppReply::Job(j) => Ok(j),
        _ => Err(unexpected("app", kind)),
    }
}

/// Submits a job; `(job, false)` when the idempotency key found it stored before.
/// `id` is chosen by the caller so a redelivered submission stores the job once.
pub async fn submit_job(
    bus: &Bus,
    actor: Principal,
    kind: String,
    payload: serde_json::Value,
    idempotency_key: Option<String>,
) -> Result<(Job, bool)> {
    let request = AppRequest::SubmitJob {
        actor,
        id: crate::domain::new_id(),
        kind,
        payload,
        idempotency_key,
    };
    match call(bus, request).await? {
        AppReply::JobSubmitted { job, created } => Ok((job, created)),
        _ => Err(unexpected("app", "submit_job")),
    }
}

pub async fn get_job(bus: &Bus, actor: Principal, id: Uuid) -> Result<Job> {
    job(
        call(bus, AppRequest::GetJob { actor, id }).await?,
        "get_job",
    )
}

pub async fn list_jobs(
    bus: &Bus,
    actor: Principal,
    state: JobState,
    page: Page,
) -> Result<Vec<Job>> {
    let request = AppRequest::ListJobs {
        actor,
        state,
        limit: page.limit,
        offset: page.offset,
    };
    match call(bus, request).await? {
        AppReply::Jobs(j) => Ok(j),
        _ => Err(unexpected("app", "list_jobs")),
    }
}

pub async fn retry_job(bus: &Bus, actor: Principal, id: Uuid) -> Result<Job> {
    job(
        call(bus, AppRequest::RetryJob { actor, id }).await?,
        "retry_job",
    )
}
