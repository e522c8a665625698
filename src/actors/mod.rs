//! The roles, one `ractor` actor per file.
//!
//! | role | file | receives |
//! | --- | --- | --- |
//! | web | `web.rs` | nothing from the bus: it turns HTTP into bus calls |
//! | auth | `auth.rs` | [`auth::AuthRequest`] |
//! | app | `app.rs` | [`app::AppRequest`] |
//! | store | `store.rs` | [`store::StoreRequest`] |
//! | provider | `provider.rs` | [`provider::ProviderRequest`] |
//! | notify | `notify.rs` | [`notify::NotifyRequest`], and every bus event |
//! | stats | `stats.rs` | [`stats::StatsRequest`] |
//!
//! Each role file also holds a small typed client (`pub async fn ...(bus, ...)`) that other roles
//! and the HTTP layer use, so no caller builds requests or unpacks replies by hand.

pub mod app;
pub mod auth;
pub mod notify;
pub mod provider;
pub mod stats;
pub mod store;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Runs a role's requests on their own tasks, at most `limit` at a time.
///
/// An actor handles one message at a time; a request that waits (on another role, a commit or a
/// password hash) would hold up every request behind it. So the actor hands each request to a
/// task and moves on. When `limit` tasks are running, the actor waits for a slot before taking
/// its next message: work stays bounded and the mailbox is the queue.
#[derive(Clone)]
pub struct Inflight {
    slots: Arc<Semaphore>,
    limit: u32,
}

impl Inflight {
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS) as u32;
        Inflight {
            slots: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    pub async fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.slots.clone().acquire_owned().await {
            Ok(permit) => {
                tokio::spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            // Closed only by `drain`, after which no new work is accepted.
            Err(_) => tracing::warn!("request dropped: the role is shutting down"),
        }
    }

    /// Waits until every running request has finished, then refuses new ones.
    pub async fn drain(&self) {
        if let Ok(all) = self.slots.acquire_many(self.limit).await {
            all.forget();
        }
        self.slots.close();
    }
}

/// A reply variant the caller did not expect: a bug, reported rather than panicking.
pub(crate) fn unexpected(role: &str, kind: &str) -> Error {
    Error::Internal(format!("unexpected reply from the {role} role to {kind}"))
}

/// Sends a reply if the caller is still waiting (it may have timed out).
pub(crate) fn reply<T: Send + 'static>(port: ractor::RpcReplyPort<Result<T>>, value: Result<T>) {
    let _ = port.send(value);
}
