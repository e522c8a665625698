//! The link's background work: health checks, the heartbeat, the reaper (dead consumers and due
//! retries) and queue-depth metrics. Every loop survives Redis going away and resumes by itself.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::envelope::{DeadLetter, RawEnvelope};
use super::keys::is_durable;
use super::RedisLink;

/// Moves a dead consumer's processing list aside under a new name (registered as a consumer
/// with no heartbeat, so a reaper that dies half-way leaves it for the next one): what a paused
/// consumer moves into its list afterwards is then not touched.
/// KEYS: processing list, new name, consumers set. ARGV: consumer, new consumer name.
static SET_ASIDE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('SADD', KEYS[3], ARGV[2])
end
redis.call('SREM', KEYS[3], ARGV[1])
return 1
",
    )
});

/// Moves due retries back to the consumer end of their queue. KEYS: delayed, queue.
/// ARGV: now (ms), most to move.
static DUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  redis.call('RPUSH', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
end
return #due
",
    )
});

/// Releases the reaper lock only if this node still holds it. KEYS: lock. ARGV: node.
static UNLOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

pub async fn health(link: Arc<RedisLink>) {
    let stop = &link.shutdown;
    loop {
        if stop.sleep(Duration::from_millis(500)).await {
            return;
        }
        link.check_health().await;
        metrics::gauge!("gorgon_bus_pending_replies").set(link.replies.len() as f64);
    }
}

/// Keeps this node's heartbeat alive and its consumer registrations in place.
pub async fn heartbeat(link: Arc<RedisLink>) {
    let stop = &link.heartbeat;
    let ttl = link.config.heartbeat;
    loop {
        let queues: Vec<String> = link.consuming.lock().iter().cloned().collect();
        if !queues.is_empty() {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(link.keys.heartbeat(&link.node))
                .arg(super::envelope::now_ms())
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore();
            for queue in &queues {
                pipe.cmd("SADD").arg(link.keys.queues()).arg(queue).ignore();
                pipe.cmd("SADD")
                    .arg(link.keys.consumers(queue))
                    .arg(&link.node)
                    .ignore();
            }
            let mut conn = link.conn();
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
        }
        // Until this node consumes something, look again soon: a role served a moment after
        // start-up should be registered at once.
        let next = if queues.is_empty() {
            Duration::from_millis(100)
        } else {
            ttl / 3
        };
        if stop.sleep(next).await {
            return;
        }
    }
}

/// Moves due retries every 100 ms; every half heartbeat, if it holds the cluster-wide lock,
/// gives the messages of consumers whose heartbeat expired back to their queues.
pub async fn reaper(link: Arc<RedisLink>) {
    let stop = &link.shutdown;
    let reap_every = link.config.heartbeat / 2;
    let mut last_reap = tokio::time::Instant::now();
    loop {
        if stop.sleep(Duration::from_millis(100)).await {
            return;
        }
        if !link.is_healthy() {
            continue;
        }
        if let Err(e) = move_due(&link).await {
            tracing::debug!(error = %e, "could not move due retries");
        }
        // After an outage every heartbeat has expired: wait one heartbeat's lifetime of steady
        // health, so live consumers have renewed theirs, before judging anyone dead.
        if last_reap.elapsed() >= reap_every && link.healthy_for() >= link.config.heartbeat {
            last_reap = tokio::time::Instant::now();
            if let Err(e) = reap(&link).await {
                tracing::debug!(error = %e, "reaper pass failed");
            }
        }
    }
}

async fn move_due(link: &RedisLink) -> redis::RedisResult<()> {
    let queues: Vec<String> = link.consuming.lock().iter().cloned().collect();
    let mut conn = link.conn();
    for queue in queues.iter().filter(|q| is_durable(q)) {
        let moved: i64 = DUE
            .key(link.keys.delayed(queue))
            .key(link.keys.queue(queue))
            .arg(super::envelope::now_ms())
            .arg(1000)
            .invoke_async(&mut conn)
            .await?;
        if moved > 0 {
            tracing::debug!(queue, moved, "retries due");
        }
    }
    Ok(())
}

/// One reaper pass; returns the number of messages given back.
pub async fn reap(link: &RedisLink) -> redis::RedisResult<usize> {
    let mut conn = link.conn();
    let locked: Option<String> = redis::cmd("SET")
        .arg(link.keys.reaper_lock())
        .arg(&link.node)
        .arg("NX")
        .arg("PX")
        // Longer than any pass; a reaper that dies holding it blocks the others this long.
        .arg(link.config.heartbeat.as_millis() as u64 * 4)
        .query_async(&mut conn)
        .await?;
    if locked.is_none() {
        return Ok(0);
    }
    let mut recovered = 0;
    let queues: Vec<String> = redis::cmd("SMEMBERS")
        .arg(link.keys.queues())
        .query_async(&mut conn)
        .await?;
    for queue in &queues {
        let consumers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(link.keys.consumers(queue))
            .query_async(&mut conn)
            .await?;
        for consumer in consumers {
            // `node~id` is a list an earlier pass set aside and did not finish: an orphan,
            // whoever its node was and whether or not that node lives.
            let orphan = consumer.contains('~');
            if !orphan {
                if consumer == link.node {
                    continue;
                }
                let alive: bool = redis::cmd("EXISTS")
                    .arg(link.keys.heartbeat(&consumer))
                    .query_async(&mut conn)
                    .await?;
                if alive {
                    continue;
                }
            }
            if !is_durable(queue) {
                // Direct requests are never in a processing list: just forget the consumer.
                let _: i64 = redis::cmd("SREM")
                    .arg(link.keys.consumers(queue))
                    .arg(&consumer)
                    .query_async(&mut conn)
                    .await?;
                continue;
            }
            recovered += recover(link, &mut conn, queue, &consumer).await?;
        }
    }
    let _: redis::RedisResult<i64> = UNLOCK
        .key(link.keys.reaper_lock())
        .arg(&link.node)
        .invoke_async(&mut conn)
        .await;
    Ok(recovered)
}

