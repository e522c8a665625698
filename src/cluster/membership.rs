//! Who is in the cluster: sessions to peers, the seeds that must be dialled again, and the
//! heartbeat that finds peers which stopped answering.
//!
//! `ractor_cluster` gives sessions but no discovery or reconnection: a node dials its seeds
//! (in `Transitive` mode a new session also dials every peer the seed knows, so one live seed is
//! enough), and nothing dials anything again after a loss. So once per heartbeat this loop
//! lists the authenticated sessions, dials each seed that has none (with backoff), and calls every
//! peer's node agent. The answer is kept as the peer's summary; a peer that misses
//! `missed_pings` answers in a row is hung (a stopped process keeps its socket open and is never
//! noticed otherwise), so its session is stopped and its group members vanish with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage};
use tokio::sync::mpsc;

use super::agent::AgentMessage;
use super::history::ClusterHistory;
use super::{ClusterConfig, LocalNode, NodeSummary, CLUSTER_SCOPE, NODES_GROUP};
use crate::shutdown::Shutdown;

/// Seconds of per-second traffic each heartbeat brings back from a peer.
pub(super) const RECENT_SECONDS: u32 = 10;

/// What this node knows of one peer.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// `name@host` of the peer's node server.
    pub name: String,
    pub missed: u32,
    pub last_answer: Option<Instant>,
    pub summary: Option<NodeSummary>,
}

/// The peers, by session, shared with the HTTP layer.
#[derive(Default)]
pub(super) struct Peers {
    by_session: Mutex<BTreeMap<u64, Peer>>,
    /// Sessions this node dialled that were closed during authentication.
    refused: std::sync::atomic::AtomicUsize,
}

impl Peers {
    /// How many of this node's dials were refused during authentication so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn list(&self) -> Vec<Peer> {
        self.by_session.lock().values().cloned().collect()
    }

    /// Where the peer of `session` takes direct calls, once its heartbeat said so.
    pub fn data_addr(&self, session: u64) -> Option<String> {
        self.by_session
            .lock()
            .get(&session)
            .and_then(|peer| peer.summary.as_ref())
            .and_then(|summary| summary.data_addr.clone())
    }

    /// Sessions whose peer missed the last heartbeat: calls avoid them while they are judged.
    pub fn suspects(&self) -> std::collections::HashSet<u64> {
        self.by_session
            .lock()
            .iter()
            .filter(|(_, peer)| peer.missed > 0)
            .map(|(session, _)| *session)
            .collect()
    }
}

/// Session events, forwarded from the node server's actor (whose callbacks must not block).
enum SessionEvent {
    Opened(NodeServerSessionInformation),
    Authenticated(NodeServerSessionInformation),
    Disconnected(NodeServerSessionInformation),
}

struct Forward(mpsc::UnboundedSender<SessionEvent>);

impl NodeEventSubscription for Forward {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Opened(ses));
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Disconnected(ses));
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Authenticated(ses));
    }
}

fn peer_name(ses: &NodeServerSessionInformation) -> Option<String> {
    ses.peer_name.as_ref().map(|n| n.name.clone())
}

fn peer_addr(ses: &NodeServerSessionInformation) -> String {
    ses.peer_name
        .as_ref()
        .map(|n| n.connection_string.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ses.peer_addr.clone())
}

