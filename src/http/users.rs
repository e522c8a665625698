//! `/api/v1/users`: admin creation, read, partial update, delete, and a user's items.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{created_user, RegisterRequest};
use super::error::ErrorBody;
use super::extract::{Authenticated, BearerToken};
use super::HttpState;
use crate::actors::app;
use crate::actors::store::ListUserItems;
use crate::domain::password::Password;
use crate::domain::user::parse_group;
use crate::domain::Page;
use crate::domain::{Email, Extra, Item, User, UserName, UserPatchInput};
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/users", "POST").route(web::post().to(create_user)))
        .service(
            super::resource("/users/{id}", "GET, PATCH, DELETE")
                .route(web::get().to(get_user))
                .route(web::patch().to(update_user))
                .route(web::delete().to(delete_user)),
        )
        .service(super::resource("/users/{id}/items", "GET").route(web::get().to(list_user_items)));
}

/// A user created by an admin; may itself be an admin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\u0000-\\u001F\\u007F-\\u009F]{1,64}@[^@\\s.\\u0000-\\u001F\\u007F-\\u009F][^@\\s\\u0000-\\u001F\\u007F-\\u009F]*\\.[^@\\s\\u0000-\\u001F\\u007F-\\u009F]*[^@\\s.\\u0000-\\u001F\\u007F-\\u009F]$"
    )]
    pub email: String,
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    #[serde(default, deserialize_with = "super::extract::integer")]
    #[schema(minimum = 0, maximum = 1000000000)]
    pub group: i64,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub admin: bool,
}

/// Only the fields given change. `admin` may be changed by admins only.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\u0000-\\u001F\\u007F-\\u009F]{1,64}@[^@\\s.\\u0000-\\u001F\\u007F-\\u009F][^@\\s\\u0000-\\u001F\\u007F-\\u009F]*\\.[^@\\s\\u0000-\\u001F\\u007F-\\u009F]*[^@\\s.\\u0000-\\u001F\\u007F-\\u009F]$"
    )]
    pub email: Option<String>,
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// Required with `password` or `email` when users change their own (not when an admin
    /// changes someone's). A new password signs out every other session of the user.
    #[schema(max_length = 128)]
    pub current_password: Option<String>,
    #[serde(default, deserialize_with = "super::extract::optional_integer")]
    #[schema(minimum = 0, maximum = 1000000000)]
    pub group: Option<i64>,
    /// Replaces the whole `extra` object.
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    pub admin: Option<bool>,
}

impl UpdateUserRequest {
    pub fn parse(self) -> Result<UserPatchInput, Error> {
        if let Some(p) = &self.password {
            Password::parse(p)?;
        }
        Ok(UserPatchInput {
            name: self.name.as_deref().map(UserName::parse).transpose()?,
            email: self.email.as_deref().map(Email::parse).transpose()?,
            password: self.password,
            current_password: self.current_password,
            group: self.group.map(parse_group).transpose()?,
            extra: self.extra.map(Extra::parse).transpose()?,
            admin: self.admin,
        })
    }
}

/// `?limit=&offset=` of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// 0 to 100000 (default 0). Deep offsets walk every skipped item: page with `after`.
    #[param(minimum = 0, maximum = 100000)]
    pub offset: Option<u32>,
    /// Keyset cursor: the items older than this item id, i.e. the `next` of the previous page.
    /// Costs the same at any depth; `offset` then counts from the cursor.
    pub after: Option<Uuid>,
}

impl PageQuery {
    pub fn parse(&self, limits: &super::HttpLimits) -> Result<Page, Error> {
        Ok(Page {
            after: self.after,
            ..page(self.limit, self.offset, limits)?
        })
    }
}

