//! `/api/v1/providers/{name}/ingest`: items from an external provider, authenticated by an
//! HMAC-SHA256 signature of the body (`X-Gorgon-Signature: t=<unix seconds>,v1=<hex>`) with the
//! provider's secret, not by a user's token. The provider role checks it (it holds the secrets).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ErrorBody;
use super::HttpState;
use crate::actors::provider;
use crate::error::Error;
use crate::providers::ingest::IngestRequest;
use crate::providers::{valid_name, SIGNATURE_HEADER};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/providers/{name}/ingest", "POST").route(web::post().to(ingest)));
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestReply {
    pub inserted: usize,
    /// The new items' ids, in the order sent.
    pub ids: Vec<Uuid>,
}

/// Stores a signed batch of items from an external provider (all or nothing).
#[utoipa::path(post, path = "/api/v1/providers/{name}/ingest", tag = "providers",
    params(
        ("name" = String, Path, description = "The provider, as configured with --provider-secret"),
        ("X-Gorgon-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of t, a dot, and the body>"),
    ),
    request_body = IngestRequest,
    responses(
        (status = 201, description = "Stored", body = IngestReply),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Unknown provider, missing, bad or expired signature", body = ErrorBody),
        (status = 409, description = "This signed request was accepted before (a replay)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "An invalid item (the field names which)", body = ErrorBody),
    ))]
pub async fn ingest(
    state: web::Data<HttpState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let name = name.into_inner();
    // No configured provider has such a name: the same answer as any unknown provider.
    if !valid_name(&name) {
        return Err(Error::Unauthorized(format!("unknown provider {name:?}")));
    }
    let signature = match req.headers().get(SIGNATURE_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::Unauthorized(format!("{SIGNATURE_HEADER} is not text")))?
                .to_string(),
        ),
    };
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| Error::BadRequest("the body is not UTF-8 JSON".into()))?;
    let ingest = provider::Ingest {
        provider: name,
        signature,
        body,
    };
    let ids = state.bus.call(ingest).await?;
    Ok(HttpResponse::Created().json(IngestReply {
        inserted: ids.len(),
        ids,
    }))
}
