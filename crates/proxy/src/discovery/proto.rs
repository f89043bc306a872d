//! Protobuf to domain, once, at the edge: what weft-proxy uses of an
//! outbound policy and of a destination update.

use super::{PolicySpec, balance::EndpointMeta};
use linkerd2_proxy_api::{
    destination::{WeightedAddrSet, protocol_hint, tls_identity},
    outbound::proxy_protocol,
};
use std::{net::SocketAddr, sync::Arc};

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
    #[error("the policy's {0} is malformed")]
    Field(&'static str),
}

/// What a policy says about connections balanced as TCP: the first
/// backend of the first route (opaque routes have one).
pub(crate) fn policy_spec(policy: &weft_api::OutboundPolicy) -> Result<PolicySpec, InvalidPolicy> {
    let kind = policy.protocol.as_ref().and_then(|p| p.kind.as_ref()).ok_or(InvalidPolicy::NoProtocol)?;
    let opaque = matches!(kind, proxy_protocol::Kind::Opaque(_) | proxy_protocol::Kind::Tls(_));
    let backend = crate::traffic::proto::first_backend(policy).ok_or(InvalidPolicy::NoBackend)?;
    let spec = crate::traffic::proto::backend_spec(&backend)?;
    Ok(PolicySpec {
        name: spec.name,
        opaque,
        failfast: spec.failfast,
        default_rtt: spec.default_rtt,
        decay: spec.decay,
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
    use std::time::Duration;
    use weft_store::ServicePort;

    #[test]
    fn reads_the_controllers_default_policy() {
        let sp = ServicePort { namespace: "shop".into(), name: "web".into(), port: 80 };
        let policy = |opaque| {
            weft_api::OutboundPolicy::from(weft_controller::outbound::default_policy(
                &sp,
                "cluster.local",
                opaque,
            ))
        };
        let spec = policy_spec(&policy(false)).unwrap();
        assert_eq!(spec.name, "web.shop.svc.cluster.local:80");
        assert!(!spec.opaque);
        assert_eq!(spec.failfast, Duration::from_secs(3));
        assert_eq!((spec.default_rtt, spec.decay), (Duration::from_millis(30), Duration::from_secs(10)));
        let opaque = policy_spec(&policy(true)).unwrap();
        assert!(opaque.opaque);
        assert_eq!(policy_spec(&weft_api::OutboundPolicy::default()), Err(InvalidPolicy::NoProtocol));
    }
}
