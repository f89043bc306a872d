//! Per-request load balancing: power of two choices over peak-EWMA
//! latency, as Linkerd's proxy does. Two endpoints are drawn at random and
//! the one with the lower cost (latency estimate × requests in flight + 1)
//! is used, which steers traffic away from slow or busy endpoints without
//! any endpoint starving.
//!
//! Written here rather than with `tower::balance`: tower's balancer needs
//! `&mut self` to pick, so sharing it between connections takes a buffer
//! task and a channel hop per request; this picks from a shared list with
//! an uncontended lock per endpoint.

use crate::traffic::accrual::{self, Consecutive, RouteAccrual, Standing};
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// An endpoint's `dst_*` metric labels.
pub type DstLabels = Arc<[(String, String)]>;

/// What discovery says about an endpoint besides its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// `dst_*` metric labels for requests sent here.
    pub labels: DstLabels,
    /// The mesh identity its proxy presents: connections to it are mesh TLS.
    pub identity: Option<Arc<str>>,
    /// Its proxy takes HTTP/2: HTTP/1 requests are carried over HTTP/2.
    pub http2: bool,
}

/// One endpoint as the balancer sees it.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub meta: EndpointMeta,
    pending: AtomicUsize,
    ewma: Mutex<Ewma>,
    /// Its standing under the service's failure accrual.
    accrual: Mutex<accrual::State>,
}

struct Ewma {
    /// The latency estimate, in nanoseconds.
    estimate: f64,
    /// When the estimate was last measured; `None` while it is the default,
    /// so endpoints nobody has measured cost the same (and new endpoints are
    /// not ranked by when they appeared).
    updated: Option<Instant>,
}

/// The endpoints of one service, shared by every connection to it.
pub struct Balancer {
    endpoints: watch::Sender<Arc<[Arc<Endpoint>]>>,
    default_rtt: Duration,
    decay: Duration,
}

/// What a pick found.
pub enum Pick {
    Endpoint(InFlight),
    /// The service has no endpoints.
    Empty,
    /// Every endpoint is ejected for failing (the circuit is open).
    AllFailing,
}

/// Counts a request as in flight at its endpoint until dropped, and
/// records its latency when told the response came.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
    decay: Duration,
    accrual: Option<Arc<Consecutive>>,
}

// === impl Balancer ===

