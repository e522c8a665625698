//! The node agent: one remotable actor per node, in the cluster's process group `gorgon:nodes`.
//!
//! Peers call it once per heartbeat. Its answer is this node's summary (identity, roles, uptime,
//! health and the last seconds of traffic), so the ping that proves a peer alive also carries
//! the figures `GET /api/v1/cluster` and the stats role show for the whole cluster.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

use super::{LocalNode, CLUSTER_SCOPE, NODES_GROUP};

/// What crosses the socket to a node agent (variant names are wire tags).
#[derive(RactorClusterMessage)]
pub enum AgentMessage {
    /// This node's [`super::NodeSummary`] as JSON, with the last `seconds` of traffic.
    #[rpc]
    Info(u32, RpcReplyPort<Vec<u8>>),
}

pub struct NodeAgent;

impl Actor for NodeAgent {
    type Msg = AgentMessage;
    type State = Arc<LocalNode>;
    type Arguments = Arc<LocalNode>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        local: Arc<LocalNode>,
    ) -> Result<Arc<LocalNode>, ActorProcessingErr> {
        ractor::pg::join_scoped(
            CLUSTER_SCOPE.to_string(),
            NODES_GROUP.to_string(),
            vec![myself.get_cell()],
        );
        Ok(local)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        local: &mut Arc<LocalNode>,
    ) -> Result<(), ActorProcessingErr> {
        let AgentMessage::Info(seconds, port) = message;
        let summary = local.summary(seconds as usize);
        let bytes = serde_json::to_vec(&summary).unwrap_or_default();
        let _ = port.send(bytes);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _local: &mut Arc<LocalNode>,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::leave_scoped(
            CLUSTER_SCOPE.to_string(),
            NODES_GROUP.to_string(),
            vec![myself.get_cell()],
        );
        Ok(())
    }
}
