//! `/api/v1/import/items` and `/api/v1/export/items`: items in and out in bulk (admins only).
//!
//! An import's body is streamed: the handler moves its chunks into a bounded channel that the
//! import's reading thread parses from (`transfer::body`), so neither the body nor the rows are
//! ever held whole, and a slow store slows the upload rather than filling memory. Its size is
//! bounded by `--import-max-body-bytes` (not the JSON limit) and its time by
//! `--import-body-timeout`. Rows are validated as `POST /api/v1/items` validates an item, and
//! go to the store role in batches (`ImportItems`: no event per item). Rows without an owner
//! belong to the calling admin; an `owner` (email or id) or `user_id` column gives each row
//! its owner.
//!
//! The answer is an NDJSON report, one line per bad row (`{"line", "column", "reason"}`) and a
//! last line `{"summary": {"rows", "inserted", "existing", "invalid", "applied", "on_error"}}`:
//! 200 when rows were stored, 422 when `on_error=abort` (the default) found bad rows and stored
//! nothing. With `abort` the body is spooled to a temporary file while every row is checked, then
//! stored from it. The report is kept in a temporary file too, so it may list every bad row of a
//! large file.
//!
//! An export pages through the store by keyset (`ExportItems`, 1,000 items a call), encoding
//! each page off the async workers as it streams out: constant memory for any number of items.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ErrorBody;
use super::extract::Authenticated;
use super::HttpState;
use crate::actors::store::{ExportCursor, ExportItems, GetUser, GetUserByEmail, ImportItems};
use crate::bus::Bus;
use crate::domain::Item;
use crate::error::Error;
use crate::transfer::body::{ChannelReader, QUEUED_CHUNKS};
use crate::transfer::export::ItemEncoder;
use crate::transfer::{
    items, read_rows, Format, ItemImport, ItemSchema, ItemTarget, OnError, OwnerRef, Pass,
    RecordReader, Report, RowError, Summary, TransferError,
};

/// The prefix of the routes whose bodies get `--import-body-timeout`.
pub const IMPORT_PREFIX: &str = "/api/v1/import/";

/// Rows an import sends to the store role at once.
const IMPORT_BATCH: usize = 1000;

/// Items an export reads from the store role at once.
const EXPORT_PAGE: u32 = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/import/items", "POST").route(web::post().to(import_items)))
        .service(super::resource("/export/items", "GET").route(web::get().to(export_items)));
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// `abort` (default): the whole body is checked first, and one bad row means nothing is
    /// stored (422). `skip`: every valid row is stored, every bad row reported (200).
    pub on_error: Option<OnError>,
    /// The one character joining the keywords of a CSV cell (default `|`).
    #[param(min_length = 1, max_length = 1)]
    pub keyword_separator: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `ndjson` (default) or `csv`.
    pub format: Option<Format>,
    /// The one character joining the keywords of a CSV cell (default `|`).
    #[param(min_length = 1, max_length = 1)]
    pub keyword_separator: Option<String>,
}

/// A line of an import's report: a bad row, or (last) the summary.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ImportReportLine {
    BadRow(RowError),
    Summary { summary: Summary },
}

fn separator(value: Option<&str>) -> Result<char, Error> {
    let Some(value) = value else {
        return Ok('|');
    };
    let mut chars = value.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if !c.is_alphanumeric() && c != '"' => Ok(c),
        _ => Err(Error::invalid(
            "keyword_separator",
            "must be one character that is neither a letter, a digit nor a quote",
        )),
    }
}

/// The body's format by its `Content-Type`; a 415 for any other.
fn body_format(req: &HttpRequest) -> Result<Format, Error> {
    let value = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let format = match media.as_str() {
        "text/csv" => Format::Csv,
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Format::Ndjson,
        _ => {
            return Err(Error::UnsupportedMediaType(format!(
                "send the rows as text/csv or application/x-ndjson, not {:?}",
                value
            )))
        }
    };
    for parameter in parts {
        if let Some((name, charset)) = parameter.split_once('=') {
            let charset = charset.trim().trim_matches('"');
            if name.trim().eq_ignore_ascii_case("charset") && !charset.eq_ignore_ascii_case("utf-8")
            {
                return Err(Error::UnsupportedMediaType(format!(
                    "the rows must be UTF-8, not {charset}"
                )));
            }
        }
    }
    Ok(format)
}

/// The store role, through the bus, as the target of an import.
struct BusTarget(Bus);