/// Subscribes to session events and logs them; an authentication that fails is named as such
/// (the crate itself only says the connection closed).
pub(super) fn watch_sessions(
    server: &ActorRef<NodeServerMessage>,
    peers: Arc<Peers>,
    stop: &Shutdown,
) -> Result<(), MessagingErr<NodeServerMessage>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    server.cast(NodeServerMessage::SubscribeToEvents {
        id: "gorgon-membership".into(),
        subscription: Box::new(Forward(tx)),
    })?;
    stop.spawn(async move {
        let mut authenticated: HashMap<u64, String> = HashMap::new();
        loop {
            let Some(event) = rx.recv().await else {
                return;
            };
            match event {
                SessionEvent::Opened(ses) => {
                    tracing::debug!(session = ses.node_id, addr = %ses.peer_addr, inbound = ses.is_server, "cluster session opened");
                }
                SessionEvent::Authenticated(ses) => {
                    let name = peer_name(&ses).unwrap_or_else(|| ses.peer_addr.clone());
                    tracing::info!(peer = %name, addr = %peer_addr(&ses), "joined a cluster peer");
                    authenticated.insert(ses.node_id, name);
                }
                SessionEvent::Disconnected(ses) => {
                    peers.by_session.lock().remove(&ses.node_id);
                    if let Some(name) = authenticated.remove(&ses.node_id) {
                        tracing::warn!(peer = %name, "a cluster peer left");
                    } else {
                        let name = peer_name(&ses);
                        // Without a name the handshake never started (a lost race between two
                        // nodes dialling each other); a name already joined lost an election.
                        let duplicate = name
                            .as_ref()
                            .is_none_or(|n| authenticated.values().any(|known| known == n));
                        if duplicate {
                            tracing::debug!(addr = %ses.peer_addr, "a duplicate cluster session closed");
                        } else {
                            // The handshake never completed: almost always a cookie mismatch.
                            tracing::warn!(
                                peer = name.as_deref().unwrap_or_default(),
                                addr = %ses.peer_addr,
                                inbound = ses.is_server,
                                "a cluster peer was refused during authentication \
                                 (do both nodes use the same GORGON_CLUSTER_COOKIE?)"
                            );
                            metrics::counter!("gorgon_cluster_auth_failures_total").increment(1);
                            if !ses.is_server {
                                peers
                                    .refused
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// Authenticated sessions, by node id.
pub(super) async fn sessions(
    server: &ActorRef<NodeServerMessage>,
) -> Option<HashMap<u64, NodeServerSessionInformation>> {
    match server
        .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
        .await
    {
        Ok(CallResult::Success(sessions)) => Some(sessions),
        _ => None,
    }
}

/// Whether a session to `seed` exists (by the address we dialled or the one the peer advertises).
/// Sessions know their peer by address only, so a seed named by host (`gorgon-store-0.gorgon-store:7400`
/// in Kubernetes, `backend:7400` in Compose) is looked up: without it such a seed looked missing
/// and was dialled again at every backoff, each time a duplicate session that ractor_cluster closed.
async fn connected_to(sessions: &HashMap<u64, NodeServerSessionInformation>, seed: &str) -> bool {
    let known = |addr: &str| {
        sessions
            .values()
            .any(|ses| ses.peer_addr == addr || peer_addr(ses) == addr)
    };
    if known(seed) {
        return true;
    }
    if seed.parse::<std::net::SocketAddr>().is_ok() {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(1), tokio::net::lookup_host(seed)).await {
        Ok(Ok(addrs)) => addrs.into_iter().any(|addr| known(&addr.to_string())),
        _ => false,
    }
}

/// Dialling state of one seed.
struct Seed {
    addr: String,
    next_try: Instant,
    backoff: Duration,
}

/// The heartbeat loop: keeps seeds dialled and every peer's summary fresh.
pub(super) async fn run(
    config: Arc<ClusterConfig>,
    server: ActorRef<NodeServerMessage>,
    peers: Arc<Peers>,
    local: Arc<LocalNode>,
    history: Arc<ClusterHistory>,
) {
    let mut seeds: Vec<Seed> = config
        .seeds
        .iter()
        .map(|addr| Seed {
            addr: addr.clone(),
            next_try: Instant::now(),
            backoff: config.heartbeat,
        })
        .collect();
    let mut tick = tokio::time::interval(config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(sessions) = sessions(&server).await else {
            continue;
        };
        dial_missing_seeds(&server, &sessions, &mut seeds, &config).await;
        refresh_now(&config, &peers, &local, &history, sessions).await;
    }
}

/// Dials every seed without a session, each at most once per its backoff.
pub(super) async fn dial_missing_seeds_once(
    server: &ActorRef<NodeServerMessage>,
    config: &ClusterConfig,
) {
    let sessions = sessions(server).await.unwrap_or_default();
    for seed in &config.seeds {
        if !connected_to(&sessions, seed).await {
            dial(server, seed, config.heartbeat).await;
        }
    }
}

async fn dial_missing_seeds(
    server: &ActorRef<NodeServerMessage>,
    sessions: &HashMap<u64, NodeServerSessionInformation>,
    seeds: &mut [Seed],
    config: &ClusterConfig,
) {
    let now = Instant::now();
    for seed in seeds.iter_mut() {
        if connected_to(sessions, &seed.addr).await {
            seed.backoff = config.heartbeat;
            continue;
        }
        if now < seed.next_try {
            continue;
        }
        dial(server, &seed.addr, config.heartbeat).await;
        // A seed that stays away is tried less and less often, up to every 30 s.
        seed.next_try = now + seed.backoff;
        seed.backoff = (seed.backoff * 2).min(Duration::from_secs(30));
    }
}

async fn dial(server: &ActorRef<NodeServerMessage>, addr: &str, timeout: Duration) {
    match tokio::time::timeout(timeout, ractor_cluster::client_connect(server, addr)).await {
        Ok(Ok(())) => tracing::debug!(seed = %addr, "dialled a cluster seed"),
        Ok(Err(e)) => tracing::debug!(seed = %addr, error = ?e, "cluster seed not reachable"),
        Err(_) => tracing::debug!(seed = %addr, "cluster seed did not accept in time"),
    }
}

/// Asks every peer's agent for its summary; drops the sessions of peers that stopped answering.
pub(super) async fn refresh_now(
    config: &ClusterConfig,
    peers: &Peers,
    local: &LocalNode,
    history: &ClusterHistory,
    sessions: HashMap<u64, NodeServerSessionInformation>,
) {
    let own = local.summary(RECENT_SECONDS as usize);
    history.record(&own.node_id, &own.recent);
    let agents: HashMap<u64, ActorRef<AgentMessage>> =
        ractor::pg::get_scoped_members(&CLUSTER_SCOPE.to_string(), &NODES_GROUP.to_string())
            .into_iter()
            .filter(|cell| !cell.get_id().is_local())
            .map(|cell| (cell.get_id().node(), cell.into()))
            .collect();
    let pings = sessions.iter().map(|(id, ses)| {
        let agent = agents.get(id).cloned();
        let timeout = config.heartbeat;
        async move {
            let announced = agent.is_some();
            let summary = match agent {
                Some(agent) => match agent
                    .call(
                        |port| AgentMessage::Info(RECENT_SECONDS, port),
                        Some(timeout),
                    )
                    .await
                {
                    Ok(CallResult::Success(bytes)) => {
                        serde_json::from_slice::<NodeSummary>(&bytes).ok()
                    }
                    _ => None,
                },
                // Authenticated but its agent not announced yet: still synchronising.
                None => None,
            };
            (*id, ses, announced, summary)
        }
    });
    let answers = futures::future::join_all(pings).await;
    let mut hung = Vec::new();
    {
        let mut by_session = peers.by_session.lock();
        by_session.retain(|id, _| sessions.contains_key(id));
        for (id, ses, announced, summary) in answers {
            let peer = by_session.entry(id).or_insert_with(|| Peer {
                name: peer_name(ses).unwrap_or_default(),
                missed: 0,
                last_answer: None,
                summary: None,
            });
            match summary {
                Some(summary) => {
                    history.record(&summary.node_id, &summary.recent);
                    local.stats.annotations().merge(&summary.annotations);
                    peer.missed = 0;
                    peer.last_answer = Some(Instant::now());
                    peer.summary = Some(summary);
                }
                None if announced || peer.last_answer.is_some() => {
                    peer.missed += 1;
                    if peer.missed >= config.missed_pings {
                        hung.push((peer.name.clone(), ses.actor.clone()));
                    }
                }
                None => {}
            }
        }
        metrics::gauge!("gorgon_cluster_peers").set(by_session.len() as f64);
    }
    for (name, session) in hung {
        tracing::warn!(peer = %name, missed = config.missed_pings, "a cluster peer stopped answering: dropping its session");
        metrics::counter!("gorgon_cluster_peers_dropped_total").increment(1);
        session.stop(Some("heartbeat_timeout".into()));
    }
}
