//! Password hashing with argon2id.
//!
//! Hashing is deliberately slow (tens of milliseconds), so callers run it on the blocking pool,
//! never on an async worker thread.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

use crate::error::{Error, Result};

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Hashing that failed on our side, with its cause for the log (never the password).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed")]
    Argon2(#[source] argon2::password_hash::Error),
    #[error("the password hashing task did not finish")]
    Task(#[source] tokio::task::JoinError),
}

impl From<HashError> for Error {
    fn from(e: HashError) -> Error {
        Error::internal(&e)
    }
}

/// A password as typed by a user: checked for length, never stored or logged.
pub struct Password(String);

impl Password {
    pub fn parse(value: &str) -> Result<Self> {
        let len = value.chars().count();
        if len < MIN_PASSWORD_CHARS {
            return Err(Error::invalid(
                "password",
                format!("must be at least {MIN_PASSWORD_CHARS} characters"),
            ));
        }
        if len > MAX_PASSWORD_CHARS {
            return Err(Error::invalid(
                "password",
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        Ok(Password(value.to_string()))
    }
}

impl Password {
    /// 32 random bytes, hex: a password nobody knows.
    fn random() -> Password {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        Password(hex::encode(secret))
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// How many password hashes run at once, and how many more may wait: argon2id takes ~19 MiB and
/// tens of milliseconds of one core per hash, so a flood of registrations or logins must queue
/// (bounded) instead of taking every core and gigabytes of memory.
struct Gate {
    slots: tokio::sync::Semaphore,
    /// Hashes running or waiting.
    admitted: std::sync::atomic::AtomicUsize,
    /// Most hashes running or waiting; past it a request is refused at once.
    bound: usize,
}

static GATE: std::sync::OnceLock<Gate> = std::sync::OnceLock::new();

/// Sets the process's hashing limits: `concurrency` hashes at once (0: one per core), `queue`
/// more waiting. Takes effect only before the first hash, once per process (several in-process
/// nodes share the same cores); returns whether it did.
pub fn configure(concurrency: usize, queue: usize) -> bool {
    let concurrency = match concurrency {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    GATE.set(Gate {
        slots: tokio::sync::Semaphore::new(concurrency),
        admitted: Default::default(),
        bound: concurrency + queue,
    })
    .is_ok()
}

fn gate() -> &'static Gate {
    GATE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Gate {
            slots: tokio::sync::Semaphore::new(cores),
            admitted: Default::default(),
            bound: cores + 64,
        }
    })
}

/// Leaves the gate's count when the hash is done or its caller gave up.
struct Admitted(&'static Gate);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0
            .admitted
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Runs one hash on the blocking pool, within the gate's bounds.
async fn gated<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let gate = gate();
    if gate
        .admitted
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
        >= gate.bound
    {
        gate.admitted
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        metrics::counter!("gorgon_password_hashes_refused_total").increment(1);
        return Err(Error::Unavailable(
            "too many password checks in progress; try again in a moment".into(),
        ));
    }
    let _admitted = Admitted(gate);
    let _slot = gate
        .slots
        .acquire()
        .await
        .map_err(|_| Error::Unavailable("password hashing is shut down".into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| HashError::Task(e).into())
}

/// Hashes on the blocking pool; returns the PHC string.
pub async fn hash(password: Password) -> Result<String> {
    gated(move || hash_now(&password)).await?
}

pub fn hash_now(password: &Password) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.0.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon2(e).into())
}

/// Most memory (KiB), passes and lanes a carried-over hash may ask each login to spend: a hash
/// is a recipe every sign-in follows, so an imported `m=4194304` would make each login of that
/// account allocate 4 GiB. The bounds are twice OWASP's strongest argon2id settings.
pub const MAX_HASH_M_KIB: u32 = 256 * 1024;
pub const MAX_HASH_T: u32 = 16;
pub const MAX_HASH_P: u32 = 16;

/// Checks a password hash carried over from elsewhere (an import): an argon2id PHC string
/// (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), version 19, with a salt and an output, and costs
/// within the bounds above. Other algorithms are refused: logins verify argon2id only, so a
/// bcrypt or scrypt hash would lock its account without saying why.
pub fn parse_argon2id_phc(value: &str) -> Result<String> {
    let bad = |why: String| Err(Error::invalid("password_hash", why));
    let value = value.trim();
    let Ok(parsed) = PasswordHash::new(value) else {
        return bad(
            "must be a PHC string such as $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>".into(),
        );
    };
    if parsed.algorithm != argon2::Algorithm::Argon2id.ident() {
        return bad(format!(
            "must be an argon2id hash, not {}",
            parsed.algorithm.as_str()
        ));
    }
    if parsed.version != Some(argon2::Version::V0x13.into()) {
        return bad("must be argon2 version 19 (v=19)".into());
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return bad("must have a salt and a hash".into());
    }
    let params = match argon2::Params::try_from(&parsed) {
        Ok(params) => params,
        Err(e) => return bad(format!("has invalid parameters: {e}")),
    };
    if params.m_cost() > MAX_HASH_M_KIB
        || params.t_cost() > MAX_HASH_T
        || params.p_cost() > MAX_HASH_P
    {
        return bad(format!(
            "costs more than a login may spend (at most m={MAX_HASH_M_KIB}, t={MAX_HASH_T}, p={MAX_HASH_P})"
        ));
    }
    Ok(value.to_string())
}

/// A hash nobody's password matches (argon2id of a random secret that is thrown away), for
/// accounts imported without a password: they cannot sign in until an admin sets one, and a
/// login attempt costs the same time as for any other account.
pub async fn unusable_hash() -> Result<String> {
    hash(Password::random()).await
}

/// Verifies on the blocking pool. A malformed stored hash counts as a mismatch.
pub async fn verify(password: String, phc: String) -> Result<bool> {
    gated(move || verify_now(&password, &phc)).await
}

fn verify_now(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Spends the time of a real verification against a hash nobody's password matches, so an
/// unknown email takes as long to refuse as a wrong password (no account enumeration by timing).
pub async fn verify_nobody(password: String) -> Result<()> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    gated(move || {
        let phc = DUMMY.get_or_init(|| hash_now(&Password::random()).unwrap_or_default());
        let _ = verify_now(&password, phc);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_over_hashes_must_be_bounded_argon2id() {
        let good = hash_now(&Password::parse("correct horse").unwrap()).unwrap();
        assert_eq!(parse_argon2id_phc(&good).as_deref(), Ok(good.as_str()));
        let salt = "c29tZXNhbHRzb21lc2FsdA";
        let out = "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        for bad in [
            "plain text".to_string(),
            format!("$argon2i$v=19$m=19456,t=2,p=1${salt}${out}"),
            format!("$argon2id$v=16$m=19456,t=2,p=1${salt}${out}"),
            format!("$argon2id$v=19$m=4194304,t=2,p=1${salt}${out}"),
            format!("$argon2id$v=19$m=19456,t=2,p=1${salt}"),
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW".to_string(),
        ] {
            assert!(parse_argon2id_phc(&bad).is_err(), "{bad} accepted");
        }
    }
}
