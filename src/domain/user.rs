//! Users: the original system's schema (`id`, `name`, `email`, `group`) plus `extra` fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_security::MixedScript;
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

/// An email address, the login name, unique across users: NFKC-normalised and lower-cased, so
/// a fullwidth or otherwise compatible spelling of a taken address is the same address; format
/// characters (zero-width, bidi controls) and addresses that mix scripts within a part
/// (a Cyrillic `а` among Latin letters) are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

/// Longest address accepted (RFC 5321's path limit less the brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

impl Email {
    pub fn parse(value: &str) -> Result<Self> {
        let bad = |why: &str| Err(Error::invalid("email", why.to_string()));
        // Bounded before normalising, so a huge value costs nothing.
        if value.len() > 4 * MAX_EMAIL_BYTES {
            return bad("must be at most 254 characters");
        }
        if value.chars().any(is_invisible) {
            return bad("must not contain control or format characters");
        }
        let value = normalise_email(value);
        if value.len() > MAX_EMAIL_BYTES {
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
            || value.chars().any(|c| c.is_whitespace() || is_invisible(c))
        {
            return bad("must look like name@example.com");
        }
        if !std::iter::once(local)
            .chain(domain.split('.'))
            .all(|part| part.is_single_script())
        {
            return bad("must not mix scripts (such as Latin and Cyrillic letters) within a part");
        }
        Ok(Email(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How the address looks; see [`look_alike_key`].
    pub fn look_alike_key(&self) -> String {
        look_alike_key(&self.0)
    }
}

/// How an address looks: Unicode's confusable skeleton (UTS #39) without combining marks, so
/// `alıce`, `ɑlice`, `ali̇ce` and `alice` share one key. The store lets one account own a key.
pub fn look_alike_key(email: &str) -> String {
    unicode_security::skeleton(email)
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .collect::<String>()
        .to_lowercase()
}

/// The form an email is stored and looked up in: trimmed, NFKC, lower-cased. Login uses it
/// without [`Email::parse`]'s checks, so accounts stored before those checks still sign in.
pub fn normalise_email(value: &str) -> String {
    value.trim().nfkc().collect::<String>().to_lowercase()
}

/// Control characters, and format characters that render as nothing (zero-width spaces and
/// joiners, bidi controls, the soft hyphen, tags, variation selectors).
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
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

/// A validated registration or admin-created user, before its password is hashed (the password
/// never shows in `Debug`).
#[derive(Clone, Serialize, Deserialize)]
pub struct UserInput {
    pub name: UserName,
    pub email: Email,
    /// Already checked by `password::Password::parse`; hashed by the receiving role.
    pub password: String,
    pub group: i64,
    pub extra: Extra,
    pub admin: bool,
}

impl std::fmt::Debug for UserInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserInput")
            .field("name", &self.name)
            .field("email", &self.email)
            .field("password", &"***")
            .field("group", &self.group)
            .field("extra", &self.extra)
            .field("admin", &self.admin)
            .finish()
    }
}

/// A validated partial update as a client sent it (passwords still in clear, never in `Debug`).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct UserPatchInput {
    pub name: Option<UserName>,
    pub email: Option<Email>,
    pub password: Option<String>,
    /// Required with `password` when users change their own.
    #[serde(default)]
    pub current_password: Option<String>,
    pub group: Option<i64>,
    pub extra: Option<Extra>,
    pub admin: Option<bool>,
}

impl std::fmt::Debug for UserPatchInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |p: &Option<String>| p.as_ref().map(|_| "***");
        f.debug_struct("UserPatchInput")
            .field("name", &self.name)
            .field("email", &self.email)
            .field("password", &redacted(&self.password))
            .field("current_password", &redacted(&self.current_password))
            .field("group", &self.group)
            .field("extra", &self.extra)
            .field("admin", &self.admin)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_emails_are_the_same_address_or_refused() {
        let ada = Email::parse("Ada@Example.com").expect("plain");
        assert_eq!(ada.as_str(), "ada@example.com");
        // Fullwidth letters are a compatibility spelling: the same address.
        assert_eq!(
            Email::parse("ａｄａ@ｅｘａｍｐｌｅ.ｃｏｍ").expect("fullwidth"),
            ada
        );
        // A Cyrillic а among Latin letters, and zero-width or bidi characters, are refused.
        for spoof in [
            "\u{0430}da@example.com",
            "a\u{200B}da@example.com",
            "ada\u{2060}@example.com",
            "\u{202E}ada@example.com",
            "ada@ex\u{00AD}ample.com",
            "ada@ex\u{0430}mple.com",
        ] {
            assert!(Email::parse(spoof).is_err(), "{spoof:?} accepted");
        }
        // One script per part is fine: an all-Cyrillic or all-Greek address is a real address.
        assert!(Email::parse("мария@пример.рф").is_ok());
        assert!(Email::parse("ελένη@example.com").is_ok());
    }

    #[test]
    fn latin_look_alikes_share_a_key() {
        let key = look_alike_key("alice@example.com");
        for spoof in [
            "al\u{0131}ce@example.com",
            "\u{0251}lice@example.com",
            "ali\u{0307}ce@example.com",
        ] {
            let parsed = Email::parse(spoof).expect("a single-script address");
            assert_eq!(parsed.look_alike_key(), key, "{spoof:?}");
        }
        assert_ne!(look_alike_key("bob@example.com"), key);
    }

    #[test]
    fn huge_emails_are_refused_before_any_work() {
        let long = format!("{}@example.com", "a".repeat(250_000));
        assert!(Email::parse(&long).is_err());
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(64))).is_ok());
    }
}
