//! Outbound policies computed from resources applied to an index, checked
//! against what the stock linkerd2-proxy requires (DESIGN.md, contract 1).

use super::*;
use linkerd2_proxy_api::{
    grpc_route::GrpcRouteMatch,
    http_route::{Ratio, Timeouts, header_match, path_modifier, query_param_match},
    outbound::{FailureAccrual, GrpcRoute, failure_accrual, grpc_route},
};
use prost::Message;
use weft_store::{Config, Index, Resource};

mod legacy;
mod stock;
use stock::assert_stock_accepts;

fn sp() -> ServicePort {
    ServicePort { namespace: "shop".into(), name: "web".into(), port: 80 }
}

fn service(annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop, annotations: {{ {annotations} }} }}\nspec: {{ clusterIP: 10.96.0.10, ports: [{{ port: 80 }}] }}\n---\n"
    )
}

fn index(yaml: &str) -> Index {
    let mut index = Index::new(Config::default());
    index.replace_source("test", Resource::parse_all(yaml).expect("valid YAML"));
    index
}

/// The policy, after checking that the stock proxy would take it.
fn policy_of(yaml: &str) -> weft_api::OutboundPolicy {
    let policy = policy(&index(yaml), &sp()).expect("a policy");
    assert_stock_accepts(&policy);
    policy
}

fn http_routes(policy: &weft_api::OutboundPolicy) -> Vec<HttpRoute> {
    let Some(proxy_protocol::Kind::Detect(d)) = policy.protocol.as_ref().and_then(|p| p.kind.clone()) else {
        panic!("not detect")
    };
    d.http1.unwrap().routes
}

fn grpc_routes(policy: &weft_api::OutboundPolicy) -> (Vec<GrpcRoute>, Option<FailureAccrual>) {
    let Some(proxy_protocol::Kind::Grpc(g)) = policy.protocol.as_ref().and_then(|p| p.kind.clone()) else {
        panic!("not gRPC")
    };
    (g.routes, g.failure_accrual)
}

fn weights(backends: &Option<http_route::Distribution>) -> Vec<(String, u32)> {
    match backends.as_ref().and_then(|d| d.kind.clone()) {
        Some(http_route::distribution::Kind::RandomAvailable(r)) => r
            .backends
            .iter()
            .map(|b| (stock::dst(b.backend.as_ref().unwrap().backend.as_ref().unwrap()), b.weight))
            .collect(),
        Some(http_route::distribution::Kind::FirstAvailable(f)) => {
            f.backends.iter().map(|b| (stock::dst(b.backend.as_ref().unwrap()), 1)).collect()
        }
        other => panic!("{other:?}"),
    }
}

fn secs(s: i64, ms: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: ms * 1_000_000 })
}

fn consecutive(
    fa: &FailureAccrual,
) -> (u32, Option<prost_types::Duration>, Option<prost_types::Duration>, f32) {
    let Some(failure_accrual::Kind::ConsecutiveFailures(c)) = &fa.kind else { panic!("{fa:?}") };
    let b = c.backoff.unwrap();
    (c.max_failures, b.min_backoff, b.max_backoff, b.jitter_ratio)
}

#[test]
fn the_default_policy_has_what_the_stock_proxy_requires() {
    let policy = default_policy(&sp(), "cluster.local", false);
    assert_stock_accepts(&policy.clone().into());
    let Some(metadata::Kind::Resource(res)) = policy.metadata.as_ref().and_then(|m| m.kind.clone()) else {
        panic!("top-level metadata must name the Service");
    };
    assert_eq!((res.group.as_str(), res.kind.as_str(), res.port), ("core", "Service", 80));
    // With nothing configured the served policy is the default one, with
    // no additions.
    let served = policy_of(&service(""));
    assert_eq!(served, weft_api::OutboundPolicy::from(policy));
    assert_eq!(served.weft, None);
}

