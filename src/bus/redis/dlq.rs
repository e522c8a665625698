//! Dead letters: list, replay, delete and purge a queue's `dlq:{queue}`. One implementation for
//! both of their users: `gorgon dlq` (`main.rs`, with `--redis`) and the admin API
//! (`http/queues.rs`, which `gorgon dlq --api` and `/dashboard` call). These take plain
//! arguments and print nothing.
//!
//! A dead letter is addressed by its **id**: the first 128 bits of the SHA-256 of its record,
//! in hex. A record holds the queue, the reason, the time and the message, so the id is stable
//! for as long as the record is in the list, whatever is pushed or removed around it (a position
//! is not), and the same message dead-lettered twice gets two ids.
//!
//! What is shown of a dead letter ([`DeadLetterView`]) never holds a secret: requests that carry
//! a password are never written to a list at all (see `consumer::dead_letter`), and the fields
//! of a message that could hold a credential or its hash (a password hash, a token's hash, a
//! signature) are shown as `"[redacted]"`. The record as stored is read only by `--raw`, through
//! Redis itself.

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;
use utoipa::ToSchema;
use uuid::Uuid;

use super::envelope::{DeadLetter, RawEnvelope};
use super::Keys;

/// What can go wrong with a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no dead letter {id} in queue {queue}")]
    NotFound { queue: String, id: String },
    #[error("dead letter {id} holds no message (its bytes were not an envelope): delete it, it cannot be replayed")]
    NotReplayable { id: String },
}

fn not_found(queue: &str, id: &str) -> DlqError {
    DlqError::NotFound {
        queue: queue.to_string(),
        id: id.to_string(),
    }
}

impl From<DlqError> for crate::error::Error {
    fn from(e: DlqError) -> Self {
        use crate::error::Error;
        match e {
            DlqError::Redis(source) => {
                tracing::warn!(error = %source, "a dead-letter command failed");
                Error::Unavailable(
                    "the message bus (Redis) is unreachable; try again shortly".into(),
                )
            }
            e @ DlqError::NotFound { .. } => Error::NotFound(e.to_string()),
            e @ DlqError::NotReplayable { .. } => Error::Conflict(e.to_string()),
        }
    }
}

/// A connection for the tools (no background tasks).
pub async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = super::open_client(url)?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis: {e}"))
}

/// Whether `name` can be a queue's name: 1 to 100 letters, digits, `.`, `_` or `-`.
pub fn valid_queue(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A dead letter as the API and `gorgon dlq list` show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    /// Stable address of this dead letter (for replay and delete): 32 hex digits.
    pub id: String,
    pub queue: String,
    /// Why it died (the last error, the consumer's death, or why the bytes are no message).
    pub reason: String,
    /// When it was dead-lettered (absent when the record itself is unreadable).
    pub failed_at: Option<DateTime<Utc>>,
    /// Deliveries made (0 when the bytes were not an envelope).
    pub attempts: u32,
    /// The request kind (`insert_item`, …), when the bytes were an envelope.
    pub kind: Option<String>,
    /// The message's own id (its correlation id).
    pub message_id: Option<Uuid>,
    /// When the message was first queued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// The request, with every field that could hold a credential shown as `"[redacted]"`.
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// Bytes that were no message: their first 200 characters, as text.
    pub raw: Option<String>,
    /// Whether replaying puts it back on its queue (false for bytes that were no message).
    pub replayable: bool,
}

/// A page of a queue's dead letters, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    pub queue: String,
    /// Dead letters of the queue, in all.
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub dead_letters: Vec<DeadLetterView>,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// Messages put back on their queue as first deliveries.
    pub requeued: usize,
    /// Dead letters that hold no envelope (garbage): left in the list, for a human to look at.
    pub kept: usize,
    /// Dead letters of the queue left afterwards (the kept ones included).
    pub left: u64,
}

/// The stable id of a record (see the module's documentation).
pub fn letter_id(record: &[u8]) -> String {
    hex::encode(&Sha256::digest(record)[..16])
}

/// Puts a dead message back on its queue only if it is still in the dead-letter list, so two
/// replays at once never queue it twice. KEYS: dead-letter list, queue. ARGV: record, message.
static REPLAY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
",
    )
});

/// A queue's dead letters `offset..offset + limit`, oldest first, as stored, and how many there
/// are. Counted from the oldest, so a page stays put while new dead letters arrive.
pub async fn records<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    offset: u64,
    limit: u64,
) -> redis::RedisResult<(u64, Vec<Vec<u8>>)> {
    let key = keys.dead(queue);
    if limit == 0 {
        let total: u64 = redis::cmd("LLEN").arg(&key).query_async(conn).await?;
        return Ok((total, Vec::new()));
    }
    // Dead letters are pushed on the left: the oldest are at the right end.
    let end = -1 - offset.min(i64::MAX as u64 / 2) as i64;
    let start = end - (limit.min(i64::MAX as u64 / 2) as i64) + 1;
    let (total, mut records): (u64, Vec<Vec<u8>>) = redis::pipe()
        .atomic()
        .cmd("LLEN")
        .arg(&key)
        .cmd("LRANGE")
        .arg(&key)
        .arg(start)
        .arg(end)
        .query_async(conn)
        .await?;
    records.reverse();
    Ok((total, records))
}

