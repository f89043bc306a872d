//! Per-route golden metrics (`weft routes`, `/api/routes`), from
//! Linkerd's outbound route series that clients' proxies keep per parent
//! (the Service asked for) and route:
//!
//! - `outbound_{http,grpc}_route_request_statuses_total`: logical
//!   requests, as the application saw them (after retries);
//! - `outbound_{http,grpc}_route_backend_response_statuses_total`: each
//!   attempt a backend answered;
//! - `outbound_{http,grpc}_route_retry_requests_total`: retries sent;
//! - `outbound_{http,grpc}_route_request_duration_seconds`: latency.

use super::{Observer, Series, golden::increases, quantile, window_ends};
use serde::Serialize;
use std::{collections::BTreeMap, time::Duration};

#[derive(Serialize, Debug, Default, PartialEq)]
pub struct RouteRow {
    /// `http` or `grpc`.
    pub protocol: String,
    pub parent_namespace: String,
    /// `kind/name` of the parent (a Service).
    pub parent: String,
    pub parent_port: String,
    pub route_namespace: String,
    /// `kind/name` of the route (`default/http` where none matched).
    pub route: String,
    /// Logical requests in the window.
    pub requests: f64,
    pub rps: f64,
    /// Logical requests that succeeded, after retries.
    pub effective_success: Option<f64>,
    /// Backend responses (attempts) that succeeded.
    pub actual_success: Option<f64>,
    /// Retries sent, as a share of logical requests.
    pub retry_ratio: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub window_secs: f64,
}

/// One route's counts, as they grew.
#[derive(Default, Debug)]
struct Acc {
    requests: f64,
    successes: f64,
    attempts: f64,
    attempt_successes: f64,
    retries: f64,
    /// Cumulative counts by bound (thousandths of a millisecond).
    buckets: BTreeMap<u64, f64>,
}

type Key = (String, String, String, String, String, String);

/// `(protocol, series)` for a route series name: `("http",
/// "request_statuses_total")` for `outbound_http_route_request_statuses_total`.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("outbound_")?;
    let (protocol, series) = rest.split_once("_route_")?;
    matches!(protocol, "http" | "grpc").then_some((protocol, series))
}

fn key(protocol: &str, s: &Series) -> Key {
    let l = |n: &str| s.label(n).unwrap_or_default().to_string();
    let kind_name = |kind: &str, name: &str| format!("{}/{}", l(kind).to_lowercase(), l(name));
    (
        protocol.to_string(),
        l("parent_namespace"),
        kind_name("parent_kind", "parent_name"),
        l("parent_port"),
        l("route_namespace"),
        kind_name("route_kind", "route_name"),
    )
}

/// Whether a status series counts as a success: no error, and no 5xx
/// (HTTP) or an OK status (gRPC).
fn succeeded(protocol: &str, s: &Series) -> bool {
    if s.label("error").is_some_and(|e| !e.is_empty()) {
        return false;
    }
    if protocol == "grpc" {
        matches!(s.label("grpc_status"), Some("0" | "OK" | "ok"))
    } else {
        s.label("http_status").and_then(|c| c.parse::<u16>().ok()).is_some_and(|c| c < 500)
    }
}

fn add(routes: &mut BTreeMap<Key, Acc>, s: &Series, grew: f64) {
    let Some((protocol, series)) = split_name(&s.name) else { return };
    let acc = routes.entry(key(protocol, s)).or_default();
    match series {
        "request_statuses_total" => {
            acc.requests += grew;
            if succeeded(protocol, s) {
                acc.successes += grew;
            }
        }
        "backend_response_statuses_total" => {
            acc.attempts += grew;
            if succeeded(protocol, s) {
                acc.attempt_successes += grew;
            }
        }
        "retry_requests_total" => acc.retries += grew,
        "request_duration_seconds_bucket" => {
            let le = s.label("le").and_then(|le| {
                if le == "+Inf" { Some(u64::MAX) } else { le.parse::<f64>().ok().map(|v| (v * 1e6) as u64) }
            });
            if let Some(le) = le {
                *acc.buckets.entry(le).or_default() += grew;
            }
        }
        _ => {}
    }
}

fn rows(routes: BTreeMap<Key, Acc>, secs: f64) -> Vec<RouteRow> {
    let ratio = |n: f64, d: f64| (d > 0.0).then(|| n / d);
    routes
        .into_iter()
        .map(|((protocol, parent_namespace, parent, parent_port, route_namespace, route), acc)| {
            let latency = |q| if acc.requests > 0.0 { quantile(&acc.buckets, q) } else { None };
            RouteRow {
                protocol,
                parent_namespace,
                parent,
                parent_port,
                route_namespace,
                route,
                requests: acc.requests,
                rps: if secs > 0.0 { acc.requests / secs } else { 0.0 },
                effective_success: ratio(acc.successes, acc.requests),
                actual_success: ratio(acc.attempt_successes, acc.attempts),
                retry_ratio: ratio(acc.retries, acc.requests),
                latency_p50_ms: latency(0.5),
                latency_p95_ms: latency(0.95),
                latency_p99_ms: latency(0.99),
                window_secs: secs,
            }
        })
        .collect()
}

fn is_route_series(s: &Series) -> bool {
    split_name(&s.name).is_some()
}

impl Observer {
    /// Per parent and route, what the clients in `namespace` (or only
    /// `workload`'s proxies) sent over `window`.
    pub fn routes(&self, namespace: Option<&str>, workload: Option<&str>, window: Duration) -> Vec<RouteRow> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        let mut routes = BTreeMap::new();
        let mut secs = 0.0f64;
        for ((ns, _), state) in proxies.iter() {
            if namespace.is_some_and(|n| n != ns) || workload.is_some_and(|w| w != state.workload) {
                continue;
            }
            let Some((old, new)) = window_ends(&state.samples, window) else { continue };
            secs = secs.max(new.at.duration_since(old.at).as_secs_f64());
            for (series, grew) in increases(old, new, is_route_series) {
                add(&mut routes, series, grew);
            }
        }
        rows(routes, secs)
    }
}

#[cfg(test)]
mod tests;
