//! The auth role: registration, login, logout and token validation (cached).
//!
//! Tokens are opaque and stored hashed; a validated token is cached for a short, configurable
//! time so the hot path (every authenticated request) usually costs no store round trip. Any
//! change to an account (rights, password, deletion, a logout) is published by the store as a
//! `user.changed` event, and every node's auth role then asks the store again for that user's
//! tokens. Logins are limited per client address and per account (see [`check`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::store::{DeleteToken, GetCredentials, GetSession, InsertToken, InsertUser};
use super::{RoleContext, Spawned};
use crate::bus::{Bus, EventKind, Handler, Service};
use crate::domain::password::{self, Password, MAX_PASSWORD_CHARS};
use crate::domain::user::{normalise_email, MAX_EMAIL_BYTES};
use crate::domain::{NewUser, Principal, Token, TokenHash, User, UserInput};
use crate::error::{Error, Result};
use crate::throttle::Throttle;

crate::requests! {
    role Auth, call AuthCall;
    Register => "register", secret, User;
    Login => "login", secret, Session;
    CheckPassword => "check_password", secret, ();
    Logout => "logout", durable, ();
    Validate => "validate", direct, Principal;
}

/// Creates an account. Carries the password, so it is a direct request that is never queued;
/// the store gets only its argon2id hash. `id` is chosen by the caller.
#[derive(Debug, Serialize, Deserialize)]
pub struct Register {
    pub id: Uuid,
    /// `Debug` shows no password.
    pub input: UserInput,
    /// The client's address, for the per-address registration limit (absent for callers that
    /// are not HTTP clients).
    #[serde(default)]
    pub client: Option<IpAddr>,
}

/// Opens a session: at most once (a client retries a failed login), never queued.
#[derive(Serialize, Deserialize)]
pub struct Login {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub client: Option<IpAddr>,
}

/// A password check without a new session (a user confirming their current password), within
/// the same limits as a login.
#[derive(Serialize, Deserialize)]
pub struct CheckPassword {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub client: Option<IpAddr>,
}

macro_rules! redacted_debug {
    ($($request:ident),+) => {$(
        impl std::fmt::Debug for $request {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($request))
                    .field("email", &self.email)
                    .field("password", &"***")
                    .field("client", &self.client)
                    .finish()
            }
        }
    )+};
}
redacted_debug!(Login, CheckPassword);

/// Ends the session of a token, named by its hash (a token is never queued).
#[derive(Debug, Serialize, Deserialize)]
#[serde(from = "TokenOrHash")]
pub struct Logout {
    pub hash: TokenHash,
}

/// Who holds the token of this hash; cached for a short time.
#[derive(Debug, Serialize, Deserialize)]
#[serde(from = "TokenOrHash")]
pub struct Validate {
    pub hash: TokenHash,
}

/// How a token is named on the wire: by its hash, or (in messages queued by earlier builds,
/// which carried the token itself) by the token, hashed on arrival.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenOrHash {
    Hash { hash: TokenHash },
    Token { token: Token },
}

impl TokenOrHash {
    fn hash(self) -> TokenHash {
        match self {
            TokenOrHash::Hash { hash } => hash,
            TokenOrHash::Token { token } => token.hash(),
        }
    }
}

impl From<TokenOrHash> for Logout {
    fn from(wire: TokenOrHash) -> Self {
        Logout { hash: wire.hash() }
    }
}

impl From<TokenOrHash> for Validate {
    fn from(wire: TokenOrHash) -> Self {
        Validate { hash: wire.hash() }
    }
}

impl Validate {
    pub fn token(token: &Token) -> Validate {
        Validate { hash: token.hash() }
    }
}

/// A fresh session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub token: Token,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

/// Tunables of the auth role.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub token_ttl: Duration,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// Wrong passwords per account per `login_window` before clients that never signed in to it
    /// are refused (429) until the window closes.
    pub login_failures: u32,
    /// Login attempts per client address per `login_window`, whatever the account.
    pub login_per_address: u32,
    pub login_window: Duration,
    /// Registrations per client address per `register_window`.
    pub register_per_address: u32,
    pub register_window: Duration,
    /// Accounts, addresses and (account, address) pairs the limiters remember, each.
    pub limiter_capacity: u64,
    /// How long an address that signed in to an account stays "known" to it.
    pub known_client_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: Duration::from_secs(24 * 3600),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            login_failures: 10,
            login_per_address: 60,
            login_window: Duration::from_secs(60),
            register_per_address: 1000,
            register_window: Duration::from_secs(3600),
            limiter_capacity: 100_000,
            known_client_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A validated token as cached: who, until when, and when the store said so.