impl Balancer {
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        let (endpoints, _) = watch::channel(Arc::from(Vec::new()));
        Self { endpoints, default_rtt, decay }
    }

    /// Replaces the endpoint set; endpoints that stay keep their state, and
    /// requests in flight to removed ones finish undisturbed.
    pub fn update(&self, next: Vec<(SocketAddr, EndpointMeta)>) {
        let current = self.endpoints.borrow().clone();
        let endpoints: Vec<Arc<Endpoint>> = next
            .into_iter()
            .map(|(addr, meta)| match current.iter().find(|e| e.addr == addr && e.meta == meta) {
                Some(existing) => existing.clone(),
                None => Arc::new(Endpoint {
                    addr,
                    meta,
                    pending: AtomicUsize::new(0),
                    ewma: Mutex::new(Ewma { estimate: self.default_rtt.as_nanos() as f64, updated: None }),
                    accrual: Mutex::new(accrual::State::default()),
                }),
            })
            .collect();
        self.endpoints.send_replace(Arc::from(endpoints));
    }

    pub fn len(&self) -> usize {
        self.endpoints.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks an endpoint now, if there is one.
    pub fn pick(&self) -> Option<InFlight> {
        match self.pick_for(None, None) {
            Pick::Endpoint(p) => Some(p),
            Pick::Empty | Pick::AllFailing => None,
        }
    }

    /// Picks an endpoint that neither the caller's failure accrual
    /// (`policy`: a service's policy, for this backend; the balancer is
    /// shared by every service that names it) nor `route`'s has ejected.
    /// An endpoint whose penalty is over gets the one request that probes
    /// it. The outcome goes to [`InFlight::record`].
    pub fn pick_for(&self, route: Option<&RouteAccrual>, policy: Option<&Arc<Consecutive>>) -> Pick {
        let endpoints = self.endpoints.borrow().clone();
        if endpoints.is_empty() {
            return Pick::Empty;
        }
        let policy = policy.cloned();
        if policy.is_none() && route.is_none() {
            return Pick::Endpoint(self.in_flight(self.p2c(&endpoints), None));
        }
        let now = Instant::now();
        let standing = |e: &Endpoint| {
            let own = match policy {
                Some(_) => e.accrual.lock().map(|s| s.standing(now)).unwrap_or(Standing::In),
                None => Standing::In,
            };
            let scoped = route.map_or(Standing::In, |r| r.standing(e.addr, now));
            worst(own, scoped)
        };
        let mut probe = None;
        let mut candidates = Vec::with_capacity(endpoints.len());
        for e in endpoints.iter() {
            match standing(e) {
                Standing::In => candidates.push(e.clone()),
                Standing::Probe if probe.is_none() => probe = Some(e.clone()),
                _ => {}
            }
        }
        let endpoint = match probe {
            Some(e) => {
                if policy.is_some() {
                    if let Ok(mut s) = e.accrual.lock() {
                        s.claim(now);
                    }
                }
                if let Some(r) = route {
                    r.claim(e.addr, now);
                }
                e
            }
            None if candidates.is_empty() => return Pick::AllFailing,
            None => self.p2c(&candidates),
        };
        Pick::Endpoint(self.in_flight(endpoint, policy))
    }

    fn p2c(&self, endpoints: &[Arc<Endpoint>]) -> Arc<Endpoint> {
        match endpoints.len() {
            1 => endpoints[0].clone(),
            n => {
                let a = fastrand(n);
                let mut b = fastrand(n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&endpoints[a], &endpoints[b]);
                if self.cost(ea) <= self.cost(eb) { ea.clone() } else { eb.clone() }
            }
        }
    }

    fn in_flight(&self, endpoint: Arc<Endpoint>, accrual: Option<Arc<Consecutive>>) -> InFlight {
        endpoint.pending.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint, started: Instant::now(), decay: self.decay, accrual }
    }

    /// Picks an endpoint, waiting up to `timeout` for the set to be
    /// non-empty (a service scaled to zero, or discovery still coming).
    pub async fn pick_within(&self, timeout: Duration) -> Option<InFlight> {
        match self.pick_within_for(timeout, None, None).await {
            Pick::Endpoint(p) => Some(p),
            Pick::Empty | Pick::AllFailing => None,
        }
    }

    /// As `pick_for`, waiting up to `timeout` for endpoints to exist.
    pub async fn pick_within_for(
        &self,
        timeout: Duration,
        route: Option<&RouteAccrual>,
        policy: Option<&Arc<Consecutive>>,
    ) -> Pick {
        match self.pick_for(route, policy) {
            // Boxed: waiting is rare, and its timer would otherwise enlarge
            // every request's future.
            Pick::Empty => Box::pin(self.wait_and_pick(timeout, route, policy)).await,
            found => found,
        }
    }

    async fn wait_and_pick(
        &self,
        timeout: Duration,
        route: Option<&RouteAccrual>,
        policy: Option<&Arc<Consecutive>>,
    ) -> Pick {
        let mut rx = self.endpoints.subscribe();
        let wait = rx.wait_for(|eps| !eps.is_empty());
        let _ = tokio::time::timeout(timeout, wait).await;
        self.pick_for(route, policy)
    }

    fn cost(&self, endpoint: &Endpoint) -> f64 {
        let pending = endpoint.pending.load(Ordering::Relaxed) as f64;
        let estimate = endpoint.ewma.lock().map(|e| e.decayed(self.decay)).unwrap_or(0.0);
        estimate * (pending + 1.0)
    }
}

// === impl Ewma ===

impl Ewma {
    /// The estimate as of now: it decays toward zero while nothing is
    /// measured, so an endpoint that was slow once is tried again.
    fn decayed(&self, decay: Duration) -> f64 {
        let Some(updated) = self.updated else { return self.estimate };
        let elapsed = updated.elapsed().as_nanos() as f64;
        self.estimate * (-elapsed / decay.as_nanos().max(1) as f64).exp()
    }

    fn observe(&mut self, rtt: Duration, decay: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let now = Instant::now();
        if rtt > self.estimate {
            // Peak: a slow response counts in full at once.
            self.estimate = rtt;
        } else {
            let elapsed = self.updated.map_or(0.0, |u| now.duration_since(u).as_nanos() as f64);
            let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            self.estimate = self.estimate * w + rtt * (1.0 - w);
        }
        self.updated = Some(now);
    }
}

// === impl InFlight ===

impl InFlight {
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    pub fn labels(&self) -> &DstLabels {
        &self.endpoint.meta.labels
    }

    pub fn meta(&self) -> &EndpointMeta {
        &self.endpoint.meta
    }

