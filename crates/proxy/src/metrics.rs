//! Every metric weft-proxy exports, registered in one place, under
//! linkerd2-proxy's names and labels (DESIGN.md, contract 3), so Linkerd's
//! dashboards and queries read weft's proxies unchanged.
//!
//! Handles are resolved once per connection (transport) or per route and
//! response class (HTTP); recording is then an atomic add.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{fmt::Write, net::SocketAddr, sync::Arc, time::Instant};

/// linkerd2-proxy's `response_latency_ms` buckets.
const LATENCY_MS_BUCKETS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1_000.0,
    2_000.0, 3_000.0, 4_000.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0,
];

/// linkerd2-proxy's `tcp_connection_duration_ms` buckets.
const DURATION_MS_BUCKETS: [f64; 16] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
    1e9,
    1e10,
    1e11,
    1e12,
    1e13,
    1e14,
    1e15,
];

#[derive(Copy, Clone, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Copy, Clone, Debug, Hash, PartialEq, Eq)]
pub enum Peer {
    /// The connection the proxy accepted.
    Src,
    /// The connection the proxy opened.
    Dst,
}

/// The `tls` label and, when there is no TLS, why not.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Tls {
    /// Plaintext; the reason is Linkerd's `no_tls_reason` value.
    None(&'static str),
    /// A TLS stream the proxy did not terminate and passed on as it was.
    Passthru,
    /// Mesh TLS, with the peer's verified identity: `client_id` inbound
    /// (none when the client presented no certificate), `server_id`
    /// outbound.
    Mesh(Option<Arc<str>>),
}

impl Tls {
    pub const INBOUND_PLAIN: Tls = Tls::None("no_tls_from_remote");
    pub const OUTBOUND_PLAIN: Tls = Tls::None("not_provided_by_service_discovery");
}

/// Labels shared by every HTTP series of one authority and target.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct HttpLabels {
    pub direction: Direction,
    pub authority: Arc<str>,
    pub target_addr: SocketAddr,
    pub tls: Tls,
    /// The chosen endpoint's `dst_*` labels, from discovery.
    pub dst: Option<Arc<[(String, String)]>>,
}

#[derive(Copy, Clone, Debug, Hash, PartialEq, Eq)]
pub enum Class {
    Success,
    Failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ResponseLabels {
    pub route: HttpLabels,
    /// 0 when no response head was received.
    pub status_code: u16,
    pub grpc_status: Option<u32>,
    pub class: Class,
    pub error: Option<&'static str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct LatencyLabels {
    route: HttpLabels,
    status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub direction: Direction,
    pub peer: Peer,
    pub target_addr: SocketAddr,
    pub tls: Tls,
    /// The endpoint's `dst_*` labels, where discovery chose it.
    pub dst: Option<Arc<[(String, String)]>>,
}

/// Labels of the inbound authorization counters (Linkerd's names).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AuthzLabels {
    pub target_addr: SocketAddr,
    pub server: Arc<crate::policy::Meta>,
    /// HTTP only.
    pub route: Option<Arc<crate::policy::Meta>>,
    /// Set when allowed.
    pub authz: Option<Arc<crate::policy::Meta>>,
    pub tls: Tls,
}

/// The authorization counter a connection used last (see
/// [`Metrics::authz_http`]).
#[derive(Default)]
pub struct LastAuthz(std::sync::Mutex<Option<(AuthzLabels, Counter)>>);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CloseLabels {
    tcp: TcpLabels,
}

/// All of weft-proxy's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    tcp_open: Family<TcpLabels, Counter>,
    tcp_close: Family<CloseLabels, Counter>,
    tcp_open_connections: Family<TcpLabels, Gauge>,
    tcp_read_bytes: Family<TcpLabels, Counter>,
    tcp_write_bytes: Family<TcpLabels, Counter>,
    tcp_duration: Family<CloseLabels, Histogram>,
    identity_expiry: Gauge,
    identity_refreshes: Counter,
    http_authz_allow: Family<AuthzLabels, Counter>,
    http_authz_deny: Family<AuthzLabels, Counter>,
    tcp_authz_allow: Family<AuthzLabels, Counter>,
    tcp_authz_deny: Family<AuthzLabels, Counter>,
    /// The outbound route series.
    pub routes: crate::traffic::metrics::RouteFamilies,
}

