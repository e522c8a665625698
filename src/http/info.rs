//! `/info/{uid}` and `/info/{uid}/{limit}/{offset}`: the original Gorgon's read route, kept.
//! A user's newest items (10 by default), public.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ErrorBody;
use super::users::page;
use super::HttpState;
use crate::actors::store::ListUserItems;
use crate::domain::Item;
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/info/{uid}", "GET").route(web::get().to(info)))
        .service(
            super::resource("/info/{uid}/{limit}/{offset}", "GET").route(web::get().to(info_page)),
        );
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InfoResponse {
    pub user_id: Uuid,
    pub limit: u32,
    pub offset: u32,
    pub items: Vec<Item>,
}

async fn respond(
    state: &HttpState,
    uid: Uuid,
    limit: Option<u32>,
    offset: Option<u32>,
) -> Result<HttpResponse, Error> {
    let page = page(limit, offset, &state.limits)?;
    let items = state.bus.call(ListUserItems::new(uid, page)).await?;
    Ok(HttpResponse::Ok().json(InfoResponse {
        user_id: uid,
        limit: page.limit,
        offset: page.offset,
        items,
    }))
}

/// A user's 10 newest items.
#[utoipa::path(get, path = "/info/{uid}", tag = "items",
    params(("uid" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user's newest items", body = InfoResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
    ))]
pub async fn info(
    state: web::Data<HttpState>,
    uid: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    respond(&state, uid.into_inner(), None, None).await
}

/// A page of a user's items, newest first.
#[utoipa::path(get, path = "/info/{uid}/{limit}/{offset}", tag = "items",
    params(
        ("uid" = Uuid, Path, description = "User id"),
        ("limit" = u32, Path, description = "1 to 100", minimum = 1, maximum = 100),
        ("offset" = u32, Path, description = "0 to 100000", minimum = 0, maximum = 100000),
    ),
    responses(
        (status = 200, description = "A page of the user's items", body = InfoResponse),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 422, description = "limit or offset out of range", body = ErrorBody),
    ))]
pub async fn info_page(
    state: web::Data<HttpState>,
    path: web::Path<(Uuid, u32, u32)>,
) -> Result<HttpResponse, Error> {
    let (uid, limit, offset) = path.into_inner();
    respond(&state, uid, Some(limit), Some(offset)).await
}