#[derive(Clone, Copy)]
struct Cached {
    principal: Principal,
    expires_at: DateTime<Utc>,
    checked: Instant,
}

/// What every auth instance of a node shares: the token cache and the login limiters.
#[derive(Clone)]
pub struct AuthShared {
    config: AuthConfig,
    cache: Cache<TokenHash, Cached>,
    /// Users whose account changed, with when: a cached token checked before that is stale.
    /// Kept for one cache lifetime, after which every older cache entry has expired anyway.
    changed: Cache<Uuid, Instant>,
    per_address: Throttle<IpAddr>,
    failures: Throttle<String>,
    /// (email, address) pairs that signed in: not locked out by others' wrong passwords.
    known: Cache<(String, IpAddr), ()>,
    registrations: Throttle<IpAddr>,
}

impl AuthShared {
    pub fn new(config: AuthConfig) -> Self {
        let capacity = config.limiter_capacity;
        AuthShared {
            cache: Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.cache_ttl.max(Duration::from_millis(1)))
                .build(),
            changed: Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.cache_ttl.max(Duration::from_millis(1)))
                .build(),
            per_address: Throttle::new(config.login_per_address, config.login_window, capacity),
            failures: Throttle::new(config.login_failures, config.login_window, capacity),
            known: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(config.known_client_ttl.max(Duration::from_secs(1)))
                .build(),
            registrations: Throttle::new(
                config.register_per_address,
                config.register_window,
                capacity,
            ),
            config,
        }
    }

    /// Forgets the cached sessions of every user whose account changes, on this node or (through
    /// the bus's events) any other, for as long as the bus runs.
    pub fn follow_account_changes(&self, bus: &Bus) -> impl std::future::Future<Output = ()> {
        let mut events = bus.subscribe();
        let shared = self.clone();
        async move {
            loop {
                match events.recv().await {
                    Ok(event) if event.kind == EventKind::UserChanged => {
                        shared.forget_user(event.user_id)
                    }
                    Ok(_) => {}
                    // Which changes were missed is unknown: trust nothing cached.
                    Err(broadcast::error::RecvError::Lagged(_)) => shared.cache.invalidate_all(),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }

    /// Makes every token of `user_id` validated up to now be checked with the store again.
    pub fn forget_user(&self, user_id: Uuid) {
        self.changed.insert(user_id, Instant::now());
    }

    fn cached(&self, hash: &TokenHash) -> Option<Principal> {
        let entry = self.cache.get(hash)?;
        let stale = self
            .changed
            .get(&entry.principal.user_id)
            .is_some_and(|changed| changed >= entry.checked);
        if stale || entry.expires_at <= Utc::now() {
            self.cache.invalidate(hash);
            return None;
        }
        Some(entry.principal)
    }
}

/// The auth role's handler.
pub struct AuthHandler {
    pub bus: Bus,
    pub shared: AuthShared,
}

impl Service for AuthHandler {
    const ROLE: crate::bus::Role = crate::bus::Role::Auth;
    type Call = AuthCall;
}

/// Starts the role, with its cache following account changes made on any node.
pub async fn start(ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
    let shared = AuthShared::new(ctx.settings.auth.clone());
    ctx.shutdown.spawn(shared.follow_account_changes(&ctx.bus));
    let bus = ctx.bus.clone();
    ctx.spawn(AuthHandler { bus, shared }).await
}

impl Handler<Validate> for AuthHandler {
    /// The hot path: a cached token is answered without a task or a store round trip.
    fn answer_now(&self, r: Validate) -> std::result::Result<Result<Principal>, Validate> {
        match self.shared.cached(&r.hash) {
            Some(principal) => Ok(Ok(principal)),
            None => Err(r),
        }
    }

    async fn handle(self: Arc<Self>, r: Validate) -> Result<Principal> {
        // Taken before the store is asked: a change that lands meanwhile makes it stale.
        let checked = Instant::now();
        match self.bus.call(GetSession { hash: r.hash }).await? {
            Some((principal, expires_at)) => {
                self.shared.cache.insert(
                    r.hash,
                    Cached {
                        principal,
                        expires_at,
                        checked,
                    },
                );
                Ok(principal)
            }
            None => Err(Error::Unauthorized("unknown or expired token".into())),
        }
    }
}

impl Handler<Register> for AuthHandler {
    async fn handle(self: Arc<Self>, r: Register) -> Result<User> {
        if let Some(address) = r.client {
            if let Err(wait) = self.shared.registrations.hit(&address) {
                metrics::counter!("gorgon_auth_registrations_limited_total").increment(1);
                return Err(Error::rate_limited(
                    "too many registrations from this address; try again later",
                    wait,
                ));
            }
        }
        let mut input = r.input;
        // Self-registration never grants admin.
        input.admin = false;
        let user = new_user(r.id, input).await?;
        self.bus.call(InsertUser(user)).await
    }
}

impl Handler<Login> for AuthHandler {
    async fn handle(self: Arc<Self>, r: Login) -> Result<Session> {
        let (bus, shared) = (&self.bus, &self.shared);
        let user = check(bus, shared, r.email, r.password, r.client).await?;
        let token = Token::generate();
        let expires_at = crate::domain::now()
            + chrono::Duration::from_std(shared.config.token_ttl)
                .unwrap_or(chrono::Duration::hours(24));
        bus.call(InsertToken {
            hash: token.hash(),
            user_id: user.id,
            expires_at,
        })
        .await?;
        login_outcome("ok");
        Ok(Session {
            token,
            expires_at,
            user,
        })
    }
}

impl Handler<CheckPassword> for AuthHandler {
    async fn handle(self: Arc<Self>, r: CheckPassword) -> Result<()> {
        check(&self.bus, &self.shared, r.email, r.password, r.client).await?;
        Ok(())
    }
}

impl Handler<Logout> for AuthHandler {
    async fn handle(self: Arc<Self>, r: Logout) -> Result<()> {
        self.shared.cache.invalidate(&r.hash);
        self.bus.call(DeleteToken { hash: r.hash }).await
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

fn login_outcome(outcome: &'static str) {
    metrics::counter!("gorgon_auth_login_total", "outcome" => outcome).increment(1);
}

/// Checks an email and password, within three limits: attempts per client address; wrong passwords per
/// account, which lock the account for clients that never signed in to it (so a stranger's
/// guesses do not lock its owner out); and the bounded hashing pool. An unknown email costs the
/// same hash as a wrong password.
async fn check(
    bus: &Bus,
    shared: &AuthShared,
    email: String,
    password: String,
    client: Option<IpAddr>,
) -> Result<User> {
    let denied = || Error::Unauthorized("invalid email or password".into());
    if let Some(address) = client {
        if let Err(wait) = shared.per_address.hit(&address) {
            login_outcome("rate_limited");
            return Err(Error::rate_limited(
                "too many login attempts from this address; try again later",
                wait,
            ));
        }
    }
    if email.len() > 4 * MAX_EMAIL_BYTES || password.chars().count() > MAX_PASSWORD_CHARS {
        login_outcome("denied");
        return Err(denied());
    }
    let email = normalise_email(&email);
    if email.len() > MAX_EMAIL_BYTES {
        login_outcome("denied");
        return Err(denied());
    }
    let known = client.is_some_and(|address| shared.known.contains_key(&(email.clone(), address)));
    // An unknown client's attempt counts as a failure up front and is refunded if the password
    // is right: guesses sent all at once are then held to the limit too, not just those after
    // the first answers.
    if !known {
        if let Err(wait) = shared.failures.hit(&email) {
            login_outcome("rate_limited");
            return Err(Error::rate_limited(
                "too many failed logins for this account; try again later",
                wait,
            ));
        }
    }
    let found = match bus
        .call(GetCredentials {
            email: email.clone(),
        })
        .await
    {
        Ok(found) => Ok(Some((found.user, found.password_hash))),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    };
    // An unknown email costs the same hash and counts the same, so neither the time nor the
    // lockout tells which accounts exist.
    let verified = match found {
        Ok(None) => password::verify_nobody(password).await.map(|()| None),
        Ok(Some((user, hash))) => password::verify(password, hash)
            .await
            .map(|right| right.then_some(user)),
        Err(e) => Err(e),
    };
    let user = match verified {
        // The store or the hashing pool could not answer: not a guess.
        Err(e) => {
            if !known {
                shared.failures.refund(&email);
            }
            return Err(e);
        }
        Ok(None) => {
            if known {
                let _ = shared.failures.hit(&email);
            }
            login_outcome("denied");
            return Err(denied());
        }
        Ok(Some(user)) => {
            if !known {
                shared.failures.refund(&email);
            }
            user
        }
    };
    if let Some(address) = client {
        shared.known.insert((email, address), ());
    }
    Ok(user)
}
