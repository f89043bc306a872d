//! ServiceProfiles (`linkerd.io/v1alpha2`) as `DestinationProfile`s: a
//! service's named routes with their request conditions, response classes,
//! retryability and timeouts, its retry budget and its traffic split
//! (`dstOverrides`). weft-proxy acts on them with traffic management; the
//! stock proxy already does.

use linkerd2_proxy_api::{
    destination::{
        DestinationProfile, HttpStatusRange, PathMatch, RequestMatch, ResponseClass, ResponseMatch,
        RetryBudget, Route, WeightedDst, request_match, response_match,
    },
    http_types::HttpMethod,
};
use std::time::Duration;
use weft_store::{
    Index, Key, Kind, Resource, ServicePort,
    endpoints::opaque_ports,
    traffic::{RequestSpec, ResponseSpec, ServiceProfileSpec, quantity_milli},
};

/// The profile for a service port: its ServiceProfile (named by the
/// service's FQDN, in its namespace) if any, on top of the name and
/// opacity every service has.
pub(crate) fn compute(index: &Index, sp: &ServicePort) -> DestinationProfile {
    let domain = &index.config().cluster_domain;
    let fqdn = format!("{}.{}.svc.{domain}", sp.name, sp.namespace);
    let opaque = index
        .service(&sp.namespace, &sp.name)
        .is_some_and(|svc| opaque_ports(svc.metadata.annotations.as_ref()).contains(&sp.port));
    let mut profile =
        DestinationProfile { fully_qualified_name: fqdn, opaque_protocol: opaque, ..Default::default() };
    let Some((_, spec)) = service_profile(index, sp) else { return profile };
    profile.routes = spec
        .routes
        .iter()
        .map(|r| Route {
            condition: r.condition.as_ref().map(request_match),
            response_classes: r
                .response_classes
                .iter()
                .map(|c| ResponseClass {
                    condition: c.condition.as_ref().map(response_match),
                    is_failure: c.is_failure,
                })
                .collect(),
            metrics_labels: [("route".to_string(), r.name.clone())].into(),
            is_retryable: r.is_retryable,
            timeout: r
                .timeout
                .as_deref()
                .and_then(parse_duration)
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        })
        .collect();
    profile.retry_budget = spec.retry_budget.map(|b| RetryBudget {
        retry_ratio: b.retry_ratio,
        min_retries_per_second: b.min_retries_per_second,
        ttl: parse_duration(&b.ttl).and_then(|d| prost_types::Duration::try_from(d).ok()),
    });
    profile.dst_overrides = spec
        .dst_overrides
        .iter()
        .map(|o| WeightedDst {
            authority: o.authority.clone(),
            weight: quantity_milli(&o.weight).unwrap_or(0),
            ..Default::default()
        })
        .collect();
    profile
}

