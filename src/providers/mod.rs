//! External providers: signed ingest of items from outside (`POST /api/v1/providers/{name}/ingest`)
//! and signed outbound webhooks of item events. The provider role (`actors/provider.rs`) runs both.
//!
//! Both directions sign the same way, so one verifier serves either side: the header
//! `X-Gorgon-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the shared
//! secret. The timestamp bounds replays: a signature older (or newer) than the window is refused;
//! within the window the store remembers each ingest signature it accepted (until the window
//! ends), so the same signed request is stored once and its replays get a 409, on every node.

pub mod ingest;
pub mod signature;
pub mod webhooks;

pub use signature::{sign, verify, Verified, SIGNATURE_HEADER};

/// A provider name: 1 to 64 of `a-z`, `0-9`, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
