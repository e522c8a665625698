//! The HTTP API (v1): one file per resource, errors and extractors beside them.
//!
//! | route | file |
//! | --- | --- |
//! | `/api/v1/auth/{register,login,logout}` | `auth.rs` |
//! | `/api/v1/users`, `/api/v1/users/{id}`, `/api/v1/users/{id}/items` | `users.rs` |
//! | `/api/v1/items`, `/api/v1/items/{id}` | `items.rs` |
//! | `/api/v1/jobs`, `/api/v1/jobs/{id}`, `/api/v1/jobs/{id}/retry` | `jobs.rs` |
//! | `/info/{uid}[/{limit}/{offset}]` (the original system's read route) | `info.rs` |
//! | `/api/v1/events` (SSE) | `events.rs` |
//! | `/api/v1/ws` (WebSocket) | `ws.rs` |
//! | `/api/v1/providers/{name}/ingest` | `providers.rs` |
//! | `/api/v1/import/items`, `/api/v1/export/items` | `transfer.rs` |
//! | `/metrics`, `/api/v1/stats`, `/dashboard` | `observability.rs` |
//! | `/api/v1/cluster` | `cluster.rs` |
//! | `/api/v1/admin/queues`, `/api/v1/admin/queues/{queue}/dead-letters[/…]` (admin) | `queues.rs` |
//! | `/api/v1/admin/annotations[/{id}]` (admin: the dashboard's marks) | `annotations.rs` |
//! | `/healthz`, `/readyz` | `health.rs` |
//! | (every route: request id, client address, request log, metrics) | `access.rs` |
//! | `/api/v1/openapi.json` | `openapi.rs` |

pub mod access;
pub mod annotations;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod info;
pub mod items;
pub mod jobs;
pub mod limits;
pub mod observability;
pub mod openapi;
pub mod providers;
pub mod queues;
pub mod quotas;
pub mod transfer;
pub mod users;
pub mod ws;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::actors::notify::NotifyHub;
use crate::bus::Bus;
use crate::telemetry::history::StatsHub;

/// Limits of the HTTP edge.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub max_offset: u32,
    /// Largest offset of a keyword search (deeper: `after`).
    pub max_search_offset: u32,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// Interval of SSE keep-alive comments.
    pub sse_heartbeat: Duration,
    /// Deadline of a request's whole body, from its head (zero: none).
    pub body_timeout: Duration,
    /// Deadline of a request's head.
    pub head_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive: Duration,
    /// Open connections of the node, in all.
    pub max_connections: usize,
    /// Listen backlog.
    pub backlog: u32,
    /// Open connections per client address (0: no limit).
    pub max_connections_per_ip: usize,
    /// Items a user (not an admin) may create per minute on this node (0: no limit).
    pub user_items_per_minute: u32,
    /// Largest job payload, in bytes of JSON.
    pub max_job_payload_bytes: usize,
    /// Largest item, in bytes (see `NewItem::size_bytes`).
    pub max_item_bytes: usize,
    /// Load balancers whose `X-Forwarded-For` names the client (see `access::client_address`).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Largest body of an import (streamed, never held whole).
    pub import_max_body_bytes: u64,
    /// Deadline of an import's body instead of `body_timeout` (zero: none).
    pub import_body_timeout: Duration,
    /// Test machinery of `gorgon chaos`: every Nth item create is acknowledged and not stored.
    pub unsafe_drop_every_nth_write: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 256 * 1024,
            default_page_size: 10,
            max_page_size: 100,
            max_offset: 100_000,
            max_search_offset: 1_000,
            shutdown_timeout: Duration::from_secs(10),
            sse_heartbeat: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            head_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(75),
            max_connections: 10_000,
            backlog: 1024,
            max_connections_per_ip: 0,
            user_items_per_minute: 6_000,
            max_job_payload_bytes: 64 * 1024,
            max_item_bytes: 128 * 1024,
            trusted_proxies: Arc::from([]),
            import_max_body_bytes: 1024 * 1024 * 1024,
            import_body_timeout: Duration::from_secs(3600),
            unsafe_drop_every_nth_write: 0,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct HttpState {
    /// This node, as `GET /api/v1/cluster` describes it.
    pub node: Arc<crate::cluster::LocalNode>,
    pub bus: Bus,
    pub limits: HttpLimits,
    pub metrics: PrometheusHandle,
    /// Present when the notify role runs in this process.
    pub notify: Option<Arc<NotifyHub>>,
    /// Where every answered request is counted for the per-second history.
    pub stats: Arc<StatsHub>,
    /// Per-user rate limits of this node's edge.
    pub quotas: Arc<quotas::Quotas>,
    /// This node's Redis link, for readiness (with `--redis`).
    pub redis: Option<Arc<crate::bus::RedisLink>>,
    /// This node's cluster link, for `GET /api/v1/cluster` (with `--cluster-listen`).
    pub cluster: Option<Arc<crate::cluster::ClusterLink>>,
}

