//! `/api/v1/admin/queues`: the operator's routes for the Redis queues and their dead letters
//! (admin only: 401 without a token, 403 for anyone but an admin). `/dashboard`'s console and
//! `gorgon dlq --api` call them; `gorgon dlq --redis` calls the same functions
//! (`bus::redis::dlq`, `bus::redis::queues`) without a node.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /admin/queues` | every queue: waiting, in flight, retrying, dead |
//! | `GET /admin/queues/{queue}/dead-letters?offset=&limit=` | a page of dead letters, oldest first |
//! | `POST /admin/queues/{queue}/dead-letters/replay?limit=` | replays them all (up to `limit`) |
//! | `POST /admin/queues/{queue}/dead-letters/{id}/replay` | replays one |
//! | `DELETE /admin/queues/{queue}/dead-letters/{id}` | deletes one |
//! | `DELETE /admin/queues/{queue}/dead-letters?confirm={queue}` | purges them all |
//!
//! Purging every dead letter of a queue cannot be undone, and a `DELETE` on a collection is an
//! easy request to send by mistake (a script's empty variable, a command from the shell's
//! history run against another queue): it must name its queue twice, in the path and in
//! `confirm`, or it is refused (422) and nothing is deleted. Deleting one dead letter names it by
//! its id, which is confirmation enough.
//!
//! A node without `--redis` has no queues: `GET /admin/queues` says `"redis": false` with an
//! empty list, and the dead-letter routes answer 404, saying why.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::extract::Admin;
use super::HttpState;
use crate::bus::redis::{dlq, queues, QueueFigures};
use crate::bus::RedisLink;
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/admin/queues", "GET").route(web::get().to(list_queues)))
        .service(
            super::resource("/admin/queues/{queue}/dead-letters", "GET, DELETE")
                .route(web::get().to(list_dead_letters))
                .route(web::delete().to(purge_dead_letters)),
        )
        .service(
            super::resource("/admin/queues/{queue}/dead-letters/replay", "POST")
                .route(web::post().to(replay_dead_letters)),
        )
        .service(
            super::resource("/admin/queues/{queue}/dead-letters/{id}", "DELETE")
                .route(web::delete().to(delete_dead_letter)),
        )
        .service(
            super::resource("/admin/queues/{queue}/dead-letters/{id}/replay", "POST")
                .route(web::post().to(replay_dead_letter)),
        );
}

/// `GET /api/v1/admin/queues`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    /// False when this node runs without `--redis` (then it has no queues).
    pub redis: bool,
    /// The Redis namespace of the queues (`--redis-namespace`).
    pub namespace: Option<String>,
    pub queues: Vec<QueueFigures>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Dead letters to skip, oldest first (default 0).
    #[param(minimum = 0)]
    pub offset: Option<u64>,
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayQuery {
    /// Most dead letters looked at, oldest first: 1 to 100000 (default 10000). `left` in the
    /// answer says whether to call again.
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PurgeQuery {
    /// The queue's name again: nothing is deleted unless it matches the path's.
    pub confirm: Option<String>,
}

/// `DELETE /api/v1/admin/queues/{queue}/dead-letters`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    pub queue: String,
    /// Dead letters deleted.
    pub purged: usize,
}

/// The node's Redis link, or why there is none.
fn redis(state: &HttpState) -> Result<&RedisLink, Error> {
    let link = state.redis.as_deref().ok_or_else(|| {
        Error::NotFound(
            "this node runs without Redis (--redis): it has no queues and no dead letters".into(),
        )
    })?;
    if !link.is_healthy() {
        return Err(Error::Unavailable(
            "the message bus (Redis) is unreachable; try again shortly".into(),
        ));
    }
    Ok(link)
}

fn queue_name(queue: &str) -> Result<&str, Error> {
    if dlq::valid_queue(queue) {
        Ok(queue)
    } else {
        Err(Error::invalid(
            "queue",
            "1 to 100 letters, digits, '.', '_' or '-'",
        ))
    }
}

fn letter_id(id: &str) -> Result<&str, Error> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(id)
    } else {
        Err(Error::invalid(
            "id",
            "a dead letter's id: 32 lowercase hex digits",
        ))
    }
}

/// Every queue of this node's Redis namespace: messages waiting, in flight (taken by a consumer,
/// not yet acknowledged), waiting for a retry, and dead (admin only).
#[utoipa::path(get, path = "/api/v1/admin/queues", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The queues, by name (an empty list and redis false without --redis)", body = QueueList),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ))]
pub async fn list_queues(
    state: web::Data<HttpState>,
    _admin: Admin,
) -> Result<HttpResponse, Error> {
    if state.redis.is_none() {
        return Ok(HttpResponse::Ok().json(QueueList {
            redis: false,
            namespace: None,
            queues: Vec::new(),
        }));
    }
    let link = redis(&state)?;
    let figures = queues::figures(&mut link.conn(), link.keys())
        .await
        .map_err(dlq::DlqError::from)?;
    Ok(HttpResponse::Ok().json(QueueList {
        redis: true,
        namespace: Some(link.config().namespace.clone()),
        queues: figures,
    }))
}

/// A page of a queue's dead letters, oldest first: why each died, after how many deliveries,
/// when, and the request (fields that could hold a credential redacted) (admin only).
#[utoipa::path(get, path = "/api/v1/admin/queues/{queue}/dead-letters", tag = "admin",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name, e.g. store, app, auth"), DeadLetterQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = dlq::DeadLetterPage),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "This node runs without Redis", body = ErrorBody),
        (status = 422, description = "Bad queue name, or limit out of range", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ))]
