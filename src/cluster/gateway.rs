//! A role's door to the cluster: one remotable actor per local role, in the cluster's process
//! group `role:{name}`.
//!
//! The role actors themselves take typed, in-process messages (`RoleMessage<P>`, with a reply
//! port that cannot cross a socket), so they are never announced to peers. Their gateway is:
//! it takes a request as JSON bytes from another node, hands it to a local instance of its role
//! through the bus's in-process path, and answers with the reply (`Result<P::Reply, Error>`) as
//! JSON bytes. Decoding is total: bytes that are not a request of the role become an error reply.

use std::marker::PhantomData;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

use super::CLUSTER_SCOPE;
use crate::actors::Inflight;
use crate::bus::{Bus, Delivery, Protocol};
use crate::error::{Error, Result};

/// What crosses the socket to a role gateway.
///
/// The variant names are the wire tags: renaming one breaks mixed-version clusters.
#[derive(RactorClusterMessage)]
pub enum GatewayMessage {
    /// A request of the gateway's role as JSON; the reply is `Result<Reply, Error>` as JSON.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// The gateway of role `P` on this node.
pub struct RoleGateway<P>(PhantomData<fn() -> P>);

impl<P> Default for RoleGateway<P> {
    fn default() -> Self {
        RoleGateway(PhantomData)
    }
}

pub struct GatewayArgs {
    pub bus: Bus,
    /// Remote requests handled at once; more wait in the mailbox.
    pub concurrency: usize,
}

pub struct GatewayState {
    bus: Bus,
    inflight: Inflight,
}

impl<P: Protocol> Actor for RoleGateway<P> {
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
            P::ROLE.group(),
            vec![myself.get_cell()],
        );
        Ok(GatewayState {
            bus: args.bus,
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
        let bus = state.bus.clone();
        state
            .inflight
            .spawn(async move {
                let reply = answer::<P>(&bus, &bytes).await;
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
            P::ROLE.group(),
            vec![myself.get_cell()],
        );
        state.inflight.drain().await;
        Ok(())
    }
}

/// Decodes, calls the local role, encodes the outcome.
pub(super) async fn answer<P: Protocol>(bus: &Bus, bytes: &[u8]) -> Vec<u8> {
    let result: Result<P::Reply> = match serde_json::from_slice::<P::Request>(bytes) {
        Ok(request) => {
            let kind = P::kind(&request);
            let timeout = timeout_for::<P>(bus, &request);
            metrics::counter!("gorgon_cluster_requests_served_total", "role" => P::ROLE.name(), "kind" => kind)
                .increment(1);
            bus.call_local::<P>(request, timeout).await
        }
        Err(e) => Err(Error::BadRequest(format!(
            "not a {} request from the cluster: {e}",
            P::ROLE
        ))),
    };
    encode_reply(&result)
}

fn timeout_for<P: Protocol>(bus: &Bus, request: &P::Request) -> Duration {
    match P::delivery(request) {
        Delivery::Direct => bus.config().direct_timeout,
        Delivery::Durable => bus.config().durable_timeout,
    }
}

/// The reply as bytes; a reply that cannot be encoded (a bug) travels as an internal error.
pub(super) fn encode_reply<T: serde::Serialize>(result: &Result<T>) -> Vec<u8> {
    serde_json::to_vec(result).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode a reply for the cluster");
        let fallback: Result<()> = Err(Error::Internal("unencodable reply".into()));
        serde_json::to_vec(&fallback).unwrap_or_default()
    })
}

/// The reply bytes back as a value; bytes that are not one are an internal error.
pub(super) fn decode_reply<T: serde::de::DeserializeOwned>(role: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice::<Result<T>>(bytes).unwrap_or_else(|e| {
        Err(Error::Internal(format!(
            "undecodable reply from the {role} role on another node: {e}"
        )))
    })
}
