//! The web role: the actix-web front that turns HTTP into bus requests and replies into HTTP.
//!
//! The role owns the HTTP server's lifetime: it runs the server it is given (built by
//! `crate::http::server`) and, when stopped, stops accepting and lets in-flight requests finish
//! (graceful shutdown). It answers no requests of its own.

use actix_web::dev::{Server, ServerHandle};

use crate::bus::{NoRequests, Role, Service};
use crate::shutdown::Shutdown;

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
