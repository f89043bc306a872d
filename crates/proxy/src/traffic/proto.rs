//! An outbound policy (with weft's additions) as a [`Router`]: protobuf to
//! domain, once per update, at the edge. Anything malformed makes the
//! whole policy unusable, so a half-understood policy never routes.

use super::metrics::RouteLabels;
use super::{
    Abort, Backend, HeaderModifier, Meta, PathModifier, Ratio, Redirect, RequestMatch, Retry, RetryOn,
    Rewrite, Route, Router, Rule, Timeouts, WeightedBackend, accrual,
};
use crate::{
    discovery::{balance::Balancer, proto::InvalidPolicy},
    matching,
};
use http::{HeaderName, HeaderValue, StatusCode};
use linkerd2_proxy_api::{
    http_route as api,
    meta::{Metadata, metadata},
    outbound::{self as out, proxy_protocol},
};
use std::{sync::Arc, time::Duration};
use tower::retry::budget::TpsBudget;

/// A backend as the policy describes it, before it has a balancer.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    pub meta: Meta,
    pub name: String,
    pub failfast: Duration,
    pub default_rtt: Duration,
    pub decay: Duration,
}

const DEFAULT_FAILFAST: Duration = Duration::from_secs(3);
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DEFAULT_DECAY: Duration = Duration::from_secs(10);
const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
const DEFAULT_BACKOFF: (Duration, Duration) = (Duration::from_millis(25), Duration::from_millis(250));

/// Binds backends to balancers (one per discovery name, shared).
pub trait Bind {
    fn balancer(&mut self, backend: &BackendSpec) -> Arc<Balancer>;
}

impl<F: FnMut(&BackendSpec) -> Arc<Balancer>> Bind for F {
    fn balancer(&mut self, backend: &BackendSpec) -> Arc<Balancer> {
        self(backend)
    }
}

/// A rule's weighted backends from its distribution: the HTTP and gRPC
/// protos spell the same messages as different types.
macro_rules! backends {
    ($dist:expr, $($kind:ident)::+, $bind:expr) => {
        match $dist.and_then(|d| d.kind.as_ref()) {
            Some($($kind)::+::FirstAvailable(fa)) => match fa.backends.first().and_then(|b| b.backend.as_ref()) {
                Some(b) => vec![WeightedBackend { backend: $bind(b)?, weight: 1 }],
                None => vec![],
            },
            Some($($kind)::+::RandomAvailable(ra)) => ra
                .backends
                .iter()
                .filter_map(|wb| Some((wb.backend.as_ref()?.backend.as_ref()?, wb.weight)))
                .map(|(b, weight)| Ok(WeightedBackend { backend: $bind(b)?, weight }))
                .collect::<Result<_, InvalidPolicy>>()?,
            Some($($kind)::+::Empty(_)) | None => vec![],
        }
    };
}

