//! An item row: its columns, its validation, its id.
//!
//! Columns (CSV header names, NDJSON field names): `id`, `user_id` or `owner`, `ts`, `title`,
//! `body`, `url`, `location` (a JSON object `{"lat", "lon"}`) or `lat` and `lon`, `keywords`
//! (values joined by the separator, `|` by default, or a JSON array), `extra` (a JSON object).
//! Every field is validated by [`NewItem::parse`], the function `POST /api/v1/items` uses, and
//! the item's size by [`check_item_size`] (`--max-item-bytes`), so a row is stored exactly when
//! the same item sent to the API would be.
//!
//! Ids: an `id` cell must be a time-ordered UUID (version 7 as Gorgon makes, or 8 as derived
//! here), since "newest first" follows the id. Without one, the id is derived from the row:
//! a UUIDv8 laid out like a v7, its first 48 bits the item's `ts` in milliseconds, the other 74
//! from SHA-256 over a fixed namespace, the owner's id, `ts` and the validated content (so
//! spelling that validation normalises away, such as surrounding blanks or a keyword's case,
//! gives the same id). Running the same file again therefore meets the same ids and stores
//! nothing twice; the same row twice in one file is one item; an edited row is a new item (an
//! import never updates or deletes); and ids still sort by `ts`. A row without an id needs a
//! `ts`: the time cannot come from the clock, or a second run would derive other ids.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::records::{Cell, Record};
use super::RowError;
use crate::domain::item::{check_item_size, ItemDraft};
use crate::domain::{Email, Location, NewItem};

/// The columns of an item file, in the order an export writes them (`owner` and `location`
/// are alternatives to `user_id` and `lat`/`lon` that an export does not use).
pub const COLUMNS: &[&str] = &[
    "id", "user_id", "ts", "title", "body", "url", "lat", "lon", "keywords", "extra", "owner",
    "location",
];
const ID: usize = 0;
const USER_ID: usize = 1;
const TS: usize = 2;
const TITLE: usize = 3;
const BODY: usize = 4;
const URL: usize = 5;
const LAT: usize = 6;
const LON: usize = 7;
const KEYWORDS: usize = 8;
const EXTRA: usize = 9;
const OWNER: usize = 10;
const LOCATION: usize = 11;

/// The columns an export writes, in order.
pub const EXPORT_COLUMNS: &[&str] = &[
    "id", "user_id", "ts", "title", "body", "url", "lat", "lon", "keywords", "extra",
];

/// Namespace of derived item ids (fixed forever: changing it would make every file's rows new).
const NAMESPACE: Uuid = uuid::uuid!("6f1c2a9e-5b7d-4c3e-9a41-0d8e2f6b7c15");

/// Whom a row's item belongs to: an account's id, or its email.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnerRef {
    Id(Uuid),
    Email(Email),
}

impl OwnerRef {
    /// A user id, or else an email address (normalised as at sign-in).
    pub fn parse(value: &str) -> Result<OwnerRef, String> {
        let value = value.trim();
        if let Ok(id) = Uuid::parse_str(value) {
            return Ok(OwnerRef::Id(id));
        }
        Email::parse(value)
            .map(OwnerRef::Email)
            .map_err(|_| format!("{value:?} is neither a user id nor an email address"))
    }
}

impl std::fmt::Display for OwnerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnerRef::Id(id) => write!(f, "{id}"),
            OwnerRef::Email(email) => f.write_str(email.as_str()),
        }
    }
}

/// A valid row, before its owner is looked up.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub line: u64,
    pub id: Option<Uuid>,
    /// The row's owner, with the column it came from; `None`: the import's default owner.
    pub owner: Option<(OwnerRef, &'static str)>,
    pub ts: DateTime<Utc>,
    pub item: NewItem,
}

impl ItemRow {
    /// The row's id: its `id` cell, or the one derived from it for `owner`.
    pub fn id_for(&self, owner: Uuid) -> Uuid {
        self.id
            .unwrap_or_else(|| derived_id(owner, self.ts, &self.item))
    }
}

/// How item rows are read.
#[derive(Debug, Clone)]
pub struct ItemSchema {
    /// What joins the keywords of a CSV cell.
    pub keyword_separator: char,
    /// Whether rows without an owner cell have an owner (`--owner`, or the API's caller).
    pub default_owner: bool,
    /// `--max-item-bytes`.
    pub max_item_bytes: usize,
}

