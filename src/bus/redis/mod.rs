//! The Redis transport: durable mailboxes between processes (lists), replies, and events
//! (pub/sub), as in the design's "Redis reliable queue".
//!
//! - [`RedisLink::call`] puts a durable request on the role's queue (`LPUSH q:{queue}`) with a
//!   correlation id and a deadline, or publishes a direct one to a live consumer's channel, and
//!   waits for the reply on this node's reply channel; a missing reply is a clean
//!   [`Error::Timeout`], and a late one is dropped (the waiter is gone, nothing leaks).
//! - [`consumer`] takes messages in batches into a per-consumer processing list, hands them to
//!   the local role, replies, and acknowledges; durable failures are retried with backoff through
//!   a delayed set, then dead-lettered after `max_attempts`.
//! - [`upkeep`] keeps the heartbeat, lets one reaper at a time give a dead consumer's messages
//!   back to the queue, moves due retries, and samples queue depths into metrics.
//! - [`events`] fans events out through pub/sub so every node's notify role sees every change.
//! - [`dlq`] lists, replays, deletes and purges dead letters, and [`queues`] reads every queue's
//!   figures: one implementation for `gorgon dlq` and the admin API (`http/queues.rs`).
//!
//! When Redis goes away nothing here stops: calls fail fast with [`Error::Unavailable`] (503),
//! background loops retry with backoff, and everything resumes when Redis answers again.

pub mod consumer;
pub mod dlq;
mod envelope;
mod events;
pub mod keys;
mod outbox;
pub mod queues;
mod replies;
mod upkeep;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

pub use envelope::{DeadLetter, Envelope, RawEnvelope};
pub use keys::{queue_name, Keys};

use super::message::{BusError, Codec};
use super::{Bus, Call, Delivery, Event, Outgoing, Request, Role, Transport};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// Settings of the link (see `QueueTuning` for the flags).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub namespace: String,
    pub max_attempts: u32,
    /// Lifetime of a consumer's heartbeat key; it is refreshed three times per lifetime.
    pub heartbeat: Duration,
    pub retry_base: Duration,
    pub batch: usize,
    pub inflight: usize,
    /// How long a call still waits for its reply once the node's inbox is back after a lost
    /// connection (a reply sent meanwhile is lost).
    pub reply_grace: Duration,
}

impl RedisConfig {
    pub fn new(url: &str, namespace: &str) -> Self {
        RedisConfig {
            url: url.to_string(),
            namespace: namespace.to_string(),
            max_attempts: 5,
            heartbeat: Duration::from_secs(5),
            retry_base: Duration::from_millis(200),
            batch: 64,
            inflight: 256,
            reply_grace: Duration::from_secs(2),
        }
    }
}

/// A queue's figures (sampled every second for metrics and the stats role; read on demand by
/// the admin API).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueFigures {
    pub queue: String,
    /// Messages waiting to be taken.
    pub waiting: u64,
    /// Messages taken by a consumer and not yet acknowledged (absent from earlier builds).
    #[serde(default)]
    pub in_flight: u64,
    /// Failed messages waiting for their retry.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
}

/// Hands a direct request that arrived on this node's channel to its role's consumer, without
/// waiting; gives the request back when the consumer is full.
pub(crate) type DirectFeed = Arc<dyn Fn(Vec<u8>) -> Option<Vec<u8>> + Send + Sync>;

/// Most direct requests kept waiting in a role's fallback list.
const DIRECT_BACKLOG: i64 = 10_000;

/// How long a blocking take waits before looking at the shutdown again.
const BLOCK: Duration = Duration::from_secs(1);

