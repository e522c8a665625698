//! Bulk data in and out: files of items and users as CSV or NDJSON, read and written as streams.
//!
//! Used by the commands `gorgon import|export` (`src/import_export.rs`) and by the routes
//! `POST /api/v1/import/items` and `GET /api/v1/export/items` (`src/http/transfer.rs`). Nothing
//! here knows where rows go or come from: an import hands validated rows to an [`ItemTarget`],
//! an export encodes the pages it is given.
//!
//! | file | what |
//! | --- | --- |
//! | `records.rs` | one reader for both formats: a CSV header checked up front, each row or line a [`Record`] of cells by column, records bounded in size |
//! | `items.rs` | an item row: its columns, validated by the domain's own `NewItem::parse` (as `POST /api/v1/items`), its id (given, or derived from the row) |
//! | `users.rs` | a user row: validated by the domain's parse functions, a carried-over argon2id hash checked |
//! | `import.rs` | the pipeline: rows read on a blocking thread, owners resolved, batches written; a check pass before the applying one for `--on-error abort` |
//! | `export.rs` | pages of items and users encoded as CSV or NDJSON |
//! | `body.rs` | a request body as a blocking `Read` fed by the async side, optionally spooled to a file |

pub mod body;
pub mod export;
pub mod import;
pub mod items;
pub mod records;
pub mod users;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;

pub use import::{read_rows, Chunk, ItemImport, ItemTarget, Pass, Report};
pub use items::{ItemRow, ItemSchema, OwnerRef};
pub use records::{Record, RecordReader};

/// The two formats of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row naming the columns.
    Csv,
    /// One JSON object per line, with the same names as fields.
    Ndjson,
}

impl Format {
    /// By a file name's extension: `.csv`, else `.ndjson`, `.jsonl` or `.json`.
    pub fn of_path(path: &std::path::Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

/// What an import does with a bad row.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Every valid row is stored and every bad row reported.
    Skip,
    /// One bad row and nothing of the file is stored: the whole file is checked first.
    #[default]
    Abort,
}

/// A row that could not be imported: where, which column, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RowError {
    /// The line the row starts on (1 is a CSV file's header).
    pub line: u64,
    /// The column (CSV) or field (NDJSON) at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub reason: String,
}

impl RowError {
    pub fn new(line: u64, column: Option<&str>, reason: impl Into<String>) -> RowError {
        RowError {
            line,
            column: column.map(str::to_string),
            reason: reason.into(),
        }
    }

    /// A domain error as a row error: an invalid field names its column (`rename` maps a
    /// domain field to the column it came from, such as `location.lat` to `lat`).
    pub fn from_domain(
        line: u64,
        error: Error,
        rename: impl Fn(&str) -> Option<&'static str>,
    ) -> RowError {
        match error {
            Error::Invalid { field, message } => {
                let column = rename(&field).map_or(field, str::to_string);
                RowError {
                    line,
                    column: Some(column),
                    reason: message,
                }
            }
            other => RowError::new(line, None, other.to_string()),
        }
    }
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(column) => write!(f, "line {}, column {column}: {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    /// Rows read (lines of an NDJSON file that are not blank; a CSV file's rows after the header).
    pub rows: u64,
    /// Rows stored now.
    pub inserted: u64,
    /// Valid rows whose id was stored already (an earlier run of the same file, or the same row
    /// twice): nothing written.
    pub existing: u64,
    /// Bad rows.
    pub invalid: u64,
}

/// The last line of an import's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    #[serde(flatten)]
    pub counts: Counts,
    /// Whether rows were stored: false when `abort` found bad rows (then nothing was).
    pub applied: bool,
    pub on_error: OnError,
}

/// Why an import or an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The file's columns are refused before any row is read (unknown, repeated or missing).
    #[error("{0}")]
    Columns(String),
    /// The input broke off, or a record is too long to be one.
    #[error("cannot read the input: {0}")]
    Read(#[source] std::io::Error),
    /// Writing the output (a file, stdout, a report) failed.
    #[error("cannot write {what}")]
    Write {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `--on-error abort` met a bad row while applying (the check pass had passed: the data
    /// changed meanwhile, such as an owner deleted): rows before it stay stored.
    #[error("stopped at line {line} ({reason}); rows before it were stored, none after")]
    Stopped { line: u64, reason: String },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] Error),
    /// The thread reading rows panicked or was cancelled.
    #[error("the row reader did not finish")]
    Task(#[source] tokio::task::JoinError),
}

impl From<TransferError> for Error {
    fn from(e: TransferError) -> Error {
        match e {
            TransferError::Columns(message) => Error::invalid("columns", message),
            TransferError::Read(source) => {
                Error::BadRequest(format!("cannot read the body: {source}"))
            }
            TransferError::Stopped { .. } => Error::Conflict(e.to_string()),
            TransferError::Store(e) => e,
            TransferError::Write { .. } | TransferError::Task(_) => Error::internal(&e),
        }
    }
}
