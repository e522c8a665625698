//! Command line and environment: every flag has a `GORGON_*` equivalent and a sane default.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::actors::auth::AuthConfig;
use crate::actors::provider::ProviderConfig;
use crate::actors::RoleSettings;
use crate::bus::{BusConfig, Role};
use crate::cluster::ClusterConfig;
use crate::http::HttpLimits;
use crate::store::{Backend, BackendOptions, MongoOptions, PgOptions, SqliteOptions, StoreUrl};
use crate::transfer::{Format, OnError};

#[derive(Debug, Parser)]
#[command(
    name = "gorgon",
    version,
    about = "A message-driven web application platform"
)]
pub struct Cli {
    /// Log lines as text for people, or one JSON object per line for pipelines.
    #[arg(long, global = true, env = "GORGON_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Command {
    /// The log level when `RUST_LOG` is not set: a node logs at `info`; the commands whose
    /// report people read log only warnings, so nothing interleaves with the report.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Run(_) => "info",
            Command::Seed(_)
            | Command::Sim(_)
            | Command::Dlq(_)
            | Command::Import(_)
            | Command::Export(_)
            | Command::Chaos(_) => "warn",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a node: the chosen roles, serving HTTP.
    Run(Box<RunArgs>),
    /// Bulk-loads synthetic users and items into the embedded store.
    Seed(SeedArgs),
    /// Simulates a workload: seeds, starts every role (or targets --target), drives load, reports.
    Sim(SimArgs),
    /// Inspects and repairs a Redis dead-letter list: list, replay or purge.
    Dlq(DlqArgs),
    /// Imports items or users from a CSV or NDJSON file into the store.
    Import(ImportArgs),
    /// Exports every item or user of the store as CSV or NDJSON.
    Export(ExportArgs),
    /// Starts a local cluster, drives load through HAProxy, injects seeded faults, checks
    /// invariants.
    Chaos(ChaosArgs),
}

/// The roles a node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSet(pub Vec<Role>);

impl RoleSet {
    pub fn all() -> Self {
        RoleSet(Role::ALL.to_vec())
    }
    pub fn contains(&self, role: Role) -> bool {
        self.0.contains(&role)
    }
}

pub fn parse_roles(value: &str) -> Result<RoleSet, String> {
    if value.trim() == "all" {
        return Ok(RoleSet::all());
    }
    let mut roles: Vec<Role> = value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        return Err("name at least one role, or 'all'".into());
    }
    Ok(RoleSet(roles))
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| value.split_at(i))
        .unwrap_or((value, "s"));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 500ms, 30s or 5m"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("unknown unit in {value:?}: use ms, s, m, h or d")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{value:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `gorgon run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Roles to run: all, or a list of web, auth, app, store, provider, notify, stats.
    #[arg(long, env = "GORGON_ROLES", default_value = "all", value_parser = parse_roles)]
    pub roles: RoleSet,
    /// HTTP address of the web role (port 0 picks a free port).
    #[arg(long, env = "GORGON_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A second HTTP address serving only `/metrics` and `/healthz` (port 0 picks a free port):
    /// how Prometheus scrapes a node without the web role (a backend, a worker), or any node
    /// whose metrics should stay off its public address.
    #[arg(long, env = "GORGON_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Directory of the embedded store.
    #[arg(long, env = "GORGON_DATA", default_value = "./gorgon-data")]
    pub data: PathBuf,
    /// A shared store instead of the embedded one (any number of nodes may run the store role on
    /// it): `mongodb://[user:password@]host[:port][,…]/database[?options]` or
    /// `postgres://[user:password@]host[:port][,…]/database[?target_session_attrs=read-write]`.
    #[arg(long, env = "GORGON_STORE_URL", value_parser = StoreUrl::parse, hide_env_values = true)]
    pub store: Option<StoreUrl>,
    /// Redis URL (`redis://[:password@]host:port[/db]`, or `rediss://` for TLS): roles that are
    /// not in this process are reached through durable Redis mailboxes.
    #[arg(long, env = "GORGON_REDIS_URL")]
    pub redis: Option<String>,
    /// Namespace of this application's Redis keys (`gorgon:{namespace}:…`).
    #[arg(long, env = "GORGON_REDIS_NAMESPACE", default_value = "default")]
    pub redis_namespace: String,
    #[command(flatten)]
    pub queues: QueueTuning,
    #[command(flatten)]
    pub providers: ProviderTuning,
    #[command(flatten)]
    pub cluster: ClusterTuning,
    /// Creates (or promotes) this admin at start-up; needs --admin-password.
    #[arg(long, env = "GORGON_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Password of --admin-email (prefer the environment variable).
    #[arg(long, env = "GORGON_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub jobs: JobTuning,
}

/// The app role's job workers.
#[derive(Debug, Clone, Args)]
pub struct JobTuning {
    /// Jobs this node runs at once (0: run no workers here).
    #[arg(long, env = "GORGON_JOB_WORKERS", default_value_t = 4)]
    pub job_workers: usize,
    /// Deadline of one attempt of a job.
    #[arg(long, env = "GORGON_JOB_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// Attempts before a job is dead.
    #[arg(long, env = "GORGON_JOB_MAX_ATTEMPTS", default_value_t = 5)]
    pub job_max_attempts: u32,
    /// Delay before a failed job's first retry (doubles per attempt, with jitter).
    #[arg(long, env = "GORGON_JOB_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub job_retry_base: Duration,
    /// Longest delay between two attempts of a job.
    #[arg(long, env = "GORGON_JOB_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub job_retry_max: Duration,
    /// How long done and dead jobs are kept before they are purged.
    #[arg(long, env = "GORGON_JOB_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub job_retention: Duration,
    /// How long a claimed job may run before it is considered abandoned and claimed again
    /// (keep it longer than --job-timeout).
    #[arg(long, env = "GORGON_JOB_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub job_lease: Duration,
    /// How often idle workers ask the store for due jobs (jobs submitted to this node wake
    /// them at once).
    #[arg(long, env = "GORGON_JOB_POLL", default_value = "100ms", value_parser = parse_duration)]
    pub job_poll: Duration,
    /// Makes every run of the built-in `hash` job wait this long first (simulated slow work,
    /// for demos and tests).
    #[arg(long, env = "GORGON_JOB_HASH_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub job_hash_delay: Duration,
}