pub async fn list_dead_letters(
    state: web::Data<HttpState>,
    _admin: Admin,
    queue: web::Path<String>,
    query: web::Query<DeadLetterQuery>,
) -> Result<HttpResponse, Error> {
    let queue = queue_name(&queue)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Error::invalid("limit", "1 to 100"));
    }
    let link = redis(&state)?;
    let page = dlq::page(
        &mut link.conn(),
        link.keys(),
        queue,
        query.offset.unwrap_or(0),
        u64::from(limit),
    )
    .await
    .map_err(dlq::DlqError::from)?;
    Ok(HttpResponse::Ok().json(page))
}

/// Puts a queue's dead letters back on it as first deliveries, oldest first; those that hold no
/// message are kept (admin only).
#[utoipa::path(post, path = "/api/v1/admin/queues/{queue}/dead-letters/replay", tag = "admin",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name"), ReplayQuery),
    responses(
        (status = 200, description = "What was replayed and what is left", body = dlq::Replayed),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "This node runs without Redis", body = ErrorBody),
        (status = 422, description = "Bad queue name, or limit out of range", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ))]
pub async fn replay_dead_letters(
    state: web::Data<HttpState>,
    admin: Admin,
    queue: web::Path<String>,
    query: web::Query<ReplayQuery>,
) -> Result<HttpResponse, Error> {
    let queue = queue_name(&queue)?;
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=100_000).contains(&limit) {
        return Err(Error::invalid("limit", "1 to 100000"));
    }
    let link = redis(&state)?;
    let replayed = dlq::replay(&mut link.conn(), link.keys(), queue, limit as usize)
        .await
        .map_err(dlq::DlqError::from)?;
    tracing::info!(queue, by = %admin.0.user_id, requeued = replayed.requeued, kept = replayed.kept, "dead letters replayed");
    Ok(HttpResponse::Ok().json(replayed))
}

/// Puts one dead letter back on its queue as a first delivery (admin only).
#[utoipa::path(post, path = "/api/v1/admin/queues/{queue}/dead-letters/{id}/replay", tag = "admin",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name"),
        ("id" = String, Path, description = "The dead letter's id (from the listing)")),
    responses(
        (status = 200, description = "Replayed", body = dlq::Replayed),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such dead letter (or no Redis)", body = ErrorBody),
        (status = 409, description = "It holds no message: it can be deleted, not replayed", body = ErrorBody),
        (status = 422, description = "Bad queue name or id", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ))]
pub async fn replay_dead_letter(
    state: web::Data<HttpState>,
    admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (queue, id) = path.into_inner();
    let (queue, id) = (queue_name(&queue)?, letter_id(&id)?);
    let link = redis(&state)?;
    let mut conn = link.conn();
    dlq::replay_one(&mut conn, link.keys(), queue, id).await?;
    tracing::info!(queue, id, by = %admin.0.user_id, "dead letter replayed");
    let (left, _) = dlq::records(&mut conn, link.keys(), queue, 0, 0)
        .await
        .map_err(dlq::DlqError::from)?;
    Ok(HttpResponse::Ok().json(dlq::Replayed {
        requeued: 1,
        kept: 0,
        left,
    }))
}

/// Deletes one dead letter (admin only).
#[utoipa::path(delete, path = "/api/v1/admin/queues/{queue}/dead-letters/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name"),
        ("id" = String, Path, description = "The dead letter's id (from the listing)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such dead letter (or no Redis)", body = ErrorBody),
        (status = 422, description = "Bad queue name or id", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ))]
pub async fn delete_dead_letter(
    state: web::Data<HttpState>,
    admin: Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (queue, id) = path.into_inner();
    let (queue, id) = (queue_name(&queue)?, letter_id(&id)?);
    let link = redis(&state)?;
    dlq::delete_one(&mut link.conn(), link.keys(), queue, id).await?;
    tracing::info!(queue, id, by = %admin.0.user_id, "dead letter deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Deletes every dead letter of a queue; `confirm` must repeat the queue's name (admin only).
#[utoipa::path(delete, path = "/api/v1/admin/queues/{queue}/dead-letters", tag = "admin",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name"), PurgeQuery),
    responses(
        (status = 200, description = "How many were deleted", body = Purged),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "This node runs without Redis", body = ErrorBody),
        (status = 422, description = "Bad queue name, or confirm missing or not the queue's name", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ))]
pub async fn purge_dead_letters(
    state: web::Data<HttpState>,
    admin: Admin,
    queue: web::Path<String>,
    query: web::Query<PurgeQuery>,
) -> Result<HttpResponse, Error> {
    let queue = queue_name(&queue)?;
    if query.confirm.as_deref() != Some(queue) {
        return Err(Error::invalid(
            "confirm",
            format!("purging deletes every dead letter of {queue} for good: repeat the queue's name, ?confirm={queue}"),
        ));
    }
    let link = redis(&state)?;
    let purged = dlq::purge(&mut link.conn(), link.keys(), queue)
        .await
        .map_err(dlq::DlqError::from)?;
    tracing::info!(queue, purged, by = %admin.0.user_id, "dead letters purged");
    Ok(HttpResponse::Ok().json(Purged {
        queue: queue.to_string(),
        purged,
    }))
}
