//! Jobs: stored once per id and per idempotency key, claimed under a lease by one worker at a
//! time, finished per attempt, retried and purged; and each user's quota of unfinished jobs.
//!
//! A claim is one `findOneAndUpdate` per job, which MongoDB applies atomically to one document:
//! of claimers racing for the same job exactly one matches it, the others move on to the next
//! due job. No job is handed to two claims whose leases overlap, on any number of nodes.

use chrono::Utc;
use mongodb::bson::{doc, Bson};
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::docs::{job_from, job_key, json_text, now, time, uuid};
use super::errors::{is_duplicate, op};
use super::pages::find_page;
use super::users::require_user;
use super::Collections;
use crate::domain::{Job, JobOutcome, JobState, NewJob, Page};
use crate::error::{Error, Result};

/// States in which a job is due once its `run_after` has come (for a running job: its lease
/// ended, its worker is gone).
const CLAIMABLE: [&str; 3] = ["queued", "failed", "running"];
/// States that count against a user's quota of unfinished jobs.
const UNFINISHED: [&str; 3] = ["queued", "running", "failed"];

/// When a user at the unfinished-jobs quota is told to come back: jobs take seconds.
const UNFINISHED_JOBS_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn insert_job(c: &Collections, job: NewJob) -> Result<(Job, bool)> {
    let ikey = job
        .idempotency_key
        .as_deref()
        .map(|k| job_key(job.user_id, k));
    if let Some(ikey) = &ikey {
        if let Some(existing) = find_by_key(c, ikey).await? {
            return same_job_again(existing, &job);
        }
    }
    if let Some(cap) = job.max_unfinished {
        check_unfinished_jobs(c, &job, cap).await?;
    }
    let now = now();
    let mut stored = doc! {
        "_id": uuid(job.id),
        "user_id": uuid(job.user_id),
        "kind": &job.kind,
        "state": JobState::Queued.name(),
        "payload": json_text("a job's payload", &job.payload)?,
        "result": Bson::Null,
        "error": Bson::Null,
        "attempts": 0_i64,
        "created_at": time(job.created_at),
        "updated_at": time(job.created_at),
        // Due by the store's clock, the one claims compare with.
        "run_after": now,
        "idempotency_key": job.idempotency_key.as_deref().map_or(Bson::Null, Bson::from),
    };
    if let Some(ikey) = &ikey {
        stored.insert("ikey", ikey.as_str());
    }
    match c.jobs.insert_one(&stored).await {
        Ok(_) => {}
        Err(e) if is_duplicate(&e) => {
            // A redelivered insert (same id) returns what the first one stored; a job with the
            // same key stored by a racing request is that request's job.
            if let Some(existing) = find_job(c, job.id).await? {
                if existing.user_id != job.user_id {
                    return Err(Error::Conflict("a job with this id exists".into()));
                }
                return Ok((existing, false));
            }
            if let Some(existing) = match &ikey {
                Some(ikey) => find_by_key(c, ikey).await?,
                None => None,
            } {
                return same_job_again(existing, &job);
            }
            return Err(Error::Conflict("a job with this id exists".into()));
        }
        Err(e) => return Err(op("insert a job")(e)),
    }
    if let Err(e) = require_user(c, job.user_id).await {
        if matches!(e, Error::Unauthorized(_)) {
            c.jobs
                .delete_one(doc! { "_id": uuid(job.id) })
                .await
                .map_err(op("remove an orphan job"))?;
        }
        return Err(e);
    }
    Ok((job_from(&stored)?, true))
}

/// The stored job of an idempotency key, sent again: the same job if kind and payload match.
fn same_job_again(existing: Job, job: &NewJob) -> Result<(Job, bool)> {
    if existing.kind == job.kind && existing.payload == job.payload {
        Ok((existing, false))
    } else {
        Err(Error::Conflict(
            "this Idempotency-Key was used for a different job".into(),
        ))
    }
}

async fn find_by_key(c: &Collections, ikey: &str) -> Result<Option<Job>> {
    let found = c
        .jobs
        .find_one(doc! { "ikey": ikey })
        .await
        .map_err(op("read a job"))?;
    Ok(found.as_ref().map(job_from).transpose()?)
}

/// Refuses a new job of a user who has `cap` unfinished jobs already (a redelivered insert of a
/// stored job is not new). Counted through the index `{user_id, state}`, at most `cap` entries.
/// Unlike the embedded store's single writer, concurrent submissions of one user on several
/// nodes may each see room: the cap can be passed by the number of submissions in flight.
async fn check_unfinished_jobs(c: &Collections, job: &NewJob, cap: u32) -> Result<()> {
    if find_job(c, job.id).await?.is_some() {
        return Ok(());
    }
    let unfinished = find_page(
        &c.jobs,
        doc! { "user_id": uuid(job.user_id), "state": { "$in": UNFINISHED.to_vec() } },
        doc! { "user_id": 1, "state": 1 },
        Some(doc! { "_id": 1 }),
        Page::new(cap.max(1), 0),
        "count unfinished jobs",
    )
    .await?;
    if unfinished.len() >= cap as usize {
        return Err(Error::rate_limited(
            format!(
                "you have {cap} unfinished jobs, the most allowed; submit more once some are done"
            ),
            UNFINISHED_JOBS_RETRY,
        ));
    }
    Ok(())
}

