//! Users, the look of their addresses (one account per look), and their session tokens.
//!
//! An account and the look of its address are written by one statement (a data-modifying `WITH`):
//! the look is claimed with `ON CONFLICT DO NOTHING` and the user is written only if the claim
//! was made, so two registrations of one address (or of two look-alikes) racing on any number of
//! nodes make one account; the unique index on `email` backs it up (23505 → `Conflict`).

use chrono::{DateTime, Utc};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::connection::Conn;
use super::errors::op;
use super::rows::{user_from, USER_COLUMNS};
use super::Credentials;
use crate::domain::user::look_alike_key;
use crate::domain::{now, NewUser, Principal, TokenHash, User, UserPatch};
use crate::error::{Error, Result};

const INSERT_USER: &str = "
    WITH claim AS (
        INSERT INTO email_keys (key, user_id) VALUES ($8, $1)
        ON CONFLICT (key) DO NOTHING
        RETURNING 1
    )
    INSERT INTO users (id, name, email, grp, admin, created_at, extra, password_hash)
    SELECT $1, $2, $3, $4, $5, $6, $7, $9 WHERE EXISTS (SELECT 1 FROM claim)
    RETURNING id";

/// Inserts a user; a redelivered insert (same id and email) answers with the stored user.
pub(super) async fn insert_user(c: &Conn, user: NewUser) -> Result<User> {
    let key = user.email.look_alike_key();
    let inserted = c
        .query_opt(
            "insert a user",
            INSERT_USER,
            &[
                &user.id,
                &user.name.as_str(),
                &user.email.as_str(),
                &user.group,
                &user.admin,
                &user.created_at,
                &Json(&user.extra),
                &key,
                &user.password_hash,
            ],
        )
        .await;
    match inserted {
        Ok(Some(_)) => Ok(User {
            id: user.id,
            name: user.name.as_str().to_string(),
            email: user.email.as_str().to_string(),
            group: user.group,
            admin: user.admin,
            created_at: user.created_at,
            extra: user.extra,
        }),
        // The look is held: by this very user (a redelivered insert), or by another account.
        Ok(None) => match find_user(c, user.id).await? {
            Some(existing) if existing.email == user.email.as_str() => Ok(existing),
            _ => Err(taken(c, &key, user.email.as_str()).await?),
        },
        // The id or the address itself is taken (the look was free: its claim was undone).
        Err(Error::Conflict(_)) => match find_user(c, user.id).await? {
            Some(existing) if existing.email == user.email.as_str() => Ok(existing),
            _ => Err(Error::Conflict("email already registered".into())),
        },
        Err(e) => Err(e),
    }
}

/// The `Conflict` for an address whose look `key` another account holds.
async fn taken(c: &Conn, key: &str, email: &str) -> Result<Error> {
    let holder = c
        .query_opt(
            "read an address",
            "SELECT u.email FROM email_keys k JOIN users u ON u.id = k.user_id WHERE k.key = $1",
            &[&key],
        )
        .await?;
    let same = holder.is_some_and(|row| row.try_get::<_, &str>(0).is_ok_and(|e| e == email));
    Ok(Error::Conflict(if same {
        "email already registered".into()
    } else {
        "an address that looks like this one is already registered".into()
    }))
}

pub(super) async fn find_user(c: &Conn, id: Uuid) -> Result<Option<User>> {
    let row = c
        .query_opt(
            "read a user",
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(user_from).transpose()?)
}

pub(super) async fn get_user(c: &Conn, id: Uuid) -> Result<User> {
    find_user(c, id)
        .await?
        .ok_or_else(|| Error::not_found("user"))
}

pub(super) async fn get_credentials(c: &Conn, email: &str) -> Result<super::Credentials> {
    let row = c
        .query_opt(
            "read a user",
            &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"),
            &[&email],
        )
        .await?
        .ok_or_else(|| Error::not_found("user"))?;
    credentials_from(&row, "read a user")
}

fn credentials_from(row: &tokio_postgres::Row, what: &'static str) -> Result<Credentials> {
    Ok(Credentials {
        user: user_from(row)?,
        password_hash: row.try_get(7).map_err(op(what))?,
    })
}