/// Limits and sizes; the defaults suit a 2-core laptop.
#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// HTTP worker threads.
    #[arg(long, env = "GORGON_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "GORGON_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Largest page size of listings.
    #[arg(long, env = "GORGON_MAX_PAGE_SIZE", default_value_t = 100)]
    pub max_page_size: u32,
    /// Largest offset of listings.
    #[arg(long, env = "GORGON_MAX_OFFSET", default_value_t = 100_000)]
    pub max_offset: u32,
    /// Largest offset of a keyword search: a search walks every match it skips, so deeper
    /// pages are asked for with `after` (the previous page's `next`), which costs the same at
    /// any depth.
    #[arg(long, env = "GORGON_MAX_SEARCH_OFFSET", default_value_t = 1_000)]
    pub max_search_offset: u32,
    /// Deadline of direct calls between roles (reads, token checks).
    #[arg(long, env = "GORGON_DIRECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub direct_timeout: Duration,
    /// Deadline of durable calls between roles (writes).
    #[arg(long, env = "GORGON_DURABLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub durable_timeout: Duration,
    /// How long graceful shutdown waits for in-flight HTTP requests.
    #[arg(long, env = "GORGON_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Requests a role instance works on at once.
    #[arg(long, env = "GORGON_ROLE_CONCURRENCY", default_value_t = 1024)]
    pub role_concurrency: usize,
    /// Read connections of the embedded store.
    #[arg(long, env = "GORGON_STORE_READERS", default_value_t = 2)]
    pub store_readers: usize,
    /// Most writes committed together by the embedded store.
    #[arg(long, env = "GORGON_STORE_MAX_BATCH", default_value_t = 512)]
    pub store_max_batch: usize,
    /// Page cache of each embedded-store connection, in MiB.
    #[arg(long, env = "GORGON_STORE_CACHE_MIB", default_value_t = 16)]
    pub store_cache_mib: u32,
    /// Memory-mapped bytes of the database per read connection, in MiB (0: off, the default).
    /// Mapped, reads by id are about 1.6x faster while nothing is written; but in WAL mode every
    /// commit makes each reader unmap and fault the file in again, so under a steady stream of
    /// writes mapping is slower (the simulator's default scenario: 8.3k reads/s mapped, 9.8k not).
    #[arg(long, env = "GORGON_STORE_MMAP_MIB", default_value_t = 0)]
    pub store_mmap_mib: u32,
    /// Newest items of each user the embedded store keeps in memory (0: none): a user's first
    /// page of at most this many items is then read without the database.
    #[arg(long, env = "GORGON_STORE_RECENT_ITEMS", default_value_t = 10)]
    pub store_recent_items: u32,
    /// Memory those lists may take, in MiB, counting each list's items and their JSON (kept
    /// encoded for reads); the least used are dropped beyond it.
    #[arg(long, env = "GORGON_STORE_RECENT_MIB", default_value_t = 128)]
    pub store_recent_mib: u32,
    /// How often a background thread checkpoints the store's write-ahead log after commits
    /// ("0s": SQLite's automatic checkpoints, which stall the writer during their fsync).
    #[arg(long, env = "GORGON_STORE_CHECKPOINT_EVERY", default_value = "200ms", value_parser = parse_duration)]
    pub store_checkpoint_every: Duration,
    /// After this long without commits the store folds its whole write-ahead log into the
    /// database and truncates the log file (a burst of writes leaves no large log behind).
    #[arg(long, env = "GORGON_STORE_CHECKPOINT_IDLE", default_value = "1s", value_parser = parse_duration)]
    pub store_checkpoint_idle: Duration,
    /// Size the write-ahead log is cut back to whenever it starts over, in MiB.
    #[arg(long, env = "GORGON_STORE_WAL_LIMIT_MIB", default_value_t = 64)]
    pub store_wal_limit_mib: u32,
    /// Read connections, each with a thread of its own, for searches and deep pages, apart from
    /// those of point reads and first pages, which thus never wait behind them.
    #[arg(long, env = "GORGON_STORE_HEAVY_READERS", default_value_t = 2)]
    pub store_heavy_readers: usize,
    /// Scheduling priority (Linux nice, 0 to 19) of those readers' threads: on a busy machine
    /// they get the CPU that cheap requests leave, so expensive searches slow down first.
    #[arg(long, env = "GORGON_STORE_HEAVY_NICE", default_value_t = 19,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub store_heavy_nice: i32,
    /// Shared store (`--store`): how long a call waits for a server that takes writes before
    /// failing with 503, when none is known (the URL's `serverSelectionTimeoutMS` wins).
    #[arg(long, env = "GORGON_STORE_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub store_wait: Duration,
    /// Time budget of one search or deep page (over 1,000 items), waiting included; past it the
    /// query is stopped and answered 503 `search_timeout` ("0s": no budget). Keep it under
    /// --direct-timeout so that clients get this clear answer rather than a 504.
    #[arg(long, env = "GORGON_SEARCH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub search_timeout: Duration,
    /// fsync every commit (survives power loss; default survives process crashes).
    #[arg(long, env = "GORGON_STORE_SYNC_FULL", default_value_t = false)]
    pub store_sync_full: bool,
    /// Lifetime of login tokens.
    #[arg(long, env = "GORGON_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// How long a validated token is trusted without asking the store.
    #[arg(long, env = "GORGON_TOKEN_CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub token_cache_ttl: Duration,
    /// Wrong passwords per account per minute; past it the account refuses logins (429) from
    /// client addresses that never signed in to it, until the minute is over (0: no limit).
    #[arg(long, env = "GORGON_LOGIN_PER_MINUTE", default_value_t = 10)]
    pub login_per_minute: u32,
    /// Login attempts per client address per minute, whatever the account (0: no limit).
    #[arg(
        long,
        env = "GORGON_LOGIN_PER_ADDRESS_PER_MINUTE",
        default_value_t = 60
    )]
    pub login_per_address_per_minute: u32,
    /// Registrations per client address per hour (0: no limit).
    #[arg(
        long,
        env = "GORGON_REGISTER_PER_ADDRESS_PER_HOUR",
        default_value_t = 1000
    )]
    pub register_per_address_per_hour: u32,
    /// Keys each login and registration limiter remembers (addresses, accounts); the least
    /// recently seen are forgotten past it, so the limiters' memory is bounded.
    #[arg(long, env = "GORGON_LIMITER_KEYS", default_value_t = 100_000)]
    pub limiter_keys: u64,
    /// Password hashes computed at once by this process (0: one per core). Each takes ~19 MiB
    /// and a core for tens of milliseconds.
    #[arg(long, env = "GORGON_PASSWORD_HASH_CONCURRENCY", default_value_t = 0)]
    pub password_hash_concurrency: usize,
    /// Password hashes that may wait for a free slot; past it registrations and logins get 503
    /// with `Retry-After` at once.
    #[arg(long, env = "GORGON_PASSWORD_HASH_QUEUE", default_value_t = 64)]
    pub password_hash_queue: usize,
    /// Items per second inserted by the random provider (0: off).
    #[arg(long, env = "GORGON_PROVIDER_RATE", default_value_t = 0.0)]
    pub provider_rate: f64,
    /// Events buffered per streaming client before it is dropped as too slow.
    #[arg(long, env = "GORGON_CLIENT_BUFFER", default_value_t = 1024)]
    pub client_buffer: usize,
    /// Events kept for clients resuming with Last-Event-ID.
    #[arg(long, env = "GORGON_EVENT_REPLAY", default_value_t = 10_000)]
    pub event_replay: usize,
    /// Seconds of per-second traffic history kept for /api/v1/stats and the dashboard.
    #[arg(long, env = "GORGON_STATS_SECONDS", default_value_t = 3600)]
    pub stats_seconds: usize,
    /// Minutes of per-minute roll-ups kept.
    #[arg(long, env = "GORGON_STATS_MINUTES", default_value_t = 1440)]
    pub stats_minutes: usize,
    /// Interval of SSE keep-alive comments.
    #[arg(long, env = "GORGON_SSE_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub sse_heartbeat: Duration,
    #[command(flatten)]
    pub edge: EdgeTuning,
}

