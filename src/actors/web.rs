//! The web role: the actix-web front that turns HTTP into bus requests and replies into HTTP.
//!
//! The role owns the HTTP server's lifetime: it runs the server the node's
//! [`HttpFront`](super::HttpFront) builds (`crate::http::server`, wired by `crate::startup`:
//! the roles know no HTTP) and, when stopped, stops accepting and lets in-flight requests finish
//! (graceful shutdown). It answers no requests of its own.

use actix_web::dev::{Server, ServerHandle};
use anyhow::Context;

use super::{RoleContext, Spawned};
use crate::bus::{NoRequests, Role, Service};
use crate::shutdown::Shutdown;

/// Binds the HTTP listener and serves it; started last, when every role it calls runs.
pub async fn start(ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
    let front = ctx
        .http
        .take()
        .context("the web role needs the node's HTTP front")?;
    let (server, addr) = front(ctx.hub.clone())?;
    ctx.addr = Some(addr);
    tracing::info!(%addr, "web role listening");
    let web = Web::start(server, &ctx.shutdown);
    ctx.spawn(web).await
}

pub struct Web {
    server: ServerHandle,
}

impl Web {
    /// Starts serving, on a task of `shutdown` (the role's stop ends the server first).
    pub fn start(server: Server, shutdown: &Shutdown) -> Web {
        let handle = server.handle();
        shutdown.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        Web { server: handle }
    }
}

impl Service for Web {
    const ROLE: Role = Role::Web;
    type Call = NoRequests;

    /// Stop accepting, let in-flight requests finish (bounded by the shutdown timeout).
    async fn stop(&self) {
        self.server.stop(true).await;
    }
}
