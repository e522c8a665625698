//! The in-process transport: a request is a `ractor` call to a local member of the role's group.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use super::{Bus, Protocol, Role};
use crate::error::{Error, Result};

/// What every role actor receives from the bus.
pub enum RoleMessage<P: Protocol> {
    Call {
        request: P::Request,
        reply: RpcReplyPort<Result<P::Reply>>,
    },
}

// In-process only (a reply port cannot cross a socket): never announced to cluster peers; the
// role's gateway (`crate::cluster::gateway`) is.
impl<P: Protocol> ractor::Message for RoleMessage<P> {}

pub(super) fn has_members(bus: &Bus, role: Role) -> bool {
    !ractor::pg::get_scoped_local_members(bus.scope(), &role.group()).is_empty()
}

pub(super) async fn call<P: Protocol>(
    bus: &Bus,
    request: P::Request,
    timeout: Duration,
) -> Result<P::Reply> {
    let members = ractor::pg::get_scoped_local_members(bus.scope(), &P::ROLE.group());
    if members.is_empty() {
        return Err(Error::Unavailable(format!(
            "no {} role is reachable from this node",
            P::ROLE
        )));
    }
    let index = bus.next_index(P::ROLE, members.len());
    let actor: ActorRef<RoleMessage<P>> = members[index].clone().into();
    let outcome = actor
        .call(|reply| RoleMessage::Call { request, reply }, Some(timeout))
        .await;
    match outcome {
        Ok(CallResult::Success(reply)) => reply,
        Ok(CallResult::Timeout) => Err(Error::Timeout(format!(
            "the {} role did not answer within {} ms",
            P::ROLE,
            timeout.as_millis()
        ))),
        Ok(CallResult::SenderError) | Err(_) => Err(Error::Unavailable(format!(
            "the {} role stopped before answering",
            P::ROLE
        ))),
    }
}
