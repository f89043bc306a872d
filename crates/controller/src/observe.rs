//! What the controller sees of the mesh's proxies: it scrapes each meshed
//! pod's proxy admin (`/ready`, `/metrics`) every few seconds and keeps a
//! short history, from which `weft stat`, `weft edges`, `weft routes`,
//! `weft check` and the dashboard are answered (`/api/...` on the admin
//! port).

pub mod check;
mod golden;
mod prometheus;
mod routes;
mod series;
mod text;

pub use check::CheckResult;
pub use routes::RouteRow;
pub use series::{Denial, Point, Topology, TopologyEdge};
pub use text::{Series, parse};

use serde::Serialize;
use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};
use weft_store::{Kind, Resource, SharedIndex};

/// How much history is kept: the longest `--window` answered.
const HISTORY: Duration = Duration::from_secs(10 * 60);
const ADMIN_PORT: u16 = 4191;

pub struct Observer {
    index: SharedIndex,
    every: Duration,
    proxies: Mutex<BTreeMap<(String, String), ProxyState>>,
    /// Set when the controller has a CA: taps need its identity.
    ca: Mutex<Option<Arc<crate::identity::Ca>>>,
    /// Set to read the proxies' series from Prometheus instead.
    prometheus: Mutex<Option<String>>,
    /// The inbound defaults, for the policies the dashboard shows.
    inbound: Mutex<crate::inbound::InboundConfig>,
}

/// One proxy's scrape: readiness and the kept series, or why not.
struct Scraped {
    key: (String, String),
    workload: String,
    admin: SocketAddr,
    ready: bool,
    series: Result<Vec<Series>, String>,
}

/// One proxy as last seen.
struct ProxyState {
    workload: String,
    admin: SocketAddr,
    ready: bool,
    error: Option<String>,
    samples: VecDeque<Sample>,
}

/// The series of one scrape that the answers use.
struct Sample {
    at: Instant,
    /// Unix seconds, for charts.
    unix: f64,
    series: Vec<Series>,
}

#[derive(Serialize)]
pub struct ProxyInfo {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub admin: String,
    pub ready: bool,
    /// Unix seconds; absent without identity.
    pub certificate_expires: Option<u64>,
    pub error: Option<String>,
}

#[derive(Serialize, Default)]
pub struct StatRow {
    pub namespace: String,
    pub name: String,
    /// Pods with a ready proxy / pods.
    pub meshed: String,
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub tcp_connections: f64,
    /// Inbound responses in the window.
    pub requests: f64,
    pub window_secs: f64,
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub src_namespace: String,
    pub src: String,
    pub dst_namespace: String,
    pub dst: String,
    /// Mesh TLS, with the server's proven identity.
    pub secured: bool,
    pub client_id: String,
    pub server_id: String,
}

impl Observer {
    pub fn new(index: SharedIndex, every: Duration) -> Arc<Self> {
        Arc::new(Self {
            index,
            every,
            proxies: Mutex::new(BTreeMap::new()),
            ca: Mutex::new(None),
            prometheus: Mutex::new(None),
            inbound: Mutex::new(Default::default()),
        })
    }

    /// Reads the proxies' series from the Prometheus at `url`
    /// (`http://host:port`) instead of scraping them.
    pub fn use_prometheus(&self, url: String) {
        *self.prometheus.lock().unwrap_or_else(|p| p.into_inner()) = Some(url);
    }