#[test]
fn opaque_ports_get_an_opaque_policy() {
    let policy = default_policy(&sp(), "cluster.local", true);
    assert!(matches!(policy.protocol.unwrap().kind, Some(proxy_protocol::Kind::Opaque(_))));
}

const HTTP_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web-routes
  namespace: shop
  annotations:
    retry.linkerd.io/limit: "4"
    fault.weft.io/abort-percent: "2.5"
    fault.weft.io/abort-status: "502"
    fault.weft.io/delay-percent: "10"
    fault.weft.io/delay: 100ms
    balancer.linkerd.io/failure-accrual: consecutive
    balancer.linkerd.io/failure-accrual-consecutive-max-failures: "3"
spec:
  parentRefs: [{ group: core, kind: Service, name: web, port: 80 }]
  rules:
  - matches:
    - path: { type: Exact, value: /login }
      method: POST
      headers: [{ name: x-user, value: alice }, { type: RegularExpression, name: x-tier, value: "gold|silver" }]
      queryParams: [{ name: v, value: "2" }, { type: RegularExpression, name: q, value: "^a" }]
    - path: { type: RegularExpression, value: "/users/[0-9]+" }
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: { add: [{ name: x-a, value: "1" }], set: [{ name: x-b, value: "2" }], remove: [x-c] }
    - type: ResponseHeaderModifier
      responseHeaderModifier: { set: [{ name: x-served-by, value: weft }] }
    - type: RequestMirror
      requestMirror: { backendRef: { name: shadow, port: 8080 }, percent: 25 }
    - type: RequestMirror
      requestMirror: { backendRef: { name: audit, namespace: ops }, fraction: { numerator: 1, denominator: 3 } }
    timeouts: { request: 10s, backendRequest: 2s }
    backendRefs: [{ name: web, port: 80, weight: 90 }, { name: web-canary, port: 80, weight: 10 }]
  - matches: [{ path: { type: PathPrefix, value: /old } }]
    filters:
    - type: RequestRedirect
      requestRedirect: { scheme: https, hostname: new.example.com, path: { type: ReplacePrefixMatch, replacePrefixMatch: /new }, port: 8443 }
  - matches: [{ path: { type: PathPrefix, value: /api } }]
    filters:
    - type: URLRewrite
      urlRewrite: { hostname: api.internal, path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 } }
"#;

const SERVICE_TRAFFIC: &str = "retry.linkerd.io/http: 5xx, retry.linkerd.io/timeout: 300ms, timeout.linkerd.io/request: 30s, timeout.linkerd.io/idle: 1m, balancer.linkerd.io/failure-accrual: consecutive";