/// The router for an HTTP or gRPC policy; `None` for an opaque one.
pub fn router(
    policy: &weft_api::OutboundPolicy,
    bind: &mut dyn Bind,
) -> Result<Option<Router>, InvalidPolicy> {
    let parent = Arc::new(meta(policy.metadata.as_ref()));
    let kind = policy.protocol.as_ref().and_then(|p| p.kind.as_ref()).ok_or(InvalidPolicy::NoProtocol)?;
    let ext = policy.weft.clone().unwrap_or_default();
    let ext_for = |route: usize, rule: usize| {
        ext.rules.iter().find(|r| r.route as usize == route && r.rule as usize == rule)
    };
    let (http, grpc, grpc_only, accrual) = match kind {
        proxy_protocol::Kind::Opaque(_) | proxy_protocol::Kind::Tls(_) => return Ok(None),
        proxy_protocol::Kind::Detect(d) => {
            // The controller sends the same routes for HTTP/1 and HTTP/2.
            let (routes, accrual) = match (&d.http1, &d.http2) {
                (Some(h), _) => (h.routes.as_slice(), h.failure_accrual.as_ref()),
                (None, Some(h)) => (h.routes.as_slice(), h.failure_accrual.as_ref()),
                (None, None) => (&[][..], None),
            };
            (routes, &[][..], false, accrual)
        }
        proxy_protocol::Kind::Http1(h) => (h.routes.as_slice(), &[][..], false, h.failure_accrual.as_ref()),
        proxy_protocol::Kind::Http2(h) => (h.routes.as_slice(), &[][..], false, h.failure_accrual.as_ref()),
        proxy_protocol::Kind::Grpc(g) => (&[][..], g.routes.as_slice(), true, g.failure_accrual.as_ref()),
    };
    let accrual = accrual.map(consecutive).transpose()?.flatten().map(Arc::new);

    let mut bind_backend = |b: &out::Backend| -> Result<Arc<Backend>, InvalidPolicy> {
        let spec = backend_spec(b)?;
        let balancer = bind.balancer(&spec);
        Ok(Arc::new(Backend {
            meta: Arc::new(spec.meta),
            name: spec.name,
            balancer,
            failfast: spec.failfast,
            accrual: accrual.clone(),
        }))
    };

    let mut http_routes = Vec::with_capacity(http.len());
    for (i, route) in http.iter().enumerate() {
        let route_meta = Arc::new(meta(route.metadata.as_ref()));
        let mut rules = Vec::with_capacity(route.rules.len());
        for (j, rule) in route.rules.iter().enumerate() {
            let mut out = Rule::new(
                RouteLabels { parent: parent.clone(), route: route_meta.clone() },
                rule.matches
                    .iter()
                    .map(matching::http_match)
                    .collect::<Result<_, _>>()
                    .map_err(InvalidPolicy::Field)?,
                #[allow(deprecated)]
                timeouts(rule.timeouts.as_ref(), rule.request_timeout.as_ref())?,
                rule.retry.as_ref().map(http_retry).transpose()?,
            );
            for filter in &rule.filters {
                match &filter.kind {
                    Some(out::http_route::filter::Kind::FailureInjector(f)) => {
                        out.abort = Some(Abort {
                            ratio: ratio(f.ratio.as_ref()),
                            status: u16::try_from(f.status)
                                .map_err(|_| InvalidPolicy::Field("failure status"))?,
                            grpc: false,
                            message: f.message.clone(),
                        })
                    }
                    Some(out::http_route::filter::Kind::RequestHeaderModifier(m)) => {
                        out.request_headers = Some(modifier(m.add.as_ref(), m.set.as_ref(), &m.remove)?)
                    }
                    Some(out::http_route::filter::Kind::ResponseHeaderModifier(m)) => {
                        out.response_headers = Some(modifier(m.add.as_ref(), m.set.as_ref(), &m.remove)?)
                    }
                    Some(out::http_route::filter::Kind::Redirect(r)) => out.redirect = Some(redirect(r)?),
                    None => return Err(InvalidPolicy::Field("filter")),
                }
            }
            out.backends =
                backends!(rule.backends.as_ref(), out::http_route::distribution::Kind, bind_backend);
            extend(&mut out, ext_for(i, j), &mut bind_backend)?;
            rules.push(out);
        }
        http_routes.push(Route { meta: route_meta, rules });
    }

    let mut grpc_routes = Vec::with_capacity(grpc.len());
    for (i, route) in grpc.iter().enumerate() {
        let route_meta = Arc::new(meta(route.metadata.as_ref()));
        let mut rules = Vec::with_capacity(route.rules.len());
        for (j, rule) in route.rules.iter().enumerate() {
            let mut out = Rule::new(
                RouteLabels { parent: parent.clone(), route: route_meta.clone() },
                rule.matches
                    .iter()
                    .map(matching::grpc_match)
                    .collect::<Result<_, _>>()
                    .map_err(InvalidPolicy::Field)?,
                #[allow(deprecated)]
                timeouts(rule.timeouts.as_ref(), rule.request_timeout.as_ref())?,
                rule.retry.as_ref().map(grpc_retry).transpose()?,
            );
            for filter in &rule.filters {
                match &filter.kind {
                    Some(out::grpc_route::filter::Kind::FailureInjector(f)) => {
                        out.abort = Some(Abort {
                            ratio: ratio(f.ratio.as_ref()),
                            status: u16::try_from(f.code)
                                .map_err(|_| InvalidPolicy::Field("failure code"))?,
                            grpc: true,
                            message: f.message.clone(),
                        })
                    }
                    Some(out::grpc_route::filter::Kind::RequestHeaderModifier(m)) => {
                        out.request_headers = Some(modifier(m.add.as_ref(), m.set.as_ref(), &m.remove)?)
                    }
                    None => return Err(InvalidPolicy::Field("filter")),
                }
            }
            out.backends =
                backends!(rule.backends.as_ref(), out::grpc_route::distribution::Kind, bind_backend);
            extend(&mut out, ext_for(i, j), &mut bind_backend)?;
            rules.push(out);
        }
        grpc_routes.push(Route { meta: route_meta, rules });
    }

    let budget = match &ext.retry_budget {
        Some(b) => {
            let ttl = match b.ttl {
                Some(d) => duration(d, "retry budget ttl")?,
                None => Duration::from_secs(10),
            };
            if !(0.0..=1000.0).contains(&b.retry_ratio) {
                return Err(InvalidPolicy::Field("retry budget ratio"));
            }
            TpsBudget::new(
                ttl.clamp(Duration::from_secs(1), Duration::from_secs(60)),
                b.min_retries_per_second.min(1_000_000),
                b.retry_ratio,
            )
        }
        None => TpsBudget::new(Duration::from_secs(10), 10, 0.2),
    };
    Ok(Some(Router { parent, http: http_routes, grpc: grpc_routes, grpc_only, budget: Arc::new(budget) }))
}