/// The handles one connection records into.
pub struct TcpMetrics {
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    open_connections: Gauge,
    close: Counter,
    duration: Histogram,
    opened_at: Instant,
}

/// The handles one route (direction, authority, target) records into.
/// One pointer: every request's response body carries its route, and
/// hyper moves that body several times per request, so a clone is one
/// reference count and a move is eight bytes.
#[derive(Clone)]
pub struct RouteMetrics(Arc<Route>);

struct Route {
    metrics: Arc<Metrics>,
    labels: HttpLabels,
    requests: Counter,
    /// Response handles already resolved for this route: a connection
    /// keeps its route, so most responses record with an atomic add
    /// instead of hashing the label set again.
    seen: std::sync::Mutex<Seen>,
}

type ResponseKey = (u16, Option<u32>, Class, Option<&'static str>);

#[derive(Default)]
struct Seen {
    latency: Vec<(u16, Histogram)>,
    responses: Vec<(ResponseKey, Counter)>,
}

/// How many distinct statuses a route remembers handles for.
const SEEN_MAX: usize = 16;

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = Family::default();
        let responses = Family::default();
        let latency =
            Family::new_with_constructor((|| Histogram::new(LATENCY_MS_BUCKETS)) as fn() -> Histogram);
        let tcp_open = Family::default();
        let tcp_close = Family::default();
        let tcp_open_connections = Family::default();
        let tcp_read_bytes = Family::default();
        let tcp_write_bytes = Family::default();
        let tcp_duration =
            Family::new_with_constructor((|| Histogram::new(DURATION_MS_BUCKETS)) as fn() -> Histogram);
        registry.register("request", "Total count of HTTP requests", requests.clone());
        registry.register("response", "Total count of HTTP responses", responses.clone());
        registry.register(
            "response_latency_ms",
            "Elapsed times between a request's headers being received and its response's headers being sent",
            latency.clone(),
        );
        registry.register("tcp_open", "Total count of opened connections", tcp_open.clone());
        registry.register("tcp_close", "Total count of closed connections", tcp_close.clone());
        registry.register(
            "tcp_open_connections",
            "Number of currently-open connections",
            tcp_open_connections.clone(),
        );
        registry.register("tcp_read_bytes", "Total count of bytes read from peers", tcp_read_bytes.clone());
        registry.register(
            "tcp_write_bytes",
            "Total count of bytes written to peers",
            tcp_write_bytes.clone(),
        );
        registry.register("tcp_connection_duration_ms", "Connection lifetimes", tcp_duration.clone());
        let identity_expiry = Gauge::default();
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When this proxy's certificate expires (0 until it has one)",
            identity_expiry.clone(),
        );
        let identity_refreshes = Counter::default();
        registry.register(
            "identity_cert_refresh_count",
            "Certificates this proxy has been issued",
            identity_refreshes.clone(),
        );
        let http_authz_allow = Family::default();
        let http_authz_deny = Family::default();
        let tcp_authz_allow = Family::default();
        let tcp_authz_deny = Family::default();
        registry.register(
            "inbound_http_authz_allow",
            "Inbound HTTP requests an authorization admitted",
            http_authz_allow.clone(),
        );
        registry.register("inbound_http_authz_deny", "Inbound HTTP requests denied", http_authz_deny.clone());
        registry.register(
            "inbound_tcp_authz_allow",
            "Inbound connections (not HTTP) an authorization admitted",
            tcp_authz_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Inbound connections (not HTTP) denied",
            tcp_authz_deny.clone(),
        );
        let routes = crate::traffic::metrics::RouteFamilies::register(&mut registry);
        Arc::new(Self {
            routes,
            http_authz_allow,
            http_authz_deny,
            tcp_authz_allow,
            tcp_authz_deny,
            registry,
            requests,
            responses,
            latency,
            tcp_open,
            tcp_close,
            tcp_open_connections,
            tcp_read_bytes,
            tcp_write_bytes,
            tcp_duration,
            identity_expiry,
            identity_refreshes,
        })
    }

    /// Counts a connection's authorization verdict (not HTTP); allowed
    /// when `labels.authz` is set.
    pub fn authz_tcp(&self, labels: &AuthzLabels) {
        let family = if labels.authz.is_some() { &self.tcp_authz_allow } else { &self.tcp_authz_deny };
        family.get_or_create(labels).inc();
    }

    /// Counts an HTTP request's authorization verdict through `last`, the
    /// connection's most recent counter: a connection's requests mostly
    /// meet the same server, route and authorization, and comparing labels
    /// is far cheaper than hashing them into the family's map.
    pub fn authz_http(&self, last: &LastAuthz, labels: AuthzLabels) {
        let mut last = last.0.lock().expect("authz counter lock");
        if let Some((seen, counter)) = last.as_ref() {
            if *seen == labels {
                counter.inc();
                return;
            }
        }
        let family = if labels.authz.is_some() { &self.http_authz_allow } else { &self.http_authz_deny };
        let counter = family.get_or_create_owned(&labels);
        counter.inc();
        *last = Some((labels, counter));
    }

    /// Records a newly installed certificate.
    pub fn identity_refreshed(&self, not_after: std::time::SystemTime) {
        let secs = not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        self.identity_expiry.set(secs as i64);
        self.identity_refreshes.inc();
    }

    /// The Prometheus (OpenMetrics) text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts a connection as opened and returns the handles it records into.
    pub fn tcp(&self, labels: TcpLabels) -> TcpMetrics {
        self.tcp_open.get_or_create(&labels).inc();
        let open_connections = self.tcp_open_connections.get_or_create_owned(&labels);
        open_connections.inc();
        let close_labels = CloseLabels { tcp: labels.clone() };
        TcpMetrics {
            read_bytes: self.tcp_read_bytes.get_or_create_owned(&labels),
            write_bytes: self.tcp_write_bytes.get_or_create_owned(&labels),
            open_connections,
            close: self.tcp_close.get_or_create_owned(&close_labels),
            duration: self.tcp_duration.get_or_create_owned(&close_labels),
            opened_at: Instant::now(),
        }
    }

    pub fn route(self: &Arc<Self>, labels: HttpLabels) -> RouteMetrics {
        RouteMetrics(Arc::new(Route {
            requests: self.requests.get_or_create_owned(&labels),
            metrics: self.clone(),
            labels,
            seen: Default::default(),
        }))
    }
}