/// Limits of the HTTP edge against clients that hold connections without finishing requests,
/// and per-user quotas.
#[derive(Debug, Clone, Args)]
pub struct EdgeTuning {
    /// Deadline for a request's whole body, from its head ("0s": none). A slower body gets a
    /// 408 and its connection is closed.
    #[arg(long, env = "GORGON_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,
    /// Deadline for a request's head (its line and headers).
    #[arg(long, env = "GORGON_HTTP_HEAD_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub http_head_timeout: Duration,
    /// How long an idle keep-alive connection stays open. Longer than a load balancer's own
    /// idle timeout (HAProxy's `timeout http-keep-alive` in deploy/haproxy.cfg is 10 s), so the
    /// balancer closes idle connections first and never sends a request on one this node is
    /// closing.
    #[arg(long, env = "GORGON_HTTP_KEEP_ALIVE", default_value = "75s", value_parser = parse_duration)]
    pub http_keep_alive: Duration,
    /// Open HTTP connections of this node, in all (split over the HTTP workers; lowered to fit
    /// the open-file limit). Beyond it new connections wait in the listen backlog.
    #[arg(long, env = "GORGON_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    /// Connections the kernel queues before they are accepted; beyond it they are refused.
    #[arg(long, env = "GORGON_HTTP_BACKLOG", default_value_t = 1024)]
    pub http_backlog: u32,
    /// Open HTTP connections per client address (0: no limit, the default: behind a load
    /// balancer every connection comes from its address, so it would cap the balancer; set it
    /// when clients connect directly). Connections beyond it are closed at once.
    #[arg(long, env = "GORGON_HTTP_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub http_max_connections_per_ip: usize,
    /// Addresses of the load balancers in front of this node (CIDRs or addresses, comma
    /// separated). Only a connection from one of them may name the client in
    /// `X-Forwarded-For`; that address is then the one request logs and the login and
    /// registration limits see. Empty (the default): the connection's peer is the client.
    #[arg(long, env = "GORGON_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// After SIGTERM, how long `/readyz` answers 503 while requests are still served, before
    /// the node stops accepting: a load balancer's health check takes the node out first, so
    /// no request meets a closed port. Set it to the balancer's check interval × its fall count.
    #[arg(long, env = "GORGON_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// A deliberately broken build for the tests of `gorgon chaos`: every Nth item create is
    /// answered 201 and never stored (0: off). Hidden: no one else has a use for it.
    #[arg(long, default_value_t = 0, hide = true)]
    pub unsafe_drop_every_nth_write: u64,
    /// Raise the process's soft open-file limit to its hard limit at start (each connection is
    /// an open file).
    #[arg(long, env = "GORGON_RAISE_OPEN_FILES", default_value_t = true, action = clap::ArgAction::Set)]
    pub raise_open_files: bool,
    /// Unfinished (queued, running, failed) jobs one user may have; more get a 429 (0: no
    /// limit; admins have none).
    #[arg(
        long,
        env = "GORGON_USER_MAX_UNFINISHED_JOBS",
        default_value_t = 10_000
    )]
    pub user_max_unfinished_jobs: u32,
    /// Items one user may create per minute through the API, in bursts of as many; more get a
    /// 429 (0: no limit; admins have none). Counted per web node.
    #[arg(long, env = "GORGON_USER_ITEMS_PER_MINUTE", default_value_t = 6_000)]
    pub user_items_per_minute: u32,
    /// Largest job payload, in bytes of JSON; larger ones get a 413.
    #[arg(long, env = "GORGON_MAX_JOB_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub max_job_payload_bytes: usize,
    /// Largest item (title, body, url, keywords and extra, in bytes); larger ones get a 413.
    #[arg(long, env = "GORGON_MAX_ITEM_BYTES", default_value_t = 128 * 1024)]
    pub max_item_bytes: usize,
    /// Largest body of `POST /api/v1/import/items`, in bytes (the body is streamed, never held:
    /// this bounds the upload, and with --on-error abort its spool file).
    #[arg(long, env = "GORGON_IMPORT_MAX_BODY_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub import_max_body_bytes: u64,
    /// Deadline for the whole body of `POST /api/v1/import/items`, instead of
    /// --http-body-timeout ("0s": none). Only admins reach the body of that route.
    #[arg(long, env = "GORGON_IMPORT_BODY_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub import_body_timeout: Duration,
}

