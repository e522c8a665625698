//! `GET /api/v1/cluster`: the nodes of the cluster, their roles, uptime, health and recent
//! traffic, with cluster-wide totals. A node that is not clustered lists itself.

use actix_web::{web, HttpResponse};

use super::HttpState;
use crate::cluster::ClusterView;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/cluster", "GET").route(web::get().to(cluster_nodes)));
}

/// Every node this one knows (itself first), as of their last heartbeat (one a second by
/// default), and the cluster's requests per second and latency quantiles added up.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "observability",
    responses((status = 200, description = "The cluster's nodes", body = ClusterView)))]
pub async fn cluster_nodes(state: web::Data<HttpState>) -> HttpResponse {
    let view = match state.cluster.as_ref() {
        Some(link) => link.view(),
        None => ClusterView::single(&state.node),
    };
    HttpResponse::Ok().json(view)
}
