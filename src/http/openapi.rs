//! `/api/v1/openapi.json`: the OpenAPI 3.1 description of every route, generated from the
//! handlers' annotations and the request/response types, so it cannot drift from the code.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/openapi.json", "GET").route(web::get().to(openapi_json)));
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Gorgon API", description = "Users, items, search, jobs, events and operations of a Gorgon node."),
    paths(
        super::auth::register, super::auth::login, super::auth::logout,
        super::users::create_user, super::users::get_user, super::users::update_user,
        super::users::delete_user, super::users::list_user_items,
        super::items::create_item, super::items::get_item, super::items::update_item,
        super::items::delete_item, super::items::search_items,
        super::jobs::submit_job, super::jobs::get_job, super::jobs::list_jobs,
        super::jobs::retry_job,
        super::info::info, super::info::info_page,
        super::events::events,
        super::ws::ws,
        super::providers::ingest,
        super::transfer::import_items, super::transfer::export_items,
        super::observability::prometheus_metrics, super::observability::node_stats,
        super::observability::dashboard,
        super::cluster::cluster_nodes,
        super::queues::list_queues, super::queues::list_dead_letters,
        super::queues::replay_dead_letters, super::queues::replay_dead_letter,
        super::queues::delete_dead_letter, super::queues::purge_dead_letters,
        super::annotations::put_annotation, super::annotations::list_annotations,
        super::health::healthz, super::health::readyz,
        openapi_json,
    ),
    components(schemas(
        crate::domain::User, crate::domain::Item, crate::domain::Location,
        crate::domain::Job, crate::domain::JobState,
        crate::bus::Event, crate::bus::EventKind,
        crate::bus::redis::QueueFigures, crate::bus::redis::dlq::DeadLetterView,
        super::transfer::ImportReportLine, crate::transfer::RowError, crate::transfer::Summary,
        crate::transfer::Counts, crate::transfer::OnError, crate::transfer::Format,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "users", description = "Users (self or admin)"),
        (name = "items", description = "Items, listings and search"),
        (name = "jobs", description = "Background jobs"),
        (name = "bulk", description = "Import and export of items (admins)"),
        (name = "events", description = "Live events"),
        (name = "observability", description = "Metrics and stats"),
        (name = "health", description = "Liveness and readiness"),
        (name = "admin", description = "The operator's routes: queues, dead letters and the dashboard's annotations (admin only)"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "observability",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