/// Limits of the Redis mailboxes.
#[derive(Debug, Clone, Args)]
pub struct QueueTuning {
    /// Deliveries of a durable message before it goes to the dead-letter list.
    #[arg(long, env = "GORGON_QUEUE_MAX_ATTEMPTS", default_value_t = 5)]
    pub queue_max_attempts: u32,
    /// Lifetime of a consumer's heartbeat: a consumer silent this long is dead and its in-flight
    /// messages are delivered again.
    #[arg(long, env = "GORGON_QUEUE_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub queue_heartbeat: Duration,
    /// First retry delay of a failed durable message (doubles per attempt, with jitter).
    #[arg(long, env = "GORGON_QUEUE_RETRY_BASE", default_value = "200ms", value_parser = parse_duration)]
    pub queue_retry_base: Duration,
    /// Messages a consumer takes from Redis in one round trip.
    #[arg(long, env = "GORGON_QUEUE_BATCH", default_value_t = 64)]
    pub queue_batch: usize,
    /// Messages a consumer works on at once (per queue).
    #[arg(long, env = "GORGON_QUEUE_INFLIGHT", default_value_t = 256)]
    pub queue_inflight: usize,
    /// How long a call waiting for its reply through Redis still waits once the node's
    /// connection to Redis is back after it was lost (a reply published meanwhile is lost); then
    /// it answers 503 instead of waiting out its deadline.
    #[arg(long, env = "GORGON_REDIS_REPLY_GRACE", default_value = "2s", value_parser = parse_duration)]
    pub redis_reply_grace: Duration,
}

impl QueueTuning {
    pub fn redis_config(&self, url: &str, namespace: &str) -> crate::bus::RedisConfig {
        crate::bus::RedisConfig {
            url: url.to_string(),
            namespace: namespace.to_string(),
            max_attempts: self.queue_max_attempts.max(1),
            heartbeat: self.queue_heartbeat.max(Duration::from_millis(300)),
            retry_base: self.queue_retry_base,
            batch: self.queue_batch.clamp(1, 10_000),
            inflight: self.queue_inflight.clamp(1, 100_000),
            reply_grace: self.redis_reply_grace,
        }
    }
}

/// Joining other nodes with `ractor_cluster` (see `src/cluster/`).
#[derive(Debug, Clone, Args)]
pub struct ClusterTuning {
    /// Address of this node's cluster listener (`HOST:PORT`); other nodes join through it.
    #[arg(long, env = "GORGON_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// Seed nodes to join (`HOST:PORT,…`): one live seed is enough, the others are found
    /// through it. Seeds that are down are dialled again until they answer.
    #[arg(long, env = "GORGON_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Shared secret of the cluster. Required for a listener on a non-loopback address.
    #[arg(long, env = "GORGON_CLUSTER_COOKIE", hide_env_values = true)]
    pub cluster_cookie: Option<String>,
    /// Name of this node in the cluster (default: `gorgon-<port>@<host>`-style, from the listener).
    #[arg(long, env = "GORGON_CLUSTER_NODE_NAME")]
    pub cluster_node_name: Option<String>,
    /// How long one direct call to another node may take before another member is tried.
    #[arg(long, env = "GORGON_CLUSTER_CALL_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub cluster_call_timeout: Duration,
    /// Members tried for one direct call (the first included).
    #[arg(long, env = "GORGON_CLUSTER_CALL_ATTEMPTS", default_value_t = 3)]
    pub cluster_call_attempts: u32,
    /// How often each node pings every peer; also how often lost seeds are dialled again.
    #[arg(long, env = "GORGON_CLUSTER_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub cluster_heartbeat: Duration,
    /// Missed pings after which a peer counts as unresponsive: no calls are routed to it and its
    /// session is dropped (a hung process keeps its TCP connection open).
    #[arg(long, env = "GORGON_CLUSTER_MISSED_PINGS", default_value_t = 3)]
    pub cluster_missed_pings: u32,
    /// Address of this node's direct-call listener (`HOST:PORT`); by default the cluster
    /// listener's host and a port the system picks (peers learn it through the heartbeat).
    #[arg(long, env = "GORGON_CLUSTER_DATA_LISTEN")]
    pub cluster_data_listen: Option<String>,
    /// Largest direct request or reply between nodes, in bytes.
    #[arg(long, env = "GORGON_CLUSTER_MAX_FRAME", default_value_t = 16 * 1024 * 1024)]
    pub cluster_max_frame: usize,
    /// How long start-up waits for the seeds before going on alone (seeds are dialled again later).
    #[arg(long, env = "GORGON_CLUSTER_JOIN_WAIT", default_value = "3s", value_parser = parse_duration)]
    pub cluster_join_wait: Duration,
}

