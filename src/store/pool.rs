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

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::{oneshot, Semaphore};

use super::sqlite::StoreError;
use crate::error::{Error, Result};

/// SQLite virtual-machine steps between two looks at the clock: a few microseconds of work.
const PROGRESS_STEPS: std::os::raw::c_int = 1000;

/// One query, run by a pool thread on its connection.
type Job = Box<dyn FnOnce(&Connection) + Send>;

pub(super) struct ReadPool {
    /// For metrics: `pages` or `heavy`.
    name: &'static str,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    /// A pool with one thread per connection (at least one). Its threads run at `nice` (Linux:
    /// 0 is normal, 19 the lowest), so on a busy machine the scheduler gives expensive queries
    /// only what the cheap work leaves: a core shared with HTTP workers and point reads stays
    /// theirs first.
    pub fn new(name: &'static str, connections: Vec<Connection>, nice: i32) -> Result<ReadPool> {
        let permits = Arc::new(Semaphore::new(connections.len().max(1)));
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for (n, conn) in connections.into_iter().enumerate() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("gorgon-store-{name}-{n}"))
                .spawn(move || {
                    lower_priority(nice);
                    loop {
                        // Holds the lock only while waiting for the next job.
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(&conn),
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| StoreError::Thread("a store reader", e))?;
        }
        Ok(ReadPool {
            name,
            jobs: Mutex::new(Some(tx)),
            permits,
        })
    }

    /// Runs `f` on a connection of the pool, on one of its threads. With a `budget`, waiting for
    /// a connection and running together take at most about that long.
    pub async fn run<T, F>(self: &Arc<Self>, budget: Option<Duration>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.run_with(budget, true, f).await
    }

    /// Runs `f` for at most `slice` (waiting included); `Ok(None)` when it needed longer and was
    /// stopped (not counted as a timeout: the caller runs it again elsewhere).
    pub async fn try_within<T, F>(self: &Arc<Self>, slice: Duration, f: F) -> Result<Option<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        match self.run_with(Some(slice), false, f).await {
            Ok(value) => Ok(Some(value)),
            Err(Error::SearchTimeout(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn run_with<T, F>(
        self: &Arc<Self>,
        budget: Option<Duration>,
        count_timeout: bool,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let over = move |budget: Duration| {
            if count_timeout {
                over_budget(budget)
            } else {
                Error::SearchTimeout(String::new())
            }
        };
        let started = Instant::now();
        let acquire = self.permits.clone().acquire_owned();
        let permit = match budget {
            Some(budget) => tokio::time::timeout(budget, acquire)
                .await
                .map_err(|_| over(budget))?,
            None => acquire.await,
        }
        .map_err(|_| Error::Unavailable("the store is closed".into()))?;
        metrics::histogram!("gorgon_store_read_wait_seconds", "pool" => self.name)
            .record(started.elapsed().as_secs_f64());
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let _permit = permit;
            let result = match budget {
                None => f(conn),
                Some(budget) => {
                    let deadline = started + budget;
                    conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline));
                    let result = f(conn);
                    conn.progress_handler(0, None::<fn() -> bool>);
                    result.map_err(|e| match e {
                        Error::SearchTimeout(_) => over(budget),
                        other => other,
                    })
                }
            };
            let _ = reply.send(result);
        });
        let sent = match self.jobs.lock().as_ref() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        answer
            .await
            .map_err(|_| Error::from(StoreError::Gone("a store read was dropped")))?
    }

    /// Lets the pool's threads finish the queries they have and exit.
    pub fn close(&self) {
        self.jobs.lock().take();
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Lowers the calling thread's scheduling priority (an unprivileged process may lower, never
/// raise, it: which is why these threads are the pool's own and never serve other work).
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
        // this thread's nice value.
        let done =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if done != 0 {
            tracing::debug!(nice, "could not lower a store reader's priority");
        }
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
