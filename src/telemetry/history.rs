//! The per-second history of a node's HTTP traffic: the HTTP layer counts each request into the
//! node's [`StatsHub`] (a few atomic adds); once a second its clock closes that second into the
//! history (throughput, errors and the latency distribution, the dashboard's heatmap), rolled up
//! per minute. The stats role answers it at `/api/v1/stats`; the cluster sends its last seconds
//! to its peers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::annotations::Annotations;
use super::LATENCY_BUCKETS;

/// Counts of the current second, shared by the HTTP workers and the clock that closes it.
pub struct StatsHub {
    /// One counter per latency bucket, plus one for slower requests.
    buckets: Vec<AtomicU64>,
    requests: AtomicU64,
    errors: AtomicU64,
    history: Mutex<History>,
    /// The marks drawn over that history (`super::annotations`): put by the stats role, merged
    /// from the cluster's heartbeats.
    annotations: Annotations,
}

/// One second (or minute) of traffic on this node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Interval {
    /// Start of the interval.
    pub at: DateTime<Utc>,
    pub requests: u64,
    /// Responses with a 5xx status.
    pub errors: u64,
    /// Requests per latency bucket; `bucket_bounds_ms` gives the upper bounds, the last counts
    /// everything slower.
    pub buckets: Vec<u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

struct History {
    seconds: VecDeque<Interval>,
    minutes: VecDeque<Interval>,
    second_capacity: usize,
    minute_capacity: usize,
}

impl StatsHub {
    /// Keeps `seconds` of per-second history and `minutes` of per-minute roll-ups.
    pub fn new(seconds: usize, minutes: usize) -> Arc<Self> {
        Arc::new(StatsHub {
            buckets: (0..=LATENCY_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            history: Mutex::new(History {
                seconds: VecDeque::with_capacity(seconds),
                minutes: VecDeque::with_capacity(minutes),
                second_capacity: seconds.max(1),
                minute_capacity: minutes.max(1),
            }),
            annotations: Annotations::default(),
        })
    }

    /// This node's annotations.
    pub fn annotations(&self) -> &Annotations {
        &self.annotations
    }

    /// Closes each second into the history, on every node (with or without the stats role: a
    /// web-only node's traffic is what the cluster's figures add up).
    pub async fn clock(self: Arc<Self>) {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let second_start = Utc::now() - chrono::Duration::seconds(1);
            tick.tick().await;
            self.close_second(second_start);
            metrics::gauge!("gorgon_node_uptime_seconds").set(started.elapsed().as_secs_f64());
        }
    }

    /// Counts one answered request.
    pub fn record(&self, latency: Duration, server_error: bool) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if server_error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes the current second (called once a second by the clock).
    fn close_second(&self, at: DateTime<Utc>) {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let second = interval(
            at,
            self.requests.swap(0, Ordering::Relaxed),
            self.errors.swap(0, Ordering::Relaxed),
            buckets,
        );
        let mut history = self.history.lock();
        let minute_start = at.timestamp() - at.timestamp().rem_euclid(60);
        let same_minute = history
            .minutes
            .back()
            .is_some_and(|m| m.at.timestamp() == minute_start);
        if same_minute {
            if let Some(minute) = history.minutes.back_mut() {
                let buckets: Vec<u64> = minute
                    .buckets
                    .iter()
                    .zip(&second.buckets)
                    .map(|(a, b)| a + b)
                    .collect();
                *minute = interval(
                    minute.at,
                    minute.requests + second.requests,
                    minute.errors + second.errors,
                    buckets,
                );
            }
        } else {
            if history.minutes.len() == history.minute_capacity {
                history.minutes.pop_front();
            }
            let start = DateTime::<Utc>::from_timestamp(minute_start, 0).unwrap_or(at);
            history.minutes.push_back(interval(
                start,
                second.requests,
                second.errors,
                second.buckets.clone(),
            ));
        }
        if history.seconds.len() == history.second_capacity {
            history.seconds.pop_front();
        }
        history.seconds.push_back(second);
    }

    /// The last `last` seconds and every kept minute.
    pub fn history(&self, last: usize) -> (Vec<Interval>, Vec<Interval>) {
        let history = self.history.lock();
        let skip = history.seconds.len().saturating_sub(last);
        (
            history.seconds.iter().skip(skip).cloned().collect(),
            history.minutes.iter().cloned().collect(),
        )
    }
}

