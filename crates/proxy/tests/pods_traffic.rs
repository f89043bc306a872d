//! Traffic management end to end: routes written as YAML in the store
//! directory of a real controller, a client pod whose proxy applies them,
//! and server pods (each with its proxy) whose apps fail, stall or count
//! on demand.

mod support;

use http::StatusCode;
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use support::cluster::{Cluster, connect, counts, request, wait_until};
use weft_test_support::apps::{self, HttpStats};

/// A route on `web.shop`, with annotations and rules as YAML flow text.
fn http_route(name: &str, annotations: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations: {{{annotations}}}\nspec:\n  parentRefs: [{{ group: core, kind: Service, name: web, port: 80 }}]\n  rules: {rules}\n"
    )
}

/// `n` GETs of `path` over `conns` connections: the statuses, in order of
/// completion, and the slowest.
fn load(cluster: &Cluster, conns: usize, n: usize, path: &'static str) -> (Vec<StatusCode>, Duration) {
    let dst = cluster.service_addr();
    cluster.client.block_on(async move {
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                tokio::spawn(async move {
                    let mut send = connect(dst).await;
                    let mut out = vec![];
                    let mut slowest = Duration::ZERO;
                    for _ in (c..n).step_by(conns) {
                        let started = Instant::now();
                        let (status, _, _) = request(&mut send, path).await.expect("the proxy answers");
                        slowest = slowest.max(started.elapsed());
                        out.push(status);
                    }
                    (out, slowest)
                })
            })
            .collect();
        let mut all = vec![];
        let mut slowest = Duration::ZERO;
        for t in tasks {
            let (out, s) = t.await.unwrap();
            all.extend(out);
            slowest = slowest.max(s);
        }
        (all, slowest)
    })
}

fn count(statuses: &[StatusCode], status: u16) -> usize {
    statuses.iter().filter(|s| s.as_u16() == status).count()
}