impl ClusterTuning {
    /// The settings of `--cluster-listen` and friends, `None` when the node is not clustered.
    pub fn cluster_config(
        &self,
        node_id: &str,
        concurrency: usize,
    ) -> Result<Option<ClusterConfig>, String> {
        let args = self;
        let Some(listen) = &args.cluster_listen else {
            if args.join.is_empty() {
                return Ok(None);
            }
            return Err("--join needs --cluster-listen: peers dial each other both ways".into());
        };
        let listen = listen
            .to_socket_addrs()
            .map_err(|e| format!("--cluster-listen {listen}: {e}"))?
            .next()
            .ok_or_else(|| format!("--cluster-listen {listen}: no address"))?;
        if listen.ip().is_unspecified() {
            return Err(format!(
                "--cluster-listen {listen}: give the address peers reach this node at, not a wildcard"
            ));
        }
        let cookie = match args.cluster_cookie.as_deref().map(str::trim) {
            Some(cookie) if !cookie.is_empty() => cookie.to_string(),
            _ if listen.ip().is_loopback() => crate::cluster::LOOPBACK_COOKIE.to_string(),
            _ => {
                return Err(format!(
                "--cluster-listen {listen} is not a loopback address: set GORGON_CLUSTER_COOKIE \
                     (a long random secret shared by every node) so strangers cannot join"
            ))
            }
        };
        let seeds: Vec<String> = args
            .join
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for seed in &seeds {
            if seed
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!("--join {seed}: expected HOST:PORT"));
            }
        }
        let data_listen = match &args.cluster_data_listen {
            Some(addr) => addr
                .to_socket_addrs()
                .map_err(|e| format!("--cluster-data-listen {addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("--cluster-data-listen {addr}: no address"))?,
            None => SocketAddr::new(listen.ip(), 0),
        };
        Ok(Some(ClusterConfig {
            listen,
            data_listen,
            max_frame: args.cluster_max_frame.max(64 * 1024),
            concurrency: concurrency.max(1),
            advertise_host: listen.ip().to_string(),
            seeds,
            cookie,
            node_name: args
                .cluster_node_name
                .clone()
                .unwrap_or_else(|| node_id.to_string()),
            call_timeout: args.cluster_call_timeout.max(Duration::from_millis(10)),
            call_attempts: args.cluster_call_attempts.max(1),
            heartbeat: args.cluster_heartbeat.max(Duration::from_millis(50)),
            missed_pings: args.cluster_missed_pings.max(1),
            join_wait: args.cluster_join_wait,
        }))
    }
}

/// External providers: signed ingest and outbound webhooks.
#[derive(Debug, Clone, Args)]
pub struct ProviderTuning {
    /// A provider allowed to ingest, as NAME=SECRET (repeat, or comma-separate in the env var).
    #[arg(long = "provider-secret", env = "GORGON_PROVIDER_SECRETS", value_delimiter = ',',
          value_parser = parse_secret, hide_env_values = true)]
    pub provider_secrets: Vec<(String, String)>,
    /// How old (or early) an ingest signature may be before it counts as a replay.
    #[arg(long, env = "GORGON_INGEST_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub ingest_window: Duration,
    /// Most items in one ingest request.
    #[arg(long, env = "GORGON_INGEST_MAX_ITEMS", default_value_t = 1000)]
    pub ingest_max_items: usize,
    /// A URL that receives every item event as a signed POST (repeat, or comma-separate).
    #[arg(long = "webhook", env = "GORGON_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Secret signing webhook deliveries (`X-Gorgon-Signature`); unsigned when absent.
    #[arg(long, env = "GORGON_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Attempts per webhook delivery before it is given up.
    #[arg(long, env = "GORGON_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// First retry delay of a failed delivery (doubles per attempt, with jitter, at most 60 s).
    #[arg(long, env = "GORGON_WEBHOOK_RETRY_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,
    /// Events queued per webhook target; past it the newest are dropped (and counted).
    #[arg(long, env = "GORGON_WEBHOOK_QUEUE", default_value_t = 10_000)]
    pub webhook_queue: usize,
    /// Deadline of one delivery attempt.
    #[arg(long, env = "GORGON_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
}

/// Parses `NAME=SECRET` (a provider name of letters, digits, `-` and `_`).
pub fn parse_secret(value: &str) -> Result<(String, String), String> {
    let (name, secret) = value
        .split_once('=')
        .ok_or_else(|| "expected NAME=SECRET".to_string())?;
    let name = name.trim();
    if !crate::providers::valid_name(name) {
        return Err(format!(
            "{name:?}: a provider name is 1 to 64 of a-z, 0-9, - and _"
        ));
    }
    if secret.len() < 16 {
        return Err(format!(
            "the secret of {name} is shorter than 16 characters"
        ));
    }
    Ok((name.to_string(), secret.to_string()))
}

