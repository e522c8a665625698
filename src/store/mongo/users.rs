//! Users, the look of their addresses (one account per look), and their session tokens.
//!
//! Without a multi-document transaction, an account is written in an order that never lets two
//! accounts share a look: first the look is claimed (`email_keys`, `_id` = the look, unique by
//! construction), then the user is written (a unique index on `email` backs it up). A claim
//! whose owner never got written (its node died in between) is taken over once it is a minute
//! old.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::docs::{now, time, token, user_doc, user_from, uuid, Fields};
use super::errors::{is_duplicate, op};
use super::{Collections, Credentials};
use crate::domain::user::look_alike_key;
use crate::domain::{NewUser, Principal, TokenHash, User, UserPatch};
use crate::error::{Error, Result};

/// How old a claim on a look must be before it may be taken over from an owner that does not
/// hold it (a node died between claiming it and writing the user).
const STALE_CLAIM: chrono::Duration = chrono::Duration::minutes(1);

/// Never sent back with a user: the password hash.
fn without_hash() -> Document {
    doc! { "password_hash": 0 }
}

pub(super) async fn insert_user(c: &Collections, user: NewUser) -> Result<User> {
    let key = user.email.look_alike_key();
    claim_look(c, &key, user.id).await?;
    let stored = user_doc(&user);
    match c.users.insert_one(&stored).await {
        // Read back from what was stored, as a later read would see it.
        Ok(_) => Ok(user_from(&stored)?),
        Err(e) if is_duplicate(&e) => match find_user(c, user.id).await? {
            // The same id and email again: a redelivered insert; nothing changes.
            Some(existing) if existing.email == user.email.as_str() => Ok(existing),
            existing => {
                if existing.is_none() {
                    release_look(c, &key, user.id).await?;
                }
                Err(Error::Conflict("email already registered".into()))
            }
        },
        Err(e) => Err(op("insert a user")(e)),
    }
}

pub(super) async fn find_user(c: &Collections, id: Uuid) -> Result<Option<User>> {
    let found = c
        .users
        .find_one(doc! { "_id": uuid(id) })
        .projection(without_hash())
        .await
        .map_err(op("read a user"))?;
    Ok(found.as_ref().map(user_from).transpose()?)
}

pub(super) async fn get_user(c: &Collections, id: Uuid) -> Result<User> {
    find_user(c, id)
        .await?
        .ok_or_else(|| Error::not_found("user"))
}

pub(super) async fn get_credentials(c: &Collections, email: &str) -> Result<Credentials> {
    let found = c
        .users
        .find_one(doc! { "email": email })
        .await
        .map_err(op("read a user"))?
        .ok_or_else(|| Error::not_found("user"))?;
    credentials_from(&found)
}

fn credentials_from(found: &Document) -> Result<Credentials> {
    Ok(Credentials {
        user: user_from(found)?,
        password_hash: Fields::of("user", found).str("password_hash")?.to_string(),
    })
}

