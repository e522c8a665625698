//! Events: fan-out notifications about committed changes (`store_notify`).

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
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ItemCreated => "item.created",
            EventKind::ItemUpdated => "item.updated",
            EventKind::ItemDeleted => "item.deleted",
        }
    }

    /// The topic clients filter on.
    pub fn topic(self) -> &'static str {
        match self {
            EventKind::ItemCreated | EventKind::ItemUpdated | EventKind::ItemDeleted => "items",
        }
    }
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
}
