//! Linkerd's traffic annotations and weft's fault injection as outbound
//! policy: retries, timeouts, failure accrual and fault filters, and the
//! bookkeeping of weft's per-rule additions (`weft_api::RuleExtension`).
//!
//! Annotations on a Service apply to every route of it (the default route
//! included); a route's annotation replaces the Service's of the same name.

use linkerd2_proxy_api::{
    grpc_route::GrpcFailureInjector,
    http_route::{self as api, HttpFailureInjector, Ratio},
    outbound::{self, ExponentialBackoff, FailureAccrual, failure_accrual, grpc_route, http_route},
};
use std::time::Duration;
use weft_api::{Delay, RuleExtension};
use weft_store::traffic::annotations::{
    self as ann, Annotations, FailureAccrual as Accrual, Fault, GrpcConditions, Retry, Timeouts,
};

/// Retries buffer request bodies up to this size; larger requests are not
/// retried.
pub(crate) const MAX_RETRY_BYTES: u32 = 64 * 1024;
/// Linkerd's default limit when a retry annotation names conditions.
const DEFAULT_RETRY_LIMIT: u32 = 1;

/// A Service's traffic settings.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceTraffic {
    pub(crate) retry: Retry,
    pub(crate) timeouts: Timeouts,
    pub(crate) accrual: Option<Accrual>,
}

/// A route's traffic settings, the Service's folded in.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteTraffic {
    pub(crate) retry: Retry,
    pub(crate) timeouts: Timeouts,
    /// Circuit breaking for this route only (weft's addition).
    pub(crate) accrual: Option<Accrual>,
    pub(crate) fault: Fault,
}

// === impl ServiceTraffic ===

impl ServiceTraffic {
    /// Annotations were checked when the Service was loaded; a bad one
    /// cannot reach here, and would count as unset.
    pub(crate) fn of(annotations: Option<&Annotations>) -> Self {
        Self {
            retry: Retry::parse(annotations).unwrap_or_default(),
            timeouts: Timeouts::parse(annotations).unwrap_or_default(),
            accrual: Accrual::parse(annotations).ok().flatten(),
        }
    }

    /// What the service's default (or profile) routes get.
    pub(crate) fn route(&self) -> RouteTraffic {
        RouteTraffic { retry: self.retry.clone(), timeouts: self.timeouts, ..Default::default() }
    }

    pub(crate) fn with_route(&self, annotations: Option<&Annotations>) -> RouteTraffic {
        RouteTraffic {
            retry: Retry::parse(annotations).unwrap_or_default().or(&self.retry),
            timeouts: Timeouts::parse(annotations).unwrap_or_default().or(&self.timeouts),
            accrual: Accrual::parse(annotations).ok().flatten(),
            fault: Fault::parse(annotations).unwrap_or_default(),
        }
    }
}

// === impl RouteTraffic ===

impl RouteTraffic {
    pub(crate) fn http_retry(&self) -> Option<http_route::Retry> {
        let ranges = self.retry.http.as_ref()?;
        Some(http_route::Retry {
            max_retries: self.retry.limit.unwrap_or(DEFAULT_RETRY_LIMIT),
            max_request_bytes: MAX_RETRY_BYTES,
            conditions: Some(http_route::retry::Conditions {
                status_ranges: ranges
                    .iter()
                    .map(|&(start, end)| http_route::retry::conditions::StatusRange {
                        start: start.into(),
                        end: end.into(),
                    })
                    .collect(),
            }),
            timeout: self.retry.timeout.and_then(duration),
            backoff: None,
        })
    }

    pub(crate) fn grpc_retry(&self) -> Option<grpc_route::Retry> {
        let GrpcConditions { cancelled, deadline_exceeded, internal, resource_exhausted, unavailable } =
            self.retry.grpc?;
        Some(grpc_route::Retry {
            max_retries: self.retry.limit.unwrap_or(DEFAULT_RETRY_LIMIT),
            max_request_bytes: MAX_RETRY_BYTES,
            conditions: Some(grpc_route::retry::Conditions {
                cancelled,
                deadine_exceeded: deadline_exceeded,
                internal,
                resource_exhausted,
                unavailable,
            }),
            timeout: self.retry.timeout.and_then(duration),
            backoff: None,
        })
    }

    /// The annotations' timeouts, with a rule's own (Gateway API
    /// `timeouts`) winning field by field; zero means no timeout.
    pub(crate) fn timeouts(&self, rule: Timeouts) -> Option<api::Timeouts> {
        let t = rule.or(&self.timeouts);
        let t = api::Timeouts {
            request: t.request.and_then(duration),
            response: t.response.and_then(duration),
            idle: t.idle.and_then(duration),
        };
        (t != api::Timeouts::default()).then_some(t)
    }

    pub(crate) fn http_abort(&self) -> Option<http_route::Filter> {
        let abort = self.fault.abort?;
        Some(http_route::Filter {
            kind: Some(http_route::filter::Kind::FailureInjector(HttpFailureInjector {
                status: abort.http_status.into(),
                message: format!("injected by {}", ann::FAULT_ABORT_PERCENT),
                ratio: Some(ratio(abort.percent)),
            })),
        })
    }

