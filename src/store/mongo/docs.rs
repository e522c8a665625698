//! How Gorgon's values are stored as BSON documents, and read back.
//!
//! Ids are BSON binary subtype 4 (UUID), so `_id` is the caller's UUIDv7 and "newest first" is
//! `_id` descending. Instants are BSON dates (milliseconds, as the API keeps them). Application
//! data (`extra`, job payloads and results) is kept as JSON text: it is opaque to the store, keys
//! such as `$x` or `a.b` are not field names MongoDB accepts everywhere, and JSON numbers come
//! back exactly as they were given.

use chrono::{DateTime, Utc};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, Document};
use uuid::Uuid;

use super::errors::MongoError;
use crate::domain::{
    from_millis, to_millis, Extra, Item, Job, JobState, Location, NewUser, TokenHash, User,
};
use crate::store::words::item_words;

pub(super) fn uuid(id: Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: id.as_bytes().to_vec(),
    })
}

pub(super) fn bytes(value: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: value.to_vec(),
    })
}

pub(super) fn token(hash: &TokenHash) -> Bson {
    bytes(&hash.0)
}

pub(super) fn time(ts: DateTime<Utc>) -> Bson {
    Bson::DateTime(mongodb::bson::DateTime::from_millis(to_millis(ts)))
}

pub(super) fn now() -> Bson {
    time(Utc::now())
}

/// Reads fields of one kind of document, naming it in the error when a field is wrong.
pub(super) struct Fields<'a> {
    doc: &'a Document,
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn of(what: &'static str, doc: &'a Document) -> Self {
        Fields { doc, what }
    }

    fn damaged(&self, field: &'static str) -> MongoError {
        MongoError::Damaged {
            what: self.what,
            field,
        }
    }

    pub fn uuid(&self, field: &'static str) -> Result<Uuid, MongoError> {
        match self.doc.get(field) {
            Some(Bson::Binary(b)) => Uuid::from_slice(&b.bytes).map_err(|_| self.damaged(field)),
            _ => Err(self.damaged(field)),
        }
    }

    pub fn str(&self, field: &'static str) -> Result<&'a str, MongoError> {
        self.doc.get_str(field).map_err(|_| self.damaged(field))
    }

    pub fn opt_str(&self, field: &'static str) -> Result<Option<String>, MongoError> {
        match self.doc.get(field) {
            None | Some(Bson::Null) => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.damaged(field)),
        }
    }

    pub fn int(&self, field: &'static str) -> Result<i64, MongoError> {
        match self.doc.get(field) {
            Some(Bson::Int64(n)) => Ok(*n),
            Some(Bson::Int32(n)) => Ok(i64::from(*n)),
            Some(Bson::Double(n)) if n.fract() == 0.0 => Ok(*n as i64),
            _ => Err(self.damaged(field)),
        }
    }

    pub fn bool(&self, field: &'static str) -> Result<bool, MongoError> {
        match self.doc.get(field) {
            None | Some(Bson::Null) => Ok(false),
            Some(Bson::Boolean(b)) => Ok(*b),
            _ => Err(self.damaged(field)),
        }
    }

    pub fn time(&self, field: &'static str) -> Result<DateTime<Utc>, MongoError> {
        match self.doc.get(field) {
            Some(Bson::DateTime(t)) => Ok(from_millis(t.timestamp_millis())),
            _ => Err(self.damaged(field)),
        }
    }

    pub fn float(&self, doc: &Document, field: &'static str) -> Result<f64, MongoError> {
        match doc.get(field) {
            Some(Bson::Double(n)) => Ok(*n),
            Some(Bson::Int32(n)) => Ok(f64::from(*n)),
            Some(Bson::Int64(n)) => Ok(*n as f64),
            _ => Err(self.damaged(field)),
        }
    }

    pub fn json(&self, field: &'static str) -> Result<Option<serde_json::Value>, MongoError> {
        match self.opt_str(field)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|_| self.damaged(field)),
        }
    }

    pub fn strings(&self, field: &'static str) -> Result<Vec<String>, MongoError> {
        match self.doc.get(field) {
            None | Some(Bson::Null) => Ok(Vec::new()),
            Some(Bson::Array(values)) => values
                .iter()
                .map(|v| match v {
                    Bson::String(s) => Ok(s.clone()),
                    _ => Err(self.damaged(field)),
                })
                .collect(),
            Some(_) => Err(self.damaged(field)),
        }
    }
}

