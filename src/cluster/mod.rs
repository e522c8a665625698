//! Clustering: nodes joined with `ractor_cluster`, so direct calls go node to node.
//!
//! With `--cluster-listen` a node runs a `ractor_cluster` node server and dials its `--join`
//! seeds. What it offers the others:
//!
//! - a **role gateway** ([`gateway`]) per local role, in the process group `role:{name}` of the
//!   scope [`CLUSTER_SCOPE`]: the bus sends direct requests (reads, token checks) for a role this
//!   node lacks to a member, local first then round-robin, with a timeout and another member on
//!   failure ([`ClusterLink::call`]). The groups say *where* a call goes; it travels on this
//!   node's own connection to the member's node ([`direct`], framing and cookie handshake in
//!   [`wire`]), or through the gateway actor while that node's address is not known yet;
//! - a **node agent** ([`agent`]) in `gorgon:nodes`, which answers each peer's heartbeat with this
//!   node's summary ([`NodeSummary`]): [`ClusterLink::nodes`] returns them, which
//!   `GET /api/v1/cluster` (`http::cluster`) and the stats role shape and add up.
//!
//! Durable work (writes, jobs) keeps going through Redis when the node has `--redis`: a reliable
//! queue survives the loss of a node, a call in flight does not. Without Redis, durable requests
//! cross the cluster too (a 2xx still means committed; a request cut by a crash fails instead of
//! being redelivered). Membership, seeds and heartbeats are in [`membership`].
//!
//! Security: nodes authenticate with a shared cookie (challenge/responses, on the cluster session
//! and on the direct-call connections; the cookie itself is never sent). Traffic between nodes is not encrypted: `ractor_cluster`'s TLS is experimental
//! and its transitive dialling (how a node finds the peers of its seed) is always plain TCP, so
//! this build does not offer TLS. Run a cluster on a private network, with a long random cookie.

pub mod agent;
pub mod direct;
pub mod gateway;
pub mod history;
pub mod membership;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};
use serde::{Deserialize, Serialize};

use futures::future::BoxFuture;

use crate::bus::{Bus, Codec, Delivery, Outgoing, RedisLink, Role, Transport};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::telemetry::annotations::Annotation;
use crate::telemetry::history::{Interval, StatsHub};
use gateway::{GatewayArgs, GatewayMessage, RoleGateway};

/// The `ractor::pg` scope of everything the cluster shares.
pub const CLUSTER_SCOPE: &str = "gorgon-cluster";
/// The process group of the node agents.
pub const NODES_GROUP: &str = "gorgon:nodes";
/// The cookie of a loopback-only cluster started without one.
pub const LOOPBACK_COOKIE: &str = "gorgon-loopback-only";

/// Validated cluster settings (built from the command line by `configuration`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub listen: SocketAddr,
    /// Where direct calls from peers are taken (port 0: the system picks one).
    pub data_listen: SocketAddr,
    pub max_frame: usize,
    /// Direct requests from peers handled at once.
    pub concurrency: usize,
    /// The host peers dial to reach this node (the listener's address).
    pub advertise_host: String,
    pub seeds: Vec<String>,
    pub cookie: String,
    /// This node's name (unique per start: the node id).
    pub node_name: String,
    pub call_timeout: Duration,
    pub call_attempts: u32,
    pub heartbeat: Duration,
    pub missed_pings: u32,
    pub join_wait: Duration,
}

impl ClusterConfig {
    /// `host:port` as peers see it.
    pub fn advertised(&self) -> String {
        format!("{}:{}", self.advertise_host, self.listen.port())
    }
}