impl ItemSchema {
    /// Refuses a CSV header that could give no valid row, before any row is read.
    pub fn check_columns(&self, present: &[bool]) -> Result<(), String> {
        let has = |c: usize| present.get(c).copied().unwrap_or(false);
        if !has(TITLE) {
            return Err("the header has no title column, which every item needs".into());
        }
        if has(OWNER) && has(USER_ID) {
            return Err("give the owner as user_id or as owner, not both".into());
        }
        if !has(OWNER) && !has(USER_ID) && !self.default_owner {
            return Err(
                "no owner: give a user_id or owner column, or the import's owner (--owner)".into(),
            );
        }
        if has(LOCATION) && (has(LAT) || has(LON)) {
            return Err("give the location as location or as lat and lon, not both".into());
        }
        if has(LAT) != has(LON) {
            return Err("lat and lon go together: give both columns or neither".into());
        }
        if !has(ID) && !has(TS) {
            return Err(
                "the header has neither id nor ts: a row's id is derived from its ts and content \
                 (so that importing the file again stores nothing twice), so one is needed"
                    .into(),
            );
        }
        Ok(())
    }

    /// A record as a valid row, or why not (line, column, reason).
    pub fn row(&self, record: &Record<'_>) -> Result<ItemRow, RowError> {
        let line = record.line;
        let at = |column: usize| {
            move |reason: String| RowError::new(line, Some(COLUMNS[column]), reason)
        };
        let text = |column: usize| -> Result<Option<&str>, RowError> {
            record
                .get(column)
                .map(|c| c.optional())
                .transpose()
                .map(Option::flatten)
                .map_err(at(column))
        };

        let id = text(ID)?.map(parse_id).transpose().map_err(at(ID))?;
        let owner = match (record.get(OWNER), record.get(USER_ID)) {
            (Some(_), Some(_)) => {
                return Err(RowError::new(
                    line,
                    Some("owner"),
                    "give user_id or owner, not both",
                ))
            }
            (Some(cell), None) => owner_cell(cell, OWNER).map_err(at(OWNER))?,
            (None, Some(cell)) => owner_cell(cell, USER_ID).map_err(at(USER_ID))?,
            (None, None) => None,
        };
        if owner.is_none() && !self.default_owner {
            return Err(RowError::new(
                line,
                Some("owner"),
                "missing: give user_id or owner, or the import's owner (--owner)",
            ));
        }
        let ts = match text(TS)?.map(parse_ts).transpose().map_err(at(TS))? {
            Some(ts) => ts,
            None => match id {
                Some(id) => id_time(id),
                None => {
                    return Err(RowError::new(
                        line,
                        Some("ts"),
                        "missing: a row without an id needs its ts",
                    ))
                }
            },
        };

        let location = match (record.get(LOCATION), record.get(LAT), record.get(LON)) {
            (Some(cell), _, _) => location_cell(cell).map_err(at(LOCATION))?,
            (None, lat, lon) => {
                let lat = lat
                    .map(|c| c.number())
                    .transpose()
                    .map_err(at(LAT))?
                    .flatten();
                let lon = lon
                    .map(|c| c.number())
                    .transpose()
                    .map_err(at(LON))?
                    .flatten();
                match (lat, lon) {
                    (Some(lat), Some(lon)) => Some(Location { lat, lon }),
                    (None, None) => None,
                    (Some(_), None) => return Err(at(LON)("missing while lat is given".into())),
                    (None, Some(_)) => return Err(at(LAT)("missing while lon is given".into())),
                }
            }
        };
        let draft = ItemDraft {
            title: match record.get(TITLE) {
                Some(cell) => cell.string().map_err(at(TITLE))?.to_string(),
                None => return Err(at(TITLE)("missing".into())),
            },
            body: match record.get(BODY) {
                Some(cell) => cell.string().map_err(at(BODY))?.to_string(),
                None => String::new(),
            },
            url: text(URL)?.map(str::to_string),
            location,
            keywords: match record.get(KEYWORDS) {
                Some(cell) => cell.strings(self.keyword_separator).map_err(at(KEYWORDS))?,
                None => Vec::new(),
            },
            extra: record
                .get(EXTRA)
                .map(|c| c.object())
                .transpose()
                .map_err(at(EXTRA))?
                .flatten(),
        };
        // The CSV columns of a location's fields are lat and lon.
        let csv_location = record.get(LOCATION).is_none();
        let rename = |field: &str| match field {
            "location.lat" if csv_location => Some("lat"),
            "location.lon" if csv_location => Some("lon"),
            _ => None,
        };
        let item = NewItem::parse(draft).map_err(|e| RowError::from_domain(line, e, rename))?;
        check_item_size(item.size_bytes(), self.max_item_bytes)
            .map_err(|e| RowError::from_domain(line, e, |_| None))?;
        Ok(ItemRow {
            line,
            id,
            owner,
            ts,
            item,
        })
    }
}

