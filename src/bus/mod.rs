//! The bus: how roles talk to each other, by role name and never by `ActorRef`.
//!
//! A request is a type (see [`message`]): it knows its role, its reply type and its delivery
//! class. Callers write `bus.call(GetItem { id }).await` and get the reply's type; the bus finds
//! an instance of the role and delivers the request by the class's rules:
//!
//! - **direct** (reads, token checks, anything carrying a password): at-most-once, the caller's
//!   deadline bounds the wait;
//! - **durable** (writes, jobs): the reply means the receiving role has made the work durable
//!   (in one process: the embedded store committed it);
//! - **event** fan-out goes through [`Bus::publish`] / [`Bus::subscribe`].
//!
//! Routing is in one place, [`Bus::call`]: a local instance first (an actor in this process,
//! found in the node's process group `role:{name}`, no encoding at all); else a direct request to
//! another cluster node that has the role; else the queue transport (Redis), which also takes
//! every durable request; else the cluster. Both transports implement [`Transport`] and carry
//! bytes only; the roles never know which path was taken.

mod event;
mod local;
pub mod message;
pub mod redis;
mod transport;

pub use event::{next_seq, topic_is_public, unix_micros, Event, EventKind, PUBLIC_TOPICS, TOPICS};
pub use local::{Answered, Inflight, RoleActor, RoleArgs};
pub use message::{
    BusError, Call, Codec, Dispatch, Encoded, Handler, NoRequests, Replier, Request, Service,
};
pub use redis::{RedisConfig, RedisLink};
pub use transport::{Outgoing, Transport};

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{Error, Result};