/// Up to `limit` dead letters of `queue`, oldest first, as stored (JSON text): `gorgon dlq list
/// --raw`.
pub async fn list<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    let (_, records) = records(conn, keys, queue, 0, limit.max(1) as u64).await?;
    Ok(records
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r).into_owned())
        .collect())
}

/// A page of `queue`'s dead letters as shown to people, oldest first.
pub async fn page<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    offset: u64,
    limit: u64,
) -> redis::RedisResult<DeadLetterPage> {
    let (total, records) = records(conn, keys, queue, offset, limit).await?;
    Ok(DeadLetterPage {
        queue: queue.to_string(),
        total,
        offset,
        limit,
        dead_letters: records.iter().map(|r| view(queue, r)).collect(),
    })
}

/// The record with id `id` in `queue`'s dead letters, looked for oldest first.
async fn find<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    id: &str,
) -> Result<Vec<u8>, DlqError> {
    const CHUNK: u64 = 256;
    let mut offset = 0;
    loop {
        let (total, records) = records(conn, keys, queue, offset, CHUNK).await?;
        if let Some(record) = records.into_iter().find(|r| letter_id(r) == id) {
            return Ok(record);
        }
        offset += CHUNK;
        if offset >= total {
            return Err(not_found(queue, id));
        }
    }
}

/// The envelope a dead-letter record holds, if it holds one.
fn envelope_of(record: &[u8]) -> Option<RawEnvelope> {
    let letter = serde_json::from_slice::<DeadLetter>(record).ok()?;
    RawEnvelope::decode(letter.message.as_bytes()).ok()
}

/// Moves `record` back to `queue` as a first delivery; false when it was no longer there.
async fn requeue<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    record: &[u8],
    envelope: &RawEnvelope,
) -> redis::RedisResult<bool> {
    let moved: i64 = REPLAY
        .key(keys.dead(queue))
        .key(keys.queue(queue))
        .arg(record)
        .arg(envelope.fresh())
        .invoke_async(conn)
        .await?;
    Ok(moved == 1)
}

/// Puts the dead letter `id` back on its queue as a first delivery.
pub async fn replay_one<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    id: &str,
) -> Result<(), DlqError> {
    let record = find(conn, keys, queue, id).await?;
    let envelope = envelope_of(&record).ok_or_else(|| DlqError::NotReplayable { id: id.into() })?;
    if requeue(conn, keys, queue, &record, &envelope).await? {
        Ok(())
    } else {
        // Replayed or deleted by someone else meanwhile.
        Err(not_found(queue, id))
    }
}

/// Puts up to `limit` dead messages back on their queue as first deliveries, oldest first.
pub async fn replay<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    limit: usize,
) -> redis::RedisResult<Replayed> {
    let mut outcome = Replayed::default();
    let dead_key = keys.dead(queue);
    let mut seen = 0;
    while seen < limit {
        // Oldest first; each move is one script, so a crash mid-way loses or doubles nothing,
        // and a message replayed by someone else at the same time is queued once.
        let record: Option<Vec<u8>> = redis::cmd("LINDEX")
            .arg(&dead_key)
            .arg(-1 - outcome.kept as i64)
            .query_async(conn)
            .await?;
        let Some(record) = record else { break };
        seen += 1;
        match envelope_of(&record) {
            Some(envelope) => {
                if requeue(conn, keys, queue, &record, &envelope).await? {
                    outcome.requeued += 1;
                }
            }
            None => outcome.kept += 1,
        }
    }
    outcome.left = redis::cmd("LLEN").arg(&dead_key).query_async(conn).await?;
    Ok(outcome)
}

/// Deletes the dead letter `id`.
pub async fn delete_one<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
    id: &str,
) -> Result<(), DlqError> {
    let record = find(conn, keys, queue, id).await?;
    let removed: i64 = redis::cmd("LREM")
        .arg(keys.dead(queue))
        .arg(-1)
        .arg(&record)
        .query_async(conn)
        .await?;
    if removed == 1 {
        Ok(())
    } else {
        Err(not_found(queue, id))
    }
}

/// Deletes every dead letter of `queue`; returns how many there were.
pub async fn purge<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &str,
) -> redis::RedisResult<usize> {
    let (count, _): (usize, i64) = redis::pipe()
        .atomic()
        .cmd("LLEN")
        .arg(keys.dead(queue))
        .cmd("DEL")
        .arg(keys.dead(queue))
        .query_async(conn)
        .await?;
    Ok(count)
}

