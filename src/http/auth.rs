//! `/api/v1/auth`: register, login, logout.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ErrorBody;
use super::extract::BearerToken;
use super::HttpState;
use crate::actors::auth;
use crate::domain::password::Password;
use crate::domain::user::parse_group;
use crate::domain::{Email, Extra, User, UserInput, UserName};
use crate::error::Error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/auth/register", "POST").route(web::post().to(register)))
        .service(super::resource("/auth/login", "POST").route(web::post().to(login)))
        .service(super::resource("/auth/logout", "POST").route(web::post().to(logout)));
}

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1 to 100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\u0000-\\u001F\\u007F-\\u009F]{1,64}@[^@\\s.\\u0000-\\u001F\\u007F-\\u009F][^@\\s\\u0000-\\u001F\\u007F-\\u009F]*\\.[^@\\s\\u0000-\\u001F\\u007F-\\u009F]*[^@\\s.\\u0000-\\u001F\\u007F-\\u009F]$"
    )]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// 0 to 1000000000; defaults to 0.
    #[serde(default, deserialize_with = "super::extract::integer")]
    #[schema(minimum = 0, maximum = 1000000000)]
    pub group: i64,
    /// Any JSON object, up to 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl RegisterRequest {
    /// Validates every field; `admin` only ever comes from an admin's request.
    pub fn parse(self, admin: bool) -> Result<UserInput, Error> {
        Password::parse(&self.password)?;
        Ok(UserInput {
            name: UserName::parse(&self.name)?,
            email: Email::parse(&self.email)?,
            password: self.password,
            group: parse_group(self.group)?,
            extra: Extra::parse(self.extra.unwrap_or_default())?,
            admin,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// A bearer token for `Authorization: Bearer <token>`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    /// Always "Bearer".
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

/// Registers a user and answers with it.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = User, headers(("Location" = String, description = "The user's URL"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn register(
    state: web::Data<HttpState>,
    req: HttpRequest,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, Error> {
    let input = body.into_inner().parse(false)?;
    let register = auth::Register {
        id: crate::domain::new_id(),
        input,
        client: client_address(&req),
    };
    let user = state.bus.call(register).await?;
    Ok(created_user(user))
}

pub(super) fn created_user(user: User) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("Location", user_location(user.id)))
        .json(user)
}

pub(super) fn user_location(id: Uuid) -> String {
    format!("/api/v1/users/{id}")
}

/// The address the limits of login and registration count against: the connection's peer, or
/// the client a trusted proxy names (`--trusted-proxies`).
pub(super) fn client_address(req: &HttpRequest) -> Option<std::net::IpAddr> {
    super::access::client_of(req)
}

/// Exchanges email and password for a bearer token. Attempts per client address and wrong
/// passwords per account are limited (429 with `Retry-After`).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
    ))]
pub async fn login(
    state: web::Data<HttpState>,
    req: HttpRequest,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    let login = auth::Login {
        email: body.email,
        password: body.password,
        client: client_address(&req),
    };
    let session = state.bus.call(login).await?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        token: session.token.as_str().to_string(),
        token_type: "Bearer".into(),
        expires_at: session.expires_at,
        user: session.user,
    }))
}

/// Revokes the bearer token used for this request.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "No or bad token", body = ErrorBody),
    ))]
pub async fn logout(
    state: web::Data<HttpState>,
    token: BearerToken,
) -> Result<HttpResponse, Error> {
    // Validate first so an unknown token gets 401, not a silent 204.
    let hash = token.0.hash();
    state.bus.call(auth::Validate { hash }).await?;
    state.bus.call(auth::Logout { hash }).await?;
    Ok(HttpResponse::NoContent().finish())
}