/// The first backend the policy names, for connections balanced as TCP.
pub fn first_backend(policy: &weft_api::OutboundPolicy) -> Option<out::Backend> {
    use out::{
        grpc_route::distribution::Kind as G, http_route::distribution::Kind as H,
        opaque_route::distribution::Kind as O,
    };
    let kind = policy.protocol.as_ref()?.kind.as_ref()?;
    let http = |routes: &[out::HttpRoute]| {
        routes.iter().flat_map(|r| &r.rules).find_map(|rule| match rule.backends.as_ref()?.kind.as_ref()? {
            H::FirstAvailable(fa) => fa.backends.first()?.backend.clone(),
            H::RandomAvailable(ra) => ra.backends.first()?.backend.as_ref()?.backend.clone(),
            H::Empty(_) => None,
        })
    };
    let opaque = |o: &proxy_protocol::Opaque| {
        o.routes.iter().flat_map(|r| &r.rules).find_map(|rule| {
            match rule.backends.as_ref()?.kind.as_ref()? {
                O::FirstAvailable(fa) => fa.backends.first()?.backend.clone(),
                O::RandomAvailable(ra) => ra.backends.first()?.backend.as_ref()?.backend.clone(),
                O::Empty(_) => None,
            }
        })
    };
    match kind {
        proxy_protocol::Kind::Opaque(o) => opaque(o),
        proxy_protocol::Kind::Detect(d) => {
            d.http1.as_ref().and_then(|h| http(&h.routes)).or_else(|| d.opaque.as_ref().and_then(opaque))
        }
        proxy_protocol::Kind::Http1(h) => http(&h.routes),
        proxy_protocol::Kind::Http2(h) => http(&h.routes),
        proxy_protocol::Kind::Grpc(g) => g.routes.iter().flat_map(|r| &r.rules).find_map(|rule| {
            match rule.backends.as_ref()?.kind.as_ref()? {
                G::FirstAvailable(fa) => fa.backends.first()?.backend.clone(),
                G::RandomAvailable(ra) => ra.backends.first()?.backend.as_ref()?.backend.clone(),
                G::Empty(_) => None,
            }
        }),
        proxy_protocol::Kind::Tls(_) => None,
    }
}

pub fn backend_spec(backend: &out::Backend) -> Result<BackendSpec, InvalidPolicy> {
    let failfast = match backend.queue.as_ref().and_then(|q| q.failfast_timeout) {
        Some(d) => duration(d, "failfast_timeout")?,
        None => DEFAULT_FAILFAST,
    };
    let Some(out::backend::Kind::Balancer(p2c)) = &backend.kind else {
        return Err(InvalidPolicy::NotABalancer);
    };
    let Some(out::backend::endpoint_discovery::Kind::Dst(dst)) =
        p2c.discovery.as_ref().and_then(|d| d.kind.as_ref())
    else {
        return Err(InvalidPolicy::NotABalancer);
    };
    let (default_rtt, decay) = match &p2c.load {
        Some(out::backend::balance_p2c::Load::PeakEwma(e)) => (e.default_rtt, e.decay),
        Some(out::backend::balance_p2c::Load::PenaltyPeakEwma(e)) => (e.default_rtt, e.decay),
        None => (None, None),
    };
    Ok(BackendSpec {
        meta: meta(backend.metadata.as_ref()),
        name: dst.path.clone(),
        failfast,
        default_rtt: default_rtt.map(|d| duration(d, "default_rtt")).transpose()?.unwrap_or(DEFAULT_RTT),
        decay: decay.map(|d| duration(d, "decay")).transpose()?.unwrap_or(DEFAULT_DECAY),
    })
}

