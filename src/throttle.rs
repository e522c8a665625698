//! Keyed attempt counters with bounded memory: "at most `limit` per `window` per key".
//!
//! Each key gets a fixed window that opens at its first attempt. Keys live in a cache with a
//! capacity and a time to live of one window, evicted least-recently-used first, so an attacker
//! who sprays distinct keys (addresses, emails) costs a bounded amount of memory and never
//! pushes out a key that is being hammered right now.

use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use parking_lot::Mutex;

/// When the window of a key opened and how many attempts it has seen.
#[derive(Debug)]
struct Window {
    opened: Instant,
    count: u32,
}

/// Counts attempts per key; see the module docs.
#[derive(Clone)]
pub struct Throttle<K: Hash + Eq + Send + Sync + 'static> {
    windows: Cache<K, Arc<Mutex<Window>>>,
    limit: u32,
    window: Duration,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Throttle<K> {
    /// At most `limit` attempts per `window` per key, remembering at most `capacity` keys.
    /// A `limit` of 0 turns the throttle off.
    pub fn new(limit: u32, window: Duration, capacity: u64) -> Self {
        let window = window.max(Duration::from_millis(1));
        Throttle {
            windows: Cache::builder()
                .max_capacity(capacity.max(1))
                .time_to_live(window)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            limit,
            window,
        }
    }

    fn window_of(&self, key: &K) -> Arc<Mutex<Window>> {
        self.windows.get_with_by_ref(key, || {
            Arc::new(Mutex::new(Window {
                opened: Instant::now(),
                count: 0,
            }))
        })
    }

    /// Counts one attempt for `key`. `Err(wait)` when the key is over its limit (the attempt is
    /// not counted then), with how long until its window closes.
    pub fn hit(&self, key: &K) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let window = self.window_of(key);
        let mut window = window.lock();
        self.roll(&mut window);
        if window.count >= self.limit {
            return Err(self.wait(&window));
        }
        window.count += 1;
        Ok(())
    }

    /// Whether `key` is over its limit, without counting an attempt.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        match self.windows.get(key) {
            Some(window) => {
                let mut window = window.lock();
                self.roll(&mut window);
                if window.count >= self.limit {
                    Err(self.wait(&window))
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Takes back one attempt counted for `key` (an attempt counted up front that turned out
    /// not to count, such as a correct password).
    pub fn refund(&self, key: &K) {
        if let Some(window) = self.windows.get(key) {
            let mut window = window.lock();
            window.count = window.count.saturating_sub(1);
        }
    }

    /// Opens a fresh window when the old one is over (the cache may keep an entry a little past
    /// its time to live).
    fn roll(&self, window: &mut Window) {
        if window.opened.elapsed() >= self.window {
            window.opened = Instant::now();
            window.count = 0;
        }
    }

    fn wait(&self, window: &Window) -> Duration {
        self.window.saturating_sub(window.opened.elapsed())
    }

    /// Keys remembered right now (approximate; for tests and metrics).
    pub fn keys(&self) -> u64 {
        self.windows.run_pending_tasks();
        self.windows.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_reports_the_wait() {
        let throttle = Throttle::new(2, Duration::from_secs(60), 100);
        assert!(throttle.hit(&"a").is_ok());
        assert!(throttle.check(&"a").is_ok());
        assert!(throttle.hit(&"a").is_ok());
        let wait = throttle.hit(&"a").expect_err("third attempt refused");
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(55));
        assert!(throttle.check(&"a").is_err());
        assert!(throttle.hit(&"b").is_ok(), "another key is not affected");
    }

    #[test]
    fn a_window_closes() {
        let throttle = Throttle::new(1, Duration::from_millis(50), 100);
        assert!(throttle.hit(&1).is_ok());
        assert!(throttle.hit(&1).is_err());
        std::thread::sleep(Duration::from_millis(80));
        assert!(throttle.hit(&1).is_ok());
    }

    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let throttle = Throttle::new(5, Duration::from_secs(60), 1_000);
        for n in 0..20_000u32 {
            let _ = throttle.hit(&n);
        }
        assert!(throttle.keys() <= 1_000, "{} keys kept", throttle.keys());
        // The most recent key is still counted.
        for _ in 0..4 {
            assert!(throttle.hit(&19_999).is_ok());
        }
        assert!(throttle.hit(&19_999).is_err());
    }

    #[test]
    fn zero_turns_it_off() {
        let throttle = Throttle::new(0, Duration::from_secs(60), 10);
        for _ in 0..100 {
            assert!(throttle.hit(&"x").is_ok());
        }
    }
}