fn owner_cell(cell: Cell<'_>, column: usize) -> Result<Option<(OwnerRef, &'static str)>, String> {
    cell.optional()?
        .map(|value| OwnerRef::parse(value).map(|owner| (owner, COLUMNS[column])))
        .transpose()
}

fn location_cell(cell: Cell<'_>) -> Result<Option<Location>, String> {
    match cell.object()? {
        None => Ok(None),
        Some(object) => serde_json::from_value::<Location>(serde_json::Value::Object(object))
            .map(Some)
            .map_err(|e| format!("must be {{\"lat\": number, \"lon\": number}} ({e})")),
    }
}

/// A given id: a UUID of version 7 or 8 (time-ordered), as every id Gorgon makes.
fn parse_id(value: &str) -> Result<Uuid, String> {
    let id = Uuid::parse_str(value.trim()).map_err(|_| format!("{value:?} is not a UUID"))?;
    match id.get_version_num() {
        7 | 8 => Ok(id),
        n => Err(format!(
            "must be a time-ordered UUID (version 7, or 8 as an import derives), not version {n}: \
             newest-first listings follow the id"
        )),
    }
}

/// Milliseconds in the 48 bits that lead a v7 (or a derived v8) id.
const MAX_TS_MILLIS: i64 = (1 << 48) - 1;

/// An RFC 3339 instant (`2024-05-01T12:00:00Z`, any offset), kept to the millisecond as stored.
fn parse_ts(value: &str) -> Result<DateTime<Utc>, String> {
    let ts = DateTime::parse_from_rfc3339(value.trim())
        .map_err(|_| format!("{value:?} is not an RFC 3339 time such as 2024-05-01T12:00:00Z"))?;
    let millis = ts.timestamp_millis();
    if !(0..=MAX_TS_MILLIS).contains(&millis) {
        return Err("must be between 1970 and the year 10889".into());
    }
    Ok(crate::domain::from_millis(millis))
}

/// The instant a time-ordered id carries in its first 48 bits.
fn id_time(id: Uuid) -> DateTime<Utc> {
    let bytes = id.as_bytes();
    let millis = bytes[..6]
        .iter()
        .fold(0_i64, |acc, b| (acc << 8) | i64::from(*b));
    crate::domain::from_millis(millis)
}