    pub(crate) fn grpc_abort(&self) -> Option<grpc_route::Filter> {
        let abort = self.fault.abort?;
        Some(grpc_route::Filter {
            kind: Some(grpc_route::filter::Kind::FailureInjector(GrpcFailureInjector {
                code: abort.grpc_status,
                message: format!("injected by {}", ann::FAULT_ABORT_PERCENT),
                ratio: Some(ratio(abort.percent)),
            })),
        })
    }

    /// weft's additions every rule of the route carries.
    pub(crate) fn extension(&self, rule: usize) -> RuleExtension {
        RuleExtension {
            rule: rule as u32,
            // A zero delay is no delay.
            delay: self
                .fault
                .delay
                .filter(|d| !d.duration.is_zero())
                .map(|d| Delay { ratio: Some(ratio(d.percent)), duration: duration(d.duration) }),
            failure_accrual: self.accrual.as_ref().map(failure_accrual),
            ..Default::default()
        }
    }
}

/// A percentage (three decimals kept) as a ratio.
pub(crate) fn ratio(percent: f64) -> Ratio {
    Ratio { numerator: (percent * 1000.0).round() as u32, denominator: 100_000 }
}

/// A positive duration; zero is none.
pub(crate) fn duration(d: Duration) -> Option<prost_types::Duration> {
    if d.is_zero() {
        return None;
    }
    prost_types::Duration::try_from(d).ok()
}

/// A duration as the proxy API carries it, zero included; a longer one
/// than protobuf holds is capped at a year.
fn exact(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d.min(Duration::from_secs(365 * 24 * 3600))).ok()
}

pub(crate) fn failure_accrual(a: &Accrual) -> FailureAccrual {
    FailureAccrual {
        kind: Some(failure_accrual::Kind::ConsecutiveFailures(failure_accrual::ConsecutiveFailures {
            max_failures: a.max_failures,
            // Always set, zero included: the stock proxy requires both.
            backoff: Some(ExponentialBackoff {
                min_backoff: exact(a.min_penalty),
                max_backoff: exact(a.max_penalty),
                jitter_ratio: a.jitter_ratio,
                respect_retry_after_hint: false,
            }),
        })),
        ejection: None,
    }
}

/// weft's additions to the rules of a protocol's routes, collected as the
/// routes are listed: a route's index is its position in the list.
#[derive(Default)]
pub(crate) struct Listed<R> {
    pub(crate) routes: Vec<R>,
    pub(crate) rules: Vec<RuleExtension>,
}

impl<R> Listed<R> {
    pub(crate) fn push(&mut self, route: R, rules: Vec<RuleExtension>) {
        let index = self.routes.len() as u32;
        self.routes.push(route);
        self.rules
            .extend(rules.into_iter().filter(|r| !is_empty(r)).map(|r| RuleExtension { route: index, ..r }));
    }
}

fn is_empty(r: &RuleExtension) -> bool {
    r.delay.is_none() && r.mirrors.is_empty() && r.url_rewrite.is_none() && r.failure_accrual.is_none()
}

/// The filter that fails every request of a rule whose backends all have
/// weight 0 (the Gateway API answers them with 500): the stock proxy needs
/// a non-empty distribution, so the rule keeps its weight-0 backends, and
/// this filter answers before any is picked.
pub(crate) fn no_backends_http() -> http_route::Filter {
    http_route::Filter {
        kind: Some(http_route::filter::Kind::FailureInjector(HttpFailureInjector {
            status: 500,
            message: "every backend of this route has weight 0".into(),
            ratio: Some(Ratio { numerator: 1, denominator: 1 }),
        })),
    }
}

pub(crate) fn no_backends_grpc() -> grpc_route::Filter {
    grpc_route::Filter {
        kind: Some(grpc_route::filter::Kind::FailureInjector(GrpcFailureInjector {
            code: 14,
            message: "every backend of this route has weight 0".into(),
            ratio: Some(Ratio { numerator: 1, denominator: 1 }),
        })),
    }
}

/// Backends with their weights as an HTTP distribution.
pub(crate) fn http_distribution(backends: Vec<(outbound::Backend, u32)>) -> http_route::Distribution {
    http_route::Distribution {
        kind: Some(http_route::distribution::Kind::RandomAvailable(
            http_route::distribution::RandomAvailable {
                backends: backends
                    .into_iter()
                    .map(|(backend, weight)| http_route::WeightedRouteBackend {
                        backend: Some(http_route::RouteBackend {
                            backend: Some(backend),
                            ..Default::default()
                        }),
                        weight,
                    })
                    .collect(),
            },
        )),
    }
}

pub(crate) fn grpc_distribution(backends: Vec<(outbound::Backend, u32)>) -> grpc_route::Distribution {
    grpc_route::Distribution {
        kind: Some(grpc_route::distribution::Kind::RandomAvailable(
            grpc_route::distribution::RandomAvailable {
                backends: backends
                    .into_iter()
                    .map(|(backend, weight)| grpc_route::WeightedRouteBackend {
                        backend: Some(grpc_route::RouteBackend {
                            backend: Some(backend),
                            ..Default::default()
                        }),
                        weight,
                    })
                    .collect(),
            },
        )),
    }
}

/// Whether a non-empty list of backends has no weight to send traffic by.
pub(crate) fn all_zero(backends: &[(outbound::Backend, u32)]) -> bool {
    !backends.is_empty() && backends.iter().all(|(_, w)| *w == 0)
}
