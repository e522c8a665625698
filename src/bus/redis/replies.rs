//! Replies: each node has one reply channel (`r:{node}`); its inbox hands each reply to the call
//! waiting for its correlation id. A call that gives up removes its waiter, so a late reply finds
//! nobody, is counted and dropped: nothing accumulates. Replies are not durable: one published
//! while the inbox was disconnected is lost (the work a durable request asked for is not, and
//! stays done). So when the inbox subscribes again after losing its connection, every call
//! waiting at that moment waits at most a grace period more (`--redis-reply-grace`, for replies
//! sent again once Redis is back) and is then told its reply was lost, rather than waiting out
//! its whole deadline (30 s for a durable request) for a reply that cannot come.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::envelope::{reply_frame, split_reply, unpack, RawEnvelope};
use super::outbox::Channel;
use super::{backoff, RedisLink};
use crate::bus::Codec;
use crate::error::{Error, Result as BusResult};

/// A reply's `result`, as JSON bytes.
type Result = Vec<u8>;

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Result>>>>;

/// Calls waiting for their reply, by correlation id.
pub struct Pending {
    waiters: Waiters,
    /// Counts the inbox's returns after a lost connection: replies may have been lost.
    gaps: watch::Sender<u64>,
    /// How long a waiting call still waits after such a return.
    grace: Duration,
}

/// Why a call has no reply.
#[derive(Debug, PartialEq, Eq)]
pub enum NoReply {
    /// None came within the call's deadline.
    Timeout,
    /// The inbox lost its connection while the call waited, and no reply came within the grace
    /// period after it was back.
    Lost,
}

impl Pending {
    pub fn new(grace: Duration) -> Pending {
        Pending {
            waiters: Waiters::default(),
            gaps: watch::channel(0).0,
            grace,
        }
    }

    pub fn register(&self, id: Uuid) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id, tx);
        Waiter {
            id,
            rx: Some(rx),
            waiters: self.waiters.clone(),
            gaps: self.gaps.subscribe(),
            grace: self.grace,
        }
    }

    /// The inbox is subscribed again after losing its connection.
    fn gap(&self) {
        self.gaps.send_modify(|n| *n += 1);
    }

    fn deliver(&self, id: Uuid, result: Result) -> bool {
        match self.waiters.lock().remove(&id) {
            Some(tx) => tx.send(result).is_ok(),
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.waiters.lock().len()
    }
}

/// One call's claim on its reply; removes itself from [`Pending`] when dropped.
pub struct Waiter {
    id: Uuid,
    rx: Option<oneshot::Receiver<Result>>,
    waiters: Waiters,
    gaps: watch::Receiver<u64>,
    grace: Duration,
}

impl Waiter {
    /// The reply's `result`, or why there is none.
    pub async fn wait(mut self, timeout: Duration) -> std::result::Result<Result, NoReply> {
        let Some(rx) = self.rx.take() else {
            return Err(NoReply::Timeout);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let grace = self.grace;
        let gaps = &mut self.gaps;
        let lost = async move {
            if gaps.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            reply = rx => reply.map_err(|_| NoReply::Timeout),
            _ = tokio::time::sleep_until(deadline) => Err(NoReply::Timeout),
            _ = lost => Err(NoReply::Lost),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.lock().remove(&self.id);
    }
}

/// This node's inbox: one pub/sub connection receiving the replies to its calls
/// (`r:{node}`) and the direct requests addressed to its roles (`d:{role}:{node}`), and both
/// packed several to a message (`rb:{node}`, `db:{role}:{node}`).
pub async fn listen(link: Arc<RedisLink>) {
    let stop = &link.shutdown;
    let mut failures = 0;
    let reply_channel = link.reply_key.clone();
    let packed_reply_channel = link.keys.replies_packed(&link.node);
    let direct_pattern = link.keys.direct("*", &link.node);
    let packed_direct_pattern = link.keys.direct_packed("*", &link.node);
    let mut lost_connection = false;
    loop {
        let subscribed = async {
            let mut pubsub = link.client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[&reply_channel, &packed_reply_channel])
                .await?;
            pubsub
                .psubscribe(&[&direct_pattern, &packed_direct_pattern])
                .await?;
            redis::RedisResult::Ok(pubsub)
        };
        let subscribed = tokio::time::timeout(Duration::from_secs(5), subscribed)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
        let mut pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!(error = %e, "inbox cannot subscribe");
                failures += 1;
                if stop.sleep(backoff(failures)).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        link.inbox_ready.send_replace(true);
        if std::mem::take(&mut lost_connection) {
            link.replies.gap();
        }
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = stop.cancelled() => return,
            };
            let Some(message) = message else { break };
            let channel = message.get_channel_name();
            let payload = message.get_payload_bytes();
            if channel == reply_channel {
                reply(&link, payload);
            } else if channel == packed_reply_channel {
                match unpack(payload) {
                    Some(replies) => replies.into_iter().for_each(|r| reply(&link, r)),
                    None => tracing::warn!("dropped an undecodable pack of replies"),
                }
            } else if let Some((role, packed)) = link.keys.role_of_direct(channel, &link.node) {
                let requests = if packed {
                    unpack(payload).unwrap_or_else(|| {
                        tracing::warn!(role, "dropped an undecodable pack of direct requests");
                        Vec::new()
                    })
                } else {
                    vec![payload]
                };
                // Not served here any more (the node is stopping), or every slot is taken: the
                // role's list holds the request for whichever consumer is free first.
                let feed = link.direct_feed(role);
                let refused: Vec<Vec<u8>> = requests
                    .into_iter()
                    .filter_map(|raw| match &feed {
                        Some(feed) => feed(raw.to_vec()),
                        None => Some(raw.to_vec()),
                    })
                    .collect();
                if !refused.is_empty() {
                    hand_over(&link, role, refused).await;
                }
            }
        }
        link.inbox_ready.send_replace(false);
        lost_connection = true;
        tracing::debug!("inbox connection lost; resubscribing");
        if stop.sleep(Duration::from_millis(100)).await {
            return;
        }
    }
}

