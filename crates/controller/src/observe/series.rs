//! What the dashboard draws: a workload's golden metrics over time, the
//! topology with traffic on its edges, and the requests its proxies'
//! policies denied.

use super::{
    Observer, Series, StatRow,
    golden::{Golden, increases, span_ending},
    window_ends,
};
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

/// Each point of a chart is the rate over this much time before it: a
/// scrape or two is too jumpy to read.
const POINT_SPAN: Duration = Duration::from_secs(10);

/// A workload's golden metrics (inbound: what it served) at one time.
#[derive(Serialize, Debug)]
pub struct Point {
    /// Unix seconds.
    pub t: f64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct Topology {
    /// Workloads, with their golden metrics.
    pub nodes: Vec<StatRow>,
    pub edges: Vec<TopologyEdge>,
}

/// Who talks to whom, with the traffic the client sent over the window.
#[derive(Serialize, Debug)]
pub struct TopologyEdge {
    pub src_namespace: String,
    pub src: String,
    pub dst_namespace: String,
    pub dst: String,
    /// Mesh TLS, with the server's proven identity (every series of the
    /// edge).
    pub secured: bool,
    pub rps: f64,
    pub success_rate: Option<f64>,
}

/// Requests or connections a workload's proxy refused, by what refused
/// them and who asked.
#[derive(Serialize, Debug)]
pub struct Denial {
    pub pod: String,
    /// `http` (a request) or `tcp` (a connection).
    pub protocol: &'static str,
    /// `kind/name` of the Server (or default policy).
    pub server: String,
    /// `kind/name` of the route, for HTTP.
    pub route: Option<String>,
    pub client_id: Option<String>,
    pub tls: String,
    pub target_addr: String,
    /// Within the window.
    pub recent: f64,
    /// Since the proxy started.
    pub total: f64,
}

impl Observer {
    /// A workload's inbound golden metrics at each scrape of the last
    /// `window`, each over the 10 s before it.
    pub fn series(&self, namespace: &str, workload: &str, window: Duration) -> Vec<Point> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        let states: Vec<_> = proxies
            .iter()
            .filter(|((ns, _), s)| ns == namespace && s.workload == workload)
            .map(|(_, s)| s)
            .collect();
        // Every proxy is scraped at the same instant of each round.
        let mut times = BTreeSet::new();
        for state in &states {
            let Some(newest) = state.samples.back() else { continue };
            times.extend(
                state.samples.iter().filter(|s| newest.at.duration_since(s.at) <= window).map(|s| s.at),
            );
        }
        let inbound = |s: &Series| s.label("direction") == Some("inbound");
        let mut points = Vec::new();
        for at in times {
            let mut golden = Golden::default();
            let mut unix = None;
            for state in &states {
                let Some(i) = state.samples.iter().position(|s| s.at == at) else { continue };
                unix = Some(state.samples[i].unix);
                if let Some((old, new)) = span_ending(&state.samples, i, POINT_SPAN) {
                    golden.add_between(old, new, inbound);
                }
            }
            if golden.secs <= 0.0 {
                continue;
            }
            points.push(Point {
                t: unix.unwrap_or_default(),
                rps: golden.rps(),
                success_rate: golden.success_rate(),
                latency_p50_ms: golden.latency_ms(0.5),
                latency_p95_ms: golden.latency_ms(0.95),
                latency_p99_ms: golden.latency_ms(0.99),
            });
        }
        points
    }

    /// Workloads and the edges between them, with what each client sent
    /// over `window` (its outbound responses by destination workload).
    pub fn topology(&self, namespace: Option<&str>, window: Duration) -> Topology {
        let nodes = self.stat(namespace, false, window);
        let mut edges: BTreeMap<(String, String, String, String), (bool, Golden)> = BTreeMap::new();
        for e in self.edges(namespace) {
            let key = (e.src_namespace, e.src, e.dst_namespace, e.dst);
            edges.entry(key).or_insert_with(|| (true, Golden::default())).0 &= e.secured;
        }
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        for ((ns, _), state) in proxies.iter() {
            let Some((old, new)) = window_ends(&state.samples, window) else { continue };
            let outbound = |s: &Series| {
                s.label("direction") == Some("outbound")
                    && matches!(s.name.as_str(), "response_total" | "response_latency_ms_bucket")
            };
            for (series, grew) in increases(old, new, outbound) {
                let (Some(dst_ns), Some(dst_pod)) = (series.label("dst_namespace"), series.label("dst_pod"))
                else {
                    continue;
                };
                let dst = proxies
                    .get(&(dst_ns.to_string(), dst_pod.to_string()))
                    .map_or_else(|| dst_pod.to_string(), |d| d.workload.clone());
                let key = (ns.clone(), state.workload.clone(), dst_ns.to_string(), dst);
                // Edges come from the latest scrape; an edge with traffic
                // in the window but none since is still one.
                let Some((_, golden)) = edges.get_mut(&key) else { continue };
                golden.secs = golden.secs.max(new.at.duration_since(old.at).as_secs_f64());
                golden.add(series, grew);
            }
        }
        let edges = edges
            .into_iter()
            .map(|((src_namespace, src, dst_namespace, dst), (secured, golden))| TopologyEdge {
                src_namespace,
                src,
                dst_namespace,
                dst,
                secured,
                rps: golden.rps(),
                success_rate: golden.success_rate(),
            })
            .collect();
        Topology { nodes, edges }
    }

    /// What a workload's proxies denied: every series that counted a
    /// denial, with how many fell within `window`.
    pub fn denials(&self, namespace: &str, workload: &str, window: Duration) -> Vec<Denial> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for ((ns, pod), state) in proxies.iter() {
            if ns != namespace || state.workload != workload {
                continue;
            }
            let Some(newest) = state.samples.back() else { continue };
            let old = window_ends(&state.samples, window).map(|(old, _)| old);
            let denied = |s: &Series| s.name.ends_with("_authz_deny_total");
            let recent: Vec<(&Series, f64)> = match old {
                Some(old) => increases(old, newest, denied),
                None => newest.series.iter().filter(|s| denied(s)).map(|s| (s, 0.0)).collect(),
            };
            for (s, grew) in recent {
                if s.value <= 0.0 {
                    continue;
                }
                let kind_name = |prefix: &str| {
                    let kind = s.label(&format!("{prefix}_kind"))?;
                    Some(format!("{kind}/{}", s.label(&format!("{prefix}_name")).unwrap_or_default()))
                };
                out.push(Denial {
                    pod: pod.clone(),
                    protocol: if s.name.starts_with("inbound_http") { "http" } else { "tcp" },
                    server: kind_name("srv").unwrap_or_default(),
                    route: kind_name("route"),
                    client_id: s.label("client_id").map(str::to_string),
                    tls: s.label("tls").unwrap_or_default().to_string(),
                    target_addr: s.label("target_addr").unwrap_or_default().to_string(),
                    recent: grew,
                    total: s.value,
                });
            }
        }
        out.sort_by(|a, b| b.recent.total_cmp(&a.recent).then(b.total.total_cmp(&a.total)));
        out
    }
}
