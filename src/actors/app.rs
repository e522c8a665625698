//! The app role: the application logic for users and items.
//!
//! It decides who may do what (self or admin for users, owner for item writes), builds the
//! records to store, and asks the store role to read or write them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{auth, store, unexpected, RoleHandler};
use crate::bus::{Bus, Delivery, Protocol, Role};
use crate::domain::password::{self, Password};
use crate::domain::{
    Item, ItemPatch, NewItem, Principal, User, UserInput, UserPatch, UserPatchInput,
};
use crate::error::{Error, Result};
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
    },
    SearchItems {
        query: String,
        limit: u32,
        offset: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AppReply {
    User(User),
    Item(Item),
    Items(Vec<Item>),
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
        }
    }

    fn delivery(request: &AppRequest) -> Delivery {
        use AppRequest::*;
        match request {
            GetUser { .. } | GetItem { .. } | ListUserItems { .. } | SearchItems { .. } => {
                Delivery::Direct
            }
            _ => Delivery::Durable,
        }
    }
}

/// The app role's handler.
pub struct AppHandler {
    pub bus: Bus,
}

impl RoleHandler for AppHandler {
    type Protocol = AppProtocol;

    async fn handle(self: Arc<Self>, request: AppRequest) -> Result<AppReply> {
        execute(&self.bus, request).await
    }
}

fn forbid_unless(allowed: bool, what: &str) -> Result<()> {
    if allowed {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("you may not {what}")))
    }
}

async fn execute(bus: &Bus, request: AppRequest) -> Result<AppReply> {
    use AppRequest::*;
    Ok(match request {
        CreateUser { actor, id, input } => {
            forbid_unless(actor.admin, "create users (admin only)")?;
            AppReply::User(store::insert_user(bus, auth::new_user(id, input).await?).await?)
        }
        GetUser { actor, id } => {
            forbid_unless(actor.may_manage(id), "read another user")?;
            AppReply::User(store::get_user(bus, id).await?)
        }
        UpdateUser { actor, id, patch } => {
            forbid_unless(actor.may_manage(id), "change another user")?;
            if patch.admin.is_some() {
                forbid_unless(actor.admin, "change the admin flag (admin only)")?;
            }
            let password_hash = match patch.password {
                Some(p) => Some(password::hash(Password::parse(&p)?).await?),
                None => None,
            };
            let patch = UserPatch {
                name: patch.name,
                email: patch.email,
                group: patch.group,
                extra: patch.extra,
                admin: patch.admin,
                password_hash,
            };
            AppReply::User(store::update_user(bus, id, patch).await?)
        }
        DeleteUser { actor, id } => {
            forbid_unless(actor.may_manage(id), "delete another user")?;
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
        } => AppReply::Items(store::list_user_items(bus, user_id, Page { limit, offset }).await?),
        SearchItems {
            query,
            limit,
            offset,
        } => AppReply::Items(store::search_items(bus, query, Page { limit, offset }).await?),
    })
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
) -> Result<User> {
    user(
        call(bus, AppRequest::UpdateUser { actor, id, patch }).await?,
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
            },
        )
        .await?,
        "search_items",
    )
}
