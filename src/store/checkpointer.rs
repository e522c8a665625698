//! Moves the embedded store's write-ahead log into the database on a thread of its own.
//!
//! Why: SQLite checkpoints automatically on the connection whose commit filled the log, so the
//! store's one writer stopped every few hundred commits to copy pages and `fsync` the database.
//! On this project's 2-core machine such an `fsync` took up to 26 ms, and every write queued
//! behind it waited (writes' p99 in the simulator: 31 ms). A passive checkpoint from another
//! connection runs alongside the writer and the readers and never blocks them.
//!
//! A passive checkpoint never makes the log file smaller, though: SQLite reuses it from the
//! start but keeps its largest size, so a burst of large writes (1,000 jobs of 250 KB) left a
//! 748 MB log behind. Two bounds: `journal_size_limit` cuts the log back whenever it starts
//! over, and once no commit has come for a while, a truncating checkpoint empties it.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::sqlite::{db_error, StoreError};
use crate::error::Result;

/// The writer's side: says "something was committed" without ever waiting.
pub(super) struct CheckpointSignal(mpsc::SyncSender<()>);

impl CheckpointSignal {
    pub fn committed(&self) {
        // Full means a checkpoint is already due: nothing to add.
        let _ = self.0.try_send(());
    }
}

/// Starts the checkpointer on `database`: after commits, at most once per `every`, it checkpoints
/// as much of the log as no reader still needs; after `idle` without commits, it checkpoints all
/// of it and truncates the file. `wal_limit` is the size (bytes) the log is cut back to when it
/// starts over. It stops when the signal is dropped.
pub(super) fn start(
    database: &Path,
    every: Duration,
    idle: Duration,
    wal_limit: u64,
) -> Result<Checkpointer> {
    let conn = Connection::open(database).map_err(db_error)?;
    conn.execute_batch(&format!("PRAGMA journal_size_limit={wal_limit};"))
        .map_err(db_error)?;
    let (signal, commits) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("gorgon-store-checkpoint".into())
        .spawn(move || {
            // Whether commits came since the log was last emptied.
            let mut dirty = false;
            loop {
                let committed = if dirty {
                    match commits.recv_timeout(idle) {
                        Ok(()) => true,
                        Err(mpsc::RecvTimeoutError::Timeout) => false,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                } else if commits.recv().is_ok() {
                    true
                } else {
                    break;
                };
                if committed {
                    dirty = true;
                    checkpoint(&conn, "PASSIVE");
                    std::thread::sleep(every);
                } else if checkpoint(&conn, "TRUNCATE") {
                    // Quiet: the whole log is in the database and the file is empty. If a
                    // reader still needed it, try again after the next quiet spell.
                    dirty = false;
                }
            }
        })
        .map_err(|e| StoreError::Thread("the store checkpointer", e))?;
    Ok(Checkpointer {
        signal: CheckpointSignal(signal),
        thread,
    })
}

/// Runs one checkpoint in `mode`; whether it was complete (no reader or writer held it back).
fn checkpoint(conn: &Connection, mode: &str) -> bool {
    // Columns: busy, frames in the log, frames of it now in the database.
    let done = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
    });
    match done {
        Ok((busy, frames)) => {
            metrics::gauge!("gorgon_store_wal_frames").set(frames.max(0) as f64);
            metrics::counter!("gorgon_store_checkpoints_total").increment(1);
            busy == 0
        }
        Err(e) => {
            tracing::warn!(error = %e, mode, "store checkpoint failed");
            false
        }
    }
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