#[async_trait]
impl ItemTarget for BusTarget {
    async fn owner(&self, owner: &OwnerRef) -> Result<Option<Uuid>, Error> {
        let found = match owner {
            OwnerRef::Id(id) => self.0.call(GetUser { id: *id }).await,
            OwnerRef::Email(email) => {
                let email = email.as_str().to_string();
                self.0.call(GetUserByEmail { email }).await
            }
        };
        match found {
            Ok(user) => Ok(Some(user.id)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write(&self, items: Vec<Item>) -> Result<usize, Error> {
        self.0.call(ImportItems(items)).await
    }
}

/// The report of bad rows, as NDJSON lines in a temporary file.
struct SpoolReport(BufWriter<std::fs::File>);

impl Report for SpoolReport {
    fn bad_row(&mut self, error: &RowError) -> Result<(), TransferError> {
        let write = |out: &mut BufWriter<std::fs::File>| -> std::io::Result<()> {
            serde_json::to_writer(&mut *out, error)?;
            out.write_all(b"\n")
        };
        write(&mut self.0).map_err(|source| TransferError::Write {
            what: "the import's report",
            source,
        })
    }
}

fn temp_file() -> Result<std::fs::File, Error> {
    tempfile::tempfile().map_err(|source| {
        Error::from(TransferError::Write {
            what: "a temporary file",
            source,
        })
    })
}

/// Moves the body's chunks to the import's reader, at most `limit` bytes. An error (the body
/// broke off, grew too large) goes to the reader too, so the import stops rather than taking a
/// cut body for a whole one; it is also this function's answer. Stops early, without error,
/// when the reader has stopped (it refused the header, or failed): the import says why.
async fn pump(
    mut body: web::Payload,
    chunks: mpsc::Sender<std::io::Result<Bytes>>,
    limit: u64,
) -> Result<(), Error> {
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let failure = match chunk {
            Ok(chunk) => {
                received += chunk.len() as u64;
                if received <= limit {
                    if chunks.send(Ok(chunk)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                Error::PayloadTooLarge(format!(
                    "an import's body is at most {limit} bytes (--import-max-body-bytes); \
                     with on_error=skip the rows before that point were stored, and sending \
                     the file again stores none of them twice"
                ))
            }
            Err(e) => Error::BadRequest(format!("the body broke off: {e}")),
        };
        let _ = chunks
            .send(Err(std::io::Error::other(failure.to_string())))
            .await;
        return Err(failure);
    }
    Ok(())
}

/// Imports items from a CSV or NDJSON body (admin only).
#[utoipa::path(post, path = "/api/v1/import/items", tag = "bulk", params(ImportQuery),
    security(("bearer" = [])),
    request_body(description = "Rows of items: CSV with a header row (columns id, user_id or \
        owner, ts, title, body, url, lat and lon or location, keywords joined by |, extra as \
        JSON), or NDJSON objects with the same fields. A row without id needs ts: its id is \
        derived from its owner, ts and content, so sending the same rows again stores nothing \
        twice. Rows without an owner belong to the caller.",
        content(("text/csv"), ("application/x-ndjson"))),
    responses(
        (status = 200, description = "Rows stored: one NDJSON line per bad row (skipped), then the summary", content_type = "application/x-ndjson", body = ImportReportLine),
        (status = 400, description = "The body broke off or holds a record longer than 4 MiB", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 408, description = "The body did not arrive within --import-body-timeout", body = ErrorBody),
        (status = 413, description = "Body larger than --import-max-body-bytes", body = ErrorBody),
        (status = 415, description = "Neither text/csv nor application/x-ndjson (UTF-8)", body = ErrorBody),
        (status = 422, description = "Bad rows with on_error=abort (NDJSON report, nothing stored), or a header refused before any row (unknown, repeated or missing columns: JSON error, field `columns`)", content_type = "application/x-ndjson", body = ImportReportLine),
    ))]
pub async fn import_items(
    state: web::Data<HttpState>,
    caller: Authenticated,
    req: HttpRequest,
    query: web::Query<ImportQuery>,
    body: web::Payload,
) -> Result<HttpResponse, Error> {
    if !caller.0.admin {
        return Err(Error::Forbidden("only admins may import".into()));
    }
    let format = body_format(&req)?;
    let on_error = query.on_error.unwrap_or_default();
    let schema = ItemSchema {
        keyword_separator: separator(query.keyword_separator.as_deref())?,
        default_owner: true,
        max_item_bytes: state.limits.max_item_bytes,
    };
    let limit = state.limits.import_max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::PayloadTooLarge(format!(
            "an import's body is at most {limit} bytes (--import-max-body-bytes)"
        )));
    }