    /// The inbound defaults the controller serves with, so that the
    /// dashboard shows the policies the proxies get.
    pub fn set_inbound_config(&self, config: crate::inbound::InboundConfig) {
        *self.inbound.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    pub(crate) fn inbound_config(&self) -> crate::inbound::InboundConfig {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn index(&self) -> &SharedIndex {
        &self.index
    }

    /// Lets `/api/tap` tap proxies as the controller's identity.
    pub fn enable_tap(&self, ca: Arc<crate::identity::Ca>) {
        *self.ca.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca);
    }

    /// Starts a tap; `None` without a CA.
    pub fn tap(&self, query: crate::tap::TapQuery) -> Option<tokio::sync::mpsc::Receiver<String>> {
        let ca = self.ca.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some(crate::tap::start(&self.index, ca, query))
    }

    /// Scrapes every meshed pod's proxy (or, with [`Observer::use_prometheus`],
    /// asks Prometheus for their series), for as long as the task runs.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.every);
        loop {
            tick.tick().await;
            let targets = self.targets();
            let prometheus = self.prometheus.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let results: Vec<Scraped> = match prometheus {
                Some(url) => prometheus::scrape(&url, targets).await,
                None => {
                    let scrapes = targets.into_iter().map(|(key, workload, admin)| async move {
                        let ready = matches!(get(admin, "/ready").await, Ok((200, _)));
                        let series = match get(admin, "/metrics").await {
                            Ok((200, text)) => Ok(parse(&text)),
                            Ok((status, _)) => Err(format!("/metrics answered {status}")),
                            Err(e) => Err(e.to_string()),
                        };
                        Scraped { key, workload, admin, ready, series }
                    });
                    futures_util::future::join_all(scrapes).await
                }
            };
            let now = Instant::now();
            let unix =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
            let seen: Vec<_> = results.iter().map(|r| r.key.clone()).collect();
            proxies.retain(|k, _| seen.contains(k));
            for Scraped { key, workload, admin, ready, series } in results {
                let state = proxies.entry(key).or_insert_with(|| ProxyState {
                    workload: workload.clone(),
                    admin,
                    ready: false,
                    error: None,
                    samples: VecDeque::new(),
                });
                state.workload = workload;
                state.admin = admin;
                state.ready = ready;
                match series {
                    Ok(series) => {
                        state.error = None;
                        state.samples.push_back(Sample { at: now, unix, series });
                        while state.samples.front().is_some_and(|s| now.duration_since(s.at) > HISTORY) {
                            state.samples.pop_front();
                        }
                    }
                    Err(e) => state.error = Some(e),
                }
            }
        }
    }