/// How long [`RedisLink::close`] waits for the link's tasks to end.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A node's connection to Redis; shared by the bus, the consumers and the upkeep tasks.
pub struct RedisLink {
    config: RedisConfig,
    client: redis::Client,
    /// For every non-blocking command; reconnects by itself.
    conn: ConnectionManager,
    keys: Keys,
    /// This node's id: its consumer name and its reply list.
    node: String,
    reply_key: String,
    replies: replies::Pending,
    /// Publishes direct requests and their replies, many per round trip.
    outbox: outbox::Outbox,
    healthy: AtomicBool,
    /// Since when Redis has answered every health check (None while it does not).
    healthy_since: Mutex<Option<std::time::Instant>>,
    /// Queues this node consumes (heartbeat and reaper scope).
    consuming: Mutex<HashSet<String>>,
    /// Consumers of direct requests on this node, by role name.
    feeds: parking_lot::RwLock<HashMap<String, DirectFeed>>,
    /// Live nodes consuming each role's direct requests (refreshed by `upkeep`).
    members: parking_lot::RwLock<HashMap<Role, Vec<String>>>,
    /// The last queue sample, for the stats role.
    figures: Mutex<Vec<QueueFigures>>,
    events: events::Publisher,
    /// The link's phase of the node's shutdown: its background tasks (inbox, outbox, health,
    /// reaper, samples, events) run on it and end at [`RedisLink::close`].
    shutdown: Shutdown,
    /// A phase of the link's, cancelled first: the consumers stop taking, finish what they took
    /// and end ([`RedisLink::stop_consumers`]).
    consumers: Shutdown,
    /// A phase of the link's, cancelled once the consumers have given back what they held.
    heartbeat: Shutdown,
    /// Whether the inbox is subscribed: a reply published before that would reach nobody.
    inbox_ready: watch::Sender<bool>,
}

