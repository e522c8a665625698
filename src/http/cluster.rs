//! `GET /api/v1/cluster`: the nodes of the cluster, their roles, uptime, health and recent
//! traffic, with cluster-wide totals. A node that is not clustered lists itself.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::HttpState;
use crate::cluster::NodeStatus;
use crate::telemetry::history::{ClusterFigures, Interval};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/cluster", "GET").route(web::get().to(cluster_nodes)));
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterView {
    /// False when this node was started without `--cluster-listen` (it is its own cluster).
    pub clustered: bool,
    pub nodes: Vec<ClusterMember>,
    pub totals: ClusterFigures,
}

/// A node in `GET /api/v1/cluster`: its own summary and how this node sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterMember {
    pub node_id: String,
    /// `host:port` of its cluster listener.
    pub cluster_addr: String,
    /// `host:port` where it takes direct calls from other nodes.
    pub data_addr: Option<String>,
    /// Its HTTP address, when it runs the web role.
    pub http_addr: Option<String>,
    pub roles: Vec<String>,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: f64,
    /// "ok", or what is wrong ("redis unreachable").
    pub health: String,
    /// "embedded" when the node runs the store role on its embedded database.
    pub store_backend: Option<String>,
    /// The node's HTTP traffic, one entry a second, oldest first.
    pub recent: Vec<Interval>,
    /// True for the node that answered this request.
    pub this_node: bool,
    /// "ok", or "unresponsive" while it misses heartbeats.
    pub reachable: String,
    /// Seconds since it last answered a heartbeat (0 for this node).
    pub last_seen_seconds: f64,
}

impl ClusterView {
    pub fn of(clustered: bool, nodes: Vec<NodeStatus>) -> ClusterView {
        let totals =
            ClusterFigures::add_up(nodes.iter().map(|n| (&n.summary.recent[..], n.healthy())));
        ClusterView {
            clustered,
            nodes: nodes.into_iter().map(ClusterMember::from).collect(),
            totals,
        }
    }
}

impl From<NodeStatus> for ClusterMember {
    fn from(node: NodeStatus) -> Self {
        let summary = node.summary;
        ClusterMember {
            node_id: summary.node_id,
            cluster_addr: summary.cluster_addr,
            data_addr: summary.data_addr,
            http_addr: summary.http_addr,
            roles: summary.roles,
            version: summary.version,
            started_at: summary.started_at,
            uptime_seconds: summary.uptime_seconds,
            health: summary.health,
            store_backend: summary.store_backend,
            recent: summary.recent,
            this_node: node.this_node,
            reachable: if node.reachable { "ok" } else { "unresponsive" }.to_string(),
            last_seen_seconds: node.last_seen.as_secs_f64(),
        }
    }
}

/// Every node this one knows (itself first), as of their last heartbeat (one a second by
/// default), and the cluster's requests per second and latency quantiles added up.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "observability",
    responses((status = 200, description = "The cluster's nodes", body = ClusterView)))]
pub async fn cluster_nodes(state: web::Data<HttpState>) -> HttpResponse {
    let view = match state.cluster.as_ref() {
        Some(link) => ClusterView::of(true, link.nodes()),
        None => ClusterView::of(false, vec![state.node.status()]),
    };
    HttpResponse::Ok().json(view)
}