// === impl TcpMetrics ===

impl TcpMetrics {
    pub(crate) fn closed(&self) {
        self.open_connections.dec();
        self.close.inc();
        self.duration.observe(self.opened_at.elapsed().as_secs_f64() * 1_000.0);
    }
}

// === impl RouteMetrics ===

impl RouteMetrics {
    pub fn labels(&self) -> &HttpLabels {
        &self.0.labels
    }

    pub fn request(&self) {
        self.0.requests.inc();
    }

    pub fn response_headers(&self, status_code: u16, started: Instant) {
        let ms = started.elapsed().as_secs_f64() * 1_000.0;
        let route = &*self.0;
        let mut seen = route.seen.lock().expect("route metrics lock");
        if let Some((_, h)) = seen.latency.iter().find(|(s, _)| *s == status_code) {
            h.observe(ms);
            return;
        }
        let labels = LatencyLabels { route: route.labels.clone(), status_code };
        let h = route.metrics.latency.get_or_create_owned(&labels);
        h.observe(ms);
        if seen.latency.len() < SEEN_MAX {
            seen.latency.push((status_code, h));
        }
    }

    pub fn response_end(&self, status_code: u16, grpc_status: Option<u32>, error: Option<&'static str>) {
        let grpc_status = grpc_status.map(|code| u32::from(grpc_label(code)));
        let success =
            error.is_none() && status_code != 0 && status_code < 500 && grpc_status.is_none_or(|s| s == 0);
        let class = if success { Class::Success } else { Class::Failure };
        let key = (status_code, grpc_status, class, error);
        let route = &*self.0;
        let mut seen = route.seen.lock().expect("route metrics lock");
        if let Some((_, c)) = seen.responses.iter().find(|(k, _)| *k == key) {
            c.inc();
            return;
        }
        let labels = ResponseLabels { route: route.labels.clone(), status_code, grpc_status, class, error };
        let c = route.metrics.responses.get_or_create_owned(&labels);
        c.inc();
        if seen.responses.len() < SEEN_MAX {
            seen.responses.push((key, c));
        }
    }
}