/// `gorgon chaos` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Seed of the fault schedule: the same seed gives the same plan.
    #[arg(long, env = "GORGON_CHAOS_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Length of the measured run, faults included.
    #[arg(long, env = "GORGON_CHAOS_DURATION", default_value = "2m", value_parser = parse_duration)]
    pub duration: Duration,
    /// `embedded`, `postgres`, or a topology file (TOML; see src/chaos/topology.rs).
    #[arg(long, env = "GORGON_CHAOS_TOPOLOGY", default_value = "embedded")]
    pub topology: String,
    /// Fault kinds to draw from: kill, pause, redis, db, net, drain.
    #[arg(
        long,
        env = "GORGON_CHAOS_FAULTS",
        default_value = "kill,pause,redis,db,net,drain"
    )]
    pub faults: String,
    /// Print the plan and exit.
    #[arg(long)]
    pub plan: bool,
    /// Write the report (plan, per-fault table, invariants, timeline) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Requests per second of the load (open loop: read=80, write=15, search=5).
    #[arg(long, env = "GORGON_CHAOS_RATE", default_value_t = 200.0)]
    pub rate: f64,
    /// A request without an answer this long counts as unanswered.
    #[arg(long, env = "GORGON_CHAOS_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Background jobs submitted per second.
    #[arg(long, default_value_t = 5.0)]
    pub jobs_per_second: f64,
    /// SSE clients following the item events through the balancer.
    #[arg(long, default_value_t = 2)]
    pub sse_clients: usize,
    /// The gorgon binary the nodes run (default: this one).
    #[arg(long, env = "GORGON_CHAOS_BIN")]
    pub bin: Option<PathBuf>,
    /// State directory (logs, data); default a temporary one, kept when the run fails.
    #[arg(long, env = "GORGON_CHAOS_DIR")]
    pub dir: Option<PathBuf>,
    /// A deliberately broken build for tests: every Nth acknowledged item create is not stored.
    #[arg(long, default_value_t = 0, hide = true)]
    pub unsafe_drop_every_nth_write: u64,
}

/// `gorgon sim` flags; each overrides the scenario file, which overrides the defaults. A scenario
/// file (TOML) holds the same settings by the same names, durations as text (`"30s"`).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimArgs {
    /// A scenario file (TOML) with any of the settings below.
    #[arg(long, env = "GORGON_SIM_SCENARIO")]
    #[serde(skip)]
    pub scenario: Option<PathBuf>,
    /// Users to seed (default 10000).
    #[arg(long)]
    pub users: Option<u64>,
    /// Items to seed (default 1000000).
    #[arg(long)]
    pub items: Option<u64>,
    /// Items per second inserted by the random provider during the run (default 1000).
    #[arg(long)]
    pub provider_rate: Option<f64>,
    /// Concurrent clients of the closed loop (default 16: on 2 cores more only queue).
    #[arg(long)]
    pub clients: Option<usize>,
    /// Open loop at this many requests per second instead of the closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop in steps, e.g. 1,10,100,1000,10000 (each for --step).
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Length of each open-loop step (default 10s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_text")]
    pub step: Option<Duration>,
    /// Length of the measured run (default 30s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_text")]
    pub duration: Option<Duration>,
    /// Unmeasured warm-up before it (default 3s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_text")]
    pub warmup: Option<Duration>,
    /// Operation mix, e.g. read=90,write=5,search=5 (the default).
    #[arg(long)]
    pub mix: Option<String>,
    /// Drive this running node instead of starting one (seeding through the API).
    #[arg(long)]
    #[serde(skip)]
    pub target: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// Data directory for the in-process node (default: a fresh temporary one).
    #[arg(long)]
    #[serde(skip)]
    pub data: Option<PathBuf>,
    /// The in-process node keeps its data in this shared store instead (seeded first), e.g.
    /// `mongodb://127.0.0.1:27017/gorgon-sim`.
    #[arg(long, env = "GORGON_STORE_URL", value_parser = StoreUrl::parse, hide_env_values = true)]
    #[serde(skip)]
    pub store: Option<StoreUrl>,
    /// Per-request timeout (default 10s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_text")]
    pub timeout: Option<Duration>,
    /// Writer accounts the simulated clients write as (default 16).
    #[arg(long)]
    pub writers: Option<usize>,
}

/// One `--trusted-proxies` entry: a CIDR (`10.0.0.0/8`) or one address (`127.0.0.1`).
fn parse_proxy(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither an address nor a CIDR"))
}

