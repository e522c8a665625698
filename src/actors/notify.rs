//! The notify role: pushes `store_notify` events to connected clients (SSE and WebSocket).
//!
//! The actor subscribes to bus events, numbers them, keeps the newest in a bounded replay buffer
//! (so a client can resume with `Last-Event-ID`) and fans them out through the node's
//! [`NotifyHub`], which the HTTP layer's `/api/v1/events` and `/api/v1/ws` streams read. A client
//! that falls further behind than its buffer is told so and disconnected; it never slows anyone
//! else. Who may see which event is the HTTP layer's filter (`http/events.rs`), by the caller's
//! token.
//!
//! Event ids never repeat across restarts: a run numbers its events from its start time in
//! microseconds since the Unix epoch (the run's *base*), one by one. A later run starts from a
//! later time, so its ids are above every id of the runs before, unless a run averaged more than
//! one event per microsecond over its life or the clock went back between runs. Ids stay below
//! 2^53 (until the year 2255), so they are exact in JSON (the WebSocket's `id` is a JSON number).
//! A resume point this run cannot serve — from an earlier run (below the base), ahead of the
//! stream (above the newest id: a later run of a clock gone wrong, or garbage such as
//! `u64::MAX`), or older than the replay buffer — gets an explicit reset notice, never silence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::bus::{Bus, Event, NoRequests, Service};
use crate::shutdown::Shutdown;

/// An event as sent to clients: the bus event and its position in this node's stream.
#[derive(Debug, Clone)]
pub struct ClientEvent {
    pub id: u64,
    pub event: Arc<Event>,
}

/// Where SSE and WebSocket handlers pick events up.
pub struct NotifyHub {
    sender: broadcast::Sender<ClientEvent>,
    /// The replay buffer and the id of the next event, together, so a resuming client sees
    /// both at the same instant.
    stream: Mutex<Stream>,
    replay_capacity: usize,
    /// The position before this run's first event (see the module's doc).
    base: u64,
    connected: AtomicI64,
    closed: tokio::sync::watch::Sender<bool>,
}

struct Stream {
    replay: VecDeque<ClientEvent>,
    next_id: u64,
}

/// Where a resuming client starts.
pub enum Resume {
    /// These buffered events come first, then live ones.
    From(Vec<ClientEvent>),
    /// This run cannot tell what the client missed: it gets a notice, then live events after
    /// `newest`, the position it should resume from next time.
    Reset {
        reason: ResetReason,
        oldest_available: u64,
        newest: u64,
    },
}

/// Why a resume point cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Older than the replay buffer: events were missed.
    TooOld,
    /// Below this run's base: an id of an earlier run (or of another node).
    EarlierRun,
    /// Above the newest id: not an id of this run.
    Ahead,
}

impl ResetReason {
    pub fn describe(self) -> &'static str {
        match self {
            ResetReason::TooOld => "resume point is older than the replay buffer",
            ResetReason::EarlierRun => "resume point is from an earlier run of this node",
            ResetReason::Ahead => "resume point is ahead of this node's event stream",
        }
    }
}

/// This run's base: the Unix time in microseconds (1 if the clock reads before 1970).
fn run_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
        .max(1)
}

impl NotifyHub {
    pub fn new(client_buffer: usize, replay_capacity: usize) -> Arc<Self> {
        Self::with_base(client_buffer, replay_capacity, run_base())
    }

    fn with_base(client_buffer: usize, replay_capacity: usize, base: u64) -> Arc<Self> {
        let (sender, _) = broadcast::channel(client_buffer.max(16));
        Arc::new(NotifyHub {
            sender,
            stream: Mutex::new(Stream {
                replay: VecDeque::with_capacity(replay_capacity.min(65_536)),
                next_id: base + 1,
            }),
            replay_capacity,
            base,
            connected: AtomicI64::new(0),
            closed: tokio::sync::watch::channel(false).0,
        })
    }

    fn push(&self, event: Arc<Event>) {
        let client_event = {
            let mut stream = self.stream.lock();
            let client_event = ClientEvent {
                id: stream.next_id,
                event,
            };
            stream.next_id += 1;
            if self.replay_capacity > 0 {
                if stream.replay.len() >= self.replay_capacity {
                    stream.replay.pop_front();
                }
                stream.replay.push_back(client_event.clone());
            }
            client_event
        };
        let _ = self.sender.send(client_event);
    }

