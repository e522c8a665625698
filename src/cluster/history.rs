//! The cluster's traffic, second by second: every node's per-second figures (its own, and each
//! peer's as its heartbeat brings them) added up, so the stats role and the dashboard can show the
//! whole cluster — a web-only node's requests included — and not only the node they run on.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::telemetry::history::{quantile_ms, Interval};

/// Seconds of cluster history kept.
const KEEP_SECONDS: i64 = 3600;

#[derive(Default)]
pub struct ClusterHistory {
    /// Second (Unix time) → node → that node's figures for the second.
    seconds: Mutex<BTreeMap<i64, HashMap<String, Interval>>>,
}

impl ClusterHistory {
    /// Records a node's recent seconds (a second seen again replaces what was recorded).
    pub fn record(&self, node: &str, recent: &[Interval]) {
        let mut seconds = self.seconds.lock();
        for second in recent {
            seconds
                .entry(second.at.timestamp())
                .or_default()
                .insert(node.to_string(), second.clone());
        }
        if let Some(&newest) = seconds.keys().next_back() {
            let oldest_kept = newest - KEEP_SECONDS;
            seconds.retain(|&at, _| at >= oldest_kept);
        }
    }

    /// The last `last` complete seconds, summed over nodes, oldest first. The newest two seconds
    /// are left out: some nodes' figures for them may not have arrived yet.
    pub fn series(&self, last: usize, now: DateTime<Utc>) -> Vec<Interval> {
        let complete_before = now.timestamp() - 2;
        let seconds = self.seconds.lock();
        let mut out: Vec<Interval> = seconds
            .range(..complete_before)
            .rev()
            .take(last)
            .map(|(&at, nodes)| sum(at, nodes.values()))
            .collect();
        out.reverse();
        out
    }
}

fn sum<'a>(at: i64, nodes: impl Iterator<Item = &'a Interval>) -> Interval {
    let (mut requests, mut errors, mut buckets) = (0, 0, Vec::<u64>::new());
    for node in nodes {
        requests += node.requests;
        errors += node.errors;
        if buckets.len() < node.buckets.len() {
            buckets.resize(node.buckets.len(), 0);
        }
        for (total, count) in buckets.iter_mut().zip(&node.buckets) {
            *total += count;
        }
    }
    Interval {
        at: DateTime::from_timestamp(at, 0).unwrap_or_default(),
        requests,
        errors,
        p50_ms: quantile_ms(&buckets, 0.5),
        p99_ms: quantile_ms(&buckets, 0.99),
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(at: i64, requests: u64, bucket: usize) -> Interval {
        let mut buckets = vec![0; 8];
        buckets[bucket] = requests;
        Interval {
            at: DateTime::from_timestamp(at, 250_000_000).expect("time"),
            requests,
            errors: 0,
            buckets,
            p50_ms: 0.0,
            p99_ms: 0.0,
        }
    }

    #[test]
    fn nodes_add_up_per_second_and_a_repeated_second_counts_once() {
        let history = ClusterHistory::default();
        let now = DateTime::from_timestamp(1_000, 0).expect("time");
        history.record("a", &[second(990, 10, 1), second(991, 20, 1)]);
        history.record("b", &[second(991, 5, 3)]);
        // The next heartbeat repeats a's last seconds: replaced, not added.
        history.record("a", &[second(991, 20, 1), second(992, 30, 1)]);
        // Too recent to be complete.
        history.record("b", &[second(999, 7, 1)]);
        let series = history.series(10, now);
        let totals: Vec<(i64, u64)> = series
            .iter()
            .map(|s| (s.at.timestamp(), s.requests))
            .collect();
        assert_eq!(totals, [(990, 10), (991, 25), (992, 30)]);
        assert_eq!(series[1].buckets[1], 20);
        assert_eq!(series[1].buckets[3], 5);
        assert_eq!(history.series(2, now).len(), 2, "only the last ones");
    }
}
