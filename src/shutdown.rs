//! One shutdown for the whole node: a cancellation token every part watches, and one task
//! tracker every background task is spawned on.
//!
//! A part that must stop in a phase of its own (the Redis consumers stop taking work before the
//! roles drain; the heartbeat outlives them) takes a [`Shutdown::child`]: cancelling the node
//! cancels every child, and a child can be cancelled alone. [`Node::shutdown`] keeps the drain
//! order (stop taking, finish and acknowledge, give back, deregister) and ends with
//! [`Shutdown::finish`], which cancels what is left and waits for every tracked task.
//!
//! [`Node::shutdown`]: crate::startup::Node::shutdown

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A phase of its own: cancelled with this one, or alone; its tasks are tracked here too.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once this shutdown (or the node's) has begun.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Runs `work` on a tracked task until it ends or this shutdown begins, whichever is first.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = work => {}
            }
        })
    }

    /// Runs `work` on a tracked task to its end: for work that watches [`Shutdown::cancelled`]
    /// itself, to finish what it holds before it returns.
    pub fn spawn_draining<F>(&self, work: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Waits `delay`, or less if this shutdown begins; true when it has.
    pub async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.is_cancelled(),
            _ = self.token.cancelled() => true,
        }
    }

    /// Cancels everything and waits (up to `timeout`) for every tracked task to end.
    pub async fn finish(&self, timeout: Duration) {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tracker.len(),
                "background tasks did not stop in time"
            );
        }
    }
}
