//! Row mapping: the columns each read selects and how a row becomes a domain type; what the
//! search index holds of an item.

use rusqlite::{Connection, Row};

use super::errors::db_error;
use crate::domain::{from_millis, Extra, Item, Job, JobState, Location, User};
use crate::error::Result;

pub(super) const ITEM_COLUMNS: &str =
    "id, user_id, title, body, url, ts, lat, lon, keywords, extra";
pub(super) const USER_COLUMNS: &str = "id, name, email, grp, admin, created_at, extra";
pub(super) const JOB_COLUMNS: &str =
    "id, user_id, kind, state, payload, result, error, attempts, created_at, updated_at, run_after, idempotency_key";

pub(super) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        name: row.get(1)?,
        email: row.get(2)?,
        group: row.get(3)?,
        admin: row.get::<_, i64>(4)? != 0,
        created_at: from_millis(row.get(5)?),
        extra: Extra::from_json(&row.get::<_, String>(6)?),
    })
}

pub(super) fn item_from_row(row: &Row<'_>) -> rusqlite::Result<Item> {
    let lat: Option<f64> = row.get(6)?;
    let lon: Option<f64> = row.get(7)?;
    let keywords: String = row.get(8)?;
    Ok(Item {
        id: row.get(0)?,
        user_id: row.get(1)?,
        title: row.get(2)?,
        body: row.get(3)?,
        url: row.get(4)?,
        ts: from_millis(row.get(5)?),
        location: lat.zip(lon).map(|(lat, lon)| Location { lat, lon }),
        keywords: serde_json::from_str(&keywords).unwrap_or_default(),
        extra: Extra::from_json(&row.get::<_, String>(9)?),
    })
}

/// A column that holds what we did not write: reported, never a panic.
fn bad_column(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, what.into())
}

fn json_column(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<serde_json::Value>> {
    row.get::<_, Option<String>>(column)?
        .map(|text| serde_json::from_str(&text).map_err(|e| bad_column(column, e.to_string())))
        .transpose()
}

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state_name: String = row.get(3)?;
    let state = JobState::parse(&state_name)
        .ok_or_else(|| bad_column(3, format!("unknown job state {state_name:?}")))?;
    let run_after = from_millis(row.get(10)?);
    Ok(Job {
        id: row.get(0)?,
        user_id: row.get(1)?,
        kind: row.get(2)?,
        state,
        payload: json_column(row, 4)?.unwrap_or_default(),
        result: json_column(row, 5)?,
        error: row.get(6)?,
        attempts: row.get(7)?,
        created_at: from_millis(row.get(8)?),
        updated_at: from_millis(row.get(9)?),
        run_after: matches!(state, JobState::Queued | JobState::Failed).then_some(run_after),
        lease_until: (state == JobState::Running).then_some(run_after),
        idempotency_key: row.get(11)?,
    })
}

pub(super) fn jobs_from(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<Job>> {
    let rows = stmt.query_map(params, job_from_row).map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}

pub(super) fn keywords_json(keywords: &[String]) -> String {
    serde_json::to_string(keywords).unwrap_or_else(|_| "[]".into())
}

/// What the search index holds of an item, exactly as stored.
pub(in crate::store) struct SearchRow {
    pub(in crate::store) seq: i64,
    pub(in crate::store) title: String,
    pub(in crate::store) body: String,
    pub(in crate::store) keywords: String,
}

impl SearchRow {
    pub(super) fn of(seq: i64, item: &Item) -> SearchRow {
        SearchRow {
            seq,
            title: item.title.clone(),
            body: item.body.clone(),
            keywords: keywords_json(&item.keywords),
        }
    }
}

pub(super) fn search_rows(
    conn: &Connection,
    sql: &str,
    key: impl rusqlite::Params,
) -> Result<Vec<SearchRow>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db_error)?;
    let rows = stmt
        .query_map(key, |r| {
            Ok(SearchRow {
                seq: r.get(0)?,
                title: r.get(1)?,
                body: r.get(2)?,
                keywords: r.get(3)?,
            })
        })
        .map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}

pub(super) const SEARCH_ROW_BY_ID: &str =
    "SELECT seq, title, body, keywords FROM items WHERE id = ?1";
