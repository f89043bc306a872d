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

/// The longest an endpoint stays out at a time, whatever a policy says.
pub const MAX_PENALTY: Duration = Duration::from_secs(24 * 3600);
/// How long a probe holds the one slot at least.
const PROBE_SLOT: Duration = Duration::from_secs(1);

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
    /// The penalty is over and one request is finding out, until then: a
    /// probe whose outcome never comes (its caller went away) frees the
    /// slot when this passes.
    probing: Option<Instant>,
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
            Some(until) if now < until => Standing::Out,
            Some(_) if self.probing.is_some_and(|p| now < p) => Standing::Out,
            Some(_) => Standing::Probe,
        }
    }

    /// A request is sent to the endpoint; a probe takes the one slot.
    pub fn claim(&mut self, now: Instant) {
        if self.standing(now) == Standing::Probe {
            let slot = self.penalty.max(PROBE_SLOT);
            self.probing = Some(now.checked_add(slot).unwrap_or(now + PROBE_SLOT));
        }
    }

    /// Returns whether the endpoint was ejected by this outcome.
    pub fn record(&mut self, success: bool, policy: &Consecutive) -> bool {
        if success {
            *self = State::default();
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        let penalty = if self.probing.is_some() {
            self.penalty.saturating_mul(2).min(policy.max_penalty)
        } else if self.ejected_until.is_none() && self.failures >= policy.max_failures {
            policy.min_penalty
        } else {
            return false;
        };
        self.probing = None;
        self.penalty = penalty.clamp(Duration::from_millis(1), MAX_PENALTY);
        let spread = if policy.jitter.is_finite() { f64::from(policy.jitter.clamp(0.0, 100.0)) } else { 0.0 };
        let jitter = 1.0 + spread * crate::discovery::balance::fastrand(1000) as f64 / 1000.0;
        let now = Instant::now();
        let wait = self.penalty.mul_f64(jitter).min(MAX_PENALTY * 101);
        self.ejected_until = Some(now.checked_add(wait).unwrap_or(now + MAX_PENALTY));
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
        // A probe whose answer never comes frees the slot.
        assert_eq!(s.standing(later + Duration::from_secs(2)), Standing::Probe);
        assert!(s.record(false, &p), "a failed probe ejects again");
        assert_eq!(s.penalty, Duration::from_millis(80));
        s.probing = Some(Instant::now());
        s.record(false, &p);
        assert_eq!(s.penalty, Duration::from_millis(100), "capped at the maximum");
        s.probing = Some(Instant::now());
        s.record(true, &p);
        assert_eq!(s.standing(Instant::now()), Standing::In);
    }

    #[test]
    fn absurd_penalties_do_not_overflow() {
        let p = Consecutive {
            max_failures: 1,
            min_penalty: Duration::MAX,
            max_penalty: Duration::MAX,
            jitter: f32::NAN,
        };
        let mut s = State::default();
        assert!(s.record(false, &p));
        assert_eq!(s.standing(Instant::now()), Standing::Out);
        s.probing = Some(Instant::now());
        assert!(s.record(false, &p));
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