/// The id of an item imported without one: see the module's documentation.
pub fn derived_id(owner: Uuid, ts: DateTime<Utc>, item: &NewItem) -> Uuid {
    fn field(hash: &mut Sha256, bytes: &[u8]) {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    let millis = ts.timestamp_millis().clamp(0, MAX_TS_MILLIS);
    let mut hash = Sha256::new();
    hash.update(NAMESPACE.as_bytes());
    hash.update(owner.as_bytes());
    hash.update(millis.to_be_bytes());
    field(&mut hash, item.title.as_bytes());
    field(&mut hash, item.body.as_bytes());
    match &item.url {
        Some(url) => field(&mut hash, url.as_bytes()),
        None => hash.update([0xff]),
    }
    match item.location {
        Some(l) => {
            hash.update([1]);
            hash.update(l.lat.to_bits().to_be_bytes());
            hash.update(l.lon.to_bits().to_be_bytes());
        }
        None => hash.update([0]),
    }
    hash.update((item.keywords.len() as u64).to_be_bytes());
    for keyword in &item.keywords {
        field(&mut hash, keyword.as_bytes());
    }
    // serde_json's maps keep their keys sorted: one text per object.
    field(&mut hash, item.extra.to_json().as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&digest[..10]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::records::RecordReader;
    use crate::transfer::Format;

    fn schema() -> ItemSchema {
        ItemSchema {
            keyword_separator: '|',
            default_owner: true,
            max_item_bytes: 128 * 1024,
        }
    }

    fn rows(input: &str, format: Format) -> Vec<Result<ItemRow, RowError>> {
        let schema = schema();
        let mut reader = RecordReader::open(input.as_bytes(), format, COLUMNS, |p| {
            schema.check_columns(p)
        })
        .unwrap();
        let mut out = Vec::new();
        while let Some(row) = reader.next(|r| schema.row(r)).unwrap() {
            out.push(row);
        }
        out
    }

    #[test]
    fn derived_ids_are_stable_time_ordered_and_follow_the_validated_content() {
        let csv = "ts,title,keywords\n\
                   2024-05-01T12:00:00Z,Lighthouse,sea|Dawn\n\
                   2024-05-01T12:00:00Z,  Lighthouse ,sea|dawn\n\
                   2024-05-01T12:00:01Z,Lighthouse,sea|dawn\n";
        let parsed: Vec<ItemRow> = rows(csv, Format::Csv)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let owner = Uuid::now_v7();
        let ids: Vec<Uuid> = parsed.iter().map(|r| r.id_for(owner)).collect();
        assert_eq!(ids[0], ids[1], "the same row once validated");
        assert_ne!(ids[0], ids[2]);
        assert!(ids[0] < ids[2], "ordered by ts");
        assert_eq!(ids[0].get_version_num(), 8);
        assert_eq!(id_time(ids[0]), parsed[0].ts);
        assert_ne!(
            parsed[0].id_for(Uuid::now_v7()),
            ids[0],
            "another owner, another item"
        );
        let json = "{\"ts\":\"2024-05-01T12:00:00Z\",\"title\":\"Lighthouse\",\"keywords\":[\"sea\",\"dawn\"]}\n";
        let from_json = rows(json, Format::Ndjson).remove(0).unwrap();
        assert_eq!(from_json.id_for(owner), ids[0], "CSV and NDJSON agree");
    }

    #[test]
    fn bad_cells_name_their_column() {
        let csv = "id,title,lat,lon,extra,url\n\
                   ,t,1,2,,\n\
                   not-a-uuid,t,1,2,,\n\
                   0190b7a4-7f3c-7c1e-8a1b-3c4d5e6f7a8b,,1,2,,\n\
                   0190b7a4-7f3c-7c1e-8a1b-3c4d5e6f7a8b,t,91,2,,\n\
                   0190b7a4-7f3c-7c1e-8a1b-3c4d5e6f7a8b,t,1,,,\n\
                   0190b7a4-7f3c-7c1e-8a1b-3c4d5e6f7a8b,t,1,2,[1],\n\
                   0190b7a4-7f3c-7c1e-8a1b-3c4d5e6f7a8b,t,1,2,,ftp://x\n\
                   f47ac10b-58cc-4372-a567-0e02b2c3d479,t,1,2,,\n";
        let got: Vec<(u64, Option<String>)> = rows(csv, Format::Csv)
            .into_iter()
            .map(|r| {
                let e = r.unwrap_err();
                (e.line, e.column)
            })
            .collect();
        let want = [
            (2, "ts"),
            (3, "id"),
            (4, "title"),
            (5, "lat"),
            (6, "lon"),
            (7, "extra"),
            (8, "url"),
            (9, "id"),
        ];
        let want: Vec<(u64, Option<String>)> = want
            .iter()
            .map(|(l, c)| (*l, Some(c.to_string())))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn headers_that_cannot_work_are_refused() {
        let schema = ItemSchema {
            default_owner: false,
            ..schema()
        };
        for (header, why) in [
            ("id,body\n", "title"),
            ("id,title\n", "owner"),
            ("id,title,owner,user_id\n", "not both"),
            ("title,owner\n", "neither id nor ts"),
            ("id,title,owner,lat\n", "lat and lon"),
        ] {
            let refused = RecordReader::open(header.as_bytes(), Format::Csv, COLUMNS, |p| {
                schema.check_columns(p)
            });
            match refused {
                Err(crate::transfer::TransferError::Columns(message)) => {
                    assert!(message.contains(why), "{header}: {message}")
                }
                _ => panic!("{header} accepted"),
            }
        }
    }
}
