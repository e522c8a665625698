//! `gorgon import items|users FILE` and `gorgon export items|users`: files in and out of a store
//! this process opens itself (the embedded store's directory, locked while the command runs,
//! or a shared store's URL), the way `gorgon seed` does.
//!
//! Output: every bad row on standard output (`bad row: line 7, column title: must not be
//! empty`) and a summary line at the end; a progress bar with rows/s on standard error when it
//! is a terminal (nothing when it is not). Logs go to standard error as everywhere. An export
//! writes its data to `--out` or to standard output, and then its summary to standard error.
//!
//! Exit status of an import: 0 when every row was valid, 2 when bad rows were skipped
//! (`--on-error skip`), 1 when nothing was stored or the import failed (with the reason).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use crate::configuration::{ExportArgs, ImportArgs, Records};
use crate::domain::{password, Item};
use crate::error::Error;
use crate::store::{Backend, BulkLoad, Credentials, ExportCursor};
use crate::transfer::export::{ItemEncoder, UserEncoder};
use crate::transfer::import::settle;
use crate::transfer::users::{self, UserRow};
use crate::transfer::{
    items, read_rows, Chunk, Counts, Format, ItemImport, ItemSchema, ItemTarget, OnError, OwnerRef,
    Pass, RecordReader, Report, RowError, TransferError,
};

/// Rows of an export read from the store at once.
const EXPORT_PAGE: u32 = 1000;

/// Opens the store named by `--store`, else the embedded store in `data`.
async fn open_store(
    store: Option<&crate::store::StoreUrl>,
    data: &Path,
) -> anyhow::Result<Arc<dyn BulkLoad>> {
    let backend = Backend::choose(store, data);
    backend.open(Default::default()).await.with_context(|| {
        format!(
            "cannot open the {} store at {}",
            backend.name(),
            backend.location()
        )
    })
}

/// `gorgon import`: `Ok(true)` when every row was valid, `Ok(false)` when bad rows were skipped.
pub async fn import(args: ImportArgs) -> anyhow::Result<bool> {
    let format = args
        .format
        .or_else(|| Format::of_path(&args.file))
        .ok_or_else(|| {
            anyhow!(
                "cannot tell the format of {} by its name: give --format csv or --format ndjson",
                args.file.display()
            )
        })?;
    std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let store = open_store(args.store.as_ref(), &args.data).await?;
    let outcome = match args.what {
        Records::Items => import_items(&store, &args, format).await,
        Records::Users => import_users(&store, &args, format).await,
    };
    store.close().await;
    let (counts, elapsed) = outcome?;
    let noun = match args.what {
        Records::Items => "items",
        Records::Users => "users",
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "imported {} rows of {noun} in {:.1} s ({:.0} rows/s): {} stored, {} already there, {} bad (skipped)",
        counts.rows,
        elapsed.as_secs_f64(),
        counts.rows as f64 / elapsed.as_secs_f64().max(1e-9),
        counts.inserted,
        counts.existing,
        counts.invalid
    )?;
    Ok(counts.invalid == 0)
}

/// The progress bar (hidden when standard error is no terminal, or with `--quiet`) and the
/// report of bad rows on standard output.
struct CliReport {
    bar: ProgressBar,
    started: Instant,
    what: &'static str,
}

impl CliReport {
    fn new(size: u64, what: &'static str, quiet: bool) -> CliReport {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(size);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        };
        bar.set_prefix(what);
        CliReport {
            bar,
            started: Instant::now(),
            what,
        }
    }
}

impl Report for CliReport {
    fn bad_row(&mut self, error: &RowError) -> Result<(), TransferError> {
        self.bar
            .suspend(|| writeln!(std::io::stdout().lock(), "bad row: {error}"))
            .map_err(|source| TransferError::Write {
                what: "the report",
                source,
            })
    }

    fn progress(&mut self, counts: &Counts, bytes: u64) {
        let rate = counts.rows as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(bytes);
        self.bar.set_message(format!(
            "{} rows {}, {rate:.0} rows/s",
            counts.rows, self.what
        ));
    }
}

