use super::annotations::{FailureAccrual, Fault, Retry, Timeouts, status_ranges};
use super::*;
use crate::Resource;
use std::collections::BTreeMap;

fn reason(yaml: &str) -> String {
    match Resource::parse_all(yaml) {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

fn route(kind: &str, annotations: &str, rule: &str) -> String {
    let api = "gateway.networking.k8s.io/v1";
    format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata: {{ name: r, namespace: shop, annotations: {{ {annotations} }} }}\nspec:\n  parentRefs: [{{ kind: Service, name: web }}]\n  rules:\n  - {rule}\n"
    )
}

fn http(rule: &str) -> String {
    reason(&route("HTTPRoute", "", rule))
}

fn annotated(annotations: &str) -> String {
    reason(&route("HTTPRoute", annotations, "backendRefs: [{ name: web, port: 80 }]"))
}

#[test]
fn good_routes_are_accepted() {
    let rule = r#"matches: [{ path: { type: PathPrefix, value: /api }, headers: [{ type: RegularExpression, name: x-user, value: "^a.*" }], queryParams: [{ name: v, value: "2" }], method: GET }]
    filters:
    - { type: RequestHeaderModifier, requestHeaderModifier: { add: [{ name: x-a, value: b }], remove: [x-c] } }
    - { type: URLRewrite, urlRewrite: { hostname: other, path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 } } }
    - { type: RequestMirror, requestMirror: { backendRef: { name: shadow, port: 80 }, fraction: { numerator: 1, denominator: 10 } } }
    timeouts: { request: 10s, backendRequest: 5s }
    backendRefs: [{ name: web, port: 80, weight: 0 }]"#;
    assert_eq!(http(rule), "accepted");
    let grpc = reason(&route(
        "GRPCRoute",
        "fault.weft.io/abort-percent: '2.5', fault.weft.io/abort-grpc-status: deadline-exceeded",
        "matches: [{ method: { service: shop.Books, method: Get } }]\n    filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: shadow, port: 80 } } }]",
    ));
    assert_eq!(grpc, "accepted");
}

#[test]
fn bad_routes_are_rejected_naming_the_field() {
    let cases = [
        ("filters: [{ type: ExtensionRef }]", "rules[0].filters[0].type: \"ExtensionRef\" is not a filter"),
        (
            "filters: [{ type: RequestMirror, requestMirror: { percent: 10 } }]",
            "rules[0].filters[0].requestMirror.backendRef: required",
        ),
        (
            "filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: s }, percent: 120 } }]",
            "requestMirror.percent: 120 is not between 0 and 100",
        ),
        (
            "matches: [{ path: { type: RegularExpression, value: \"/(a\" } }]",
            "rules[0].matches[0].path.value: \"/(a\" is not a regular expression",
        ),
        (
            "matches: [{ headers: [{ type: RegularExpression, name: x, value: \"[\" }] }]",
            "headers[0].value: \"[\" is not a regular expression",
        ),
        ("timeouts: { request: \"10\" }", "rules[0].timeouts.request: \"10\" is not a duration"),
        ("timeouts: { backendRequest: soon }", "timeouts.backendRequest: \"soon\" is not a duration"),
        (
            "timeouts: { request: 1s, backendRequest: 2s }",
            "timeouts.backendRequest: 2s is longer than the request timeout 1s",
        ),
        ("backendRefs: [{ name: Web_1 }]", "backendRefs[0].name: \"Web_1\" is not a DNS label"),
        ("backendRefs: [{ name: web, weight: 2000000 }]", "backendRefs[0].weight: at most 1000000"),
        ("matches: [{ method: GETT }]", "rules[0].matches[0].method: \"GETT\" is not an HTTP method"),
        ("backendRefs: [{ kind: Pod, name: web }]", "backendRefs[0].kind: /Pod is not a Service"),
        (
            "filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 } } }]",
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
        ),
        (
            "filters: [{ type: RequestRedirect, requestRedirect: { statusCode: 200 } }]",
            "statusCode: 200 is not 301",
        ),
        ("matches: [{ path: { type: Exact, value: api } }]", "must start with '/'"),
    ];
    for (rule, want) in cases {
        let got = http(rule);
        assert!(got.contains(want), "{rule}\n  got:  {got}\n  want: {want}");
        assert!(got.contains("HTTPRoute r"), "the reason names the resource: {got}");
    }
    let grpc = reason(&route(
        "GRPCRoute",
        "",
        "filters: [{ type: ResponseHeaderModifier, responseHeaderModifier: {} }]",
    ));
    assert!(grpc.contains("not a filter weft applies to a GRPCRoute"), "{grpc}");
}

