//! A user row: columns `id`, `name`, `email`, `group`, `admin`, `created_at`, `extra`,
//! `password_hash`, each validated by the domain's parse functions (those of registration and
//! of `POST /api/v1/users`).
//!
//! Passwords never travel in a file. A `password_hash` cell carries an account over with its
//! password: it must be an argon2id PHC string within bounded costs
//! ([`password::parse_argon2id_phc`]), the only kind a login verifies, so an account moved from
//! another argon2id system (or from `gorgon export users --with-password-hashes`) signs in as
//! before. A row without one makes an account nobody can sign in to until an admin sets its
//! password (`PATCH /api/v1/users/{id}`): its hash is argon2id of a random secret thrown away,
//! so a login attempt costs what it costs for any account and tells nothing.
//!
//! The email is an account's key: a row whose email is taken is counted as existing and left
//! as it is, so running the same file again creates nobody twice.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::records::Record;
use super::RowError;
use crate::domain::password;
use crate::domain::user::parse_group;
use crate::domain::{Email, Extra, NewUser, UserName};

/// The columns of a user file, in the order an export writes them (`password_hash` last: an
/// export without hashes leaves it out).
pub const COLUMNS: &[&str] = &[
    "id",
    "name",
    "email",
    "group",
    "admin",
    "created_at",
    "extra",
    "password_hash",
];
const ID: usize = 0;
const NAME: usize = 1;
const EMAIL: usize = 2;
const GROUP: usize = 3;
const ADMIN: usize = 4;
const CREATED_AT: usize = 5;
const EXTRA: usize = 6;
const PASSWORD_HASH: usize = 7;

/// A valid user row.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub line: u64,
    pub id: Option<Uuid>,
    pub name: UserName,
    pub email: Email,
    pub group: i64,
    pub admin: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub extra: Extra,
    /// A checked argon2id PHC string; `None`: no usable password.
    pub password_hash: Option<String>,
}

impl UserRow {
    /// The account to store; `locked` is the hash of accounts without a password.
    pub fn into_new_user(self, locked: &str) -> NewUser {
        NewUser {
            id: self.id.unwrap_or_else(crate::domain::new_id),
            name: self.name,
            email: self.email,
            group: self.group,
            admin: self.admin,
            extra: self.extra,
            password_hash: self.password_hash.unwrap_or_else(|| locked.to_string()),
            created_at: self.created_at.unwrap_or_else(crate::domain::now),
        }
    }
}

/// Refuses a CSV header without the columns every account needs.
pub fn check_columns(present: &[bool]) -> Result<(), String> {
    match (present[NAME], present[EMAIL]) {
        (true, true) => Ok(()),
        _ => Err("the header needs name and email columns".into()),
    }
}

/// A record as a valid user row, or why not.
pub fn row(record: &Record<'_>) -> Result<UserRow, RowError> {
    let line = record.line;
    let at =
        |column: usize| move |reason: String| RowError::new(line, Some(COLUMNS[column]), reason);
    let domain = |e| RowError::from_domain(line, e, |_| None);
    let text = |column: usize| -> Result<Option<&str>, RowError> {
        record
            .get(column)
            .map(|c| c.optional())
            .transpose()
            .map(Option::flatten)
            .map_err(at(column))
    };
    let id = text(ID)?
        .map(|v| Uuid::parse_str(v.trim()).map_err(|_| format!("{v:?} is not a UUID")))
        .transpose()
        .map_err(at(ID))?;
    let name = UserName::parse(text(NAME)?.unwrap_or("")).map_err(domain)?;
    let email = Email::parse(text(EMAIL)?.unwrap_or("")).map_err(domain)?;
    let cell = |column: usize| record.get(column);
    let group = cell(GROUP)
        .map(|c| c.integer())
        .transpose()
        .map_err(at(GROUP))?
        .flatten()
        .map(parse_group)
        .transpose()
        .map_err(domain)?
        .unwrap_or(0);
    let admin = cell(ADMIN)
        .map(|c| c.boolean())
        .transpose()
        .map_err(at(ADMIN))?
        .flatten()
        .unwrap_or(false);
    let created_at = text(CREATED_AT)?
        .map(|v| {
            DateTime::parse_from_rfc3339(v.trim())
                .map(|t| crate::domain::from_millis(t.timestamp_millis()))
                .map_err(|_| format!("{v:?} is not an RFC 3339 time"))
        })
        .transpose()
        .map_err(at(CREATED_AT))?;
    let extra = cell(EXTRA)
        .map(|c| c.object())
        .transpose()
        .map_err(at(EXTRA))?
        .flatten()
        .map(Extra::parse)
        .transpose()
        .map_err(domain)?
        .unwrap_or_default();
    let password_hash = text(PASSWORD_HASH)?
        .map(password::parse_argon2id_phc)
        .transpose()
        .map_err(domain)?;
    Ok(UserRow {
        line,
        id,
        name,
        email,
        group,
        admin,
        created_at,
        extra,
        password_hash,
    })
}