/// A page of users with their password hashes, by `_id`, after `after` (an export).
pub(super) async fn export_page(
    c: &Collections,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Credentials>> {
    let filter = match after {
        Some(id) => doc! { "_id": { "$gt": uuid(id) } },
        None => doc! {},
    };
    let docs = super::pages::find_page(
        &c.users,
        filter,
        doc! { "_id": 1 },
        None,
        crate::domain::Page::new(limit, 0),
        "export users",
    )
    .await?;
    docs.iter().map(credentials_from).collect()
}

pub(super) async fn update_user(c: &Collections, id: Uuid, patch: UserPatch) -> Result<User> {
    let mut set = Document::new();
    let mut new_key = None;
    if let Some(email) = &patch.email {
        let current = get_user(c, id).await?;
        if current.email != email.as_str() {
            let key = email.look_alike_key();
            if key != look_alike_key(&current.email) {
                claim_look(c, &key, id).await?;
                new_key = Some(key);
            }
        }
        set.insert("email", email.as_str());
    }
    if let Some(name) = &patch.name {
        set.insert("name", name.as_str());
    }
    if let Some(group) = patch.group {
        set.insert("group", group);
    }
    if let Some(extra) = &patch.extra {
        set.insert("extra", extra.to_json());
    }
    if let Some(admin) = patch.admin {
        set.insert("admin", admin);
    }
    if let Some(hash) = &patch.password_hash {
        set.insert("password_hash", hash.as_str());
    }
    if set.is_empty() {
        return get_user(c, id).await;
    }
    let updated = c
        .users
        .find_one_and_update(doc! { "_id": uuid(id) }, doc! { "$set": set })
        .projection(without_hash())
        .return_document(ReturnDocument::After)
        .await;
    let updated = match updated {
        Ok(updated) => updated,
        Err(e) if is_duplicate(&e) => {
            if let Some(key) = &new_key {
                release_look(c, key, id).await?;
            }
            return Err(Error::Conflict("email already registered".into()));
        }
        Err(e) => return Err(op("update a user")(e)),
    };
    let Some(updated) = updated else {
        if let Some(key) = &new_key {
            release_look(c, key, id).await?;
        }
        return Err(Error::not_found("user"));
    };
    let user = user_from(&updated)?;
    if new_key.is_some() {
        // The old look is free again.
        let current = look_alike_key(&user.email);
        c.email_keys
            .delete_many(doc! { "user_id": uuid(id), "_id": { "$ne": current } })
            .await
            .map_err(op("release an address"))?;
    }
    Ok(user)
}

/// Removes the user, then what was theirs. The user goes first: a write racing the deletion
/// checks its owner after writing, so it either sees the user gone (and undoes itself) or was
/// written before the cleanup below, which removes it.
pub(super) async fn delete_user(c: &Collections, id: Uuid) -> Result<()> {
    let deleted = c
        .users
        .delete_one(doc! { "_id": uuid(id) })
        .await
        .map_err(op("delete a user"))?
        .deleted_count;
    // Also when the user was gone already: a deletion cut short by a crash finishes here.
    let owned = doc! { "user_id": uuid(id) };
    c.email_keys
        .delete_many(owned.clone())
        .await
        .map_err(op("delete a user's addresses"))?;
    c.items
        .delete_many(owned.clone())
        .await
        .map_err(op("delete a user's items"))?;
    c.tokens
        .delete_many(owned.clone())
        .await
        .map_err(op("delete a user's tokens"))?;
    c.jobs
        .delete_many(owned)
        .await
        .map_err(op("delete a user's jobs"))?;
    if deleted == 0 {
        return Err(Error::not_found("user"));
    }
    Ok(())
}

/// Fails with `Unauthorized` when the user does not exist: a write by an account deleted a moment
/// ago (whose token a node still trusted) must not leave documents nobody owns.
pub(super) async fn require_user(c: &Collections, user_id: Uuid) -> Result<()> {
    let found = c
        .users
        .find_one(doc! { "_id": uuid(user_id) })
        .projection(doc! { "_id": 1 })
        .await
        .map_err(op("read a user"))?;
    match found {
        Some(_) => Ok(()),
        None => Err(Error::Unauthorized("this account no longer exists".into())),
    }
}

pub(super) async fn sample_user_ids(c: &Collections, limit: u32) -> Result<Vec<Uuid>> {
    use futures::TryStreamExt;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let docs: Vec<Document> = c
        .users
        .find(doc! {})
        .projection(doc! { "_id": 1 })
        .limit(i64::from(limit))
        .await
        .map_err(op("read user ids"))?
        .try_collect()
        .await
        .map_err(op("read user ids"))?;
    docs.iter()
        .map(|d| Fields::of("user", d).uuid("_id").map_err(Into::into))
        .collect()
}

/// Claims the look `key` for `user_id`; `Conflict` when another account holds it.
async fn claim_look(c: &Collections, key: &str, user_id: Uuid) -> Result<()> {
    let claim = doc! { "_id": key, "user_id": uuid(user_id), "at": now() };
    match c.email_keys.insert_one(claim.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) if is_duplicate(&e) => {}
        Err(e) => return Err(op("claim an address")(e)),
    }
    let held = c
        .email_keys
        .find_one(doc! { "_id": key })
        .await
        .map_err(op("read an address"))?;
    let Some(held) = held else {
        // Released in the meantime: try once more.
        return match c.email_keys.insert_one(claim).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(looks_taken()),
            Err(e) => Err(op("claim an address")(e)),
        };
    };
    let f = Fields::of("address", &held);
    let owner = f.uuid("user_id")?;
    if owner == user_id {
        return Ok(()); // a redelivered insert, or a retry
    }
    let at = f.time("at")?;
    if Utc::now() - at < STALE_CLAIM || owner_holds(c, owner, key).await? {
        return Err(looks_taken());
    }
    // The owner does not hold this look (it died before writing itself): take it over, only if
    // nobody else did first.
    let taken = c
        .email_keys
        .replace_one(doc! { "_id": key, "user_id": uuid(owner) }, claim)
        .await
        .map_err(op("claim an address"))?;
    if taken.modified_count == 1 {
        Ok(())
    } else {
        Err(looks_taken())
    }
}