/// The sum of every series of `name` whose labels contain each of `having`.
fn sum(metrics: &str, name: &str, having: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| having.iter().all(|h| l.contains(h)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A cluster of `servers` pods all behind `web.shop`, with `yaml` in the
/// store before anything starts.
fn cluster(
    test: &str,
    servers: usize,
    service_annotations: &str,
    yaml: &[(&str, String)],
) -> Option<(Cluster, Vec<Arc<HttpStats>>)> {
    let mut cluster = Cluster::new(test, servers)?;
    cluster.service("web", 200, service_annotations);
    for i in 0..servers {
        cluster.pod("web", i);
    }
    for (file, text) in yaml {
        cluster.write(file, text);
    }
    cluster.run();
    let stats = cluster.http_apps();
    Some((cluster, stats))
}

/// A route's annotations: retry 5xx answers, at most three times.
const RETRY_5XX_3: &str = r#"retry.linkerd.io/http: "5xx", retry.linkerd.io/limit: "3""#;

#[test]
fn a_request_timeout_answers_504_in_time() {
    let rules = "[{ matches: [{ path: { type: PathPrefix, value: / } }], timeouts: { request: 200ms } }]";
    let Some((cluster, stats)) = cluster(
        "a_request_timeout_answers_504_in_time",
        1,
        "",
        &[("route.yaml", http_route("slow", "", rules))],
    ) else {
        return;
    };
    stats[0].delay_ms.store(1_000, Ordering::Relaxed);
    let dst = cluster.service_addr();
    let (status, headers, elapsed) = cluster.client.block_on(async move {
        let mut send = connect(dst).await;
        let started = Instant::now();
        let (status, _, headers) = request(&mut send, "/").await.unwrap();
        (status, headers, started.elapsed())
    });
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let error = headers.get("l5d-proxy-error").expect("the proxy says why").to_str().unwrap();
    assert!(error.contains("timed out after 200ms"), "{error}");
    // The back end takes a second; the answer comes at the timeout.
    assert!(elapsed >= Duration::from_millis(190) && elapsed < Duration::from_millis(800), "{elapsed:?}");
    let metrics = cluster.client.metrics();
    assert_eq!(
        sum(
            &metrics,
            "outbound_http_route_request_statuses_total",
            &[r#"route_name="slow""#, r#"error="REQUEST_TIMEOUT""#]
        ),
        1.0,
        "{metrics}"
    );
}

#[test]
fn retries_turn_a_30_percent_failing_back_end_into_success() {
    let annotations = RETRY_5XX_3;
    let Some((cluster, stats)) = cluster(
        "retries_turn_a_30_percent_failing_back_end_into_success",
        1,
        "",
        &[("route.yaml", http_route("retried", annotations, "[{}]"))],
    ) else {
        return;
    };
    stats[0].fail_percent.store(30, Ordering::Relaxed);
    const N: usize = 300;
    let (statuses, _) = load(&cluster, 1, N, "/");
    let ok = count(&statuses, 200);
    let failed_upstream = stats[0].failed.load(Ordering::SeqCst);
    let served = stats[0].requests.load(Ordering::SeqCst);
    println!("{ok} of {N} succeeded; the back end failed {failed_upstream} of {served}");
    assert!(ok * 100 >= N * 99, "effective success {ok}/{N}");
    assert!(failed_upstream * 100 >= served * 25, "the back end did fail ~30%: {failed_upstream}/{served}");
    let metrics = cluster.client.metrics();
    let retries = sum(&metrics, "outbound_http_route_retry_requests_total", &[r#"route_name="retried""#]);
    assert_eq!(retries, failed_upstream as f64, "every failure was retried once: {metrics}");
    // Effective vs actual success, and retries as a share of traffic.
    let actual_500 =
        sum(&metrics, "outbound_http_route_backend_response_statuses_total", &[r#"http_status="500""#]);
    assert_eq!(actual_500, failed_upstream as f64);
    let logical = sum(&metrics, "outbound_http_route_request_statuses_total", &[r#"http_status="200""#]);
    assert_eq!(logical, ok as f64);
    let attempts = sum(&metrics, "outbound_http_route_request_attempts_sum", &[r#"route_name="retried""#]);
    assert_eq!(attempts, served as f64, "attempts per request add up to what the back end saw");
}

#[test]
fn the_retry_budget_caps_extra_load_in_a_full_outage() {
    let annotations = RETRY_5XX_3;
    let Some((cluster, stats)) = cluster(
        "the_retry_budget_caps_extra_load_in_a_full_outage",
        1,
        "",
        &[("route.yaml", http_route("retried", annotations, "[{}]"))],
    ) else {
        return;
    };
    stats[0].fail_percent.store(100, Ordering::Relaxed);
    const N: usize = 600;
    let (statuses, _) = load(&cluster, 4, N, "/");
    assert_eq!(count(&statuses, 500), N, "everything fails");
    let served = stats[0].requests.load(Ordering::SeqCst);
    let extra = served - N;
    println!("{N} requests, {extra} retries ({:.0}%)", extra as f64 * 100.0 / N as f64);
    // Three retries each would be 3N extra; the budget allows 20% of the
    // requests plus 10 per second over its 10 s window (100).
    assert!(extra <= N / 5 + 100 + 10, "{extra} retries for {N} requests");
    let metrics = cluster.client.metrics();
    assert!(sum(&metrics, "outbound_http_route_retry_overflow_total", &[]) > 0.0, "{metrics}");
}

#[test]
fn a_90_10_split_lands_within_3_percent() {
    let rules =
        "[{ backendRefs: [{ name: web, port: 80, weight: 90 }, { name: web-v2, port: 80, weight: 10 }] }]";
    let Some(mut cluster) = Cluster::new("a_90_10_split_lands_within_3_percent", 2) else { return };
    cluster.service("web", 200, "");
    cluster.service("web-v2", 201, "");
    cluster.pod("web", 0);
    cluster.pod("web-v2", 1);
    cluster.write("route.yaml", &http_route("canary", "", rules));
    cluster.run();
    let stats = cluster.http_apps();
    const N: usize = 2000;
    let (statuses, _) = load(&cluster, 4, N, "/");
    assert_eq!(count(&statuses, 200), N);
    let c = counts(&stats);
    println!("v1 {} v2 {}", c[0], c[1]);
    assert_eq!(c[0] + c[1], N);
    assert!((N * 7 / 100..=N * 13 / 100).contains(&c[1]), "v2 got {} of {N}", c[1]);
}

#[test]
fn a_failing_endpoint_is_ejected_and_readmitted() {
    let annotations = r#"balancer.linkerd.io/failure-accrual: consecutive, balancer.linkerd.io/failure-accrual-consecutive-max-failures: "3", balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 300ms, balancer.linkerd.io/failure-accrual-consecutive-max-penalty: 1s"#;
    let Some((cluster, stats)) = cluster("a_failing_endpoint_is_ejected_and_readmitted", 3, annotations, &[])
    else {
        return;
    };
    stats[2].fail_percent.store(100, Ordering::Relaxed);
    let (statuses, _) = load(&cluster, 2, 600, "/");
    let to_bad = stats[2].requests.load(Ordering::SeqCst);
    println!("the failing endpoint got {to_bad} of 600; {} failed", count(&statuses, 500));
    // Three failures eject it; after that only probes (one per penalty,
    // 300 ms growing to 1 s) reach it.
    assert!(to_bad <= 15, "the failing endpoint got {to_bad} of 600");
    assert_eq!(count(&statuses, 500), to_bad);

    // It recovers: a probe finds out and it takes traffic again.
    stats[2].fail_percent.store(0, Ordering::Relaxed);
    let before = stats[2].requests.load(Ordering::SeqCst);
    wait_until("the recovered endpoint to be readmitted", || {
        let (statuses, _) = load(&cluster, 1, 10, "/");
        assert_eq!(count(&statuses, 200), 10);
        stats[2].requests.load(Ordering::SeqCst) > before + 20
    });
}

#[test]
fn a_per_route_breaker_trips_while_another_route_flows() {
    let fragile = http_route(
        "fragile",
        r#"balancer.linkerd.io/failure-accrual: consecutive, balancer.linkerd.io/failure-accrual-consecutive-max-failures: "3", balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 30s, balancer.linkerd.io/failure-accrual-consecutive-max-penalty: 60s"#,
        "[{ matches: [{ path: { type: PathPrefix, value: /status } }] }]",
    );
    let steady = http_route("steady", "", "[{ matches: [{ path: { type: PathPrefix, value: / } }] }]");
    let Some((cluster, stats)) = cluster(
        "a_per_route_breaker_trips_while_another_route_flows",
        1,
        "",
        &[("fragile.yaml", fragile), ("steady.yaml", steady)],
    ) else {
        return;
    };
    let (statuses, _) = load(&cluster, 1, 20, "/status/500");
    // Three 500s from the app, then the proxy fails fast for this route.
    assert_eq!(count(&statuses, 500), 3, "{statuses:?}");
    assert_eq!(count(&statuses, 503), 17, "{statuses:?}");
    assert_eq!(stats[0].requests.load(Ordering::SeqCst), 3);
    // The same endpoint, on another route, is fine.
    let (statuses, _) = load(&cluster, 1, 50, "/");
    assert_eq!(count(&statuses, 200), 50);
    assert_eq!(stats[0].requests.load(Ordering::SeqCst), 53);
}

#[test]
fn an_abort_fault_fails_its_share() {
    let annotations = r#"fault.weft.io/abort-percent: "10", fault.weft.io/abort-status: "503""#;
    let Some((cluster, stats)) = cluster(
        "an_abort_fault_fails_its_share",
        1,
        "",
        &[("route.yaml", http_route("faulty", annotations, "[{}]"))],
    ) else {
        return;
    };
    const N: usize = 2000;
    let (statuses, _) = load(&cluster, 4, N, "/");
    let aborted = count(&statuses, 503);
    println!("{aborted} of {N} aborted");
    assert!((N * 7 / 100..=N * 13 / 100).contains(&aborted), "{aborted} of {N} aborted");
    assert_eq!(count(&statuses, 200) + aborted, N);
    assert_eq!(stats[0].requests.load(Ordering::SeqCst), N - aborted, "aborted requests never reach the app");
}

#[test]
fn a_slow_mirror_gets_copies_and_adds_no_latency() {
    let rules =
        "[{ filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: shadow, port: 80 } } }] }]";
    let Some(mut cluster) = Cluster::new("a_slow_mirror_gets_copies_and_adds_no_latency", 2) else { return };
    cluster.service("web", 200, "");
    cluster.service("shadow", 202, "");
    cluster.pod("web", 0);
    cluster.pod("shadow", 1);
    cluster.write("route.yaml", &http_route("mirrored", "", rules));
    cluster.run();
    let stats = cluster.http_apps();
    stats[1].delay_ms.store(2_000, Ordering::Relaxed);
    const N: usize = 30;
    let (statuses, slowest) = load(&cluster, 1, N, "/");
    assert_eq!(count(&statuses, 200), N);
    // Each copy takes the mirror 2 s; the primary never waits for it.
    assert!(slowest < Duration::from_secs(1), "the slowest request took {slowest:?}");
    wait_until("the mirror to get every copy", || stats[1].requests.load(Ordering::SeqCst) >= N);
    assert_eq!(stats[0].requests.load(Ordering::SeqCst), N);
}

#[test]
fn grpc_calls_are_retried_on_unavailable() {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: health\n  namespace: shop\n  annotations: { retry.linkerd.io/grpc: unavailable, retry.linkerd.io/limit: \"3\" }\nspec:\n  parentRefs: [{ group: core, kind: Service, name: web, port: 80 }]\n  rules: [{ matches: [{ method: { service: grpc.health.v1.Health } }] }]\n";
    let Some(mut cluster) = Cluster::new("grpc_calls_are_retried_on_unavailable", 1) else { return };
    cluster.service("web", 200, "");
    cluster.pod("web", 0);
    cluster.write("route.yaml", route);
    cluster.run();
    let (stats, serve) = apps::grpc_flaky(cluster.servers[0].listen(8080));
    cluster.servers[0].spawn(serve);
    stats.fail_percent.store(30, Ordering::Relaxed);
    let dst = cluster.service_addr();
    const N: usize = 200;
    let ok = cluster.client.block_on(async move {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{dst}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let mut ok = 0;
        for _ in 0..N {
            match client.check(HealthCheckRequest { service: String::new() }).await {
                Ok(_) => ok += 1,
                Err(status) => println!("call failed: {status}"),
            }
        }
        ok
    });
    let failed = stats.failed.load(Ordering::SeqCst);
    println!("{ok} of {N} calls succeeded; the server failed {failed}");
    assert_eq!(ok, N);
    assert!(failed >= N / 5, "the server did fail: {failed}");
    let metrics = cluster.client.metrics();
    assert_eq!(
        sum(&metrics, "outbound_grpc_route_retry_requests_total", &[r#"route_name="health""#]),
        failed as f64
    );
    assert_eq!(
        sum(
            &metrics,
            "outbound_grpc_route_backend_response_statuses_total",
            &[r#"grpc_status="UNAVAILABLE""#]
        ),
        failed as f64
    );
}

#[test]
fn redirects_header_filters_and_rewrites_apply() {
    let rules = r#"
  - matches: [{ path: { type: PathPrefix, value: /old } }]
    filters: [{ type: RequestRedirect, requestRedirect: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /new }, statusCode: 301 } }]
  - matches: [{ path: { type: PathPrefix, value: /api } }]
    filters:
    - { type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: x-weft, value: routed }] } }
    - { type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /headers } } }
    - { type: ResponseHeaderModifier, responseHeaderModifier: { add: [{ name: x-served-by, value: weft }] } }"#;
    let Some((cluster, stats)) = cluster(
        "redirects_header_filters_and_rewrites_apply",
        1,
        "",
        &[("route.yaml", http_route("filters", "", rules))],
    ) else {
        return;
    };
    let dst = cluster.service_addr();
    let (redirect, rewritten) = cluster.client.block_on(async move {
        let mut send = connect(dst).await;
        (request(&mut send, "/old/page?q=1").await.unwrap(), request(&mut send, "/api").await.unwrap())
    });
    assert_eq!(redirect.0, StatusCode::MOVED_PERMANENTLY);
    let location = redirect.2["location"].to_str().unwrap();
    assert!(location.ends_with("/new/page?q=1"), "{location}");
    assert_eq!(rewritten.0, StatusCode::OK);
    let seen = String::from_utf8_lossy(&rewritten.1);
    assert!(seen.contains("x-weft: routed"), "the app saw: {seen}");
    assert_eq!(rewritten.2["x-served-by"], "weft");
    assert_eq!(stats[0].requests.load(Ordering::SeqCst), 1, "the redirect never reached the app");
}

#[test]
fn a_service_profile_still_retries_and_times_out() {
    let profile = "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: { name: web.shop.svc.cluster.local, namespace: shop }\nspec:\n  routes:\n  - name: GET /\n    condition: { method: GET, pathRegex: / }\n    isRetryable: true\n  - name: GET /slow\n    condition: { method: GET, pathRegex: /slow }\n    timeout: 300ms\n  retryBudget: { retryRatio: 0.5, minRetriesPerSecond: 10, ttl: 10s }\n";
    let Some((cluster, stats)) = cluster(
        "a_service_profile_still_retries_and_times_out",
        1,
        "",
        &[("profile.yaml", profile.to_string())],
    ) else {
        return;
    };
    stats[0].fail_percent.store(30, Ordering::Relaxed);
    let (statuses, _) = load(&cluster, 1, 100, "/");
    assert_eq!(count(&statuses, 200), 100, "{statuses:?}");
    let metrics = cluster.client.metrics();
    let retries =
        sum(&metrics, "outbound_http_route_retry_requests_total", &[r#"route_kind="ServiceProfile""#]);
    assert_eq!(retries, stats[0].failed.load(Ordering::SeqCst) as f64, "{metrics}");

    stats[0].fail_percent.store(0, Ordering::Relaxed);
    let dst = cluster.service_addr();
    let (status, elapsed) = cluster.client.block_on(async move {
        let mut send = connect(dst).await;
        let started = Instant::now();
        // `/slow` waits until released; the profile's timeout answers.
        let (status, _, _) = request(&mut send, "/slow").await.unwrap();
        (status, started.elapsed())
    });
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn a_backend_without_endpoints_fails_fast() {
    let rules =
        "[{ backendRefs: [{ name: web, port: 80, weight: 1 }, { name: empty, port: 80, weight: 1 }] }]";
    let Some(mut cluster) = Cluster::new("a_backend_without_endpoints_fails_fast", 1) else { return };
    cluster.service("web", 200, "");
    cluster.service("empty", 203, "");
    cluster.pod("web", 0);
    cluster.write("route.yaml", &http_route("half-empty", "", rules));
    cluster.run();
    let _stats = cluster.http_apps();
    let dst = cluster.service_addr();
    let started = Instant::now();
    // One request per connection, all at once: about half draw the
    // backend that has no endpoints.
    let answers = cluster.client.block_on(async move {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                tokio::spawn(async move {
                    let mut send = connect(dst).await;
                    request(&mut send, "/").await.expect("the proxy answers")
                })
            })
            .collect();
        let mut answers = vec![];
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    });
    let elapsed = started.elapsed();
    let failed: Vec<_> = answers.iter().filter(|(s, _, _)| *s != StatusCode::OK).collect();
    assert!(!failed.is_empty() && failed.len() < answers.len(), "{} of 16 failed", failed.len());
    for (status, _, headers) in failed {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        let error = headers["l5d-proxy-error"].to_str().unwrap();
        assert!(error.contains("empty.shop.svc.cluster.local:80 has no endpoints"), "{error}");
    }
    // They wait for the queue's failfast timeout (3 s), not forever.
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
}

#[test]
fn retried_bodies_are_replayed_and_large_ones_sent_once() {
    let annotations = RETRY_5XX_3;
    let Some((cluster, stats)) = cluster(
        "retried_bodies_are_replayed_and_large_ones_sent_once",
        1,
        "",
        &[("route.yaml", http_route("uploads", annotations, "[{}]"))],
    ) else {
        return;
    };
    // The app fails its first request (of every ten, three spread out).
    stats[0].fail_percent.store(30, Ordering::Relaxed);
    let dst = cluster.service_addr();
    let answers = cluster.client.block_on(async move {
        use http_body_util::{BodyExt, Full};
        let sock = tokio::net::TcpStream::connect(dst).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await.unwrap();
        tokio::spawn(conn);
        let mut answers = vec![];
        for size in [1024usize, 100 * 1024] {
            send.ready().await.unwrap();
            let req = http::Request::post("/upload")
                .header("host", "web.shop.svc.cluster.local")
                .body(Full::new(bytes::Bytes::from(vec![b'x'; size])))
                .unwrap();
            let rsp = send.send_request(req).await.unwrap();
            let status = rsp.status();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            answers.push((status, String::from_utf8_lossy(&body).into_owned()));
        }
        answers
    });
    // The first upload failed once and was sent again, whole.
    assert_eq!(answers[0], (StatusCode::OK, "1024".to_string()));
    // 100 KiB is over the 64 KiB kept for retries: sent once, not broken.
    assert_eq!(answers[1], (StatusCode::OK, "102400".to_string()));
    assert_eq!(stats[0].requests.load(Ordering::SeqCst), 3);
}
