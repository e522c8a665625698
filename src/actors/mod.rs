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
//!
//! auth, app and store only answer requests: each is a [`RoleHandler`] inside the same
//! [`RoleActor`]. web, provider, notify and stats own timers, servers or streams, so they are
//! actors of their own.

pub mod app;
pub mod auth;
pub mod notify;
pub mod provider;
pub mod stats;
pub mod store;
pub mod web;

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

use crate::bus::{Bus, Protocol, RoleMessage};
use crate::error::{Error, Result};

type Request<H> = <<H as RoleHandler>::Protocol as Protocol>::Request;
type Reply<H> = <<H as RoleHandler>::Protocol as Protocol>::Reply;

/// What a request-answering role does; [`RoleActor`] is the same around every one of them.
pub trait RoleHandler: Send + Sync + 'static {
    type Protocol: Protocol;

    /// Answers on the spot when that needs no waiting (a cache hit, say); otherwise hands the
    /// request back to be handled on a task.
    fn answer_now(
        &self,
        request: Request<Self>,
    ) -> std::result::Result<Result<Reply<Self>>, Request<Self>> {
        Err(request)
    }

    /// Handles one request (on its own task, see [`Inflight`]).
    fn handle(
        self: Arc<Self>,
        request: Request<Self>,
    ) -> impl Future<Output = Result<Reply<Self>>> + Send;
}

/// The actor of a request-answering role: joins the role's group, hands each request to its
/// handler on a bounded task, and on stop leaves the group and waits for running requests.
pub struct RoleActor<H>(PhantomData<fn() -> H>);

impl<H> Default for RoleActor<H> {
    fn default() -> Self {
        RoleActor(PhantomData)
    }
}

pub struct RoleArgs<H> {
    pub handler: H,
    pub bus: Bus,
    /// Requests handled at once.
    pub concurrency: usize,
}

pub struct RoleState<H> {
    handler: Arc<H>,
    bus: Bus,
    inflight: Inflight,
}

impl<H: RoleHandler> Actor for RoleActor<H> {
    type Msg = RoleMessage<H::Protocol>;
    type State = RoleState<H>;
    type Arguments = RoleArgs<H>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RoleArgs<H>,
    ) -> std::result::Result<RoleState<H>, ActorProcessingErr> {
        args.bus.join(H::Protocol::ROLE, myself.get_cell());
        Ok(RoleState {
            handler: Arc::new(args.handler),
            bus: args.bus,
            inflight: Inflight::new(args.concurrency),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut RoleState<H>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let RoleMessage::Call {
            request,
            reply: port,
        } = message;
        match state.handler.answer_now(request) {
            Ok(answer) => reply(port, answer),
            Err(request) => {
                let handler = state.handler.clone();
                state
                    .inflight
                    .spawn(async move { reply(port, handler.handle(request).await) })
                    .await;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut RoleState<H>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.bus.leave(H::Protocol::ROLE, myself.get_cell());
        state.inflight.drain().await;
        Ok(())
    }
}

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
