//! Open-loop timing: when each request is meant to be sent, independent of when earlier ones
//! finished, so a stall shows up as latency instead of silently lowering the load (no
//! coordinated omission).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// The intended send times of a fixed-rate schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    rate: f64,
}

impl Schedule {
    /// `rate` requests per second; must be positive.
    pub fn new(rate: f64) -> Option<Self> {
        (rate.is_finite() && rate > 0.0).then_some(Schedule { rate })
    }

    /// Offset from the start at which request `n` (from 0) is due.
    pub fn due(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / self.rate)
    }

    /// How many requests are due by `elapsed` (those with `due(n) <= elapsed`).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1
    }

    /// Requests in a run of `length`.
    pub fn count(&self, length: Duration) -> u64 {
        (length.as_secs_f64() * self.rate).round() as u64
    }
}

/// The pacer wakes at most this often. Waking for every request at 10,000/s made the server
/// handle them one wake-up at a time, and the extra switching on 2 cores raised the reads' p99
/// (5.4-5.7 ms against 4.2-4.3 ms at 250 us, two runs each; 500 us: 6.8 ms).
const PACER_TICK: Duration = Duration::from_micros(250);

/// Announces, from a thread of its own, how many requests of `schedule` are due, each time one
/// more is, until `total`: the receiver gets the running count.
///
/// Why a thread: tokio's timer has a 1 ms granularity, so at 10,000 requests/s a task sleeping
/// until each due time sent them in bursts of 10, up to 1 ms late. Latency is rightly charged
/// from each intended time, so that lateness, the load generator's and not the server's, was
/// reported as the server's (the median of reads at 10,000/s read 1.5 ms; 0.55 ms now). A
/// thread's sleep is precise to tens of microseconds.
pub fn pace(schedule: Schedule, total: u64, start: Instant) -> mpsc::UnboundedReceiver<u64> {
    let (due_tx, due_rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("gorgon-sim-pacer".into())
        .spawn(move || {
            let mut announced = 0;
            while announced < total {
                let due = schedule.due_by(start.elapsed()).min(total);
                if due > announced {
                    announced = due;
                    if due_tx.send(due).is_err() {
                        return;
                    }
                    continue;
                }
                let next = start + schedule.due(announced);
                std::thread::sleep(
                    next.saturating_duration_since(Instant::now())
                        .max(PACER_TICK),
                );
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the open-loop pacer thread");
    }
    due_rx
}

/// Latency as the user saw it: from the intended send time, not the actual one.
pub fn corrected_latency(intended: Duration, completed: Duration) -> Duration {
    completed.saturating_sub(intended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_evenly_spaced() {
        let s = Schedule::new(1000.0).unwrap();
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_millis(1));
        assert_eq!(s.due(2500), Duration::from_millis(2500));
    }

    #[test]
    fn due_by_counts_requests_whose_time_has_come() {
        let s = Schedule::new(10.0).unwrap();
        assert_eq!(s.due_by(Duration::ZERO), 1, "request 0 is due at once");
        assert_eq!(s.due_by(Duration::from_millis(99)), 1);
        assert_eq!(s.due_by(Duration::from_millis(100)), 2);
        assert_eq!(s.due_by(Duration::from_secs(1)), 11);
        let fast = Schedule::new(10_000.0).unwrap();
        assert_eq!(fast.count(Duration::from_secs(3)), 30_000);
    }

    #[test]
    fn a_stall_is_charged_to_every_request_it_delayed() {
        // At 1000/s, a 50 ms stall starting at t=0 delays requests 0..50; each one's latency is
        // measured from its own intended time, so request 0 waited 50 ms, request 49 about 1 ms.
        let s = Schedule::new(1000.0).unwrap();
        let released = Duration::from_millis(50);
        let latencies: Vec<Duration> = (0..50)
            .map(|n| corrected_latency(s.due(n), released))
            .collect();
        assert_eq!(latencies[0], Duration::from_millis(50));
        assert_eq!(latencies[49], Duration::from_millis(1));
        assert!(latencies.windows(2).all(|w| w[0] > w[1]));
    }

    #[tokio::test]
    async fn the_pacer_announces_every_request_on_time() {
        // 2,000/s for 0.25 s: 500 requests, the last due at 249.5 ms.
        let schedule = Schedule::new(2000.0).unwrap();
        let start = Instant::now();
        let mut due = pace(schedule, 500, start);
        let mut last = 0;
        let mut worst_lateness = Duration::ZERO;
        while let Some(count) = due.recv().await {
            assert!(count > last, "counts only grow");
            let lateness = corrected_latency(schedule.due(count - 1), start.elapsed());
            worst_lateness = worst_lateness.max(lateness);
            last = count;
        }
        assert_eq!(
            last, 500,
            "every request announced, then the channel closes"
        );
        // Lateness is the pacer's sleep precision plus a wake-up, tens of microseconds on an idle
        // machine; the bound is loose for a loaded CI machine, and still well under what tokio's
        // 1 ms timer gives under the same load.
        assert!(
            worst_lateness < Duration::from_millis(50),
            "announced {worst_lateness:?} late"
        );
        assert!(
            start.elapsed() >= schedule.due(499),
            "nothing is announced early"
        );
    }

    #[test]
    fn invalid_rates_are_refused() {
        assert!(Schedule::new(0.0).is_none());
        assert!(Schedule::new(-5.0).is_none());
        assert!(Schedule::new(f64::NAN).is_none());
    }
}
