//! The bus: how roles talk to each other, by role name and never by `ActorRef`.
//!
//! A role defines a [`Protocol`]: its request and reply types (serde data with stable names) and the
//! delivery class of each request. Callers use [`Bus::call`]; the bus finds an instance of the role
//! and delivers the request by the class's rules:
//!
//! - **direct** (reads, token checks): at-most-once, the caller's deadline bounds the wait;
//! - **durable** (writes, jobs): the reply means the receiving role has made the work durable
//!   (in one process: the embedded store committed it);
//! - **event** fan-out goes through [`Bus::publish`] / [`Bus::subscribe`].
//!
//! In one process, instances are local `ractor` actors found in the node's process groups
//! (`role:{name}`, scoped per node so several nodes can share a test process). A role that is
//! not in this process is reached through another node of the cluster (`crate::cluster`, with
//! `--cluster-listen`: direct requests, node to node) or through Redis mailboxes ([`redis`], with
//! `--redis`: durable requests on the role's queue, replies on this node's reply channel).
//! Local instances are always preferred; the roles never know which path was taken.

mod event;
mod local;
pub mod redis;

pub use event::{topic_is_public, Event, EventKind, PUBLIC_TOPICS, TOPICS};
pub use local::RoleMessage;
pub use redis::{RedisConfig, RedisLink};

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::cluster::ClusterLink;
use crate::error::{Error, Result};

/// The roles of the design, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Web,
    Auth,
    App,
    Store,
    Provider,
    Notify,
    Stats,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Web,
        Role::Auth,
        Role::App,
        Role::Store,
        Role::Provider,
        Role::Notify,
        Role::Stats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Auth => "auth",
            Role::App => "app",
            Role::Store => "store",
            Role::Provider => "provider",
            Role::Notify => "notify",
            Role::Stats => "stats",
        }
    }

    /// The process group its instances join.
    pub fn group(self) -> String {
        format!("role:{}", self.name())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?} (known: web, auth, app, store, provider, notify, stats)"
                )
            })
    }
}

/// The path one request takes.
enum Transport<'a> {
    Local,
    Cluster(&'a Arc<ClusterLink>),
    Redis(&'a Arc<RedisLink>),
}

/// How a request must be delivered (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Direct,
    Durable,
}

/// The message contract of one role.
pub trait Protocol: Send + Sync + 'static {
    const ROLE: Role;
    type Request: Serialize + DeserializeOwned + Send + fmt::Debug + 'static;
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// The stable name of a request kind, used in metrics, logs and queue names.
    fn kind(request: &Self::Request) -> &'static str;
    fn delivery(request: &Self::Request) -> Delivery;
}

/// Deadlines per delivery class.
#[derive(Debug, Clone, Copy)]
pub struct BusConfig {
    pub direct_timeout: Duration,
    pub durable_timeout: Duration,
    /// Capacity of the in-process event channel; a subscriber further behind loses the oldest.
    pub event_capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            direct_timeout: Duration::from_secs(5),
            durable_timeout: Duration::from_secs(30),
            event_capacity: 4096,
        }
    }
}

/// The node's handle on the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    /// Scope of this node's process groups, unique per node.
    scope: String,
    config: BusConfig,
    events: broadcast::Sender<Arc<Event>>,
    round_robin: [AtomicUsize; Role::ALL.len()],
    /// The way to roles in other processes, when the node runs with `--redis`.
    redis: Option<Arc<RedisLink>>,
    /// Other nodes of a `ractor_cluster`, when the node runs with `--cluster-listen`.
    cluster: Option<Arc<ClusterLink>>,
}

impl Bus {
    /// A bus for one process: every role it calls must be local.
    pub fn new(config: BusConfig) -> Self {
        Self::build(config, None, None)
    }

    /// A bus that reaches roles missing from this process through Redis.
    pub fn with_redis(config: BusConfig, link: Arc<RedisLink>) -> Self {
        Self::build(config, Some(link), None)
    }

    /// A bus with every transport this node has: direct requests for roles missing here go to
    /// another cluster node, durable ones through Redis (or the cluster when there is no Redis).
    pub fn with_transports(
        config: BusConfig,
        redis: Option<Arc<RedisLink>>,
        cluster: Option<Arc<ClusterLink>>,
    ) -> Self {
        Self::build(config, redis, cluster)
    }