    /// Meshed pods and their proxies' admin addresses.
    fn targets(&self) -> Vec<((String, String), String, SocketAddr)> {
        let index = crate::lock(&self.index);
        let mut out = Vec::new();
        {
            for r in index.all(Kind::Pod) {
                let Resource::Pod(pod) = r else { continue };
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let meta = &pod.metadata;
                let labels = meta.labels.clone().unwrap_or_default();
                if !labels.contains_key("linkerd.io/control-plane-ns") {
                    continue;
                }
                let Some(ip) =
                    pod.status.as_ref().and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok())
                else {
                    continue;
                };
                let port = meta
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("config.linkerd.io/admin-port"))
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(ADMIN_PORT);
                let name = meta.name.clone().unwrap_or_default();
                out.push((
                    (ns.clone(), name.clone()),
                    workload_of(&labels, &name),
                    SocketAddr::new(ip, port),
                ));
            }
        }
        out
    }

    pub fn proxies(&self) -> Vec<ProxyInfo> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        proxies
            .iter()
            .map(|((ns, pod), s)| ProxyInfo {
                namespace: ns.clone(),
                pod: pod.clone(),
                workload: s.workload.clone(),
                admin: s.admin.to_string(),
                ready: s.ready,
                certificate_expires: s.samples.back().and_then(|sample| {
                    sample
                        .series
                        .iter()
                        .find(|x| x.name == "identity_cert_expiration_timestamp_seconds")
                        .map(|x| x.value as u64)
                        .filter(|v| *v > 0)
                }),
                error: s.error.clone(),
            })
            .collect()
    }

    /// Golden metrics per workload (`by = "deploy"`) or pod, from what the
    /// proxies served inbound over the last `window`.
    pub fn stat(&self, namespace: Option<&str>, by_pod: bool, window: Duration) -> Vec<StatRow> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        let mut groups: BTreeMap<(String, String), Vec<&ProxyState>> = BTreeMap::new();
        for ((ns, pod), state) in proxies.iter() {
            if namespace.is_some_and(|n| n != ns) {
                continue;
            }
            let name = if by_pod { pod.clone() } else { state.workload.clone() };
            groups.entry((ns.clone(), name)).or_default().push(state);
        }
        groups
            .into_iter()
            .map(|((namespace, name), states)| {
                let ready = states.iter().filter(|s| s.ready).count();
                let mut row = StatRow {
                    namespace,
                    name,
                    meshed: format!("{ready}/{}", states.len()),
                    ..Default::default()
                };
                let (mut success, mut failure, mut secs) = (0.0, 0.0, 0.0f64);
                let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
                for state in &states {
                    let Some((old, new)) = window_ends(&state.samples, window) else { continue };
                    secs = secs.max(new.at.duration_since(old.at).as_secs_f64());
                    let inbound = |s: &&Series| s.label("direction") == Some("inbound");
                    let delta = |pred: &dyn Fn(&Series) -> bool| {
                        let sum = |sample: &Sample| {
                            sample
                                .series
                                .iter()
                                .filter(inbound)
                                .filter(|s| pred(s))
                                .map(|s| s.value)
                                .sum::<f64>()
                        };
                        (sum(new) - sum(old)).max(0.0)
                    };
                    success += delta(&|s| {
                        s.name == "response_total" && s.label("classification") == Some("success")
                    });
                    failure += delta(&|s| {
                        s.name == "response_total" && s.label("classification") == Some("failure")
                    });
                    for le in bucket_bounds(new) {
                        let d = delta(&|s| {
                            s.name == "response_latency_ms_bucket"
                                && s.label("le").and_then(parse_le) == Some(le)
                        });
                        *buckets.entry(le).or_default() += d;
                    }
                    row.tcp_connections += new
                        .series
                        .iter()
                        .filter(inbound)
                        .filter(|s| s.name == "tcp_open_connections" && s.label("peer") == Some("src"))
                        .map(|s| s.value)
                        .sum::<f64>();
                }
                let total = success + failure;
                row.requests = total;
                row.window_secs = secs;
                if secs > 0.0 {
                    row.rps = total / secs;
                }
                if total > 0.0 {
                    row.success_rate = Some(success / total);
                    row.latency_p50_ms = quantile(&buckets, 0.5);
                    row.latency_p95_ms = quantile(&buckets, 0.95);
                    row.latency_p99_ms = quantile(&buckets, 0.99);
                }
                row
            })
            .collect()
    }

    /// Golden metrics per service: what the proxies served inbound for
    /// each service's authority (`name.ns.svc.<domain>:port`).
    pub fn stat_services(&self, namespace: Option<&str>, window: Duration) -> Vec<StatRow> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        #[derive(Default)]
        struct Acc {
            success: f64,
            failure: f64,
            secs: f64,
            buckets: BTreeMap<u64, f64>,
            pods: std::collections::BTreeSet<String>,
            ready: std::collections::BTreeSet<String>,
        }
        let mut by_service: BTreeMap<(String, String), Acc> = BTreeMap::new();
        for ((_, pod), state) in proxies.iter() {
            let Some((old, new)) = window_ends(&state.samples, window) else { continue };
            let secs = new.at.duration_since(old.at).as_secs_f64();
            let service_of = |s: &Series| -> Option<(String, String)> {
                let authority = s.label("authority")?;
                let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
                let mut parts = host.split('.');
                let (svc, ns, kind) = (parts.next()?, parts.next()?, parts.next()?);
                (kind == "svc").then(|| (ns.to_string(), svc.to_string()))
            };
            let inbound = |s: &&Series| s.label("direction") == Some("inbound");
            // (service, what: classification or "le", bucket bound) -> delta
            type Key = ((String, String), String, Option<u64>);
            let mut deltas: BTreeMap<Key, f64> = BTreeMap::new();
            for (sample, sign) in [(new, 1.0), (old, -1.0)] {
                for s in sample.series.iter().filter(inbound) {
                    let Some(key) = service_of(s) else { continue };
                    let what = match s.name.as_str() {
                        "response_total" => (s.label("classification").unwrap_or_default().to_string(), None),
                        "response_latency_ms_bucket" => ("le".to_string(), s.label("le").and_then(parse_le)),
                        _ => continue,
                    };
                    *deltas.entry((key, what.0, what.1)).or_default() += sign * s.value;
                }
            }
            for ((key, what, le), delta) in deltas {
                if namespace.is_some_and(|n| n != key.0) {
                    continue;
                }
                let acc = by_service.entry(key).or_default();
                acc.secs = acc.secs.max(secs);
                acc.pods.insert(pod.clone());
                if state.ready {
                    acc.ready.insert(pod.clone());
                }
                let delta = delta.max(0.0);
                match (what.as_str(), le) {
                    ("success", _) => acc.success += delta,
                    ("failure", _) => acc.failure += delta,
                    ("le", Some(le)) => *acc.buckets.entry(le).or_default() += delta,
                    _ => {}
                }
            }
        }
        by_service
            .into_iter()
            .map(|((namespace, name), acc)| {
                let total = acc.success + acc.failure;
                StatRow {
                    namespace,
                    name,
                    meshed: format!("{}/{}", acc.ready.len(), acc.pods.len()),
                    success_rate: (total > 0.0).then(|| acc.success / total),
                    rps: if acc.secs > 0.0 { total / acc.secs } else { 0.0 },
                    latency_p50_ms: quantile(&acc.buckets, 0.5),
                    latency_p95_ms: quantile(&acc.buckets, 0.95),
                    latency_p99_ms: quantile(&acc.buckets, 0.99),
                    tcp_connections: 0.0,
                    requests: total,
                    window_secs: acc.secs,
                }
            })
            .collect()
    }

    /// Who talks to whom, from each proxy's outbound series (the latest
    /// scrape): over mesh TLS or not, with both identities.
    pub fn edges(&self, namespace: Option<&str>) -> Vec<Edge> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        let index = crate::lock(&self.index);
        let mut edges = std::collections::BTreeSet::new();
        let identity = |ns: &str, pod: &str| -> String {
            let key = weft_store::Key { kind: Kind::Pod, namespace: ns.into(), name: pod.into() };
            let Some(Resource::Pod(p)) = index.get(&key) else { return String::new() };
            Some(&**p)
                .and_then(|p| {
                    let sa =
                        p.spec.as_ref()?.service_account_name.clone().unwrap_or_else(|| "default".into());
                    let cp = p.metadata.labels.as_ref()?.get("linkerd.io/control-plane-ns")?.clone();
                    Some(format!("{sa}.{ns}.serviceaccount.identity.{cp}.{}", index.config().trust_domain))
                })
                .unwrap_or_default()
        };
        for ((ns, pod), state) in proxies.iter() {
            let Some(latest) = state.samples.back() else { continue };
            for s in &latest.series {
                if !(s.name == "request_total" || s.name == "tcp_open_total")
                    || s.label("direction") != Some("outbound")
                {
                    continue;
                }
                let (Some(dst_ns), Some(dst_pod)) = (s.label("dst_namespace"), s.label("dst_pod")) else {
                    continue;
                };
                if s.name == "tcp_open_total" && s.label("peer") != Some("dst") {
                    continue;
                }
                if namespace.is_some_and(|n| n != ns && n != dst_ns) {
                    continue;
                }
                let dst = proxies.get(&(dst_ns.to_string(), dst_pod.to_string())).map(|d| d.workload.clone());
                let server_id = s.label("server_id").unwrap_or_default().to_string();
                edges.insert(Edge {
                    src_namespace: ns.clone(),
                    src: state.workload.clone(),
                    dst_namespace: dst_ns.to_string(),
                    dst: dst.unwrap_or_else(|| dst_pod.to_string()),
                    secured: s.label("tls") == Some("true") && !server_id.is_empty(),
                    client_id: identity(ns, pod),
                    server_id,
                });
            }
        }
        edges.into_iter().collect()
    }
}

