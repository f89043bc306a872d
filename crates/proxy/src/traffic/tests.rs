use super::*;
use crate::matching::prefix_matches;
use crate::traffic::proto::{BackendSpec, router};
use linkerd2_proxy_api::{
    http_route as api,
    meta::{Metadata, metadata},
    outbound::{self as out, proxy_protocol},
};

fn backend(name: &str) -> out::Backend {
    out::Backend {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Resource(linkerd2_proxy_api::meta::Resource {
                group: "core".into(),
                kind: "Service".into(),
                name: name.into(),
                namespace: "shop".into(),
                port: 80,
                ..Default::default()
            })),
        }),
        queue: Some(out::Queue {
            capacity: 100,
            failfast_timeout: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
        }),
        kind: Some(out::backend::Kind::Balancer(out::backend::BalanceP2c {
            discovery: Some(out::backend::EndpointDiscovery {
                kind: Some(out::backend::endpoint_discovery::Kind::Dst(
                    out::backend::endpoint_discovery::DestinationGet {
                        path: format!("{name}.shop.svc.cluster.local:80"),
                    },
                )),
            }),
            load: None,
        })),
    }
}

fn weighted(backends: &[(&str, u32)]) -> Option<out::http_route::Distribution> {
    Some(out::http_route::Distribution {
        kind: Some(out::http_route::distribution::Kind::RandomAvailable(
            out::http_route::distribution::RandomAvailable {
                backends: backends
                    .iter()
                    .map(|(name, weight)| out::http_route::WeightedRouteBackend {
                        backend: Some(out::http_route::RouteBackend {
                            backend: Some(backend(name)),
                            ..Default::default()
                        }),
                        weight: *weight,
                    })
                    .collect(),
            },
        )),
    })
}

fn prefix(p: &str) -> api::HttpRouteMatch {
    api::HttpRouteMatch {
        path: Some(api::PathMatch { kind: Some(api::path_match::Kind::Prefix(p.into())) }),
        ..Default::default()
    }
}

fn policy(rules: Vec<out::http_route::Rule>, ext: Option<weft_api::Extensions>) -> weft_api::OutboundPolicy {
    let route = out::HttpRoute {
        metadata: Some(Metadata { kind: Some(metadata::Kind::Default("http".into())) }),
        hosts: vec![],
        rules,
    };
    weft_api::OutboundPolicy {
        metadata: backend("web").metadata,
        protocol: Some(out::ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                routes: vec![route],
                failure_accrual: None,
            })),
        }),
        weft: ext,
    }
}

fn bind() -> impl FnMut(&BackendSpec) -> Arc<Balancer> {
    |b: &BackendSpec| Arc::new(Balancer::new(b.default_rtt, b.decay))
}

/// A match on header `name` being exactly `value`.
fn header_is(name: &str, value: &str) -> api::HeaderMatch {
    api::HeaderMatch {
        name: name.into(),
        value: Some(api::header_match::Value::Exact(value.as_bytes().to_vec())),
    }
}

fn get(path: &str) -> Request<()> {
    Request::builder().uri(path).body(()).unwrap()
}

#[test]
fn the_most_specific_match_wins() {
    let exact = api::HttpRouteMatch {
        path: Some(api::PathMatch { kind: Some(api::path_match::Kind::Exact("/api/v1/books".into())) }),
        ..Default::default()
    };
    let with_header = api::HttpRouteMatch { headers: vec![header_is("x-canary", "1")], ..prefix("/api") };
    let rules = vec![
        out::http_route::Rule {
            matches: vec![prefix("/")],
            backends: weighted(&[("root", 1)]),
            ..Default::default()
        },
        out::http_route::Rule {
            matches: vec![prefix("/api")],
            backends: weighted(&[("api", 1)]),
            ..Default::default()
        },
        out::http_route::Rule {
            matches: vec![with_header],
            backends: weighted(&[("canary", 1)]),
            ..Default::default()
        },
        out::http_route::Rule {
            matches: vec![exact],
            backends: weighted(&[("books", 1)]),
            ..Default::default()
        },
    ];
    let router = router(&policy(rules, None), &mut bind()).unwrap().unwrap();
    let backend_of =
        |req: &Request<()>| router.select(req, false).unwrap().rule.backends[0].backend.meta.name.clone();
    assert_eq!(backend_of(&get("/")), "root");
    assert_eq!(backend_of(&get("/apix")), "root", "prefixes match whole segments");
    assert_eq!(backend_of(&get("/api/v2")), "api");
    assert_eq!(backend_of(&get("/api/v1/books")), "books");
    let canary = Request::builder().uri("/api/v2").header("x-canary", "1").body(()).unwrap();
    assert_eq!(backend_of(&canary), "canary");
}

#[test]
fn splits_follow_weights() {
    let rules = vec![out::http_route::Rule {
        backends: weighted(&[("v1", 90), ("v2", 10), ("off", 0)]),
        ..Default::default()
    }];
    let router = router(&policy(rules, None), &mut bind()).unwrap().unwrap();
    let rule = router.select(&get("/"), false).unwrap().rule;
    let mut v2 = 0;
    for _ in 0..20_000 {
        match rule.pick_backend().unwrap().meta.name.as_str() {
            "v2" => v2 += 1,
            "v1" => {}
            other => panic!("{other} has weight 0"),
        }
    }
    assert!((1_700..=2_300).contains(&v2), "v2 got {v2} of 20000");
}

