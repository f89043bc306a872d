//! Protobuf to domain, once, at the edge: what weft-proxy uses of an
//! outbound policy and of a destination update.

use super::{PolicySpec, balance::EndpointMeta};
use linkerd2_proxy_api::{
    destination::{WeightedAddrSet, protocol_hint, tls_identity},
    outbound::{Backend, OutboundPolicy, backend, http_route, opaque_route, proxy_protocol},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidPolicy {
    #[error("the policy has no protocol")]
    NoProtocol,
    #[error("the policy has no route with a backend")]
    NoBackend,
    #[error("the backend is not a balancer with destination discovery")]
    NotABalancer,
    #[error("{0} is not a duration")]
    Duration(&'static str),
}

const DEFAULT_FAILFAST: Duration = Duration::from_secs(3);
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// The first backend of the first route: weft routes every request of a
/// service to it until traffic management (routes, splits) arrives.
pub(crate) fn policy_spec(policy: OutboundPolicy) -> Result<PolicySpec, InvalidPolicy> {
    let kind = policy.protocol.and_then(|p| p.kind).ok_or(InvalidPolicy::NoProtocol)?;
    let (opaque, backend) = match kind {
        proxy_protocol::Kind::Opaque(o) => (true, opaque_backend(&o)),
        proxy_protocol::Kind::Detect(d) => {
            let http = d.http1.map(|h| h.routes).or(d.http2.map(|h| h.routes)).unwrap_or_default();
            (false, http.iter().find_map(http_backend).or_else(|| d.opaque.as_ref().and_then(opaque_backend)))
        }
        proxy_protocol::Kind::Http1(h) => (false, h.routes.iter().find_map(http_backend)),
        proxy_protocol::Kind::Http2(h) => (false, h.routes.iter().find_map(http_backend)),
        proxy_protocol::Kind::Grpc(g) => (
            false,
            g.routes.iter().flat_map(|r| &r.rules).find_map(|rule| {
                use linkerd2_proxy_api::outbound::grpc_route::distribution::Kind;
                match rule.backends.as_ref()?.kind.as_ref()? {
                    Kind::FirstAvailable(fa) => fa.backends.first()?.backend.clone(),
                    Kind::RandomAvailable(ra) => ra.backends.first()?.backend.as_ref()?.backend.clone(),
                    Kind::Empty(_) => None,
                }
            }),
        ),
        proxy_protocol::Kind::Tls(_) => (true, None),
    };
    let backend = backend.ok_or(InvalidPolicy::NoBackend)?;
    let failfast = match backend.queue.as_ref().and_then(|q| q.failfast_timeout) {
        Some(d) => Duration::try_from(d).map_err(|_| InvalidPolicy::Duration("failfast_timeout"))?,
        None => DEFAULT_FAILFAST,
    };
    let Some(backend::Kind::Balancer(p2c)) = backend.kind else { return Err(InvalidPolicy::NotABalancer) };
    let Some(backend::endpoint_discovery::Kind::Dst(dst)) = p2c.discovery.and_then(|d| d.kind) else {
        return Err(InvalidPolicy::NotABalancer);
    };
    let (default_rtt, decay) = match p2c.load {
        Some(backend::balance_p2c::Load::PeakEwma(e)) => (
            e.default_rtt
                .map(Duration::try_from)
                .transpose()
                .map_err(|_| InvalidPolicy::Duration("default_rtt"))?,
            e.decay.map(Duration::try_from).transpose().map_err(|_| InvalidPolicy::Duration("decay"))?,
        ),
        _ => (None, None),
    };
    Ok(PolicySpec {
        name: dst.path,
        opaque,
        failfast,
        default_rtt: default_rtt.unwrap_or(DEFAULT_RTT),
        decay: decay.unwrap_or(DEFAULT_DECAY),
    })
}

fn http_backend(route: &linkerd2_proxy_api::outbound::HttpRoute) -> Option<Backend> {
    route.rules.iter().find_map(|rule| match rule.backends.as_ref()?.kind.as_ref()? {
        http_route::distribution::Kind::FirstAvailable(fa) => fa.backends.first()?.backend.clone(),
        http_route::distribution::Kind::RandomAvailable(ra) => {
            ra.backends.first()?.backend.as_ref()?.backend.clone()
        }
        http_route::distribution::Kind::Empty(_) => None,
    })
}

fn opaque_backend(opaque: &proxy_protocol::Opaque) -> Option<Backend> {
    opaque.routes.iter().flat_map(|r| &r.rules).find_map(|rule| {
        match rule.backends.as_ref()?.kind.as_ref()? {
            opaque_route::distribution::Kind::FirstAvailable(fa) => fa.backends.first()?.backend.clone(),
            opaque_route::distribution::Kind::RandomAvailable(ra) => {
                ra.backends.first()?.backend.as_ref()?.backend.clone()
            }
            opaque_route::distribution::Kind::Empty(_) => None,
        }
    })
}

/// The endpoints of an `Add`, each with its `dst_*` metric labels (the
/// set's labels, then the endpoint's own), its mesh identity, and whether
/// its proxy takes HTTP/2.
pub(crate) fn endpoints(set: WeightedAddrSet) -> Vec<(SocketAddr, EndpointMeta)> {
    let mut common: Vec<(String, String)> =
        set.metric_labels.iter().map(|(k, v)| (format!("dst_{k}"), v.clone())).collect();
    common.sort();
    set.addrs
        .into_iter()
        .filter_map(|wa| {
            let addr = SocketAddr::try_from(wa.addr?).ok()?;
            let mut labels = common.clone();
            let mut own: Vec<(String, String)> =
                wa.metric_labels.into_iter().map(|(k, v)| (format!("dst_{k}"), v)).collect();
            own.sort();
            labels.extend(own);
            let identity = wa.tls_identity.and_then(|id| match id.strategy? {
                tls_identity::Strategy::DnsLikeIdentity(dns) => Some(Arc::from(dns.name)),
                // URI identities are verified by the server name they carry.
                tls_identity::Strategy::UriLikeIdentity(_) => id.server_name.map(|n| Arc::from(n.name)),
            });
            let http2 =
                matches!(wa.protocol_hint.and_then(|h| h.protocol), Some(protocol_hint::Protocol::H2(_)));
            Some((addr, EndpointMeta { labels: Arc::from(labels), identity, http2 }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_store::ServicePort;

    #[test]
    fn reads_the_controllers_default_policy() {
        let sp = ServicePort { namespace: "shop".into(), name: "web".into(), port: 80 };
        let spec =
            policy_spec(weft_controller::outbound::default_policy(&sp, "cluster.local", false)).unwrap();
        assert_eq!(spec.name, "web.shop.svc.cluster.local:80");
        assert!(!spec.opaque);
        assert_eq!(spec.failfast, Duration::from_secs(3));
        assert_eq!((spec.default_rtt, spec.decay), (Duration::from_millis(30), Duration::from_secs(10)));
        let opaque =
            policy_spec(weft_controller::outbound::default_policy(&sp, "cluster.local", true)).unwrap();
        assert!(opaque.opaque);
        assert_eq!(policy_spec(OutboundPolicy::default()), Err(InvalidPolicy::NoProtocol));
    }
}
