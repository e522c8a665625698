//! The in-process side of the bus: the actor every role runs in, calls to a local instance, and
//! the door through which requests from other processes reach one.
//!
//! A role is a [`Service`] (its handler) inside a [`RoleActor`]: the actor joins the node's
//! process group of the role, hands each call to the handler (on a bounded task when it must
//! wait), and on stop leaves the group, waits for running requests and stops the service. A call
//! the handler can answer without waiting (`Handler::answer_now`: a cache hit) never reaches the
//! mailbox: [`send`] asks the handler on the caller's thread first.
//! Requests from a transport arrive as bytes: [`answer`] decodes them with the codec of the
//! transport into the role's `Call`, hands them to a local instance and encodes the reply.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, Semaphore};

use super::message::{Call, Codec, Dispatch, Encoded, Replier, Request, Service};
use super::{Bus, Role};
use crate::error::{Error, Result};

/// What a role's actor receives: one of its requests and where the reply goes.
pub struct Inbound<C> {
    pub call: C,
    pub reply: Replier,
}

// In-process only (a reply port cannot cross a socket): transports hand requests in through
// [`answer`].
impl<C: Send + 'static> ractor::Message for Inbound<C> {}

/// The actor of a role: the same around every [`Service`].
pub struct RoleActor<S>(PhantomData<fn() -> S>);

impl<S> Default for RoleActor<S> {
    fn default() -> Self {
        RoleActor(PhantomData)
    }
}

pub struct RoleArgs<S> {
    pub service: S,
    pub bus: Bus,
    /// Requests handled at once; more wait in the mailbox.
    pub concurrency: usize,
}

pub struct RoleState<S> {
    service: Arc<S>,
    bus: Bus,
    inflight: Inflight,
}