/// Writes the `Role` enum, `ALL`, the names and the start order from the table in
/// [`crate::roles`].
macro_rules! define_roles {
    ($( $(#[$doc:meta])* $role:ident => $module:ident, $name:literal, start $rank:literal, )+) => {
        /// The roles of the design, by name (the table is [`crate::roles`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
        #[serde(rename_all = "lowercase")]
        pub enum Role {
            $( $(#[$doc])* $role, )+
        }

        impl Role {
            pub const ALL: &'static [Role] = &[$( Role::$role, )+];

            pub fn name(self) -> &'static str {
                match self {
                    $( Role::$role => $name, )+
                }
            }

            /// Where the role starts among a node's roles (stopped in reverse).
            fn start_rank(self) -> u8 {
                match self {
                    $( Role::$role => $rank, )+
                }
            }
        }
    };
}

crate::roles::with_roles!(define_roles);

impl Role {
    /// The process group its instances join.
    pub fn group(self) -> String {
        format!("role:{}", self.name())
    }

    /// `roles` in start order.
    pub fn in_start_order(roles: &[Role]) -> Vec<Role> {
        let mut ordered = roles.to_vec();
        ordered.sort_by_key(|r| r.start_rank());
        ordered.dedup();
        ordered
    }

    /// The role with this name.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.iter().copied().find(|r| r.name() == name)
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
        Role::from_name(s.trim()).ok_or_else(|| {
            let known: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("unknown role {s:?} (known: {})", known.join(", "))
        })
    }
}

/// How a request must be delivered (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Direct,
    Durable,
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
    /// This node's instances of each role (indexed by `Role as usize`): the role actors join
    /// and leave it; a lookup is a read lock, with no allocation.
    members: Vec<RwLock<Vec<local::Member>>>,
    config: BusConfig,
    events: broadcast::Sender<Arc<Event>>,
    /// How many times this node may have missed other nodes' events (a lost subscription):
    /// the notify role tells its clients so.
    event_gaps: tokio::sync::watch::Sender<u64>,
    /// The one round-robin of the node, per role: local instances and transports take turns
    /// from it.
    round_robin: Vec<AtomicUsize>,
    endpoints: local::Endpoints,
    /// Keeps durable requests until a consumer takes them (Redis), when the node has one.
    queue: Option<Arc<dyn Transport>>,
    /// Other nodes of the cluster, when the node has joined one.
    peers: Option<Arc<dyn Transport>>,
}

/// The path one request takes.
enum Route<'a> {
    Local,
    Remote(&'a Arc<dyn Transport>),
}

impl Bus {
    /// A bus for one process: every role it calls must be local.
    pub fn new(config: BusConfig) -> Self {
        Self::with_transports(config, None, None)
    }

    /// A bus that reaches roles missing from this process through Redis.
    pub fn with_redis(config: BusConfig, link: Arc<RedisLink>) -> Self {
        Self::with_transports(config, Some(link), None)
    }

    /// A bus with the transports this node has: `queue` (Redis) keeps durable requests until a
    /// consumer takes them; `peers` (the cluster) reaches roles on other nodes directly.
    pub fn with_transports(
        config: BusConfig,
        queue: Option<Arc<dyn Transport>>,
        peers: Option<Arc<dyn Transport>>,
    ) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(16));
        Bus {
            inner: Arc::new(BusInner {
                members: Role::ALL.iter().map(|_| RwLock::default()).collect(),
                config,
                events,
                event_gaps: tokio::sync::watch::channel(0).0,
                round_robin: Role::ALL.iter().map(|_| AtomicUsize::new(0)).collect(),
                endpoints: Default::default(),
                queue,
                peers,
            }),
        }
    }

    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// The deadline of a delivery class.
    pub fn timeout(&self, delivery: Delivery) -> Duration {
        match delivery {
            Delivery::Direct => self.inner.config.direct_timeout,
            Delivery::Durable => self.inner.config.durable_timeout,
        }
    }

    /// Sends `request` to an instance of its role and waits for the reply.
    pub async fn call<R: Request>(&self, request: R) -> Result<R::Reply> {
        let role = <R::Call as Call>::ROLE;
        let timeout = self.timeout(R::DELIVERY);
        let started = std::time::Instant::now();
        let (transport, result) = match self.route(role, R::DELIVERY) {
            Route::Local => ("local", local::call(self, request, timeout).await),
            Route::Remote(link) => (link.name(), self.call_remote(link, request, timeout).await),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::Timeout(_)) => "timeout",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        metrics::histogram!(
            "gorgon_bus_call_duration_seconds",
            "role" => role.name(),
            "kind" => R::KIND,
        )
        .record(started.elapsed().as_secs_f64());
        metrics::counter!(
            "gorgon_bus_calls_total",
            "role" => role.name(),
            "kind" => R::KIND,
            "outcome" => outcome,
            "transport" => transport,
        )
        .increment(1);
        result
    }

    async fn call_remote<R: Request>(
        &self,
        link: &Arc<dyn Transport>,
        request: R,
        timeout: Duration,
    ) -> Result<R::Reply> {
        let role = <R::Call as Call>::ROLE;
        let codec = link.codec();
        let body = codec
            .encode(&R::Call::from(request))
            .map_err(|source| BusError::Encode {
                kind: R::KIND,
                source,
            })?;
        let out = Outgoing {
            role,
            kind: R::KIND,
            delivery: R::DELIVERY,
            secret: R::SECRET,
            body: &body,
            turn: self.turn(role),
        };
        let reply = link.call(out, timeout).await?;
        codec.decode_reply::<R::Reply>(role, &reply)
    }

    /// Where a request for `role` goes: a local instance first; else a direct request to another
    /// cluster node; else the queue (durable work always, when the node has one); else the
    /// cluster.
    fn route(&self, role: Role, delivery: Delivery) -> Route<'_> {
        if local::has_members(self, role) {
            return Route::Local;
        }
        let peers = self.inner.peers.as_ref().filter(|link| link.reaches(role));
        match (delivery, peers, &self.inner.queue) {
            (Delivery::Direct, Some(link), _) => Route::Remote(link),
            (_, _, Some(link)) => Route::Remote(link),
            (_, Some(link), None) => Route::Remote(link),
            // Answers "unavailable" from the in-process path.
            (_, None, None) => Route::Local,
        }
    }

    /// Hands a request that arrived through a transport, as bytes in `codec`, to a local
    /// instance of `role`.
    pub async fn answer(&self, role: Role, bytes: &[u8], codec: Codec) -> Answered {
        self.inner.endpoints.answer(self, role, bytes, codec).await
    }

    /// Starts taking requests for the roles of this node through every transport it has.
    pub async fn serve(&self, roles: &[Role]) -> anyhow::Result<()> {
        for link in [&self.inner.queue, &self.inner.peers].into_iter().flatten() {
            for &role in roles {
                link.clone().serve(role, self.clone()).await?;
            }
        }
        Ok(())
    }

    /// Fans an event out to every subscriber, on this node and (with Redis) on every other;
    /// nobody listening is not an error.
    pub fn publish(&self, mut event: Event) {
        if event.seq == 0 {
            event.seq = next_seq();
        }
        metrics::counter!("gorgon_events_published_total", "topic" => event.kind.topic())
            .increment(1);
        for link in [&self.inner.queue, &self.inner.peers].into_iter().flatten() {
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

    /// Says that other nodes' events may have been missed (a transport lost its subscription
    /// and has it back): events published meanwhile never arrive here.
    pub fn event_gap(&self) {
        self.inner.event_gaps.send_modify(|n| *n += 1);
        metrics::counter!("gorgon_event_gaps_total").increment(1);
    }

    /// Changes at each [`event_gap`](Self::event_gap).
    pub fn watch_event_gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.event_gaps.subscribe()
    }

    /// Whether an instance of `role` is in this process.
    pub fn has_local(&self, role: Role) -> bool {
        local::has_members(self, role)
    }

    /// Whether `role` can be reached from this node: in this process, or through a transport
    /// (another node that has it, or a Redis that answers, where a consumer of it may be).
    pub fn has_role(&self, role: Role) -> bool {
        self.has_local(role)
            || [&self.inner.queue, &self.inner.peers]
                .into_iter()
                .flatten()
                .any(|link| link.reaches(role))
    }

    /// Registers a local actor as an instance of its service's role.
    pub fn join<S: Service>(&self, actor: ractor::ActorCell, service: &Arc<S>) {
        self.inner.endpoints.add::<S::Call>(S::ROLE);
        self.inner.members[S::ROLE as usize]
            .write()
            .push(local::Member::new(actor, service));
    }

    pub fn leave(&self, role: Role, actor: &ractor::ActorCell) {
        let id = actor.get_id();
        self.inner.members[role as usize]
            .write()
            .retain(|m| m.cell.get_id() != id);
    }

    /// This node's instances of `role`.
    fn members(&self, role: Role) -> &RwLock<Vec<local::Member>> {
        &self.inner.members[role as usize]
    }

    /// The next turn of `role`'s round-robin.
    fn turn(&self, role: Role) -> usize {
        self.inner.round_robin[role as usize].fetch_add(1, Ordering::Relaxed)
    }

    fn next_index(&self, role: Role, len: usize) -> usize {
        self.turn(role) % len.max(1)
    }
}
