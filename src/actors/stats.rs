//! The stats role: what this node is and how it is doing — uptime, roles, data counts, and a
//! per-second history of throughput, errors and the latency distribution (the dashboard's
//! heatmap), rolled up per minute.
//!
//! The HTTP layer counts each request into the node's [`StatsHub`] (a few atomic adds); once a
//! second its clock closes that second into its history (`telemetry::history`). Prometheus
//! metrics are rendered per node at `/metrics`; this role answers `/api/v1/stats`.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::bus::{Bus, Handler, Role, Service};
use crate::error::Result;

use crate::telemetry::LATENCY_BUCKETS;

// The per-second history lives in telemetry (the cluster reads it too); re-exported here.
pub use crate::telemetry::history::{quantile_ms, ClusterFigures, Interval, StatsHub};

crate::requests! {
    role Stats, call StatsCall;
    Snapshot => "snapshot", direct, NodeStats;
}

/// The node summary with the last `last_seconds` seconds of history.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub last_seconds: usize,
}

/// A node's identity and health summary.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStats {
    pub node_id: String,
    pub version: String,
    pub roles: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: f64,
    /// Users and items in the store, when the store role is reachable.
    pub users: Option<u64>,
    pub items: Option<u64>,
    /// Upper bounds of the latency buckets, in milliseconds.
    pub bucket_bounds_ms: Vec<f64>,
    /// Per-second history, oldest first.
    pub seconds: Vec<Interval>,
    /// Per-minute roll-ups, oldest first.
    pub minutes: Vec<Interval>,
    /// Redis queues (with `--redis`), as last sampled.
    #[serde(default)]
    pub queues: Vec<crate::bus::redis::QueueFigures>,
    /// The whole cluster's figures (with `--cluster-listen`; per node at `/api/v1/cluster`).
    #[serde(default)]
    pub cluster: Option<ClusterFigures>,
    /// The whole cluster's traffic per second (every node's added up), oldest first; empty when
    /// the node is not clustered. Lags `seconds` by two seconds, so every node's share is in.
    #[serde(default)]
    pub cluster_seconds: Vec<Interval>,
}

/// The stats role: answers snapshots of this node (and, clustered, of the cluster).
pub struct Stats {
    pub bus: Bus,
    pub node_id: String,
    pub roles: Vec<Role>,
    pub started: Instant,
    pub started_at: DateTime<Utc>,
    pub hub: Arc<StatsHub>,
    /// For the queue figures, with `--redis`.
    pub redis: Option<Arc<crate::bus::RedisLink>>,
    /// For the cluster's figures, with `--cluster-listen`.
    pub cluster: Option<Arc<crate::cluster::ClusterLink>>,
}

impl Service for Stats {
    const ROLE: Role = Role::Stats;
    type Call = StatsCall;
}

impl Handler<Snapshot> for Stats {
    async fn handle(self: Arc<Self>, r: Snapshot) -> Result<NodeStats> {
        let (seconds, minutes) = self.hub.history(r.last_seconds);
        let mut snapshot = NodeStats {
            node_id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            roles: self.roles.iter().map(|r| r.name().to_string()).collect(),
            started_at: self.started_at,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            users: None,
            items: None,
            bucket_bounds_ms: LATENCY_BUCKETS.iter().map(|b| b * 1000.0).collect(),
            seconds,
            minutes,
            queues: self
                .redis
                .as_ref()
                .map(|link| link.queue_figures())
                .unwrap_or_default(),
            cluster: self.cluster.as_ref().map(|link| {
                let nodes = link.nodes();
                ClusterFigures::add_up(nodes.iter().map(|n| (&n.summary.recent[..], n.healthy())))
            }),
            cluster_seconds: self
                .cluster
                .as_ref()
                .map(|link| link.history(r.last_seconds))
                .unwrap_or_default(),
        };
        // The counts are for show: a store that cannot answer leaves them out.
        if let Ok((users, items)) = self.bus.call(super::store::Counts).await {
            snapshot.users = Some(users);
            snapshot.items = Some(items);
        }
        Ok(snapshot)
    }
}
