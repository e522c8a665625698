//! Users: the original system's schema (`id`, `name`, `email`, `group`) plus `extra` fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::fields::{text, Extra};
use crate::error::{Error, Result};

/// A user's display name: 1 to 100 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    pub fn parse(value: &str) -> Result<Self> {
        text("name", value, 1, 100).map(UserName)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, lower-cased: the login name, unique across users.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(value: &str) -> Result<Self> {
        let value = value.trim().to_lowercase();
        let bad = |why: &str| Err(Error::invalid("email", why.to_string()));
        if value.len() > 254 {
            return bad("must be at most 254 characters");
        }
        let Some((local, domain)) = value.split_once('@') else {
            return bad("must look like name@example.com");
        };
        if local.is_empty()
            || local.len() > 64
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains('@')
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return bad("must look like name@example.com");
        }
        Ok(Email(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Bounds for the `group` field, which the original system used to partition users.
pub const GROUP_RANGE: std::ops::RangeInclusive<i64> = 0..=1_000_000_000;

pub fn parse_group(value: i64) -> Result<i64> {
    if GROUP_RANGE.contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid("group", "must be between 0 and 1000000000"))
    }
}

/// A user as the API shows it (never with the password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub group: i64,
    /// Administrators may manage every user.
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub extra: Extra,
}

/// A validated user about to be stored, with its password already hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewUser {
    pub id: Uuid,
    pub name: UserName,
    pub email: Email,
    pub group: i64,
    pub admin: bool,
    pub extra: Extra,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A partial update: only the fields that are `Some` change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserPatch {
    pub name: Option<UserName>,
    pub email: Option<Email>,
    pub group: Option<i64>,
    pub extra: Option<Extra>,
    pub password_hash: Option<String>,
    pub admin: Option<bool>,
}

impl UserPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.email.is_none()
            && self.group.is_none()
            && self.extra.is_none()
            && self.password_hash.is_none()
            && self.admin.is_none()
    }
}

/// A validated registration or admin-created user, before its password is hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInput {
    pub name: UserName,
    pub email: Email,
    /// Already checked by `password::Password::parse`; hashed by the receiving role.
    pub password: String,
    pub group: i64,
    pub extra: Extra,
    pub admin: bool,
}

/// A validated partial update as a client sent it (password still in clear).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserPatchInput {
    pub name: Option<UserName>,
    pub email: Option<Email>,
    pub password: Option<String>,
    pub group: Option<i64>,
    pub extra: Option<Extra>,
    pub admin: Option<bool>,
}