    /// Subscribes, and says what to replay for a client that last saw `last_id`.
    pub fn subscribe(&self, last_id: Option<u64>) -> (broadcast::Receiver<ClientEvent>, Resume) {
        // Subscribe first, then read the buffer: an event in both is skipped by id by the caller.
        let receiver = self.sender.subscribe();
        let Some(last_id) = last_id else {
            return (receiver, Resume::From(Vec::new()));
        };
        let stream = self.stream.lock();
        let newest = stream.next_id - 1;
        let oldest_available = stream.replay.front().map_or(stream.next_id, |e| e.id);
        let reset = if last_id > newest {
            Some(ResetReason::Ahead)
        } else if last_id < self.base {
            Some(ResetReason::EarlierRun)
        } else if last_id + 1 < oldest_available {
            Some(ResetReason::TooOld)
        } else {
            None
        };
        let resume = match reset {
            Some(reason) => Resume::Reset {
                reason,
                oldest_available,
                newest,
            },
            None => Resume::From(
                stream
                    .replay
                    .iter()
                    .filter(|e| e.id > last_id)
                    .cloned()
                    .collect(),
            ),
        };
        (receiver, resume)
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

/// The notify role: forwards the bus's events into the node's [`NotifyHub`] until it stops. It
/// answers no requests.
pub struct Notify {
    /// The role's phase of the node's shutdown: the forwarder runs on it until the role stops.
    forwarder: Shutdown,
}

impl Notify {
    /// Starts forwarding, in a phase of `shutdown`.
    pub fn start(bus: &Bus, hub: Arc<NotifyHub>, shutdown: &Shutdown) -> Notify {
        // Exported from the start, so dashboards see 0 rather than no series.
        metrics::gauge!("gorgon_notify_clients").set(hub.connected() as f64);
        let mut events = bus.subscribe();
        let forwarder = shutdown.phase();
        forwarder.spawn(async move {
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
        Notify { forwarder }
    }
}

impl Service for Notify {
    const ROLE: crate::bus::Role = crate::bus::Role::Notify;
    type Call = NoRequests;

    async fn stop(&self) {
        self.forwarder.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::EventKind;

    fn event() -> Arc<Event> {
        Arc::new(Event {
            kind: EventKind::ItemCreated,
            user_id: uuid::Uuid::nil(),
            subject_id: uuid::Uuid::nil(),
            at: crate::domain::now(),
            data: None,
        })
    }

    fn reset_of(resume: Resume) -> Option<ResetReason> {
        match resume {
            Resume::Reset { reason, .. } => Some(reason),
            Resume::From(_) => None,
        }
    }

    fn replayed(resume: Resume) -> Vec<u64> {
        match resume {
            Resume::From(events) => events.iter().map(|e| e.id).collect(),
            Resume::Reset { reason, .. } => panic!("unexpected reset: {reason:?}"),
        }
    }

    #[test]
    fn ids_count_up_from_the_runs_base() {
        let hub = NotifyHub::with_base(16, 4, 1000);
        // Before any event, the base itself is a position of this run.
        assert!(replayed(hub.subscribe(Some(1000)).1).is_empty());
        assert_eq!(
            reset_of(hub.subscribe(Some(1001)).1),
            Some(ResetReason::Ahead)
        );
        for _ in 0..6 {
            hub.push(event());
        }
        // Ids 1001..=1006; the buffer keeps the newest four.
        assert!(replayed(hub.subscribe(None).1).is_empty());
        assert!(replayed(hub.subscribe(Some(1006)).1).is_empty());
        assert_eq!(
            replayed(hub.subscribe(Some(1002)).1),
            [1003, 1004, 1005, 1006]
        );
        assert_eq!(replayed(hub.subscribe(Some(1004)).1), [1005, 1006]);
        assert_eq!(
            reset_of(hub.subscribe(Some(1001)).1),
            Some(ResetReason::TooOld)
        );
        assert_eq!(
            reset_of(hub.subscribe(Some(999)).1),
            Some(ResetReason::EarlierRun)
        );
        assert_eq!(
            reset_of(hub.subscribe(Some(0)).1),
            Some(ResetReason::EarlierRun)
        );
        assert_eq!(
            reset_of(hub.subscribe(Some(1007)).1),
            Some(ResetReason::Ahead)
        );
        assert_eq!(
            reset_of(hub.subscribe(Some(u64::MAX)).1),
            Some(ResetReason::Ahead)
        );
        match hub.subscribe(Some(u64::MAX)).1 {
            Resume::Reset {
                oldest_available,
                newest,
                ..
            } => assert_eq!((oldest_available, newest), (1003, 1006)),
            Resume::From(_) => panic!("expected a reset"),
        }
    }

    #[test]
    fn a_run_starts_above_the_runs_before_and_stays_json_safe() {
        let first = NotifyHub::new(16, 4);
        for _ in 0..1000 {
            first.push(event());
        }
        let last_of_first = first.stream.lock().next_id - 1;
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = NotifyHub::new(16, 4);
        assert!(second.base > last_of_first);
        assert!(second.base < 1 << 53, "ids are exact as JSON numbers");
        assert_eq!(
            reset_of(second.subscribe(Some(last_of_first)).1),
            Some(ResetReason::EarlierRun)
        );
    }
}
