//! Dead letters: list, replay and purge a queue's `dlq:{queue}`. The `gorgon dlq` command
//! (`main.rs`) calls these; they take plain arguments and print nothing.

use redis::aio::MultiplexedConnection;

use super::envelope::{DeadLetter, RawEnvelope};
use super::Keys;

/// A connection for the tools (no background tasks).
pub async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = super::open_client(url)?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis: {e}"))
}

/// Up to `limit` dead letters of `queue`, oldest first, as stored (JSON text).
pub async fn list(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    queue: &str,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    // Dead letters are pushed on the left: the oldest are at the right end.
    let mut records: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(keys.dead(queue))
        .arg(-(limit.max(1) as i64))
        .arg(-1)
        .query_async(conn)
        .await?;
    records.reverse();
    Ok(records
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r).into_owned())
        .collect())
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub requeued: usize,
    /// Dead letters that hold no envelope (garbage): left in the list, for a human to look at.
    pub kept: usize,
}

/// Puts up to `limit` dead messages back on their queue as first deliveries, oldest first.
pub async fn replay(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    queue: &str,
    limit: usize,
) -> redis::RedisResult<Replayed> {
    let mut outcome = Replayed::default();
    let dead_key = keys.dead(queue);
    let mut seen = 0;
    while seen < limit {
        // Oldest first; each move is one MULTI, so a crash mid-way loses or doubles nothing.
        let record: Option<Vec<u8>> = redis::cmd("LINDEX")
            .arg(&dead_key)
            .arg(-1 - outcome.kept as i64)
            .query_async(conn)
            .await?;
        let Some(record) = record else { break };
        seen += 1;
        let envelope = serde_json::from_slice::<DeadLetter>(&record)
            .ok()
            .and_then(|letter| RawEnvelope::decode(letter.message.as_bytes()).ok());
        match envelope {
            Some(envelope) => {
                redis::pipe()
                    .atomic()
                    .cmd("LPUSH")
                    .arg(keys.queue(queue))
                    .arg(envelope.fresh())
                    .ignore()
                    .cmd("LREM")
                    .arg(&dead_key)
                    .arg(-1)
                    .arg(&record)
                    .ignore()
                    .query_async::<()>(conn)
                    .await?;
                outcome.requeued += 1;
            }
            None => outcome.kept += 1,
        }
    }
    Ok(outcome)
}

/// Deletes every dead letter of `queue`; returns how many there were.
pub async fn purge(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    queue: &str,
) -> redis::RedisResult<usize> {
    let (count, _): (usize, i64) = redis::pipe()
        .atomic()
        .cmd("LLEN")
        .arg(keys.dead(queue))
        .cmd("DEL")
        .arg(keys.dead(queue))
        .query_async(conn)
        .await?;
    Ok(count)
}