#[test]
fn http_routes_translate_matches_filters_timeouts_retries_and_weights() {
    let policy = policy_of(&(service(SERVICE_TRAFFIC) + HTTP_ROUTE));
    let routes = http_routes(&policy);
    assert_eq!(routes.len(), 1);
    let rules = &routes[0].rules;
    assert_eq!(rules.len(), 3);

    // Matches.
    let m = &rules[0].matches;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].path.as_ref().unwrap().kind, Some(path_match::Kind::Exact("/login".into())));
    assert_eq!(m[0].method, Some(http::Method::POST.into()));
    assert_eq!(m[0].headers[0].value, Some(header_match::Value::Exact(b"alice".to_vec())));
    assert_eq!(m[0].headers[1].value, Some(header_match::Value::Regex("gold|silver".into())));
    assert_eq!(m[0].query_params[0].value, Some(query_param_match::Value::Exact("2".into())));
    assert_eq!(m[0].query_params[1].value, Some(query_param_match::Value::Regex("^a".into())));
    assert_eq!(m[1].path.as_ref().unwrap().kind, Some(path_match::Kind::Regex("/users/[0-9]+".into())));

    // Filters: the route's abort fault first, then the rule's in order.
    use http_route::filter::Kind as F;
    let kinds: Vec<_> = rules[0].filters.iter().map(|f| f.kind.clone().unwrap()).collect();
    let [F::FailureInjector(abort), F::RequestHeaderModifier(req), F::ResponseHeaderModifier(resp)] =
        &kinds[..]
    else {
        panic!("{kinds:?}")
    };
    assert_eq!((abort.status, abort.ratio), (502, Some(Ratio { numerator: 2500, denominator: 100_000 })));
    assert_eq!(req.add.as_ref().unwrap().headers[0].name, "x-a");
    assert_eq!(req.set.as_ref().unwrap().headers[0].value, b"2");
    assert_eq!(req.remove, ["x-c"]);
    assert_eq!(resp.set.as_ref().unwrap().headers[0].name, "x-served-by");
    let Some(F::Redirect(redirect)) = rules[1].filters[1].kind.clone() else {
        panic!("{:?}", rules[1].filters)
    };
    assert_eq!((redirect.host.as_str(), redirect.port, redirect.status), ("new.example.com", 8443, 302));
    assert_eq!(redirect.scheme, Some("https".into()));
    assert_eq!(redirect.path.unwrap().replace, Some(path_modifier::Replace::Prefix("/new".into())));

    // Weights; a rule without backendRefs goes to the parent.
    assert_eq!(
        weights(&rules[0].backends),
        [("web.shop.svc.cluster.local:80".into(), 90), ("web-canary.shop.svc.cluster.local:80".into(), 10)]
    );
    assert_eq!(weights(&rules[1].backends), [("web.shop.svc.cluster.local:80".into(), 1)]);

    // Rule timeouts win over the Service's annotations, field by field.
    assert_eq!(
        rules[0].timeouts,
        Some(Timeouts { request: secs(10, 0), response: secs(2, 0), idle: secs(60, 0) })
    );
    assert_eq!(rules[1].timeouts, Some(Timeouts { request: secs(30, 0), response: None, idle: secs(60, 0) }));

    // The Service's retry conditions and timeout, the route's limit.
    let retry = rules[2].retry.as_ref().unwrap();
    assert_eq!((retry.max_retries, retry.max_request_bytes, retry.timeout), (4, 65536, secs(0, 300)));
    let ranges = &retry.conditions.as_ref().unwrap().status_ranges;
    assert_eq!((ranges[0].start, ranges[0].end), (500, 599));

    // The Service's failure accrual is the protocol's, with Linkerd's
    // defaults.
    let Some(proxy_protocol::Kind::Detect(detect)) = policy.protocol.clone().unwrap().kind else { panic!() };
    let fa = detect.http1.unwrap().failure_accrual.unwrap();
    assert_eq!(consecutive(&fa), (7, secs(1, 0), secs(60, 0), 0.5));
    assert_eq!(detect.http2.unwrap().failure_accrual, Some(fa));

    // weft's additions, by route and rule index.
    let ext = policy.weft.as_ref().unwrap();
    assert_eq!(ext.retry_budget, None);
    let at: Vec<(u32, u32)> = ext.rules.iter().map(|r| (r.route, r.rule)).collect();
    assert_eq!(at, [(0, 0), (0, 1), (0, 2)], "delay and failure accrual on every rule");
    let first = &ext.rules[0];
    let delay = first.delay.as_ref().unwrap();
    assert_eq!(
        (delay.ratio, delay.duration),
        (Some(Ratio { numerator: 10_000, denominator: 100_000 }), secs(0, 100))
    );
    assert_eq!(consecutive(first.failure_accrual.as_ref().unwrap()).0, 3);
    let mirrors: Vec<_> =
        first.mirrors.iter().map(|m| (stock::dst(m.backend.as_ref().unwrap()), m.ratio.unwrap())).collect();
    assert_eq!(
        mirrors,
        [
            ("shadow.shop.svc.cluster.local:8080".into(), Ratio { numerator: 25, denominator: 100 }),
            ("audit.ops.svc.cluster.local:80".into(), Ratio { numerator: 1, denominator: 3 }),
        ]
    );
    let rewrite = ext.rules[2].url_rewrite.as_ref().unwrap();
    assert_eq!(rewrite.hostname, "api.internal");
    assert_eq!(rewrite.path.clone().unwrap().replace, Some(path_modifier::Replace::Prefix("/v2".into())));
    assert_eq!(ext.rules[0].url_rewrite, None);

    // Stock decoders read the standard policy and skip the additions.
    let stock =
        linkerd2_proxy_api::outbound::OutboundPolicy::decode(policy.encode_to_vec().as_slice()).unwrap();
    assert_eq!(stock, OutboundPolicy::from(policy.clone()));
}

