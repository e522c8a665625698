//! The notify role: pushes `store_notify` events to connected clients (SSE now).
//!
//! The actor subscribes to bus events, numbers them, keeps the newest in a bounded replay buffer
//! (so an SSE client can resume with `Last-Event-ID`) and fans them out through the node's
//! [`NotifyHub`], which the HTTP layer's `/api/v1/events` streams read. A client that falls
//! further behind than its buffer is told so and disconnected; it never slows anyone else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::reply;
use crate::bus::{Bus, Delivery, Event, Protocol, Role, RoleMessage};
use crate::error::Result;

/// An event as sent to clients: the bus event and its position in this node's stream.
#[derive(Debug, Clone)]
pub struct ClientEvent {
    pub id: u64,
    pub event: Arc<Event>,
}

/// Where SSE and WebSocket handlers pick events up.
pub struct NotifyHub {
    sender: broadcast::Sender<ClientEvent>,
    replay: Mutex<VecDeque<ClientEvent>>,
    replay_capacity: usize,
    next_id: AtomicU64,
    connected: AtomicI64,
    closed: tokio::sync::watch::Sender<bool>,
}

/// Where a resuming client starts.
pub enum Resume {
    /// These buffered events come first, then live ones.
    From(Vec<ClientEvent>),
    /// The requested position is older than the buffer: events were missed.
    TooOld { oldest_available: u64 },
}

impl NotifyHub {
    pub fn new(client_buffer: usize, replay_capacity: usize) -> Arc<Self> {
        let (sender, _) = broadcast::channel(client_buffer.max(16));
        Arc::new(NotifyHub {
            sender,
            replay: Mutex::new(VecDeque::with_capacity(replay_capacity)),
            replay_capacity,
            next_id: AtomicU64::new(1),
            connected: AtomicI64::new(0),
            closed: tokio::sync::watch::channel(false).0,
        })
    }

    fn push(&self, event: Arc<Event>) {
        let client_event = ClientEvent {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            event,
        };
        {
            let mut replay = self.replay.lock();
            if replay.len() == self.replay_capacity {
                replay.pop_front();
            }
            if self.replay_capacity > 0 {
                replay.push_back(client_event.clone());
            }
        }
        let _ = self.sender.send(client_event);
    }

    /// Subscribes, and says what to replay for a client that last saw `last_id`.
    pub fn subscribe(&self, last_id: Option<u64>) -> (broadcast::Receiver<ClientEvent>, Resume) {
        // Subscribe first, then read the buffer: an event in both is skipped by id by the caller.
        let receiver = self.sender.subscribe();
        let Some(last_id) = last_id else {
            return (receiver, Resume::From(Vec::new()));
        };
        let replay = self.replay.lock();
        let oldest = replay
            .front()
            .map(|e| e.id)
            .unwrap_or(self.next_id.load(Ordering::Relaxed));
        if last_id + 1 < oldest {
            return (
                receiver,
                Resume::TooOld {
                    oldest_available: oldest,
                },
            );
        }
        let missed = replay.iter().filter(|e| e.id > last_id).cloned().collect();
        (receiver, Resume::From(missed))
    }

    /// Counts a client in; the guard counts it out when dropped.
    pub fn connect(self: &Arc<Self>) -> ConnectedClient {
        let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("gorgon_notify_clients").set(now as f64);
        ConnectedClient { hub: self.clone() }
    }

    /// Ends every client stream (graceful shutdown: streams would otherwise hold it up).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once `close` was called.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn connected(&self) -> i64 {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Held by a streaming response while its client is connected.
pub struct ConnectedClient {
    hub: Arc<NotifyHub>,
}

impl Drop for ConnectedClient {
    fn drop(&mut self) {
        let now = self.hub.connected.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("gorgon_notify_clients").set(now as f64);
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum NotifyRequest {
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum NotifyReply {
    Status { connected_clients: i64 },
}

pub struct NotifyProtocol;

impl Protocol for NotifyProtocol {
    const ROLE: Role = Role::Notify;
    type Request = NotifyRequest;
    type Reply = NotifyReply;
    fn kind(_: &NotifyRequest) -> &'static str {
        "status"
    }
    fn delivery(_: &NotifyRequest) -> Delivery {
        Delivery::Direct
    }
}

pub struct NotifyActor;

pub struct NotifyArgs {
    pub bus: Bus,
    pub hub: Arc<NotifyHub>,
}

pub struct NotifyState {
    bus: Bus,
    hub: Arc<NotifyHub>,
    forwarder: JoinHandle<()>,
}

impl Actor for NotifyActor {
    type Msg = RoleMessage<NotifyProtocol>;
    type State = NotifyState;
    type Arguments = NotifyArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NotifyArgs,
    ) -> Result<NotifyState, ActorProcessingErr> {
        args.bus.join(Role::Notify, myself.get_cell());
        // Exported from the start, so dashboards see 0 rather than no series.
        metrics::gauge!("gorgon_notify_clients").set(args.hub.connected() as f64);
        let mut events = args.bus.subscribe();
        let hub = args.hub.clone();
        let forwarder = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    // Account changes are for the nodes' auth roles, never for clients.
                    Ok(event) if event.is_internal() => {}
                    Ok(event) => hub.push(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!("gorgon_notify_events_lost_total").increment(n);
                        tracing::warn!(lost = n, "notify fell behind the bus");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(NotifyState {
            bus: args.bus,
            hub: args.hub,
            forwarder,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut NotifyState,
    ) -> Result<(), ActorProcessingErr> {
        let RoleMessage::Call {
            request,
            reply: port,
        } = message;
        match request {
            NotifyRequest::Status => reply(
                port,
                Ok(NotifyReply::Status {
                    connected_clients: state.hub.connected(),
                }),
            ),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut NotifyState,
    ) -> Result<(), ActorProcessingErr> {
        state.bus.leave(Role::Notify, myself.get_cell());
        state.forwarder.abort();
        Ok(())
    }
}
