//! The one error type of Gorgon.
//!
//! Errors cross role boundaries (and later process boundaries), so they are plain serde data:
//! a kind that maps to exactly one HTTP status, and a message for humans. The mapping to HTTP
//! lives in `http::error`, in one place.
//!
//! The causes stay where they happened: each layer whose failures have sources (the store's
//! SQLite and file errors, password hashing) has a `thiserror` type of its own that keeps them
//! (`#[source]`), and its `From` into [`Error`] logs the whole chain once, through
//! [`Error::internal`], and hands on only its own message. A cause never travels (it may quote
//! a path, SQL or data).

use serde::{Deserialize, Serialize};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure a request can meet, by the class a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The request is malformed (unparsable JSON, bad path parameter).
    #[error("{0}")]
    BadRequest(String),
    /// No token, or a token that is unknown or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed to touch this resource.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The write clashes with existing data (e.g. an email already registered).
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is in a format the route does not take (its `Content-Type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed, but a field's value is not acceptable.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Too many requests from this client or for this account; try again after `retry_after_secs`
    /// (sent as `Retry-After`).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// The store cannot write right now (its disk is full); reads still work.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A role this request needs is not reachable right now.
    #[error("{0}")]
    Unavailable(String),
    /// A role did not answer within its deadline.
    #[error("{0}")]
    Timeout(String),
    /// A bug or an I/O failure on our side; details go to the log, not the client.
    #[error("{0}")]
    Internal(String),
    /// A search or deep page ran past its time budget (`--search-timeout`) and was stopped.
    #[error("{0}")]
    SearchTimeout(String),
    /// The client did not send its request (its body) within the deadline.
    #[error("{0}")]
    RequestTimeout(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A 429 telling the client when to come back (rounded up to whole seconds, at least 1).
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Error::RateLimited {
            message: message.into(),
            retry_after_secs: secs.max(1),
        }
    }

    /// A failure on our side: logs `error` with every cause below it (once, here, where they are
    /// known) and gives `Internal` with `error`'s own message, without its causes. Layer errors
    /// call it from their `From<…> for Error`; their messages must hold no secret.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %Chain(error), "internal error");
        Error::Internal(error.to_string())
    }

    pub fn not_found(what: &str) -> Self {
        Error::NotFound(format!("{what} not found"))
    }

    /// The stable, machine-readable code sent to clients.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Conflict(_) => "conflict",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::Invalid { .. } => "invalid",
            Error::RateLimited { .. } => "rate_limited",
            Error::InsufficientStorage(_) => "insufficient_storage",
            Error::Unavailable(_) => "unavailable",
            Error::Timeout(_) => "timeout",
            Error::Internal(_) => "internal",
            Error::SearchTimeout(_) => "search_timeout",
            Error::RequestTimeout(_) => "request_timeout",
        }
    }
}

/// An error and its causes on one line: `outer: cause: root cause`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the store's commit failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn internal_keeps_the_message_and_the_chain_stays_in_the_log() {
        let failure = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            Chain(&failure).to_string(),
            "the store's commit failed: disk on fire"
        );
        assert_eq!(
            Error::internal(&failure),
            Error::Internal("the store's commit failed".into())
        );
    }
}
