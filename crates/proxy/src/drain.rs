//! Graceful shutdown: one signal that tells every listener to stop accepting
//! and every connection to finish what it has in flight, and a tracker that
//! says when they all have.

use std::{future::Future, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining: listeners stop, connections are told to finish.
    pub fn start(&self) {
        self.signal.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Resolves once draining has started.
    pub async fn signaled(&self) {
        self.signal.cancelled().await
    }

    /// Runs a connection (or a tunnel) that draining must wait for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Waits for every tracked task to finish, or for `grace` to pass.
    /// Returns how many tasks were still running when time ran out.
    pub async fn wait(&self, grace: Duration) -> usize {
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_within_the_grace_period() {
        let drain = Drain::new();
        let d = drain.clone();
        drain.spawn(async move {
            d.signaled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        drain.start();
        assert_eq!(drain.wait(Duration::from_secs(10)).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_grace_period() {
        let drain = Drain::new();
        drain.spawn(std::future::pending());
        drain.start();
        assert_eq!(drain.wait(Duration::from_secs(10)).await, 1);
    }
}