fn interval(at: DateTime<Utc>, requests: u64, errors: u64, buckets: Vec<u64>) -> Interval {
    Interval {
        at,
        requests,
        errors,
        p50_ms: quantile_ms(&buckets, 0.5),
        p99_ms: quantile_ms(&buckets, 0.99),
        buckets,
    }
}

/// A quantile estimated from bucket counts, interpolating inside the bucket it falls in.
pub fn quantile_ms(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0.0;
    for (i, count) in buckets.iter().enumerate() {
        let count = *count as f64;
        if seen + count >= rank {
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let upper = LATENCY_BUCKETS.get(i).copied().unwrap_or(lower * 2.0);
            let within = (rank - seen) / count.max(1.0);
            return (lower + (upper - lower) * within) * 1000.0;
        }
        seen += count;
    }
    LATENCY_BUCKETS.last().copied().unwrap_or(0.0) * 1000.0
}

/// Cluster-wide figures: the nodes' last seconds of HTTP traffic added up.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterFigures {
    pub nodes: usize,
    pub healthy_nodes: usize,
    /// Requests answered per second across every web node (average of the last full seconds).
    pub requests_per_second: f64,
    pub errors_per_second: f64,
    /// Latency quantiles of all those requests together.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl ClusterFigures {
    /// Adds up each node's recent seconds; `healthy` counts the nodes that answer and are well.
    pub fn add_up<'a>(nodes: impl IntoIterator<Item = (&'a [Interval], bool)>) -> ClusterFigures {
        let mut buckets: Vec<u64> = Vec::new();
        let (mut requests, mut errors, mut seconds) = (0u64, 0u64, 0usize);
        let (mut count, mut healthy) = (0usize, 0usize);
        for (recent, well) in nodes {
            count += 1;
            healthy += usize::from(well);
            seconds = seconds.max(recent.len());
            for second in recent {
                requests += second.requests;
                errors += second.errors;
                if buckets.len() < second.buckets.len() {
                    buckets.resize(second.buckets.len(), 0);
                }
                for (sum, count) in buckets.iter_mut().zip(&second.buckets) {
                    *sum += count;
                }
            }
        }
        let per_second = |n: u64| {
            if seconds == 0 {
                0.0
            } else {
                n as f64 / seconds as f64
            }
        };
        ClusterFigures {
            nodes: count,
            healthy_nodes: healthy,
            requests_per_second: per_second(requests),
            errors_per_second: per_second(errors),
            p50_ms: quantile_ms(&buckets, 0.5),
            p99_ms: quantile_ms(&buckets, 0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut buckets = vec![0u64; LATENCY_BUCKETS.len() + 1];
        // 100 requests between 0.5 ms and 1 ms (bucket 4: 0.0005..=0.001 s).
        buckets[4] = 100;
        let p50 = quantile_ms(&buckets, 0.5);
        assert!((0.74..=0.76).contains(&p50), "{p50}");
        assert!(quantile_ms(&buckets, 0.99) <= 1.0);
        assert_eq!(quantile_ms(&vec![0; LATENCY_BUCKETS.len() + 1], 0.5), 0.0);
    }

    #[test]
    fn seconds_close_into_history_and_minutes() {
        let hub = StatsHub::new(3, 2);
        let at = DateTime::<Utc>::from_timestamp(1_800_000_020 - 20, 0).unwrap();
        for n in 0..5 {
            hub.record(Duration::from_micros(700), false);
            hub.record(Duration::from_secs(20), true);
            hub.close_second(at + chrono::Duration::seconds(n));
        }
        let (seconds, minutes) = hub.history(10);
        assert_eq!(seconds.len(), 3, "only the window is kept");
        assert!(seconds.iter().all(|s| s.requests == 2 && s.errors == 1));
        assert_eq!(seconds[0].buckets[4], 1);
        assert_eq!(
            *seconds[0].buckets.last().unwrap(),
            1,
            "slower than every bound"
        );
        assert_eq!(minutes.len(), 1);
        assert_eq!(minutes[0].requests, 10);
    }
}
