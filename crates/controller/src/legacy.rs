//! Linkerd's older traffic resources as outbound policy, for services no
//! HTTPRoute attaches to: a ServiceProfile's routes (with their retries and
//! timeouts), its `dstOverrides` and an SMI TrafficSplit as the weights of
//! every route, the default catch-all route included; and the profile's
//! retry budget as weft's addition.

use crate::{
    outbound::backend_for,
    profile::service_profile,
    traffic::{self, Listed, ServiceTraffic},
};
use linkerd2_proxy_api::{
    http_route::{HttpRouteMatch, PathMatch, path_match},
    http_types::HttpMethod,
    meta::{Metadata, Resource as MetaResource, metadata},
    outbound::{Backend, HttpRoute, http_route},
};
use weft_store::{
    Index, Kind, Resource, ServicePort,
    traffic::{
        ProfileRoute, RequestSpec, ServiceProfileSpec, TrafficSplitSpec,
        annotations::{Retry, Timeouts},
        parse_duration, quantity_milli, split_authority,
    },
};

/// A ServiceProfile's `isRetryable` routes retry this many times.
const PROFILE_RETRIES: u32 = 3;

/// The HTTP routes of a service without HTTPRoutes: its ServiceProfile's
/// routes, then `default` (the catch-all route to the service), all with
/// the profile's `dstOverrides` (else a TrafficSplit's backends) as their
/// weighted backends, and the Service's retry and timeout annotations.
pub(crate) fn http_routes(
    index: &Index,
    sp: &ServicePort,
    svc: &ServiceTraffic,
    mut default: HttpRoute,
) -> Listed<HttpRoute> {
    let profile = service_profile(index, sp);
    let overrides = profile.as_ref().map(|(_, p)| overrides(index, sp, p)).filter(|o| !o.is_empty());
    let backends = overrides.or_else(|| split(index, sp));
    let mut listed = Listed::default();
    if let Some((resource, spec)) = &profile {
        for route in &spec.routes {
            match profile_route(index, sp, resource, route, backends.as_deref(), svc) {
                Ok(route) => listed.push(route, vec![]),
                Err(reason) => tracing::warn!(
                    profile = resource.metadata().name.as_deref().unwrap_or_default(),
                    route = %route.name,
                    %reason,
                    "ServiceProfile route left out of the outbound policy; its requests take the default route"
                ),
            }
        }
    }
    let rt = svc.route();
    for rule in &mut default.rules {
        if let Some(backends) = &backends {
            if traffic::all_zero(backends) {
                rule.filters.insert(0, traffic::no_backends_http());
            }
            rule.backends = Some(traffic::http_distribution(backends.clone()));
        }
        rule.retry = rt.http_retry();
        rule.timeouts = rt.timeouts(Timeouts::default());
    }
    listed.push(default, vec![]);
    listed
}

/// The retry budget of the service's ServiceProfile, if it sets one.
pub(crate) fn retry_budget(index: &Index, sp: &ServicePort) -> Option<weft_api::RetryBudget> {
    let (_, spec) = service_profile(index, sp)?;
    let b = spec.retry_budget?;
    Some(weft_api::RetryBudget {
        retry_ratio: b.retry_ratio,
        min_retries_per_second: b.min_retries_per_second,
        ttl: parse_duration(&b.ttl).ok().and_then(traffic::duration),
    })
}

fn profile_route(
    index: &Index,
    sp: &ServicePort,
    resource: &Resource,
    route: &ProfileRoute,
    backends: Option<&[(Backend, u32)]>,
    svc: &ServiceTraffic,
) -> Result<HttpRoute, String> {
    let condition = route.condition.as_ref().ok_or("condition is required")?;
    let matches = conditions(condition).map_err(|e| format!("condition{e}"))?;
    let mut rt = svc.route();
    if route.is_retryable {
        // Linkerd retries what the route's response classes call failures
        // (5xx when they say nothing about statuses).
        let mut ranges: Vec<(u16, u16)> = route
            .response_classes
            .iter()
            .filter(|c| c.is_failure)
            .filter_map(|c| c.condition.as_ref()?.status.as_ref())
            .map(|s| {
                (s.min.clamp(100, 599) as u16, if s.max == 0 { 599 } else { s.max.clamp(100, 599) as u16 })
            })
            .filter(|(lo, hi)| lo <= hi)
            .collect();
        if ranges.is_empty() {
            ranges.push((500, 599));
        }
        rt.retry = Retry {
            http: Some(ranges),
            grpc: None,
            limit: Some(PROFILE_RETRIES),
            timeout: svc.retry.timeout,
        };
    }
    let timeouts = Timeouts {
        request: route.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
        ..Default::default()
    };
    let backends = backends
        .map(<[_]>::to_vec)
        .unwrap_or_else(|| vec![(backend_for(sp, &index.config().cluster_domain), 1)]);
    let mut filters = vec![];
    if traffic::all_zero(&backends) {
        filters.push(traffic::no_backends_http());
    }
    let meta = resource.metadata();
    Ok(HttpRoute {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Resource(MetaResource {
                group: "linkerd.io".into(),
                kind: "ServiceProfile".into(),
                name: meta.name.clone().unwrap_or_default(),
                namespace: meta.namespace.clone().unwrap_or_default(),
                section: route.name.clone(),
                port: 0,
            })),
        }),
        hosts: vec![],
        rules: vec![http_route::Rule {
            matches,
            filters,
            backends: Some(traffic::http_distribution(backends)),
            timeouts: rt.timeouts(timeouts),
            retry: rt.http_retry(),
            ..Default::default()
        }],
    })
}

