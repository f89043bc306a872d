//! Traffic management for a service's HTTP and gRPC requests: the routes
//! its outbound policy names, matched per request, and what a matched
//! rule does with the request: filters (header changes, redirects,
//! injected faults and delays, URL rewrites), the backend it goes to
//! (weighted splits), timeouts, retries within a budget, circuit breaking
//! scoped to the rule, and mirroring.
//!
//! The model is built once per policy update (`proto.rs`); per request the
//! work is a scan of the routes' matches and a few atomic operations.

pub mod accrual;
pub mod metrics;
pub mod proto;

pub use crate::matching::{PathMatch, RequestMatch};
use crate::{discovery::balance::Balancer, matching};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use std::{sync::Arc, time::Duration};
use tower::retry::budget::TpsBudget;

/// The most of a request body kept to mirror it (when the rule has no
/// retries, whose own limit applies).
pub const MIRROR_MAX_BYTES: usize = 64 * 1024;

/// The longest pause between retries, whatever a policy says.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The routes of one service port, and what they share.
pub struct Router {
    /// The Service the routes hang off, for the `parent_*` metric labels.
    pub parent: Arc<Meta>,
    /// HTTP routes (for HTTP/1 and HTTP/2 requests).
    pub http: Vec<Route>,
    /// gRPC routes; when the policy's protocol is gRPC, all requests use
    /// these.
    pub grpc: Vec<Route>,
    pub grpc_only: bool,
    /// Retries may add at most this much load to the service.
    pub budget: Arc<TpsBudget>,
}

/// A resource's identity in metric labels: `<prefix>_group`, `_kind`,
/// `_namespace`, `_name`, `_port`, `_section_name`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Meta {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub section: String,
}

pub struct Route {
    pub meta: Arc<Meta>,
    pub rules: Vec<Rule>,
}

pub struct Rule {
    /// Empty: the rule matches every request.
    pub matches: Vec<RequestMatch>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<Redirect>,
    pub abort: Option<Abort>,
    pub delay: Option<(Ratio, Duration)>,
    pub rewrite: Option<Rewrite>,
    pub backends: Vec<WeightedBackend>,
    pub mirrors: Vec<(Arc<Backend>, Ratio)>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    /// Circuit breaking for this rule's requests only.
    pub breaker: Option<Arc<accrual::RouteAccrual>>,
    /// The parent and route, for the route series.
    pub labels: metrics::RouteLabels,
    /// Handles into the HTTP and the gRPC route series, on first use.
    series: [std::sync::OnceLock<Arc<metrics::RuleSeries>>; 2],
}

#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Clone, Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

#[derive(Clone, Debug)]
pub enum PathModifier {
    Full(String),
    /// Replaces the part the rule's prefix match matched.
    Prefix(String),
}

