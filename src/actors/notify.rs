//! The notify role: pushes `store_notify` events to connected clients (SSE and WebSocket).
//!
//! The actor subscribes to bus events, numbers them, keeps the newest in a bounded replay buffer
//! (so a client can resume with `Last-Event-ID`) and fans them out through the node's
//! [`NotifyHub`], which the HTTP layer's `/api/v1/events` and `/api/v1/ws` streams read. A client
//! that falls further behind than its buffer is told so and disconnected; it never slows anyone
//! else. Who may see which event is the HTTP layer's filter (`http/events.rs`), by the caller's
//! token.
//!
//! Event ids are the events' own positions ([`Event::seq`]): set once, when the node that
//! committed the change published it, as microseconds since the Unix epoch made strictly
//! increasing. Every front receives the same events with the same ids, so a client whose front
//! went away resumes with `Last-Event-ID` on any other. A hub only ever hands out growing ids: an
//! event that arrives below its newest (two store nodes publishing at once) is numbered just
//! above it. Ids never repeat across restarts and stay below 2^53, exact in JSON.
//!
//! A resume point this hub cannot serve gets an explicit reset notice, never silence: from
//! before this hub started (it cannot know what came between), older than the replay buffer,
//! or ahead of the stream by more than a clock's skew (garbage such as `u64::MAX`). A point a
//! little ahead is an event another front has and this one has not received yet: the client
//! resumes live after it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{RoleContext, Spawned};
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
    /// The position of the newest gap (0: none yet), watched by every live client.
    gaps: tokio::sync::watch::Sender<u64>,
}

struct Stream {
    replay: VecDeque<ClientEvent>,
    /// The newest id handed out (the base before the first event).
    newest: u64,
    /// The newest id dropped from the replay buffer (the base while none was).
    evicted: u64,
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
    /// Before this hub started (an earlier run's position, or an old one of another front).
    EarlierRun,
    /// Further ahead of the newest id than a clock's skew: not a position of any stream.
    Ahead,
    /// This node missed events of other nodes (its subscription to them was lost for a while,
    /// or it fell behind the bus): what came before this point cannot be served whole.
    Gap,
}

impl ResetReason {
    pub fn describe(self) -> &'static str {
        match self {
            ResetReason::TooOld => "resume point is older than the replay buffer",
            ResetReason::EarlierRun => {
                "resume point is from an earlier run, before this node's stream began"
            }
            ResetReason::Ahead => "resume point is ahead of this node's event stream",
            ResetReason::Gap => {
                "this node was cut off from other nodes' events for a while: some may be missing"
            }
        }
    }
}

/// How far ahead of this hub's clock a resume point may be and still be taken as an event that
/// has not reached this hub yet (nodes' clocks differ by this much at most).
const CLOCK_SKEW_MICROS: u64 = 5_000_000;

impl NotifyHub {
    pub fn new(client_buffer: usize, replay_capacity: usize) -> Arc<Self> {
        Self::with_base(client_buffer, replay_capacity, crate::bus::unix_micros())
    }

    fn with_base(client_buffer: usize, replay_capacity: usize, base: u64) -> Arc<Self> {
        let (sender, _) = broadcast::channel(client_buffer.max(16));
        Arc::new(NotifyHub {
            sender,
            stream: Mutex::new(Stream {
                replay: VecDeque::with_capacity(replay_capacity.min(65_536)),
                newest: base,
                evicted: base,
            }),
            replay_capacity,
            base,
            connected: AtomicI64::new(0),
            closed: tokio::sync::watch::channel(false).0,
            gaps: tokio::sync::watch::channel(0).0,
        })
    }

