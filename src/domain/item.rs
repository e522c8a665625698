//! Items: what users and providers publish (`title`, `body`, `url`, `location`, `keywords`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::fields::{text, Extra, Location};
use crate::error::{Error, Result};

pub const MAX_TITLE_CHARS: usize = 300;
pub const MAX_BODY_CHARS: usize = 64 * 1024;
pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_KEYWORDS: usize = 32;
pub const MAX_KEYWORD_CHARS: usize = 64;

/// An item as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Item {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub body: String,
    pub url: Option<String>,
    /// When the item was created; `id` is time-ordered by the same instant.
    pub ts: DateTime<Utc>,
    pub location: Option<Location>,
    pub keywords: Vec<String>,
    pub extra: Extra,
}

/// The validated fields of a new item; the store assigns nothing, the caller builds the `Item`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewItem {
    pub title: String,
    pub body: String,
    pub url: Option<String>,
    pub location: Option<Location>,
    pub keywords: Vec<String>,
    pub extra: Extra,
}

impl NewItem {
    pub fn into_item(self, id: Uuid, user_id: Uuid, ts: DateTime<Utc>) -> Item {
        Item {
            id,
            user_id,
            title: self.title,
            body: self.body,
            url: self.url,
            ts,
            location: self.location,
            keywords: self.keywords,
            extra: self.extra,
        }
    }
}

/// A partial update of an item. `url` and `location` may be cleared with `null` (`Some(None)`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ItemPatch {
    pub title: Option<String>,
    pub body: Option<String>,
    pub url: Option<Option<String>>,
    pub location: Option<Option<Location>>,
    pub keywords: Option<Vec<String>>,
    pub extra: Option<Extra>,
}

impl ItemPatch {
    pub fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.body.is_none()
            && self.url.is_none()
            && self.location.is_none()
            && self.keywords.is_none()
            && self.extra.is_none()
    }

    pub fn apply(self, item: &mut Item) {
        if let Some(v) = self.title {
            item.title = v;
        }
        if let Some(v) = self.body {
            item.body = v;
        }
        if let Some(v) = self.url {
            item.url = v;
        }
        if let Some(v) = self.location {
            item.location = v;
        }
        if let Some(v) = self.keywords {
            item.keywords = v;
        }
        if let Some(v) = self.extra {
            item.extra = v;
        }
    }
}

pub fn parse_title(value: &str) -> Result<String> {
    text("title", value, 1, MAX_TITLE_CHARS)
}

pub fn parse_body(value: &str) -> Result<String> {
    text("body", value, 0, MAX_BODY_CHARS)
}

/// An absolute http(s) URL without whitespace.
pub fn parse_url(value: &str) -> Result<String> {
    let value = value.trim();
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => {}
        _ => return Err(Error::invalid("url", "must be an absolute http(s) URL")),
    }
    if value.chars().count() > MAX_URL_CHARS {
        return Err(Error::invalid(
            "url",
            format!("must be at most {MAX_URL_CHARS} characters"),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid("url", "must not contain whitespace"));
    }
    Ok(value.to_string())
}

/// Keywords are trimmed, lower-cased and de-duplicated, in the order given.
pub fn parse_keywords(values: &[String]) -> Result<Vec<String>> {
    if values.len() > MAX_KEYWORDS {
        return Err(Error::invalid(
            "keywords",
            format!("at most {MAX_KEYWORDS} keywords"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let keyword = text("keywords", value, 1, MAX_KEYWORD_CHARS)?.to_lowercase();
        if !out.contains(&keyword) {
            out.push(keyword);
        }
    }
    Ok(out)
}