// === label encoding ===

/// A label value written with `Display`.
struct Shown<T>(T);

impl<T: std::fmt::Display> EncodeLabelValue for Shown<T> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

fn encode_tls(tls: &Tls, direction: Direction, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeLabel;
    match tls {
        Tls::None(reason) => {
            ("tls", "no_identity").encode(encoder.encode_label())?;
            ("no_tls_reason", *reason).encode(encoder.encode_label())
        }
        Tls::Passthru => ("tls", "passthru").encode(encoder.encode_label()),
        Tls::Mesh(id) => {
            ("tls", "true").encode(encoder.encode_label())?;
            let name = match direction {
                Direction::Inbound => "client_id",
                Direction::Outbound => "server_id",
            };
            match id {
                Some(id) => (name, &**id).encode(encoder.encode_label()),
                None => Ok(()),
            }
        }
    }
}

impl EncodeLabelSet for AuthzLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("target_addr", Shown(self.target_addr)).encode(encoder.encode_label())?;
        let meta = |prefix: &str, m: &crate::policy::Meta, encoder: &mut LabelSetEncoder| {
            (format!("{prefix}_group"), m.group.as_str()).encode(encoder.encode_label())?;
            (format!("{prefix}_kind"), m.kind.as_str()).encode(encoder.encode_label())?;
            (format!("{prefix}_name"), m.name.as_str()).encode(encoder.encode_label())
        };
        meta("srv", &self.server, encoder)?;
        if let Some(route) = &self.route {
            meta("route", route, encoder)?;
        }
        if let Some(authz) = &self.authz {
            meta("authz", authz, encoder)?;
        }
        encode_tls(&self.tls, Direction::Inbound, encoder)
    }
}

