//! Events: fan-out notifications about committed changes (`store_notify`): items on topic
//! `items`, job state changes on topic `jobs`, and changes to an account that invalidate its
//! cached sessions on topic `users` (internal: never streamed to clients, see [`Event::is_internal`]).
//!
//! Who may see a topic is decided here, once: `items` is public (anyone may read an item through
//! the API), `jobs` is private to the job's owner and to admins (a job event carries what
//! `GET /api/v1/jobs/{id}` answers only to them: result, error, idempotency key). A topic added
//! later is private until it is listed in [`PUBLIC_TOPICS`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum EventKind {
    #[serde(rename = "item.created")]
    ItemCreated,
    #[serde(rename = "item.updated")]
    ItemUpdated,
    #[serde(rename = "item.deleted")]
    ItemDeleted,
    #[serde(rename = "job.queued")]
    JobQueued,
    #[serde(rename = "job.running")]
    JobRunning,
    #[serde(rename = "job.done")]
    JobDone,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.dead")]
    JobDead,
    /// An account changed (rights, password, email), was deleted, or lost a session: every
    /// node's auth role forgets the cached tokens of `user_id`.
    #[serde(rename = "user.changed")]
    UserChanged,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ItemCreated => "item.created",
            EventKind::ItemUpdated => "item.updated",
            EventKind::ItemDeleted => "item.deleted",
            EventKind::JobQueued => "job.queued",
            EventKind::JobRunning => "job.running",
            EventKind::JobDone => "job.done",
            EventKind::JobFailed => "job.failed",
            EventKind::JobDead => "job.dead",
            EventKind::UserChanged => "user.changed",
        }
    }

    /// The topic clients filter on.
    pub fn topic(self) -> &'static str {
        match self {
            EventKind::ItemCreated | EventKind::ItemUpdated | EventKind::ItemDeleted => "items",
            EventKind::JobQueued
            | EventKind::JobRunning
            | EventKind::JobDone
            | EventKind::JobFailed
            | EventKind::JobDead => "jobs",
            EventKind::UserChanged => "users",
        }
    }

    /// Whether events of this kind may go to clients other than their owner and admins.
    pub fn is_public(self) -> bool {
        topic_is_public(self.topic())
    }
}

/// The topics clients may filter on.
pub const TOPICS: [&str; 2] = ["items", "jobs"];

/// The topics every client may receive, whoever's data they are about.
pub const PUBLIC_TOPICS: [&str; 1] = ["items"];

/// Whether `topic`'s events may go to anyone (true) or only to their owner and admins (false).
pub fn topic_is_public(topic: &str) -> bool {
    PUBLIC_TOPICS.contains(&topic)
}

/// One change, as published on the bus and streamed to clients.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub kind: EventKind,
    /// The user the change belongs to (clients filter by it).
    pub user_id: Uuid,
    /// The id of the changed entity.
    pub subject_id: Uuid,
    pub at: DateTime<Utc>,
    /// The entity after the change (absent for deletions).
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    /// The change's place in the stream: set once, when the node that committed it publishes it
    /// ([`next_seq`]). Every front numbers its event stream by it, so a client may resume with
    /// `Last-Event-ID` on any front (0: not published yet).
    #[serde(default)]
    pub seq: u64,
}

/// The next position of this process's published events: microseconds since the Unix epoch,
/// raised by one where needed so it only grows. Below 2^53 (exact as JSON) until the year 2255.
pub fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = unix_micros();
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(previous + 1)
}

/// The Unix time in microseconds (1 if the clock reads before 1970).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
        .max(1)
}

impl Event {
    /// Tells every node that `user_id`'s cached sessions are stale; it carries no user data.
    pub fn user_changed(user_id: Uuid) -> Event {
        Event {
            kind: EventKind::UserChanged,
            user_id,
            subject_id: user_id,
            at: Utc::now(),
            data: None,
            seq: 0,
        }
    }

    /// Whether clients may see this event at all (account changes are for the nodes only).
    pub fn is_internal(&self) -> bool {
        self.kind == EventKind::UserChanged
    }
}
