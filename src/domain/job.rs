//! Jobs: durable units of background work, submitted over HTTP and run by the app role's workers.
//!
//! A job moves `queued → running → done`, or `running → failed` (waiting for its retry) and back
//! to `running`, until it is `done` or, after the last attempt, `dead`. Only done and dead are
//! final; an admin may put a dead or failed job back to `queued`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker whose lease has not ended.
    Running,
    /// Finished; the result is stored.
    Done,
    /// An attempt failed; waiting for its retry at `run_after`.
    Failed,
    /// Every attempt failed; kept until retried by an admin or purged.
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Dead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(value: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.name() == value)
    }
}

/// A job as stored and as answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// The user who submitted it.
    pub user_id: Uuid,
    /// Which handler runs it (`hash`, or a kind the application registered).
    pub kind: String,
    pub state: JobState,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The handler's answer, once done: any JSON (an object for the built-in `hash` job).
    pub result: Option<serde_json::Value>,
    /// The error of the last failed attempt.
    pub error: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the next attempt may start (queued and failed jobs).
    pub run_after: Option<DateTime<Utc>>,
    /// When a running job's worker is considered gone and the job is claimed again.
    pub lease_until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A job to store, built by the app role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewJob {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Refuse the job (429) when its user already has this many unfinished (queued, running or
    /// failed) jobs; `None`: no limit (admins).
    #[serde(default)]
    pub max_unfinished: Option<u32>,
}

/// How an attempt ended, as a worker reports it to the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobOutcome {
    Done(serde_json::Value),
    /// Retried at `run_after`.
    Failed {
        error: String,
        run_after: DateTime<Utc>,
    },
    /// No attempt left.
    Dead {
        error: String,
    },
}

impl JobOutcome {
    pub fn state(&self) -> JobState {
        match self {
            JobOutcome::Done(_) => JobState::Done,
            JobOutcome::Failed { .. } => JobState::Failed,
            JobOutcome::Dead { .. } => JobState::Dead,
        }
    }
}
