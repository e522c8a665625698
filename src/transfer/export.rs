//! Exports: pages of items and users encoded as CSV (a header row first) or NDJSON, one page at
//! a time, so an export holds a page in memory whatever the store's size. What an export
//! writes, an import reads back as the same rows (tested by `tests/import_export.rs`).
//!
//! A CSV keyword cell joins the keywords with the separator; where a keyword holds the
//! separator (or the first begins with `[`), the cell is a JSON array instead, which the
//! import reads as such. Users are exported without their password hashes unless asked
//! (`--with-password-hashes`): a hash is an offline guessing target.

use serde::Serialize;

use super::{items, users, Format, TransferError};
use crate::domain::{Item, User};
use crate::store::Credentials;

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::with_capacity(256 * 1024))
}

fn encoded(writer: csv::Writer<Vec<u8>>) -> Result<Vec<u8>, TransferError> {
    writer.into_inner().map_err(|e| TransferError::Write {
        what: "the CSV page",
        source: e.into_error(),
    })
}

fn csv_error(e: csv::Error) -> TransferError {
    TransferError::Write {
        what: "a CSV row",
        source: e.into(),
    }
}

fn json_line<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), TransferError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| TransferError::Write {
        what: "a JSON line",
        source: e.into(),
    })?;
    out.push(b'\n');
    Ok(())
}

/// Encodes items page by page.
pub struct ItemEncoder {
    format: Format,
    separator: char,
    started: bool,
}

impl ItemEncoder {
    pub fn new(format: Format, keyword_separator: char) -> Self {
        ItemEncoder {
            format,
            separator: keyword_separator,
            started: false,
        }
    }

    /// A page (after the header, the first time, for CSV).
    pub fn page(&mut self, page: &[Item]) -> Result<Vec<u8>, TransferError> {
        let header = !std::mem::replace(&mut self.started, true);
        match self.format {
            Format::Ndjson => {
                let mut out = Vec::with_capacity(page.len() * 400);
                for item in page {
                    json_line(&mut out, item)?;
                }
                Ok(out)
            }
            Format::Csv => {
                let mut writer = csv_writer();
                if header {
                    writer
                        .write_record(items::EXPORT_COLUMNS)
                        .map_err(csv_error)?;
                }
                for item in page {
                    writer
                        .write_record(self.item_record(item))
                        .map_err(csv_error)?;
                }
                encoded(writer)
            }
        }
    }

    /// The cells of an item, in the order of [`items::EXPORT_COLUMNS`].
    fn item_record(&self, item: &Item) -> [String; 10] {
        let number = |value: Option<f64>| value.map_or(String::new(), |v| v.to_string());
        [
            item.id.to_string(),
            item.user_id.to_string(),
            time(item.ts),
            item.title.clone(),
            item.body.clone(),
            item.url.clone().unwrap_or_default(),
            number(item.location.map(|l| l.lat)),
            number(item.location.map(|l| l.lon)),
            self.keywords(&item.keywords),
            extra_cell(&item.extra),
        ]
    }

    fn keywords(&self, keywords: &[String]) -> String {
        let plain = keywords.iter().all(|k| !k.contains(self.separator))
            && !keywords.first().is_some_and(|k| k.starts_with('['));
        if plain {
            keywords.join(&self.separator.to_string())
        } else {
            serde_json::to_string(keywords).unwrap_or_default()
        }
    }
}

fn time(ts: chrono::DateTime<chrono::Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn extra_cell(extra: &crate::domain::Extra) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        extra.to_json()
    }
}

/// A user as an export line, with the hash only when asked for.
#[derive(Serialize)]
struct UserLine<'a> {
    #[serde(flatten)]
    user: &'a User,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_hash: Option<&'a str>,
}

/// Encodes users page by page.
pub struct UserEncoder {
    format: Format,
    with_hashes: bool,
    started: bool,
}

impl UserEncoder {
    pub fn new(format: Format, with_hashes: bool) -> Self {
        UserEncoder {
            format,
            with_hashes,
            started: false,
        }
    }

    pub fn page(&mut self, page: &[Credentials]) -> Result<Vec<u8>, TransferError> {
        let header = !std::mem::replace(&mut self.started, true);
        let hash = |c: &'_ Credentials| -> Option<String> {
            self.with_hashes.then(|| c.password_hash.clone())
        };
        match self.format {
            Format::Ndjson => {
                let mut out = Vec::with_capacity(page.len() * 300);
                for c in page {
                    let hash = hash(c);
                    json_line(
                        &mut out,
                        &UserLine {
                            user: &c.user,
                            password_hash: hash.as_deref(),
                        },
                    )?;
                }
                Ok(out)
            }
            Format::Csv => {
                let mut writer = csv_writer();
                let columns =
                    &users::COLUMNS[..users::COLUMNS.len() - usize::from(!self.with_hashes)];
                if header {
                    writer.write_record(columns).map_err(csv_error)?;
                }
                for c in page {
                    let u = &c.user;
                    let mut record = vec![
                        u.id.to_string(),
                        u.name.clone(),
                        u.email.clone(),
                        u.group.to_string(),
                        u.admin.to_string(),
                        time(u.created_at),
                        extra_cell(&u.extra),
                    ];
                    record.extend(hash(c));
                    writer.write_record(&record).map_err(csv_error)?;
                }
                encoded(writer)
            }
        }
    }
}
