//! How SQLite's failures become the crate's errors: a constraint is a `Conflict`, a spent time
//! budget a `SearchTimeout`, a full disk `InsufficientStorage`; and the probe that tells when a
//! full disk has room again.

use std::fs::File;
use std::path::Path;

use rusqlite::ErrorCode;

use crate::error::Error;

/// Bytes the readiness probe writes to the data directory while the disk is full: this much
/// free space again and the store reports ready.
const SPACE_PROBE_BYTES: usize = 1 << 20;
const SPACE_PROBE_FILE: &str = "gorgon.space-probe";

pub(in crate::store) fn db_error(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            Error::Conflict("conflicts with existing data".into())
        }
        // Only a pool's progress handler interrupts statements: its time budget ran out.
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::OperationInterrupted => {
            Error::SearchTimeout("the query ran past its time budget".into())
        }
        _ if is_storage_full(&e) => {
            tracing::warn!(error = %e, "embedded store: the disk is full");
            insufficient_storage()
        }
        _ => {
            tracing::error!(error = %e, "embedded store error");
            Error::Internal(format!("store error: {e}"))
        }
    }
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

/// The error every write of a batch gets when its commit failed.
pub(super) fn commit_error(e: &rusqlite::Error) -> Error {
    if is_storage_full(e) {
        insufficient_storage()
    } else {
        Error::Internal(format!("commit failed: {e}"))
    }
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