/// One node as the cluster sees it (answered by its agent once per heartbeat).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSummary {
    pub node_id: String,
    /// `host:port` of its cluster listener.
    pub cluster_addr: String,
    /// `host:port` where it takes direct calls from other nodes.
    #[serde(default)]
    pub data_addr: Option<String>,
    /// Its HTTP address, when it runs the web role.
    pub http_addr: Option<String>,
    pub roles: Vec<String>,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: f64,
    /// "ok", or what is wrong ("redis unreachable").
    pub health: String,
    /// "embedded" when the node runs the store role on its embedded database.
    pub store_backend: Option<String>,
    /// The node's HTTP traffic, one entry a second, oldest first.
    pub recent: Vec<Interval>,
    /// The annotations the node keeps (`telemetry::annotations`): each node merges its peers'
    /// into its own, so an annotation put through any node reaches every node's stats.
    #[serde(default)]
    pub annotations: Vec<Annotation>,
}

/// How this node answers for itself.
pub struct LocalNode {
    pub node_id: String,
    pub roles: Vec<Role>,
    /// The store's backend ("embedded", "mongodb") when this node runs the store role.
    pub store_backend: Option<&'static str>,
    pub started: Instant,
    pub started_at: DateTime<Utc>,
    pub cluster_addr: String,
    /// Where this node takes direct calls, once its listener is bound.
    pub data_addr: OnceLock<String>,
    pub stats: Arc<StatsHub>,
    pub redis: Option<Arc<RedisLink>>,
    pub http_addr: OnceLock<SocketAddr>,
    /// Set when shutdown begins: `/readyz` answers 503 and responses close their connections,
    /// so a load balancer moves clients elsewhere before the node stops accepting.
    pub draining: std::sync::atomic::AtomicBool,
}

impl LocalNode {
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node as it sees itself (a node that is not clustered is its own cluster).
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            summary: self.summary(membership::RECENT_SECONDS as usize),
            this_node: true,
            reachable: true,
            last_seen: Duration::ZERO,
        }
    }

    pub fn summary(&self, seconds: usize) -> NodeSummary {
        let (recent, _) = self.stats.history(seconds);
        let health = match &self.redis {
            Some(link) if !link.is_healthy() => "redis unreachable".to_string(),
            _ => "ok".to_string(),
        };
        NodeSummary {
            node_id: self.node_id.clone(),
            cluster_addr: self.cluster_addr.clone(),
            data_addr: self.data_addr.get().cloned(),
            http_addr: self.http_addr.get().map(|a| a.to_string()),
            roles: self.roles.iter().map(|r| r.name().to_string()).collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            health,
            store_backend: self.store_backend.map(str::to_string),
            recent,
            annotations: self.stats.annotations().all(),
        }
    }
}

/// A node as this one sees it: its last summary, and whether it answers its heartbeats.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub summary: NodeSummary,
    /// True for this node.
    pub this_node: bool,
    /// False while it misses heartbeats.
    pub reachable: bool,
    /// Since it last answered a heartbeat (zero for this node).
    pub last_seen: Duration,
}

impl NodeStatus {
    /// Answers its heartbeats and says it is well.
    pub fn healthy(&self) -> bool {
        self.reachable && self.summary.health == "ok"
    }
}

/// This node's place in the cluster.
pub struct ClusterLink {
    config: Arc<ClusterConfig>,
    local: Arc<LocalNode>,
    server: ActorRef<NodeServerMessage>,
    peers: Arc<membership::Peers>,
    history: Arc<history::ClusterHistory>,
    direct_server: Arc<direct::DirectServer>,
    direct: direct::DirectClient,
    /// Gateways and the agent, stopped first at shutdown so peers stop routing here.
    actors: Mutex<Vec<ActorCell>>,
    /// A phase of the link's that counts the gateways' and the agent's tasks
    /// ([`ClusterLink::leave`] waits for them).
    actor_tasks: Shutdown,
    /// A phase of the link's that counts the node server's task ([`ClusterLink::close`] waits
    /// for it).
    server_task: Shutdown,
    /// The link's phase of the node's shutdown: its background tasks, the direct server and the
    /// connections to peers run on it.
    shutdown: Shutdown,
}