/// A duration written as text in a scenario file.
fn duration_text<'de, D>(deserializer: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_duration(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// `gorgon dlq`: through Redis itself (`--redis`), or through a node's admin API (`--api`, as
/// `/dashboard` does; the admin token in `GORGON_ADMIN_TOKEN`). `--api` wins when both are set.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[arg(value_enum)]
    pub action: DlqAction,
    /// The queue, e.g. `store`, `app`, `auth` (durable) or `store.direct`.
    pub queue: String,
    #[arg(long, env = "GORGON_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    #[arg(long, env = "GORGON_REDIS_NAMESPACE", default_value = "default")]
    pub redis_namespace: String,
    /// A node's base URL (`http://127.0.0.1:8080`): use its admin API instead of Redis.
    #[arg(long, env = "GORGON_API_URL")]
    pub api: Option<String>,
    /// One dead letter (its id from `list`), for `replay` and `delete`.
    #[arg(long, env = "GORGON_DLQ_ID")]
    pub id: Option<String>,
    /// Most records listed or replayed.
    #[arg(long, env = "GORGON_DLQ_LIMIT", default_value_t = 1000)]
    pub limit: usize,
    /// `list` prints the records as stored in Redis (password hashes and token hashes
    /// included) instead of the redacted view; `--redis` only.
    #[arg(long, env = "GORGON_DLQ_RAW")]
    pub raw: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DlqAction {
    /// Prints each dead letter as one JSON line, oldest first: its id, reason, attempts, time,
    /// kind and request (credentials redacted).
    List,
    /// Puts dead messages back on their queue, as first attempts (one with `--id`).
    Replay,
    /// Deletes one dead letter (`--id`).
    Delete,
    /// Deletes every dead message of the queue.
    Purge,
}

impl RunArgs {
    /// A node on a free loopback port over `data`, with `extra` flags as on the command line
    /// (used by the simulator and the tests to start a node in-process).
    pub fn local(data: &std::path::Path, extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["gorgon", "run", "--listen", "127.0.0.1:0", "--data"];
        let data = data.display().to_string();
        argv.push(&data);
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(*args),
            _ => Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand)),
        }
    }

    pub fn bus_config(&self) -> BusConfig {
        BusConfig {
            direct_timeout: self.tuning.direct_timeout,
            durable_timeout: self.tuning.durable_timeout,
            ..BusConfig::default()
        }
    }

    /// The Redis link's settings, when `--redis` is given.
    pub fn redis_config(&self) -> Option<crate::bus::RedisConfig> {
        self.redis
            .as_deref()
            .map(|url| self.queues.redis_config(url, &self.redis_namespace))
    }

    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_body_bytes: self.tuning.max_body_bytes,
            max_page_size: self.tuning.max_page_size.max(1),
            max_offset: self.tuning.max_offset,
            max_search_offset: self.tuning.max_search_offset,
            shutdown_timeout: self.tuning.shutdown_timeout,
            sse_heartbeat: self.tuning.sse_heartbeat.max(Duration::from_millis(100)),
            body_timeout: self.tuning.edge.http_body_timeout,
            head_timeout: self.tuning.edge.http_head_timeout,
            keep_alive: self.tuning.edge.http_keep_alive,
            max_connections: self.tuning.edge.http_max_connections.max(1),
            backlog: self.tuning.edge.http_backlog.max(1),
            max_connections_per_ip: self.tuning.edge.http_max_connections_per_ip,
            user_items_per_minute: self.tuning.edge.user_items_per_minute,
            max_job_payload_bytes: self.tuning.edge.max_job_payload_bytes,
            max_item_bytes: self.tuning.edge.max_item_bytes,
            trusted_proxies: self.tuning.edge.trusted_proxies.clone().into(),
            import_max_body_bytes: self.tuning.edge.import_max_body_bytes,
            import_body_timeout: self.tuning.edge.import_body_timeout,
            unsafe_drop_every_nth_write: self.tuning.edge.unsafe_drop_every_nth_write,
            ..HttpLimits::default()
        }
    }

    /// What the roles are built with.
    pub fn role_settings(&self) -> RoleSettings {
        RoleSettings {
            concurrency: self.tuning.role_concurrency,
            backend: self.backend(),
            store: self.store_options(),
            auth: self.auth_config(),
            provider: self.provider_config(),
            user_max_unfinished_jobs: Some(self.tuning.edge.user_max_unfinished_jobs)
                .filter(|&n| n > 0),
            client_buffer: self.tuning.client_buffer,
            event_replay: self.tuning.event_replay,
        }
    }

    /// The store role's database: `--store`, else the embedded store in `--data`.
    pub fn backend(&self) -> Backend {
        Backend::choose(self.store.as_ref(), &self.data)
    }

    /// The store's settings, for whichever backend `--store` names (the URL's own options win).
    pub fn store_options(&self) -> BackendOptions {
        BackendOptions {
            sqlite: self.sqlite_options(),
            mongo: MongoOptions {
                server_selection_timeout: self.tuning.store_wait,
                ..MongoOptions::default()
            },
            postgres: PgOptions {
                connect_timeout: self.tuning.store_wait,
                ..PgOptions::default()
            },
        }
    }

    pub fn sqlite_options(&self) -> SqliteOptions {
        SqliteOptions {
            readers: self.tuning.store_readers.max(1),
            max_write_batch: self.tuning.store_max_batch.max(1),
            sync_full: self.tuning.store_sync_full,
            cache_mib: self.tuning.store_cache_mib,
            mmap_mib: self.tuning.store_mmap_mib,
            recent_items: self.tuning.store_recent_items,
            recent_mib: self.tuning.store_recent_mib,
            checkpoint_every: Some(self.tuning.store_checkpoint_every)
                .filter(|every| !every.is_zero()),
            checkpoint_idle: self
                .tuning
                .store_checkpoint_idle
                .max(Duration::from_millis(10)),
            wal_limit_mib: self.tuning.store_wal_limit_mib,
            heavy_readers: self.tuning.store_heavy_readers.max(1),
            heavy_nice: self.tuning.store_heavy_nice,
            search_timeout: Some(self.tuning.search_timeout).filter(|t| !t.is_zero()),
        }
    }

    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            token_ttl: self.tuning.token_ttl,
            cache_ttl: self.tuning.token_cache_ttl,
            login_failures: self.tuning.login_per_minute,
            login_per_address: self.tuning.login_per_address_per_minute,
            login_window: Duration::from_secs(60),
            register_per_address: self.tuning.register_per_address_per_hour,
            register_window: Duration::from_secs(3600),
            limiter_capacity: self.tuning.limiter_keys.max(1),
            ..AuthConfig::default()
        }
    }

    pub fn job_config(&self) -> crate::jobs::JobConfig {
        let jobs = &self.jobs;
        crate::jobs::JobConfig {
            workers: jobs.job_workers,
            timeout: jobs.job_timeout.max(Duration::from_millis(1)),
            max_attempts: jobs.job_max_attempts.max(1),
            retry_base: jobs.job_retry_base,
            retry_max: jobs.job_retry_max.max(jobs.job_retry_base),
            retention: jobs.job_retention,
            lease: jobs.job_lease.max(Duration::from_millis(10)),
            poll: jobs.job_poll.max(Duration::from_millis(1)),
        }
    }

    pub fn provider_config(&self) -> ProviderConfig {
        let p = &self.providers;
        ProviderConfig {
            rate: self.tuning.provider_rate.max(0.0),
            secrets: p.provider_secrets.iter().cloned().collect(),
            ingest_window: p.ingest_window,
            ingest_max_items: p.ingest_max_items.max(1),
            webhooks: crate::providers::webhooks::WebhookConfig {
                targets: p.webhooks.clone(),
                secret: p.webhook_secret.clone(),
                max_attempts: p.webhook_max_attempts.max(1),
                retry_base: p.webhook_retry_base,
                queue: p.webhook_queue.max(1),
                timeout: p.webhook_timeout,
            },
            ..ProviderConfig::default()
        }
    }
}

