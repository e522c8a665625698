//! Users, the look of their addresses (one account per look), and their session tokens.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::errors::db_error;
use super::rows::{search_rows, user_from_row, USER_COLUMNS};
use super::writer::Tx;
use super::Credentials;
use crate::domain::{from_millis, to_millis, NewUser, Principal, TokenHash, User, UserPatch};
use crate::error::{Error, Result};

/// Inserts a user; a redelivered insert (same id and email) answers with the stored user.
pub(super) fn insert_user(conn: &Tx<'_>, user: NewUser) -> Result<User> {
    if let Err(e) = insert_user_row(conn, &user) {
        return match e {
            Error::Conflict(why) => match select_user(conn, user.id) {
                // The same id and email again: a redelivered insert; nothing changes.
                Ok(existing) if existing.email == user.email.as_str() => Ok(existing),
                _ if why.contains("looks like") => Err(Error::Conflict(why)),
                _ => Err(Error::Conflict("email already registered".into())),
            },
            other => Err(other),
        };
    }
    select_user(conn, user.id)
}

pub(super) fn get_credentials(conn: &Connection, email: &str) -> Result<Credentials> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = ?1"
        ))
        .and_then(|mut s| s.query_row([email], credentials_from_row).optional())
        .map_err(db_error)?;
    found.ok_or_else(|| Error::not_found("user"))
}

fn credentials_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Credentials> {
    Ok(Credentials {
        user: user_from_row(row)?,
        password_hash: row.get(7)?,
    })
}

/// A page of users with their password hashes, by id, after `after` (an export).
pub(super) fn select_users_page(
    conn: &Connection,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Credentials>> {
    // The lowest id: no cursor is the same query, one plan.
    let after = after.unwrap_or(Uuid::nil());
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))
        .map_err(db_error)?;
    let rows = stmt
        .query_map(params![after, limit], credentials_from_row)
        .map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}

pub(super) fn update_user(conn: &Tx<'_>, id: Uuid, patch: UserPatch) -> Result<User> {
    let mut user = select_user(conn, id)?;
    if let Some(name) = patch.name {
        user.name = name.as_str().to_string();
    }
    if let Some(email) = patch.email {
        if email.as_str() != user.email {
            let key = email.look_alike_key();
            check_look_alike(conn, &key, id)?;
            set_email_key(conn, &key, id)?;
        }
        user.email = email.as_str().to_string();
    }
    if let Some(group) = patch.group {
        user.group = group;
    }
    if let Some(extra) = patch.extra {
        user.extra = extra;
    }
    if let Some(admin) = patch.admin {
        user.admin = admin;
    }
    conn.prepare_cached(
        "UPDATE users SET name = ?2, email = ?3, grp = ?4, admin = ?5, extra = ?6,
         password_hash = COALESCE(?7, password_hash) WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            user.name,
            user.email,
            user.group,
            user.admin as i64,
            user.extra.to_json(),
            patch.password_hash,
        ])
    })
    .map_err(|e| match db_error(e) {
        Error::Conflict(_) => Error::Conflict("email already registered".into()),
        other => other,
    })?;
    Ok(user)
}

/// Removes the user with their items, tokens and jobs.
pub(super) fn delete_user(conn: &Tx<'_>, id: Uuid) -> Result<()> {
    let deleted = conn
        .execute("DELETE FROM users WHERE id = ?1", [id])
        .map_err(db_error)?;
    if deleted == 0 {
        return Err(Error::not_found("user"));
    }
    conn.execute("DELETE FROM email_keys WHERE user_id = ?1", [id])
        .map_err(db_error)?;
    let rows = search_rows(
        conn,
        "SELECT seq, title, body, keywords FROM items WHERE user_id = ?1",
        [id],
    )?;
    rows.into_iter().for_each(|row| conn.unindex(row));
    conn.touch(id);
    conn.execute("DELETE FROM items WHERE user_id = ?1", [id])
        .map_err(db_error)?;
    conn.execute("DELETE FROM tokens WHERE user_id = ?1", [id])
        .map_err(db_error)?;
    conn.execute("DELETE FROM jobs WHERE user_id = ?1", [id])
        .map_err(db_error)?;
    Ok(())
}