impl ClusterLink {
    /// Starts the node server and the node agent, dials the seeds and waits (up to
    /// `join_wait`) until each has a session and the peers' summaries are in; in a phase of
    /// `shutdown`.
    pub async fn start(
        config: ClusterConfig,
        local: Arc<LocalNode>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Arc<Self>> {
        let shutdown = shutdown.phase();
        let config = Arc::new(config);
        // Exported from the start, so dashboards show a zero rather than nothing.
        metrics::gauge!("gorgon_cluster_peers").set(0.0);
        metrics::counter!("gorgon_cluster_peers_dropped_total").increment(0);
        metrics::counter!("gorgon_cluster_auth_failures_total").increment(0);
        for &role in Role::ALL {
            metrics::counter!("gorgon_cluster_call_retries_total", "role" => role.name())
                .increment(0);
        }
        let limits = direct::DirectLimits {
            cookie: config.cookie.clone(),
            max_frame: config.max_frame,
            handshake_timeout: config.call_timeout.max(Duration::from_secs(1)),
            concurrency: config.concurrency,
        };
        let direct_server =
            direct::DirectServer::bind(config.data_listen, limits.clone(), &shutdown)
                .await
                .with_context(|| {
                    format!("cannot listen for direct calls on {}", config.data_listen)
                })?;
        let _ = local.data_addr.set(direct_server.local_addr().to_string());
        let server = NodeServer::new(
            config.listen.port(),
            config.cookie.clone(),
            config.node_name.clone(),
            config.advertise_host.clone(),
            None,
            Some(NodeConnectionMode::Transitive),
        )
        .with_listen_addr(config.listen.ip());
        let (server, server_handle) = Actor::spawn(None, server, ())
            .await
            .with_context(|| format!("cannot listen for the cluster on {}", config.listen))?;
        let server_task = shutdown.phase();
        server_task.watch(server_handle);
        let peers = Arc::new(membership::Peers::default());
        let history = Arc::new(history::ClusterHistory::default());
        membership::watch_sessions(&server, peers.clone(), &shutdown)
            .map_err(|e| anyhow::anyhow!("cannot watch cluster sessions: {e}"))?;
        let (agent, agent_handle) = Actor::spawn(None, agent::NodeAgent, local.clone())
            .await
            .context("the cluster node agent failed to start")?;
        let actor_tasks = shutdown.phase();
        actor_tasks.watch(agent_handle);
        let link = Arc::new(ClusterLink {
            config: config.clone(),
            local,
            server: server.clone(),
            peers: peers.clone(),
            history: history.clone(),
            direct_server,
            direct: direct::DirectClient::new(limits, config.call_timeout, shutdown.child()),
            actors: Mutex::new(vec![agent.get_cell()]),
            actor_tasks,
            server_task,
            shutdown,
        });
        if let Err(e) = link.join_seeds().await {
            link.close().await;
            return Err(e);
        }
        link.shutdown.spawn(membership::run(
            config.clone(),
            server,
            peers,
            link.local.clone(),
            history,
        ));
        tracing::info!(
            listen = %config.listen,
            name = %config.node_name,
            seeds = ?config.seeds,
            peers = link.peers.list().len(),
            "cluster node started"
        );
        Ok(link)
    }

    /// Dials the seeds and waits for their sessions and summaries, or for `join_wait`. Fails when
    /// every seed refused this node's cookie (a configuration error no retry will fix).
    async fn join_seeds(&self) -> anyhow::Result<()> {
        if self.config.seeds.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.join_wait;
        membership::dial_missing_seeds_once(&self.server, &self.config).await;
        loop {
            let sessions = membership::sessions(&self.server).await.unwrap_or_default();
            let summaries = self
                .peers
                .list()
                .iter()
                .filter(|p| p.summary.is_some())
                .count();
            if !sessions.is_empty() && summaries >= sessions.len() {
                return Ok(());
            }
            if sessions.is_empty() && self.peers.refused() >= self.config.seeds.len() {
                anyhow::bail!(
                    "the cluster seeds {:?} refused this node during authentication: \
                     GORGON_CLUSTER_COOKIE differs from theirs",
                    self.config.seeds
                );
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    seeds = ?self.config.seeds,
                    "no cluster seed answered yet: starting alone, they will be dialled again"
                );
                return Ok(());
            }
            self.refresh().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One heartbeat round now (start-up wants the peers' summaries before going on).
    async fn refresh(&self) {
        if let Some(sessions) = membership::sessions(&self.server).await {
            membership::refresh_now(
                &self.config,
                &self.peers,
                &self.local,
                &self.history,
                sessions,
            )
            .await;
        }
    }

    /// Offers the local role `role` to the cluster: on the direct-call server, and through a
    /// gateway actor in the cluster's process group (peers route by that group).
    async fn offer(&self, role: Role, bus: Bus) -> anyhow::Result<()> {
        let answering = bus.clone();
        self.direct_server.register(
            role,
            Arc::new(move |body: Vec<u8>| {
                let bus = answering.clone();
                Box::pin(async move { gateway::answer(&bus, role, &body).await })
            }),
        );
        let (gateway, handle) = Actor::spawn(
            None,
            RoleGateway,
            GatewayArgs {
                bus,
                role,
                concurrency: self.config.concurrency,
            },
        )
        .await
        .with_context(|| format!("the {role} role's cluster gateway failed to start"))?;
        self.actor_tasks.watch(handle);
        self.actors.lock().push(gateway.get_cell());
        Ok(())
    }

    pub fn local(&self) -> &Arc<LocalNode> {
        &self.local
    }

    /// Remote gateways of `role` on peers that answer their heartbeats (if none does, all).
    fn members(&self, role: Role) -> Vec<ActorCell> {
        let all = remote_members(role);
        let suspects = self.peers.suspects();
        if suspects.is_empty() {
            return all;
        }
        let (healthy, judged): (Vec<ActorCell>, Vec<ActorCell>) = all
            .into_iter()
            .partition(|cell| !suspects.contains(&cell.get_id().node()));
        if healthy.is_empty() {
            judged
        } else {
            healthy
        }
    }

    /// Whether some other node offers `role` (asked on every call the bus routes).
    pub fn has_member(&self, role: Role) -> bool {
        ractor::pg::get_scoped_members(&CLUSTER_SCOPE.to_string(), &role.group())
            .iter()
            .any(|cell| !cell.get_id().is_local())
    }

    /// Sends an encoded request to a remote instance of its role. A direct request that times
    /// out or whose node goes away is tried on another member, up to `call_attempts`, within
    /// `timeout`.
    async fn deliver(&self, out: Outgoing<'_>, timeout: Duration) -> Result<Vec<u8>> {
        let role = out.role;
        let direct = out.delivery == Delivery::Direct;
        let attempts = if direct { self.config.call_attempts } else { 1 };
        let deadline = Instant::now() + timeout;
        let mut tried: Vec<ActorCell> = Vec::new();
        let mut last = Error::Unavailable(format!("no {role} role is reachable in the cluster"));
        for attempt in 0..attempts {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let members = self.members(role);
            let fresh: Vec<&ActorCell> = members
                .iter()
                .filter(|m| !tried.iter().any(|t| t.get_id() == m.get_id()))
                .collect();
            let pool: Vec<&ActorCell> = if fresh.is_empty() {
                members.iter().collect()
            } else {
                fresh
            };
            if pool.is_empty() {
                break;
            }
            let cell = pool[(out.turn + attempt as usize) % pool.len()].clone();
            if attempt > 0 {
                metrics::counter!("gorgon_cluster_call_retries_total", "role" => role.name())
                    .increment(1);
            }
            let per_call = if direct {
                self.config.call_timeout.min(left)
            } else {
                left
            };
            // The member's node takes direct calls on its own connection; a node that has not
            // announced one yet is called through its gateway actor.
            let outcome = match self.peers.data_addr(cell.get_id().node()) {
                Some(addr) => self.direct.call(&addr, role, out.body, per_call).await,
                None => {
                    self.call_gateway(&cell, out.body.to_vec(), per_call, role)
                        .await
                }
            };
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(error) => last = error,
            }
            tried.push(cell);
        }
        Err(last)
    }

    /// A call through the member's `ractor_cluster` gateway actor.
    async fn call_gateway(
        &self,
        cell: &ActorCell,
        bytes: Vec<u8>,
        timeout: Duration,
        role: Role,
    ) -> Result<Vec<u8>> {
        let gateway: ActorRef<GatewayMessage> = cell.clone().into();
        match gateway
            .call(|port| GatewayMessage::Call(bytes, port), Some(timeout))
            .await
        {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(Error::Timeout(format!(
                "the {role} role on another node did not answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(CallResult::SenderError) | Err(_) => Err(Error::Unavailable(format!(
                "the {role} role's node went away before answering"
            ))),
        }
    }

    /// Every node of the cluster, this one first.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let mut nodes = vec![self.local.status()];
        for peer in self.peers.list() {
            let Some(summary) = peer.summary else {
                continue;
            };
            nodes.push(NodeStatus {
                summary,
                this_node: false,
                reachable: peer.missed == 0,
                last_seen: peer.last_answer.map(|t| t.elapsed()).unwrap_or_default(),
            });
        }
        nodes
    }

    /// The cluster's traffic per second (every node's added up), the last `last` seconds.
    pub fn history(&self, last: usize) -> Vec<Interval> {
        self.history.series(last, Utc::now())
    }

    /// Peers whose summary says they run the store role on an embedded database.
    /// The other nodes that run the store role, each with its backend.
    pub fn store_nodes(&self) -> Vec<(String, String)> {
        self.peers
            .list()
            .into_iter()
            .filter_map(|p| p.summary)
            .filter_map(|s| {
                let backend = s.store_backend?;
                Some((format!("{} ({})", s.node_id, s.cluster_addr), backend))
            })
            .collect()
    }

    /// Leaves every process group (peers stop routing here at once) and waits for the remote
    /// requests being handled to finish. The sessions stay open for the rest of the drain.
    pub async fn leave(&self, timeout: Duration) {
        let actors: Vec<_> = self.actors.lock().drain(..).collect();
        // A request that still arrives is answered "unavailable" and retried on another member.
        self.direct_server.stop_accepting();
        for cell in actors {
            if let Err(e) = cell.drain_and_wait(Some(timeout)).await {
                tracing::warn!(error = %e, "a cluster gateway did not stop in time");
                cell.kill();
            }
        }
        // Every one has stopped (or was killed): wait for their tasks to end.
        self.actor_tasks.stop().await;
    }

    /// Closes every session and the listener.
    pub async fn close(&self) {
        self.shutdown.cancel();
        self.direct_server.close();
        for cell in self.actors.lock().drain(..) {
            cell.stop(Some("shutdown".into()));
        }
        self.server.stop(Some("shutdown".into()));
        self.server_task.finish(Duration::from_secs(5)).await;
    }
}

impl Transport for ClusterLink {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn codec(&self) -> Codec {
        Codec::Binary
    }

    fn durable(&self) -> bool {
        false
    }

    fn reaches(&self, role: Role) -> bool {
        self.has_member(role)
    }

    fn call<'a>(&'a self, out: Outgoing<'a>, timeout: Duration) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(self.deliver(out, timeout))
    }

    fn serve(self: Arc<Self>, role: Role, bus: Bus) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move { self.offer(role, bus).await })
    }
}

/// The gateways of `role` on other nodes.
fn remote_members(role: Role) -> Vec<ActorCell> {
    ractor::pg::get_scoped_members(&CLUSTER_SCOPE.to_string(), &role.group())
        .into_iter()
        .filter(|cell| !cell.get_id().is_local())
        .collect()
}
