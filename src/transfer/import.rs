//! The import pipeline: rows are read and validated on a blocking thread ([`read_rows`]) and
//! handed over in chunks through a bounded channel (so the reader waits when the store is
//! slower, and memory holds a few chunks, never the file); [`ItemImport::pass`] looks up each
//! row's owner, gives it its id and writes full batches to an [`ItemTarget`] (the store itself
//! for `gorgon import`, the store role through the bus for the API), while the thread reads on.
//!
//! `--on-error abort` (nothing stored if any row is bad) takes one of two ways. A store that
//! stages an import (the embedded store, `BulkLoad::stages_imports`: its rows reach the items
//! table only when the import ends) reads the input once and drops the stage if a row was bad.
//! Elsewhere (the shared stores, and the API, whose batches go to the store role as they come)
//! it runs two passes over the same input: [`Pass::Check`] validates every row (owners
//! included) and writes nothing; only if no row is bad does [`Pass::Apply`] read the input
//! again and store it. A file is simply read twice; a request body is spooled to a temporary
//! file during the check (`body.rs`). Validating everything first is what makes "nothing
//! applied" hold on every backend without a transaction the size of the file (the embedded
//! store would hold its one writer for the whole import; MongoDB has no such transaction).
//! What the check cannot foresee (the store failing, an owner deleted between the passes)
//! stops the apply pass where it happens: the rows before it stay stored, and running the file
//! again stores the rest without writing any row twice.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::items::{ItemRow, OwnerRef};
use super::records::{Record, RecordReader};
use super::{Counts, RowError, TransferError};
use crate::domain::Item;
use crate::error::Error;

/// Rows per chunk handed from the reading thread to the writer.
pub const CHUNK_ROWS: usize = 512;

/// Owners remembered by an import (email or id to account); past it the memory starts over.
const MAX_OWNERS: usize = 100_000;

/// Rows read by the thread, with how far into the input it was.
pub struct Chunk<T> {
    pub rows: Vec<Result<T, RowError>>,
    pub bytes: u64,
}

/// Reads the records of `open()` on a blocking thread and turns each into a row with `build`,
/// sending them in chunks of [`CHUNK_ROWS`] through a channel of `queued` chunks. The thread
/// stops at the end of the input, at a failure of the input (its handle says which), or when
/// the receiver is dropped.
pub fn read_rows<T, R, O, B>(
    open: O,
    mut build: B,
    queued: usize,
) -> (
    JoinHandle<Result<(), TransferError>>,
    mpsc::Receiver<Chunk<T>>,
)
where
    T: Send + 'static,
    R: Read,
    O: FnOnce() -> Result<RecordReader<R>, TransferError> + Send + 'static,
    B: FnMut(&Record<'_>) -> Result<T, RowError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(queued.max(1));
    let thread = tokio::task::spawn_blocking(move || {
        let mut reader = open()?;
        let mut rows = Vec::with_capacity(CHUNK_ROWS);
        loop {
            let row = reader.next(&mut build)?;
            let end = row.is_none();
            rows.extend(row);
            if rows.len() >= CHUNK_ROWS || (end && !rows.is_empty()) {
                let chunk = Chunk {
                    rows: std::mem::replace(&mut rows, Vec::with_capacity(CHUNK_ROWS)),
                    bytes: reader.bytes_read(),
                };
                if tx.blocking_send(chunk).is_err() {
                    return Ok(()); // the consumer stopped: it says why
                }
            }
            if end {
                return Ok(());
            }
        }
    });
    (thread, rx)
}

/// Ends a pass: closing the channel stops the reading thread if it still reads; then the
/// consumer's failure comes first, else the thread's (the input failed, which is why the rows
/// ended early).
pub async fn settle<T>(
    rows: mpsc::Receiver<Chunk<T>>,
    reading: JoinHandle<Result<(), TransferError>>,
    consumed: Result<(), TransferError>,
) -> Result<(), TransferError> {
    drop(rows);
    let read = reading.await.map_err(TransferError::Task)?;
    consumed?;
    read
}

/// Where an import's items go.
#[async_trait]
pub trait ItemTarget: Send + Sync {
    /// The id of the account `owner` names; `None` when there is none.
    async fn owner(&self, owner: &OwnerRef) -> Result<Option<Uuid>, Error>;
    /// Stores a batch, skipping the ids stored already; how many were new.
    async fn write(&self, items: Vec<Item>) -> Result<usize, Error>;
}

/// Where bad rows and progress are told.
pub trait Report: Send {
    fn bad_row(&mut self, error: &RowError) -> Result<(), TransferError>;
    /// After each chunk: the counts so far and the bytes of input read.
    fn progress(&mut self, _counts: &Counts, _bytes: u64) {}
}

