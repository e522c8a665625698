//! The worker pool of the app role: claims due jobs from the store role, runs their handlers
//! with a deadline, and reports each attempt's outcome back to the store.
//!
//! One dispatcher task claims as many jobs as there are free worker slots, in one store write
//! (so no job runs twice at once, whichever process claims it), and hands each to a task. When
//! the store has nothing due it waits for the poll interval, or less when a job is submitted in
//! this process. A second task purges finished jobs older than the retention.
//!
//! Every claim is leased: a job whose worker died (the process was killed) stays `running`
//! until its lease ends, then is claimed again like a due job. Outcomes are fenced by attempt
//! number, so a worker that outlived its lease cannot overwrite a newer attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use super::{backoff, JobRegistry};
use crate::actors::store::{ClaimJobs, FinishJob, PurgeJobs};
use crate::bus::Bus;
use crate::domain::{Job, JobOutcome};
use crate::error::Error;
use crate::shutdown::Shutdown;

/// The pool's settings (`--job-*` flags).
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Jobs run at once by this node.
    pub workers: usize,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Attempts before a job is dead.
    pub max_attempts: u32,
    /// Delay before the first retry (doubles per attempt, with jitter).
    pub retry_base: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// How long done and dead jobs are kept.
    pub retention: Duration,
    /// How long a claimed job may stay running before it is considered abandoned.
    pub lease: Duration,
    /// How often an idle pool asks the store for due jobs.
    pub poll: Duration,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            workers: 4,
            timeout: Duration::from_secs(30),
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

/// The running pool; [`WorkerPool::stop`] ends it (before the app role drains).
pub struct WorkerPool {
    /// A phase of the node's shutdown, stopped first: the dispatcher (claims) and the purge.
    claiming: Shutdown,
    /// A phase of the node's shutdown, wound down second: the running attempts and their
    /// handlers, each on a task of its own.
    attempts: Shutdown,
}

/// What every attempt needs.
struct Shared {
    bus: Bus,
    registry: JobRegistry,
    config: JobConfig,
    /// Where attempts and their handlers run.
    attempts: Shutdown,
}

impl WorkerPool {
    /// Starts claiming; `wake` is notified when a job is queued in this process.
    pub fn start(
        bus: Bus,
        registry: JobRegistry,
        config: JobConfig,
        wake: Arc<Notify>,
        shutdown: &Shutdown,
    ) -> WorkerPool {
        if config.lease <= config.timeout {
            tracing::warn!(
                lease = ?config.lease,
                timeout = ?config.timeout,
                "--job-lease is not longer than --job-timeout: a slow attempt may be run twice at once"
            );
        }
        let slots = Arc::new(Semaphore::new(config.workers.clamp(1, 10_000)));
        let claiming = shutdown.phase();
        let attempts = shutdown.phase();
        let shared = Arc::new(Shared {
            bus,
            registry,
            config,
            attempts: attempts.clone(),
        });
        claiming.spawn_draining(dispatch(
            shared.clone(),
            slots,
            wake.clone(),
            claiming.clone(),
        ));
        claiming.spawn_draining(purge(shared, claiming.clone()));
        WorkerPool { claiming, attempts }
    }

    /// Stops claiming and waits up to `timeout` for running attempts to report. Attempts still
    /// running then are dropped unreported: they are left to their leases.
    pub async fn stop(self, timeout: Duration) {
        self.claiming.stop().await;
        if !self.attempts.wind_down(timeout).await {
            tracing::warn!("job attempts still running at shutdown are left to their leases");
        }
    }
}

