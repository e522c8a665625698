//! Consumers: take a role's messages from Redis, hand them to the local role, reply, acknowledge.
//!
//! A durable message moves atomically from `q:{queue}` to this consumer's processing list
//! `p:{queue}:{node}` (a batch per round trip, or one blocking `BLMOVE` when idle) and leaves it
//! only when it has been answered (`LREM`, in the same `MULTI` as the reply), retried later
//! (`ZADD delayed`) or dead-lettered (`LPUSH dlq`). If the process dies first, the message stays
//! in the processing list until the reaper gives it back (see `upkeep`). Direct messages are
//! popped (at most once), or arrive on this node's channel (see `replies::listen`), and are
//! dropped unhandled once their caller's deadline has passed. Replies are published on the
//! caller's reply channel: a durable request's in the `MULTI` that acknowledges it, a direct
//! request's (which has nothing to acknowledge) through the node's outbox, many per round trip.
//!
//! At most `inflight` messages per queue are worked on at once; the rest wait in Redis, where
//! any other consumer of the queue can take them.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rand::Rng;
use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::envelope::{now_ms, reply_frame, DeadLetter, RawEnvelope};
use super::{backoff, queue_name, RedisLink, BLOCK};
use crate::bus::{Answered, Bus, Codec, Delivery, Role};
use crate::error::{Error, Result};

/// Moves up to ARGV[1] messages from the queue to the processing list, oldest first.
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[#out + 1] = v
end
return out
",
    )
});

/// Moves everything in a processing list back to the head of its queue.
static GIVE_BACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') do n = n + 1 end
return n
",
    )
});

/// Starts the consumers of `role`'s two queues, in the link's consumer phase.
pub fn start(link: Arc<RedisLink>, bus: Bus, role: Role) {
    [Delivery::Direct, Delivery::Durable]
        .into_iter()
        .for_each(|delivery| {
            let queue = queue_name(role, delivery);
            link.consuming.lock().insert(queue.clone());
            // Exported from the start, so dashboards show a zero rather than nothing.
            metrics::counter!("gorgon_queue_redelivered_total", "queue" => queue.clone())
                .increment(0);
            metrics::gauge!("gorgon_queue_inflight", "queue" => queue.clone()).increment(0.0);
            let outcome = |outcome: &'static str| {
                let counter = metrics::counter!("gorgon_queue_messages_total", "queue" => queue.clone(), "outcome" => outcome);
                (outcome, counter)
            };
            let ctx = Arc::new(Consumer {
                inflight: metrics::gauge!("gorgon_queue_inflight", "queue" => queue.clone()),
                outcomes: ["ok", "error", "expired", "retried", "dead"].map(outcome),
                qkey: link.keys.queue(&queue),
                pkey: link.keys.processing(&queue, &link.node),
                durable: delivery == Delivery::Durable,
                role,
                link: link.clone(),
                bus: bus.clone(),
                queue,
                held: Default::default(),
            });
            let slots = Arc::new(Semaphore::new(link.config.inflight));
            if delivery == Delivery::Direct {
                link.feed_direct(role, direct_feed(ctx.clone(), slots.clone()));
            }
            link.consumers.spawn_draining(run(ctx, slots));
        })
}

/// How direct requests published to this node's channel reach the consumer. The inbox must
/// never wait here (replies travel through it too, and a handler may be waiting for one), so a
/// request that finds every slot taken goes to the role's list instead, for whichever consumer
/// frees up first.
fn direct_feed(ctx: Arc<Consumer>, slots: Arc<Semaphore>) -> super::DirectFeed {
    Arc::new(
        move |raw: Vec<u8>| match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                ctx.link
                    .consumers
                    .spawn_draining(handle(ctx.clone(), raw, permit));
                None
            }
            Err(_) => Some(raw),
        },
    )
}