    /// The response (head) came: its latency feeds the estimate.
    pub fn responded(&self) {
        if let Ok(mut ewma) = self.endpoint.ewma.lock() {
            ewma.observe(self.started.elapsed(), self.decay);
        }
    }

    /// Feeds the outcome to the service's failure accrual and to `route`'s;
    /// returns whether the endpoint was ejected.
    pub fn record(&self, success: bool, route: Option<&RouteAccrual>) -> bool {
        let mut ejected = false;
        if let Some(policy) = &self.accrual {
            if let Ok(mut state) = self.endpoint.accrual.lock() {
                ejected |= state.record(success, policy);
            }
        }
        if let Some(route) = route {
            ejected |= route.record(self.endpoint.addr, success);
        }
        if ejected {
            tracing::info!(endpoint = %self.endpoint.addr, "endpoint ejected after consecutive failures");
        }
        ejected
    }
}

fn worst(a: Standing, b: Standing) -> Standing {
    match (a, b) {
        (Standing::Out, _) | (_, Standing::Out) => Standing::Out,
        (Standing::Probe, _) | (_, Standing::Probe) => Standing::Probe,
        _ => Standing::In,
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A random index below `n`: xorshift seeded per thread, enough to draw
/// two endpoints (no cryptographic need).
pub(crate) fn fastrand(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (t.as_nanos() as u64) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<(SocketAddr, EndpointMeta)> {
        (0..n).map(|i| (SocketAddr::from(([10, 0, 0, i + 1], 80)), EndpointMeta::default())).collect()
    }

    #[test]
    fn spreads_evenly_over_equal_endpoints() {
        let balancer = Balancer::new(Duration::from_millis(30), Duration::from_secs(10));
        balancer.update(addrs(3));
        let mut counts = std::collections::HashMap::new();
        for _ in 0..30_000 {
            let picked = balancer.pick().unwrap();
            *counts.entry(picked.addr()).or_insert(0) += 1;
        }
        for (addr, count) in counts {
            assert!((8_500..=11_500).contains(&count), "{addr} got {count} of 30000");
        }
    }

    #[test]
    fn busy_and_slow_endpoints_get_less() {
        let balancer = Balancer::new(Duration::from_millis(1), Duration::from_secs(10));
        balancer.update(addrs(2));
        // Make 10.0.0.1 look slow: one 100 ms response.
        let slow = loop {
            let p = balancer.pick().unwrap();
            if p.addr().ip().to_string() == "10.0.0.1" {
                break p;
            }
        };
        slow.endpoint.ewma.lock().unwrap().observe(Duration::from_millis(100), Duration::from_secs(10));
        drop(slow);
        let picks_of_slow =
            (0..1000).filter(|_| balancer.pick().unwrap().addr().ip().to_string() == "10.0.0.1").count();
        // With two endpoints both are always drawn, so the cheaper wins.
        assert_eq!(picks_of_slow, 0);

        // Requests in flight make an endpoint costlier too.
        balancer.update(addrs(3));
        let held: Vec<InFlight> = (0..50)
            .filter_map(|_| balancer.pick())
            .filter(|p| p.addr().ip().to_string() == "10.0.0.2")
            .collect();
        let to_busy =
            (0..1000).filter(|_| balancer.pick().unwrap().addr().ip().to_string() == "10.0.0.2").count();
        assert!(!held.is_empty() && to_busy < 400, "the busy endpoint got {to_busy} of 1000");
    }

    #[test]
    fn updates_keep_state_and_in_flight_requests() {
        let balancer = Balancer::new(Duration::from_millis(30), Duration::from_secs(10));
        balancer.update(addrs(2));
        let in_flight = balancer.pick().unwrap();
        let addr = in_flight.addr();
        balancer.update(vec![]);
        assert!(balancer.pick().is_none());
        // The request to a removed endpoint still completes.
        in_flight.responded();
        assert_eq!(in_flight.addr(), addr);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_endpoints_up_to_the_timeout() {
        let balancer = Arc::new(Balancer::new(Duration::from_millis(30), Duration::from_secs(10)));
        assert!(balancer.pick_within(Duration::from_secs(1)).await.is_none());
        let b = balancer.clone();
        let waiter =
            tokio::spawn(async move { b.pick_within(Duration::from_secs(5)).await.map(|p| p.addr()) });
        tokio::task::yield_now().await;
        balancer.update(addrs(1));
        assert_eq!(waiter.await.unwrap(), Some(SocketAddr::from(([10, 0, 0, 1], 80))));
    }
}
