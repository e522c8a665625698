//! The built-in `hash` job: the SHA-256 of the payload.
//!
//! The bytes hashed are the payload's canonical JSON: no whitespace, object keys sorted
//! (recursively), strings and numbers written as `serde_json` writes them. A client computes the
//! same digest from the same JSON whatever key order or spacing it sent.
//!
//! `--job-hash-delay` makes each run wait first: slow work on demand, for demos and the
//! crash-resume test.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{JobError, JobHandler};

#[derive(Debug, Clone, Copy, Default)]
pub struct HashJob {
    /// How long each run waits before hashing.
    pub delay: Duration,
}

#[async_trait::async_trait]
impl JobHandler for HashJob {
    fn kind(&self) -> &'static str {
        "hash"
    }

    async fn run(&self, payload: &serde_json::Value) -> Result<serde_json::Value, JobError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let bytes = canonical_json(payload);
        Ok(serde_json::json!({ "sha256": hex::encode(Sha256::digest(bytes)) }))
    }
}

/// `value` as canonical JSON bytes (see the module docs).
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            // Sorted here rather than trusting the map's order, which a serde_json feature
            // (preserve_order) enabled by any dependency would change.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (n, (key, item)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &serde_json::Value, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_drops_spaces() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": [1, {"d": 2, "c": "x"}], "a": null}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&a)).unwrap(),
            r#"{"a":null,"b":[1,{"c":"x","d":2}]}"#
        );
    }
}