/// Waits for `delay`, a wake-up or the stop signal; returns false on stop.
async fn idle(delay: Duration, wake: &Notify, stopped: &Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => !stopped.is_cancelled(),
        _ = wake.notified() => !stopped.is_cancelled(),
        _ = stopped.cancelled() => false,
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    wake: Arc<Notify>,
    stopped: Shutdown,
) {
    let mut failures: u32 = 0;
    while !stopped.is_cancelled() {
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped.cancelled() => return,
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let wanted = permits.len();
        let claimed = shared
            .bus
            .call(ClaimJobs::new(shared.config.lease, wanted as u32))
            .await;
        match claimed {
            Ok(jobs) => {
                failures = 0;
                let drained = jobs.len() < wanted;
                for (job, permit) in jobs.into_iter().zip(permits.drain(..)) {
                    let shared = shared.clone();
                    shared.attempts.clone().spawn(async move {
                        attempt(&shared, job).await;
                        drop(permit);
                    });
                }
                drop(permits);
                if drained && !idle(shared.config.poll, &wake, &stopped).await {
                    return;
                }
            }
            Err(e) => {
                drop(permits);
                failures = failures.saturating_add(1);
                // The store role may be starting, or in another process that is down: back off
                // rather than flood the log and the bus.
                let delay = backoff(shared.config.poll, Duration::from_secs(5), failures);
                tracing::warn!(error = %e, ?delay, "cannot claim jobs");
                if !idle(delay, &wake, &stopped).await {
                    return;
                }
            }
        }
    }
}

/// Runs one claimed attempt and reports its outcome.
async fn attempt(shared: &Shared, job: Job) {
    let config = &shared.config;
    let kind = job.kind.clone();
    let started = Instant::now();
    metrics::gauge!("gorgon_jobs_running").increment(1.0);
    let result = if job.attempts > config.max_attempts {
        // Claimed again after its last attempt's lease ended: that worker died with it.
        Err("abandoned: the lease of its last attempt ended before it reported".to_string())
    } else {
        run_handler(shared, &job).await
    };
    metrics::gauge!("gorgon_jobs_running").decrement(1.0);
    metrics::histogram!("gorgon_job_duration_seconds", "kind" => kind.clone())
        .record(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(value) => JobOutcome::Done(value),
        Err(error) if job.attempts >= config.max_attempts => JobOutcome::Dead { error },
        Err(error) => {
            let delay = backoff(config.retry_base, config.retry_max, job.attempts);
            let run_after = shift(delay, true);
            JobOutcome::Failed { error, run_after }
        }
    };
    let outcome_name = outcome.state().name();
    match shared
        .bus
        .call(FinishJob {
            id: job.id,
            attempt: job.attempts,
            outcome,
        })
        .await
    {
        Ok(_) => {
            metrics::counter!("gorgon_jobs_total", "kind" => kind, "outcome" => outcome_name)
                .increment(1);
        }
        Err(Error::Conflict(reason)) => {
            tracing::warn!(job = %job.id, %reason, "job outcome dropped: its lease had ended");
        }
        Err(e) => {
            // The job stays running; its lease ends and it is claimed again.
            tracing::warn!(job = %job.id, error = %e, "cannot record a job's outcome");
        }
    }
}

async fn run_handler(shared: &Shared, job: &Job) -> Result<serde_json::Value, String> {
    let handler = shared.registry.get(&job.kind).ok_or_else(|| {
        format!(
            "no handler for kind {:?} on this node (known: {})",
            job.kind,
            shared.registry.kinds().join(", ")
        )
    })?;
    let timeout = shared.config.timeout;
    let payload = job.payload.clone();
    // On its own task, so that a panicking handler fails its attempt instead of the worker;
    // ended with its attempt (when the pool gives up on it at shutdown).
    let run = AbortOnDropHandle::new(shared.attempts.spawn_draining(async move {
        tokio::time::timeout(timeout, async { handler.run(&payload).await }).await
    }));
    match run.await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(e.0),
        Ok(Err(_)) => Err(format!("timed out after {timeout:?}")),
        Err(e) => Err(format!("the handler panicked: {e}")),
    }
}

/// Now moved `by` into the future (or the past), saturating rather than overflowing.
fn shift(by: Duration, forward: bool) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::days(365 * 100));
    let moved = if forward {
        now.checked_add_signed(by)
    } else {
        now.checked_sub_signed(by)
    };
    moved.unwrap_or(now)
}

/// Deletes done and dead jobs older than the retention, periodically.
async fn purge(shared: Arc<Shared>, stopped: Shutdown) {
    let retention = shared.config.retention;
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let never = Notify::new();
    while idle(every, &never, &stopped).await {
        let before = shift(retention, false);
        match shared.bus.call(PurgeJobs { before }).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "finished jobs purged"),
            Err(e) => tracing::debug!(error = %e, "cannot purge jobs"),
        }
    }
}