    let mut import = ItemImport::new(
        Arc::new(BusTarget(state.bus.clone())),
        Some(caller.0.user_id),
        IMPORT_BATCH,
    );
    let queued = import.queued_chunks();
    let rows_of = |input: Box<dyn std::io::Read + Send>| {
        let schema = schema.clone();
        let check = schema.clone();
        read_rows(
            move || {
                RecordReader::open(input, format, items::COLUMNS, |present| {
                    check.check_columns(present)
                })
            },
            move |record| schema.row(record),
            queued,
        )
    };
    let mut report = SpoolReport(BufWriter::new(temp_file()?));
    let (chunks, received) = mpsc::channel(QUEUED_CHUNKS);
    let summary = match on_error {
        OnError::Skip => {
            let (reading, rows) = rows_of(Box::new(ChannelReader::new(received)));
            let apply = Pass::Apply {
                stop_at_first_error: false,
            };
            let (pumped, applied) = futures::join!(
                pump(body, chunks, limit),
                import.pass(rows, reading, apply, &mut report)
            );
            pumped?;
            Summary {
                counts: applied?,
                applied: true,
                on_error,
            }
        }
        OnError::Abort => {
            let spool = temp_file()?;
            let mut again = spool.try_clone().map_err(|source| TransferError::Write {
                what: "a temporary file",
                source,
            })?;
            let (reading, rows) = rows_of(Box::new(ChannelReader::spooled(received, spool)));
            let (pumped, checked) = futures::join!(
                pump(body, chunks, limit),
                import.pass(rows, reading, Pass::Check, &mut report)
            );
            pumped?;
            let checked = checked?;
            if checked.invalid > 0 {
                Summary {
                    counts: checked,
                    applied: false,
                    on_error,
                }
            } else {
                let rewound = move || -> std::io::Result<Box<dyn std::io::Read + Send>> {
                    again.seek(SeekFrom::Start(0))?;
                    Ok(Box::new(std::io::BufReader::new(again)))
                };
                let input = tokio::task::spawn_blocking(rewound)
                    .await
                    .map_err(TransferError::Task)?
                    .map_err(TransferError::Read)?;
                let (reading, rows) = rows_of(input);
                let apply = Pass::Apply {
                    stop_at_first_error: true,
                };
                Summary {
                    counts: import.pass(rows, reading, apply, &mut report).await?,
                    applied: true,
                    on_error,
                }
            }
        }
    };
    report_response(report, summary).await
}

/// The report: the bad rows spooled, then the summary line.
async fn report_response(report: SpoolReport, summary: Summary) -> Result<HttpResponse, Error> {
    let spooled = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let mut file = report.0.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    })
    .await
    .map_err(TransferError::Task)?
    .map_err(|source| TransferError::Write {
        what: "the import's report",
        source,
    })?;
    let mut last = serde_json::to_vec(&ImportReportLine::Summary { summary })
        .map_err(|e| Error::Internal(format!("the import's summary: {e}")))?;
    last.push(b'\n');
    let lines = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(spooled))
        .chain(futures::stream::once(async move { Ok(Bytes::from(last)) }));
    let mut response = if summary.applied {
        HttpResponse::Ok()
    } else {
        HttpResponse::UnprocessableEntity()
    };
    Ok(response
        .content_type(Format::Ndjson.content_type())
        .streaming(lines))
}

/// Where an export stream is.
struct ExportState {
    bus: Bus,
    after: Option<ExportCursor>,
    encoder: ItemEncoder,
    page: Vec<Item>,
    done: bool,
}

impl ExportState {
    async fn fetch(&mut self) -> Result<(), Error> {
        let page = self
            .bus
            .call(ExportItems {
                after: self.after,
                limit: EXPORT_PAGE,
            })
            .await?;
        self.done = page.len() < EXPORT_PAGE as usize;
        self.after = page.last().map(ExportCursor::after);
        self.page = page;
        Ok(())
    }

    /// Encodes the page fetched last, on a blocking thread; `None` once the export is over.
    async fn next(mut self) -> Result<Option<(Bytes, ExportState)>, Error> {
        if self.page.is_empty() {
            if self.done {
                return Ok(None);
            }
            self.fetch().await?;
            if self.page.is_empty() {
                return Ok(None);
            }
        }
        let page = std::mem::take(&mut self.page);
        let mut encoder = self.encoder;
        let (bytes, encoder) = tokio::task::spawn_blocking(move || (encoder.page(&page), encoder))
            .await
            .map_err(TransferError::Task)?;
        self.encoder = encoder;
        Ok(Some((Bytes::from(bytes?), self)))
    }
}

/// Every item, streamed as NDJSON or CSV (admin only).
#[utoipa::path(get, path = "/api/v1/export/items", tag = "bulk", params(ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every item, streamed (chunked): NDJSON lines of items, or CSV with a header row (id, user_id, ts, title, body, url, lat, lon, keywords, extra) that the import reads back",
            content((Item = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "Bad keyword_separator", body = ErrorBody),
    ))]
pub async fn export_items(
    state: web::Data<HttpState>,
    caller: Authenticated,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, Error> {
    if !caller.0.admin {
        return Err(Error::Forbidden("only admins may export".into()));
    }
    let format = query.format.unwrap_or(Format::Ndjson);
    let separator = separator(query.keyword_separator.as_deref())?;
    let mut first = ExportState {
        bus: state.bus.clone(),
        after: None,
        encoder: ItemEncoder::new(format, separator),
        page: Vec::new(),
        done: false,
    };
    // The first page before the answer: a store that cannot be read gets its status code.
    first.fetch().await?;
    // An empty store still gets its CSV header.
    let header = match (format, first.page.is_empty()) {
        (Format::Csv, true) => Some(Bytes::from(first.encoder.page(&[])?)),
        _ => None,
    };
    let pages = futures::stream::try_unfold(first, ExportState::next);
    let body = futures::stream::iter(header.map(Ok)).chain(pages);
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"items.{}\"", format.extension()),
        ))
        .streaming(body))
}
