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
    /// Validates what a client sent: every field within its bounds, keywords normalised.
    pub fn parse(draft: ItemDraft) -> Result<NewItem> {
        Ok(NewItem {
            title: parse_title(&draft.title)?,
            body: parse_body(&draft.body)?,
            url: draft.url.as_deref().map(parse_url).transpose()?,
            location: draft.location.map(Location::parse).transpose()?,
            keywords: parse_keywords(&draft.keywords)?,
            extra: Extra::parse(draft.extra.unwrap_or_default())?,
        })
    }

    /// The bytes its content takes: title, body, url and keywords as UTF-8, extra as JSON (what
    /// `--max-item-bytes` bounds).
    pub fn size_bytes(&self) -> usize {
        self.title.len()
            + self.body.len()
            + self.url.as_ref().map_or(0, String::len)
            + self.keywords.iter().map(String::len).sum::<usize>()
            + self.extra.to_json().len()
    }

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

/// A new item as a client sends it (the body of `POST /api/v1/items`, one entry of a provider's
/// ingest), not validated yet: [`NewItem::parse`] turns it into a [`NewItem`] or says which field
/// is wrong. Published in the OpenAPI document as `CreateItemRequest`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateItemRequest)]
pub struct ItemDraft {
    /// 1 to 300 characters.
    #[schema(
        min_length = 1,
        max_length = 300,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub title: String,
    /// Up to 65536 characters.
    #[serde(default)]
    #[schema(
        max_length = 65536,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub body: String,
    /// An absolute http(s) URL.
    #[schema(
        max_length = 2048,
        pattern = "^https?://[^\\s/\\u0000-\\u001F\\u007F-\\u009F][^\\s\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub url: Option<String>,
    pub location: Option<Location>,
    /// Up to 32 keywords of 1 to 64 characters; stored lower-case.
    #[serde(default)]
    #[schema(max_items = 32, value_type = Vec<Keyword>)]
    pub keywords: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A keyword, 1 to 64 characters (documentation only: keywords travel as strings).
pub struct Keyword;

impl utoipa::PartialSchema for Keyword {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"))
            .into()
    }
}

impl ToSchema for Keyword {}

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

/// A 413 for an item (or a patch) whose content takes more than `max` bytes (`--max-item-bytes`).
pub fn check_item_size(size: usize, max: usize) -> Result<()> {
    if size > max {
        return Err(Error::PayloadTooLarge(format!(
            "the item is {size} bytes; at most {max} are allowed"
        )));
    }
    Ok(())
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
