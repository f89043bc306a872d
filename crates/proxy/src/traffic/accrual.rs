//! Failure accrual (circuit breaking): after `max_failures` consecutive
//! failures an endpoint leaves the balancer for a penalty; when the penalty
//! is over one request probes it; success brings it back, another failure
//! doubles the penalty, up to a maximum. Linkerd's consecutive-failures
//! policy, kept per endpoint for a whole service (the balancer's own
//! state) or per endpoint and rule (`RouteAccrual`, weft's per-route
//! circuit breaking).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Clone, Debug, PartialEq)]
pub struct Consecutive {
    pub max_failures: u32,
    pub min_penalty: Duration,
    pub max_penalty: Duration,
    pub jitter: f32,
}

/// One endpoint's standing under a policy.
#[derive(Debug, Default)]
pub struct State {
    failures: u32,
    /// Ejected until then; `None` while the endpoint is in.
    ejected_until: Option<Instant>,
    penalty: Duration,
    /// The penalty is over and one request is finding out.
    probing: bool,
}

/// What the balancer may do with an endpoint now.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    In,
    /// Its penalty is over: one request may probe it.
    Probe,
    Out,
}

impl State {
    pub fn standing(&self, now: Instant) -> Standing {
        match self.ejected_until {
            None => Standing::In,
            Some(_) if self.probing => Standing::Out,
            Some(until) if now >= until => Standing::Probe,
            Some(_) => Standing::Out,
        }
    }

    /// A request is sent to the endpoint; a probe takes the one slot.
    pub fn claim(&mut self, now: Instant) {
        if self.standing(now) == Standing::Probe {
            self.probing = true;
        }
    }

    /// Returns whether the endpoint was ejected by this outcome.
    pub fn record(&mut self, success: bool, policy: &Consecutive) -> bool {
        if success {
            *self = State::default();
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        let penalty = if self.probing {
            (self.penalty * 2).min(policy.max_penalty)
        } else if self.ejected_until.is_none() && self.failures >= policy.max_failures {
            policy.min_penalty
        } else {
            return false;
        };
        self.probing = false;
        self.penalty = penalty.max(Duration::from_millis(1));
        let jitter = 1.0 + policy.jitter as f64 * crate::discovery::balance::fastrand(1000) as f64 / 1000.0;
        self.ejected_until = Some(Instant::now() + self.penalty.mul_f64(jitter));
        true
    }
}

/// Failure accrual scoped to one rule: the same endpoints, a separate
/// standing per endpoint.
pub struct RouteAccrual {
    pub policy: Consecutive,
    states: Mutex<HashMap<SocketAddr, State>>,
}

impl RouteAccrual {
    pub fn new(policy: Consecutive) -> Self {
        Self { policy, states: Mutex::new(HashMap::new()) }
    }

    pub fn standing(&self, addr: SocketAddr, now: Instant) -> Standing {
        let states = self.states.lock().expect("route accrual lock");
        states.get(&addr).map_or(Standing::In, |s| s.standing(now))
    }

    pub fn claim(&self, addr: SocketAddr, now: Instant) {
        if let Some(s) = self.states.lock().expect("route accrual lock").get_mut(&addr) {
            s.claim(now);
        }
    }

    pub fn record(&self, addr: SocketAddr, success: bool) -> bool {
        let mut states = self.states.lock().expect("route accrual lock");
        if success && !states.contains_key(&addr) {
            return false;
        }
        let ejected = states.entry(addr).or_default().record(success, &self.policy);
        if success {
            states.remove(&addr);
        }
        ejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Consecutive {
        Consecutive {
            max_failures: 3,
            min_penalty: Duration::from_millis(40),
            max_penalty: Duration::from_millis(100),
            jitter: 0.0,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_probes_back() {
        let p = policy();
        let mut s = State::default();
        assert!(!s.record(false, &p));
        assert!(!s.record(true, &p), "a success resets the count");
        assert!(!s.record(false, &p) && !s.record(false, &p));
        assert!(s.record(false, &p), "the third failure in a row ejects");
        assert_eq!(s.standing(Instant::now()), Standing::Out);
        let later = Instant::now() + Duration::from_millis(50);
        assert_eq!(s.standing(later), Standing::Probe);
        s.claim(later);
        assert_eq!(s.standing(later), Standing::Out, "one probe at a time");
        assert!(s.record(false, &p), "a failed probe ejects again");
        assert_eq!(s.penalty, Duration::from_millis(80));
        s.probing = true;
        s.record(false, &p);
        assert_eq!(s.penalty, Duration::from_millis(100), "capped at the maximum");
        s.probing = true;
        s.record(true, &p);
        assert_eq!(s.standing(Instant::now()), Standing::In);
    }

    #[test]
    fn a_route_keeps_its_own_standing() {
        let route = RouteAccrual::new(policy());
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        for _ in 0..3 {
            route.record(a, false);
        }
        assert_eq!(route.standing(a, Instant::now()), Standing::Out);
        assert_eq!(route.standing(b, Instant::now()), Standing::In);
    }
}
