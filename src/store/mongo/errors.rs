//! The MongoDB backend's failures ([`MongoError`], causes kept for the log) and how they become
//! the crate's errors: a server that cannot be reached (down, failing over, timed out) is
//! `Unavailable` (HTTP 503, retry later), a duplicate key a `Conflict`, the rest `Internal`.
//!
//! Nothing here quotes the connection URL: it may hold a password. The driver's own errors do
//! not carry credentials, and they only reach the log, never a client.

use mongodb::error::{ErrorKind, WriteFailure};

use crate::error::{Chain, Error};

/// MongoDB's duplicate key error.
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// Server codes that mean "not now": the node is stepping down, shutting down, recovering, or
/// the deployment has no primary. Retrying later (or elsewhere) succeeds.
const NOT_NOW: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    64,    // WriteConcernFailed (wtimeout: a majority did not confirm in time)
    100,   // UnsatisfiableWriteConcern
];

/// What went wrong in the MongoDB backend, with its cause kept for the log.
#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    /// An operation failed; `0` says which, in words safe to show.
    #[error("cannot {0} in MongoDB")]
    Op(&'static str, #[source] mongodb::error::Error),
    /// A stored document does not have the shape this build writes.
    #[error("a stored {what} is damaged ({field})")]
    Damaged {
        what: &'static str,
        field: &'static str,
    },
    /// A value could not be written as JSON.
    #[error("cannot encode {0}")]
    Encode(&'static str, #[source] serde_json::Error),
    /// The URL could not be used; the message never quotes it.
    #[error("the MongoDB URL is not usable: {0}")]
    Url(String),
}

impl From<MongoError> for Error {
    fn from(e: MongoError) -> Error {
        match &e {
            MongoError::Op(_, cause) if is_unreachable(cause) => {
                tracing::warn!(error = %Chain(&e), "MongoDB is unreachable");
                unavailable()
            }
            MongoError::Op(_, cause) if is_duplicate(cause) => {
                Error::Conflict("conflicts with existing data".into())
            }
            MongoError::Url(why) => Error::invalid("store", why.clone()),
            _ => Error::internal(&e),
        }
    }
}

pub(super) fn unavailable() -> Error {
    Error::Unavailable("the store's database (MongoDB) cannot be reached; try again".into())
}

/// For `map_err`: a failed operation, named by what it tried to do.
pub(super) fn op(what: &'static str) -> impl FnOnce(mongodb::error::Error) -> Error {
    move |e| MongoError::Op(what, e).into()
}

/// Whether the failure is the deployment being out of reach (rather than the request).
pub(super) fn is_unreachable(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => NOT_NOW.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::InsertMany(m) => m.write_concern_error.is_some() && m.write_errors.is_none(),
        _ => e.contains_label("NetworkError") || e.contains_label("RetryableWriteError"),
    }
}

/// Whether the failure is a duplicate key (a unique index refused the write).
pub(super) fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

/// Of a failed unordered `insert_many`: how many documents were refused as duplicates, if that
/// is all that went wrong (`None`: something else failed too).
pub(super) fn only_duplicates(e: &mongodb::error::Error) -> Option<usize> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
            let errors = m.write_errors.as_ref()?;
            errors
                .iter()
                .all(|w| w.code == DUPLICATE_KEY)
                .then_some(errors.len())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shut_down_client_is_unavailable() {
        let e = mongodb::error::Error::from(ErrorKind::Shutdown);
        assert!(is_unreachable(&e));
        assert!(matches!(
            Error::from(MongoError::Op("read", e)),
            Error::Unavailable(_)
        ));
    }
}