fn extend(
    rule: &mut Rule,
    ext: Option<&weft_api::RuleExtension>,
    bind: &mut dyn FnMut(&out::Backend) -> Result<Arc<Backend>, InvalidPolicy>,
) -> Result<(), InvalidPolicy> {
    let Some(ext) = ext else { return Ok(()) };
    if let Some(delay) = &ext.delay {
        let d = delay.duration.ok_or(InvalidPolicy::Field("delay duration"))?;
        rule.delay = Some((ratio(delay.ratio.as_ref()), duration(d, "delay duration")?));
    }
    for mirror in &ext.mirrors {
        let backend = mirror.backend.as_ref().ok_or(InvalidPolicy::Field("mirror backend"))?;
        rule.mirrors.push((bind(backend)?, ratio(mirror.ratio.as_ref())));
    }
    if let Some(rw) = &ext.url_rewrite {
        rule.rewrite = Some(Rewrite {
            host: (!rw.hostname.is_empty()).then(|| rw.hostname.clone()),
            path: rw.path.as_ref().map(path_modifier).transpose()?,
        });
    }
    if let Some(fa) = &ext.failure_accrual {
        if let Some(policy) = consecutive(fa)? {
            rule.breaker = Some(Arc::new(accrual::RouteAccrual::new(policy)));
        }
    }
    Ok(())
}

impl Rule {
    fn new(
        labels: RouteLabels,
        matches: Vec<RequestMatch>,
        timeouts: Timeouts,
        retry: Option<Retry>,
    ) -> Self {
        Rule {
            labels,
            series: Default::default(),
            matches,
            request_headers: None,
            response_headers: None,
            redirect: None,
            abort: None,
            delay: None,
            rewrite: None,
            backends: vec![],
            mirrors: vec![],
            timeouts,
            retry,
            breaker: None,
        }
    }
}

fn meta(m: Option<&Metadata>) -> Meta {
    match m.and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Resource(r)) => Meta {
            group: r.group.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            port: u16::try_from(r.port).unwrap_or(0),
            section: r.section.clone(),
        },
        Some(metadata::Kind::Default(name)) => {
            Meta { kind: "default".into(), name: name.clone(), ..Meta::default() }
        }
        None => Meta::default(),
    }
}

fn duration(d: prost_types::Duration, what: &'static str) -> Result<Duration, InvalidPolicy> {
    Duration::try_from(d).map_err(|_| InvalidPolicy::Duration(what))
}

fn ratio(r: Option<&api::Ratio>) -> Ratio {
    match r {
        Some(r) if r.denominator > 0 => Ratio(f64::from(r.numerator) / f64::from(r.denominator)),
        Some(_) => Ratio(0.0),
        None => Ratio::ALL,
    }
}

fn header_name(name: &str) -> Result<HeaderName, InvalidPolicy> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| InvalidPolicy::Field("header name"))
}

fn modifier(
    add: Option<&linkerd2_proxy_api::http_types::Headers>,
    set: Option<&linkerd2_proxy_api::http_types::Headers>,
    remove: &[String],
) -> Result<HeaderModifier, InvalidPolicy> {
    let pairs = |h: Option<&linkerd2_proxy_api::http_types::Headers>| {
        h.map(|h| h.headers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|h| {
                let value =
                    HeaderValue::from_bytes(&h.value).map_err(|_| InvalidPolicy::Field("header value"))?;
                Ok((header_name(&h.name)?, value))
            })
            .collect::<Result<Vec<_>, InvalidPolicy>>()
    };
    Ok(HeaderModifier {
        add: pairs(add)?,
        set: pairs(set)?,
        remove: remove.iter().map(|n| header_name(n)).collect::<Result<_, _>>()?,
    })
}

fn path_modifier(p: &api::PathModifier) -> Result<PathModifier, InvalidPolicy> {
    match &p.replace {
        Some(api::path_modifier::Replace::Full(f)) => Ok(PathModifier::Full(f.clone())),
        Some(api::path_modifier::Replace::Prefix(f)) => Ok(PathModifier::Prefix(f.clone())),
        None => Err(InvalidPolicy::Field("path modifier")),
    }
}

fn redirect(r: &api::RequestRedirect) -> Result<Redirect, InvalidPolicy> {
    let scheme = r
        .scheme
        .clone()
        .map(http::uri::Scheme::try_from)
        .transpose()
        .map_err(|_| InvalidPolicy::Field("redirect scheme"))?
        .map(|s| s.to_string());
    let status = match r.status {
        0 => StatusCode::FOUND,
        s => StatusCode::from_u16(u16::try_from(s).unwrap_or(0))
            .ok()
            .filter(|s| s.is_redirection())
            .ok_or(InvalidPolicy::Field("redirect status"))?,
    };
    Ok(Redirect {
        scheme,
        host: (!r.host.is_empty()).then(|| r.host.clone()),
        path: r.path.as_ref().map(path_modifier).transpose()?,
        port: u16::try_from(r.port).ok().filter(|p| *p != 0),
        status,
    })
}

