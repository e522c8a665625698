//! `/metrics` (Prometheus text, this node), `/api/v1/stats` (JSON summary and per-second history
//! from the stats role) and `/dashboard` (a self-contained live page drawing that history).

use actix_web::{web, HttpResponse};

use super::error::ErrorBody;
use super::HttpState;
use crate::actors::stats::{NodeStats, Snapshot};
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/metrics", "GET").route(web::get().to(prometheus_metrics)))
        .service(super::resource("/dashboard", "GET").route(web::get().to(dashboard)));
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

/// `?last=` seconds of history.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Seconds of per-second history to return, 0 to 3600 (default 60).
    #[param(minimum = 0, maximum = 3600)]
    pub last: Option<u32>,
}

/// This node's identity, roles, uptime, data counts, and per-second / per-minute history.
#[utoipa::path(get, path = "/api/v1/stats", tag = "observability", params(StatsQuery),
    responses(
        (status = 200, description = "Node summary", body = NodeStats),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 422, description = "last out of range", body = ErrorBody),
        (status = 503, description = "The stats role is not reachable", body = ErrorBody),
    ))]
pub async fn node_stats(
    state: web::Data<HttpState>,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, Error> {
    let last = query.last.unwrap_or(60);
    if last > 3600 {
        return Err(Error::invalid("last", "must be at most 3600"));
    }
    let snapshot = Snapshot {
        last_seconds: last as usize,
    };
    Ok(HttpResponse::Ok().json(state.bus.call(snapshot).await?))
}

/// The live dashboard: a latency heatmap, throughput, errors and node health, refreshed every
/// second from `/api/v1/stats` (one small request a second; no external scripts or fonts).
#[utoipa::path(get, path = "/dashboard", tag = "observability",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
pub async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("dashboard.html"))
}