#[test]
fn without_retry_conditions_there_are_no_retries() {
    let route = HTTP_ROUTE.replace("    retry.linkerd.io/limit: \"4\"\n", "");
    let policy =
        policy_of(&(service("retry.linkerd.io/limit: '3', timeout.linkerd.io/response: 1s") + &route));
    for rule in &http_routes(&policy)[0].rules {
        assert_eq!(rule.retry, None);
    }
    // A route's conditions replace the Service's.
    let route = HTTP_ROUTE.replace("retry.linkerd.io/limit: \"4\"", "retry.linkerd.io/http: \"500,502-504\"");
    let policy = policy_of(&(service(SERVICE_TRAFFIC) + &route));
    let retry = http_routes(&policy)[0].rules[0].retry.clone().unwrap();
    let ranges: Vec<_> = retry.conditions.unwrap().status_ranges.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!((retry.max_retries, ranges), (1, vec![(500, 500), (502, 504)]));
}

const GRPC_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: books
  namespace: shop
  annotations: { fault.weft.io/abort-percent: "100", fault.weft.io/abort-grpc-status: RESOURCE_EXHAUSTED, timeout.linkerd.io/response: 5s }
spec:
  parentRefs: [{ kind: Service, name: web }]
  rules:
  - matches: [{ method: { service: shop.Books, method: Get }, headers: [{ name: x-tenant, value: a }] }]
    filters:
    - { type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: x-via, value: weft }] } }
    - { type: RequestMirror, requestMirror: { backendRef: { name: books-shadow, port: 9090 } } }
    backendRefs: [{ name: books-v1, port: 9090, weight: 1 }, { name: books-v2, port: 9090, weight: 3 }]
"#;

#[test]
fn grpc_routes_translate_methods_filters_retries_and_faults() {
    let svc = service(
        "retry.linkerd.io/grpc: 'unavailable,deadline-exceeded', balancer.linkerd.io/failure-accrual: consecutive, balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: '0.1'",
    );
    let policy = policy_of(&(svc + GRPC_ROUTE));
    let (routes, accrual) = grpc_routes(&policy);
    assert_eq!(consecutive(&accrual.unwrap()).3, 0.1);
    let rule = &routes[0].rules[0];
    let GrpcRouteMatch { rpc, headers } = &rule.matches[0];
    let rpc = rpc.clone().unwrap();
    assert_eq!((rpc.service.as_str(), rpc.method.as_str()), ("shop.Books", "Get"));
    assert_eq!(headers[0].name, "x-tenant");
    let Some(grpc_route::filter::Kind::FailureInjector(abort)) = rule.filters[0].kind.clone() else {
        panic!()
    };
    assert_eq!((abort.code, abort.ratio), (8, Some(Ratio { numerator: 100_000, denominator: 100_000 })));
    assert!(matches!(rule.filters[1].kind, Some(grpc_route::filter::Kind::RequestHeaderModifier(_))));
    let retry = rule.retry.unwrap();
    let c = retry.conditions.unwrap();
    assert!(c.unavailable && c.deadine_exceeded && !c.cancelled && !c.internal && !c.resource_exhausted);
    assert_eq!((retry.max_retries, retry.max_request_bytes), (1, 64 * 1024));
    assert_eq!(rule.timeouts.unwrap().response, secs(5, 0));
    let Some(grpc_route::distribution::Kind::RandomAvailable(split)) = rule.backends.clone().unwrap().kind
    else {
        panic!()
    };
    assert_eq!(split.backends.iter().map(|b| b.weight).collect::<Vec<_>>(), [1, 3]);
    let ext = &policy.weft.unwrap().rules[0];
    assert_eq!((ext.route, ext.rule), (0, 0));
    assert_eq!(
        stock::dst(ext.mirrors[0].backend.as_ref().unwrap()),
        "books-shadow.shop.svc.cluster.local:9090"
    );
    assert_eq!(ext.mirrors[0].ratio, Some(Ratio { numerator: 100, denominator: 100 }));
}