#[derive(Clone, Debug)]
pub struct Abort {
    pub ratio: Ratio,
    /// An HTTP status, or for gRPC routes a gRPC code.
    pub status: u16,
    pub grpc: bool,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Rewrite {
    pub host: Option<String>,
    pub path: Option<PathModifier>,
}

/// A share of requests, `numerator / denominator`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Ratio(pub f64);

pub struct WeightedBackend {
    pub backend: Arc<Backend>,
    pub weight: u32,
}

/// Where a rule sends requests: a service balanced over its endpoints.
pub struct Backend {
    pub meta: Arc<Meta>,
    /// The discovery name, `name.ns.svc.cluster.local:port`.
    pub name: String,
    pub balancer: Arc<Balancer>,
    /// How long a request may wait for an endpoint before failing.
    pub failfast: Duration,
    /// The service's circuit breaking for this backend's endpoints.
    pub accrual: Option<Arc<accrual::Consecutive>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeouts {
    /// From the request to its response's headers, retries included.
    pub request: Option<Duration>,
    /// From each attempt to its response's headers.
    pub response: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub max_retries: u32,
    /// A request with a larger body is sent once.
    pub max_request_bytes: usize,
    pub on: RetryOn,
    /// Each attempt's own timeout; an attempt that times out is retried.
    pub timeout: Option<Duration>,
    pub backoff: (Duration, Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RetryOn {
    /// HTTP statuses, as inclusive ranges.
    Http(Vec<(u16, u16)>),
    /// gRPC status codes.
    Grpc(Vec<u32>),
}

// === impl Router ===

impl Router {
    /// The route and rule a request takes: of every rule's matches that
    /// accept it, the most specific one (the Gateway API's precedence:
    /// exact path, then longest prefix, then method, then most header and
    /// most query matches), the earliest on a tie.
    pub fn select<B>(&self, req: &Request<B>, grpc: bool) -> Option<Selected<'_>> {
        let routes = if grpc || self.grpc_only { &self.grpc } else { &self.http };
        // A gRPC request to a service without gRPC routes uses its HTTP
        // routes: gRPC is HTTP/2.
        let routes = if routes.is_empty() { &self.http } else { routes };
        let mut best: Option<(matching::Score, Selected<'_>)> = None;
        for route in routes {
            for rule in &route.rules {
                let found = if rule.matches.is_empty() {
                    Some((matching::Score::default(), None))
                } else {
                    rule.matches
                        .iter()
                        .filter(|m| {
                            m.matches(req.method(), req.uri().path(), req.uri().query(), req.headers())
                        })
                        .map(|m| (m.score(), Some(m)))
                        .max_by_key(|(s, _)| *s)
                };
                if let Some((score, matched)) = found {
                    if best.as_ref().is_none_or(|(b, _)| score > *b) {
                        best = Some((score, Selected { rule, matched }));
                    }
                }
            }
        }
        best.map(|(_, selected)| selected)
    }
}

/// The rule a request takes, and the match that took it.
pub struct Selected<'a> {
    pub rule: &'a Rule,
    pub matched: Option<&'a RequestMatch>,
}

impl Selected<'_> {
    /// The path prefix the winning match matched, for prefix rewrites.
    pub fn prefix(&self) -> Option<&str> {
        match self.matched.and_then(|m| m.path.as_ref()) {
            Some(PathMatch::Prefix(p)) => Some(p.as_str()),
            _ => None,
        }
    }
}

// === impl Rule ===

impl Rule {
    /// This rule's route series for HTTP or gRPC requests.
    pub fn series(&self, grpc: bool, families: &metrics::RouteFamilies) -> &Arc<metrics::RuleSeries> {
        self.series[usize::from(grpc)].get_or_init(|| Arc::new(families.rule(self.labels.clone(), grpc)))
    }

    /// A backend, drawn by weight.
    pub fn pick_backend(&self) -> Option<&Arc<Backend>> {
        match self.backends.as_slice() {
            [] => None,
            [one] if one.weight > 0 => Some(&one.backend),
            many => {
                let total: u64 = many.iter().map(|b| u64::from(b.weight)).sum();
                if total == 0 {
                    return None;
                }
                let mut draw = crate::discovery::balance::fastrand(total as usize) as u64;
                for b in many {
                    if draw < u64::from(b.weight) {
                        return Some(&b.backend);
                    }
                    draw -= u64::from(b.weight);
                }
                None
            }
        }
    }
}

// === impl HeaderModifier ===

impl HeaderModifier {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

// === impl PathModifier ===

impl PathModifier {
    /// The new path for `path`, `matched` being the prefix the rule matched.
    pub fn apply(&self, path: &str, matched: Option<&str>) -> String {
        match self {
            PathModifier::Full(full) => full.clone(),
            PathModifier::Prefix(replacement) => {
                let matched = matched.unwrap_or("").trim_end_matches('/');
                let rest = path.strip_prefix(matched).unwrap_or(path);
                let joined = format!("{}{}", replacement.trim_end_matches('/'), rest);
                if joined.is_empty() { "/".into() } else { joined }
            }
        }
    }
}

// === impl Ratio ===

impl Ratio {
    pub const ALL: Ratio = Ratio(1.0);

    /// Whether this request is in the share.
    pub fn hit(self) -> bool {
        if self.0 >= 1.0 {
            return true;
        }
        if self.0 <= 0.0 {
            return false;
        }
        const SCALE: usize = 1 << 24;
        (crate::discovery::balance::fastrand(SCALE) as f64) < self.0 * SCALE as f64
    }
}

// === impl Retry ===

impl Retry {
    /// Whether a response with this status (and gRPC status, read from a
    /// trailers-only response's headers) is worth another attempt.
    pub fn retries(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        match &self.on {
            RetryOn::Http(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status.as_u16())),
            RetryOn::Grpc(codes) => grpc_status.is_some_and(|s| codes.contains(&s)),
        }
    }

    /// The pause before retry number `n` (from 1): exponential, jittered.
    pub fn backoff(&self, n: u32) -> Duration {
        let (min, max) = self.backoff;
        let base = min.saturating_mul(1 << n.saturating_sub(1).min(16)).min(max).min(MAX_BACKOFF);
        let jitter = crate::discovery::balance::fastrand(1000) as u32;
        base.mul_f64(0.5) + base.mul_f64(0.5) * jitter / 1000
    }
}

#[cfg(test)]
mod tests;
