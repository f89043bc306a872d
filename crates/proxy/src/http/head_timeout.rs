//! How long an HTTP/1 client may take to send its next request head before
//! weft-proxy closes the connection: idle keep-alive connections and
//! clients that send a head a byte at a time (slowloris) are let go.
//!
//! hyper has this (`header_read_timeout`), but it boxes a new timer for
//! every request and enters it in tokio's timer wheel each time a
//! keep-alive connection goes back to waiting: 1,850 of weft-proxy's
//! 38,600 instructions per plaintext request by callgrind (docs/bench.md).
//! Here a connection has one timer, which fires at most once per timeout
//! and then looks at what the connection did meanwhile; a request costs
//! two atomic counts and a clock read when its response ends. The timer is
//! polled only when it has fired (see [`OnWake`]), not each time the
//! connection's task wakes.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};
use tokio::time::Instant;

/// One HTTP/1 server connection's wait for its next request head.
pub struct HeadTimeout {
    timeout: Duration,
    activity: Arc<Activity>,
}

/// What the connection's requests tell its timer.
pub struct Activity {
    start: Instant,
    /// Requests whose response has not ended.
    busy: AtomicUsize,
    /// When the last response ended, in milliseconds after `start`.
    idle_since_ms: AtomicU64,
}

/// Marks a request as in progress until its response ends (dropped with
/// the response body, once hyper has written it, or with the request's
/// future if the connection goes first).
pub struct Busy(Arc<Activity>);

// === impl HeadTimeout ===

impl HeadTimeout {
    /// `None` when `timeout` is zero: connections wait for heads forever.
    pub fn new(timeout: Duration) -> Option<Self> {
        if timeout.is_zero() {
            return None;
        }
        let activity = Arc::new(Activity {
            start: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        });
        Some(Self { timeout, activity })
    }

    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Resolves once the connection has been without a request in
    /// progress for the whole timeout: since it was accepted, or since its
    /// last response ended. Like hyper's, the wait does not run while a
    /// request is served, however long its response takes.
    pub fn expired(&self) -> impl Future<Output = ()> + '_ {
        OnWake::new(self.wait())
    }

    async fn wait(&self) {
        let mut deadline = self.activity.start + self.timeout;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            deadline = match self.activity.idle_since() {
                None => now + self.timeout,
                Some(since) => since + self.timeout,
            };
            if deadline <= now {
                return;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Polls its future only once the future's own waker has fired. A
    /// connection's task polls every branch of its `select!` each time it
    /// wakes, several times per request; polling a waiting tokio `Sleep`
    /// costs about 190 instructions (its budget, state and waker checks,
    /// 570 per request by callgrind), this a waker compare and an atomic swap.
    struct OnWake<F> {
        #[pin]
        future: F,
        flag: Arc<WakeFlag>,
        waker: Waker,
        // The task's waker `flag` wakes, as last registered.
        parent: Option<Waker>,
    }
}

/// Set when an [`OnWake`]'s future is woken; wakes the task polling it.
struct WakeFlag {
    woken: AtomicBool,
    parent: Mutex<Option<Waker>>,
}

impl<F: Future> OnWake<F> {
    fn new(future: F) -> Self {
        let flag = Arc::new(WakeFlag { woken: AtomicBool::new(true), parent: Mutex::new(None) });
        Self { future, waker: Waker::from(flag.clone()), flag, parent: None }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.parent.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // First poll, or polled from another task: the future may have
            // been woken for the old one, so it is polled now.
            *this.flag.parent.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            *this.parent = Some(cx.waker().clone());
            this.flag.woken.store(true, Ordering::Release);
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.future.poll(&mut Context::from_waker(this.waker))
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(parent) = &*self.parent.lock().unwrap_or_else(PoisonError::into_inner) {
            parent.wake_by_ref();
        }
    }
}

// === impl Activity ===

impl Activity {
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection last went idle; `None` while a request is in
    /// progress.
    fn idle_since(&self) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        // The time first, then the count: a timer that sees no request in
        // progress also sees when the last one ended.
        let ms = u64::try_from(activity.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(ms, Ordering::Release);
        activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_timeout() {
        let t = HeadTimeout::new(Duration::from_secs(60)).unwrap();
        let start = Instant::now();
        t.expired().await;
        assert!(start.elapsed() >= Duration::from_secs(60), "{:?}", start.elapsed());
        assert!(HeadTimeout::new(Duration::ZERO).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_counts_from_the_end_of_the_last_response() {
        let t = HeadTimeout::new(Duration::from_secs(60)).unwrap();
        let busy = t.activity().busy();
        let start = Instant::now();
        let respond = async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            drop(busy);
        };
        tokio::join!(t.expired(), respond);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(160) && waited < Duration::from_secs(161), "{waited:?}");
    }

    /// A future that counts its polls and keeps its last waker.
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    /// A task's waker, counting its wakes.
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn on_wake_polls_its_future_only_once_that_future_was_woken() {
        let (polls, waker, ready) =
            (Arc::new(AtomicUsize::new(0)), Arc::default(), Arc::new(AtomicBool::new(false)));
        let probe = Probe { polls: polls.clone(), waker: Arc::clone(&waker), ready: ready.clone() };
        let mut on_wake = std::pin::pin!(OnWake::new(probe));
        let task = Arc::new(TaskWakes(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        for _ in 0..3 {
            assert!(on_wake.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled again though nothing woke it");
        ready.store(true, Ordering::SeqCst);
        waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was not woken with its future");
        assert!(on_wake.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_request_in_progress_holds_the_wait_and_its_end_restarts_it() {
        let t = HeadTimeout::new(Duration::from_secs(60)).unwrap();
        let activity = t.activity();
        assert!(activity.idle_since().is_some());
        let busy = activity.busy();
        let second = activity.busy();
        assert_eq!(activity.idle_since(), None);
        drop(busy);
        assert_eq!(activity.idle_since(), None, "one request is still in progress");
        drop(second);
        let since = activity.idle_since().expect("idle once every response ended");
        assert!(since >= activity.start);
    }
}
