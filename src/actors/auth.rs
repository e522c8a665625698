//! The auth role: registration, login, logout and token validation (cached).
//!
//! Tokens are opaque and stored hashed; a validated token is cached for a short, configurable
//! time so the hot path (every authenticated request) usually costs no store round trip. Logout
//! removes the token from the store and from the cache shared by this node's auth instances.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{store, unexpected, RoleHandler};
use crate::bus::{Bus, Delivery, Protocol, Role};
use crate::domain::password::{self, Password};
use crate::domain::{NewUser, Principal, Token, TokenHash, User, UserInput};
use crate::error::{Error, Result};

/// Requests the auth role answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum AuthRequest {
    /// `id` is chosen by the caller, so a redelivered registration creates nothing twice.
    Register {
        id: Uuid,
        input: UserInput,
    },
    Login {
        email: String,
        password: String,
    },
    Logout {
        token: Token,
    },
    Validate {
        token: Token,
    },
}

/// A fresh session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub token: Token,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AuthReply {
    Registered(User),
    LoggedIn(Session),
    LoggedOut,
    Valid(Principal),
}

pub struct AuthProtocol;

impl Protocol for AuthProtocol {
    const ROLE: Role = Role::Auth;
    type Request = AuthRequest;
    type Reply = AuthReply;

    fn kind(request: &AuthRequest) -> &'static str {
        match request {
            AuthRequest::Register { .. } => "register",
            AuthRequest::Login { .. } => "login",
            AuthRequest::Logout { .. } => "logout",
            AuthRequest::Validate { .. } => "validate",
        }
    }

    fn delivery(request: &AuthRequest) -> Delivery {
        match request {
            AuthRequest::Validate { .. } => Delivery::Direct,
            _ => Delivery::Durable,
        }
    }
}

/// Tunables of the auth role.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub token_ttl: Duration,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// Login attempts allowed per email per minute (with the same burst).
    pub login_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: Duration::from_secs(24 * 3600),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            login_per_minute: 10,
        }
    }
}

/// What every auth instance of a node shares: the token cache and the login limiter.
#[derive(Clone)]
pub struct AuthShared {
    config: AuthConfig,
    cache: Cache<TokenHash, (Principal, DateTime<Utc>)>,
    login_limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl AuthShared {
    pub fn new(config: AuthConfig) -> Self {
        let per_minute = NonZeroU32::new(config.login_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        AuthShared {
            cache: Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.cache_ttl)
                .build(),
            login_limiter: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))),
            config,
        }
    }
}

/// The auth role's handler.
pub struct AuthHandler {
    pub bus: Bus,
    pub shared: AuthShared,
}

impl RoleHandler for AuthHandler {
    type Protocol = AuthProtocol;

    /// The hot path: a cached token is answered without a task or a store round trip.
    fn answer_now(
        &self,
        request: AuthRequest,
    ) -> std::result::Result<Result<AuthReply>, AuthRequest> {
        if let AuthRequest::Validate { token } = &request {
            if let Some((principal, expires_at)) = self.shared.cache.get(&token.hash()) {
                if expires_at > Utc::now() {
                    return Ok(Ok(AuthReply::Valid(principal)));
                }
            }
        }
        Err(request)
    }

    async fn handle(self: Arc<Self>, request: AuthRequest) -> Result<AuthReply> {
        execute(&self.bus, &self.shared, request).await
    }
}

/// Turns a validated registration into a storable user (hashing on the blocking pool).
pub async fn new_user(id: Uuid, input: UserInput) -> Result<NewUser> {
    let hash = password::hash(Password::parse(&input.password)?).await?;
    Ok(NewUser {
        id,
        name: input.name,
        email: input.email,
        group: input.group,
        admin: input.admin,
        extra: input.extra,
        password_hash: hash,
        created_at: crate::domain::now(),
    })
}

async fn execute(bus: &Bus, shared: &AuthShared, request: AuthRequest) -> Result<AuthReply> {
    match request {
        AuthRequest::Register { id, mut input } => {
            // Self-registration never grants admin.
            input.admin = false;
            let user = store::insert_user(bus, new_user(id, input).await?).await?;
            Ok(AuthReply::Registered(user))
        }
        AuthRequest::Login { email, password } => {
            let email = email.trim().to_lowercase();
            if shared.login_limiter.check_key(&email).is_err() {
                metrics::counter!("gorgon_auth_login_total", "outcome" => "rate_limited")
                    .increment(1);
                return Err(Error::rate_limited(
                    "too many login attempts for this account; try again later",
                    Duration::from_secs(60),
                ));
            }
            let denied = || Error::Unauthorized("invalid email or password".into());
            let (user, hash) = match store::get_credentials(bus, email).await {
                Ok(found) => found,
                Err(Error::NotFound(_)) => {
                    metrics::counter!("gorgon_auth_login_total", "outcome" => "denied")
                        .increment(1);
                    return Err(denied());
                }
                Err(e) => return Err(e),
            };
            if !password::verify(password, hash).await {
                metrics::counter!("gorgon_auth_login_total", "outcome" => "denied").increment(1);
                return Err(denied());
            }
            let token = Token::generate();
            let expires_at = crate::domain::now()
                + chrono::Duration::from_std(shared.config.token_ttl)
                    .unwrap_or(chrono::Duration::hours(24));
            store::insert_token(bus, token.hash(), user.id, expires_at).await?;
            metrics::counter!("gorgon_auth_login_total", "outcome" => "ok").increment(1);
            Ok(AuthReply::LoggedIn(Session {
                token,
                expires_at,
                user,
            }))
        }
        AuthRequest::Logout { token } => {
            let hash = token.hash();
            shared.cache.invalidate(&hash);
            store::delete_token(bus, hash).await?;
            Ok(AuthReply::LoggedOut)
        }
        AuthRequest::Validate { token } => {
            let hash = token.hash();
            match store::get_session(bus, hash).await? {
                Some((principal, expires_at)) => {
                    shared.cache.insert(hash, (principal, expires_at));
                    Ok(AuthReply::Valid(principal))
                }
                None => Err(Error::Unauthorized("unknown or expired token".into())),
            }
        }
    }
}

// ---- typed client -------------------------------------------------------------------------

pub async fn register(bus: &Bus, input: UserInput) -> Result<User> {
    match bus
        .call::<AuthProtocol>(AuthRequest::Register {
            id: crate::domain::new_id(),
            input,
        })
        .await?
    {
        AuthReply::Registered(user) => Ok(user),
        _ => Err(unexpected("auth", "register")),
    }
}

pub async fn login(bus: &Bus, email: String, password: String) -> Result<Session> {
    match bus
        .call::<AuthProtocol>(AuthRequest::Login { email, password })
        .await?
    {
        AuthReply::LoggedIn(session) => Ok(session),
        _ => Err(unexpected("auth", "login")),
    }
}

pub async fn logout(bus: &Bus, token: Token) -> Result<()> {
    match bus
        .call::<AuthProtocol>(AuthRequest::Logout { token })
        .await?
    {
        AuthReply::LoggedOut => Ok(()),
        _ => Err(unexpected("auth", "logout")),
    }
}

pub async fn validate(bus: &Bus, token: Token) -> Result<Principal> {
    match bus
        .call::<AuthProtocol>(AuthRequest::Validate { token })
        .await?
    {
        AuthReply::Valid(principal) => Ok(principal),
        _ => Err(unexpected("auth", "validate")),
    }
}