#[test]
fn a_rule_whose_backends_all_weigh_zero_fails_its_requests_and_stays_valid() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: drained, namespace: shop }
spec:
  parentRefs: [{ kind: Service, name: web }]
  rules:
  - backendRefs: [{ name: web, port: 80, weight: 0 }, { name: web-v2, port: 80, weight: 0 }]
  - matches: [{ path: { value: /half } }]
    backendRefs: [{ name: web, port: 80, weight: 0 }, { name: web-v2, port: 80 }]
"#;
    let policy = policy_of(&(service("") + route));
    let rules = &http_routes(&policy)[0].rules;
    assert_eq!(weights(&rules[0].backends).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [0, 0]);
    let Some(http_route::filter::Kind::FailureInjector(f)) = rules[0].filters[0].kind.clone() else {
        panic!()
    };
    assert_eq!((f.status, f.ratio), (500, Some(Ratio { numerator: 1, denominator: 1 })));
    // One backend at weight 0 just gets no traffic.
    assert!(rules[1].filters.is_empty());
    assert_eq!(weights(&rules[1].backends).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn service_annotations_reach_the_default_route() {
    let policy = policy_of(&service(SERVICE_TRAFFIC));
    let routes = http_routes(&policy);
    assert_eq!(routes.len(), 1);
    let rule = &routes[0].rules[0];
    assert_eq!(rule.timeouts, Some(Timeouts { request: secs(30, 0), response: None, idle: secs(60, 0) }));
    assert_eq!(rule.retry.as_ref().unwrap().timeout, secs(0, 300));
    assert_eq!(weights(&rule.backends), [("web.shop.svc.cluster.local:80".into(), 1)]);
    assert_eq!(policy.weft, None, "nothing beyond the standard policy");
}

#[test]
fn grpc_routes_win_over_http_routes() {
    let policy = policy_of(&(service("") + HTTP_ROUTE + "---\n" + GRPC_ROUTE));
    assert_eq!(grpc_routes(&policy).0.len(), 1);
}

#[test]
fn zero_penalties_and_delays_stay_valid() {
    let annotations = "balancer.linkerd.io/failure-accrual: consecutive, balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 0s, fault.weft.io/delay: 0s";
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: { name: r, namespace: shop, annotations: { fault.weft.io/delay: 0s } }\nspec:\n  parentRefs: [{ group: core, kind: Service, name: web, port: 80 }]\n";
    let policy = policy_of(&format!("{}{route}", service(annotations)));
    let Some(proxy_protocol::Kind::Detect(detect)) = policy.protocol.clone().unwrap().kind else { panic!() };
    // The stock proxy requires both backoff bounds, zero included.
    assert_eq!(consecutive(&detect.http1.unwrap().failure_accrual.unwrap()).1, secs(0, 0));
    // A zero delay is no delay, and a route without rules is one catch-all rule.
    assert!(policy.weft.as_ref().is_none_or(|w| w.rules.iter().all(|r| r.delay.is_none())), "{policy:?}");
    assert_eq!(http_routes(&policy)[0].rules.len(), 1);
}
