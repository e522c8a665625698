//! The PostgreSQL backend's failures ([`PgError`], causes kept for the log) and how they become
//! the crate's errors: a database that cannot be reached or cannot take writes right now (down,
//! restarting, a standby, timed out) is `Unavailable` (HTTP 503, retry later), a unique key a
//! `Conflict`, the rest `Internal`.
//!
//! Two questions are asked of a driver error: is it "not now" ([`is_unavailable`]), and is the
//! connection it happened on done for ([`is_fatal`]: closed, broken, or on a server that no
//! longer takes writes), in which case the connection is dropped rather than handed back to the
//! pool (see [`super::connection::Conn`]).
//!
//! Nothing here quotes the connection URL: it may hold a password. The driver's errors name no
//! host or password, and they only reach the log, never a client.

use std::error::Error as _;

use tokio_postgres::error::SqlState;

use crate::error::{Chain, Error};

/// What went wrong in the PostgreSQL backend, with its cause kept for the log.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// An operation failed; `0` says which, in words safe to show.
    #[error("cannot {0} in PostgreSQL")]
    Op(&'static str, #[source] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("cannot get a PostgreSQL connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// A stored row does not have the shape this build writes.
    #[error("a stored {what} is damaged ({field})")]
    Damaged {
        what: &'static str,
        field: &'static str,
    },
    /// The URL could not be used; the message never quotes it.
    #[error("the PostgreSQL URL is not usable: {0}")]
    Url(String),
    /// The database was migrated by a newer build than this one.
    #[error(
        "the database's schema is version {found}, newer than this build knows ({known}): \
         upgrade Gorgon"
    )]
    NewerSchema { found: i32, known: i32 },
}

impl From<PgError> for Error {
    fn from(e: PgError) -> Error {
        match &e {
            PgError::Op(_, cause) if is_unavailable(cause) => {
                tracing::warn!(error = %Chain(&e), "PostgreSQL cannot serve this call now");
                unavailable()
            }
            PgError::Op(_, cause) if cause.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Error::Conflict("conflicts with existing data".into())
            }
            PgError::Pool(_) => {
                tracing::warn!(error = %Chain(&e), "no PostgreSQL connection");
                unavailable()
            }
            PgError::Url(why) => Error::invalid("store", why.clone()),
            PgError::NewerSchema { .. } => Error::invalid("store", e.to_string()),
            _ => Error::internal(&e),
        }
    }
}

pub(super) fn unavailable() -> Error {
    Error::Unavailable("the store's database (PostgreSQL) cannot be reached; try again".into())
}

/// For `map_err`: a failed operation, named by what it tried to do.
pub(super) fn op(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| PgError::Op(what, e).into()
}

/// SQLSTATEs after which the session is done for: the server is going away or restarting
/// (57P01–57P03), the connection broke (class 08), or the server is a standby or was demoted
/// (25006: a new connection, with `target_session_attrs=read-write`, finds the primary).
fn fatal_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "25006"
}

/// SQLSTATEs that mean "not now" without harm to the session: out of connections or resources
/// (class 53), a statement or lock timeout (57014, 55P03), a serialization failure or deadlock
/// (40001, 40P01: the transaction was rolled back whole).
fn retry_code(code: &str) -> bool {
    code.starts_with("53") || matches!(code, "57014" | "55P03" | "40001" | "40P01")
}

/// Whether the connection the error happened on must not be used again.
pub(super) fn is_fatal(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => fatal_code(code.code()),
        None => is_transport(e),
    }
}

/// Whether the failure is the database being out of reach or busy (rather than the request).
pub(super) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => fatal_code(code.code()) || retry_code(code.code()),
        None => is_transport(e),
    }
}

/// A failure of the connection itself, not of a statement: closed, an I/O error, a connect
/// failure or timeout, a garbled reply. The driver's error kinds are private; its messages for
/// these kinds are stable (they are what `Display` prints).
fn is_transport(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    let text = e.to_string();
    [
        "error connecting to server",
        "timeout waiting for server",
        "error communicating with the server",
        "unexpected message from server",
        "error parsing response from server",
        "error performing TLS handshake",
    ]
    .iter()
    .any(|prefix| text.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_into_fatal_and_retryable() {
        for code in ["08006", "57P01", "57P03", "25006"] {
            assert!(fatal_code(code), "{code}");
        }
        for code in ["57014", "55P03", "40001", "53300"] {
            assert!(!fatal_code(code) && retry_code(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02"] {
            assert!(!fatal_code(code) && !retry_code(code), "{code}");
        }
    }

    #[test]
    fn a_timeout_is_unavailable_and_fatal() {
        let e = tokio_postgres::Error::__private_api_timeout();
        assert!(is_unavailable(&e) && is_fatal(&e));
        assert!(matches!(
            Error::from(PgError::Op("read", e)),
            Error::Unavailable(_)
        ));
    }
}