/// `gorgon seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Users to create.
    #[arg(long, env = "GORGON_SEED_USERS", default_value_t = 10_000)]
    pub users: u64,
    /// Items to create, spread over the users.
    #[arg(long, env = "GORGON_SEED_ITEMS", default_value_t = 1_000_000)]
    pub items: u64,
    /// Directory of the embedded store.
    #[arg(long, env = "GORGON_DATA", default_value = "./gorgon-data")]
    pub data: PathBuf,
    /// Load a shared store at this URL instead (as `gorgon run --store`).
    #[arg(long, env = "GORGON_STORE_URL", value_parser = StoreUrl::parse, hide_env_values = true)]
    pub store: Option<StoreUrl>,
    /// Rows per transaction.
    #[arg(long, env = "GORGON_SEED_BATCH", default_value_t = 50_000)]
    pub batch: usize,
    /// Password shared by all seeded users (they share one precomputed hash).
    #[arg(long, env = "GORGON_SEED_PASSWORD", default_value = "gorgon-password")]
    pub password: String,
    /// Hide the progress bar.
    #[arg(long, default_value_t = false)]
    pub quiet: bool,
    /// Write up to 100,000 ids of seeded items to this file (one per line), e.g. for load tools.
    #[arg(long)]
    pub item_ids_out: Option<PathBuf>,
    /// Write the ids of the seeded users to this file (one per line).
    #[arg(long)]
    pub user_ids_out: Option<PathBuf>,
}

/// What an import or an export moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Records {
    Items,
    Users,
}

/// `gorgon import items|users FILE`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    #[arg(value_enum)]
    pub what: Records,
    /// The file: CSV with a header row, or NDJSON (one JSON object a line).
    pub file: PathBuf,
    /// The file's format (default: by its extension, .csv or .ndjson/.jsonl).
    #[arg(long, env = "GORGON_IMPORT_FORMAT", value_enum)]
    pub format: Option<Format>,
    /// Directory of the embedded store.
    #[arg(long, env = "GORGON_DATA", default_value = "./gorgon-data")]
    pub data: PathBuf,
    /// Import into a shared store at this URL instead (as `gorgon run --store`).
    #[arg(long, env = "GORGON_STORE_URL", value_parser = StoreUrl::parse, hide_env_values = true)]
    pub store: Option<StoreUrl>,
    /// Owner of the items of rows without an owner or user_id cell: an email or a user id.
    #[arg(long, env = "GORGON_IMPORT_OWNER")]
    pub owner: Option<String>,
    /// A bad row: skip it (every valid row is stored, every bad one reported) or abort (the
    /// whole file is checked first; one bad row and nothing is stored).
    #[arg(
        long,
        env = "GORGON_IMPORT_ON_ERROR",
        value_enum,
        default_value = "abort"
    )]
    pub on_error: OnError,
    /// What joins the keywords of a CSV cell.
    #[arg(long, env = "GORGON_KEYWORD_SEPARATOR", default_value = "|")]
    pub keyword_separator: char,
    /// Rows written together.
    #[arg(long, env = "GORGON_IMPORT_BATCH", default_value_t = 10_000)]
    pub batch: usize,
    /// Largest item (title, body, url, keywords and extra, in bytes), as for the API.
    #[arg(long, env = "GORGON_MAX_ITEM_BYTES", default_value_t = 128 * 1024)]
    pub max_item_bytes: usize,
    /// No progress bar (bad rows and the summary are still printed).
    #[arg(long, default_value_t = false)]
    pub quiet: bool,
}

/// `gorgon export items|users`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[arg(value_enum)]
    pub what: Records,
    #[arg(
        long,
        env = "GORGON_EXPORT_FORMAT",
        value_enum,
        default_value = "ndjson"
    )]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, env = "GORGON_EXPORT_OUT")]
    pub out: Option<PathBuf>,
    /// Directory of the embedded store.
    #[arg(long, env = "GORGON_DATA", default_value = "./gorgon-data")]
    pub data: PathBuf,
    /// Export from a shared store at this URL instead (as `gorgon run --store`).
    #[arg(long, env = "GORGON_STORE_URL", value_parser = StoreUrl::parse, hide_env_values = true)]
    pub store: Option<StoreUrl>,
    /// What joins the keywords of a CSV cell.
    #[arg(long, env = "GORGON_KEYWORD_SEPARATOR", default_value = "|")]
    pub keyword_separator: char,
    /// Users only: include each account's argon2id password hash (off by default: a hash is an
    /// offline guessing target; ask for it only to move accounts to another store).
    #[arg(long, env = "GORGON_EXPORT_PASSWORD_HASHES", default_value_t = false)]
    pub with_password_hashes: bool,
    /// No progress bar.
    #[arg(long, default_value_t = false)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn roles_parse_and_reject_unknown_names() {
        assert_eq!(parse_roles("all"), Ok(RoleSet::all()));
        assert_eq!(
            parse_roles("web,store"),
            Ok(RoleSet(vec![Role::Web, Role::Store]))
        );
        assert!(parse_roles("web,databse").is_err());
        assert!(parse_roles(",").is_err());
    }
}
