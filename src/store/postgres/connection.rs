//! Connecting: the URL and [`PgOptions`] become a driver configuration and a pool of
//! connections ([`deadpool_postgres`]); [`Conn`] is one connection lent by the pool for one call,
//! dropped instead of handed back when it met a fatal error; [`Health`] remembers a failed
//! connection attempt for a moment, so calls fail at once while the database is known to be down.
//!
//! Failover: the URL may name several hosts (`postgres://h1,h2/db`); a new connection tries them
//! in order and, with `target_session_attrs=read-write` (the default here when several hosts are
//! named), keeps only a server that takes writes. Connections to a server that died, or that
//! answers "read-only" (25006: a standby, or a demoted primary), are dropped, so the pool refills
//! with connections to whichever host is primary now, without a restart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use parking_lot::Mutex;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::errors::{is_fatal, PgError};
use crate::error::{Chain, Error, Result};
use crate::store::redact::redact;

/// Tunables of the PostgreSQL backend. What the URL sets itself (`connect_timeout`, `options`,
/// `application_name`, `target_session_attrs`, keepalives) takes precedence.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections the pool opens at most (each store node has its own pool).
    pub pool_size: usize,
    /// How long opening one connection to one host may take.
    pub connect_timeout: Duration,
    /// How long a call waits for a free connection of a full pool before `Unavailable`.
    pub wait_timeout: Duration,
    /// A statement running longer is cancelled by the server (`statement_timeout`).
    pub statement_timeout: Duration,
    /// A statement waiting longer for a row lock gives up (`lock_timeout`).
    pub lock_timeout: Duration,
    /// After a failed connection attempt, calls fail at once with `Unavailable` for this long
    /// rather than each waiting for a connection attempt of its own (zero: never).
    pub fail_fast: Duration,
    /// Rows per binary `COPY` of a bulk load.
    pub bulk_batch: usize,
    /// `COPY`s of a bulk load in flight at once (each on its own connection), and index builds
    /// run side by side at its end.
    pub bulk_parallelism: usize,
    /// `maintenance_work_mem` of the sessions building indexes at the end of a bulk load.
    pub bulk_index_memory_mb: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            fail_fast: Duration::from_secs(1),
            bulk_batch: 20_000,
            bulk_parallelism: 2,
            bulk_index_memory_mb: 256,
        }
    }
}

/// Connection pool figures, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub open: usize,
    /// Connections lent to a call now.
    pub in_use: usize,
    /// Calls waiting for a connection now.
    pub waiting: usize,
    /// Connection attempts that failed (database down, refused, timed out, no primary).
    pub connect_failures: u64,
    /// Connections dropped after a fatal error (closed, server gone, read-only).
    pub dropped: u64,
    /// Whether the last connection attempt succeeded (or none failed since the last success).
    pub reachable: bool,
}

/// What [`PoolStats`] and the fail-fast rule are read from.
#[derive(Debug)]
pub(super) struct Health {
    fail_fast: Duration,
    /// When the last connection attempt failed; `None` once one succeeds.
    down_since: Mutex<Option<Instant>>,
    connect_failures: AtomicU64,
    dropped: AtomicU64,
}