impl<S: Service> Actor for RoleActor<S> {
    type Msg = Inbound<S::Call>;
    type State = RoleState<S>;
    type Arguments = RoleArgs<S>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RoleArgs<S>,
    ) -> std::result::Result<RoleState<S>, ActorProcessingErr> {
        let service = Arc::new(args.service);
        args.bus.join::<S>(myself.get_cell(), &service);
        Ok(RoleState {
            service,
            bus: args.bus,
            inflight: Inflight::new(args.concurrency),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut RoleState<S>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let Inbound { call, reply } = message;
        let kind = call.kind();
        let started = Instant::now();
        // Asked `answer_now` already, on the caller's thread (`send`): this call must wait.
        let work = call.dispatch(&state.service, reply);
        let service = state.service.clone();
        state
            .inflight
            .spawn(async move {
                work.await;
                service.observe(kind, started.elapsed());
            })
            .await;
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut RoleState<S>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.bus.leave(S::ROLE, &myself.get_cell());
        state.inflight.drain().await;
        state.service.stop().await;
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

pub(super) fn has_members(bus: &Bus, role: Role) -> bool {
    !bus.members(role).read().is_empty()
}

/// One local instance of a role, as the bus holds it: its actor, and a door to its handler for
/// answers that need no waiting.
pub(super) struct Member {
    pub(super) cell: ractor::ActorCell,
    /// An [`AnswerNow`] of the role's `Call`, type-erased so one list holds every role.
    now: Arc<dyn Any + Send + Sync>,
}

/// Asks the handler for an answer on the caller's thread; hands the message back when it must
/// wait (a cache miss, a write).
type AnswerNow<C> = Box<dyn Fn(Inbound<C>) -> Option<Inbound<C>> + Send + Sync>;

impl Member {
    pub(super) fn new<S: Service>(cell: ractor::ActorCell, service: &Arc<S>) -> Member {
        let service = service.clone();
        let now: AnswerNow<S::Call> = Box::new(move |Inbound { call, reply }| {
            let kind = call.kind();
            let started = Instant::now();
            match call.answer_now(&service, reply) {
                Ok(()) => {
                    service.observe(kind, started.elapsed());
                    None
                }
                Err((call, reply)) => Some(Inbound { call, reply }),
            }
        });
        Member {
            cell,
            now: Arc::new(now),
        }
    }
}

/// Hands `message` to one local instance of `role` (round-robin): answered on the caller's
/// thread when the handler needs no waiting (a cache hit: no mailbox, no thread hop, no task),
/// else sent to the instance's actor. An instance that is gone is forgotten and the next one
/// tried.
fn send<C: Call>(bus: &Bus, role: Role, mut message: Inbound<C>) -> Result<()> {
    loop {
        // Taken out of the lock: a handler answering now may itself use the bus.
        let (cell, now) = {
            let members = bus.members(role).read();
            if members.is_empty() {
                return Err(Error::Unavailable(format!(
                    "no {role} role is reachable from this node"
                )));
            }
            let member = &members[bus.next_index(role, members.len())];
            (member.cell.clone(), member.now.clone())
        };
        if let Some(now) = now.downcast_ref::<AnswerNow<C>>() {
            match now(message) {
                None => return Ok(()),
                Some(back) => message = back,
            }
        }
        let actor: ActorRef<Inbound<C>> = cell.into();
        match actor.send_message(message) {
            Ok(()) => return Ok(()),
            Err(ractor::MessagingErr::SendErr(returned)) => {
                bus.leave(role, &actor.get_cell());
                message = returned;
            }
            Err(_) => return Err(stopped(role)),
        }
    }
}

fn stopped(role: Role) -> Error {
    Error::Unavailable(format!("the {role} role stopped before answering"))
}

fn late(role: Role, timeout: Duration) -> Error {
    Error::Timeout(format!(
        "the {role} role did not answer within {} ms",
        timeout.as_millis()
    ))
}

/// Calls a local instance of the request's role, with no encoding at all.
/// Calls a local instance and waits up to `timeout`. A zero timeout has passed already: the
/// request is not sent (tokio rounds a timer up to its next millisecond tick, in which a fast
/// role could still answer, and do the work of a caller told it failed).
pub(super) async fn call<R: Request>(bus: &Bus, request: R, timeout: Duration) -> Result<R::Reply> {
    let role = <R::Call as Call>::ROLE;
    if timeout.is_zero() {
        return Err(late(role, timeout));
    }
    let (port, answer) = oneshot::channel::<Result<R::Reply>>();
    let message = Inbound {
        call: R::Call::from(request),
        reply: Replier::local(port),
    };
    send(bus, role, message)?;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(stopped(role)),
        Err(_) => Err(late(role, timeout)),
    }
}

/// What became of a request that arrived as bytes.
pub enum Answered {
    /// The bytes are not a request of the role: the reason.
    Undecodable(String),
    /// Handled (or failed): the reply, encoded with the transport's codec.
    Done(Encoded),
}

/// Decodes bytes into a role's requests and hands them to a local instance.
trait Endpoint: Send + Sync {
    fn answer(&self, bus: Bus, bytes: &[u8], codec: Codec) -> BoxFuture<'static, Answered>;
}

struct EndpointOf<C>(PhantomData<fn() -> C>);

impl<C: Call> Endpoint for EndpointOf<C> {
    fn answer(&self, bus: Bus, bytes: &[u8], codec: Codec) -> BoxFuture<'static, Answered> {
        let call = match codec.decode::<C>(bytes) {
            Ok(call) => call,
            Err(e) => {
                return Box::pin(async move {
                    Answered::Undecodable(format!("not a {} request: {e}", C::ROLE))
                })
            }
        };
        Box::pin(async move {
            let role = C::ROLE;
            let timeout = bus.timeout(call.delivery());
            let failed = |error: Error| {
                Answered::Done(Encoded {
                    bytes: codec.encode_reply::<()>(&Err(error.clone())),
                    error: Some(error),
                })
            };
            if timeout.is_zero() {
                return failed(late(role, timeout));
            }
            let (port, answer) = oneshot::channel();
            let message = Inbound {
                call,
                reply: Replier::Encoded(codec, port),
            };
            if let Err(e) = send(&bus, role, message) {
                return failed(e);
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(encoded)) => Answered::Done(encoded),
                Ok(Err(_)) => failed(stopped(role)),
                Err(_) => failed(late(role, timeout)),
            }
        })
    }
}

/// The endpoints of the roles running in this process, by role.
#[derive(Default)]
pub(super) struct Endpoints(RwLock<HashMap<Role, Arc<dyn Endpoint>>>);

impl Endpoints {
    pub(super) fn add<C: Call>(&self, role: Role) {
        self.0
            .write()
            .entry(role)
            .or_insert_with(|| Arc::new(EndpointOf::<C>(PhantomData)));
    }

    /// Hands a request that arrived as bytes to a local instance of `role`.
    pub(super) async fn answer(
        &self,
        bus: &Bus,
        role: Role,
        bytes: &[u8],
        codec: Codec,
    ) -> Answered {
        let endpoint = self.0.read().get(&role).cloned();
        match endpoint {
            Some(endpoint) => endpoint.answer(bus.clone(), bytes, codec).await,
            None => Answered::Done(Encoded {
                bytes: codec.encode_reply::<()>(&Err(Error::Unavailable(format!(
                    "no {role} role runs on this node"
                )))),
                error: Some(Error::Unavailable(format!(
                    "no {role} role runs on this node"
                ))),
            }),
        }
    }
}