pub(super) async fn find_job(c: &Collections, id: Uuid) -> Result<Option<Job>> {
    let found = c
        .jobs
        .find_one(doc! { "_id": uuid(id) })
        .await
        .map_err(op("read a job"))?;
    Ok(found.as_ref().map(job_from).transpose()?)
}

pub(super) async fn get_job(c: &Collections, id: Uuid) -> Result<Job> {
    find_job(c, id)
        .await?
        .ok_or_else(|| Error::not_found("job"))
}

/// Claims up to `limit` due jobs, the longest due first, one atomic update each. An idle poll
/// costs one round trip (the first update finds nothing).
pub(super) async fn claim_jobs(
    c: &Collections,
    lease: std::time::Duration,
    limit: u32,
) -> Result<Vec<Job>> {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let mut claimed = Vec::new();
    while claimed.len() < limit as usize {
        // The clock is read for each claim, so a claim never uses a stale "now".
        let now = Utc::now();
        let until = now
            .checked_add_signed(lease)
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
        let job = c
            .jobs
            .find_one_and_update(
                doc! { "state": { "$in": CLAIMABLE.to_vec() }, "run_after": { "$lte": time(now) } },
                doc! {
                    "$set": { "state": JobState::Running.name(), "run_after": time(until), "updated_at": time(now) },
                    "$inc": { "attempts": 1_i64 },
                },
            )
            .sort(doc! { "run_after": 1 })
            .return_document(ReturnDocument::After)
            .await
            .map_err(op("claim a job"))?;
        match job {
            Some(job) => claimed.push(job_from(&job)?),
            None => break,
        }
    }
    Ok(claimed)
}

/// Records how attempt `attempt` ended, only if the job is still running that attempt.
pub(super) async fn finish_job(
    c: &Collections,
    id: Uuid,
    attempt: u32,
    outcome: JobOutcome,
) -> Result<Job> {
    let now = now();
    let mut set = doc! { "state": outcome.state().name(), "updated_at": now.clone() };
    match &outcome {
        JobOutcome::Done(value) => {
            set.insert("result", json_text("a job's result", value)?);
            set.insert("run_after", now);
        }
        JobOutcome::Failed { error, run_after } => {
            set.insert("result", Bson::Null);
            set.insert("error", error.as_str());
            set.insert("run_after", time(*run_after));
        }
        JobOutcome::Dead { error } => {
            set.insert("result", Bson::Null);
            set.insert("error", error.as_str());
            set.insert("run_after", now);
        }
    }
    let finished = c
        .jobs
        .find_one_and_update(
            doc! { "_id": uuid(id), "state": JobState::Running.name(), "attempts": i64::from(attempt) },
            doc! { "$set": set },
        )
        .return_document(ReturnDocument::After)
        .await
        .map_err(op("finish a job"))?;
    match finished {
        Some(job) => Ok(job_from(&job)?),
        None => {
            get_job(c, id).await?;
            Err(Error::Conflict(format!(
                "attempt {attempt} of job {id} is no longer running"
            )))
        }
    }
}

/// Puts a failed or dead job back to queued with its attempts reset.
pub(super) async fn retry_job(c: &Collections, id: Uuid) -> Result<Job> {
    let now = now();
    let retried = c
        .jobs
        .find_one_and_update(
            doc! { "_id": uuid(id), "state": { "$in": ["failed", "dead"] } },
            doc! { "$set": {
                "state": JobState::Queued.name(), "attempts": 0_i64,
                "run_after": now.clone(), "updated_at": now,
            } },
        )
        .return_document(ReturnDocument::After)
        .await
        .map_err(op("retry a job"))?;
    match retried {
        Some(job) => Ok(job_from(&job)?),
        None => {
            let job = get_job(c, id).await?;
            Err(Error::Conflict(format!(
                "only failed or dead jobs can be retried; this one is {}",
                job.state.name()
            )))
        }
    }
}

/// Jobs in `state`, newest first, through the index `{state, _id}`.
pub(super) async fn list_jobs(c: &Collections, state: JobState, page: Page) -> Result<Vec<Job>> {
    let docs = find_page(
        &c.jobs,
        doc! { "state": state.name() },
        doc! { "_id": -1 },
        None,
        page,
        "list jobs",
    )
    .await?;
    docs.iter()
        .map(|d| job_from(d).map_err(Into::into))
        .collect()
}

/// Deletes done and dead jobs last changed before `before` (their `run_after` is when they
/// finished), through the index `{state, run_after}`.
pub(super) async fn purge_jobs(c: &Collections, before: chrono::DateTime<Utc>) -> Result<u64> {
    Ok(c.jobs
        .delete_many(
            doc! { "state": { "$in": ["done", "dead"] }, "run_after": { "$lt": time(before) } },
        )
        .await
        .map_err(op("purge jobs"))?
        .deleted_count)
}
