//! Bounded pools of read connections whose queries run on tokio's blocking threads.
//!
//! Why: a search or a deep page can take hundreds of milliseconds. Run on the calling task, it
//! held a runtime worker thread and a read connection that every cheap read also needed, so two
//! clients looping deep searches raised other reads' p50 from 3.8 to 475 ms and eight made every
//! read time out. A pool owns its connections and one permit per connection: at most that many
//! of its queries run at once, further ones wait without holding a thread, and the cheap reads
//! use connections of their own, so they never queue behind expensive ones.
//!
//! A pool may give its queries a time budget (waiting included): past it SQLite's progress
//! handler interrupts the statement and the caller gets `SearchTimeout`, a clean 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// SQLite virtual-machine steps between two looks at the clock: a few microseconds of work.
const PROGRESS_STEPS: std::os::raw::c_int = 1000;

pub(super) struct ReadPool {
    /// For metrics: `pages` or `heavy`.
    name: &'static str,
    connections: Vec<Mutex<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    /// A pool over `connections` (at least one).
    pub fn new(name: &'static str, connections: Vec<Connection>) -> ReadPool {
        let permits = Arc::new(Semaphore::new(connections.len()));
        ReadPool {
            name,
            connections: connections.into_iter().map(Mutex::new).collect(),
            permits,
        }
    }

    /// Runs `f` on a connection of the pool, on a blocking thread. With a `budget`, waiting for
    /// a connection and running together take at most about that long.
    pub async fn run<T, F>(self: &Arc<Self>, budget: Option<Duration>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let started = Instant::now();
        let acquire = self.permits.clone().acquire_owned();
        let permit = match budget {
            Some(budget) => tokio::time::timeout(budget, acquire)
                .await
                .map_err(|_| over_budget(budget))?,
            None => acquire.await,
        }
        .map_err(|_| Error::Unavailable("the store is closed".into()))?;
        metrics::histogram!("gorgon_store_read_wait_seconds", "pool" => self.name)
            .record(started.elapsed().as_secs_f64());
        let pool = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.free_connection();
            let Some(budget) = budget else {
                return f(&conn);
            };
            let deadline = started + budget;
            conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline));
            let result = f(&conn);
            conn.progress_handler(0, None::<fn() -> bool>);
            result.map_err(|e| match e {
                Error::SearchTimeout(_) => over_budget(budget),
                other => other,
            })
        });
        task.await
            .map_err(|e| Error::Internal(format!("a store read failed: {e}")))?
    }

    /// A connection nobody uses: the caller holds one of as many permits as there are
    /// connections, so one is free.
    fn free_connection(&self) -> MutexGuard<'_, Connection> {
        self.connections
            .iter()
            .find_map(|c| c.try_lock())
            .unwrap_or_else(|| self.connections[0].lock())
    }
}

fn over_budget(budget: Duration) -> Error {
    metrics::counter!("gorgon_store_search_timeouts_total").increment(1);
    Error::SearchTimeout(format!(
        "the search ran past its time budget of {budget:?} (--search-timeout) and was stopped; \
         use fewer common words, or page with `after` (the `next` of the previous page) \
         instead of a deep `offset`"
    ))
}