struct Consumer {
    link: Arc<RedisLink>,
    bus: Bus,
    queue: String,
    qkey: String,
    pkey: String,
    durable: bool,
    role: Role,
    /// The durable messages being worked on (as taken, byte for byte).
    held: parking_lot::Mutex<HashSet<Vec<u8>>>,
    inflight: metrics::Gauge,
    /// `gorgon_queue_messages_total` of this queue, by outcome.
    outcomes: [(&'static str, metrics::Counter); 5],
}

async fn run(ctx: Arc<Consumer>, slots: Arc<Semaphore>) {
    let link = &ctx.link;
    let limit = link.config.inflight;
    let stop = &link.consumers;
    let mut blocking: Option<MultiplexedConnection> = None;
    let mut failures = 0;
    // Known to the reapers before the first take, so no message is ever in an unknown list.
    while let Err(e) = register(&ctx).await {
        failures += 1;
        tracing::debug!(queue = %ctx.queue, error = %e, "consumer cannot register yet");
        if stop.sleep(backoff(failures)).await {
            return;
        }
    }
    let mut last_scan = tokio::time::Instant::now();
    let mut suspects = HashSet::new();
    while !stop.is_cancelled() {
        if ctx.durable && last_scan.elapsed() >= link.config.heartbeat {
            last_scan = tokio::time::Instant::now();
            reclaim(&ctx, &slots, &mut suspects).await;
        }
        let free = slots.available_permits();
        if free == 0 {
            // Full: wait for a slot (or the stop signal) before taking more.
            tokio::select! {
                permit = slots.clone().acquire_owned() => drop(permit),
                _ = stop.cancelled() => {}
            }
            continue;
        }
        let taken = match take(&ctx, free.min(link.config.batch)).await {
            Ok(batch) if !batch.is_empty() => Ok(batch),
            Ok(_) => take_blocking(&ctx, &mut blocking, free.min(link.config.batch)).await,
            Err(e) => Err(e),
        };
        let batch = match taken {
            Ok(batch) => {
                failures = 0;
                batch
            }
            Err(e) => {
                blocking = None;
                failures += 1;
                tracing::debug!(queue = %ctx.queue, error = %e, "consumer cannot reach Redis");
                if stop.sleep(backoff(failures)).await {
                    break;
                }
                continue;
            }
        };
        for raw in batch {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            if ctx.durable {
                ctx.held.lock().insert(raw.clone());
            }
            stop.spawn_draining(handle(ctx.clone(), raw, permit));
        }
    }
    // Drain: every message taken is answered (or given back) before the consumer ends.
    if let Ok(all) = slots.acquire_many_owned(limit as u32).await {
        all.forget();
    }
}

async fn register(ctx: &Consumer) -> redis::RedisResult<()> {
    let link = &ctx.link;
    let mut conn = link.conn();
    redis::pipe()
        .cmd("SET")
        .arg(link.keys.heartbeat(&link.node))
        .arg(now_ms())
        .arg("PX")
        .arg(link.config.heartbeat.as_millis() as u64)
        .ignore()
        .cmd("SADD")
        .arg(link.keys.queues())
        .arg(&ctx.queue)
        .ignore()
        .cmd("SADD")
        .arg(link.keys.consumers(&ctx.queue))
        .arg(&link.node)
        .ignore()
        .query_async(&mut conn)
        .await
}

/// Handles messages stranded in this consumer's own processing list: a take whose reply was
/// lost (a timeout, Redis restarting between the move and the answer) or an acknowledgement
/// that was given up on leaves a message there that nobody works on, and a reaper never looks
/// at a live consumer's list. A message counts as stranded when two scans a heartbeat apart
/// find it in the list and not among the messages being worked on.
async fn reclaim(ctx: &Arc<Consumer>, slots: &Arc<Semaphore>, suspects: &mut HashSet<Vec<u8>>) {
    let mut conn = ctx.link.conn();
    let listed: Vec<Vec<u8>> = match redis::cmd("LRANGE")
        .arg(&ctx.pkey)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
    {
        Ok(listed) => listed,
        Err(_) => return,
    };
    let unheld: HashSet<Vec<u8>> = {
        let held = ctx.held.lock();
        listed.into_iter().filter(|m| !held.contains(m)).collect()
    };
    let stranded: Vec<Vec<u8>> = unheld.intersection(suspects).cloned().collect();
    *suspects = unheld;
    if stranded.is_empty() {
        return;
    }
    tracing::warn!(queue = %ctx.queue, n = stranded.len(), "handling messages stranded in this consumer's processing list");
    for raw in stranded {
        suspects.remove(&raw);
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        metrics::counter!("gorgon_queue_redelivered_total", "queue" => ctx.queue.clone())
            .increment(1);
        ctx.held.lock().insert(raw.clone());
        ctx.link
            .consumers
            .spawn_draining(handle(ctx.clone(), raw, permit));
    }
}

/// Takes up to `n` durable messages without waiting (direct ones are taken only by
/// [`take_blocking`], which returns a whole batch too).
async fn take(ctx: &Consumer, n: usize) -> redis::RedisResult<Vec<Vec<u8>>> {
    if !ctx.durable {
        return Ok(Vec::new());
    }
    let mut conn = ctx.link.conn();
    TAKE.key(&ctx.qkey)
        .key(&ctx.pkey)
        .arg(n)
        .invoke_async(&mut conn)
        .await
}

/// Waits up to [`BLOCK`] for messages, on a connection of its own: one durable message
/// (`BLMOVE`), or up to `n` direct ones (`BLMPOP`, Redis 7).
async fn take_blocking(
    ctx: &Consumer,
    slot: &mut Option<MultiplexedConnection>,
    n: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let conn = match slot {
        Some(conn) => conn,
        None => slot.insert(ctx.link.blocking_conn().await?),
    };
    if ctx.durable {
        let one: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(&ctx.qkey)
            .arg(&ctx.pkey)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(BLOCK.as_secs_f64())
            .query_async(conn)
            .await?;
        Ok(one.into_iter().collect())
    } else {
        pop_many(conn, &ctx.qkey, n).await
    }
}

/// `BLMPOP`: up to `n` elements from the right of `key`, waiting up to [`BLOCK`] for the first.
pub(super) async fn pop_many(
    conn: &mut MultiplexedConnection,
    key: &str,
    n: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let popped: Option<(String, Vec<Vec<u8>>)> = redis::cmd("BLMPOP")
        .arg(BLOCK.as_secs_f64())
        .arg(1)
        .arg(key)
        .arg("RIGHT")
        .arg("COUNT")
        .arg(n)
        .query_async(conn)
        .await?;
    Ok(popped.map(|(_, items)| items).unwrap_or_default())
}

/// Whether a failure may go away on another try (then a durable message is retried).
fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::Unavailable(_) | Error::Timeout(_) | Error::Internal(_)
    )
}