async fn recover(
    link: &RedisLink,
    conn: &mut redis::aio::ConnectionManager,
    queue: &str,
    consumer: &str,
) -> redis::RedisResult<usize> {
    let aside = if consumer.contains('~') {
        consumer.to_string()
    } else {
        let aside = format!("{consumer}~{}", uuid::Uuid::now_v7().simple());
        let _: i64 = SET_ASIDE
            .key(link.keys.processing(queue, consumer))
            .key(link.keys.processing(queue, &aside))
            .key(link.keys.consumers(queue))
            .arg(consumer)
            .arg(&aside)
            .invoke_async(conn)
            .await?;
        aside
    };
    let list = link.keys.processing(queue, &aside);
    let messages: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    let (mut requeued, mut dead) = (0usize, 0usize);
    // The list's tail holds the oldest; pushing them to the consumer end in that order keeps
    // the oldest first in line.
    for raw in messages.iter().rev() {
        match RawEnvelope::decode(raw) {
            Ok(envelope) if envelope.attempt < link.config.max_attempts => {
                pipe.cmd("RPUSH")
                    .arg(link.keys.queue(queue))
                    .arg(envelope.next_attempt())
                    .ignore();
                requeued += 1;
            }
            Ok(envelope) => {
                let reason = format!(
                    "its consumer died during each of {} deliveries",
                    envelope.attempt
                );
                let letter = DeadLetter::new(queue, raw, envelope.attempt, reason);
                pipe.cmd("LPUSH")
                    .arg(link.keys.dead(queue))
                    .arg(letter.encode())
                    .ignore();
                dead += 1;
            }
            Err(reason) => {
                let letter = DeadLetter::new(queue, raw, 0, reason);
                pipe.cmd("LPUSH")
                    .arg(link.keys.dead(queue))
                    .arg(letter.encode())
                    .ignore();
                dead += 1;
            }
        }
    }
    pipe.cmd("DEL").arg(&list).ignore();
    pipe.cmd("SREM")
        .arg(link.keys.consumers(queue))
        .arg(&aside)
        .ignore();
    pipe.query_async::<()>(conn).await?;
    if requeued + dead > 0 {
        tracing::warn!(
            queue,
            consumer,
            requeued,
            dead,
            "gave a dead consumer's messages back"
        );
        metrics::counter!("gorgon_queue_redelivered_total", "queue" => queue.to_string())
            .increment(requeued as u64);
    }
    Ok(requeued + dead)
}

/// Runs `pass` now and then every `period` while Redis answers, until the link closes.
async fn periodically(
    link: Arc<RedisLink>,
    period: Duration,
    what: &str,
    pass: impl AsyncFn(&RedisLink) -> redis::RedisResult<()>,
) {
    let stop = &link.shutdown;
    loop {
        if link.is_healthy() {
            if let Err(e) = pass(&link).await {
                tracing::debug!(error = %e, "{what} failed");
            }
        }
        if stop.sleep(period).await {
            return;
        }
    }
}

/// Refreshes the live consumers of every role's direct requests, twice a second.
pub async fn members(link: Arc<RedisLink>) {
    let period = Duration::from_millis(500);
    periodically(
        link,
        period,
        "refreshing direct-request members",
        refresh_members,
    )
    .await
}

async fn refresh_members(link: &RedisLink) -> redis::RedisResult<()> {
    use crate::bus::{Delivery, Role};
    let mut conn = link.conn();
    let mut pipe = redis::pipe();
    for &role in Role::ALL {
        let queue = super::queue_name(role, Delivery::Direct);
        pipe.cmd("SMEMBERS").arg(link.keys.consumers(&queue));
    }
    let listed: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
    let mut nodes: Vec<&String> = listed.iter().flatten().collect();
    nodes.sort();
    nodes.dedup();
    let mut alive = std::collections::HashSet::new();
    if !nodes.is_empty() {
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("EXISTS").arg(link.keys.heartbeat(node));
        }
        let exists: Vec<bool> = pipe.query_async(&mut conn).await?;
        alive.extend(
            nodes
                .iter()
                .zip(exists)
                .filter(|(_, e)| *e)
                .map(|(n, _)| (*n).clone()),
        );
    }
    let mut members = link.members.write();
    for (&role, listed) in Role::ALL.iter().zip(listed) {
        let live: Vec<String> = listed.into_iter().filter(|n| alive.contains(n)).collect();
        members.insert(role, live);
    }
    Ok(())
}

/// Samples queue depth, retries waiting and dead letters of every queue, once a second.
pub async fn sample_depths(link: Arc<RedisLink>) {
    let period = Duration::from_secs(1);
    periodically(link, period, "sampling queue depths", sample_once).await
}

async fn sample_once(link: &RedisLink) -> redis::RedisResult<()> {
    let sample = super::queues::figures(&mut link.conn(), &link.keys).await?;
    for figures in &sample {
        let queue = &figures.queue;
        metrics::gauge!("gorgon_queue_depth", "queue" => queue.clone()).set(figures.waiting as f64);
        metrics::gauge!("gorgon_queue_delayed", "queue" => queue.clone())
            .set(figures.retrying as f64);
        metrics::gauge!("gorgon_queue_dead", "queue" => queue.clone()).set(figures.dead as f64);
    }
    *link.figures.lock() = sample;
    Ok(())
}
