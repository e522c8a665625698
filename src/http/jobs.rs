//! `/api/v1/jobs`: submit a job, read its state; admins list jobs by state and retry them.
//!
//! A submission is answered `202 Accepted` once the store has committed the job; the work
//! happens later, on the app role's workers. With an `Idempotency-Key` header, repeating a
//! submission returns the job the first one stored (`200 OK` rather than `202`), and reusing the
//! key for a different job is a `409`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ErrorBody;
use super::extract::Authenticated;
use super::users::page;
use super::HttpState;
use crate::actors::app;
use crate::domain::{Job, JobState};
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/jobs", "GET, POST")
            .route(web::post().to(submit_job))
            .route(web::get().to(list_jobs)),
    )
    .service(super::resource("/jobs/{id}", "GET").route(web::get().to(get_job)))
    .service(super::resource("/jobs/{id}/retry", "POST").route(web::post().to(retry_job)));
}

const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
const MAX_KEY_LEN: usize = 200;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobRequest {
    /// A registered job kind (`hash` is built in).
    #[schema(min_length = 1, max_length = 100)]
    pub kind: String,
    /// Any JSON object; handed to the job's handler.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// queued, running, done, failed or dead.
    #[param(value_type = JobState)]
    pub state: Option<String>,
    /// 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// 0 to 100000 (default 0).
    #[param(minimum = 0, maximum = 100000)]
    pub offset: Option<u32>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub limit: u32,
    pub offset: u32,
}

fn job_location(id: Uuid) -> String {
    format!("/api/v1/jobs/{id}")
}

/// The `Idempotency-Key` header, if sent: 1 to 200 visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, Error> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::BadRequest(format!(
            "{IDEMPOTENCY_KEY} must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Submits a job; it runs in the background. Poll its `Location` for the result.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = SubmitJobRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 200 visible ASCII characters; a repeated submission with the same key returns the first job")),
    responses(
        (status = 202, description = "Stored and queued", body = Job, headers(("Location" = String))),
        (status = 200, description = "Submitted before with this Idempotency-Key: the stored job", body = Job, headers(("Location" = String))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 409, description = "Idempotency-Key used before for a different job", body = ErrorBody),
        (status = 413, description = "Body or payload too large", body = ErrorBody),
        (status = 422, description = "Unknown kind, or a payload that is not an object", body = ErrorBody),
        (status = 429, description = "Too many unfinished jobs of this user (Retry-After says when to come back)", body = ErrorBody),
    ))]
pub async fn submit_job(
    state: web::Data<HttpState>,
    caller: Authenticated,
    req: HttpRequest,
    body: web::Json<SubmitJobRequest>,
) -> Result<HttpResponse, Error> {
    let key = idempotency_key(&req)?;
    let body = body.into_inner();
    if !body.payload.is_object() {
        return Err(Error::invalid("payload", "must be a JSON object"));
    }
    if body.kind.is_empty() || body.kind.len() > 100 {
        return Err(Error::invalid("kind", "must be 1 to 100 characters"));
    }
    state.quotas.check_job_payload(&body.payload)?;
    let submit = app::SubmitJob {
        actor: caller.0,
        id: crate::domain::new_id(),
        kind: body.kind,
        payload: body.payload,
        idempotency_key: key,
    };
    let submitted = state.bus.call(submit).await?;
    let job = submitted.job;
    let mut response = if submitted.created {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .insert_header(("Location", job_location(job.id)))
        .json(job))
}

/// A job's state, attempts and, once done, its result (owner or admin).
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub async fn get_job(
    state: web::Data<HttpState>,
    caller: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let job = state
        .bus
        .call(app::GetJob {
            actor: caller.0,
            id: id.into_inner(),
        })
        .await?;
    Ok(HttpResponse::Ok().json(job))
}

/// Jobs in one state, newest first (admin only).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", security(("bearer" = [])),
    params(JobListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "Missing or unknown state, or limit/offset out of range", body = ErrorBody),
    ))]
pub async fn list_jobs(
    state: web::Data<HttpState>,
    caller: Authenticated,
    query: web::Query<JobListQuery>,
) -> Result<HttpResponse, Error> {
    let query = query.into_inner();
    let page = page(query.limit, query.offset, &state.limits)?;
    let job_state = query
        .state
        .as_deref()
        .and_then(JobState::parse)
        .ok_or_else(|| Error::invalid("state", "one of queued, running, done, failed, dead"))?;
    let list = app::ListJobs {
        actor: caller.0,
        state: job_state,
        limit: page.limit,
        offset: page.offset,
    };
    let jobs = state.bus.call(list).await?;
    Ok(HttpResponse::Ok().json(JobPage {
        jobs,
        limit: page.limit,
        offset: page.offset,
    }))
}

/// Puts a failed or dead job back in the queue with its attempts reset (admin only).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, queued again", body = Job),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is neither failed nor dead", body = ErrorBody),
    ))]
pub async fn retry_job(
    state: web::Data<HttpState>,
    caller: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let job = state
        .bus
        .call(app::RetryJob {
            actor: caller.0,
            id: id.into_inner(),
        })
        .await?;
    Ok(HttpResponse::Ok().json(job))
}