/// A pod's workload: its `app` (or `app.kubernetes.io/name`) label, else
/// its name without a trailing `-N`.
fn workload_of(labels: &BTreeMap<String, String>, pod: &str) -> String {
    labels
        .get("app")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .cloned()
        .unwrap_or_else(|| pod.rsplit_once('-').map_or(pod, |(w, _)| w).to_string())
}

/// The oldest sample within `window` of the newest, and the newest.
fn window_ends(samples: &VecDeque<Sample>, window: Duration) -> Option<(&Sample, &Sample)> {
    let new = samples.back()?;
    let old = samples.iter().find(|s| new.at.duration_since(s.at) <= window)?;
    (old.at < new.at).then_some((old, new))
}

fn parse_le(le: &str) -> Option<u64> {
    if le == "+Inf" { Some(u64::MAX) } else { le.parse::<f64>().ok().map(|v| (v * 1000.0) as u64) }
}

fn bucket_bounds(sample: &Sample) -> Vec<u64> {
    let mut bounds: Vec<u64> = sample
        .series
        .iter()
        .filter(|s| s.name == "response_latency_ms_bucket")
        .filter_map(|s| s.label("le").and_then(parse_le))
        .collect();
    bounds.sort();
    bounds.dedup();
    bounds
}

/// A quantile from cumulative buckets (bounds in thousandths of a ms),
/// interpolated within the bucket, as Prometheus' histogram_quantile does.
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = buckets.get(&u64::MAX).copied().or_else(|| buckets.values().last().copied())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0u64, 0.0);
    for (&le, &count) in buckets {
        if count >= rank {
            if le == u64::MAX {
                return Some(lower as f64 / 1000.0);
            }
            let within = (rank - below) / (count - below).max(f64::MIN_POSITIVE);
            return Some((lower as f64 + (le - lower) as f64 * within) / 1000.0);
        }
        lower = le;
        below = count;
    }
    None
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr));
    let mut sock =
        connect.await.map_err(|_| std::io::Error::other(format!("{addr}: connect timed out")))??;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), sock.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other(format!("{addr}: no answer in 2s")))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Seconds since the epoch, for `weft check`'s expiry arithmetic.
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets: BTreeMap<u64, f64> =
            [(1_000, 50.0), (10_000, 90.0), (100_000, 100.0), (u64::MAX, 100.0)].into();
        assert_eq!(quantile(&buckets, 0.5), Some(1.0));
        assert_eq!(quantile(&buckets, 0.7), Some(5.5));
        assert_eq!(quantile(&buckets, 0.99), Some(91.0));
    }
}