fn request_match(spec: &RequestSpec) -> RequestMatch {
    let mut matches = Vec::new();
    if let Some(method) = spec.method.as_deref().and_then(|m| http::Method::from_bytes(m.as_bytes()).ok()) {
        matches.push(request_match::Match::Method(HttpMethod::from(method)));
    }
    if let Some(regex) = &spec.path_regex {
        matches.push(request_match::Match::Path(PathMatch { regex: regex.clone() }));
    }
    if !spec.all.is_empty() {
        matches.push(request_match::Match::All(request_match::Seq {
            matches: spec.all.iter().map(request_match).collect(),
        }));
    }
    if !spec.any.is_empty() {
        matches.push(request_match::Match::Any(request_match::Seq {
            matches: spec.any.iter().map(request_match).collect(),
        }));
    }
    if let Some(not) = &spec.not {
        matches.push(request_match::Match::Not(Box::new(request_match(not))));
    }
    // Several conditions in one spec must all hold.
    let r#match = match matches.len() {
        0 => None,
        1 => matches.pop(),
        _ => Some(request_match::Match::All(request_match::Seq {
            matches: matches.into_iter().map(|m| RequestMatch { r#match: Some(m) }).collect(),
        })),
    };
    RequestMatch { r#match }
}

fn response_match(spec: &ResponseSpec) -> ResponseMatch {
    let mut matches = Vec::new();
    if let Some(status) = &spec.status {
        let max = if status.max == 0 { 599 } else { status.max };
        matches.push(response_match::Match::Status(HttpStatusRange { min: status.min, max }));
    }
    if !spec.all.is_empty() {
        matches.push(response_match::Match::All(response_match::Seq {
            matches: spec.all.iter().map(response_match).collect(),
        }));
    }
    if !spec.any.is_empty() {
        matches.push(response_match::Match::Any(response_match::Seq {
            matches: spec.any.iter().map(response_match).collect(),
        }));
    }
    if let Some(not) = &spec.not {
        matches.push(response_match::Match::Not(Box::new(response_match(not))));
    }
    let r#match = match matches.len() {
        0 => None,
        1 => matches.pop(),
        _ => Some(response_match::Match::All(response_match::Seq {
            matches: matches.into_iter().map(|m| ResponseMatch { r#match: Some(m) }).collect(),
        })),
    };
    ResponseMatch { r#match }
}

/// A duration the store already checked.
fn parse_duration(s: &str) -> Option<Duration> {
    weft_store::traffic::parse_duration(s).ok()
}

/// The ServiceProfile of a service port, if any: named by the service's
/// FQDN, in its namespace.
pub(crate) fn service_profile<'a>(
    index: &'a Index,
    sp: &ServicePort,
) -> Option<(&'a Resource, ServiceProfileSpec)> {
    let domain = &index.config().cluster_domain;
    let key = Key {
        kind: Kind::ServiceProfile,
        namespace: sp.namespace.clone(),
        name: format!("{}.{}.svc.{domain}", sp.name, sp.namespace),
    };
    let resource = index.get(&key)?;
    let Resource::Other(generic) = resource else { return None };
    match serde_json::from_value(generic.spec.clone()) {
        Ok(spec) => Some((resource, spec)),
        Err(error) => {
            tracing::warn!(%key, %error, "ServiceProfile not usable; serving the default profile");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_profiles_become_profiles() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: { name: books, namespace: shop }
spec: { ports: [{ port: 80 }] }
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: { name: books.shop.svc.cluster.local, namespace: shop }
spec:
  routes:
  - name: GET /books/{id}
    condition: { method: GET, pathRegex: '/books/\d+' }
    responseClasses: [{ condition: { status: { min: 500, max: 599 } }, isFailure: true }]
    isRetryable: true
    timeout: 300ms
  retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s }
  dstOverrides:
  - { authority: books-v1.shop.svc.cluster.local:80, weight: 900m }
  - { authority: books-v2.shop.svc.cluster.local:80, weight: 100m }
"#;
        let mut index = Index::new(weft_store::Config::default());
        index.replace_source("a", Resource::parse_all(text).unwrap());
        let sp = ServicePort { namespace: "shop".into(), name: "books".into(), port: 80 };
        let profile = compute(&index, &sp);
        assert_eq!(profile.fully_qualified_name, "books.shop.svc.cluster.local");
        let route = &profile.routes[0];
        assert_eq!(route.metrics_labels["route"], "GET /books/{id}");
        assert!(route.is_retryable);
        assert_eq!(route.timeout, Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 }));
        let Some(request_match::Match::All(all)) = route.condition.as_ref().and_then(|c| c.r#match.clone())
        else {
            panic!("method and path must both hold")
        };
        assert_eq!(all.matches.len(), 2);
        assert!(route.response_classes[0].is_failure);
        assert_eq!(profile.retry_budget.as_ref().unwrap().min_retries_per_second, 10);
        let weights: Vec<u32> = profile.dst_overrides.iter().map(|d| d.weight).collect();
        assert_eq!(weights, [900, 100]);
    }
}
