//! `/metrics` (Prometheus text, this node) and `/api/v1/stats` (JSON summary from the stats role).

use actix_web::{web, HttpResponse};

use super::error::ErrorBody;
use super::HttpState;
use crate::actors::stats::{self, NodeStats};
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/metrics", "GET").route(web::get().to(prometheus_metrics)));
}

pub fn api_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/stats", "GET").route(web::get().to(node_stats)));
}

/// Prometheus metrics of this node.
#[utoipa::path(get, path = "/metrics", tag = "observability",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn prometheus_metrics(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// This node's identity, roles, uptime and data counts.
#[utoipa::path(get, path = "/api/v1/stats", tag = "observability",
    responses(
        (status = 200, description = "Node summary", body = NodeStats),
        (status = 503, description = "The stats role is not reachable", body = ErrorBody),
    ))]
pub async fn node_stats(state: web::Data<HttpState>) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(stats::snapshot(&state.bus).await?))
}