/// A request condition as route matches, any of which may hold: `all`
/// folds into one match, `any` into several; `not` has no route match.
fn conditions(c: &RequestSpec) -> Result<Vec<HttpRouteMatch>, String> {
    if c.not.is_some() {
        return Err(".not cannot be expressed as an outbound route match".into());
    }
    let own = HttpRouteMatch {
        method: c
            .method
            .as_deref()
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .map(HttpMethod::from),
        // Profile regexes match the whole path.
        path: c
            .path_regex
            .as_ref()
            .map(|r| PathMatch { kind: Some(path_match::Kind::Regex(format!("^(?:{r})$"))) }),
        ..Default::default()
    };
    let mut acc = vec![own];
    for (i, part) in c.all.iter().enumerate() {
        acc = product(acc, conditions(part).map_err(|e| format!(".all[{i}]{e}"))?)?;
    }
    if !c.any.is_empty() {
        let mut alternatives = vec![];
        for (i, part) in c.any.iter().enumerate() {
            alternatives.extend(conditions(part).map_err(|e| format!(".any[{i}]{e}"))?);
        }
        acc = product(acc, alternatives)?;
    }
    Ok(acc)
}

/// Every pairing of two lists of matches, each pair as one match.
fn product(left: Vec<HttpRouteMatch>, right: Vec<HttpRouteMatch>) -> Result<Vec<HttpRouteMatch>, String> {
    let mut out = vec![];
    for l in &left {
        for r in &right {
            out.push(HttpRouteMatch {
                path: both(&l.path, &r.path, "pathRegex")?,
                method: both(&l.method, &r.method, "method")?,
                ..Default::default()
            });
        }
    }
    Ok(out)
}

/// One of two conditions, or both when they are the same.
fn both<T: Clone + PartialEq>(a: &Option<T>, b: &Option<T>, what: &str) -> Result<Option<T>, String> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => {
            Err(format!(": two different {what}s cannot both be matched by one route"))
        }
        (a, b) => Ok(a.clone().or_else(|| b.clone())),
    }
}

fn overrides(index: &Index, sp: &ServicePort, spec: &ServiceProfileSpec) -> Vec<(Backend, u32)> {
    let domain = &index.config().cluster_domain;
    spec.dst_overrides
        .iter()
        .filter_map(|o| {
            let (name, namespace, port) = split_authority(&o.authority).ok()?;
            let target = ServicePort {
                namespace: namespace.unwrap_or_else(|| sp.namespace.clone()),
                name,
                port: port.unwrap_or(sp.port),
            };
            Some((backend_for(&target, domain), quantity_milli(&o.weight).ok()?))
        })
        .collect()
}

/// The backends of the (first, by name) TrafficSplit whose apex is the
/// service.
fn split(index: &Index, sp: &ServicePort) -> Option<Vec<(Backend, u32)>> {
    let domain = &index.config().cluster_domain;
    index.in_namespace(Kind::TrafficSplit, &sp.namespace).find_map(|r| {
        let Resource::Other(g) = r else { return None };
        let spec: TrafficSplitSpec = serde_json::from_value(g.spec.clone()).ok()?;
        let apex = spec.service.split('.').next().unwrap_or_default();
        if apex != sp.name || spec.backends.is_empty() {
            return None;
        }
        let backends = spec
            .backends
            .iter()
            .map(|b| {
                let target =
                    ServicePort { namespace: sp.namespace.clone(), name: b.service.clone(), port: sp.port };
                (backend_for(&target, domain), quantity_milli(&b.weight).unwrap_or(0))
            })
            .collect();
        Some(backends)
    })
}