pub(super) fn json_text(
    what: &'static str,
    value: &serde_json::Value,
) -> Result<String, MongoError> {
    serde_json::to_string(value).map_err(|e| MongoError::Encode(what, e))
}

// --- users -------------------------------------------------------------------------------------

pub(super) fn user_doc(user: &NewUser) -> Document {
    doc! {
        "_id": uuid(user.id),
        "name": user.name.as_str(),
        "email": user.email.as_str(),
        "group": user.group,
        "admin": user.admin,
        "created_at": time(user.created_at),
        "extra": user.extra.to_json(),
        "password_hash": &user.password_hash,
    }
}

pub(super) fn user_from(doc: &Document) -> Result<User, MongoError> {
    let f = Fields::of("user", doc);
    Ok(User {
        id: f.uuid("_id")?,
        name: f.str("name")?.to_string(),
        email: f.str("email")?.to_string(),
        group: f.int("group")?,
        admin: f.bool("admin")?,
        created_at: f.time("created_at")?,
        extra: Extra::from_json(f.str("extra")?),
    })
}

// --- items -------------------------------------------------------------------------------------

/// An item as stored: its fields, and `words`, what search finds it by (see [`super::search`]).
pub(super) fn item_doc(item: &Item) -> Document {
    doc! {
        "_id": uuid(item.id),
        "user_id": uuid(item.user_id),
        "title": &item.title,
        "body": &item.body,
        "url": item.url.as_deref().map_or(Bson::Null, Bson::from),
        "ts": time(item.ts),
        "keywords": &item.keywords,
        "extra": item.extra.to_json(),
        "words": item_words(item),
        // Null when cleared, so that an update's `$set` clears it too.
        "location": item.location.map_or(Bson::Null, |l| Bson::from(doc! { "lat": l.lat, "lon": l.lon })),
        "rev": 0_i64,
    }
}

pub(super) fn item_from(doc: &Document) -> Result<Item, MongoError> {
    let f = Fields::of("item", doc);
    let location = match doc.get("location") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(l)) => Some(Location {
            lat: f.float(l, "lat")?,
            lon: f.float(l, "lon")?,
        }),
        Some(_) => return Err(f.damaged("location")),
    };
    Ok(Item {
        id: f.uuid("_id")?,
        user_id: f.uuid("user_id")?,
        title: f.str("title")?.to_string(),
        body: f.str("body")?.to_string(),
        url: f.opt_str("url")?,
        ts: f.time("ts")?,
        location,
        keywords: f.strings("keywords")?,
        extra: Extra::from_json(f.str("extra")?),
    })
}

// --- jobs --------------------------------------------------------------------------------------

/// The field a unique index keeps one job per user and idempotency key with; absent on jobs
/// without a key (the index is sparse).
pub(super) fn job_key(user_id: Uuid, key: &str) -> String {
    format!("{}/{key}", user_id.simple())
}

/// `run_after` is when the job is next due, as in the embedded store: the next attempt of a
/// queued or failed job, the end of a running job's lease, the finish time of a done or dead
/// one (for purging). One index over `(state, run_after)` serves claims, leases and purges.
pub(super) fn job_from(doc: &Document) -> Result<Job, MongoError> {
    let f = Fields::of("job", doc);
    let state = JobState::parse(f.str("state")?).ok_or_else(|| f.damaged("state"))?;
    let run_after = f.time("run_after")?;
    Ok(Job {
        id: f.uuid("_id")?,
        user_id: f.uuid("user_id")?,
        kind: f.str("kind")?.to_string(),
        state,
        payload: f.json("payload")?.unwrap_or(serde_json::Value::Null),
        result: f.json("result")?,
        error: f.opt_str("error")?,
        attempts: u32::try_from(f.int("attempts")?).map_err(|_| f.damaged("attempts"))?,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
        run_after: matches!(state, JobState::Queued | JobState::Failed).then_some(run_after),
        lease_until: (state == JobState::Running).then_some(run_after),
        idempotency_key: f.opt_str("idempotency_key")?,
    })
}
