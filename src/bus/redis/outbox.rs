//! The node's outbox: every `PUBLISH` on the request/reply path (direct requests to a consumer's
//! channel, replies to direct requests) goes through one task that sends whatever is waiting
//! as one pipeline, one round trip at a time.
//!
//! Why: profiling `cargo bench --bench redis_bus` showed the socket writes themselves as the
//! largest cost of a call through Redis (a `writev` per command, about a fifth of the process's
//! CPU at 64 concurrent calls, and each one wakes `redis-server` for one command). One round
//! trip is in flight at a time: a sender that finds none sends its own command at once, from
//! its own task (calls one at a time pay no extra hop); what arrives meanwhile waits here and
//! leaves together in the next round trip (dozens per write under load).
//!
//! A direct reply needs no acknowledgement (the request was popped, or published, at most once),
//! so it is a plain `PUBLISH`, not a `MULTI`/`EXEC`; replies to durable requests do not come
//! here: they leave with the message's acknowledgement, atomically (see `consumer::commit`).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit};

use super::envelope::now_ms;
use super::{backoff, RedisLink};

/// Most commands in one pipeline.
const BATCH: usize = 256;

/// Most messages waiting to be sent; past this a reply is dropped (its caller times out, as for
/// a lost reply) and a request fails as unavailable.
const CAPACITY: usize = 65_536;

/// One message to publish.
struct Item {
    channel: String,
    bytes: Vec<u8>,
    /// Who wants to know how many subscribers heard it (`None` when the publish failed).
    heard: Option<oneshot::Sender<Option<i64>>>,
    /// A reply is worth sending again after a failure until this (ms since the epoch).
    until: Option<i64>,
    /// The consumer's slot for the request being answered, freed once the reply has left.
    _slot: Option<OwnedSemaphorePermit>,
}

pub(super) struct Outbox {
    tx: mpsc::Sender<Item>,
    rx: parking_lot::Mutex<Option<mpsc::Receiver<Item>>>,
    /// Held for the round trip in flight (fair: once the outbox waits for it, nobody cuts in).
    turn: Mutex<()>,
}

impl Outbox {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Outbox {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
            turn: Mutex::new(()),
        }
    }

    /// Publishes `bytes` on `channel` and says how many subscribers heard it; `None` when Redis
    /// could not be reached (or the outbox is full).
    pub(super) async fn publish(
        &self,
        conn: &ConnectionManager,
        channel: String,
        bytes: Vec<u8>,
    ) -> Option<i64> {
        if let Ok(_turn) = self.turn.try_lock() {
            return publish_now(conn, &channel, &bytes).await.ok();
        }
        let (heard, answer) = oneshot::channel();
        let item = Item {
            channel,
            bytes,
            heard: Some(heard),
            until: None,
            _slot: None,
        };
        self.tx.try_send(item).ok()?;
        answer.await.ok().flatten()
    }

    /// Publishes a reply: at once when no round trip is in flight, else with the next batch
    /// (without waiting for it). It is sent again after a failure until `until` (the caller's
    /// deadline), and `slot` is held until it has left.
    pub(super) async fn reply(
        &self,
        conn: &ConnectionManager,
        channel: String,
        bytes: Vec<u8>,
        until: Option<i64>,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        if let Ok(_turn) = self.turn.try_lock() {
            if publish_now(conn, &channel, &bytes).await.is_ok() {
                return;
            }
            // Failed: the outbox tries again while the caller waits.
        }
        let item = Item {
            channel,
            bytes,
            heard: None,
            until,
            _slot: slot,
        };
        if self.tx.try_send(item).is_err() {
            metrics::counter!("gorgon_bus_replies_dropped_total").increment(1);
            tracing::debug!("the outbox is full; a reply was dropped");
        }
    }
}

async fn publish_now(
    conn: &ConnectionManager,
    channel: &str,
    bytes: &[u8],
) -> redis::RedisResult<i64> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(bytes)
        .query_async(&mut conn.clone())
        .await
}

/// Sends what the outbox holds, one pipeline at a time, until the link closes.
pub(super) async fn run(link: Arc<RedisLink>) {
    let Some(mut rx) = link.outbox.rx.lock().take() else {
        return;
    };
    let mut stop = link.stopping();
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
    let mut failures = 0;
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                item = rx.recv() => item,
                _ = stop.changed() => None,
            };
            let Some(first) = first else { return };
            batch.push(first);
        }
        let turn = link.outbox.turn.lock().await;
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for item in &batch {
            pipe.cmd("PUBLISH").arg(&item.channel).arg(&item.bytes);
        }
        let mut conn = link.conn();
        let sent = pipe.query_async::<Vec<i64>>(&mut conn).await;
        drop(turn);
        match sent {
            Ok(counts) => {
                failures = 0;
                for (item, heard) in batch.drain(..).zip(counts) {
                    if let Some(tx) = item.heard {
                        let _ = tx.send(Some(heard));
                    }
                }
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, n = batch.len(), "cannot publish yet");
                // Requests fail at once (their callers say so); replies wait for another try
                // while their callers still wait for them.
                let now = now_ms();
                batch.retain_mut(|item| match item.heard.take() {
                    Some(tx) => {
                        let _ = tx.send(None);
                        false
                    }
                    None => item.until.is_some_and(|until| until > now),
                });
                if !batch.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures).min(Duration::from_millis(500))) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
}
