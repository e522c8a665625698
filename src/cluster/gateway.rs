//! A role's door to the cluster: one remotable actor per local role, in the cluster's process
//! group `role:{name}`.
//!
//! The role actors themselves take typed, in-process messages (with a reply port that cannot
//! cross a socket), so they are never announced to peers. Their gateway is: it takes a request
//! as bytes (MessagePack) from another node, hands it to a local instance of its role through
//! [`Bus::answer`], and answers with the encoded reply. Decoding is total: bytes that are not a
//! request of the role become an error reply. Peers use the gateway only until they know the
//! node's direct-call address (`super::direct`), which answers the same way.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

use super::CLUSTER_SCOPE;
use crate::bus::{Answered, Bus, Codec, Inflight, Role};
use crate::error::Error;

/// What crosses the socket to a role gateway.
///
/// The variant names are the wire tags: renaming one breaks mixed-version clusters.
#[derive(RactorClusterMessage)]
pub enum GatewayMessage {
    /// A request of the gateway's role, encoded (MessagePack); the reply is
    /// `Result<Reply, Error>`, encoded the same way.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// The gateway of one role on this node.
pub struct RoleGateway;

pub struct GatewayArgs {
    pub bus: Bus,
    pub role: Role,
    /// Remote requests handled at once; more wait in the mailbox.
    pub concurrency: usize,
}

pub struct GatewayState {
    bus: Bus,
    role: Role,
    inflight: Inflight,
}

impl Actor for RoleGateway {
    type Msg = GatewayMessage;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GatewayArgs,
    ) -> std::result::Result<GatewayState, ActorProcessingErr> {
        // Peers learn of the join at once and start routing here.
        ractor::pg::join_scoped(
            CLUSTER_SCOPE.to_string(),
            args.role.group(),
            vec![myself.get_cell()],
        );
        Ok(GatewayState {
            bus: args.bus,
            role: args.role,
            inflight: Inflight::new(args.concurrency),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut GatewayState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let GatewayMessage::Call(bytes, port) = message;
        let (bus, role) = (state.bus.clone(), state.role);
        state
            .inflight
            .spawn(async move {
                let reply = answer(&bus, role, &bytes).await;
                let _ = port.send(reply);
            })
            .await;
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut GatewayState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        ractor::pg::leave_scoped(
            CLUSTER_SCOPE.to_string(),
            state.role.group(),
            vec![myself.get_cell()],
        );
        state.inflight.drain().await;
        Ok(())
    }
}

/// Hands a request from another node to a local instance of `role`; the encoded reply. Bytes
/// that are not a request of the role get an error reply.
pub(super) async fn answer(bus: &Bus, role: Role, bytes: &[u8]) -> Vec<u8> {
    metrics::counter!("gorgon_cluster_requests_served_total", "role" => role.name()).increment(1);
    match bus.answer(role, bytes, Codec::Binary).await {
        Answered::Done(reply) => reply.bytes,
        Answered::Undecodable(reason) => Codec::Binary.encode_reply::<()>(&Err(Error::BadRequest(
            format!("{reason} (from the cluster)"),
        ))),
    }
}
