//! How Gorgon's values are stored as rows, and read back: the column lists every query selects,
//! and rows decoded into users, items and jobs.
//!
//! Ids are `uuid`, instants `timestamptz` (written at millisecond precision, as the API keeps
//! them), application data (`extra`, job payloads and results) `json`: kept as the exact text
//! written, so JSON numbers come back as they were given (`jsonb` would rewrite them).

use tokio_postgres::types::Json;
use tokio_postgres::Row;

use super::errors::PgError;
use crate::domain::{Extra, Item, Job, JobState, Location, User};

pub(super) const USER_COLUMNS: &str = "id, name, email, grp, admin, created_at, extra";
pub(super) const ITEM_COLUMNS: &str =
    "id, user_id, title, body, url, ts, lat, lon, keywords, extra";
pub(super) const JOB_COLUMNS: &str = "id, user_id, kind, state, payload, result, error, attempts, \
                                      created_at, updated_at, run_after, idempotency_key";

/// Reads the columns of one kind of row, naming it in the error when a column is wrong.
struct Columns<'a> {
    row: &'a Row,
    what: &'static str,
}

impl<'a> Columns<'a> {
    fn get<T: tokio_postgres::types::FromSql<'a>>(
        &self,
        index: usize,
        field: &'static str,
    ) -> Result<T, PgError> {
        self.row.try_get(index).map_err(|_| PgError::Damaged {
            what: self.what,
            field,
        })
    }
}

pub(super) fn user_from(row: &Row) -> Result<User, PgError> {
    let c = Columns { row, what: "user" };
    Ok(User {
        id: c.get(0, "id")?,
        name: c.get(1, "name")?,
        email: c.get(2, "email")?,
        group: c.get(3, "grp")?,
        admin: c.get(4, "admin")?,
        created_at: c.get(5, "created_at")?,
        extra: c.get::<Json<Extra>>(6, "extra")?.0,
    })
}

pub(super) fn item_from(row: &Row) -> Result<Item, PgError> {
    let c = Columns { row, what: "item" };
    let lat: Option<f64> = c.get(6, "lat")?;
    let lon: Option<f64> = c.get(7, "lon")?;
    Ok(Item {
        id: c.get(0, "id")?,
        user_id: c.get(1, "user_id")?,
        title: c.get(2, "title")?,
        body: c.get(3, "body")?,
        url: c.get(4, "url")?,
        ts: c.get(5, "ts")?,
        location: lat.zip(lon).map(|(lat, lon)| Location { lat, lon }),
        keywords: c.get(8, "keywords")?,
        extra: c.get::<Json<Extra>>(9, "extra")?.0,
    })
}

pub(super) fn items_from(rows: &[Row]) -> crate::error::Result<Vec<Item>> {
    rows.iter()
        .map(|r| item_from(r).map_err(Into::into))
        .collect()
}

/// `run_after` is when the job is next due, as in the other backends: the next attempt of a
/// queued or failed job, the end of a running job's lease, the finish time of a done or dead one.
pub(super) fn job_from(row: &Row) -> Result<Job, PgError> {
    let c = Columns { row, what: "job" };
    let state: &str = c.get(3, "state")?;
    let state = JobState::parse(state).ok_or(PgError::Damaged {
        what: "job",
        field: "state",
    })?;
    let attempts: i32 = c.get(7, "attempts")?;
    let run_after = c.get(10, "run_after")?;
    Ok(Job {
        id: c.get(0, "id")?,
        user_id: c.get(1, "user_id")?,
        kind: c.get(2, "kind")?,
        state,
        payload: c.get::<Json<serde_json::Value>>(4, "payload")?.0,
        result: c
            .get::<Option<Json<serde_json::Value>>>(5, "result")?
            .map(|j| j.0),
        error: c.get(6, "error")?,
        attempts: u32::try_from(attempts).map_err(|_| PgError::Damaged {
            what: "job",
            field: "attempts",
        })?,
        created_at: c.get(8, "created_at")?,
        updated_at: c.get(9, "updated_at")?,
        run_after: matches!(state, JobState::Queued | JobState::Failed).then_some(run_after),
        lease_until: (state == JobState::Running).then_some(run_after),
        idempotency_key: c.get(11, "idempotency_key")?,
    })
}

pub(super) fn jobs_from(rows: &[Row]) -> crate::error::Result<Vec<Job>> {
    rows.iter()
        .map(|r| job_from(r).map_err(Into::into))
        .collect()
}
