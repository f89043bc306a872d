//! Linkerd's outbound route series (`outbound_http_route_*`,
//! `outbound_grpc_route_*`, with `parent_*`, `route_*` and `backend_*`
//! labels), and weft's own: attempts per logical request, so retries can
//! be shown as a share of traffic and effective success (what the client
//! got) beside actual success (what the endpoints answered).

use super::Meta;
use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// Linkerd's route latency buckets, in seconds.
const DURATION_BUCKETS: [f64; 13] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ATTEMPT_BUCKETS: [f64; 5] = [1.0, 2.0, 3.0, 4.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabels {
    pub parent: Arc<Meta>,
    pub route: Arc<Meta>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct StatusLabels {
    route: RouteLabels,
    backend: Option<Arc<Meta>>,
    /// HTTP status, or gRPC code; none when no response came.
    status: Option<u16>,
    grpc: bool,
    error: Option<&'static str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct BackendLabels {
    route: RouteLabels,
    backend: Arc<Meta>,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// One protocol's (HTTP or gRPC) route families.
struct Families {
    statuses: Family<StatusLabels, Counter>,
    durations: HistogramFamily,
    backend_requests: Family<BackendLabels, Counter>,
    backend_statuses: Family<StatusLabels, Counter>,
    retries: Family<RouteLabels, Counter>,
    retry_successes: Family<RouteLabels, Counter>,
    retry_limit_exceeded: Family<RouteLabels, Counter>,
    retry_overflow: Family<RouteLabels, Counter>,
    attempts: HistogramFamily,
}

pub struct RouteFamilies {
    http: Families,
    grpc: Families,
}

/// How a retry decision went, for the retry counters.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// A retry was sent.
    Retried,
    /// The request was retried and finally succeeded.
    Succeeded,
    /// It failed again after `max_retries`.
    LimitExceeded,
    /// The budget allowed no more retries (or the body could not be
    /// replayed).
    Overflow,
}

impl RouteFamilies {
    pub fn register(registry: &mut Registry) -> Self {
        let families = || Families {
            statuses: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            backend_requests: Family::default(),
            backend_statuses: Family::default(),
            retries: Family::default(),
            retry_successes: Family::default(),
            retry_limit_exceeded: Family::default(),
            retry_overflow: Family::default(),
            attempts: Family::new_with_constructor(|| Histogram::new(ATTEMPT_BUCKETS)),
        };
        let this = Self { http: families(), grpc: families() };
        for (proto, f) in [("http", &this.http), ("grpc", &this.grpc)] {
            let name = |n: &str| format!("outbound_{proto}_route_{n}");
            registry.register(
                name("request_statuses"),
                "Logical requests by final status",
                f.statuses.clone(),
            );
            registry.register_with_unit(
                name("request_duration"),
                "Logical request durations, to the response's headers",
                prometheus_client::registry::Unit::Seconds,
                f.durations.clone(),
            );
            registry.register(
                name("backend_requests"),
                "Requests sent to each backend",
                f.backend_requests.clone(),
            );
            registry.register(
                name("backend_response_statuses"),
                "Responses from each backend, one per attempt",
                f.backend_statuses.clone(),
            );
            registry.register(name("retry_requests"), "Retries sent", f.retries.clone());
            registry.register(
                name("retry_successes"),
                "Retried requests that succeeded",
                f.retry_successes.clone(),
            );
            registry.register(
                name("retry_limit_exceeded"),
                "Requests that failed after their last allowed retry",
                f.retry_limit_exceeded.clone(),
            );
            registry.register(
                name("retry_overflow"),
                "Retries the budget (or an unreplayable body) did not allow",
                f.retry_overflow.clone(),
            );
            registry.register(
                name("request_attempts"),
                "Attempts per logical request (weft: retries as a share of traffic)",
                f.attempts.clone(),
            );
        }
        this
    }

    fn of(&self, grpc: bool) -> &Families {
        if grpc { &self.grpc } else { &self.http }
    }
}

/// One rule's handles into one protocol's route series: resolved once, so
/// a request records with atomic adds (and a short scan for its status)
/// rather than hashing label sets.
pub struct RuleSeries {
    labels: RouteLabels,
    grpc: bool,
    statuses: Family<StatusLabels, Counter>,
    backend_requests: Family<BackendLabels, Counter>,
    backend_statuses: Family<StatusLabels, Counter>,
    durations: Histogram,
    attempts: Histogram,
    /// Retried, succeeded, limit exceeded, overflow.
    retries: [Counter; 4],
    seen: Mutex<Seen>,
}

type StatusKey = (Option<u16>, Option<&'static str>);
/// A backend's key, its requests counter and its status counters.
type BackendSeen = (usize, Counter, Vec<(StatusKey, Counter)>);

#[derive(Default)]
struct Seen {
    statuses: Vec<(StatusKey, Counter)>,
    /// By the backend's `Meta` (its address: one per router).
    backends: Vec<BackendSeen>,
}

impl RouteFamilies {
    pub fn rule(&self, labels: RouteLabels, grpc: bool) -> RuleSeries {
        let f = self.of(grpc);
        RuleSeries {
            durations: f.durations.get_or_create_owned(&labels),
            attempts: f.attempts.get_or_create_owned(&labels),
            retries: [
                f.retries.get_or_create_owned(&labels),
                f.retry_successes.get_or_create_owned(&labels),
                f.retry_limit_exceeded.get_or_create_owned(&labels),
                f.retry_overflow.get_or_create_owned(&labels),
            ],
            statuses: f.statuses.clone(),
            backend_requests: f.backend_requests.clone(),
            backend_statuses: f.backend_statuses.clone(),
            seen: Mutex::new(Seen::default()),
            labels,
            grpc,
        }
    }
}

impl RuleSeries {
    /// A logical request ended: its final status, duration and attempts.
    pub fn request(
        &self,
        status: Option<u16>,
        error: Option<&'static str>,
        elapsed: Duration,
        attempts: u32,
    ) {
        self.status_counter(None, (status, error)).inc();
        self.durations.observe(elapsed.as_secs_f64());
        self.attempts.observe(f64::from(attempts.max(1)));
    }

    pub fn backend_request(&self, backend: &Arc<Meta>) {
        let mut seen = self.seen.lock().expect("route series lock");
        let i = self.backend(&mut seen, backend);
        seen.backends[i].1.inc();
    }

    /// `backend`'s place in `seen`, its requests counter resolved on first use.
    fn backend(&self, seen: &mut Seen, backend: &Arc<Meta>) -> usize {
        let key = Arc::as_ptr(backend) as usize;
        if let Some(i) = seen.backends.iter().position(|(k, _, _)| *k == key) {
            return i;
        }
        let labels = BackendLabels { route: self.labels.clone(), backend: backend.clone() };
        seen.backends.push((key, self.backend_requests.get_or_create_owned(&labels), Vec::new()));
        seen.backends.len() - 1
    }

    pub fn backend_response(&self, backend: &Arc<Meta>, status: Option<u16>, error: Option<&'static str>) {
        self.status_counter(Some(backend), (status, error)).inc();
    }

    pub fn retry(&self, outcome: RetryOutcome) {
        let i = match outcome {
            RetryOutcome::Retried => 0,
            RetryOutcome::Succeeded => 1,
            RetryOutcome::LimitExceeded => 2,
            RetryOutcome::Overflow => 3,
        };
        self.retries[i].inc();
    }

    fn status_counter(&self, backend: Option<&Arc<Meta>>, key: StatusKey) -> Counter {
        let mut seen = self.seen.lock().expect("route series lock");
        let list = match backend {
            None => &mut seen.statuses,
            Some(b) => {
                let i = self.backend(&mut seen, b);
                &mut seen.backends[i].2
            }
        };
        if let Some((_, c)) = list.iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let labels = StatusLabels {
            route: self.labels.clone(),
            backend: backend.cloned(),
            status: key.0,
            grpc: self.grpc,
            error: key.1,
        };
        let family = if backend.is_some() { &self.backend_statuses } else { &self.statuses };
        let counter = family.get_or_create_owned(&labels);
        list.push((key, counter.clone()));
        counter
    }
}

// === label encoding ===

fn meta(
    prefix: &str,
    m: &Meta,
    encoder: &mut LabelSetEncoder,
    with_port: bool,
) -> Result<(), std::fmt::Error> {
    (format!("{prefix}_group"), m.group.as_str()).encode(encoder.encode_label())?;
    (format!("{prefix}_kind"), m.kind.as_str()).encode(encoder.encode_label())?;
    (format!("{prefix}_namespace"), m.namespace.as_str()).encode(encoder.encode_label())?;
    (format!("{prefix}_name"), m.name.as_str()).encode(encoder.encode_label())?;
    if with_port {
        let port = if m.port == 0 { String::new() } else { m.port.to_string() };
        (format!("{prefix}_port"), port.as_str()).encode(encoder.encode_label())?;
        (format!("{prefix}_section_name"), m.section.as_str()).encode(encoder.encode_label())?;
    }
    Ok(())
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        meta("parent", &self.parent, encoder, true)?;
        meta("route", &self.route, encoder, false)
    }
}

impl EncodeLabelSet for BackendLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.route.encode(encoder)?;
        meta("backend", &self.backend, encoder, true)
    }
}

impl EncodeLabelSet for StatusLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.route.encode(encoder)?;
        if let Some(backend) = &self.backend {
            meta("backend", backend, encoder, true)?;
        }
        let status = self.status.map(|s| if self.grpc { grpc_name(s).to_string() } else { s.to_string() });
        let name = if self.grpc { "grpc_status" } else { "http_status" };
        (name, status.as_deref().unwrap_or("")).encode(encoder.encode_label())?;
        ("error", self.error.unwrap_or("")).encode(encoder.encode_label())
    }
}

/// gRPC's names for its status codes, as Linkerd labels them.
pub fn grpc_name(code: u16) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
