//! One shutdown for the whole node: a cancellation token every part watches, and one task
//! tracker every background task is spawned on.
//!
//! A part that must stop in a phase of its own (the Redis consumers stop taking work before the
//! roles drain; the heartbeat outlives them) takes a [`Shutdown::child`]: cancelling the node
//! cancels every child, and a child can be cancelled alone. A part that must also wait for its
//! own tasks alone takes a [`Shutdown::phase`]: a child whose tasks a tracker of its own counts
//! as well as the node's. [`Node::shutdown`] keeps the drain order (stop taking, finish and
//! acknowledge, give back, deregister) and ends with [`Shutdown::finish`], which cancels what is
//! left and waits for every tracked task.
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
    /// The node's tracker: every task of every part.
    tracker: TaskTracker,
    /// The trackers of the phases this one belongs to, outermost first; each counts the tasks
    /// spawned in it (and in its phases), to be waited for alone.
    phases: Vec<TaskTracker>,
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
            phases: self.phases.clone(),
        }
    }

    /// A child whose tasks can be waited for alone ([`Shutdown::stop`]); they are tracked by the
    /// node (and by every phase this one belongs to) too.
    pub fn phase(&self) -> Shutdown {
        let mut phase = self.child();
        phase.phases.push(TaskTracker::new());
        phase
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
        self.spawn_draining(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = work => {}
            }
        })
    }

    /// Runs `work` on a tracked task to its end: for work that watches [`Shutdown::cancelled`]
    /// itself, to finish what it holds before it returns.
    pub fn spawn_draining<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.phases.is_empty() {
            return self.tracker.spawn(work);
        }
        let phases: Vec<_> = self.phases.iter().map(TaskTracker::token).collect();
        self.tracker.spawn(async move {
            let _phases = phases;
            work.await
        })
    }

    /// Counts a task spawned elsewhere (a ractor actor's, which ractor spawns itself) among this
    /// phase's: it is waited for with them; stopping the phase does not stop it (stop the actor).
    pub fn watch<T: Send + 'static>(&self, task: JoinHandle<T>) {
        self.spawn_draining(async move {
            let _ = task.await;
        });
    }

    /// Waits `delay`, or less if this shutdown begins; true when it has.
    pub async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.is_cancelled(),
            _ = self.token.cancelled() => true,
        }
    }

    /// The tracker [`Shutdown::stop`] waits on: this phase's, or the node's.
    fn own_tracker(&self) -> &TaskTracker {
        self.phases.last().unwrap_or(&self.tracker)
    }

    /// Cancels this shutdown and waits for its tasks (this phase's, or every task of the node)
    /// to end.
    pub async fn stop(&self) {
        self.token.cancel();
        let tracker = self.own_tracker();
        tracker.close();
        tracker.wait().await;
    }

    /// Waits up to `timeout` for this phase's tasks to end by themselves, then cancels it (tasks
    /// spawned with [`Shutdown::spawn`] still running are dropped); true when all ended in time.
    pub async fn wind_down(&self, timeout: Duration) -> bool {
        let ended = tokio::time::timeout(timeout, self.ended()).await.is_ok();
        self.token.cancel();
        ended
    }

    /// Waits for this phase's tasks (or every task of the node) to end by themselves, without
    /// cancelling anything.
    pub async fn ended(&self) {
        let tracker = self.own_tracker();
        tracker.close();
        tracker.wait().await;
    }

    /// Like [`Shutdown::stop`], waiting no longer than `timeout`.
    pub async fn finish(&self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.stop()).await.is_err() {
            tracing::warn!(
                left = self.own_tracker().len(),
                "background tasks did not stop in time"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_phase_is_stopped_and_waited_for_alone() {
        let node = Shutdown::new();
        let link = node.phase();
        let first = link.phase();
        let last = link.phase();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        let watched = first.clone();
        first.spawn_draining(async move {
            watched.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = done_tx.send(());
        });
        last.spawn_draining({
            let last = last.clone();
            async move { last.cancelled().await }
        });
        first.stop().await;
        // The phase's task finished what it held before `stop` returned; the others run on.
        assert!(done_rx.try_recv().is_ok());
        assert!(!last.is_cancelled() && !link.is_cancelled() && !node.is_cancelled());
        // Stopping the link stops its phases too, and waits for their tasks.
        link.stop().await;
        assert!(last.is_cancelled() && !node.is_cancelled());
        node.finish(Duration::from_secs(1)).await;
        assert!(node.is_cancelled());
    }

    #[tokio::test]
    async fn wind_down_waits_then_drops_what_is_left() {
        let node = Shutdown::new();
        let work = node.phase();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        work.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = done_tx.send(());
        });
        assert!(work.wind_down(Duration::from_secs(1)).await);
        assert!(done_rx.try_recv().is_ok());
        let stuck = node.phase();
        let watched = stuck.clone();
        stuck.spawn(std::future::pending());
        // A task spawned elsewhere, counted by the phase: stopping the phase waits for it.
        stuck.watch(tokio::spawn(async move { watched.cancelled().await }));
        assert!(!stuck.wind_down(Duration::from_millis(20)).await);
        assert!(stuck.is_cancelled() && !node.is_cancelled());
        stuck.stop().await;
    }
}
