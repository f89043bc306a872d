//! The route aggregation on hand-written exposition text, as Linkerd's
//! proxy (and weft-proxy) write it.

use super::super::{Sample, parse};
use super::*;
use std::time::Instant;

const PARENT: &str = r#"parent_group="core",parent_kind="Service",parent_namespace="demo",parent_name="voting",parent_port="8080",parent_section_name="""#;
const ROUTE: &str = r#"route_group="gateway.networking.k8s.io",route_kind="HTTPRoute",route_namespace="demo",route_name="vote""#;

/// The route series of one scrape: `ok` logical successes, `failed`
/// logical failures (503), `attempts_ok`/`attempts_failed` backend
/// responses, `retries`, and every request under 10 ms but `slow` under
/// 100 ms.
fn scrape(ok: u32, failed: u32, attempts_ok: u32, attempts_failed: u32, retries: u32, slow: u32) -> String {
    let backend = r#"backend_group="core",backend_kind="Service",backend_namespace="demo",backend_name="voting",backend_port="8080",backend_section_name="""#;
    let fast = ok + failed - slow;
    format!(
        "# TYPE outbound_http_route_request_statuses counter\n\
         outbound_http_route_request_statuses_total{{{PARENT},{ROUTE},http_status=\"200\",error=\"\"}} {ok}\n\
         outbound_http_route_request_statuses_total{{{PARENT},{ROUTE},http_status=\"503\",error=\"\"}} {failed}\n\
         outbound_http_route_backend_response_statuses_total{{{PARENT},{ROUTE},{backend},http_status=\"200\",error=\"\"}} {attempts_ok}\n\
         outbound_http_route_backend_response_statuses_total{{{PARENT},{ROUTE},{backend},http_status=\"\",error=\"CONNECT_TIMEOUT\"}} {attempts_failed}\n\
         outbound_http_route_retry_requests_total{{{PARENT},{ROUTE}}} {retries}\n\
         outbound_http_route_retry_successes_total{{{PARENT},{ROUTE}}} 0\n\
         outbound_http_route_request_duration_seconds_bucket{{{PARENT},{ROUTE},le=\"0.01\"}} {fast}\n\
         outbound_http_route_request_duration_seconds_bucket{{{PARENT},{ROUTE},le=\"0.1\"}} {total}\n\
         outbound_http_route_request_duration_seconds_bucket{{{PARENT},{ROUTE},le=\"+Inf\"}} {total}\n\
         outbound_http_route_request_duration_seconds_sum{{{PARENT},{ROUTE}}} 1.5\n\
         outbound_http_route_request_attempts_bucket{{{PARENT},{ROUTE},le=\"1\"}} {total}\n",
        total = ok + failed,
    )
}

fn sample(at: Instant, text: &str) -> Sample {
    Sample { at, unix: 0.0, series: parse(text) }
}

fn aggregate(old: &Sample, new: &Sample) -> Vec<RouteRow> {
    let mut routes = BTreeMap::new();
    for (series, grew) in increases(old, new, is_route_series) {
        add(&mut routes, series, grew);
    }
    rows(routes, new.at.duration_since(old.at).as_secs_f64())
}

#[test]
fn a_route_with_retries() {
    let t0 = Instant::now();
    let old = sample(t0, &scrape(100, 10, 120, 20, 30, 0));
    // In 10 s: 90 succeeded and 10 failed (logical); of 130 attempts, 110
    // answered 200 and 20 timed out; 30 retries; 10 requests were slow.
    let new = sample(t0 + Duration::from_secs(10), &scrape(190, 20, 230, 40, 60, 10));
    let rows = aggregate(&old, &new);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.protocol, "http");
    assert_eq!(r.parent, "service/voting");
    assert_eq!(r.parent_namespace, "demo");
    assert_eq!(r.parent_port, "8080");
    assert_eq!(r.route, "httproute/vote");
    assert_eq!(r.requests, 100.0);
    assert_eq!(r.rps, 10.0);
    assert_eq!(r.effective_success, Some(0.9));
    assert_eq!(r.actual_success, Some(110.0 / 130.0));
    assert_eq!(r.retry_ratio, Some(0.3));
    // 90 of 100 under 10 ms: the median is within the first bucket, p95
    // and p99 within the second.
    let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
    assert!(near(r.latency_p50_ms, 50.0 / 90.0 * 10.0), "{:?}", r.latency_p50_ms);
    assert!(near(r.latency_p95_ms, 10.0 + 90.0 * 0.5), "{:?}", r.latency_p95_ms);
    assert!(r.latency_p99_ms.unwrap() > r.latency_p95_ms.unwrap());
}

#[test]
fn grpc_routes_count_by_grpc_status_and_resets_count_from_zero() {
    let line = |status: &str, n: u32| {
        format!(
            "outbound_grpc_route_request_statuses_total{{{PARENT},route_group=\"gateway.networking.k8s.io\",route_kind=\"GRPCRoute\",route_namespace=\"demo\",route_name=\"votes\",grpc_status=\"{status}\",error=\"\"}} {n}\n"
        )
    };
    let t0 = Instant::now();
    let old = sample(t0, &(line("OK", 500) + &line("UNAVAILABLE", 100)));
    // The proxy restarted: its counters began again.
    let new = sample(t0 + Duration::from_secs(5), &(line("OK", 40) + &line("UNAVAILABLE", 10)));
    let rows = aggregate(&old, &new);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].protocol, "grpc");
    assert_eq!(rows[0].route, "grpcroute/votes");
    assert_eq!(rows[0].requests, 50.0);
    assert_eq!(rows[0].effective_success, Some(0.8));
    // No attempts were counted: no figure, rather than 0%; no retries
    // were counted: none were sent.
    assert_eq!(rows[0].actual_success, None);
    assert_eq!(rows[0].retry_ratio, Some(0.0));
    assert_eq!(rows[0].latency_p50_ms, None);
}

#[test]
fn other_series_are_not_routes() {
    assert_eq!(
        split_name("outbound_http_route_request_statuses_total"),
        Some(("http", "request_statuses_total"))
    );
    assert_eq!(split_name("outbound_tcp_route_open_total"), None);
    assert_eq!(split_name("response_total"), None);
}