#[test]
fn bad_annotations_are_rejected_naming_the_annotation() {
    let cases = [
        ("retry.linkerd.io/http: 5xxx", "metadata.annotations[retry.linkerd.io/http]: \"5xxx\""),
        ("retry.linkerd.io/http: '600'", "not an HTTP status between 100 and 599"),
        ("retry.linkerd.io/http: 504-502", "ends before it starts"),
        ("retry.linkerd.io/grpc: 'unavailable, oops'", "\"oops\" is not one of cancelled"),
        ("retry.linkerd.io/timeout: 3 seconds", "retry.linkerd.io/timeout"),
        ("timeout.linkerd.io/request: '-1s'", "timeout.linkerd.io/request"),
        ("fault.weft.io/abort-percent: '101'", "not a percentage between 0 and 100"),
        ("fault.weft.io/abort-percent: '5', fault.weft.io/abort-status: '99'", "abort-status]: \"99\""),
        ("fault.weft.io/delay-percent: '5'", "fault.weft.io/delay] is required"),
        ("balancer.linkerd.io/failure-accrual: success-rate", "the only kind is \"consecutive\""),
    ];
    for (annotations, want) in cases {
        let got = annotated(annotations);
        assert!(got.contains(want), "{annotations}\n  got:  {got}\n  want: {want}");
    }
    let svc = "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop, annotations: { retry.linkerd.io/limit: many } }\nspec: { ports: [{ port: 80 }] }\n";
    assert!(reason(svc).contains("retry.linkerd.io/limit]: \"many\""), "{}", reason(svc));
}

#[test]
fn profiles_and_splits_are_checked() {
    let profile = |spec: &str| {
        reason(&format!(
            "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {{ name: web.shop.svc.cluster.local, namespace: shop }}\nspec:\n{spec}"
        ))
    };
    assert!(
        profile("  routes: [{ name: r, timeout: fast }]\n").contains("routes[0] (\"r\").timeout: \"fast\"")
    );
    assert!(
        profile("  routes: [{ name: r, condition: { pathRegex: '(' } }]\n").contains("condition.pathRegex")
    );
    assert!(
        profile("  dstOverrides: [{ authority: web.example.com:80, weight: 1 }]\n")
            .contains("dstOverrides[0].authority")
    );
    assert!(
        profile("  dstOverrides: [{ authority: web-v2:80, weight: lots }]\n")
            .contains("dstOverrides[0].weight")
    );
    assert_eq!(
        profile("  dstOverrides: [{ authority: web-v2.shop.svc.cluster.local:80, weight: 900m }]\n"),
        "accepted"
    );
    // A condition that would expand to 20^3 matches, and bad statuses.
    let any20 = format!("{{ any: [{}] }}", vec!["{ method: GET }"; 20].join(", "));
    let explosive = format!("  routes: [{{ name: r, condition: {{ all: [{any20}, {any20}, {any20}] }} }}]\n");
    assert!(profile(&explosive).contains("make 8000 matches; at most 64"), "{}", profile(&explosive));
    let statuses = "  routes: [{ name: r, responseClasses: [{ condition: { status: { min: 700, max: 800 } }, isFailure: true }] }]\n";
    assert!(profile(statuses).contains("is not a range of HTTP statuses"), "{}", profile(statuses));
    assert!(
        profile("  retryBudget: { retryRatio: 5000, minRetriesPerSecond: 1, ttl: 10s }\n")
            .contains("retryRatio")
    );
    let split = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: { name: s, namespace: shop }\nspec:\n  service: web\n  backends: []\n";
    assert!(reason(split).contains("backends: at least one backend"), "{}", reason(split));
}

#[test]
fn annotation_values() {
    assert_eq!(status_ranges("5xx").unwrap(), [(500, 599)]);
    assert_eq!(status_ranges("500,502-504").unwrap(), [(500, 500), (502, 504)]);
    assert_eq!(status_ranges("gateway-error").unwrap(), [(502, 504)]);
    let a: BTreeMap<String, String> = [
        ("retry.linkerd.io/grpc", "cancelled,deadline-exceeded"),
        ("retry.linkerd.io/timeout", "250ms"),
        ("timeout.linkerd.io/idle", "1m"),
        ("balancer.linkerd.io/failure-accrual", "consecutive"),
        ("balancer.linkerd.io/failure-accrual-consecutive-max-failures", "3"),
        ("fault.weft.io/delay", "100ms"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let retry = Retry::parse(Some(&a)).unwrap();
    assert!(retry.grpc.unwrap().deadline_exceeded && !retry.grpc.unwrap().unavailable);
    assert_eq!(retry.timeout, Some(Duration::from_millis(250)));
    assert_eq!(Timeouts::parse(Some(&a)).unwrap().idle, Some(Duration::from_secs(60)));
    let fa = FailureAccrual::parse(Some(&a)).unwrap().unwrap();
    assert_eq!(
        (fa.max_failures, fa.min_penalty, fa.max_penalty, fa.jitter_ratio),
        (3, Duration::from_secs(1), Duration::from_secs(60), 0.5)
    );
    let delay = Fault::parse(Some(&a)).unwrap().delay.unwrap();
    assert_eq!((delay.percent, delay.duration), (100.0, Duration::from_millis(100)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(quantity_milli(&serde_json::json!("900m")), Ok(900));
    assert_eq!(quantity_milli(&serde_json::json!(1)), Ok(1000));
}