/// Most characters of a non-message shown in [`DeadLetterView::raw`].
const RAW_PREVIEW: usize = 200;

/// How a stored record is shown.
pub fn view(queue: &str, record: &[u8]) -> DeadLetterView {
    let id = letter_id(record);
    let Ok(letter) = serde_json::from_slice::<DeadLetter>(record) else {
        // Not written by Gorgon: shown as text, redacted if it is JSON.
        return DeadLetterView {
            id,
            queue: queue.to_string(),
            reason: "the dead-letter record itself is unreadable".into(),
            failed_at: None,
            attempts: 0,
            kind: None,
            message_id: None,
            enqueued_at: None,
            body: None,
            raw: Some(preview(record)),
            replayable: false,
        };
    };
    let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms);
    let mut shown = DeadLetterView {
        id,
        queue: letter.queue,
        reason: letter.reason,
        failed_at: at(letter.failed_at),
        attempts: letter.attempts,
        kind: None,
        message_id: None,
        enqueued_at: None,
        body: None,
        raw: None,
        replayable: false,
    };
    match RawEnvelope::decode(letter.message.as_bytes()) {
        Ok(envelope) => {
            shown.kind = Some(envelope.kind.clone());
            shown.message_id = Some(envelope.id);
            shown.enqueued_at = at(envelope.enqueued_at);
            shown.replayable = true;
            // A request that carries a secret is never stored; should one be, its body is not
            // shown at all.
            if !envelope.secret {
                shown.body = serde_json::from_str::<Value>(envelope.body.get())
                    .ok()
                    .map(redacted);
            }
        }
        Err(_) => shown.raw = Some(preview(letter.message.as_bytes())),
    }
    shown
}

/// The first [`RAW_PREVIEW`] characters of bytes that are no message, redacted if they are JSON.
fn preview(bytes: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(bytes) {
        Ok(json) => redacted(json).to_string(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    text.chars().take(RAW_PREVIEW).collect()
}

/// Names of fields whose values could be a credential or derived from one (a password, its
/// hash, a token or its hash, a signature), compared without case; `hash`, `keep` and `session`
/// are how the store's token requests name a token's hash.
fn is_sensitive(field: &str) -> bool {
    let field = field.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "signature",
        "cookie",
        "authorization",
    ]
    .iter()
    .any(|word| field.contains(word))
        || matches!(field.as_str(), "hash" | "keep" | "session")
}

/// `value` with every sensitive field's value replaced by `"[redacted]"`, at any depth.
pub fn redacted(value: Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| {
                    let value = if is_sensitive(&name) && !value.is_null() {
                        Value::String("[redacted]".into())
                    } else {
                        redacted(value)
                    };
                    (name, value)
                })
                .collect(),
        ),
        Value::Array(values) => Value::Array(values.into_iter().map(redacted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(message: &str) -> Vec<u8> {
        DeadLetter::new("store", message.as_bytes(), 3, "failed 3 times").encode()
    }

    #[test]
    fn credentials_never_show() {
        let message = json!({
            "id": Uuid::now_v7(), "kind": "insert_user", "attempt": 3, "enqueued_at": 1,
            "body": {"InsertUser": {"email": "a@example.com", "password_hash": "$argon2id$v=19$x",
                "nested": [{"Token": "t"}, {"hash": [1, 2]}], "keep": null}}
        })
        .to_string();
        let shown = view("store", &record(&message));
        let text = serde_json::to_string(&shown).expect("json");
        assert!(!text.contains("argon2"), "{text}");
        assert!(text.contains("a@example.com"), "{text}");
        assert_eq!(shown.kind.as_deref(), Some("insert_user"));
        assert_eq!(shown.attempts, 3);
        assert!(shown.replayable);
        let body = shown.body.expect("body");
        assert_eq!(body["InsertUser"]["nested"][0]["Token"], "[redacted]");
        assert_eq!(body["InsertUser"]["nested"][1]["hash"], "[redacted]");
        assert!(body["InsertUser"]["keep"].is_null());
    }

    #[test]
    fn garbage_is_shown_as_text_and_cannot_be_replayed() {
        let shown = view("store", &record("not json at all"));
        assert!(!shown.replayable);
        assert_eq!(shown.raw.as_deref(), Some("not json at all"));
        let long = "x".repeat(1000);
        assert_eq!(
            view("store", long.as_bytes()).raw.map(|r| r.len()),
            Some(200)
        );
        let secret = view("store", &record(r#"{"password":"hunter2"}"#));
        assert!(!secret.raw.expect("raw").contains("hunter2"));
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = record("one");
        assert_eq!(letter_id(&a), letter_id(&a.clone()));
        assert_eq!(letter_id(&a).len(), 32);
        assert_ne!(letter_id(&a), letter_id(&record("two")));
        assert!(valid_queue("store.direct") && valid_queue("provider"));
        assert!(!valid_queue("") && !valid_queue("a b") && !valid_queue("q:x"));
    }
}
