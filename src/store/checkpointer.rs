//! Moves the embedded store's write-ahead log into the database on a thread of its own.
//!
//! Why: SQLite checkpoints automatically on the connection whose commit filled the log, so the
//! store's one writer stopped every few hundred commits to copy pages and `fsync` the database.
//! On this project's 2-core machine such an `fsync` took up to 26 ms, and every write queued
//! behind it waited (writes' p99 in the simulator: 31 ms). A passive checkpoint from another
//! connection runs alongside the writer and the readers and never blocks them.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::sqlite::db_error;
use crate::error::{Error, Result};

/// The writer's side: says "something was committed" without ever waiting.
pub(super) struct CheckpointSignal(mpsc::SyncSender<()>);

impl CheckpointSignal {
    pub fn committed(&self) {
        // Full means a checkpoint is already due: nothing to add.
        let _ = self.0.try_send(());
    }
}

/// Starts the checkpointer on `database`: after commits, at most once per `every`, it checkpoints
/// as much of the log as no reader still needs. It stops when the signal is dropped.
pub(super) fn start(database: &Path, every: Duration) -> Result<Checkpointer> {
    let conn = Connection::open(database).map_err(db_error)?;
    let (signal, commits) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("gorgon-store-checkpoint".into())
        .spawn(move || {
            while commits.recv().is_ok() {
                // Columns: busy, frames in the log, frames of it now in the database.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    row.get::<_, i64>(1)
                }) {
                    Ok(frames) => {
                        metrics::gauge!("gorgon_store_wal_frames").set(frames as f64);
                        metrics::counter!("gorgon_store_checkpoints_total").increment(1);
                    }
                    Err(e) => tracing::warn!(error = %e, "store checkpoint failed"),
                }
                std::thread::sleep(every);
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the store checkpointer: {e}")))?;
    Ok(Checkpointer {
        signal: CheckpointSignal(signal),
        thread,
    })
}

pub(super) struct Checkpointer {
    pub signal: CheckpointSignal,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Stops the thread once its checkpoint in progress is done.
    pub fn stop(self) {
        drop(self.signal);
        let _ = self.thread.join();
    }
}