impl RedisLink {
    /// Connects (lazily: a node starts even while Redis is down) and starts the reply listener,
    /// the health check and the upkeep tasks, in a phase of `shutdown`.
    pub async fn connect(
        config: RedisConfig,
        node: &str,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Arc<RedisLink>> {
        // rustls needs one process-wide crypto provider for `rediss://`; another component may
        // have installed it first, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = open_client(&config.url)?;
        let reply_grace = config.reply_grace;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(manager)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
        let keys = Keys::new(&config.namespace);
        let reply_key = keys.replies(node);
        let shutdown = shutdown.phase();
        let (inbox_ready, _) = watch::channel(false);
        let link = Arc::new(RedisLink {
            events: events::Publisher::new(),
            config,
            client,
            conn,
            keys,
            node: node.to_string(),
            reply_key,
            replies: replies::Pending::new(reply_grace),
            outbox: outbox::Outbox::new(),
            healthy: AtomicBool::new(false),
            healthy_since: Mutex::new(None),
            consuming: Mutex::new(HashSet::new()),
            feeds: Default::default(),
            members: Default::default(),
            figures: Mutex::new(Vec::new()),
            consumers: shutdown.phase(),
            heartbeat: shutdown.phase(),
            shutdown,
            inbox_ready,
        });
        metrics::counter!("gorgon_bus_late_replies_total").increment(0);
        link.check_health().await;
        if !link.is_healthy() {
            tracing::warn!(url = %redact(&link.config.url), "Redis is not reachable yet; retrying in the background");
        }
        let background = &link.shutdown;
        background.spawn(replies::listen(link.clone()));
        background.spawn(outbox::run(link.clone()));
        background.spawn(upkeep::health(link.clone()));
        background.spawn(upkeep::reaper(link.clone()));
        background.spawn(upkeep::sample_depths(link.clone()));
        background.spawn(upkeep::members(link.clone()));
        if link.is_healthy() {
            // Start serving with the reply channel subscribed (a moment, Redis being up).
            link.wait_for_inbox(Duration::from_secs(2)).await;
        }
        // Drained, not dropped: a heartbeat cut off mid-write could land after the
        // deregistration and announce a consumer that is gone.
        link.heartbeat
            .spawn_draining(upkeep::heartbeat(link.clone()));
        Ok(link)
    }

    /// Starts relaying events between this node's bus and every other node's.
    pub fn relay_events(self: &Arc<Self>, bus: Bus) {
        self.shutdown.spawn(events::subscribe(self.clone(), bus));
        self.shutdown.spawn(events::publish(self.clone()));
    }

    pub(crate) fn feed_direct(&self, role: Role, feed: DirectFeed) {
        self.feeds.write().insert(role.name().to_string(), feed);
    }

    fn direct_feed(&self, role: &str) -> Option<DirectFeed> {
        self.feeds.read().get(role).cloned()
    }

    /// Up to three live consumers of `role`'s direct requests, starting at the bus's turn.
    fn direct_members(&self, role: Role, turn: usize) -> Vec<String> {
        let members = self.members.read();
        let Some(list) = members.get(&role).filter(|l| !l.is_empty()) else {
            return Vec::new();
        };
        let start = turn % list.len();
        list[start..]
            .iter()
            .chain(&list[..start])
            .take(3)
            .cloned()
            .collect()
    }

    /// Forgets a member that no longer listens (until the next refresh says otherwise).
    fn forget_member(&self, role: Role, node: &str) {
        if let Some(list) = self.members.write().get_mut(&role) {
            list.retain(|n| n != node);
        }
    }

    /// Every queue's figures, as last sampled.
    pub fn queue_figures(&self) -> Vec<QueueFigures> {
        self.figures.lock().clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Whether the last health check reached Redis.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// How long Redis has answered without a break (zero while it does not).
    fn healthy_for(&self) -> Duration {
        self.healthy_since
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// A connection for ordinary commands (a cheap clone of the shared one).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own, for a blocking command (which would stall a shared one).
    pub(crate) async fn blocking_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn check_health(&self) {
        let mut conn = self.conn();
        let ok = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        {
            let mut since = self.healthy_since.lock();
            match (ok, since.is_some()) {
                (true, false) => *since = Some(std::time::Instant::now()),
                (false, _) => *since = None,
                _ => {}
            }
        }
        if was != ok {
            if ok {
                tracing::info!("Redis is reachable");
            } else {
                tracing::warn!("Redis is unreachable; retrying");
            }
        }
        metrics::gauge!("gorgon_redis_up").set(if ok { 1.0 } else { 0.0 });
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        tracing::debug!(error = %e, "Redis command failed");
        Error::Unavailable("the message bus (Redis) is unreachable; try again shortly".into())
    }

    fn ensure_healthy(&self) -> Result<()> {
        if self.is_healthy() {
            Ok(())
        } else {
            Err(self.unavailable("health check failed"))
        }
    }

    /// Waits up to `limit` for the inbox to be subscribed; true when it is.
    async fn wait_for_inbox(&self, limit: Duration) -> bool {
        let mut ready = self.inbox_ready.subscribe();
        let subscribed = tokio::time::timeout(limit, ready.wait_for(|r| *r)).await;
        matches!(subscribed, Ok(Ok(_)))
    }

    /// Delivers one encoded request (JSON) and waits up to `timeout` for the encoded reply.
    async fn deliver(&self, out: Outgoing<'_>, timeout: Duration) -> Result<Vec<u8>> {
        self.ensure_healthy()?;
        // A reply published before the inbox subscribed would reach nobody.
        if !*self.inbox_ready.borrow()
            && !self
                .wait_for_inbox(timeout.min(Duration::from_secs(1)))
                .await
        {
            return Err(self.unavailable("the reply channel is not subscribed"));
        }
        let role = out.role;
        let queue = queue_name(role, out.delivery);
        let now = envelope::now_ms();
        let id = envelope::new_id(now);
        let bytes = envelope::encode(&envelope::Outbound {
            id,
            kind: out.kind,
            enqueued_at: now,
            reply_to: Some(&self.reply_key),
            deadline: Some(now + timeout.as_millis() as i64),
            secret: out.secret,
            body: out.body,
        });
        // Registered before sending, so a fast reply finds its waiter; dropped on every way out.
        let waiter = self.replies.register(id);
        let mut sent = false;
        if out.delivery == Delivery::Direct {
            // Straight to a live consumer's channel; PUBLISH says whether anyone heard it.
            for member in &self.direct_members(role, out.turn) {
                let heard = self
                    .outbox
                    .publish(
                        &self.conn,
                        outbox::Channel {
                            name: self.keys.direct(role.name(), member),
                            packed: Some(self.keys.direct_packed(role.name(), member)),
                        },
                        bytes.clone(),
                    )
                    .await
                    .ok_or_else(|| self.unavailable("PUBLISH failed"))?;
                if heard > 0 {
                    sent = true;
                    break;
                }
                self.forget_member(role, member);
            }
        }
        if !sent && out.secret {
            // A password must not wait in a list for a consumer that may never come.
            return Err(Error::Unavailable(format!(
                "no {role} role is reachable right now; try again shortly"
            )));
        }
        if !sent {
            let key = self.keys.queue(&queue);
            let mut pipe = redis::pipe();
            pipe.cmd("LPUSH").arg(&key).arg(bytes).ignore();
            if out.delivery == Delivery::Direct {
                // Nobody may be consuming: keep the fallback list of reads bounded in length
                // and in time (its requests are useless once their callers gave up).
                pipe.cmd("LTRIM")
                    .arg(&key)
                    .arg(0)
                    .arg(DIRECT_BACKLOG - 1)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(&key)
                    .arg(timeout.as_millis() as u64 + 1000)
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.conn())
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        waiter.wait(timeout).await.map_err(|why| match why {
            replies::NoReply::Timeout => Error::Timeout(format!(
                "the {role} role did not answer within {} ms",
                timeout.as_millis()
            )),
            replies::NoReply::Lost => Error::Unavailable(format!(
                "the connection to Redis was lost while waiting for the {role} role's answer \
                 (the request may still be applied); try again shortly"
            )),
        })
    }

    /// Puts durable requests on their role's queue without waiting for them to be handled: once
    /// this returns, the messages are in Redis (and survive a crash as far as Redis's AOF policy
    /// allows). Takes many at once, in one round trip.
    pub async fn enqueue<R: Request>(&self, requests: Vec<R>) -> Result<()> {
        if R::SECRET {
            return Err(BusError::SecretQueued { kind: R::KIND }.into());
        }
        let role = <R::Call as Call>::ROLE;
        let queue = self.keys.queue(&queue_name(role, R::DELIVERY));
        let now = envelope::now_ms();
        let mut messages = Vec::with_capacity(requests.len());
        for request in requests {
            let body = Codec::Json
                .encode(&R::Call::from(request))
                .map_err(|source| BusError::Encode {
                    kind: R::KIND,
                    source,
                })?;
            messages.push(envelope::encode(&envelope::Outbound {
                id: envelope::new_id(now),
                kind: R::KIND,
                enqueued_at: now,
                reply_to: None,
                deadline: None,
                secret: false,
                body: &body,
            }));
        }
        let mut conn = self.conn();
        redis::cmd("LPUSH")
            .arg(queue)
            .arg(messages)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// Stops taking messages, finishes and acknowledges those in flight, gives back any left,
    /// and stops the heartbeat: the first half of a graceful shutdown, before the roles stop.
    pub async fn stop_consumers(&self) {
        // Stop taking, let the inbox hand this node no more direct requests, then wait for the
        // consumers (and every message they hold) to finish.
        self.consumers.cancel();
        self.feeds.write().clear();
        self.consumers.stop().await;
        let queues: Vec<String> = self.consuming.lock().iter().cloned().collect();
        let mut released = Vec::new();
        for queue in queues {
            if consumer::give_back(self, &queue).await {
                released.push(queue);
            }
        }
        // Deregistered only now, and only from the queues whose processing list is empty: while
        // a heartbeat is alive no reaper touches our messages, and a list that could not be given
        // back stays known to the reapers.
        self.consuming.lock().retain(|q| !released.contains(q));
        self.heartbeat.stop().await;
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        if self.consuming.lock().is_empty() {
            pipe.cmd("DEL")
                .arg(self.keys.heartbeat(&self.node))
                .ignore();
        }
        for queue in &released {
            pipe.cmd("SREM")
                .arg(self.keys.consumers(queue))
                .arg(&self.node)
                .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "could not deregister from Redis; the reaper will");
        }
    }

    /// Stops the background tasks (and the heartbeat, if [`RedisLink::stop_consumers`] did not);
    /// call after the roles have stopped.
    pub async fn close(&self) {
        self.shutdown.finish(CLOSE_LIMIT).await;
    }
}

impl Transport for RedisLink {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn codec(&self) -> Codec {
        Codec::Json
    }

    fn durable(&self) -> bool {
        true
    }

    /// A Redis that answers may have a consumer of any role.
    fn reaches(&self, _role: Role) -> bool {
        self.is_healthy()
    }

    fn call<'a>(
        &'a self,
        out: Outgoing<'a>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(self.deliver(out, timeout))
    }

    fn serve(
        self: Arc<Self>,
        role: Role,
        bus: Bus,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
        consumer::start(self.clone(), bus, role);
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, event: &Event) {
        self.events.send(&self.node, event);
    }
}

/// A client for `url` whose sockets notice a dead peer: Nagle's algorithm off (every message is a
/// small write that must not wait for the previous one's ACK), keepalive probes on idle sockets
/// (a subscriber waits silently for hours), and a 5 s limit on unacknowledged data (a partition
/// or a vanished host then breaks the connection, which is re-established, instead of leaving
/// every command to time out for the kernel's 15 minutes).
pub(crate) fn open_client(url: &str) -> anyhow::Result<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| anyhow::anyhow!("bad Redis URL: {e}"))?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(Duration::from_secs(5));
    redis::Client::open(info.set_tcp_settings(tcp))
        .map_err(|e| anyhow::anyhow!("bad Redis URL: {e}"))
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Exponential backoff for reconnect loops: 100 ms doubling to 2 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(30), Duration::from_secs(2));
    }
}