impl Health {
    fn new(fail_fast: Duration) -> Self {
        Health {
            fail_fast,
            down_since: Mutex::new(None),
            connect_failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// `Unavailable` while the last connection attempt failed less than `fail_fast` ago.
    ///
    /// Why this is enough: a call arriving later makes a connection attempt of its own, which
    /// either succeeds (the database is back; every call goes through again) or fails and starts
    /// a new window. So while the database is down, about one call per window waits for a
    /// connection attempt, the others are answered at once.
    fn check(&self) -> Result<()> {
        let down_since = *self.down_since.lock();
        match down_since {
            Some(at) if at.elapsed() < self.fail_fast => Err(Error::Unavailable(
                "PostgreSQL is out of reach (a connection attempt failed just now); try again"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    fn connect_failed(&self) {
        let was_up = self.down_since.lock().replace(Instant::now()).is_none();
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        if was_up {
            tracing::warn!(
                "PostgreSQL: no server to connect to; store calls fail until one takes writes"
            );
            metrics::gauge!("gorgon_store_reachable").set(0.0);
        }
    }

    fn connected(&self) {
        if self.down_since.lock().take().is_some() {
            tracing::info!("PostgreSQL: connected again");
            metrics::gauge!("gorgon_store_reachable").set(1.0);
        }
    }

    pub fn reachable(&self) -> bool {
        self.down_since.lock().is_none()
    }
}

/// The pool, and what its calls tell about the database.
#[derive(Clone)]
pub(super) struct Connector {
    pub pool: Pool,
    pub health: Arc<Health>,
}

impl Connector {
    /// A connection for one call, or `Unavailable` at once while the database is known to be
    /// down (see [`Health::check`]).
    pub async fn conn(&self) -> Result<Conn> {
        self.health.check()?;
        match self.pool.get().await {
            Ok(object) => {
                self.health.connected();
                Ok(Conn {
                    object: Some(object),
                    broken: AtomicBool::new(false),
                    health: self.health.clone(),
                })
            }
            Err(e) => Err(self.checkout_failed(e)),
        }
    }

    fn checkout_failed(&self, e: PoolError) -> Error {
        match &e {
            // A connection attempt failed: the database is down, refuses, or no host takes writes.
            PoolError::Backend(cause) if is_fatal(cause) => self.health.connect_failed(),
            PoolError::Timeout(TimeoutType::Create) => self.health.connect_failed(),
            PoolError::Closed => return Error::Unavailable("the store is closed".into()),
            PoolError::Timeout(TimeoutType::Wait) => {
                return Error::Unavailable(
                    "every PostgreSQL connection of this node is busy; try again".into(),
                )
            }
            _ => {}
        }
        match e {
            // Not a transport failure (a refused password, an unknown database): as it is.
            PoolError::Backend(cause) if !is_fatal(&cause) => {
                PgError::Op("connect to the database", cause).into()
            }
            other => PgError::Pool(other).into(),
        }
    }

    pub fn stats(&self) -> PoolStats {
        let status = self.pool.status();
        PoolStats {
            max_size: status.max_size,
            open: status.size,
            in_use: status.size.saturating_sub(status.available),
            waiting: status.waiting,
            connect_failures: self.health.connect_failures.load(Ordering::Relaxed),
            dropped: self.health.dropped.load(Ordering::Relaxed),
            reachable: self.health.reachable(),
        }
    }

    /// The figures as metrics (`gorgon_store_pool_*`, as the MongoDB backend's).
    pub fn publish(&self) {
        let stats = self.stats();
        crate::store::pool_metrics::publish(crate::store::pool_metrics::PoolFigures {
            open: stats.open as u64,
            in_use: stats.in_use as u64,
            waiting: stats.waiting as u64,
            max: stats.max_size as u64,
            checkout_failures: stats.connect_failures,
            cleared: stats.dropped,
        });
    }
}

/// One pooled connection, lent for one call. Its statements are prepared once per connection
/// (the pool's statement cache) and then cost one round trip each. A connection that met a fatal
/// error ([`is_fatal`]) is dropped when the call ends instead of going back to the pool.
pub(super) struct Conn {
    object: Option<Object>,
    broken: AtomicBool,
    health: Arc<Health>,
}

impl Conn {
    /// The client itself, for `COPY`.
    pub fn client(&self) -> &Object {
        // Only `Drop` takes it out.
        self.object.as_ref().expect("a lent connection")
    }

    /// For `map_err`: the error of operation `what`, noting whether it broke the connection.
    pub fn op(&self, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
        move |e| {
            if is_fatal(&e) {
                self.broken.store(true, Ordering::Relaxed);
            }
            PgError::Op(what, e).into()
        }
    }

    /// Marks the connection as done for when `result` is a failure that broke it (for work done
    /// inside a transaction, whose errors went through [`super::errors::op`]).
    pub fn settle<T>(&self, result: Result<T>) -> Result<T> {
        if matches!(result, Err(Error::Unavailable(_))) {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    pub async fn prepare(
        &self,
        what: &'static str,
        sql: &str,
    ) -> Result<tokio_postgres::Statement> {
        self.client()
            .prepare_cached(sql)
            .await
            .map_err(self.op(what))
    }

    /// The rows of the prepared statement `sql`.
    pub async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let statement = self.prepare(what, sql).await?;
        self.client()
            .query(&statement, params)
            .await
            .map_err(self.op(what))
    }

    /// The one row of `sql`, if any.
    pub async fn query_opt(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let statement = self.prepare(what, sql).await?;
        self.client()
            .query_opt(&statement, params)
            .await
            .map_err(self.op(what))
    }

    /// Rows changed by `sql`.
    pub async fn execute(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let statement = self.prepare(what, sql).await?;
        self.client()
            .execute(&statement, params)
            .await
            .map_err(self.op(what))
    }

    /// The rows of `sql` planned for these very parameters, in one round trip (the unnamed
    /// statement: parsed, bound and run together, never a generic plan). For queries whose best
    /// plan depends on the values (search: a common word walks the newest items, a rare one
    /// reads its matches through the word index).
    pub async fn query_planned(
        &self,
        what: &'static str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), tokio_postgres::types::Type)],
    ) -> Result<Vec<Row>> {
        self.client()
            .query_typed(sql, params)
            .await
            .map_err(self.op(what))
    }

    /// The client itself, for `COPY`.
    pub fn client_mut(&mut self) -> &mut Object {
        self.object.as_mut().expect("a lent connection")
    }

    /// Starts a transaction for operation `what` (its name in the error if it cannot start).
    pub async fn begin(
        &mut self,
        what: &'static str,
    ) -> Result<deadpool_postgres::Transaction<'_>> {
        self.client_mut()
            .transaction()
            .await
            .map_err(super::errors::op(what))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.broken.load(Ordering::Relaxed) {
            if let Some(object) = self.object.take() {
                // Detached from the pool: dropping it closes the connection.
                drop(Object::take(object));
                self.health.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Parses `url` and builds the pool (no connection is opened yet). Returns the connector and the
/// database's name.
pub(super) fn connector(url: &str, options: &PgOptions) -> Result<(Connector, String)> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(redact(url, &Chain(&e).to_string())))?;
    let hosts = config.get_hosts().len().max(1);
    let says = |option: &str| url.contains(option);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if hosts > 1 && !says("target_session_attrs") {
        // Several hosts: the one taking writes (a standby answers reads only).
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
    }
    if config.get_application_name().is_none() {
        config.application_name("gorgon");
    }
    if !says("keepalives_idle") {
        // A host that vanished (not one that refuses) is noticed within about 20 s, not 2 h.
        config.keepalives_idle(Duration::from_secs(10));
    }
    if !says("keepalives_interval") {
        config.keepalives_interval(Duration::from_secs(3));
    }
    if !says("keepalives_retries") {
        config.keepalives_retries(3);
    }
    let mut session = config.get_options().unwrap_or_default().to_string();
    for (name, value) in [
        ("statement_timeout", options.statement_timeout),
        ("lock_timeout", options.lock_timeout),
        // A transaction left open by a stuck call does not hold its locks forever.
        (
            "idle_in_transaction_session_timeout",
            Duration::from_secs(60),
        ),
    ] {
        if !session.contains(name) && !value.is_zero() {
            session.push_str(&format!(" -c {name}={}", value.as_millis()));
        }
    }
    config.options(session.trim());
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_string();
    let create_timeout = options.connect_timeout * hosts as u32 + Duration::from_secs(1);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.wait_timeout))
        .create_timeout(Some(create_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| PgError::Url(redact(url, &e.to_string())))?;
    Ok((
        Connector {
            pool,
            health: Arc::new(Health::new(options.fail_fast)),
        },
        database,
    ))
}
