//! One reader for both formats: a CSV file (header row, then rows) or NDJSON (one JSON object a
//! line) becomes a sequence of [`Record`]s, each a cell per known column, so an item or a user is
//! built from either by the same code.
//!
//! CSV goes through the `csv` crate over a blocking `Read` (a file, or a request body fed by the
//! async side: see `body.rs`), on a blocking thread: parsing and validating a million rows is
//! seconds of CPU that must not run on the async workers. Its header is checked before the first
//! row: an unknown or repeated column refuses the file up front. NDJSON has no header: an
//! unknown field makes that line a bad row.
//!
//! A record is bounded ([`MAX_RECORD_BYTES`]): an unclosed quote would otherwise make the CSV
//! parser buffer the rest of the file as one field, and a line without an end the NDJSON
//! reader, so memory stays flat whatever the input.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Format, RowError, TransferError};

/// Longest record (a CSV row, an NDJSON line): far above the largest valid item (128 KiB of
/// content, a few times that escaped).
pub const MAX_RECORD_BYTES: u64 = 4 * 1024 * 1024;

/// One cell: text from a CSV field, or a JSON value from an NDJSON line.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Text(&'a str),
    Json(&'a Value),
}

impl<'a> Cell<'a> {
    /// A string; an empty CSV field or JSON `null` is `""`.
    pub fn string(&self) -> Result<&'a str, String> {
        match self {
            Cell::Text(text) => Ok(text),
            Cell::Json(Value::String(text)) => Ok(text),
            Cell::Json(Value::Null) => Ok(""),
            Cell::Json(_) => Err("must be a string".into()),
        }
    }

    /// A string that may be absent: an empty (or blank) field or `null` is `None`.
    pub fn optional(&self) -> Result<Option<&'a str>, String> {
        self.string()
            .map(|text| Some(text).filter(|t| !t.trim().is_empty()))
    }

    /// A number, or `None` for an empty field or `null`.
    pub fn number(&self) -> Result<Option<f64>, String> {
        match self {
            Cell::Json(Value::Number(n)) => n.as_f64().map(Some).ok_or("must be a number".into()),
            Cell::Json(Value::Null) => Ok(None),
            Cell::Json(_) => Err("must be a number".into()),
            Cell::Text(text) if text.trim().is_empty() => Ok(None),
            Cell::Text(text) => text
                .trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| format!("{text:?} is not a number")),
        }
    }

    /// A whole number, or `None` for an empty field or `null`.
    pub fn integer(&self) -> Result<Option<i64>, String> {
        match self.number()? {
            None => Ok(None),
            Some(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(Some(n as i64)),
            Some(n) => Err(format!("{n} is not a whole number")),
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`), or `None` for an empty field or `null`.
    pub fn boolean(&self) -> Result<Option<bool>, String> {
        match self {
            Cell::Json(Value::Bool(b)) => Ok(Some(*b)),
            Cell::Json(Value::Null) => Ok(None),
            Cell::Json(_) => Err("must be true or false".into()),
            Cell::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "1" | "yes" => Ok(Some(true)),
                "false" | "0" | "no" => Ok(Some(false)),
                _ => Err(format!("{text:?} is not true or false")),
            },
        }
    }

    /// A JSON object (a CSV field holds its text), or `None` for an empty field or `null`.
    pub fn object(&self) -> Result<Option<Map<String, Value>>, String> {
        match self {
            Cell::Json(Value::Object(map)) => Ok(Some(map.clone())),
            Cell::Json(Value::Null) => Ok(None),
            Cell::Json(_) => Err("must be a JSON object".into()),
            Cell::Text(text) if text.trim().is_empty() => Ok(None),
            Cell::Text(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Ok(Some(map)),
                Ok(_) => Err("must be a JSON object".into()),
                Err(e) => Err(format!("must be a JSON object ({e})")),
            },
        }
    }

    /// A list of strings: a JSON array, or a CSV field of values joined by `separator` (a field
    /// beginning with `[` is read as a JSON array, which holds values containing the
    /// separator); empty or `null` is no value.
    pub fn strings(&self, separator: char) -> Result<Vec<String>, String> {
        let array = |values: &Vec<Value>| {
            values
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| "must be a list of strings".to_string())
        };
        match self {
            Cell::Json(Value::Array(values)) => array(values),
            Cell::Json(Value::Null) => Ok(Vec::new()),
            Cell::Json(_) => Err("must be a list of strings".into()),
            Cell::Text(text) if text.trim().is_empty() => Ok(Vec::new()),
            Cell::Text(text) if text.trim_start().starts_with('[') => {
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Array(values)) => array(&values),
                    _ => Err("a field beginning with [ must be a JSON array of strings".into()),
                }
            }
            Cell::Text(text) => Ok(text.split(separator).map(str::to_string).collect()),
        }
    }
}

/// A row (CSV) or line (NDJSON): its line number and a cell for each column it has.
pub struct Record<'a> {
    pub line: u64,
    cells: Vec<Option<Cell<'a>>>,
}

impl<'a> Record<'a> {
    /// The cell of column `index` (in the list the reader was opened with), if the row has it.
    pub fn get(&self, index: usize) -> Option<Cell<'a>> {
        self.cells.get(index).copied().flatten()
    }
}

/// The input, failing once a record runs past [`MAX_RECORD_BYTES`] from the end of the last
/// one (the reader moves the bound forward after each record).
struct Bounded<R> {
    inner: R,
    read: u64,
    limit: Arc<AtomicU64>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read > self.limit.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a record runs past {} MiB (an unclosed quote, or a line without its end?)",
                    MAX_RECORD_BYTES / (1024 * 1024)
                ),
            ));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

enum Kind<R: Read> {
    Csv {
        reader: Box<csv::Reader<Bounded<R>>>,
        record: csv::ByteRecord,
        /// The schema column of each of the file's columns.
        slots: Vec<usize>,
    },
    Ndjson {
        reader: BufReader<Bounded<R>>,
        buffer: Vec<u8>,
        line: u64,
        bytes: u64,
    },
}

/// Reads records of `columns` from a CSV or NDJSON input.
pub struct RecordReader<R: Read> {
    kind: Kind<R>,
    columns: &'static [&'static str],
    limit: Arc<AtomicU64>,
}

impl<R: Read> RecordReader<R> {
    /// Opens `input`. For CSV, reads the header: a column not in `columns`, or one named twice,
    /// refuses the file; then `check` says whether the columns present (a flag per entry of
    /// `columns`) make a usable file.
    pub fn open(
        input: R,
        format: Format,
        columns: &'static [&'static str],
        check: impl FnOnce(&[bool]) -> Result<(), String>,
    ) -> Result<RecordReader<R>, TransferError> {
        let limit = Arc::new(AtomicU64::new(MAX_RECORD_BYTES));
        let input = Bounded {
            inner: input,
            read: 0,
            limit: limit.clone(),
        };
        let kind = match format {
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(input);
                let mut header = csv::ByteRecord::new();
                reader
                    .read_byte_record(&mut header)
                    .map_err(|e| TransferError::Read(e.into()))?;
                let slots = header_slots(&header, columns)?;
                let mut present = vec![false; columns.len()];
                slots.iter().for_each(|&slot| present[slot] = true);
                check(&present).map_err(TransferError::Columns)?;
                Kind::Csv {
                    reader: Box::new(reader),
                    record: csv::ByteRecord::new(),
                    slots,
                }
            }
            Format::Ndjson => Kind::Ndjson {
                reader: BufReader::with_capacity(64 * 1024, input),
                buffer: Vec::new(),
                line: 0,
                bytes: 0,
            },
        };
        let reader = RecordReader {
            kind,
            columns,
            limit,
        };
        reader.advance_limit();
        Ok(reader)
    }

    /// Bytes of the input consumed so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        match &self.kind {
            Kind::Csv { reader, .. } => reader.position().byte(),
            Kind::Ndjson { bytes, .. } => *bytes,
        }
    }

    /// The next record turned into a row by `build`: `Ok(None)` at the end of the input,
    /// `Ok(Some(Err(_)))` for a bad row, `Err` when the input itself fails.
    pub fn next<T>(
        &mut self,
        build: impl FnOnce(&Record<'_>) -> Result<T, RowError>,
    ) -> Result<Option<Result<T, RowError>>, TransferError> {
        let columns = self.columns;
        let row = match &mut self.kind {
            Kind::Csv {
                reader,
                record,
                slots,
            } => {
                if !reader
                    .read_byte_record(record)
                    .map_err(|e| TransferError::Read(e.into()))?
                {
                    return Ok(None);
                }
                let line = record.position().map_or(0, |p| p.line());
                Some(csv_row(record, slots, columns, line).and_then(|r| build(&r)))
            }
            Kind::Ndjson {
                reader,
                buffer,
                line,
                bytes,
            } => loop {
                buffer.clear();
                let n = reader
                    .read_until(b'\n', buffer)
                    .map_err(TransferError::Read)?;
                if n == 0 {
                    break None;
                }
                *line += 1;
                *bytes += n as u64;
                if buffer.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let object = match serde_json::from_slice::<Value>(buffer) {
                    Ok(Value::Object(object)) => object,
                    Ok(_) => break Some(Err(RowError::new(*line, None, "not a JSON object"))),
                    Err(e) => {
                        break Some(Err(RowError::new(*line, None, format!("not JSON: {e}"))))
                    }
                };
                break Some(json_row(&object, columns, *line).and_then(|r| build(&r)));
            },
        };
        self.advance_limit();
        Ok(row)
    }

    fn advance_limit(&self) {
        // The parser reads ahead by its buffer: a record may start that far past the position.
        let read_ahead = 128 * 1024;
        self.limit.store(
            self.bytes_read() + read_ahead + MAX_RECORD_BYTES,
            Ordering::Relaxed,
        );
    }
}

/// Maps a CSV header to schema columns, refusing unknown and repeated names.
fn header_slots(
    header: &csv::ByteRecord,
    columns: &'static [&'static str],
) -> Result<Vec<usize>, TransferError> {
    let mut slots = Vec::with_capacity(header.len());
    let mut unknown = Vec::new();
    let mut repeated = Vec::new();
    for field in header.iter() {
        let name = String::from_utf8_lossy(field);
        let name = name.trim().trim_start_matches('\u{feff}');
        match columns.iter().position(|c| *c == name) {
            Some(slot) if slots.contains(&slot) => repeated.push(name.to_string()),
            Some(slot) => slots.push(slot),
            None => unknown.push(format!("{name:?}")),
        }
    }
    if !unknown.is_empty() {
        return Err(TransferError::Columns(format!(
            "unknown column(s) {} in the header; the columns are {}",
            unknown.join(", "),
            columns.join(", ")
        )));
    }
    if !repeated.is_empty() {
        return Err(TransferError::Columns(format!(
            "column(s) named twice in the header: {}",
            repeated.join(", ")
        )));
    }
    Ok(slots)
}

fn csv_row<'r>(
    record: &'r csv::ByteRecord,
    slots: &[usize],
    columns: &'static [&'static str],
    line: u64,
) -> Result<Record<'r>, RowError> {
    if record.len() != slots.len() {
        return Err(RowError::new(
            line,
            None,
            format!(
                "{} field(s) where the header has {}",
                record.len(),
                slots.len()
            ),
        ));
    }
    let mut cells = vec![None; columns.len()];
    for (field, &slot) in record.iter().zip(slots) {
        let text = std::str::from_utf8(field)
            .map_err(|_| RowError::new(line, Some(columns[slot]), "is not valid UTF-8"))?;
        cells[slot] = Some(Cell::Text(text));
    }
    Ok(Record { line, cells })
}

fn json_row<'r>(
    object: &'r Map<String, Value>,
    columns: &'static [&'static str],
    line: u64,
) -> Result<Record<'r>, RowError> {
    let mut cells = vec![None; columns.len()];
    for (key, value) in object {
        let slot = columns.iter().position(|c| c == key).ok_or_else(|| {
            RowError::new(
                line,
                Some(key),
                format!("unknown field; the fields are {}", columns.join(", ")),
            )
        })?;
        cells[slot] = Some(Cell::Json(value));
    }
    Ok(Record { line, cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[&str] = &["a", "b"];

    fn texts(input: &str, format: Format) -> Vec<Result<Vec<String>, RowError>> {
        let mut reader = RecordReader::open(input.as_bytes(), format, COLUMNS, |_| Ok(())).unwrap();
        let mut out = Vec::new();
        while let Some(row) = reader
            .next(|r| {
                Ok((0..COLUMNS.len())
                    .map(|i| {
                        r.get(i)
                            .map_or("-".into(), |c| c.string().unwrap().to_string())
                    })
                    .collect())
            })
            .unwrap()
        {
            out.push(row);
        }
        out
    }

    #[test]
    fn csv_rows_know_their_lines_and_columns() {
        let rows = texts("b,a\n1,2\n\"multi\nline\",3\n4\n", Format::Csv);
        assert_eq!(rows[0], Ok(vec!["2".into(), "1".into()]));
        assert_eq!(rows[1], Ok(vec!["3".into(), "multi\nline".into()]));
        assert_eq!(rows[2].as_ref().unwrap_err().line, 5);
    }

    #[test]
    fn unknown_and_repeated_columns_are_refused_up_front() {
        for header in ["a,c\n", "a,a\n"] {
            let refused = RecordReader::open(header.as_bytes(), Format::Csv, COLUMNS, |_| Ok(()));
            assert!(
                matches!(refused, Err(TransferError::Columns(_))),
                "{header}"
            );
        }
    }

    #[test]
    fn ndjson_lines_skip_blanks_and_name_unknown_fields() {
        let rows = texts("{\"a\":\"x\"}\n\n{\"c\":1}\n[1]\n", Format::Ndjson);
        assert_eq!(rows[0], Ok(vec!["x".into(), "-".into()]));
        assert_eq!(rows[1].as_ref().unwrap_err().line, 3);
        assert_eq!(rows[1].as_ref().unwrap_err().column.as_deref(), Some("c"));
        assert_eq!(rows[2].as_ref().unwrap_err().line, 4);
    }

    #[test]
    fn an_endless_record_fails_instead_of_filling_memory() {
        let input = format!("a,b\n\"{}", "x".repeat(6 * 1024 * 1024));
        let mut reader =
            RecordReader::open(input.as_bytes(), Format::Csv, COLUMNS, |_| Ok(())).unwrap();
        assert!(matches!(
            reader.next(|_| Ok(())),
            Err(TransferError::Read(_))
        ));
    }
}
