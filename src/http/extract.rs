//! Extractors: the bearer token, and the error handlers that turn bad JSON, paths and queries
//! into precise 4xx answers.

use std::future::Future;
use std::pin::Pin;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use serde::{Deserialize, Deserializer};

use super::HttpState;
use crate::actors::{app, auth};
use crate::domain::{Principal, Token};
use crate::error::Error;

/// The caller, authenticated by `Authorization: Bearer <token>` through the auth role.
pub struct Authenticated(pub Principal);

/// The caller, authenticated and an admin now: admin rights are read from the store by the app
/// role ([`app::CheckAdmin`]), never taken from a token validated before a demotion. 401 without
/// a valid token, 403 for anyone else.
pub struct Admin(pub Principal);

/// The raw bearer token (for logout).
pub struct BearerToken(pub Token);

fn bearer(req: &HttpRequest) -> Result<Token, Error> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthorized("missing Authorization: Bearer token".into()))?;
    let value = header
        .to_str()
        .map_err(|_| Error::Unauthorized("invalid Authorization header".into()))?;
    // The scheme is case-insensitive (RFC 7235 §2.1): `Bearer`, `bearer` and `BEARER` alike.
    let token = value
        .trim_start()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| Error::Unauthorized("expected Authorization: Bearer <token>".into()))?;
    Token::parse(token.trim())
}

impl FromRequest for BearerToken {
    type Error = Error;
    type Future = std::future::Ready<Result<Self, Error>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(bearer(req).map(BearerToken))
    }
}

impl FromRequest for Authenticated {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = req.app_data::<web::Data<HttpState>>().cloned();
        Box::pin(async move {
            let token = token?;
            let state = state.ok_or_else(|| Error::Internal("HTTP state missing".into()))?;
            state
                .bus
                .call(auth::Validate::token(&token))
                .await
                .map(Authenticated)
        })
    }
}

impl FromRequest for Admin {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;
    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Authenticated::from_request(req, payload);
        let state = req.app_data::<web::Data<HttpState>>().cloned();
        Box::pin(async move {
            let Authenticated(actor) = caller.await?;
            let state = state.ok_or_else(|| Error::Internal("HTTP state missing".into()))?;
            state.bus.call(app::CheckAdmin { actor }).await?;
            Ok(Admin(actor))
        })
    }
}

pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .content_type_required(false)
        .error_handler(|err, _req| {
            let error = match &err {
                JsonPayloadError::Overflow { limit }
                | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                    Error::PayloadTooLarge(format!("body larger than {limit} bytes"))
                }
                JsonPayloadError::Deserialize(e) if e.is_data() => {
                    Error::invalid(field_of(&e.to_string()), e.to_string())
                }
                JsonPayloadError::Deserialize(e) => {
                    Error::BadRequest(format!("malformed JSON: {e}"))
                }
                other => Error::BadRequest(format!("cannot read the body: {other}")),
            };
            error.into()
        })
}

/// Names the field serde complained about, when its message says (`missing field `x``).
fn field_of(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .filter(|f| f.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .unwrap_or("body")
        .to_string()
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        Error::BadRequest(format!("invalid path parameter: {err}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        Error::BadRequest(format!("invalid query string: {err}")).into()
    })
}

/// For PATCH bodies: tells "absent" (`None`) from "null" (`Some(None)`).
pub fn nullable<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// An integer that JSON may write as `7` or `7.0` (JSON Schema's `integer` allows both).
pub fn integer<'de, D>(deserializer: D) -> Result<i64, D::Error>
where
    D: Deserializer<'de>,
{
    whole_number(serde_json::Number::deserialize(deserializer)?)
}

/// `integer` for optional fields (`null` is absent).
pub fn optional_integer<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: Deserializer<'de>,
{
    Option::<serde_json::Number>::deserialize(deserializer)?
        .map(whole_number)
        .transpose()
}

fn whole_number<E: serde::de::Error>(value: serde_json::Number) -> Result<i64, E> {
    if let Some(n) = value.as_i64() {
        return Ok(n);
    }
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(E::custom(format!("expected an integer, got {value}"))),
    }
}
