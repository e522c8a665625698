//! Opaque bearer tokens: 32 random bytes shown once to the client, stored only as a SHA-256 hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};

const TOKEN_BYTES: usize = 32;

/// A bearer token as the client holds it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Token(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts only the shape `generate` produces, so junk never reaches the store.
    pub fn parse(value: &str) -> Result<Self> {
        match URL_SAFE_NO_PAD.decode(value.as_bytes()) {
            Ok(bytes) if bytes.len() == TOKEN_BYTES => Ok(Token(value.to_string())),
            _ => Err(Error::Unauthorized("invalid token".into())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// What the store keeps of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

/// Who is making a request, once their token has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub user_id: Uuid,
    pub admin: bool,
}

impl Principal {
    /// Self or admin may manage a user.
    pub fn may_manage(&self, user_id: Uuid) -> bool {
        self.admin || self.user_id == user_id
    }
}
