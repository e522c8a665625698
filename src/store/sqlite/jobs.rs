//! Jobs: stored once per id and per idempotency key, claimed under a lease by one worker at a
//! time, finished per attempt, retried and purged; and each user's quota of unfinished jobs.

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::errors::{db_error, StoreError};
use super::rows::{job_from_row, jobs_from, JOB_COLUMNS};
use super::users::require_user;
use super::writer::Tx;
use crate::domain::{to_millis, Job, JobOutcome, JobState, NewJob, Page};
use crate::error::{Error, Result};

pub(super) fn insert_job(conn: &Tx<'_>, job: NewJob) -> Result<(Job, bool)> {
    if let Some(key) = &job.idempotency_key {
        let existing = conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = ?1 AND idempotency_key = ?2"
            ))
            .and_then(|mut s| {
                s.query_row(params![job.user_id, key], job_from_row)
                    .optional()
            })
            .map_err(db_error)?;
        if let Some(existing) = existing {
            if existing.kind == job.kind && existing.payload == job.payload {
                return Ok((existing, false));
            }
            return Err(Error::Conflict(
                "this Idempotency-Key was used for a different job".into(),
            ));
        }
    }
    if let Some(cap) = job.max_unfinished {
        check_unfinished_jobs(conn, &job, cap)?;
    }
    let created = to_millis(job.created_at);
    // Due by the store's clock, the one claims compare with.
    let due = to_millis(Utc::now());
    let payload = serde_json::to_string(&job.payload)
        .map_err(|e| StoreError::Encode("a job's payload", e))?;
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO jobs (id, user_id, kind, state, payload, attempts,
             created_at, updated_at, run_after, idempotency_key)
             VALUES (?1, ?2, ?3, 'queued', ?4, 0, ?5, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                job.id,
                job.user_id,
                job.kind,
                payload,
                created,
                due,
                job.idempotency_key
            ])
        })
        .map_err(db_error)?;
    if inserted == 1 {
        // The error undoes the insert (each write has its own savepoint).
        require_user(conn, job.user_id)?;
    }
    // A redelivered insert (same id) returns what the first one stored.
    let stored = select_job(conn, job.id)?;
    if inserted == 0 && stored.user_id != job.user_id {
        return Err(Error::Conflict("a job with this id exists".into()));
    }
    Ok((stored, inserted == 1))
}

/// Whether any job is due by `now`: idle workers poll often, and a read costs no commit.
pub(super) fn any_due(conn: &Connection, now: i64) -> Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM jobs
         WHERE state IN ('queued', 'failed', 'running') AND run_after <= ?1)",
    )
    .and_then(|mut s| s.query_row([now], |r| r.get(0)))
    .map_err(db_error)
}

pub(super) fn claim_jobs(conn: &Tx<'_>, lease: i64, limit: u32) -> Result<Vec<Job>> {
    // The clock is read in the writer, so a claim waiting in the queue does not use a
    // stale "now"; the one writer makes select-and-update a single atomic step.
    let now = to_millis(Utc::now());
    let mut stmt = conn
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                 run_after = ?1 + ?2, updated_at = ?1
             WHERE id IN (SELECT id FROM jobs
                 WHERE state IN ('queued', 'failed', 'running') AND run_after <= ?1
                 ORDER BY run_after LIMIT ?3)
             RETURNING {JOB_COLUMNS}"
        ))
        .map_err(db_error)?;
    jobs_from(&mut stmt, params![now, lease, limit])
}

pub(super) fn finish_job(
    conn: &Tx<'_>,
    id: Uuid,
    attempt: u32,
    outcome: JobOutcome,
) -> Result<Job> {
    let now = to_millis(Utc::now());
    let state = outcome.state().name();
    let (result, error, run_after) = match &outcome {
        JobOutcome::Done(value) => (
            Some(
                serde_json::to_string(value)
                    .map_err(|e| StoreError::Encode("a job's result", e))?,
            ),
            None,
            now,
        ),
        JobOutcome::Failed { error, run_after } => {
            (None, Some(error.clone()), to_millis(*run_after))
        }
        JobOutcome::Dead { error } => (None, Some(error.clone()), now),
    };
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = ?3, result = ?4, error = COALESCE(?5, error),
                 run_after = ?6, updated_at = ?7
             WHERE id = ?1 AND state = 'running' AND attempts = ?2",
        )
        .and_then(|mut s| s.execute(params![id, attempt, state, result, error, run_after, now]))
        .map_err(db_error)?;
    if changed == 0 {
        select_job(conn, id)?;
        return Err(Error::Conflict(format!(
            "attempt {attempt} of job {id} is no longer running"
        )));
    }
    select_job(conn, id)
}

pub(super) fn retry_job(conn: &Tx<'_>, id: Uuid) -> Result<Job> {
    let now = to_millis(Utc::now());
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?2, updated_at = ?2
             WHERE id = ?1 AND state IN ('failed', 'dead')",
        )
        .and_then(|mut s| s.execute(params![id, now]))
        .map_err(db_error)?;
    let job = select_job(conn, id)?;
    if changed == 0 {
        return Err(Error::Conflict(format!(
            "only failed or dead jobs can be retried; this one is {}",
            job.state.name()
        )));
    }
    Ok(job)
}

pub(super) fn list_jobs(conn: &Connection, state: JobState, page: Page) -> Result<Vec<Job>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1
         ORDER BY id DESC LIMIT ?2 OFFSET ?3"
        ))
        .map_err(db_error)?;
    jobs_from(&mut stmt, params![state.name(), page.limit, page.offset])
}

pub(super) fn purge_jobs(conn: &Tx<'_>, before: i64) -> Result<u64> {
    let purged = conn
        .prepare_cached("DELETE FROM jobs WHERE state IN ('done', 'dead') AND run_after < ?1")
        .and_then(|mut s| s.execute([before]))
        .map_err(db_error)?;
    Ok(purged as u64)
}

pub(super) fn select_job(conn: &Connection, id: Uuid) -> Result<Job> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], job_from_row).optional())
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("job"))
}

/// Refuses a new job of a user who has `cap` unfinished jobs already (a redelivered insert of a
/// stored job is not new). Inside the writer, so concurrent submissions cannot overshoot.
fn check_unfinished_jobs(conn: &Connection, job: &NewJob, cap: u32) -> Result<()> {
    let stored: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)")
        .and_then(|mut s| s.query_row([job.id], |r| r.get(0)))
        .map_err(db_error)?;
    if stored {
        return Ok(());
    }
    let unfinished: i64 = conn
        .prepare_cached("SELECT unfinished FROM job_quota WHERE user_id = ?1")
        .and_then(|mut s| s.query_row([job.user_id], |r| r.get(0)).optional())
        .map_err(db_error)?
        .unwrap_or(0);
    if unfinished >= i64::from(cap) {
        return Err(Error::rate_limited(
            format!(
                "you have {cap} unfinished jobs, the most allowed; submit more once some are done"
            ),
            UNFINISHED_JOBS_RETRY,
        ));
    }
    Ok(())
}

/// When a user at the unfinished-jobs quota is told to come back: jobs take seconds.
const UNFINISHED_JOBS_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