/// Routes and per-app configuration, shared by the server and in-process tests.
pub fn configure(state: HttpState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let limit = state.limits.max_body_bytes;
        cfg.app_data(web::Data::new(state))
            .app_data(extract::json_config(limit))
            .app_data(web::PayloadConfig::new(limit))
            .app_data(extract::path_config())
            .app_data(extract::query_config())
            .service(
                web::scope("/api/v1")
                    .configure(auth::routes)
                    .configure(users::routes)
                    .configure(items::routes)
                    .configure(jobs::routes)
                    .configure(events::routes)
                    .configure(ws::routes)
                    .configure(providers::routes)
                    .configure(transfer::routes)
                    .configure(observability::api_routes)
                    .configure(cluster::routes)
                    .configure(queues::routes)
                    .configure(annotations::routes)
                    .configure(openapi::routes),
            )
            .configure(info::routes)
            .configure(health::routes)
            .configure(observability::routes)
            .default_service(web::to(error::not_found));
    }
}

/// A route's resource: a method it does not serve gets a JSON 405 naming the ones it does.
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: actix_web::HttpRequest| {
        error::method_not_allowed(req, allow)
    }))
}

/// Builds the HTTP server on an already bound listener (see [`limits::bind`]).
pub fn server(listener: TcpListener, state: HttpState, workers: usize) -> std::io::Result<Server> {
    let limits = state.limits.clone();
    let workers = workers.max(1);
    let body_timeout = limits.body_timeout;
    let import_body_timeout = limits.import_body_timeout;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(move |req: actix_web::dev::ServiceRequest, next| {
                // An import's body may take long: its own deadline (only admins reach it).
                let deadline = if req.path().starts_with(transfer::IMPORT_PREFIX) {
                    import_body_timeout
                } else {
                    body_timeout
                };
                limits::body_deadline(req, next, deadline)
            }))
            .wrap(from_fn(access::record))
            .configure(configure(state.clone()))
    })
    .workers(workers)
    .max_connections(limits::connections_per_worker(
        limits.max_connections,
        workers,
    ))
    .backlog(limits.backlog)
    .client_request_timeout(limits.head_timeout)
    .keep_alive(limits.keep_alive)
    .shutdown_timeout(limits.shutdown_timeout.as_secs().max(1))
    .disable_signals();
    let per_address = (limits.max_connections_per_ip > 0)
        .then(|| limits::PerAddress::new(limits.max_connections_per_ip));
    let server = server.on_connect(move |connection, data| {
        limits::on_connect(per_address.as_ref(), connection, data)
    });
    Ok(server.listen(listener)?.run())
}

/// The `--metrics-listen` server: `/metrics` and `/healthz` only, one worker, for Prometheus
/// and liveness probes (a node without the web role has nothing else to answer on).
pub fn metrics_server(listener: TcpListener, metrics: PrometheusHandle) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new()
            .route(
                "/metrics",
                web::get().to(move || {
                    let text = metrics.render();
                    async move {
                        actix_web::HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(text)
                    }
                }),
            )
            .route("/healthz", web::get().to(health::healthz))
            .route("/healthz", web::head().to(health::healthz))
    })
    .workers(1)
    .shutdown_timeout(1)
    .disable_signals();
    Ok(server.listen(listener)?.run())
}