pub(super) fn insert_token(
    conn: &Tx<'_>,
    hash: TokenHash,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    now: i64,
) -> Result<()> {
    // Expired tokens of this user go as a new one comes, which keeps the table bounded.
    conn.prepare_cached("DELETE FROM tokens WHERE user_id = ?1 AND expires_at <= ?2")
        .and_then(|mut s| s.execute(params![user_id, now]))
        .map_err(db_error)?;
    conn.prepare_cached("INSERT INTO tokens (hash, user_id, expires_at) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![&hash.0[..], user_id, to_millis(expires_at)]))
        .map_err(db_error)?;
    Ok(())
}

pub(super) fn get_session(
    conn: &Connection,
    hash: TokenHash,
    now: i64,
) -> Result<Option<(Principal, DateTime<Utc>)>> {
    conn.prepare_cached(
        "SELECT t.user_id, u.admin, t.expires_at FROM tokens t
         JOIN users u ON u.id = t.user_id
         WHERE t.hash = ?1 AND t.expires_at > ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![&hash.0[..], now], |row| {
            Ok((
                Principal {
                    user_id: row.get(0)?,
                    admin: row.get::<_, i64>(1)? != 0,
                },
                from_millis(row.get(2)?),
            ))
        })
        .optional()
    })
    .map_err(db_error)
}

pub(super) fn delete_token(conn: &Tx<'_>, hash: TokenHash) -> Result<Option<Uuid>> {
    conn.prepare_cached("DELETE FROM tokens WHERE hash = ?1 RETURNING user_id")
        .and_then(|mut s| s.query_row([&hash.0[..]], |r| r.get(0)).optional())
        .map_err(db_error)
}

pub(super) fn revoke_sessions(
    conn: &Tx<'_>,
    user_id: Uuid,
    keep: Option<TokenHash>,
) -> Result<u64> {
    let keep = keep.map(|k| k.0.to_vec()).unwrap_or_default();
    conn.prepare_cached("DELETE FROM tokens WHERE user_id = ?1 AND hash != ?2")
        .and_then(|mut s| s.execute(params![user_id, keep]))
        .map(|n| n as u64)
        .map_err(db_error)
}

pub(super) fn sample_user_ids(conn: &Connection, limit: u32) -> Result<Vec<Uuid>> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM users LIMIT ?1")
        .map_err(db_error)?;
    let rows = stmt.query_map([limit], |r| r.get(0)).map_err(db_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
}

/// Fails with `Unauthorized` when the user does not exist: a write by an account deleted a moment
/// ago (whose token a node still trusted) must not leave rows nobody owns.
pub(super) fn require_user(conn: &Connection, user_id: Uuid) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .and_then(|mut s| s.exists([user_id]))
        .map_err(db_error)?;
    if found {
        Ok(())
    } else {
        Err(Error::Unauthorized("this account no longer exists".into()))
    }
}

/// `Conflict` when another account has an address that looks like `email`.
fn check_look_alike(conn: &Connection, key: &str, user_id: Uuid) -> Result<()> {
    let owner: Option<Uuid> = conn
        .prepare_cached("SELECT user_id FROM email_keys WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(db_error)?;
    match owner {
        Some(owner) if owner != user_id => Err(Error::Conflict(
            "an address that looks like this one is already registered".into(),
        )),
        _ => Ok(()),
    }
}

fn set_email_key(conn: &Connection, key: &str, user_id: Uuid) -> Result<()> {
    conn.prepare_cached("DELETE FROM email_keys WHERE user_id = ?1")
        .and_then(|mut s| s.execute([user_id]))
        .and_then(|_| {
            conn.prepare_cached("INSERT OR REPLACE INTO email_keys (key, user_id) VALUES (?1, ?2)")
        })
        .and_then(|mut s| s.execute(params![key, user_id]))
        .map_err(db_error)?;
    Ok(())
}

/// Inserts a user and the look of their address; `Conflict` when the email is taken or looks
/// like one that is (a redelivered insert of the same user is a `Conflict` the caller resolves).
pub(super) fn insert_user_row(conn: &Connection, user: &NewUser) -> Result<()> {
    let key = user.email.look_alike_key();
    check_look_alike(conn, &key, user.id)?;
    conn.prepare_cached(
        "INSERT INTO users (id, name, email, grp, admin, created_at, extra, password_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            user.id,
            user.name.as_str(),
            user.email.as_str(),
            user.group,
            user.admin as i64,
            to_millis(user.created_at),
            user.extra.to_json(),
            user.password_hash,
        ])
    })
    .map_err(db_error)?;
    set_email_key(conn, &key, user.id)
}

pub(super) fn select_user(conn: &Connection, id: Uuid) -> Result<User> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], user_from_row).optional())
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("user"))
}
