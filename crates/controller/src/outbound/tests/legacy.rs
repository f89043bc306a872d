//! ServiceProfiles and TrafficSplits in the outbound policy, and what
//! happens to configuration the store rejects.

use super::*;

const PROFILE: &str = r#"
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: { name: web.shop.svc.cluster.local, namespace: shop }
spec:
  routes:
  - name: GET /books/{id}
    condition: { method: GET, pathRegex: '/books/\d+' }
    isRetryable: true
    timeout: 300ms
  - name: writes
    condition:
      any:
      - { method: POST, pathRegex: /books }
      - all: [{ method: PUT }, { pathRegex: '/books/\d+' }]
    responseClasses: [{ condition: { status: { min: 502, max: 504 } }, isFailure: true }]
    isRetryable: true
  - name: not-health
    condition: { not: { pathRegex: /health } }
  retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s }
  dstOverrides:
  - { authority: web.shop.svc.cluster.local:80, weight: 900m }
  - { authority: web-v2.shop.svc.cluster.local:80, weight: 100m }
"#;

#[test]
fn service_profiles_become_routes_with_retries_timeouts_budget_and_weights() {
    let policy =
        policy_of(&(service("retry.linkerd.io/timeout: 1s, timeout.linkerd.io/request: 5s") + PROFILE));
    let routes = http_routes(&policy);
    // `not` cannot be a route match: that route is left out, its requests
    // take the default route, which comes last.
    assert_eq!(routes.len(), 3);
    let Some(metadata::Kind::Resource(r)) = routes[0].metadata.as_ref().and_then(|m| m.kind.clone()) else {
        panic!()
    };
    assert_eq!((r.kind.as_str(), r.section.as_str()), ("ServiceProfile", "GET /books/{id}"));

    let get = &routes[0].rules[0];
    assert_eq!(get.matches.len(), 1);
    assert_eq!(get.matches[0].method, Some(http::Method::GET.into()));
    assert_eq!(
        get.matches[0].path.clone().unwrap().kind,
        Some(path_match::Kind::Regex(r"^(?:/books/\d+)$".into()))
    );
    let retry = get.retry.clone().unwrap();
    assert_eq!((retry.max_retries, retry.timeout), (3, secs(1, 0)));
    let ranges: Vec<_> = retry.conditions.unwrap().status_ranges.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(ranges, [(500, 599)]);
    assert_eq!(get.timeouts.unwrap().request, secs(0, 300), "the route's timeout over the Service's");

    // any → several matches; all → one.
    let writes = &routes[1].rules[0];
    let matches: Vec<_> = writes
        .matches
        .iter()
        .map(|m| (m.method.clone().unwrap(), m.path.clone().unwrap().kind.unwrap()))
        .collect();
    assert_eq!(
        matches,
        [
            (http::Method::POST.into(), path_match::Kind::Regex("^(?:/books)$".into())),
            (http::Method::PUT.into(), path_match::Kind::Regex(r"^(?:/books/\d+)$".into())),
        ]
    );
    let ranges: Vec<_> = writes
        .retry
        .clone()
        .unwrap()
        .conditions
        .unwrap()
        .status_ranges
        .iter()
        .map(|r| (r.start, r.end))
        .collect();
    assert_eq!(ranges, [(502, 504)], "the failure classes are what is retried");
    assert_eq!(writes.timeouts.unwrap().request, secs(5, 0));

    // dstOverrides weigh every route, the default one included.
    let want = vec![
        ("web.shop.svc.cluster.local:80".to_string(), 900),
        ("web-v2.shop.svc.cluster.local:80".into(), 100),
    ];
    for route in &routes {
        assert_eq!(weights(&route.rules[0].backends), want);
    }
    assert!(matches!(routes[2].metadata.clone().unwrap().kind, Some(metadata::Kind::Default(_))));
    assert_eq!(routes[2].rules[0].retry, None, "the Service names no retry conditions");

    let budget = policy.weft.unwrap().retry_budget.unwrap();
    assert_eq!((budget.retry_ratio, budget.min_retries_per_second, budget.ttl), (0.2, 10, secs(10, 0)));
}

