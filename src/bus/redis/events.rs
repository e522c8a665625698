//! Events between nodes: each node publishes its events on `events:{topic}` and subscribes to
//! every topic, so each node's notify role sees every change. Pub/sub is fire-and-forget, like
//! the in-process broadcast it extends: a node that is disconnected misses events. When its
//! subscription is back it says so on the bus ([`Bus::event_gap`]), and its notify role tells its
//! clients they may have missed some (an `event: lagged` notice).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{backoff, RedisLink};
use crate::bus::{Bus, Event};

/// Events queued for publishing; past this, new events are dropped (and counted).
const OUTBOX: usize = 16_384;

#[derive(Serialize, Deserialize)]
struct Wire<E> {
    /// The publishing node, which ignores its own events (it has already delivered them).
    origin: String,
    event: E,
}

/// An event ready to publish: its topic and its bytes.
type Outgoing = (String, Vec<u8>);

/// The sending half, used by `Bus::publish` (never waits).
pub struct Publisher {
    tx: mpsc::Sender<Outgoing>,
    /// Taken by the publishing task when it starts.
    rx: parking_lot::Mutex<Option<mpsc::Receiver<Outgoing>>>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(OUTBOX);
        Publisher {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
        }
    }

    pub fn send(&self, origin: &str, event: &Event) {
        let wire = Wire {
            origin: origin.to_string(),
            event,
        };
        let Ok(bytes) = serde_json::to_vec(&wire) else {
            return;
        };
        if self
            .tx
            .try_send((event.kind.topic().to_string(), bytes))
            .is_err()
        {
            metrics::counter!("gorgon_events_dropped_total", "reason" => "outbox_full")
                .increment(1);
        }
    }
}

/// Publishes queued events, many per round trip.
pub async fn publish(link: Arc<RedisLink>) {
    let Some(mut rx) = link.events.rx.lock().take() else {
        return;
    };
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        for (topic, bytes) in batch.drain(..) {
            pipe.cmd("PUBLISH")
                .arg(link.keys.events(&topic))
                .arg(bytes)
                .ignore();
        }
        let mut conn = link.conn();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            metrics::counter!("gorgon_events_dropped_total", "reason" => "redis").increment(1);
            tracing::debug!(error = %e, "events not published");
        }
    }
}

/// Receives other nodes' events and broadcasts them on this node's bus.
pub async fn subscribe(link: Arc<RedisLink>, bus: Bus) {
    let stop = &link.shutdown;
    let pattern = link.keys.events("*");
    let mut failures = 0;
    let mut subscribed_before = false;
    loop {
        let connected =
            tokio::time::timeout(Duration::from_secs(5), link.client.get_async_pubsub())
                .await
                .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
        let mut pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, "event subscriber cannot connect");
                if stop.sleep(backoff(failures)).await {
                    return;
                }
                continue;
            }
        };
        let subscribed = tokio::time::timeout(Duration::from_secs(5), pubsub.psubscribe(&pattern))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
        if let Err(e) = subscribed {
            failures += 1;
            tracing::debug!(error = %e, "event subscription failed");
            if stop.sleep(backoff(failures)).await {
                return;
            }
            continue;
        }
        failures = 0;
        // Events published while this node was not subscribed are lost (pub/sub keeps nothing):
        // from the second subscription on, this node's clients are told.
        if subscribed_before {
            tracing::warn!("event subscription back: events of other nodes may have been missed");
            bus.event_gap();
        }
        subscribed_before = true;
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    match serde_json::from_slice::<Wire<Event>>(message.get_payload_bytes()) {
                        Ok(wire) if wire.origin != link.node => bus.broadcast_local(wire.event),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "ignored an undecodable event"),
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
        tracing::debug!("event subscription lost; reconnecting");
        if stop.sleep(Duration::from_millis(100)).await {
            return;
        }
    }
}