/// Rules still carry the deprecated `requestTimeout` from older
/// controllers; it is the request timeout when `timeouts` has none.
fn timeouts(
    t: Option<&api::Timeouts>,
    deprecated: Option<&prost_types::Duration>,
) -> Result<Timeouts, InvalidPolicy> {
    let d = |d: Option<prost_types::Duration>, what| d.map(|d| duration(d, what)).transpose();
    let mut out = Timeouts {
        request: d(t.and_then(|t| t.request), "request timeout")?,
        response: d(t.and_then(|t| t.response), "response timeout")?,
    };
    if out.request.is_none() {
        out.request = d(deprecated.copied(), "request timeout")?;
    }
    // A zero timeout means none.
    out.request = out.request.filter(|d| !d.is_zero());
    out.response = out.response.filter(|d| !d.is_zero());
    Ok(out)
}

fn backoff(b: Option<&out::ExponentialBackoff>) -> Result<(Duration, Duration), InvalidPolicy> {
    let Some(b) = b else { return Ok(DEFAULT_BACKOFF) };
    let min = b.min_backoff.map(|d| duration(d, "min backoff")).transpose()?.unwrap_or(DEFAULT_BACKOFF.0);
    let max = b.max_backoff.map(|d| duration(d, "max backoff")).transpose()?.unwrap_or(DEFAULT_BACKOFF.1);
    Ok((min, max.max(min)))
}

fn retry_common(
    max_retries: u32,
    max_request_bytes: u32,
    timeout: Option<prost_types::Duration>,
    b: Option<&out::ExponentialBackoff>,
    on: RetryOn,
) -> Result<Retry, InvalidPolicy> {
    Ok(Retry {
        max_retries,
        max_request_bytes: if max_request_bytes == 0 {
            DEFAULT_MAX_REQUEST_BYTES
        } else {
            max_request_bytes as usize
        },
        on,
        timeout: timeout.map(|d| duration(d, "retry timeout")).transpose()?.filter(|d| !d.is_zero()),
        backoff: backoff(b)?,
    })
}

fn http_retry(r: &out::http_route::Retry) -> Result<Retry, InvalidPolicy> {
    let ranges = r
        .conditions
        .as_ref()
        .map(|c| c.status_ranges.iter().map(|s| (s.start as u16, s.end as u16)).collect())
        .unwrap_or_else(|| vec![(500, 599)]);
    retry_common(r.max_retries, r.max_request_bytes, r.timeout, r.backoff.as_ref(), RetryOn::Http(ranges))
}

fn grpc_retry(r: &out::grpc_route::Retry) -> Result<Retry, InvalidPolicy> {
    let mut codes = vec![];
    if let Some(c) = &r.conditions {
        for (on, code) in [
            (c.cancelled, 1),
            (c.deadine_exceeded, 4),
            (c.resource_exhausted, 8),
            (c.internal, 13),
            (c.unavailable, 14),
        ] {
            if on {
                codes.push(code);
            }
        }
    }
    retry_common(r.max_retries, r.max_request_bytes, r.timeout, r.backoff.as_ref(), RetryOn::Grpc(codes))
}

fn consecutive(fa: &out::FailureAccrual) -> Result<Option<accrual::Consecutive>, InvalidPolicy> {
    match &fa.kind {
        Some(out::failure_accrual::Kind::ConsecutiveFailures(c)) => {
            let (min, max) = match &c.backoff {
                Some(b) => backoff(Some(b))?,
                None => (Duration::from_secs(1), Duration::from_secs(60)),
            };
            let jitter = c.backoff.as_ref().map_or(0.5, |b| b.jitter_ratio);
            Ok(Some(accrual::Consecutive {
                max_failures: c.max_failures.max(1),
                min_penalty: min,
                max_penalty: max,
                jitter: if jitter.is_finite() { jitter.clamp(0.0, 100.0) } else { 0.0 },
            }))
        }
        // Linkerd's success-rate accrual is not built; the consecutive
        // bound it carries still applies.
        Some(out::failure_accrual::Kind::Unified(u)) if u.max_consecutive_failures > 0 => {
            let (min, max) = backoff(u.backoff.as_ref())?;
            Ok(Some(accrual::Consecutive {
                max_failures: u.max_consecutive_failures,
                min_penalty: min,
                max_penalty: max,
                jitter: 0.5,
            }))
        }
        _ => Ok(None),
    }
}
