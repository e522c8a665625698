//! The store's failures ([`StoreError`], causes kept) and how they become the crate's errors: a
//! constraint is a `Conflict`, a spent time budget a `SearchTimeout`, a full disk
//! `InsufficientStorage`, the rest `Internal` (logged with its causes); and the probe that tells
//! when a full disk has room again.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use crate::error::{Chain, Error};

/// Bytes the readiness probe writes to the data directory while the disk is full: this much
/// free space again and the store reports ready.
const SPACE_PROBE_BYTES: usize = 1 << 20;
const SPACE_PROBE_FILE: &str = "gorgon.space-probe";

/// What went wrong inside the store, with its cause kept for the log. Becomes an [`Error`] at the
/// store's edge: a constraint is a `Conflict`, a spent time budget a `SearchTimeout`, a full disk
/// `InsufficientStorage`, anything else `Internal`, logged with its causes (see
/// [`Error::internal`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement failed.
    #[error("a store query failed")]
    Query(#[source] rusqlite::Error),
    /// A batch's transaction could not begin or commit: every write in it fails with this.
    #[error("the store's commit failed")]
    Commit(#[source] rusqlite::Error),
    /// SQLite rolled the whole transaction back by itself (it may, on an I/O error).
    #[error("the store rolled its transaction back")]
    RolledBack,
    /// The data directory and the files in it.
    #[error("cannot {what} {}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A thread of the store could not start.
    #[error("cannot start {0}")]
    Thread(&'static str, #[source] std::io::Error),
    /// A value could not be written as JSON.
    #[error("cannot encode {0}")]
    Encode(&'static str, #[source] serde_json::Error),
    /// A blocking task of the store panicked or was cancelled.
    #[error("{0} did not finish")]
    Task(&'static str, #[source] tokio::task::JoinError),
    /// A thread of the store went away before answering.
    #[error("{0}")]
    Gone(&'static str),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match &e {
            StoreError::Query(q) | StoreError::Commit(q) if is_storage_full(q) => {
                tracing::warn!(error = %Chain(&e), "embedded store: the disk is full");
                insufficient_storage()
            }
            StoreError::Query(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ErrorCode::ConstraintViolation =>
            {
                Error::Conflict("conflicts with existing data".into())
            }
            // Only a pool's progress handler interrupts statements: its time budget ran out.
            StoreError::Query(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ErrorCode::OperationInterrupted =>
            {
                Error::SearchTimeout("the query ran past its time budget".into())
            }
            _ => Error::internal(&e),
        }
    }
}

/// For `map_err`: a failed statement as the crate's error.
pub(in crate::store) fn db_error(e: rusqlite::Error) -> Error {
    StoreError::Query(e).into()
}

/// Whether SQLite failed for want of disk space: `SQLITE_FULL` (a write met ENOSPC), or the
/// I/O errors SQLite reports when growing a file or the shared-memory index meets it.
pub(super) fn is_storage_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::DiskFull
            || f.extended_code == rusqlite::ffi::SQLITE_IOERR_WRITE
            || f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE)
}

pub(super) fn insufficient_storage() -> Error {
    Error::InsufficientStorage(
        "the store's disk is full: writes fail until space is freed; reads still work".into(),
    )
}

/// The error every write of a batch gets when its commit failed (logged once, for the batch).
pub(super) fn commit_error(e: rusqlite::Error) -> Error {
    StoreError::Commit(e).into()
}

/// Writes and removes [`SPACE_PROBE_BYTES`] in `dir`: whether the disk has room again.
pub(super) fn probe_space(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(SPACE_PROBE_FILE);
    let written = File::create(&path).and_then(|mut file| {
        file.write_all(&vec![0u8; SPACE_PROBE_BYTES])?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn store_errors_keep_their_kind_and_only_their_own_message_travels() {
        let conflict = Error::from(StoreError::Query(sqlite(rusqlite::ffi::SQLITE_CONSTRAINT)));
        assert!(matches!(conflict, Error::Conflict(_)), "{conflict:?}");
        let full = Error::from(StoreError::Commit(sqlite(rusqlite::ffi::SQLITE_FULL)));
        assert!(matches!(full, Error::InsufficientStorage(_)), "{full:?}");
        let failure = StoreError::Commit(sqlite(rusqlite::ffi::SQLITE_IOERR));
        assert!(Chain(&failure)
            .to_string()
            .starts_with("the store's commit failed: "));
        assert_eq!(
            Error::from(failure),
            Error::Internal("the store's commit failed".into())
        );
        let file = StoreError::File {
            what: "create the lock file",
            path: PathBuf::from("/data/gorgon.lock"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(
            Chain(&file).to_string(),
            "cannot create the lock file /data/gorgon.lock: permission denied"
        );
    }
}