/// A page of users with their password hashes, by id, after `after` (an export).
pub(super) async fn export_page(
    c: &Conn,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Credentials>> {
    let rows = c
        .query(
            "export users",
            &format!(
                "SELECT {USER_COLUMNS}, password_hash FROM users WHERE id > $1 ORDER BY id LIMIT $2"
            ),
            &[&after.unwrap_or(Uuid::nil()), &i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| credentials_from(row, "export users"))
        .collect()
}

const UPDATE_USER: &str = "
    UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email),
        grp = COALESCE($4, grp), admin = COALESCE($5, admin), extra = COALESCE($6, extra),
        password_hash = COALESCE($7, password_hash)
    WHERE id = $1";

/// Applies the fields given. A new address of another look claims that look first and frees the
/// old one, in the same transaction as the update.
pub(super) async fn update_user(c: &mut Conn, id: Uuid, patch: UserPatch) -> Result<User> {
    let result = async {
        let tx = c.begin("begin a user update").await?;
        let current: Option<String> = tx
            .query_opt("SELECT email FROM users WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(op("read a user"))?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(op("read a user"))?;
        let current = current.ok_or_else(|| Error::not_found("user"))?;
        if let Some(email) = &patch.email {
            let key = email.look_alike_key();
            if email.as_str() != current && key != look_alike_key(&current) {
                let claimed = tx
                    .query_opt(
                        "INSERT INTO email_keys (key, user_id) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET user_id = EXCLUDED.user_id
                             WHERE email_keys.user_id = EXCLUDED.user_id
                         RETURNING 1",
                        &[&key, &id],
                    )
                    .await
                    .map_err(op("claim an address"))?;
                if claimed.is_none() {
                    return Err(Error::Conflict(
                        "an address that looks like this one is already registered".into(),
                    ));
                }
                tx.execute(
                    "DELETE FROM email_keys WHERE user_id = $1 AND key <> $2",
                    &[&id, &key],
                )
                .await
                .map_err(op("release an address"))?;
            }
        }
        let statement = tx
            .prepare_cached(&format!("{UPDATE_USER} RETURNING {USER_COLUMNS}"))
            .await
            .map_err(op("update a user"))?;
        let row = tx
            .query_one(
                &statement,
                &[
                    &id,
                    &patch.name.as_ref().map(|n| n.as_str()),
                    &patch.email.as_ref().map(|e| e.as_str()),
                    &patch.group,
                    &patch.admin,
                    &patch.extra.as_ref().map(Json),
                    &patch.password_hash,
                ],
            )
            .await
            .map_err(|e| match op("update a user")(e) {
                Error::Conflict(_) => Error::Conflict("email already registered".into()),
                other => other,
            })?;
        let user = user_from(&row)?;
        tx.commit().await.map_err(op("commit a user update"))?;
        Ok(user)
    }
    .await;
    c.settle(result)
}

/// Removes the user, then what was theirs, in one transaction. The user goes first: a write of
/// theirs in flight holds a share lock on the user's row, so the deletion waits for it, and the
/// statement after it (a newer snapshot) removes what it wrote.
pub(super) async fn delete_user(c: &mut Conn, id: Uuid) -> Result<()> {
    let result = async {
        let tx = c.begin("begin a user deletion").await?;
        let deleted = tx
            .execute("DELETE FROM users WHERE id = $1", &[&id])
            .await
            .map_err(op("delete a user"))?;
        if deleted == 0 {
            return Err(Error::not_found("user"));
        }
        tx.execute(
            "WITH keys AS (DELETE FROM email_keys WHERE user_id = $1),
                  items AS (DELETE FROM items WHERE user_id = $1),
                  tokens AS (DELETE FROM tokens WHERE user_id = $1)
             DELETE FROM jobs WHERE user_id = $1",
            &[&id],
        )
        .await
        .map_err(op("delete a user's data"))?;
        tx.commit().await.map_err(op("commit a user deletion"))
    }
    .await;
    c.settle(result)
}

pub(super) async fn sample_user_ids(c: &Conn, limit: u32) -> Result<Vec<Uuid>> {
    let rows = c
        .query(
            "read user ids",
            "SELECT id FROM users LIMIT $1",
            &[&i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(op("read user ids")))
        .collect()
}

/// Stores a token; expired tokens of the same user go in the same statement, which keeps the
/// table bounded.
pub(super) async fn insert_token(
    c: &Conn,
    hash: TokenHash,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    c.execute(
        "store a token",
        "WITH expired AS (DELETE FROM tokens WHERE user_id = $2 AND expires_at <= $4)
         INSERT INTO tokens (hash, user_id, expires_at) VALUES ($1, $2, $3)",
        &[&&hash.0[..], &user_id, &expires_at, &now()],
    )
    .await?;
    Ok(())
}

/// The token's owner if the token exists, has not expired, and its owner still exists.
pub(super) async fn get_session(
    c: &Conn,
    hash: TokenHash,
) -> Result<Option<(Principal, DateTime<Utc>)>> {
    let row = c
        .query_opt(
            "read a token",
            "SELECT t.user_id, u.admin, t.expires_at FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE t.hash = $1 AND t.expires_at > $2",
            &[&&hash.0[..], &now()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let read = op("read a token");
    match (row.try_get(0), row.try_get(1), row.try_get(2)) {
        (Ok(user_id), Ok(admin), Ok(expires_at)) => {
            Ok(Some((Principal { user_id, admin }, expires_at)))
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(read(e)),
    }
}

pub(super) async fn delete_token(c: &Conn, hash: TokenHash) -> Result<Option<Uuid>> {
    let row = c
        .query_opt(
            "delete a token",
            "DELETE FROM tokens WHERE hash = $1 RETURNING user_id",
            &[&&hash.0[..]],
        )
        .await?;
    row.map(|r| r.try_get(0).map_err(op("delete a token")))
        .transpose()
}

pub(super) async fn revoke_sessions(
    c: &Conn,
    user_id: Uuid,
    keep: Option<TokenHash>,
) -> Result<u64> {
    let keep = keep.map(|k| k.0.to_vec()).unwrap_or_default();
    c.execute(
        "revoke sessions",
        "DELETE FROM tokens WHERE user_id = $1 AND hash <> $2",
        &[&user_id, &keep],
    )
    .await
}
