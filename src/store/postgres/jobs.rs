//! Jobs: stored once per id and per idempotency key, claimed under a lease by one worker at a
//! time, finished per attempt, retried and purged; and each user's quota of unfinished jobs.
//!
//! A claim is one statement: `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`.
//! Claimers racing on any number of nodes each lock the due jobs nobody else holds and skip the
//! rest, so no job is handed to two claims whose leases overlap, and none waits for another.

use chrono::Utc;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::connection::Conn;
use super::rows::{job_from, jobs_from, JOB_COLUMNS};
use crate::domain::{now, Job, JobOutcome, JobState, NewJob, Page};
use crate::error::{Error, Result};

/// When a user at the unfinished-jobs quota is told to come back: jobs take seconds.
const UNFINISHED_JOBS_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The insert, the owner check and the quota in one statement. Nothing is written when the id or
/// the user's key is taken (`ON CONFLICT DO NOTHING`, whichever unique index), the owner does not
/// exist, or the user has `$9` unfinished jobs (counted through `(user_id, state)`, at most `$9`
/// entries); [`insert_job`] then tells which.
const INSERT_JOB: &str = "
    INSERT INTO jobs (id, user_id, kind, state, payload, attempts, created_at, updated_at,
                      run_after, idempotency_key)
    SELECT $1, $2, $3, 'queued', $4, 0, $5, $5, $6, $7
    WHERE EXISTS (SELECT 1 FROM users WHERE id = $2 FOR KEY SHARE)
      AND ($8::bigint IS NULL OR (SELECT count(*) FROM (
              SELECT 1 FROM jobs WHERE user_id = $2 AND state IN ('queued', 'running', 'failed')
              LIMIT $8) AS unfinished) < $8)
    ON CONFLICT DO NOTHING
    RETURNING ";

/// Stores a queued job, due at once by the store's clock (the one claims compare with). With a
/// key used before by the same user, the stored job (and `false`), or `Conflict` if its kind or
/// payload differ. Like the MongoDB backend (and unlike the embedded store's single writer),
/// concurrent submissions of one user may each see room under the quota: it can be passed by
/// the number of submissions in flight.
pub(super) async fn insert_job(c: &Conn, job: NewJob) -> Result<(Job, bool)> {
    let cap = job.max_unfinished.map(i64::from);
    let inserted = c
        .query_opt(
            "insert a job",
            &format!("{INSERT_JOB}{JOB_COLUMNS}"),
            &[
                &job.id,
                &job.user_id,
                &job.kind,
                &Json(&job.payload),
                &job.created_at,
                &now(),
                &job.idempotency_key,
                &cap,
            ],
        )
        .await?;
    if let Some(row) = inserted {
        return Ok((job_from(&row)?, true));
    }
    // A redelivered insert (same id) returns what the first one stored.
    if let Some(existing) = find_job(c, job.id).await? {
        if existing.user_id != job.user_id {
            return Err(Error::Conflict("a job with this id exists".into()));
        }
        return Ok((existing, false));
    }
    if let Some(key) = &job.idempotency_key {
        let row = c
            .query_opt(
                "read a job",
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND idempotency_key = $2"
                ),
                &[&job.user_id, key],
            )
            .await?;
        if let Some(row) = row {
            let existing = job_from(&row)?;
            if existing.kind == job.kind && existing.payload == job.payload {
                return Ok((existing, false));
            }
            return Err(Error::Conflict(
                "this Idempotency-Key was used for a different job".into(),
            ));
        }
    }
    let owner = c
        .query_opt(
            "read a user",
            "SELECT 1 FROM users WHERE id = $1",
            &[&job.user_id],
        )
        .await?;
    if owner.is_none() {
        return Err(Error::Unauthorized("this account no longer exists".into()));
    }
    let cap = job.max_unfinished.unwrap_or(0);
    Err(Error::rate_limited(
        format!("you have {cap} unfinished jobs, the most allowed; submit more once some are done"),
        UNFINISHED_JOBS_RETRY,
    ))
}

pub(super) async fn find_job(c: &Conn, id: Uuid) -> Result<Option<Job>> {
    let row = c
        .query_opt(
            "read a job",
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(job_from).transpose()?)
}