/// One pass over the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Validate every row and look up every owner; store nothing.
    Check,
    /// Store every valid row; with `stop_at_first_error`, stop at the first bad one.
    Apply { stop_at_first_error: bool },
}

/// An import of items into one target.
pub struct ItemImport {
    target: Arc<dyn ItemTarget>,
    default_owner: Option<Uuid>,
    owners: HashMap<OwnerRef, Option<Uuid>>,
    batch: usize,
}

impl ItemImport {
    /// Rows without an owner cell go to `default_owner`; `batch` rows are written at once.
    pub fn new(target: Arc<dyn ItemTarget>, default_owner: Option<Uuid>, batch: usize) -> Self {
        ItemImport {
            target,
            default_owner,
            owners: HashMap::new(),
            batch: batch.max(1),
        }
    }

    /// How many chunks the reading thread may queue: one batch ahead of the writer.
    pub fn queued_chunks(&self) -> usize {
        self.batch.div_ceil(CHUNK_ROWS) + 2
    }

    /// Runs one pass over the rows the thread `reading` sends on `rows`.
    pub async fn pass(
        &mut self,
        mut rows: mpsc::Receiver<Chunk<ItemRow>>,
        reading: JoinHandle<Result<(), TransferError>>,
        pass: Pass,
        report: &mut dyn Report,
    ) -> Result<Counts, TransferError> {
        let mut counts = Counts::default();
        let consumed = self.consume(&mut rows, pass, report, &mut counts).await;
        settle(rows, reading, consumed).await?;
        Ok(counts)
    }

    async fn consume(
        &mut self,
        rows: &mut mpsc::Receiver<Chunk<ItemRow>>,
        pass: Pass,
        report: &mut dyn Report,
        counts: &mut Counts,
    ) -> Result<(), TransferError> {
        let mut batch = Vec::with_capacity(self.batch);
        while let Some(chunk) = rows.recv().await {
            for row in chunk.rows {
                counts.rows += 1;
                let item = match row {
                    Ok(row) => self.item(row, pass).await?,
                    Err(bad) => Err(bad),
                };
                match item {
                    Ok(Some(item)) => {
                        batch.push(item);
                        if batch.len() >= self.batch {
                            self.write(&mut batch, counts).await?;
                        }
                    }
                    Ok(None) => {}
                    Err(bad) => {
                        counts.invalid += 1;
                        report.bad_row(&bad)?;
                        if pass
                            == (Pass::Apply {
                                stop_at_first_error: true,
                            })
                        {
                            self.write(&mut batch, counts).await?;
                            return Err(TransferError::Stopped {
                                line: bad.line,
                                reason: bad.to_string(),
                            });
                        }
                    }
                }
            }
            report.progress(counts, chunk.bytes);
        }
        self.write(&mut batch, counts).await
    }

    /// A valid row's item (`None` in a check pass), or why the row is bad after all (its owner
    /// is unknown).
    async fn item(
        &mut self,
        row: ItemRow,
        pass: Pass,
    ) -> Result<Result<Option<Item>, RowError>, TransferError> {
        let owner = match &row.owner {
            Some((who, column)) => match self.owner_id(who).await? {
                Some(id) => id,
                None => {
                    return Ok(Err(RowError::new(
                        row.line,
                        Some(column),
                        format!("no account {who}"),
                    )))
                }
            },
            None => match self.default_owner {
                Some(id) => id,
                None => {
                    return Ok(Err(RowError::new(
                        row.line,
                        Some("owner"),
                        "missing: give user_id or owner, or the import's owner",
                    )))
                }
            },
        };
        if pass == Pass::Check {
            return Ok(Ok(None));
        }
        let id = row.id_for(owner);
        Ok(Ok(Some(row.item.into_item(id, owner, row.ts))))
    }

    async fn owner_id(&mut self, who: &OwnerRef) -> Result<Option<Uuid>, TransferError> {
        if let Some(found) = self.owners.get(who) {
            return Ok(*found);
        }
        let found = self.target.owner(who).await?;
        if self.owners.len() >= MAX_OWNERS {
            self.owners.clear();
        }
        self.owners.insert(who.clone(), found);
        Ok(found)
    }

    /// Writes what the batch holds, in id order (time order: "newest first" in search follows
    /// the order of insertion within a batch).
    async fn write(&self, batch: &mut Vec<Item>, counts: &mut Counts) -> Result<(), TransferError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut items = std::mem::replace(batch, Vec::with_capacity(self.batch));
        items.sort_unstable_by_key(|item| item.id);
        let sent = items.len() as u64;
        let inserted = self.target.write(items).await? as u64;
        counts.inserted += inserted;
        counts.existing += sent.saturating_sub(inserted);
        Ok(())
    }
}