pub(super) fn page(
    limit: Option<u32>,
    offset: Option<u32>,
    limits: &super::HttpLimits,
) -> Result<Page, Error> {
    let limit = limit.unwrap_or(limits.default_page_size);
    let offset = offset.unwrap_or(0);
    if limit == 0 || limit > limits.max_page_size {
        return Err(Error::invalid(
            "limit",
            format!("must be between 1 and {}", limits.max_page_size),
        ));
    }
    if offset > limits.max_offset {
        return Err(Error::invalid(
            "offset",
            format!("must be at most {}", limits.max_offset),
        ));
    }
    Ok(Page::new(limit, offset))
}

/// A page of items, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    pub limit: u32,
    pub offset: u32,
    /// The cursor this page started after, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Uuid>,
    /// Cursor of the next page (pass it as `?after=`): the id of this page's last item, absent
    /// when the page is not full (there is nothing after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Uuid>,
}

impl ItemPage {
    pub fn of(items: Vec<Item>, page: Page) -> ItemPage {
        let next = items
            .last()
            .filter(|_| items.len() >= page.limit as usize)
            .map(|item| item.id);
        ItemPage {
            items,
            limit: page.limit,
            offset: page.offset,
            after: page.after,
            next,
        }
    }
}

/// Creates a user (admin only).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUserRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = User, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn create_user(
    state: web::Data<HttpState>,
    caller: Authenticated,
    body: web::Json<CreateUserRequest>,
) -> Result<HttpResponse, Error> {
    if !caller.0.admin {
        return Err(Error::Forbidden("only admins may create users".into()));
    }
    let body = body.into_inner();
    let admin = body.admin;
    let input = RegisterRequest {
        name: body.name,
        email: body.email,
        password: body.password,
        group: body.group,
        extra: body.extra,
    }
    .parse(admin)?;
    let create = app::CreateUser {
        actor: caller.0,
        id: crate::domain::new_id(),
        input,
    };
    let user = state.bus.call(create).await?;
    Ok(created_user(user))
}

/// Reads a user (self or admin).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Another user", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn get_user(
    state: web::Data<HttpState>,
    caller: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let user = state
        .bus
        .call(app::GetUser {
            actor: caller.0,
            id: id.into_inner(),
        })
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Changes the given fields of a user (self or admin).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 400, description = "Malformed JSON or id", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Another user, or admin flag by a non-admin", body = ErrorBody),
        (status = 429, description = "Too many wrong current passwords", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn update_user(
    state: web::Data<HttpState>,
    req: HttpRequest,
    caller: Authenticated,
    token: BearerToken,
    id: web::Path<Uuid>,
    body: web::Json<UpdateUserRequest>,
) -> Result<HttpResponse, Error> {
    let patch = body.into_inner().parse()?;
    let update = app::UpdateUser {
        actor: caller.0,
        id: id.into_inner(),
        patch,
        session: Some(token.0.hash()),
        client: super::auth::client_address(&req),
    };
    let user = state.bus.call(update).await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Deletes a user with their items and tokens (self or admin).
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Another user", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn delete_user(
    state: web::Data<HttpState>,
    caller: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    state
        .bus
        .call(app::DeleteUser {
            actor: caller.0,
            id: id.into_inner(),
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A user's items, newest first (public).
#[utoipa::path(get, path = "/api/v1/users/{id}/items", tag = "items",
    params(("id" = Uuid, Path, description = "User id"), PageQuery),
    responses(
        (status = 200, description = "A page of items", body = ItemPage),
        (status = 400, description = "Malformed id or query", body = ErrorBody),
        (status = 422, description = "limit or offset out of range", body = ErrorBody),
        (status = 503, description = "A deep page took longer than --search-timeout (code `search_timeout`): page with `after`", body = ErrorBody),
    ))]
pub async fn list_user_items(
    state: web::Data<HttpState>,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Error> {
    let page = query.parse(&state.limits)?;
    let items = state
        .bus
        .call(ListUserItems::new(id.into_inner(), page))
        .await?;
    Ok(HttpResponse::Ok().json(ItemPage::of(items.into_vec(), page)))
}