pub(super) async fn get_job(c: &Conn, id: Uuid) -> Result<Job> {
    find_job(c, id)
        .await?
        .ok_or_else(|| Error::not_found("job"))
}

/// Claims up to `limit` due jobs, the longest due first: queued or failed jobs whose `run_after`
/// has come, and running jobs whose lease ended. Each becomes running with one more attempt and
/// a lease until now + `lease`.
pub(super) async fn claim_jobs(
    c: &Conn,
    lease: std::time::Duration,
    limit: u32,
) -> Result<Vec<Job>> {
    let now = now();
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let until = now
        .checked_add_signed(lease)
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
    let rows = c
        .query(
            "claim jobs",
            &format!(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, run_after = $2,
                     updated_at = $1
                 WHERE id IN (
                     SELECT id FROM jobs
                     WHERE state IN ('queued', 'failed', 'running') AND run_after <= $1
                     ORDER BY run_after LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING {JOB_COLUMNS}"
            ),
            &[&now, &until, &i64::from(limit)],
        )
        .await?;
    let mut jobs = jobs_from(&rows)?;
    jobs.sort_by_key(|j| (j.updated_at, j.id));
    Ok(jobs)
}

/// Records how attempt `attempt` ended, only if the job is still running that attempt.
pub(super) async fn finish_job(
    c: &Conn,
    id: Uuid,
    attempt: u32,
    outcome: JobOutcome,
) -> Result<Job> {
    let now = now();
    let state = outcome.state().name();
    let (result, error, run_after) = match &outcome {
        JobOutcome::Done(value) => (Some(Json(value)), None, now),
        JobOutcome::Failed { error, run_after } => (None, Some(error.as_str()), *run_after),
        JobOutcome::Dead { error } => (None, Some(error.as_str()), now),
    };
    let attempt_number = i32::try_from(attempt).unwrap_or(i32::MAX);
    let row = c
        .query_opt(
            "finish a job",
            &format!(
                "UPDATE jobs SET state = $3, result = $4, error = COALESCE($5, error),
                     run_after = $6, updated_at = $7
                 WHERE id = $1 AND state = 'running' AND attempts = $2
                 RETURNING {JOB_COLUMNS}"
            ),
            &[
                &id,
                &attempt_number,
                &state,
                &result,
                &error,
                &run_after,
                &now,
            ],
        )
        .await?;
    match row {
        Some(row) => Ok(job_from(&row)?),
        None => {
            get_job(c, id).await?;
            Err(Error::Conflict(format!(
                "attempt {attempt} of job {id} is no longer running"
            )))
        }
    }
}

/// Puts a failed or dead job back to queued with its attempts reset.
pub(super) async fn retry_job(c: &Conn, id: Uuid) -> Result<Job> {
    let row = c
        .query_opt(
            "retry a job",
            &format!(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_after = $2, updated_at = $2
                 WHERE id = $1 AND state IN ('failed', 'dead')
                 RETURNING {JOB_COLUMNS}"
            ),
            &[&id, &now()],
        )
        .await?;
    match row {
        Some(row) => Ok(job_from(&row)?),
        None => {
            let job = get_job(c, id).await?;
            Err(Error::Conflict(format!(
                "only failed or dead jobs can be retried; this one is {}",
                job.state.name()
            )))
        }
    }
}

/// Jobs in `state`, newest first, through the index `(state, id DESC)`.
pub(super) async fn list_jobs(c: &Conn, state: JobState, page: Page) -> Result<Vec<Job>> {
    let rows = c
        .query(
            "list jobs",
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1
                 ORDER BY id DESC LIMIT $2 OFFSET $3"
            ),
            &[
                &state.name(),
                &i64::from(page.limit),
                &i64::from(page.offset),
            ],
        )
        .await?;
    jobs_from(&rows)
}

/// Deletes done and dead jobs last changed before `before` (their `run_after` is when they
/// finished), through the index `(state, run_after)`.
pub(super) async fn purge_jobs(c: &Conn, before: chrono::DateTime<Utc>) -> Result<u64> {
    c.execute(
        "purge jobs",
        "DELETE FROM jobs WHERE state IN ('done', 'dead') AND run_after < $1",
        &[&before],
    )
    .await
}