    fn push(&self, event: Arc<Event>) {
        let client_event = {
            let mut stream = self.stream.lock();
            let id = event.seq.max(stream.newest + 1);
            stream.newest = id;
            let client_event = ClientEvent { id, event };
            if self.replay_capacity > 0 {
                if stream.replay.len() >= self.replay_capacity {
                    if let Some(dropped) = stream.replay.pop_front() {
                        stream.evicted = dropped.id;
                    }
                }
                stream.replay.push_back(client_event.clone());
            } else {
                stream.evicted = id;
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
        let newest = stream.newest;
        let oldest_available = stream.replay.front().map_or(newest + 1, |e| e.id);
        let reset = if last_id > newest {
            // Not here yet (another front has it), unless it is no position at all.
            let horizon = crate::bus::unix_micros().max(newest) + CLOCK_SKEW_MICROS;
            (last_id > horizon).then_some(ResetReason::Ahead)
        } else if last_id < self.base {
            Some(ResetReason::EarlierRun)
        } else if last_id < stream.evicted {
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

    /// Records that events may be missing here: the gap takes a position of its own, resume
    /// points before it are reset (`TooOld`), and every live client is told (see
    /// [`watch_gaps`](Self::watch_gaps)).
    pub fn gap(&self) {
        let id = {
            let mut stream = self.stream.lock();
            stream.newest += 1;
            stream.evicted = stream.newest;
            stream.newest
        };
        metrics::counter!("gorgon_notify_gaps_total").increment(1);
        self.gaps.send_replace(id);
    }

    /// The position of the newest gap, changing at each [`gap`](Self::gap).
    pub fn watch_gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.gaps.subscribe()
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
        let mut gaps = bus.watch_event_gaps();
        let forwarder = shutdown.phase();
        forwarder.spawn(async move {
            loop {
                let received = tokio::select! {
                    received = events.recv() => received,
                    changed = gaps.changed() => {
                        if changed.is_ok() {
                            hub.gap();
                        }
                        continue;
                    }
                };
                match received {
                    // Account changes are for the nodes' auth roles, never for clients.
                    Ok(event) if event.is_internal() => {}
                    Ok(event) => hub.push(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!("gorgon_notify_events_lost_total").increment(n);
                        tracing::warn!(lost = n, "notify fell behind the bus");
                        hub.gap();
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

/// Starts the role: its hub (which the web role serves clients from) and the event forwarder.
pub async fn start(ctx: &mut RoleContext) -> anyhow::Result<Spawned> {
    let hub = NotifyHub::new(ctx.settings.client_buffer, ctx.settings.event_replay);
    ctx.hub = Some(hub.clone());
    let notify = Notify::start(&ctx.bus, hub, &ctx.shutdown);
    ctx.spawn(notify).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::EventKind;

    fn event_at(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            kind: EventKind::ItemCreated,
            user_id: uuid::Uuid::nil(),
            subject_id: uuid::Uuid::nil(),
            at: crate::domain::now(),
            data: None,
            seq,
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
    fn ids_are_the_events_positions_and_only_grow() {
        let hub = NotifyHub::with_base(16, 4, 1000);
        // Before any event, the base itself is a position of this hub.
        assert!(replayed(hub.subscribe(Some(1000)).1).is_empty());
        for seq in [1010, 1020, 1030, 1040, 1050, 1060] {
            hub.push(event_at(seq));
        }
        // An event published below the newest (another store node's, a little late) and one
        // from an older node without a position: both numbered just above the newest.
        hub.push(event_at(1055));
        hub.push(event_at(0));
        // Ids 1010..1060, 1061, 1062; the buffer keeps the newest four.
        assert!(replayed(hub.subscribe(None).1).is_empty());
        assert!(replayed(hub.subscribe(Some(1062)).1).is_empty());
        assert_eq!(
            replayed(hub.subscribe(Some(1040)).1),
            [1050, 1060, 1061, 1062]
        );
        // A position between two events (another front saw it; this one numbered around it).
        assert_eq!(replayed(hub.subscribe(Some(1055)).1), [1060, 1061, 1062]);
        assert_eq!(
            reset_of(hub.subscribe(Some(1039)).1),
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
        match hub.subscribe(Some(u64::MAX)).1 {
            Resume::Reset {
                reason,
                oldest_available,
                newest,
            } => {
                assert_eq!(reason, ResetReason::Ahead);
                assert_eq!((oldest_available, newest), (1050, 1062));
            }
            Resume::From(_) => panic!("expected a reset"),
        }
    }

    #[test]
    fn a_gap_resets_the_positions_before_it_and_tells_live_clients() {
        let hub = NotifyHub::with_base(16, 8, 1000);
        hub.push(event_at(1010));
        hub.push(event_at(1020));
        let mut live = hub.watch_gaps();
        hub.gap();
        assert!(live.has_changed().unwrap());
        let gap = *live.borrow_and_update();
        assert_eq!(gap, 1021, "the gap takes a position of its own");
        hub.push(event_at(1030));
        // A client that saw everything before the gap may still have missed what it lost.
        for before in [1010, 1020] {
            assert_eq!(
                reset_of(hub.subscribe(Some(before)).1),
                Some(ResetReason::TooOld)
            );
        }
        // One told of the gap resumes after it.
        assert_eq!(replayed(hub.subscribe(Some(gap)).1), [1030]);
    }

    #[test]
    fn a_position_a_little_ahead_is_an_event_not_here_yet() {
        let now = crate::bus::unix_micros();
        let hub = NotifyHub::with_base(16, 4, now - 1_000);
        hub.push(event_at(now - 500));
        // Another front already streamed an event this hub has not received.
        assert!(replayed(hub.subscribe(Some(now + 1_000)).1).is_empty());
        // Far beyond any clock's skew: no position at all.
        assert_eq!(
            reset_of(hub.subscribe(Some(now + 3_600_000_000)).1),
            Some(ResetReason::Ahead)
        );
    }

    #[test]
    fn fronts_agree_on_ids_and_a_later_run_starts_above() {
        let first = NotifyHub::new(16, 4);
        let other_front = NotifyHub::new(16, 4);
        for _ in 0..1000 {
            let e = event_at(crate::bus::next_seq());
            first.push(e.clone());
            other_front.push(e);
        }
        let last_of_first = first.stream.lock().newest;
        assert_eq!(other_front.stream.lock().newest, last_of_first);
        let (_, resume) = other_front.subscribe(Some(last_of_first - 1));
        assert_eq!(replayed(resume), [last_of_first]);
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
