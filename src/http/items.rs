//! `/api/v1/items`: create, read, partial update, delete, keyword search.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ErrorBody;
use super::extract::{nullable, Authenticated};
use super::users::{page, ItemPage};
use super::HttpState;
use crate::actors::store;
use crate::domain::item::{parse_body, parse_keywords, parse_title, parse_url, ItemDraft, Keyword};
use crate::domain::Page;
use crate::domain::{Extra, Item, ItemPatch, Location, NewItem};
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/items", "GET, POST")
            .route(web::post().to(create_item))
            .route(web::get().to(search_items)),
    )
    .service(
        super::resource("/items/{id}", "GET, PATCH, DELETE")
            .route(web::get().to(get_item))
            .route(web::patch().to(update_item))
            .route(web::delete().to(delete_item)),
    );
}

/// Only the fields given change; `url` and `location` are cleared with `null`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItemRequest {
    #[schema(
        min_length = 1,
        max_length = 300,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub title: Option<String>,
    #[schema(
        max_length = 65536,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub body: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(
        nullable,
        max_length = 2048,
        pattern = "^https?://[^\\s/\\u0000-\\u001F\\u007F-\\u009F][^\\s\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(nullable)]
    pub location: Option<Option<Location>>,
    #[schema(max_items = 32, value_type = Option<Vec<Keyword>>)]
    pub keywords: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl UpdateItemRequest {
    pub fn parse(self) -> Result<ItemPatch, Error> {
        Ok(ItemPatch {
            title: self.title.as_deref().map(parse_title).transpose()?,
            body: self.body.as_deref().map(parse_body).transpose()?,
            url: match self.url {
                Some(Some(url)) => Some(Some(parse_url(&url)?)),
                other => other,
            },
            location: match self.location {
                Some(Some(l)) => Some(Some(l.parse()?)),
                other => other,
            },
            keywords: self.keywords.as_deref().map(parse_keywords).transpose()?,
            extra: self.extra.map(Extra::parse).transpose()?,
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to look for in title, body and keywords (all must match).
    #[param(min_length = 1, max_length = 500)]
    pub q: String,
    /// 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// 0 to 1000 (default 0; `--max-search-offset`). An offset walks every skipped match:
    /// page deeper with `after`.
    #[param(minimum = 0, maximum = 1000)]
    pub offset: Option<u32>,
    /// Keyset cursor: the matches older than this item id, i.e. the `next` of the previous
    /// page. Costs the same at any depth; `offset` then counts from the cursor.
    pub after: Option<Uuid>,
}

fn item_location(id: Uuid) -> String {
    format!("/api/v1/items/{id}")
}

/// Creates counted for `--unsafe-drop-every-nth-write`.
static DROPPED_WRITES: AtomicU64 = AtomicU64::new(0);

/// Publishes an item owned by the caller.
#[utoipa::path(post, path = "/api/v1/items", tag = "items", request_body = ItemDraft,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Item, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 413, description = "Body or item too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 429, description = "Over the items-per-minute quota (Retry-After says when to come back)", body = ErrorBody),
    ))]
pub async fn create_item(
    state: web::Data<HttpState>,
    caller: Authenticated,
    body: web::Json<ItemDraft>,
) -> Result<HttpResponse, Error> {
    let new = NewItem::parse(body.into_inner())?;
    state.quotas.check_item(&new)?;
    state.quotas.item_created(&caller.0)?;
    let item = new.into_item(
        crate::domain::new_id(),
        caller.0.user_id,
        crate::domain::now(),
    );
    let every = state.limits.unsafe_drop_every_nth_write;
    if every > 0 && DROPPED_WRITES.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
        // The deliberately broken build that `gorgon chaos`'s tests must catch.
        return Ok(HttpResponse::Created()
            .insert_header(("Location", item_location(item.id)))
            .json(item));
    }
    let item = state.bus.call(store::InsertItem(item)).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", item_location(item.id)))
        .json(item))
}

/// Reads an item (public).
#[utoipa::path(get, path = "/api/v1/items/{id}", tag = "items",
    params(("id" = Uuid, Path, description = "Item id")),
    responses(
        (status = 200, description = "The item", body = Item),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
    ))]
pub async fn get_item(
    state: web::Data<HttpState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let item = state
        .bus
        .call(store::GetItem {
            id: id.into_inner(),
        })
        .await?;
    Ok(HttpResponse::Ok().json(item))
}

/// Changes the given fields of an item (owner only).
#[utoipa::path(patch, path = "/api/v1/items/{id}", tag = "items", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Item id")),
    request_body = UpdateItemRequest,
    responses(
        (status = 200, description = "The updated item", body = Item),
        (status = 400, description = "Malformed JSON or id", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn update_item(
    state: web::Data<HttpState>,
    caller: Authenticated,
    id: web::Path<Uuid>,
    body: web::Json<UpdateItemRequest>,
) -> Result<HttpResponse, Error> {
    let patch = body.into_inner().parse()?;
    state.quotas.check_patch(&patch)?;
    let update = store::UpdateItem {
        id: id.into_inner(),
        owner: caller.0.user_id,
        patch,
    };
    let item = state.bus.call(update).await?;
    Ok(HttpResponse::Ok().json(item))
}

/// Deletes an item (owner only).
#[utoipa::path(delete, path = "/api/v1/items/{id}", tag = "items", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Item id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
    ))]
pub async fn delete_item(
    state: web::Data<HttpState>,
    caller: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let delete = store::DeleteItem {
        id: id.into_inner(),
        owner: caller.0.user_id,
    };
    state.bus.call(delete).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Keyword search over title, body and keywords, newest first (public).
#[utoipa::path(get, path = "/api/v1/items", tag = "items", params(SearchQuery),
    responses(
        (status = 200, description = "A page of matching items", body = ItemPage),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 422, description = "No word to search for, or limit/offset out of range", body = ErrorBody),
        (status = 503, description = "The search took longer than --search-timeout (code `search_timeout`): narrow it or page with `after`", body = ErrorBody),
    ))]
pub async fn search_items(
    state: web::Data<HttpState>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, Error> {
    let query = query.into_inner();
    let page = Page {
        after: query.after,
        ..page(query.limit, query.offset, &state.limits)?
    };
    if page.offset > state.limits.max_search_offset {
        return Err(Error::invalid(
            "offset",
            format!(
                "a search pages at most {} deep by offset; page deeper with after=<the previous page's next>",
                state.limits.max_search_offset
            ),
        ));
    }
    if query.q.chars().count() > 500 {
        return Err(Error::invalid("q", "must be at most 500 characters"));
    }
    if query.q.is_empty() {
        return Err(Error::invalid("q", "must not be empty"));
    }
    // Text with no word in it (only punctuation, say) matches nothing.
    let items = if crate::domain::SearchQuery::parse(&query.q).is_ok() {
        state
            .bus
            .call(store::SearchItems::new(query.q, page))
            .await?
    } else {
        Vec::new()
    };
    Ok(HttpResponse::Ok().json(ItemPage::of(items, page)))
}
