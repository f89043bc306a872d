//! The controller's own metrics, registered in one place: open watches by
//! API and the index's size by kind.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::Arc;
use weft_store::SharedIndex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
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
        Arc::new(Self { registry, watches, resources, update_latency })
    }

    pub(crate) fn watch(&self, api: &'static str) -> WatchGauge {
        let gauge = self.watches.get_or_create_owned(&ApiLabels { api });
        gauge.inc();
        WatchGauge(gauge)
    }

    pub(crate) fn update_sent(&self, latency: std::time::Duration) {
        self.update_latency.observe(latency.as_secs_f64());
    }

    pub fn encode(&self, index: &SharedIndex) -> String {
        for (kind, count) in crate::lock(index).counts() {
            self.resources.get_or_create(&KindLabels { kind: kind.to_string() }).set(count as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
