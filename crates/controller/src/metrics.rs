//! The controller's own metrics, registered in one place: open watches by
//! API and the index's size by kind.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::Arc;
use weft_store::SharedIndex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    watches: Family<ApiLabels, Gauge>,
    resources: Family<KindLabels, Gauge>,
    update_latency: Histogram,
    certify: Family<ResultLabels, Counter>,
    issuer_expiry: Gauge,
    issuer_reload_errors: Counter,
    connections: Family<TlsLabels, Counter>,
    rejected: Gauge,
}

/// An open watch: counted while it lives.
pub struct WatchGauge(Gauge);

impl Drop for WatchGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("weft_controller");
        let watches = Family::default();
        let resources = Family::default();
        registry.register("watches", "Open streams to proxies, by API", watches.clone());
        registry.register("index_resources", "Resources in the index, by kind", resources.clone());
        let update_latency = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        registry.register(
            "endpoint_update_latency_seconds",
            "From the index publishing a change of endpoints to the update being sent to a proxy",
            update_latency.clone(),
        );
        let certify = Family::default();
        registry.register(
            "identity_certify",
            "Certify calls by result (ok, unauthenticated, permission_denied, invalid_argument)",
            certify.clone(),
        );
        let issuer_expiry = Gauge::default();
        registry.register(
            "identity_issuer_expiration_timestamp_seconds",
            "When the issuer certificate in use expires",
            issuer_expiry.clone(),
        );
        let issuer_reload_errors = Counter::default();
        registry.register(
            "identity_issuer_reload_errors",
            "Changes to the identity directory that did not validate (the last good issuer stayed)",
            issuer_reload_errors.clone(),
        );
        let connections = Family::default();
        registry.register(
            "grpc_connections",
            "Connections accepted on the gRPC port, by whether they were mesh TLS",
            connections.clone(),
        );
        let rejected = Gauge::default();
        registry.register(
            "index_rejected",
            "Resources (or whole files) the store could not use: malformed or invalid; the last good version stayed",
            rejected.clone(),
        );
        Arc::new(Self {
            rejected,
            connections,
            registry,
            watches,
            resources,
            update_latency,
            certify,
            issuer_expiry,
            issuer_reload_errors,
        })
    }

    pub(crate) fn watch(&self, api: &'static str) -> WatchGauge {
        let gauge = self.watches.get_or_create_owned(&ApiLabels { api });
        gauge.inc();
        WatchGauge(gauge)
    }

    pub(crate) fn update_sent(&self, latency: std::time::Duration) {
        self.update_latency.observe(latency.as_secs_f64());
    }

    pub(crate) fn connection(&self, tls: bool) {
        let tls = if tls { "true" } else { "false" };
        self.connections.get_or_create(&TlsLabels { tls }).inc();
    }

    pub(crate) fn certify(&self, result: &'static str) {
        self.certify.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn issuer_loaded(&self, not_after: std::time::SystemTime) {
        let secs = not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        self.issuer_expiry.set(secs as i64);
    }

    pub(crate) fn issuer_reload_failed(&self) {
        self.issuer_reload_errors.inc();
    }

    pub fn encode(&self, index: &SharedIndex) -> String {
        self.rejected.set(crate::lock(index).rejected() as i64);
        for (kind, count) in crate::lock(index).counts() {
            self.resources.get_or_create(&KindLabels { kind: kind.to_string() }).set(count as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