impl Drop for CliReport {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The store itself as the target of an import.
struct StoreTarget(Arc<dyn BulkLoad>);

#[async_trait]
impl ItemTarget for StoreTarget {
    async fn owner(&self, owner: &OwnerRef) -> Result<Option<Uuid>, Error> {
        let found = match owner {
            OwnerRef::Id(id) => self.0.get_user(*id).await.map(|u| u.id),
            OwnerRef::Email(email) => self
                .0
                .get_credentials(email.as_str())
                .await
                .map(|c| c.user.id),
        };
        match found {
            Ok(id) => Ok(Some(id)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write(&self, items: Vec<Item>) -> Result<usize, Error> {
        self.0.import_items(items).await
    }
}

async fn import_items(
    store: &Arc<dyn BulkLoad>,
    args: &ImportArgs,
    format: Format,
) -> anyhow::Result<(Counts, Duration)> {
    let started = Instant::now();
    let target = Arc::new(StoreTarget(store.clone()));
    let default_owner = match &args.owner {
        None => None,
        Some(owner) => {
            let who = OwnerRef::parse(owner).map_err(|e| anyhow!("--owner: {e}"))?;
            let id = target
                .owner(&who)
                .await?
                .ok_or_else(|| anyhow!("--owner: no account {who}"))?;
            Some(id)
        }
    };
    let schema = ItemSchema {
        keyword_separator: args.keyword_separator,
        default_owner: default_owner.is_some(),
        max_item_bytes: args.max_item_bytes,
    };
    let mut import = ItemImport::new(target, default_owner, args.batch);
    let size = std::fs::metadata(&args.file).map_or(0, |m| m.len());
    let pass = |import: &ItemImport| {
        let file = args.file.clone();
        let schema = schema.clone();
        let check = schema.clone();
        read_rows(
            move || {
                let input = std::fs::File::open(&file).map_err(TransferError::Read)?;
                RecordReader::open(input, format, items::COLUMNS, |present| {
                    check.check_columns(present)
                })
            },
            move |record| schema.row(record),
            import.queued_chunks(),
        )
    };
    let abort = args.on_error == OnError::Abort;
    // A store that stages an import keeps every row out of sight until the end: `abort` then
    // drops the stage at the first sign of trouble, in one pass. Any other store is written
    // batch by batch, so `abort` checks the whole file first.
    let staged = store.stages_imports();
    if abort && !staged {
        let mut report = CliReport::new(size, "checking", args.quiet);
        let (reading, rows) = pass(&import);
        let checked = import.pass(rows, reading, Pass::Check, &mut report).await?;
        if checked.invalid > 0 {
            return Err(nothing_stored(checked));
        }
    }
    store.begin_import().await?;
    let mut report = CliReport::new(size, "items", args.quiet);
    let (reading, rows) = pass(&import);
    let stop_at_first_error = abort && !staged;
    let applied = import
        .pass(
            rows,
            reading,
            Pass::Apply {
                stop_at_first_error,
            },
            &mut report,
        )
        .await;
    drop(report);
    let keep = !abort || applied.as_ref().is_ok_and(|counts| counts.invalid == 0);
    let spinner = spinner(
        if keep {
            "moving the rows in and building the indexes"
        } else {
            "dropping the staged rows"
        },
        args.quiet,
    );
    let finished = store.finish_import(keep).await;
    spinner.finish_and_clear();
    let counts = applied?;
    finished?;
    if abort && counts.invalid > 0 {
        return Err(nothing_stored(counts));
    }
    Ok((counts, started.elapsed()))
}

fn nothing_stored(checked: Counts) -> anyhow::Error {
    anyhow!(
        "{} bad row(s) of {}: nothing was imported (--on-error abort; fix them, or give \
         --on-error skip to store the valid rows)",
        checked.invalid,
        checked.rows
    )
}

fn spinner(message: &'static str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}

async fn import_users(
    store: &Arc<dyn BulkLoad>,
    args: &ImportArgs,
    format: Format,
) -> anyhow::Result<(Counts, Duration)> {
    let started = Instant::now();
    let size = std::fs::metadata(&args.file).map_or(0, |m| m.len());
    let pass = || {
        let file = args.file.clone();
        read_rows(
            move || {
                let input = std::fs::File::open(&file).map_err(TransferError::Read)?;
                RecordReader::open(input, format, users::COLUMNS, users::check_columns)
            },
            users::row,
            8,
        )
    };
    if args.on_error == OnError::Abort {
        let mut report = CliReport::new(size, "checking", args.quiet);
        let (reading, mut rows) = pass();
        let mut counts = Counts::default();
        let consumed = async {
            while let Some(chunk) = rows.recv().await {
                for row in chunk.rows {
                    counts.rows += 1;
                    if let Err(bad) = row {
                        counts.invalid += 1;
                        report.bad_row(&bad)?;
                    }
                }
                report.progress(&counts, chunk.bytes);
            }
            Ok(())
        }
        .await;
        settle(rows, reading, consumed).await?;
        if counts.invalid > 0 {
            return Err(nothing_stored(counts));
        }
    }
    // Accounts without a password share one hash nobody's password matches.
    let locked = password::unusable_hash().await?;
    let mut report = CliReport::new(size, "users", args.quiet);
    let (reading, mut rows) = pass();
    let mut counts = Counts::default();
    let stop = args.on_error == OnError::Abort;
    let consumed = add_users(store, &mut rows, &locked, stop, &mut report, &mut counts).await;
    settle(rows, reading, consumed).await?;
    Ok((counts, started.elapsed()))
}

/// Stores each valid user row; an email with an account already is an existing account.
async fn add_users(
    store: &Arc<dyn BulkLoad>,
    rows: &mut tokio::sync::mpsc::Receiver<Chunk<UserRow>>,
    locked: &str,
    stop_at_first_error: bool,
    report: &mut dyn Report,
    counts: &mut Counts,
) -> Result<(), TransferError> {
    while let Some(chunk) = rows.recv().await {
        for row in chunk.rows {
            counts.rows += 1;
            let bad = match row {
                Err(bad) => bad,
                Ok(row) => match add_user(store, row, locked).await? {
                    Ok(true) => {
                        counts.inserted += 1;
                        continue;
                    }
                    Ok(false) => {
                        counts.existing += 1;
                        continue;
                    }
                    Err(bad) => bad,
                },
            };
            counts.invalid += 1;
            report.bad_row(&bad)?;
            if stop_at_first_error {
                return Err(TransferError::Stopped {
                    line: bad.line,
                    reason: bad.to_string(),
                });
            }
        }
        report.progress(counts, chunk.bytes);
    }
    Ok(())
}

/// Stores one account: `Ok(true)` when new, `Ok(false)` when its email has an account already
/// (left as it is), the row's error when the store refuses it (an address that looks like
/// another account's, an id taken by another address).
async fn add_user(
    store: &Arc<dyn BulkLoad>,
    row: UserRow,
    locked: &str,
) -> Result<Result<bool, RowError>, TransferError> {
    match store.get_credentials(row.email.as_str()).await {
        Ok(_) => return Ok(Ok(false)),
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let line = row.line;
    match store.insert_user(row.into_new_user(locked)).await {
        Ok(_) => Ok(Ok(true)),
        Err(Error::Conflict(why)) => Ok(Err(RowError::new(line, Some("email"), why))),
        Err(Error::Invalid { field, message }) => {
            Ok(Err(RowError::new(line, Some(&field), message)))
        }
        Err(e) => Err(e.into()),
    }
}

/// `gorgon export`.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let store = open_store(args.store.as_ref(), &args.data).await?;
    let started = Instant::now();
    let outcome = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
            let n = export_to(&store, &args, &mut out).await;
            n.and_then(|n| {
                out.flush()?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                Ok(n)
            })
        }
        None => {
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
            export_to(&store, &args, &mut out)
                .await
                .and_then(|n| Ok(out.flush().map(|_| n)?))
        }
    };
    store.close().await;
    let exported = outcome?;
    let elapsed = started.elapsed().as_secs_f64();
    let summary = format!(
        "exported {exported} {} in {elapsed:.1} s ({:.0}/s)",
        match args.what {
            Records::Items => "items",
            Records::Users => "users",
        },
        exported as f64 / elapsed.max(1e-9)
    );
    // The data may be on standard output: the summary goes beside it, not into it.
    match args.out {
        Some(_) => println!("{summary}"),
        None => eprintln!("{summary}"),
    }
    Ok(())
}

/// Pages through the store by keyset, writing each page as it comes; how many were written.
async fn export_to(
    store: &Arc<dyn BulkLoad>,
    args: &ExportArgs,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let bar = spinner("exporting", args.quiet);
    let written = match args.what {
        Records::Items => {
            let mut encoder = ItemEncoder::new(args.format, args.keyword_separator);
            let pages = |after| store.export_items(after, EXPORT_PAGE);
            let encode = |page: &[Item]| encoder.page(page);
            export_pages(pages, encode, ExportCursor::after, out, &bar).await?
        }
        Records::Users => {
            let mut encoder = UserEncoder::new(args.format, args.with_password_hashes);
            let pages = |after| store.export_users(after, EXPORT_PAGE);
            let encode = |page: &[Credentials]| encoder.page(page);
            export_pages(pages, encode, |c: &Credentials| c.user.id, out, &bar).await?
        }
    };
    bar.finish_and_clear();
    Ok(written)
}

/// Writes `page(None)`, then each page after the last row of the one before, until a page is
/// empty (the first is written even then: a CSV header).
async fn export_pages<T, C, P, F>(
    page: P,
    mut encode: impl FnMut(&[T]) -> Result<Vec<u8>, TransferError>,
    cursor: impl Fn(&T) -> C,
    out: &mut impl Write,
    bar: &ProgressBar,
) -> anyhow::Result<u64>
where
    P: Fn(Option<C>) -> F,
    F: std::future::Future<Output = Result<Vec<T>, Error>>,
{
    let mut written = 0u64;
    let mut after = None;
    loop {
        let rows = page(after).await?;
        if rows.is_empty() && written > 0 {
            break;
        }
        out.write_all(&encode(&rows)?)?;
        written += rows.len() as u64;
        bar.set_message(format!("{written} rows"));
        match rows.last() {
            Some(last) => after = Some(cursor(last)),
            None => break,
        }
    }
    Ok(written)
}
