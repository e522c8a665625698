//! `/info/{uid}` and `/info/{uid}/{limit}/{offset}`: the original Gorgon's read route, kept.
//! A user's newest items (10 by default), public.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ErrorBody;
use super::users::page;
use super::HttpState;
use crate::actors::store::ListUserItems;
use crate::domain::{Item, ItemList, Page};
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
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body(uid, page, &items)))
}

/// The response's JSON, exactly as `serde_json` writes an [`InfoResponse`]; a list from the
/// store's memory brings its items encoded already.
fn body(user_id: Uuid, page: Page, items: &ItemList) -> Vec<u8> {
    let Some(encoded) = items.json() else {
        let response = InfoBody {
            user_id,
            limit: page.limit,
            offset: page.offset,
            items,
        };
        return serde_json::to_vec(&response).unwrap_or_default();
    };
    let head = format!(
        r#"{{"user_id":"{user_id}","limit":{},"offset":{},"items":"#,
        page.limit, page.offset
    );
    let mut out = Vec::with_capacity(head.len() + encoded.len() + 1);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(encoded);
    out.push(b'}');
    out
}

/// [`InfoResponse`] as written, borrowing its items.
#[derive(Serialize)]
struct InfoBody<'a> {
    user_id: Uuid,
    limit: u32,
    offset: u32,
    items: &'a [Item],
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::item_list::encode_json;
    use crate::domain::{Extra, NewItem};

    #[test]
    fn the_encoded_body_is_what_serde_writes() {
        let user = Uuid::now_v7();
        let items: Arc<[Item]> = (0..3)
            .map(|n| {
                NewItem {
                    title: format!("a \"quoted\" title {n}"),
                    body: "two\nlines".into(),
                    url: Some("https://example.com/x".into()),
                    location: None,
                    keywords: vec!["k".into()],
                    extra: Extra::default(),
                }
                .into_item(Uuid::now_v7(), user, crate::domain::now())
            })
            .collect();
        let page = Page::new(10, 0);
        let expected = serde_json::to_vec(&InfoResponse {
            user_id: user,
            limit: 10,
            offset: 0,
            items: items.to_vec(),
        })
        .unwrap();
        let kept = ItemList::shared(items.clone(), 10, encode_json(&items));
        assert!(kept.json().is_some());
        assert_eq!(body(user, page, &kept), expected);
        let fresh = ItemList::from(items.to_vec());
        assert_eq!(body(user, page, &fresh), expected);
    }
}
