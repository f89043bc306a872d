//! The Grafana dashboards in grafana/ read only Linkerd's metric names
//! (which weft-proxy serves) and the labels `weft viz prometheus-config`
//! adds.

use serde_json::Value;

/// linkerd2-proxy's series that the dashboards may read.
const LINKERD_NAMES: &[&str] = &[
    "request_total",
    "response_total",
    "response_latency_ms_bucket",
    "tcp_open_total",
    "tcp_close_total",
    "tcp_open_connections",
    "tcp_read_bytes_total",
    "tcp_write_bytes_total",
    "inbound_http_authz_allow_total",
    "inbound_http_authz_deny_total",
    "inbound_tcp_authz_allow_total",
    "inbound_tcp_authz_deny_total",
    "outbound_http_route_request_statuses_total",
    "outbound_http_route_request_duration_seconds_bucket",
    "outbound_http_route_backend_response_statuses_total",
    "outbound_http_route_retry_requests_total",
    "outbound_grpc_route_request_statuses_total",
    "outbound_grpc_route_retry_requests_total",
];

/// Each `name{` of a PromQL expression.
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'{' {
            continue;
        }
        let start =
            bytes[..i].iter().rposition(|c| !(c.is_ascii_alphanumeric() || *c == b'_')).map_or(0, |p| p + 1);
        if start < i {
            out.push(expr[start..i].to_string());
        }
    }
    out
}

#[test]
fn dashboards_read_linkerds_names() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grafana");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let names = selectors(expr);
                assert!(!names.is_empty(), "{}: {expr}", path.display());
                for name in names {
                    assert!(
                        LINKERD_NAMES.contains(&name.as_str()),
                        "{}: {name} is not Linkerd's",
                        path.display()
                    );
                }
                assert!(expr.contains("namespace=~\"$namespace\""), "{}: {expr}", path.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 8, "{seen} queries in {}", dir.display());
}
