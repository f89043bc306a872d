//! Graceful shutdown: one signal that tells every listener to stop accepting
//! and every connection to finish what it has in flight, and a tracker that
//! says when they all have.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Drain {
    signal: Arc<Signal>,
    tracker: TaskTracker,
}

/// Whether draining has started, and who to wake when it does.
///
/// Written here rather than taken from tokio-util's `CancellationToken`:
/// every HTTP connection polls the signal beside its connection on every
/// wakeup, and polling a waiting `CancellationToken` takes a lock each
/// time (1.4% of the proxy's instructions per request, docs/bench.md).
/// This one is an atomic load per poll; the lock is taken only when a
/// connection first waits (or its task's waker changes) and when it ends.
#[derive(Default)]
struct Signal {
    draining: AtomicBool,
    waiting: Mutex<slab::Slab<Waker>>,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining: listeners stop, connections are told to finish.
    pub fn start(&self) {
        self.signal.draining.store(true, Ordering::Release);
        let waiting = std::mem::take(&mut *self.signal.waiting.lock().expect("drain lock"));
        for (_, waker) in waiting {
            waker.wake();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.signal.draining.load(Ordering::Acquire)
    }

    /// Resolves once draining has started.
    pub fn signaled(&self) -> Signaled {
        Signaled { signal: self.signal.clone(), registered: None }
    }

    /// Runs a connection (or a tunnel) that draining must wait for.
    ///
    /// The task holds its future boxed. A connection's future is several
    /// KiB (it has room for TLS, detection and either HTTP version), and
    /// tokio's function that polls a task moves the task's stage by value,
    /// so its stack frame is a few times the future's size: 23 KiB, whose
    /// pages the function's stack probes touched on every poll, several
    /// times per request, all in one L1 set. Boxed, the frame is small; the
    /// cost is one allocation per connection.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(Box::pin(task));
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

/// The future of [`Drain::signaled`].
pub struct Signaled {
    signal: Arc<Signal>,
    /// Where this future's waker is kept, and the waker.
    registered: Option<(usize, Waker)>,
}

impl Future for Signaled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.draining.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self.registered.as_ref().is_some_and(|(_, w)| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let this = &mut *self;
        {
            let mut waiting = this.signal.waiting.lock().expect("drain lock");
            if let Some((key, _)) = this.registered.take() {
                waiting.try_remove(key);
            }
            let key = waiting.insert(cx.waker().clone());
            this.registered = Some((key, cx.waker().clone()));
        }
        // Draining may have started between the first look and the
        // registration, and found no waker to wake.
        match this.signal.draining.load(Ordering::Acquire) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Drop for Signaled {
    fn drop(&mut self) {
        // Once draining, the wakers are gone (and their keys may be reused).
        if let Some((key, _)) = self.registered.take() {
            if !self.signal.draining.load(Ordering::Acquire) {
                self.signal.waiting.lock().expect("drain lock").try_remove(key);
            }
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

    #[tokio::test]
    async fn wakes_every_waiting_connection_and_forgets_finished_ones() {
        let drain = Drain::new();
        let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(drain.signaled())).collect();
        // One that waits and then goes away leaves nothing behind.
        let gone = tokio::spawn(drain.signaled());
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        while drain.signal.waiting.lock().unwrap().len() != 3 {
            tokio::task::yield_now().await;
        }
        drain.start();
        for task in waiting {
            task.await.unwrap();
        }
        assert!(drain.signal.waiting.lock().unwrap().is_empty());
        // After the start, a new wait ends at once.
        drain.signaled().await;
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_grace_period() {
        let drain = Drain::new();
        drain.spawn(std::future::pending());
        drain.start();
        assert_eq!(drain.wait(Duration::from_secs(10)).await, 1);
    }
}
