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
    /// Carries a secret (a password): a consumer never writes it to a list, not even a
    /// dead-letter list. Absent (false) in the envelopes of earlier builds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
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
            secret: self.secret,
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
            secret: self.secret,
            body: &self.body,
        };
        serde_json::to_vec(&fresh).unwrap_or_default()
    }
}

/// A request on its way to a queue or a consumer, its body already JSON (encoded by the bus
/// with the JSON codec).
pub struct Outbound<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub enqueued_at: i64,
    pub reply_to: Option<&'a str>,
    pub deadline: Option<i64>,
    pub secret: bool,
    pub body: &'a [u8],
}

/// The bytes of a first delivery of `out`: exactly what serde writes for an [`Envelope`] (the
/// same fields in the same order), written directly, since the body is JSON already and need
/// not be parsed again to be embedded.
pub fn encode(out: &Outbound<'_>) -> Vec<u8> {
    debug_assert!(serde_json::from_slice::<&RawValue>(out.body).is_ok());
    let mut bytes = Vec::with_capacity(out.body.len() + 160);
    bytes.extend_from_slice(b"{\"id\":\"");
    bytes.extend_from_slice(
        out.id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    bytes.extend_from_slice(b"\",\"kind\":");
    json_str(&mut bytes, out.kind);
    bytes.extend_from_slice(b",\"attempt\":1,\"enqueued_at\":");
    bytes.extend_from_slice(out.enqueued_at.to_string().as_bytes());
    if let Some(reply_to) = out.reply_to {
        bytes.extend_from_slice(b",\"reply_to\":");
        json_str(&mut bytes, reply_to);
    }
    if let Some(deadline) = out.deadline {
        bytes.extend_from_slice(b",\"deadline\":");
        bytes.extend_from_slice(deadline.to_string().as_bytes());
    }
    if out.secret {
        bytes.extend_from_slice(b",\"secret\":true");
    }
    bytes.extend_from_slice(b",\"body\":");
    bytes.extend_from_slice(out.body);
    bytes.push(b'}');
    bytes
}

/// `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A fresh correlation id: a UUIDv7 for `now_ms`, its random bits from the thread's generator
/// (`Uuid::now_v7` asks the kernel for them, a system call per message).
pub fn new_id(now_ms: i64) -> Uuid {
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(now_ms.max(0) as u64, &random).into_uuid()
}

/// The bytes of a [`ReplyFrame`] around `result` (JSON already), written directly.
pub fn reply_frame(id: Uuid, result: &[u8]) -> Vec<u8> {
    debug_assert!(serde_json::from_slice::<&RawValue>(result).is_ok());
    let mut bytes = Vec::with_capacity(result.len() + 60);
    bytes.extend_from_slice(b"{\"id\":\"");
    bytes.extend_from_slice(
        id.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    bytes.extend_from_slice(b"\",\"result\":");
    bytes.extend_from_slice(result);
    bytes.push(b'}');
    bytes
}

/// A reply frame's correlation id and its `result` (as JSON bytes). Frames written by
/// [`reply_frame`] are split without parsing the result; anything else is parsed.
pub fn split_reply(frame: &[u8]) -> Result<(Uuid, Vec<u8>), serde_json::Error> {
    const HEAD: &[u8] = b"{\"id\":\"";
    const MID: &[u8] = b"\",\"result\":";
    let id_end = HEAD.len() + 36;
    if frame.len() > id_end + MID.len()
        && frame.starts_with(HEAD)
        && frame[id_end..].starts_with(MID)
        && frame.ends_with(b"}")
    {
        if let Ok(id) = Uuid::try_parse_ascii(&frame[HEAD.len()..id_end]) {
            return Ok((id, frame[id_end + MID.len()..frame.len() - 1].to_vec()));
        }
    }
    let parsed: ReplyFrame<Box<RawValue>> = serde_json::from_slice(frame)?;
    Ok((parsed.id, parsed.result.get().as_bytes().to_vec()))
}

/// A reply on a node's reply list; `result` is the callee's `Result<Reply, Error>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplyFrame<R> {
    pub id: Uuid,
    pub result: R,
}

/// Several messages as one pub/sub message (on the `rb:`/`db:` channels): a version byte, then
/// each message as its length (4 bytes, big-endian) and its bytes.
pub fn pack<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut packed = vec![PACK_VERSION];
    for message in messages {
        packed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        packed.extend_from_slice(message);
    }
    packed
}

