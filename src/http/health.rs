//! `/healthz` (the process is alive) and `/readyz` (it can serve: its roles answer).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::HttpState;
use crate::actors::store;
use crate::bus::Role;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Load balancers probe with HEAD: the same answer, without a body (actix sends none).
    cfg.service(
        super::resource("/healthz", "GET, HEAD")
            .route(web::get().to(healthz))
            .route(web::head().to(healthz)),
    )
    .service(
        super::resource("/readyz", "GET, HEAD")
            .route(web::get().to(readyz))
            .route(web::head().to(readyz)),
    );
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok", "ready" or "not_ready".
    pub status: String,
    /// Each check and what it found ("ok" or why not).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub checks: std::collections::BTreeMap<String, String>,
    /// The store's backend ("embedded", "mongodb"), once the store answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_backend: Option<String>,
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        checks: Default::default(),
        store_backend: None,
    })
}

/// Readiness: the auth, app and store roles are reachable (with `--redis`: Redis answers) and
/// the store answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready", body = Health),
    ))]
pub async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    let mut checks = std::collections::BTreeMap::new();
    if state.node.is_draining() {
        checks.insert("node".into(), "draining".to_string());
    }
    for role in [Role::Auth, Role::App] {
        let found = if state.bus.has_role(role) {
            "ok"
        } else {
            "unreachable"
        };
        checks.insert(role.name().to_string(), found.to_string());
    }
    if let Some(link) = state.redis.as_ref() {
        let found = if link.is_healthy() {
            "ok"
        } else {
            "unreachable"
        };
        checks.insert("redis".into(), found.to_string());
    }
    let (store_check, backend) = match state.bus.call(store::Ping).await {
        Ok(pong) => ("ok".to_string(), Some(pong.backend)),
        Err(e) => (e.to_string(), None),
    };
    checks.insert("store".into(), store_check);
    let ready = checks.values().all(|v| v == "ok");
    let body = Health {
        status: if ready { "ready" } else { "not_ready" }.into(),
        checks,
        store_backend: backend,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
