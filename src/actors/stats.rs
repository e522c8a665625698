//! The stats role: what this node is and how it is doing — uptime, roles, data counts, and a
//! per-second history of throughput, errors and the latency distribution (the dashboard's
//! heatmap), rolled up per minute.
//!
//! The HTTP layer counts each request into the node's [`StatsHub`] (a few atomic adds); once a
//! second its clock closes that second into its history (`telemetry::history`). Prometheus
//! metrics are rendered per node at `/metrics`; this role answers `/api/v1/stats`.
//!
//! It also keeps the node's annotations, the marks `/dashboard` draws over its charts (a fault
//! injected by `gorgon chaos`, from its start to its heal): [`PutAnnotation`] upserts one by id,
//! [`ListAnnotations`] lists them, and each snapshot carries those that overlap its window. They
//! are held in the node's [`StatsHub`] and spread to every node of a cluster with the heartbeats
//! (`telemetry::annotations`), so whichever stats instance answers, every front shows the same.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{RoleContext, Spawned};
use crate::bus::{Bus, Handler, Role, Service};
use crate::error::Result;

use crate::telemetry::LATENCY_BUCKETS;

// The per-second history and the annotations live in telemetry (the cluster reads and spreads
// them too); re-exported here.
pub use crate::telemetry::annotations::Annotation;
pub use crate::telemetry::history::{quantile_ms, ClusterFigures, Interval, StatsHub};

crate::requests! {
    role Stats, call StatsCall;
    Snapshot => "snapshot", direct, NodeStats;
    PutAnnotation => "put_annotation", direct, Annotation;
    ListAnnotations => "list_annotations", direct, AnnotationList;
}

/// The node summary with the last `last_seconds` seconds of history.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub last_seconds: usize,
}

/// Inserts or replaces the annotation `id` (checked: 1 to 64 of `[A-Za-z0-9_.-]`, a text of 1
/// to 120 characters without control characters, `end_ms` not before `start_ms`); answers it as
/// kept. Direct: putting the same thing twice is harmless, so a caller may retry.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutAnnotation {
    pub id: String,
    pub text: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
}

/// Every annotation this stats instance keeps.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListAnnotations;

/// `GET /api/v1/admin/annotations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnnotationList {
    /// By start, oldest first.
    pub annotations: Vec<Annotation>,
    /// How many are kept: past it, putting a new one drops the one put longest ago.
    pub capacity: usize,
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
    /// The annotations (faults, deploys…) that overlap the last `last` seconds, by start: the
    /// marks `/dashboard` draws over its charts. Open ones (`end_ms` null) are going on.
    #[serde(default)]
    pub annotations: Vec<Annotation>,
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

pub async fn start(ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
    let stats = Stats {
        bus: ctx.bus.clone(),
        node_id: ctx.node_id.clone(),
        roles: ctx.roles.clone(),
        started: Instant::now(),
        started_at: Utc::now(),
        hub: ctx.stats_hub.clone(),
        redis: ctx.redis.clone(),
        cluster: ctx.cluster.clone(),
    };
    ctx.spawn(stats).await
}

impl Handler<Snapshot> for Stats {
    async fn handle(self: Arc<Self>, r: Snapshot) -> Result<NodeStats> {
        let (seconds, minutes) = self.hub.history(r.last_seconds);
        let now_ms = Utc::now().timestamp_millis();
        let window_ms = i64::try_from(r.last_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let annotations = self
            .hub
            .annotations()
            .overlapping(now_ms.saturating_sub(window_ms), now_ms);
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
            annotations,
        };
        // The counts are for show: a store that cannot answer leaves them out.
        if let Ok((users, items)) = self.bus.call(super::store::Counts).await {
            snapshot.users = Some(users);
            snapshot.items = Some(items);
        }
        Ok(snapshot)
    }
}

impl Handler<PutAnnotation> for Stats {
    async fn handle(self: Arc<Self>, r: PutAnnotation) -> Result<Annotation> {
        self.answer_put(r)
    }

    fn answer_now(
        &self,
        r: PutAnnotation,
    ) -> std::result::Result<Result<Annotation>, PutAnnotation> {
        Ok(self.answer_put(r))
    }
}

impl Handler<ListAnnotations> for Stats {
    async fn handle(self: Arc<Self>, _: ListAnnotations) -> Result<AnnotationList> {
        Ok(self.list_annotations())
    }

    fn answer_now(
        &self,
        _: ListAnnotations,
    ) -> std::result::Result<Result<AnnotationList>, ListAnnotations> {
        Ok(Ok(self.list_annotations()))
    }
}

impl Stats {
    fn answer_put(&self, r: PutAnnotation) -> Result<Annotation> {
        let kept = self
            .hub
            .annotations()
            .put(&r.id, &r.text, r.start_ms, r.end_ms)?;
        tracing::info!(id = %kept.id, text = %kept.text, start_ms = kept.start_ms, end_ms = ?kept.end_ms, "annotation put");
        Ok(kept)
    }

    fn list_annotations(&self) -> AnnotationList {
        let annotations = self.hub.annotations();
        AnnotationList {
            annotations: annotations.all(),
            capacity: annotations.capacity(),
        }
    }
}
