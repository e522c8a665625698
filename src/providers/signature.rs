//! Signing and verifying request bodies with HMAC-SHA256 and a timestamp.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Gorgon-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value signing `body` at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// A signature that verified: its timestamp and its tag (the HMAC, as bytes).
///
/// The tag names one signed request: the same body signed at another second has another tag.
/// Ingest remembers tags until their window ends, so a request is accepted once (a replay of it
/// is refused), whatever way its header spells the hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub timestamp: i64,
    pub tag: Vec<u8>,
}

/// Checks `header` against `body`: a well-formed signature, made with `secret`, at most
/// `window_secs` away from `now`. Every failure is a 401 that says what was wrong.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    window_secs: i64,
) -> Result<Verified> {
    let header =
        header.ok_or_else(|| Error::Unauthorized(format!("missing {SIGNATURE_HEADER} header")))?;
    let (mut timestamp, mut tag) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => tag = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(tag)) = (timestamp, tag) else {
        return Err(Error::Unauthorized(format!(
            "{SIGNATURE_HEADER} must read t=<unix seconds>,v1=<hex HMAC-SHA256>"
        )));
    };
    if (now - timestamp).abs() > window_secs {
        return Err(Error::Unauthorized(format!(
            "signature timestamp is outside the {window_secs} s window (a replay or a wrong clock)"
        )));
    }
    mac(secret, timestamp, body)
        .verify_slice(&tag)
        .map_err(|_| Error::Unauthorized("bad signature".into()))?;
    Ok(Verified { timestamp, tag })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_window() {
        let body = br#"{"items":[]}"#;
        let header = sign(b"s3cret", 1_000, body);
        assert!(verify(b"s3cret", Some(&header), body, 1_010, 300).is_ok());
        assert!(verify(b"other", Some(&header), body, 1_010, 300).is_err());
        assert!(verify(b"s3cret", Some(&header), b"{}", 1_010, 300).is_err());
        assert!(
            verify(b"s3cret", Some(&header), body, 1_400, 300).is_err(),
            "replay"
        );
        assert!(verify(b"s3cret", None, body, 1_010, 300).is_err());
        assert!(verify(b"s3cret", Some("t=1000"), body, 1_010, 300).is_err());
        assert!(verify(b"s3cret", Some("v1=zz,t=x"), body, 1_010, 300).is_err());
    }
}
