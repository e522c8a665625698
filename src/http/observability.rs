//! `/metrics` (Prometheus text, this node), `/api/v1/stats` (JSON summary and per-second history
//! from the stats role) and `/dashboard` (a self-contained live page drawing that history, and
//! the operator's console for admins).
//!
//! The page is served with a Content Security Policy that allows nothing but its own inline
//! script and style (by their SHA-256, computed from the page once) and requests to this origin:
//! no other script, no inline event handler, no frame, no form posted anywhere.

use std::sync::LazyLock;

use actix_web::{web, HttpResponse};
use base64::Engine;
use sha2::{Digest, Sha256};

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

const DASHBOARD: &str = include_str!("dashboard.html");

/// `'sha256-…'` of the text between the page's first `open` tag and the following `close` tag.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    let text = page
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map(|(inside, _)| inside)
        .unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The dashboard's Content Security Policy.
static DASHBOARD_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash(DASHBOARD, "<script>", "</script>"),
        inline_hash(DASHBOARD, "<style>", "</style>"),
    )
});

/// The live dashboard: a latency heatmap, throughput, errors and node health, refreshed every
/// second from `/api/v1/stats` (one small request a second; no external scripts or fonts); and,
/// after an admin signs in, the operator's console: queues, dead letters, jobs and nodes.
#[utoipa::path(get, path = "/dashboard", tag = "observability",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
pub async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Content-Security-Policy", DASHBOARD_CSP.as_str()))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Frame-Options", "DENY"))
        .body(DASHBOARD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_pages_one_script_and_one_style() {
        assert_eq!(DASHBOARD.matches("<script>").count(), 1);
        assert_eq!(DASHBOARD.matches("<style>").count(), 1);
        // Inline event handlers and style attributes would be refused by the policy.
        for refused in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " style=",
            "<script src",
        ] {
            assert!(!DASHBOARD.contains(refused), "{refused}");
        }
        let csp = DASHBOARD_CSP.as_str();
        assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"));
        assert_ne!(
            inline_hash(DASHBOARD, "<script>", "</script>"),
            inline_hash("", "<script>", "</script>")
        );
    }
}
