//! Every queue's figures as Redis holds them now: messages waiting, taken and not yet
//! acknowledged (in flight), waiting for a retry, and dead. The node's sampler (`upkeep`, once a
//! second, into metrics and the stats role) and the admin API (`GET /api/v1/admin/queues`) both
//! read them here.

use redis::aio::ConnectionLike;

use super::{Keys, QueueFigures};

/// Every queue named in `queues`, sorted by name. Three round trips: the names, the counts and
/// consumers of each, then the length of each consumer's processing list.
pub async fn figures<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Vec<QueueFigures>> {
    let mut queues: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.queues())
        .query_async(conn)
        .await?;
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    queues.sort();
    let mut pipe = redis::pipe();
    for queue in &queues {
        pipe.cmd("LLEN").arg(keys.queue(queue));
        pipe.cmd("ZCARD").arg(keys.delayed(queue));
        pipe.cmd("LLEN").arg(keys.dead(queue));
    }
    let counts: Vec<u64> = pipe.query_async(conn).await?;
    let mut pipe = redis::pipe();
    for queue in &queues {
        pipe.cmd("SMEMBERS").arg(keys.consumers(queue));
    }
    let consumers: Vec<Vec<String>> = pipe.query_async(conn).await?;
    // In flight: what every consumer (live, or dead and not reaped yet) holds in its list.
    let mut pipe = redis::pipe();
    for (queue, members) in queues.iter().zip(&consumers) {
        for consumer in members {
            pipe.cmd("LLEN").arg(keys.processing(queue, consumer));
        }
    }
    let held: Vec<u64> = if consumers.iter().all(Vec::is_empty) {
        Vec::new()
    } else {
        pipe.query_async(conn).await?
    };
    let mut held = held.into_iter();
    let mut figures = Vec::with_capacity(queues.len());
    for ((queue, counts), members) in queues.into_iter().zip(counts.chunks(3)).zip(&consumers) {
        let in_flight = held.by_ref().take(members.len()).sum();
        if let [waiting, retrying, dead] = counts {
            figures.push(QueueFigures {
                queue,
                waiting: *waiting,
                in_flight,
                retrying: *retrying,
                dead: *dead,
            });
        }
    }
    Ok(figures)
}
