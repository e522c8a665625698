//! `/api/v1/admin/annotations`: marks on the dashboard's charts — a fault `gorgon chaos` injects,
//! from its start to its heal — put by an admin's token (401 without one, 403 for anyone else).
//!
//! | route | does |
//! | --- | --- |
//! | `PUT /admin/annotations/{id}` | inserts or replaces the annotation `id`: `{"text", "start_ms", "end_ms"}` |
//! | `GET /admin/annotations` | every annotation kept, by start, and how many are kept at most |
//!
//! A fault is put when it starts (`end_ms` absent or `null`: drawn up to now) and put again with
//! its `end_ms` when it heals. Reading them needs no token: `/api/v1/stats`, public like the
//! dashboard's charts, carries those that overlap its window, and the dashboard draws them. They
//! are kept by the stats role (`actors::stats`), the newest 256, and reach every node of a
//! cluster with the heartbeats.
//!
//! Bad input is refused before anything is kept: a malformed body 400, an id, text or time that
//! breaks the rules 422 naming the field.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::Admin;
use super::HttpState;
use crate::actors::stats::{Annotation, AnnotationList, ListAnnotations, PutAnnotation};
use crate::error::Error;
use crate::telemetry::annotations;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/admin/annotations", "GET").route(web::get().to(list_annotations)),
    )
    .service(
        super::resource("/admin/annotations/{id}", "PUT").route(web::put().to(put_annotation)),
    );
}

/// The body of `PUT /api/v1/admin/annotations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotationBody {
    /// The label drawn on the charts: 1 to 120 characters, no control characters.
    #[schema(example = "kill front-1")]
    pub text: String,
    /// When it began, in milliseconds since the Unix epoch.
    #[serde(deserialize_with = "super::extract::integer")]
    pub start_ms: i64,
    /// When it ended, in milliseconds since the Unix epoch; absent or `null` while it goes on,
    /// equal to `start_ms` for an instant.
    #[serde(default, deserialize_with = "super::extract::optional_integer")]
    pub end_ms: Option<i64>,
}

/// Inserts or replaces an annotation on the dashboard's charts (admin only). Put it when the
/// fault starts, and again with `end_ms` when it heals; the node keeps the newest 256.
#[utoipa::path(put, path = "/api/v1/admin/annotations/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Chosen by the caller: 1 to 64 letters, digits, '_', '.' or '-'")),
    request_body = AnnotationBody,
    responses(
        (status = 200, description = "The annotation as kept", body = Annotation),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "Bad id, text, start_ms or end_ms (the field is named)", body = ErrorBody),
        (status = 503, description = "The stats role is not reachable", body = ErrorBody),
    ))]
pub async fn put_annotation(
    state: web::Data<HttpState>,
    admin: Admin,
    id: web::Path<String>,
    body: web::Json<AnnotationBody>,
) -> Result<HttpResponse, Error> {
    let id = id.into_inner();
    let body = body.into_inner();
    // Checked here for a quick answer, and again by the stats role, which trusts no caller.
    annotations::check(&id, &body.text, body.start_ms, body.end_ms)?;
    let kept = state
        .bus
        .call(PutAnnotation {
            id,
            text: body.text,
            start_ms: body.start_ms,
            end_ms: body.end_ms,
        })
        .await?;
    tracing::debug!(id = %kept.id, by = %admin.0.user_id, "annotation put");
    Ok(HttpResponse::Ok().json(kept))
}

/// Every annotation kept, by start, with the most kept (admin only; those that overlap the
/// charts' window are public in `/api/v1/stats`).
#[utoipa::path(get, path = "/api/v1/admin/annotations", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The annotations", body = AnnotationList),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "The stats role is not reachable", body = ErrorBody),
    ))]
pub async fn list_annotations(
    state: web::Data<HttpState>,
    _admin: Admin,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.bus.call(ListAnnotations).await?))
}