/// Handles one message; `slot` is held until it is answered (a direct request's until its reply
/// has left through the outbox).
async fn handle(ctx: Arc<Consumer>, raw: Vec<u8>, slot: OwnedSemaphorePermit) {
    ctx.inflight.increment(1.0);
    handle_one(&ctx, &raw, slot).await;
    if ctx.durable {
        ctx.held.lock().remove(&raw);
    }
    ctx.inflight.decrement(1.0);
}

async fn handle_one(ctx: &Consumer, raw: &[u8], slot: OwnedSemaphorePermit) {
    let envelope = match RawEnvelope::decode(raw) {
        Ok(envelope) => envelope,
        Err(reason) => return dead_letter(ctx, raw, None, reason).await,
    };
    if envelope.attempt > 1 {
        metrics::counter!("gorgon_queue_redelivered_total", "queue" => ctx.queue.clone())
            .increment(1);
    }
    if !ctx.durable && envelope.deadline.is_some_and(|d| d < now_ms()) {
        // The caller has given up on this read; answering would be wasted work.
        count(ctx, "expired");
        return;
    }
    let reply = match ctx
        .bus
        .answer(ctx.role, envelope.body.get().as_bytes(), Codec::Json)
        .await
    {
        Answered::Done(reply) => reply,
        Answered::Undecodable(reason) => {
            let reason = format!("{reason} ({})", envelope.kind);
            return dead_letter(ctx, raw, Some(&envelope), reason).await;
        }
    };
    if ctx.durable {
        if let Some(error) = &reply.error {
            if retryable(error) {
                if envelope.attempt >= ctx.link.config.max_attempts {
                    let reason = format!("failed {} times, last: {error}", envelope.attempt);
                    return dead_letter(ctx, raw, Some(&envelope), reason).await;
                }
                return retry_later(ctx, raw, &envelope, error).await;
            }
        }
    }
    count(ctx, if reply.error.is_none() { "ok" } else { "error" });
    if !ctx.durable {
        // Nothing to acknowledge: the reply leaves with others, and frees the slot once sent.
        if let Some(reply_to) = envelope.reply_to {
            let frame = reply_frame(envelope.id, &reply.bytes);
            let channel = super::outbox::Channel {
                packed: ctx.link.keys.packed_reply_channel(&reply_to),
                name: reply_to,
            };
            ctx.link
                .outbox
                .reply(
                    &ctx.link.conn,
                    channel,
                    frame,
                    envelope.deadline,
                    Some(slot),
                )
                .await;
        }
        return;
    }
    let mut pipe = redis::pipe();
    let replied = push_reply(&mut pipe, &envelope, &reply.bytes);
    ack(ctx, &mut pipe, raw);
    if replied {
        // The reply goes out if and only if the message is acknowledged.
        pipe.atomic();
    }
    commit(ctx, pipe, "acknowledge").await;
}

fn count(ctx: &Consumer, outcome: &'static str) {
    match ctx.outcomes.iter().find(|(name, _)| *name == outcome) {
        Some((_, counter)) => counter.increment(1),
        None => metrics::counter!("gorgon_queue_messages_total", "queue" => ctx.queue.clone(), "outcome" => outcome)
            .increment(1),
    }
}