/// The messages of a [`pack`]; `None` when the bytes are not one (nothing is taken from it).
pub fn unpack(packed: &[u8]) -> Option<Vec<&[u8]>> {
    let (&version, mut rest) = packed.split_first()?;
    if version != PACK_VERSION {
        return None;
    }
    let mut messages = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        let (message, tail) = tail.split_at(len);
        messages.push(message);
        rest = tail;
    }
    Some(messages)
}

const PACK_VERSION: u8 = 1;

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
    fn written_directly_as_serde_would() {
        let id = new_id(now_ms());
        let body = br#"{"GetItem":{"id":"a\"b"}}"#;
        for (reply_to, deadline, secret) in [
            (Some("gorgon:x:r:n\"1"), Some(7), true),
            (Some("gorgon:x:r:n"), Some(7), false),
            (None, None, false),
        ] {
            let direct = encode(&Outbound {
                id,
                kind: "get_item",
                enqueued_at: 5,
                reply_to,
                deadline,
                secret,
                body,
            });
            let body: &RawValue = serde_json::from_slice(body).expect("body");
            let serde = serde_json::to_vec(&Envelope {
                id,
                kind: "get_item".to_string(),
                attempt: 1,
                enqueued_at: 5,
                reply_to: reply_to.map(str::to_string),
                deadline,
                secret,
                body,
            })
            .expect("encode");
            assert_eq!(
                String::from_utf8(direct).expect("utf-8"),
                String::from_utf8(serde).expect("utf-8")
            );
        }
        let result = br#"{"Ok":[1,"}"]}"#;
        let frame = reply_frame(id, result);
        let serde = serde_json::to_vec(&ReplyFrame {
            id,
            result: serde_json::from_slice::<&RawValue>(result).expect("result"),
        })
        .expect("frame");
        assert_eq!(frame, serde);
        assert_eq!(split_reply(&frame).expect("split"), (id, result.to_vec()));
        // A frame written otherwise (fields reordered, spaces) is parsed.
        let other = format!(r#"{{ "result": {{"Ok":1}}, "id": "{id}" }}"#);
        assert_eq!(
            split_reply(other.as_bytes()).expect("parsed"),
            (id, br#"{"Ok":1}"#.to_vec())
        );
        assert!(split_reply(b"garbage").is_err());
        // Ids are v7, time-ordered by millisecond.
        assert_eq!(id.get_version_num(), 7);
        assert!(new_id(now_ms() + 10) > id);
    }

    #[test]
    fn packed_messages_come_apart_as_they_went_in() {
        let messages: [&[u8]; 3] = [b"{\"a\":1}", b"", b"{\"b\":[2]}"];
        let packed = pack(messages);
        assert_eq!(unpack(&packed), Some(messages.to_vec()));
        assert_eq!(unpack(&pack([])), Some(Vec::new()));
        // Truncated, another version, or not packed at all: refused whole.
        assert_eq!(unpack(&packed[..packed.len() - 1]), None);
        assert_eq!(unpack(&packed[..3]), None);
        assert_eq!(unpack(b"{\"id\":1}"), None);
        assert_eq!(unpack(b""), None);
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
            secret: false,
            body: serde_json::json!({"InsertItem": {"title": "x"}}),
        };
        assert!(
            !String::from_utf8(serde_json::to_vec(&first).expect("encode"))
                .expect("utf-8")
                .contains("secret")
        );
        let bytes = serde_json::to_vec(&first).expect("encode");
        let raw = RawEnvelope::decode(&bytes).expect("decode");
        let again = RawEnvelope::decode(&raw.next_attempt()).expect("decode again");
        assert_eq!(again.id, first.id);
        assert_eq!(again.attempt, 2);
        assert_eq!(again.body.get(), raw.body.get());
        let replayed = RawEnvelope::decode(&again.fresh()).expect("decode replay");
        assert_eq!((replayed.attempt, replayed.reply_to), (1, None));
    }

    #[test]
    fn an_envelope_of_an_earlier_build_carries_no_secret() {
        let earlier = br#"{"id":"0190f5d6-4d2a-7c3e-9a1b-2c3d4e5f6a7b","kind":"get_item","attempt":1,"enqueued_at":5,"body":{}}"#;
        assert!(!RawEnvelope::decode(earlier).expect("decode").secret);
    }
}
