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
//! Messages of one round trip that go to the same channel leave as one message, packed (see
//! [`pack`](super::envelope::pack)), on the channel's packed twin (`r:{node}` → `rb:{node}`,
//! `d:{role}:{node}` → `db:{role}:{node}`): the receiving node's inbox then parses one pub/sub
//! message instead of many (after the writes, the largest cost). A node of an earlier build does
//! not listen on the packed channels; `PUBLISH` then says nobody heard, and the messages go
//! again one by one on the plain channel.
//!
//! A direct reply needs no acknowledgement (the request was popped, or published, at most once),
//! so it is a plain `PUBLISH`, not a `MULTI`/`EXEC`; replies to durable requests do not come
//! here: they leave with the message's acknowledgement, atomically (see `consumer::commit`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit};

use super::envelope::{now_ms, pack};
use super::{backoff, RedisLink};

/// Most messages in one round trip.
const BATCH: usize = 256;

/// Most messages waiting to be sent; past this a reply is dropped (its caller times out, as for
/// a lost reply) and a request fails as unavailable.
const CAPACITY: usize = 65_536;

/// Where a message goes.
pub(super) struct Channel {
    pub name: String,
    /// The channel for several packed together, when the receiver may listen on one.
    pub packed: Option<String>,
}

/// One message to publish.
struct Item {
    channel: Channel,
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
        channel: Channel,
        bytes: Vec<u8>,
    ) -> Option<i64> {
        if let Ok(_turn) = self.turn.try_lock() {
            return publish_now(conn, &channel.name, &bytes).await.ok();
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
        channel: Channel,
        bytes: Vec<u8>,
        until: Option<i64>,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        if let Ok(_turn) = self.turn.try_lock() {
            if publish_now(conn, &channel.name, &bytes).await.is_ok() {
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

/// One `PUBLISH` of a round trip: the items it carries (by index) and whether they are packed.
struct Send {
    items: Vec<usize>,
    packed: bool,
}

/// The `PUBLISH`es for `batch`: items to the same channel packed into one where the channel
/// has a packed twin, in the order they came.
fn plan(batch: &[Item]) -> (redis::Pipeline, Vec<Send>) {
    let mut sends: Vec<Send> = Vec::with_capacity(batch.len());
    let mut by_channel: HashMap<&str, usize> = HashMap::new();
    for (i, item) in batch.iter().enumerate() {
        if item.channel.packed.is_some() {
            if let Some(&send) = by_channel.get(item.channel.name.as_str()) {
                sends[send].items.push(i);
                continue;
            }
            by_channel.insert(&item.channel.name, sends.len());
        }
        sends.push(Send {
            items: vec![i],
            packed: false,
        });
    }
    let mut pipe = redis::pipe();
    for send in &mut sends {
        let first = &batch[send.items[0]];
        match (&first.channel.packed, send.items.len()) {
            (Some(packed), n) if n > 1 => {
                send.packed = true;
                let messages = send.items.iter().map(|&i| batch[i].bytes.as_slice());
                pipe.cmd("PUBLISH").arg(packed).arg(pack(messages));
            }
            _ => {
                pipe.cmd("PUBLISH")
                    .arg(&first.channel.name)
                    .arg(&first.bytes);
            }
        }
    }
    (pipe, sends)
}

/// Sends what the outbox holds, one pipeline at a time, until the link closes.
pub(super) async fn run(link: Arc<RedisLink>) {
    let Some(mut rx) = link.outbox.rx.lock().take() else {
        return;
    };
    let stop = &link.shutdown;
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
    let mut failures = 0;
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                item = rx.recv() => item,
                _ = stop.cancelled() => None,
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
        let (pipe, sends) = plan(&batch);
        let mut conn = link.conn();
        let sent = pipe.query_async::<Vec<i64>>(&mut conn).await;
        drop(turn);
        match sent {
            Ok(counts) => {
                failures = 0;
                // How many heard each item; a pack nobody heard goes again, unpacked (the
                // receiver may be of an earlier build).
                let mut heard = vec![None; batch.len()];
                for (send, n) in sends.iter().zip(counts) {
                    let n = if send.packed && n == 0 { None } else { Some(n) };
                    for &i in &send.items {
                        heard[i] = n;
                    }
                }
                let mut again = Vec::new();
                for (mut item, heard) in batch.drain(..).zip(heard) {
                    match heard {
                        Some(n) => {
                            if let Some(tx) = item.heard {
                                let _ = tx.send(Some(n));
                            }
                        }
                        None => {
                            item.channel.packed = None;
                            again.push(item);
                        }
                    }
                }
                batch = again;
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
                let pause = backoff(failures).min(Duration::from_millis(500));
                if !batch.is_empty() && stop.sleep(pause).await {
                    return;
                }
            }
        }
    }
}
