//! The stats role: what this node is and how it is doing (uptime, roles, data counts).
//!
//! Prometheus metrics are rendered per node at `/metrics`; this role answers the JSON summary
//! at `/api/v1/stats`.

use std::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{reply, unexpected};
use crate::bus::{Bus, Delivery, Protocol, Role, RoleMessage};
use crate::error::Result;

#[derive(Debug, Serialize, Deserialize)]
pub enum StatsRequest {
    Snapshot,
}

/// A node's identity and health summary.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStats {
    pub node_id: String,
    pub version: String,
    pub roles: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: f64,
    /// Users and items in the store, when the store role is reachable.
    pub users: Option<u64>,
    pub items: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum StatsReply {
    Snapshot(NodeStats),
}

pub struct StatsProtocol;

impl Protocol for StatsProtocol {
    const ROLE: Role = Role::Stats;
    type Request = StatsRequest;
    type Reply = StatsReply;
    fn kind(_: &StatsRequest) -> &'static str {
        "snapshot"
    }
    fn delivery(_: &StatsRequest) -> Delivery {
        Delivery::Direct
    }
}

pub struct StatsActor;

pub struct StatsArgs {
    pub bus: Bus,
    pub node_id: String,
    pub roles: Vec<Role>,
}

pub struct StatsState {
    bus: Bus,
    node_id: String,
    roles: Vec<Role>,
    started: Instant,
    started_at: DateTime<Utc>,
}

impl Actor for StatsActor {
    type Msg = RoleMessage<StatsProtocol>;
    type State = StatsState;
    type Arguments = StatsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: StatsArgs,
    ) -> Result<StatsState, ActorProcessingErr> {
        args.bus.join(Role::Stats, myself.get_cell());
        metrics::gauge!("gorgon_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(StatsState {
            bus: args.bus,
            node_id: args.node_id,
            roles: args.roles,
            started: Instant::now(),
            started_at: Utc::now(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut StatsState,
    ) -> Result<(), ActorProcessingErr> {
        let RoleMessage::Call {
            request,
            reply: port,
        } = message;
        match request {
            StatsRequest::Snapshot => {
                let uptime = state.started.elapsed().as_secs_f64();
                metrics::gauge!("gorgon_node_uptime_seconds").set(uptime);
                let mut snapshot = NodeStats {
                    node_id: state.node_id.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    roles: state.roles.iter().map(|r| r.name().to_string()).collect(),
                    started_at: state.started_at,
                    uptime_seconds: uptime,
                    users: None,
                    items: None,
                };
                let bus = state.bus.clone();
                // Counting asks the store: answer from a task so the actor stays free.
                tokio::spawn(async move {
                    if let Ok((users, items)) = super::store::counts(&bus).await {
                        snapshot.users = Some(users);
                        snapshot.items = Some(items);
                    }
                    reply(port, Ok(StatsReply::Snapshot(snapshot)));
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut StatsState,
    ) -> Result<(), ActorProcessingErr> {
        state.bus.leave(Role::Stats, myself.get_cell());
        Ok(())
    }
}

pub async fn snapshot(bus: &Bus) -> Result<NodeStats> {
    match bus.call::<StatsProtocol>(StatsRequest::Snapshot).await {
        Ok(StatsReply::Snapshot(s)) => Ok(s),
        Err(e) => Err(e),
        #[allow(unreachable_patterns)]
        _ => Err(unexpected("stats", "snapshot")),
    }
}
