//! What travels on a queue: an envelope around a request, a reply frame, a dead-letter record.
//!
//! Everything is JSON, so a dead letter can be read with `redis-cli` and `gorgon dlq list`.
//! Decoding is total: bytes that are not an envelope become an error value (and a dead letter),
//! never a panic.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A request on a queue.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// Unique per request; the correlation id of its reply and the key of idempotent handlers.
    pub id: Uuid,
    /// The request kind (`insert_item`, …), for logs and metrics.
    pub kind: String,
    /// Deliveries so far, this one included (1 on the first).
    pub attempt: u32,
    /// Milliseconds since the Unix epoch.
    pub enqueued_at: i64,
    /// The reply list of the waiting caller; absent for fire-and-forget messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// When the caller stops waiting (ms since the epoch): a direct request past it is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    pub body: B,
}

/// An envelope whose body is still undecoded, as a consumer first sees it.
pub type RawEnvelope = Envelope<Box<RawValue>>;

impl RawEnvelope {
    pub fn decode(bytes: &[u8]) -> Result<RawEnvelope, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a Gorgon envelope: {e}"))
    }

    /// The same message for its next delivery.
    pub fn next_attempt(&self) -> Vec<u8> {
        let next = Envelope {
            id: self.id,
            kind: self.kind.clone(),
            attempt: self.attempt.saturating_add(1),
            enqueued_at: self.enqueued_at,
            reply_to: self.reply_to.clone(),
            deadline: self.deadline,
            body: &self.body,
        };
        serde_json::to_vec(&next).unwrap_or_default()
    }

    /// The same message as a first delivery again (a replay from the dead-letter list).
    pub fn fresh(&self) -> Vec<u8> {
        let fresh = Envelope {
            id: self.id,
            kind: self.kind.clone(),
            attempt: 1,
            enqueued_at: now_ms(),
            reply_to: None,
            deadline: None,
            body: &self.body,
        };
        serde_json::to_vec(&fresh).unwrap_or_default()
    }
}

/// An envelope whose body is already JSON, as bytes (encoded by the bus with the JSON codec).
pub fn encode(envelope: &Envelope<&[u8]>) -> crate::error::Result<Vec<u8>> {
    let failed = |e: serde_json::Error| {
        tracing::error!(kind = %envelope.kind, error = %e, "cannot encode an envelope");
        crate::error::Error::Internal(format!("cannot encode a {} request", envelope.kind))
    };
    let body: &RawValue = serde_json::from_slice(envelope.body).map_err(failed)?;
    serde_json::to_vec(&Envelope {
        id: envelope.id,
        kind: envelope.kind.clone(),
        attempt: envelope.attempt,
        enqueued_at: envelope.enqueued_at,
        reply_to: envelope.reply_to.clone(),
        deadline: envelope.deadline,
        body,
    })
    .map_err(failed)
}

/// A reply on a node's reply list; `result` is the callee's `Result<Reply, Error>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplyFrame<R> {
    pub id: Uuid,
    pub result: R,
}

/// A dead letter: why the message died, and the message as it was.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    pub queue: String,
    pub reason: String,
    pub failed_at: i64,
    /// Deliveries made (0 when the bytes were not an envelope at all).
    pub attempts: u32,
    /// The message bytes as text (lossy when they were not UTF-8).
    pub message: String,
}

impl DeadLetter {
    pub fn new(queue: &str, raw: &[u8], attempts: u32, reason: impl Into<String>) -> DeadLetter {
        DeadLetter {
            queue: queue.to_string(),
            reason: reason.into(),
            failed_at: now_ms(),
            attempts,
            message: String::from_utf8_lossy(raw).into_owned(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(RawEnvelope::decode(b"not json at all").is_err());
        assert!(RawEnvelope::decode(&[0xff, 0xfe, 0x00]).is_err());
        assert!(RawEnvelope::decode(br#"{"id":"nope"}"#).is_err());
    }

    #[test]
    fn a_redelivery_keeps_the_message_and_counts_the_attempt() {
        let first = Envelope {
            id: Uuid::now_v7(),
            kind: "insert_item".into(),
            attempt: 1,
            enqueued_at: 1,
            reply_to: Some("r".into()),
            deadline: Some(2),
            body: serde_json::json!({"InsertItem": {"title": "x"}}),
        };
        let bytes = serde_json::to_vec(&first).expect("encode");
        let raw = RawEnvelope::decode(&bytes).expect("decode");
        let again = RawEnvelope::decode(&raw.next_attempt()).expect("decode again");
        assert_eq!(again.id, first.id);
        assert_eq!(again.attempt, 2);
        assert_eq!(again.body.get(), raw.body.get());
        let replayed = RawEnvelope::decode(&again.fresh()).expect("decode replay");
        assert_eq!((replayed.attempt, replayed.reply_to), (1, None));
    }
}