/// Publishes a reply (`Result<Reply, Error>` as JSON, from the bus's JSON codec) on the
/// caller's reply channel; false when the message asked for none.
fn push_reply(pipe: &mut redis::Pipeline, envelope: &RawEnvelope, result: &[u8]) -> bool {
    let Some(reply_to) = &envelope.reply_to else {
        return false;
    };
    pipe.cmd("PUBLISH")
        .arg(reply_to)
        .arg(reply_frame(envelope.id, result))
        .ignore();
    true
}

fn ack(ctx: &Consumer, pipe: &mut redis::Pipeline, raw: &[u8]) {
    if ctx.durable {
        // From the tail: the oldest messages sit there, and they are acknowledged first.
        pipe.cmd("LREM").arg(&ctx.pkey).arg(-1).arg(raw).ignore();
    }
}

async fn retry_later(ctx: &Consumer, raw: &[u8], envelope: &RawEnvelope, error: &Error) {
    debug_assert!(ctx.durable);
    let base = ctx.link.config.retry_base.as_millis() as f64;
    let exponent = envelope.attempt.saturating_sub(1).min(16) as i32;
    let jitter = rand::rng().random_range(0.5..1.5);
    let delay_ms = (base * 2f64.powi(exponent) * jitter).min(60_000.0) as i64;
    tracing::debug!(queue = %ctx.queue, kind = %envelope.kind, attempt = envelope.attempt, delay_ms, %error, "retrying later");
    count(ctx, "retried");
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("ZADD")
        .arg(ctx.link.keys.delayed(&ctx.queue))
        .arg(now_ms() + delay_ms)
        .arg(envelope.next_attempt())
        .ignore();
    ack(ctx, &mut pipe, raw);
    commit(ctx, pipe, "schedule a retry").await;
}

async fn dead_letter(ctx: &Consumer, raw: &[u8], envelope: Option<&RawEnvelope>, reason: String) {
    // A request carrying a secret is never written to a list, and its decoding error (which may
    // quote the request) goes nowhere: the caller is told, and nothing is kept.
    let secret = envelope.is_some_and(|e| e.secret);
    let reason = if secret {
        let kind = envelope.map(|e| e.kind.as_str()).unwrap_or_default();
        format!("a {kind} request (it carries a secret) could not be handled; not kept")
    } else {
        reason
    };
    tracing::warn!(queue = %ctx.queue, %reason, "message dead-lettered");
    count(ctx, "dead");
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !secret {
        let attempts = envelope.map(|e| e.attempt).unwrap_or(0);
        let letter = DeadLetter::new(&ctx.queue, raw, attempts, reason.clone());
        pipe.cmd("LPUSH")
            .arg(ctx.link.keys.dead(&ctx.queue))
            .arg(letter.encode())
            .ignore();
    }
    if let Some(envelope) = envelope {
        let failed: Result<()> = Err(Error::Unavailable(format!(
            "the request could not be handled and was set aside: {reason}"
        )));
        push_reply(&mut pipe, envelope, &Codec::Json.encode_reply(&failed));
    }
    ack(ctx, &mut pipe, raw);
    commit(ctx, pipe, "dead-letter").await;
}

/// How long an acknowledgement keeps being retried while Redis is away. Past it the message
/// stays in the processing list, and the reaper delivers it again once this consumer is gone.
const COMMIT_PATIENCE: Duration = Duration::from_secs(60);

/// Runs a reply/ack pipeline, retrying while Redis is unreachable: a handled message must not
/// stay in the processing list just because Redis blinked.
async fn commit(ctx: &Consumer, pipe: redis::Pipeline, what: &str) {
    let started = tokio::time::Instant::now();
    let mut failures = 0;
    loop {
        let mut conn = ctx.link.conn();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => return,
            Err(e) if started.elapsed() < COMMIT_PATIENCE => {
                failures += 1;
                tracing::debug!(queue = %ctx.queue, error = %e, "cannot {what} yet; retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
            Err(e) => {
                tracing::error!(queue = %ctx.queue, error = %e, "gave up trying to {what}; the reaper will redeliver");
                return;
            }
        }
    }
}

/// Moves what is left in this node's processing list of `queue` back to the queue; false when
/// it could not (the list then stays for the reaper).
pub(super) async fn give_back(link: &RedisLink, queue: &str) -> bool {
    if !super::keys::is_durable(queue) {
        return true;
    }
    let mut conn = link.conn();
    let moved: redis::RedisResult<i64> = GIVE_BACK
        .key(link.keys.processing(queue, &link.node))
        .key(link.keys.queue(queue))
        .invoke_async(&mut conn)
        .await;
    match moved {
        Ok(0) => true,
        Ok(n) => {
            tracing::info!(queue, n, "gave unfinished messages back to the queue");
            true
        }
        Err(e) => {
            tracing::warn!(queue, error = %e, "could not give messages back; the reaper will");
            false
        }
    }
}