#[test]
fn http_routes_replace_profile_routes_but_keep_the_budget() {
    let policy = policy_of(&(service("") + PROFILE + "---\n" + HTTP_ROUTE));
    let routes = http_routes(&policy);
    assert_eq!(routes.len(), 1);
    let Some(metadata::Kind::Resource(r)) = routes[0].metadata.as_ref().and_then(|m| m.kind.clone()) else {
        panic!()
    };
    assert_eq!(r.kind, "HTTPRoute");
    assert!(policy.weft.unwrap().retry_budget.is_some());
}

#[test]
fn traffic_splits_weigh_the_default_route() {
    let split = r#"
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: { name: web-split, namespace: shop }
spec:
  service: web
  backends: [{ service: web-v1, weight: 80 }, { service: web-v2, weight: 20 }]
"#;
    let policy = policy_of(&(service("") + split));
    let routes = http_routes(&policy);
    assert_eq!(routes.len(), 1);
    assert_eq!(
        weights(&routes[0].rules[0].backends),
        [
            ("web-v1.shop.svc.cluster.local:80".into(), 80_000),
            ("web-v2.shop.svc.cluster.local:80".into(), 20_000)
        ]
    );
    // A split for another apex changes nothing here.
    let policy = policy_of(&(service("") + &split.replace("service: web\n", "service: books\n")));
    assert_eq!(
        weights(&http_routes(&policy)[0].rules[0].backends),
        [("web.shop.svc.cluster.local:80".into(), 1)]
    );
}

/// A rejected resource is reported with its name and field, counted, and
/// its last good version stays in effect.
#[test]
fn rejected_routes_keep_their_last_good_version() {
    let dir = std::env::temp_dir().join(format!("weft-outbound-reject-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("svc.yaml"), service("")).unwrap();
    std::fs::write(dir.join("route.yaml"), HTTP_ROUTE).unwrap();
    let index = std::sync::Mutex::new(Index::new(Config::default()));
    let mut source = weft_store::DirSource::new(&dir);
    source.scan(&index).unwrap();
    let good = policy(&index.lock().unwrap(), &sp()).unwrap();
    assert_eq!(http_routes(&good)[0].rules.len(), 3);

    for (bad, reason) in [
        (
            HTTP_ROUTE.replace("percent: 25", "percent: 250"),
            "rules[0].filters[2].requestMirror.percent: 250 is not between 0 and 100",
        ),
        (
            HTTP_ROUTE.replace("request: 10s", "request: ten"),
            "rules[0].timeouts.request: \"ten\" is not a duration",
        ),
        (
            HTTP_ROUTE.replace("type: URLRewrite", "type: CORS"),
            "rules[2].filters[0].type: \"CORS\" is not a filter",
        ),
        (
            HTTP_ROUTE.replace("\"gold|silver\"", "\"gold|(silver\""),
            "rules[0].matches[0].headers[1].value: \"gold|(silver\" is not a regular expression",
        ),
        (
            HTTP_ROUTE.replace("delay: 100ms", "delay: \"100\""),
            "metadata.annotations[fault.weft.io/delay]: \"100\"",
        ),
        (
            HTTP_ROUTE.replace("abort-percent: \"2.5\"", "abort-percent: \"-1\""),
            "fault.weft.io/abort-percent]: \"-1\": not a percentage",
        ),
        (
            HTTP_ROUTE
                .replace("{ backendRef: { name: shadow, port: 8080 }, percent: 25 }", "{ percent: 25 }"),
            "rules[0].filters[2].requestMirror.backendRef: required",
        ),
    ] {
        std::fs::write(dir.join("route.yaml"), &bad).unwrap();
        source.scan(&index).unwrap();
        let error = &source.errors()[&dir.join("route.yaml")];
        assert!(
            error.contains("HTTPRoute web-routes") && error.contains(reason),
            "{error}\n  want: {reason}"
        );
        assert_eq!(policy(&index.lock().unwrap(), &sp()).unwrap(), good, "the last good version stays");
    }
    assert_eq!(index.lock().unwrap().rejected(), 7);

    std::fs::write(dir.join("svc.yaml"), service("retry.linkerd.io/http: 5xx-ish")).unwrap();
    source.scan(&index).unwrap();
    let error = &source.errors()[&dir.join("svc.yaml")];
    assert!(
        error.contains("Service web") && error.contains("metadata.annotations[retry.linkerd.io/http]"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