impl EncodeLabelSet for HttpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("authority", &*self.authority).encode(encoder.encode_label())?;
        ("target_addr", Shown(self.target_addr)).encode(encoder.encode_label())?;
        encode_tls(&self.tls, self.direction, encoder)?;
        for (name, value) in self.dst.iter().flat_map(|d| d.iter()) {
            (name.as_str(), value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.route.encode(encoder)?;
        if self.status_code != 0 {
            ("status_code", self.status_code).encode(encoder.encode_label())?;
        }
        if let Some(grpc) = self.grpc_status {
            ("grpc_status", grpc).encode(encoder.encode_label())?;
        }
        let class = match self.class {
            Class::Success => "success",
            Class::Failure => "failure",
        };
        ("classification", class).encode(encoder.encode_label())?;
        if let Some(error) = self.error {
            ("error", error).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for LatencyLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.route.encode(encoder)?;
        if self.status_code != 0 {
            ("status_code", self.status_code).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl TcpLabels {
    /// An inbound, plaintext connection's labels (tests).
    pub(crate) fn inbound_plain(target_addr: SocketAddr) -> Self {
        TcpLabels {
            direction: Direction::Inbound,
            peer: Peer::Src,
            target_addr,
            tls: Tls::INBOUND_PLAIN,
            dst: None,
        }
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        let peer = match self.peer {
            Peer::Src => "src",
            Peer::Dst => "dst",
        };
        ("peer", peer).encode(encoder.encode_label())?;
        ("target_addr", Shown(self.target_addr)).encode(encoder.encode_label())?;
        encode_tls(&self.tls, self.direction, encoder)?;
        for (name, value) in self.dst.iter().flat_map(|d| d.iter()) {
            (name.as_str(), value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for CloseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.tcp.encode(encoder)?;
        ("errno", "").encode(encoder.encode_label())
    }
}

/// A gRPC status code as a series label: gRPC defines 0 to 16, and a
/// peer's other numbers are UNKNOWN (2), so a peer cannot mint a series
/// per number.
pub(crate) fn grpc_label(code: u32) -> u16 {
    if code <= 16 { code as u16 } else { 2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> HttpLabels {
        HttpLabels {
            direction: Direction::Outbound,
            authority: "web.default.svc.cluster.local:80".into(),
            target_addr: "10.1.2.3:8080".parse().unwrap(),
            tls: Tls::OUTBOUND_PLAIN,
            dst: None,
        }
    }

    #[test]
    fn http_series_use_linkerds_names_and_labels() {
        let metrics = Metrics::new();
        let route = metrics.route(labels());
        route.request();
        route.request();
        route.response_headers(200, Instant::now());
        route.response_end(200, None, None);
        route.response_end(503, None, None);
        route.response_end(200, Some(14), None);
        route.response_end(200, Some(4_000_000), None);
        route.response_end(200, Some(2), None);
        let text = metrics.encode();
        let base = r#"direction="outbound",authority="web.default.svc.cluster.local:80",target_addr="10.1.2.3:8080",tls="no_identity",no_tls_reason="not_provided_by_service_discovery""#;
        assert!(text.contains(&format!("request_total{{{base}}} 2")), "{text}");
        assert!(
            text.contains(&format!(
                r#"response_total{{{base},status_code="200",classification="success"}} 1"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"response_total{{{base},status_code="503",classification="failure"}} 1"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"response_total{{{base},status_code="200",grpc_status="14",classification="failure"}} 1"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"response_total{{{base},status_code="200",grpc_status="2",classification="failure"}} 2"#
            )),
            "codes past 16 count as UNKNOWN: {text}"
        );
        assert!(!text.contains("4000000"), "{text}");
        assert!(
            text.contains(&format!(r#"response_latency_ms_bucket{{le="1.0",{base},status_code="200"}} 1"#)),
            "{text}"
        );
    }

    #[test]
    fn tcp_series_count_opens_closes_and_bytes() {
        let metrics = Metrics::new();
        let labels = TcpLabels::inbound_plain("10.1.2.3:5432".parse().unwrap());
        let conn = metrics.tcp(labels.clone());
        conn.read_bytes.inc_by(10);
        conn.write_bytes.inc_by(20);
        let text = metrics.encode();
        let base = r#"direction="inbound",peer="src",target_addr="10.1.2.3:5432",tls="no_identity",no_tls_reason="no_tls_from_remote""#;
        assert!(text.contains(&format!("tcp_open_total{{{base}}} 1")), "{text}");
        assert!(text.contains(&format!("tcp_open_connections{{{base}}} 1")), "{text}");
        assert!(text.contains(&format!("tcp_read_bytes_total{{{base}}} 10")), "{text}");
        assert!(text.contains(&format!("tcp_write_bytes_total{{{base}}} 20")), "{text}");
        conn.closed();
        let text = metrics.encode();
        assert!(text.contains(&format!("tcp_open_connections{{{base}}} 0")), "{text}");
        assert!(text.contains(&format!(r#"tcp_close_total{{{base},errno=""}} 1"#)), "{text}");
    }
}
