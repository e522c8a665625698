//! Replies: each node has one reply list (`r:{node}`); a listener hands each reply to the call
//! waiting for its correlation id. A call that gives up removes its waiter, so a late reply finds
//! nobody, is counted and dropped: nothing accumulates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::envelope::ReplyFrame;
use super::{backoff, sleep_or_stop, RedisLink, BLOCK};

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Box<RawValue>>>>>;

/// Calls waiting for their reply, by correlation id.
#[derive(Default)]
pub struct Pending {
    waiters: Waiters,
}

impl Pending {
    pub fn register(&self, id: Uuid) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id, tx);
        Waiter {
            id,
            rx: Some(rx),
            waiters: self.waiters.clone(),
        }
    }

    fn deliver(&self, id: Uuid, result: Box<RawValue>) -> bool {
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
    rx: Option<oneshot::Receiver<Box<RawValue>>>,
    waiters: Waiters,
}

impl Waiter {
    /// The reply's `result`, or `None` when none came in time.
    pub async fn wait(mut self, timeout: Duration) -> Option<Box<RawValue>> {
        let rx = self.rx.take()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.lock().remove(&self.id);
    }
}

/// How long a reply list outlives its node's last reply (replies to a dead node then vanish).
pub const REPLY_TTL_MS: i64 = 60_000;

/// Reads this node's reply list and wakes the waiting calls.
pub async fn listen(link: Arc<RedisLink>) {
    let mut stop = link.stopping();
    let mut failures = 0;
    let key = link.reply_key.clone();
    'connect: loop {
        let mut conn = match link.blocking_conn().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "reply listener cannot connect");
                failures += 1;
                if sleep_or_stop(&mut stop, backoff(failures)).await {
                    return;
                }
                continue;
            }
        };
        loop {
            if *stop.borrow() {
                return;
            }
            // A batch without blocking when replies are flowing; block for one when idle.
            let batch = redis::cmd("RPOP")
                .arg(&key)
                .arg(512)
                .query_async::<Option<Vec<Vec<u8>>>>(&mut conn)
                .await;
            let frames = match batch {
                Ok(Some(frames)) => frames,
                Ok(None) => match redis::cmd("BRPOP")
                    .arg(&key)
                    .arg(BLOCK.as_secs_f64())
                    .query_async::<Option<(String, Vec<u8>)>>(&mut conn)
                    .await
                {
                    Ok(Some((_, frame))) => vec![frame],
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "reply listener lost Redis");
                        failures += 1;
                        if sleep_or_stop(&mut stop, backoff(failures)).await {
                            return;
                        }
                        continue 'connect;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "reply listener lost Redis");
                    failures += 1;
                    if sleep_or_stop(&mut stop, backoff(failures)).await {
                        return;
                    }
                    continue 'connect;
                }
            };
            failures = 0;
            for frame in frames {
                match serde_json::from_slice::<ReplyFrame<Box<RawValue>>>(&frame) {
                    Ok(reply) => {
                        if !link.replies.deliver(reply.id, reply.result) {
                            metrics::counter!("gorgon_bus_late_replies_total").increment(1);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "dropped an undecodable reply"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_reaches_its_waiter_and_a_late_one_is_dropped() {
        let pending = Pending::default();
        let id = Uuid::now_v7();
        let waiter = pending.register(id);
        let raw = RawValue::from_string("{\"Ok\":\"Done\"}".into()).expect("raw");
        assert!(pending.deliver(id, raw.clone()));
        assert_eq!(
            waiter.wait(Duration::from_secs(1)).await.map(|r| r.get().to_string()),
            Some(raw.get().to_string())
        );
        // A waiter that timed out is gone: its reply is refused and nothing is kept.
        let late = Uuid::now_v7();
        let waiter = pending.register(late);
        assert!(waiter.wait(Duration::from_millis(10)).await.is_none());
        assert_eq!(pending.len(), 0);
        assert!(!pending.deliver(late, raw));
    }
}
