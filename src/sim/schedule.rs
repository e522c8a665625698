//! Open-loop timing: when each request is meant to be sent, independent of when earlier ones
//! finished, so a stall shows up as latency instead of silently lowering the load (no
//! coordinated omission).

use std::time::Duration;

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

    #[test]
    fn invalid_rates_are_refused() {
        assert!(Schedule::new(0.0).is_none());
        assert!(Schedule::new(-5.0).is_none());
        assert!(Schedule::new(f64::NAN).is_none());
    }
}
