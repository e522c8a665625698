//! Background jobs: the handler trait applications implement, the registry of kinds, the
//! built-in `hash` job, and the worker pool the app role runs.
//!
//! A job is submitted over HTTP (`POST /api/v1/jobs`), stored durably by the store role, and
//! claimed by a worker (`worker.rs`) that runs the handler registered for its kind. Handlers must
//! tolerate running more than once for a job: a worker that dies mid-attempt leaves the job to
//! be claimed again once its lease ends.
//!
//! Registering a kind:
//!
//! ```no_run
//! use gorgon::jobs::{JobError, JobHandler, JobRegistry};
//!
//! struct Shout;
//!
//! #[async_trait::async_trait]
//! impl JobHandler for Shout {
//!     fn kind(&self) -> &'static str {
//!         "shout"
//!     }
//!     async fn run(&self, payload: &serde_json::Value) -> Result<serde_json::Value, JobError> {
//!         let text = payload["text"].as_str().ok_or_else(|| JobError::new("text missing"))?;
//!         Ok(serde_json::json!({ "text": text.to_uppercase() }))
//!     }
//! }
//!
//! let registry = JobRegistry::default().register(Shout);
//! // gorgon::startup::Node::start_with(args, registry)
//! ```

pub mod hash;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use worker::{JobConfig, WorkerPool};

/// Why an attempt failed; stored as the job's `error` and retried with backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub String);

impl JobError {
    pub fn new(message: impl Into<String>) -> Self {
        JobError(message.into())
    }
}

/// One kind of job. `run` gets the payload as submitted (always a JSON object) and returns the
/// result stored with the job.
#[async_trait::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// The name clients submit (`{"kind": ...}`).
    fn kind(&self) -> &'static str;
    async fn run(&self, payload: &serde_json::Value) -> Result<serde_json::Value, JobError>;
}

/// The job kinds a node knows, by name. `default()` holds the built-in `hash` job.
#[derive(Clone)]
pub struct JobRegistry {
    handlers: BTreeMap<&'static str, Arc<dyn JobHandler>>,
}

impl Default for JobRegistry {
    fn default() -> Self {
        JobRegistry {
            handlers: BTreeMap::new(),
        }
        .register(hash::HashJob::default())
    }
}

impl JobRegistry {
    /// Adds (or replaces) the handler of `handler.kind()`.
    pub fn register(mut self, handler: impl JobHandler) -> Self {
        self.handlers.insert(handler.kind(), Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(kind).cloned()
    }

    /// Known kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }
}

impl std::fmt::Debug for JobRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}

/// The delay before retrying after failed attempt number `attempt` (1-based): `base` doubling
/// per attempt, capped at `max`, then scaled by a random factor in [0.5, 1] so jobs that failed
/// together do not all come back together.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let first = backoff(base, max, 1);
            assert!(first >= Duration::from_millis(50) && first <= base);
            let third = backoff(base, max, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(base, max, 60) <= max);
        }
    }

    #[test]
    fn the_default_registry_knows_hash() {
        assert_eq!(JobRegistry::default().kinds(), vec!["hash"]);
    }
}