    fn build(
        config: BusConfig,
        redis: Option<Arc<RedisLink>>,
        cluster: Option<Arc<ClusterLink>>,
    ) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(16));
        Bus {
            inner: Arc::new(BusInner {
                scope: format!("gorgon-node-{}", uuid::Uuid::now_v7()),
                config,
                events,
                round_robin: Default::default(),
                redis,
                cluster,
            }),
        }
    }

    pub fn redis(&self) -> Option<&Arc<RedisLink>> {
        self.inner.redis.as_ref()
    }

    pub fn cluster(&self) -> Option<&Arc<ClusterLink>> {
        self.inner.cluster.as_ref()
    }

    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Sends `request` to an instance of `P::ROLE` and waits for its reply.
    pub async fn call<P: Protocol>(&self, request: P::Request) -> Result<P::Reply> {
        let kind = P::kind(&request);
        let delivery = P::delivery(&request);
        let timeout = match delivery {
            Delivery::Direct => self.inner.config.direct_timeout,
            Delivery::Durable => self.inner.config.durable_timeout,
        };
        let started = std::time::Instant::now();
        let (transport, result) = match self.route(P::ROLE, delivery) {
            Transport::Local => ("local", local::call::<P>(self, request, timeout).await),
            Transport::Cluster(link) => ("cluster", link.call::<P>(&request, timeout).await),
            Transport::Redis(link) => ("redis", link.call::<P>(request, timeout).await),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::Timeout(_)) => "timeout",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        metrics::histogram!(
            "gorgon_bus_call_duration_seconds",
            "role" => P::ROLE.name(),
            "kind" => kind,
        )
        .record(started.elapsed().as_secs_f64());
        metrics::counter!(
            "gorgon_bus_calls_total",
            "role" => P::ROLE.name(),
            "kind" => kind,
            "outcome" => outcome,
            "transport" => transport,
        )
        .increment(1);
        result
    }

    /// Where a request for `role` goes: a local instance first; else a direct request to another
    /// cluster node; else Redis (durable work always, when the node has it); else the cluster.
    fn route(&self, role: Role, delivery: Delivery) -> Transport<'_> {
        if local::has_members(self, role) {
            return Transport::Local;
        }
        let cluster = self
            .inner
            .cluster
            .as_ref()
            .filter(|link| link.has_member(role));
        match (delivery, cluster, &self.inner.redis) {
            (Delivery::Direct, Some(link), _) => Transport::Cluster(link),
            (_, _, Some(link)) => Transport::Redis(link),
            (_, Some(link), None) => Transport::Cluster(link),
            // Answers "unavailable" from the in-process path.
            (_, None, None) => Transport::Local,
        }
    }

    /// Calls a local instance of `P::ROLE` only (how requests from other processes are handed
    /// to this node's roles).
    pub(crate) async fn call_local<P: Protocol>(
        &self,
        request: P::Request,
        timeout: Duration,
    ) -> Result<P::Reply> {
        local::call::<P>(self, request, timeout).await
    }

    /// Fans an event out to every subscriber, on this node and (with Redis) on every other;
    /// nobody listening is not an error.
    pub fn publish(&self, event: Event) {
        metrics::counter!("gorgon_events_published_total", "topic" => event.kind.topic())
            .increment(1);
        if let Some(link) = &self.inner.redis {
            link.publish(&event);
        }
        self.broadcast_local(event);
    }

    /// Delivers an event to this node's subscribers only (events from other nodes arrive so).
    pub fn broadcast_local(&self, event: Event) {
        let _ = self.inner.events.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.events.subscribe()
    }

    /// Whether an instance of `role` is in this process.
    pub fn has_local(&self, role: Role) -> bool {
        local::has_members(self, role)
    }

    /// Whether `role` can be reached from this node: in this process, or through a Redis that
    /// answers (where a consumer of the role may be).
    pub fn has_role(&self, role: Role) -> bool {
        self.has_local(role)
            || self
                .inner
                .cluster
                .as_ref()
                .is_some_and(|link| link.has_member(role))
            || self.inner.redis.as_ref().is_some_and(|l| l.is_healthy())
    }

    /// Registers a local actor as an instance of `role`.
    pub fn join(&self, role: Role, actor: ractor::ActorCell) {
        ractor::pg::join_scoped(self.inner.scope.clone(), role.group(), vec![actor]);
    }

    pub fn leave(&self, role: Role, actor: ractor::ActorCell) {
        ractor::pg::leave_scoped(self.inner.scope.clone(), role.group(), vec![actor]);
    }

    fn scope(&self) -> &String {
        &self.inner.scope
    }

    fn next_index(&self, role: Role, len: usize) -> usize {
        let slot = &self.inner.round_robin[role as usize];
        slot.fetch_add(1, Ordering::Relaxed) % len.max(1)
    }
}
