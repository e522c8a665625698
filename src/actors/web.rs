//! The web role: the actix-web front that turns HTTP into bus messages and replies into HTTP.
//!
//! The actor owns the HTTP server's lifetime: it starts serving on the listener it is given and,
//! when stopped, stops accepting and lets in-flight requests finish (graceful shutdown).

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::ServerHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use super::reply;
use crate::bus::{Bus, Delivery, Protocol, Role, RoleMessage};
use crate::error::Result;
use crate::http::{self, HttpState};

#[derive(Debug, Serialize, Deserialize)]
pub enum WebRequest {
    /// The address the server listens on.
    LocalAddr,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WebReply {
    LocalAddr(SocketAddr),
}

pub struct WebProtocol;

impl Protocol for WebProtocol {
    const ROLE: Role = Role::Web;
    type Request = WebRequest;
    type Reply = WebReply;
    fn kind(_: &WebRequest) -> &'static str {
        "local_addr"
    }
    fn delivery(_: &WebRequest) -> Delivery {
        Delivery::Direct
    }
}

pub struct WebActor;

pub struct WebArgs {
    pub listener: TcpListener,
    pub state: HttpState,
    pub workers: usize,
}

pub struct WebState {
    bus: Bus,
    addr: SocketAddr,
    server: ServerHandle,
}

impl Actor for WebActor {
    type Msg = RoleMessage<WebProtocol>;
    type State = WebState;
    type Arguments = WebArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WebArgs,
    ) -> Result<WebState, ActorProcessingErr> {
        let addr = args.listener.local_addr()?;
        let bus = args.state.bus.clone();
        let server = http::server(args.listener, args.state, args.workers)?;
        let handle = server.handle();
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        bus.join(Role::Web, myself.get_cell());
        tracing::info!(%addr, "web role listening");
        Ok(WebState {
            bus,
            addr,
            server: handle,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut WebState,
    ) -> Result<(), ActorProcessingErr> {
        let RoleMessage::Call {
            request,
            reply: port,
        } = message;
        match request {
            WebRequest::LocalAddr => reply(port, Ok(WebReply::LocalAddr(state.addr))),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut WebState,
    ) -> Result<(), ActorProcessingErr> {
        state.bus.leave(Role::Web, myself.get_cell());
        // Stop accepting, let in-flight requests finish (bounded by the shutdown timeout).
        state.server.stop(true).await;
        Ok(())
    }
}