#[test]
fn timeouts_retries_and_weft_additions_are_read() {
    let rules = vec![out::http_route::Rule {
        matches: vec![prefix("/slow")],
        backends: weighted(&[("web", 1)]),
        timeouts: Some(api::Timeouts {
            request: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
            ..Default::default()
        }),
        retry: Some(out::http_route::Retry {
            max_retries: 2,
            conditions: Some(out::http_route::retry::Conditions {
                status_ranges: vec![out::http_route::retry::conditions::StatusRange { start: 500, end: 599 }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let ext = weft_api::Extensions {
        rules: vec![weft_api::RuleExtension {
            route: 0,
            rule: 0,
            delay: Some(weft_api::Delay {
                ratio: Some(api::Ratio { numerator: 1, denominator: 10 }),
                duration: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            }),
            mirrors: vec![weft_api::Mirror { backend: Some(backend("shadow")), ratio: None }],
            url_rewrite: Some(weft_api::UrlRewrite {
                hostname: String::new(),
                path: Some(api::PathModifier {
                    replace: Some(api::path_modifier::Replace::Prefix("/v2".into())),
                }),
            }),
            failure_accrual: None,
        }],
        retry_budget: None,
    };
    let router = router(&policy(rules, Some(ext)), &mut bind()).unwrap().unwrap();
    let selected = router.select(&get("/slow/x"), false).unwrap();
    let rule = selected.rule;
    assert_eq!(rule.timeouts.request, Some(Duration::from_millis(200)));
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.max_retries, 2);
    assert!(
        retry.retries(StatusCode::SERVICE_UNAVAILABLE, None) && !retry.retries(StatusCode::NOT_FOUND, None)
    );
    assert_eq!(rule.delay, Some((Ratio(0.1), Duration::from_secs(1))));
    assert_eq!(rule.mirrors.len(), 1);
    assert_eq!(rule.mirrors[0].0.name, "shadow.shop.svc.cluster.local:80");
    let rewrite = rule.rewrite.as_ref().unwrap().path.as_ref().unwrap();
    assert_eq!(rewrite.apply("/slow/x", selected.prefix()), "/v2/x");
    assert!(router.select(&get("/other"), false).is_none(), "no rule matches /other");
}

#[test]
fn a_malformed_policy_is_refused_whole() {
    let bad = api::HttpRouteMatch {
        path: Some(api::PathMatch { kind: Some(api::path_match::Kind::Regex("(".into())) }),
        ..Default::default()
    };
    let rules = vec![out::http_route::Rule {
        matches: vec![bad],
        backends: weighted(&[("web", 1)]),
        ..Default::default()
    }];
    assert!(router(&policy(rules, None), &mut bind()).is_err());
}

#[test]
fn path_modifiers() {
    assert_eq!(PathModifier::Full("/new".into()).apply("/old/x", Some("/old")), "/new");
    assert_eq!(PathModifier::Prefix("/".into()).apply("/old/x", Some("/old")), "/x");
    assert_eq!(PathModifier::Prefix("/new".into()).apply("/old", Some("/old")), "/new");
    assert!(prefix_matches("/a/b", "/a/") && prefix_matches("/a", "/a") && !prefix_matches("/ab", "/a"));
    assert!(prefix_matches("/anything", "/"));
}

#[test]
fn retry_backoff_grows_and_stays_bounded() {
    let retry = Retry {
        max_retries: 5,
        max_request_bytes: 1024,
        on: RetryOn::Grpc(vec![14]),
        timeout: None,
        backoff: (Duration::from_millis(10), Duration::from_millis(40)),
    };
    assert!(retry.retries(StatusCode::OK, Some(14)) && !retry.retries(StatusCode::OK, Some(0)));
    for n in 1..8 {
        let b = retry.backoff(n);
        assert!(b <= Duration::from_millis(40) && b >= Duration::from_millis(5), "{b:?}");
    }
}

#[test]
fn regexes_match_whole_values_and_rewrites_use_the_winning_match() {
    let regex = api::HttpRouteMatch {
        path: Some(api::PathMatch { kind: Some(api::path_match::Kind::Regex("/a|/ab".into())) }),
        ..Default::default()
    };
    let v1_with_header = api::HttpRouteMatch { headers: vec![header_is("x", "1")], ..prefix("/v1") };
    let rules = vec![
        out::http_route::Rule {
            matches: vec![regex],
            backends: weighted(&[("re", 1)]),
            ..Default::default()
        },
        out::http_route::Rule {
            matches: vec![v1_with_header, prefix("/")],
            backends: weighted(&[("v1", 1)]),
            ..Default::default()
        },
    ];
    let router = router(&policy(rules, None), &mut bind()).unwrap().unwrap();
    let name =
        |path: &str| router.select(&get(path), false).unwrap().rule.backends[0].backend.meta.name.clone();
    assert_eq!(name("/ab"), "re", "an alternation matches the whole path");
    assert_eq!(name("/abc"), "v1", "a regex does not match a path it only starts");
    // Taken by `/`, not by the `/v1` match that needed a header.
    assert_eq!(router.select(&get("/v1/a"), false).unwrap().prefix(), Some("/"));
    let with_header = Request::builder().uri("/v1/a").header("x", "1").body(()).unwrap();
    assert_eq!(router.select(&with_header, false).unwrap().prefix(), Some("/v1"));
}