/// Whether `owner` exists and its address has the look `key`.
async fn owner_holds(c: &Collections, owner: Uuid, key: &str) -> Result<bool> {
    Ok(find_user(c, owner)
        .await?
        .is_some_and(|u| look_alike_key(&u.email) == key))
}

/// Gives up a claim made for a write that did not happen.
async fn release_look(c: &Collections, key: &str, user_id: Uuid) -> Result<()> {
    c.email_keys
        .delete_one(doc! { "_id": key, "user_id": uuid(user_id) })
        .await
        .map_err(op("release an address"))?;
    Ok(())
}

fn looks_taken() -> Error {
    Error::Conflict("an address that looks like this one is already registered".into())
}

pub(super) async fn insert_token(
    c: &Collections,
    hash: TokenHash,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    c.tokens
        .insert_one(doc! {
            "_id": token(&hash),
            "user_id": uuid(user_id),
            "expires_at": time(expires_at),
        })
        .await
        .map_err(op("store a token"))?;
    Ok(())
}

/// The token's owner if the token exists and has not expired (checked here: MongoDB removes
/// expired documents only about once a minute).
pub(super) async fn get_session(
    c: &Collections,
    hash: TokenHash,
) -> Result<Option<(Principal, DateTime<Utc>)>> {
    let found = c
        .tokens
        .find_one(doc! { "_id": token(&hash), "expires_at": { "$gt": now() } })
        .await
        .map_err(op("read a token"))?;
    let Some(found) = found else {
        return Ok(None);
    };
    let f = Fields::of("token", &found);
    let (user_id, expires_at) = (f.uuid("user_id")?, f.time("expires_at")?);
    let owner = c
        .users
        .find_one(doc! { "_id": uuid(user_id) })
        .projection(doc! { "admin": 1 })
        .await
        .map_err(op("read a user"))?;
    let Some(owner) = owner else {
        return Ok(None);
    };
    let admin = Fields::of("user", &owner).bool("admin")?;
    Ok(Some((Principal { user_id, admin }, expires_at)))
}

pub(super) async fn delete_token(c: &Collections, hash: TokenHash) -> Result<Option<Uuid>> {
    let deleted = c
        .tokens
        .find_one_and_delete(doc! { "_id": token(&hash) })
        .await
        .map_err(op("delete a token"))?;
    Ok(deleted
        .as_ref()
        .map(|d| Fields::of("token", d).uuid("user_id"))
        .transpose()?)
}

pub(super) async fn revoke_sessions(
    c: &Collections,
    user_id: Uuid,
    keep: Option<TokenHash>,
) -> Result<u64> {
    let mut filter = doc! { "user_id": uuid(user_id) };
    if let Some(keep) = keep {
        filter.insert("_id", doc! { "$ne": token(&keep) });
    }
    Ok(c.tokens
        .delete_many(filter)
        .await
        .map_err(op("revoke sessions"))?
        .deleted_count)
}