/// Hands a reply frame to the call waiting for it.
fn reply(link: &RedisLink, frame: &[u8]) {
    match split_reply(frame) {
        Ok((id, result)) => {
            if !link.replies.deliver(id, result) {
                metrics::counter!("gorgon_bus_late_replies_total").increment(1);
            }
        }
        Err(e) => tracing::warn!(error = %e, "dropped an undecodable reply"),
    }
}

/// Puts direct requests this node cannot take now on the role's list, for whichever consumer
/// is free first; except a request carrying a secret, which is never written to a list: its
/// caller is told to try again.
async fn hand_over(link: &RedisLink, role: &str, mut raw: Vec<Vec<u8>>) {
    let mut secrets = Vec::new();
    raw.retain(|r| match RawEnvelope::decode(r) {
        Ok(envelope) if envelope.secret => {
            secrets.push(envelope);
            false
        }
        _ => true,
    });
    for envelope in secrets {
        let Some(reply_to) = envelope.reply_to else {
            continue;
        };
        let busy: BusResult<()> = Err(Error::Unavailable(format!(
            "the {role} role is busy; try again shortly"
        )));
        let frame = reply_frame(envelope.id, &Codec::Json.encode_reply(&busy));
        let channel = Channel {
            packed: link.keys.packed_reply_channel(&reply_to),
            name: reply_to,
        };
        link.outbox
            .reply(&link.conn, channel, frame, envelope.deadline, None)
            .await;
    }
    if raw.is_empty() {
        return;
    }
    let mut conn = link.conn();
    let queue = link.keys.queue(&format!("{role}.direct"));
    if let Err(e) = redis::cmd("LPUSH")
        .arg(queue)
        .arg(raw)
        .query_async::<i64>(&mut conn)
        .await
    {
        tracing::debug!(error = %e, "a direct request could not be handed over");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_reaches_its_waiter_and_a_late_one_is_dropped() {
        let pending = Pending::new(Duration::from_secs(2));
        let id = Uuid::now_v7();
        let waiter = pending.register(id);
        let raw = b"{\"Ok\":\"Done\"}".to_vec();
        assert!(pending.deliver(id, raw.clone()));
        assert_eq!(waiter.wait(Duration::from_secs(1)).await, Ok(raw.clone()));
        // A waiter that timed out is gone: its reply is refused and nothing is kept.
        let late = Uuid::now_v7();
        let waiter = pending.register(late);
        assert_eq!(
            waiter.wait(Duration::from_millis(10)).await,
            Err(NoReply::Timeout)
        );
        assert_eq!(pending.len(), 0);
        assert!(!pending.deliver(late, raw));
    }

    #[tokio::test]
    async fn a_call_waiting_across_a_lost_connection_waits_only_the_grace_more() {
        let grace = Duration::from_millis(300);
        let pending = Arc::new(Pending::new(grace));
        let raw = b"{\"Ok\":\"Done\"}".to_vec();
        // Its reply comes within the grace: answered.
        let answered = Uuid::now_v7();
        let waiter = pending.register(answered);
        let waiting = tokio::spawn(waiter.wait(Duration::from_secs(30)));
        pending.gap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(pending.deliver(answered, raw.clone()));
        assert_eq!(waiting.await.unwrap(), Ok(raw));
        // None comes: told it was lost after the grace, not at its 30 s deadline.
        let lost = pending.register(Uuid::now_v7());
        let started = std::time::Instant::now();
        let waiting = tokio::spawn(lost.wait(Duration::from_secs(30)));
        pending.gap();
        assert_eq!(waiting.await.unwrap(), Err(NoReply::Lost));
        let took = started.elapsed();
        assert!(took >= grace && took < Duration::from_secs(10), "{took:?}");
        // A call registered after the gap is not affected by it.
        let later = pending.register(Uuid::now_v7());
        assert_eq!(
            later.wait(Duration::from_millis(500)).await,
            Err(NoReply::Timeout)
        );
    }
}
