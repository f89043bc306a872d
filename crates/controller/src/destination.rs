//! `io.linkerd.proxy.destination.Destination`: a service's endpoints as a
//! stream of changes (`Get`), and its profile (`GetProfile`).

use crate::{Metrics, Target};
use linkerd2_proxy_api::{
    destination::{
        AddrSet, DestinationProfile, GetDestination, NoEndpoints, ProtocolHint, TlsIdentity, Update,
        WeightedAddr, WeightedAddrSet, destination_server::Destination, protocol_hint, tls_identity, update,
    },
    net::TcpAddress,
};
use std::{collections::HashMap, pin::Pin, sync::Arc};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use weft_store::{Endpoint, EndpointSet, ServicePort, SharedIndex, TlsId};

pub struct DestinationService {
    pub(crate) index: SharedIndex,
    pub(crate) metrics: Arc<Metrics>,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = Stream_<Update>;
    type GetProfileStream = Stream_<DestinationProfile>;

    async fn get(&self, req: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let path = req.into_inner().path;
        let Target::Service(sp) = crate::parse_target(&self.index, &path)? else {
            return Err(Status::invalid_argument(format!("{path} is not a service this controller knows")));
        };
        let mut rx = crate::lock(&self.index).watch_endpoints(sp.clone());
        let (tx, out) = mpsc::channel(8);
        let gauge = self.metrics.watch("destination");
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _gauge = gauge;
            let mut last = Arc::new(EndpointSet::default());
            let mut first = true;
            loop {
                let next = rx.borrow_and_update().clone();
                let updates = diff(&sp, &last, &next, first);
                let sent = !updates.is_empty();
                for update in updates {
                    if tx.send(Ok(update)).await.is_err() {
                        return; // the proxy went away
                    }
                }
                if let (true, Some(at)) = (sent, next.changed_at) {
                    metrics.update_sent(at.elapsed());
                }
                first = false;
                last = next;
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_profile(
        &self,
        req: Request<GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        let path = req.into_inner().path;
        let target = crate::parse_target(&self.index, &path)?;
        let (tx, out) = mpsc::channel(1);
        let gauge = self.metrics.watch("profile");
        let index = self.index.clone();
        tokio::spawn(async move {
            let _gauge = gauge;
            let Target::Service(sp) = target else {
                // An address that is no service: the proxy forwards to it
                // as it is, with the default profile.
                if tx.send(Ok(DestinationProfile::default())).await.is_ok() {
                    tx.closed().await;
                }
                return;
            };
            let mut changes = crate::lock(&index).changes();
            let mut last = None;
            loop {
                let profile = crate::profile::compute(&crate::lock(&index), &sp);
                if last.as_ref() != Some(&profile) {
                    if tx.send(Ok(profile.clone())).await.is_err() {
                        return;
                    }
                    last = Some(profile);
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// The updates that take a proxy from `last` to `next`, in the order the
/// API documents: removals, then additions; `NoEndpoints` when empty.
fn diff(sp: &ServicePort, last: &EndpointSet, next: &EndpointSet, first: bool) -> Vec<Update> {
    let mut updates = Vec::new();
    if next.endpoints.is_empty() {
        if first || !last.endpoints.is_empty() || last.exists != next.exists {
            updates.push(Update {
                update: Some(update::Update::NoEndpoints(NoEndpoints { exists: next.exists })),
            });
        }
        return updates;
    }
    let removed: Vec<TcpAddress> = last
        .endpoints
        .keys()
        .filter(|addr| !next.endpoints.contains_key(addr))
        .map(|addr| TcpAddress::from(*addr))
        .collect();
    if !removed.is_empty() {
        updates.push(Update { update: Some(update::Update::Remove(AddrSet { addrs: removed })) });
    }
    let added: Vec<WeightedAddr> = next
        .endpoints
        .values()
        .filter(|ep| last.endpoints.get(&ep.addr) != Some(*ep))
        .map(weighted_addr)
        .collect();
    if !added.is_empty() {
        let metric_labels = HashMap::from([
            ("namespace".to_string(), sp.namespace.clone()),
            ("service".to_string(), sp.name.clone()),
        ]);
        updates.push(Update {
            update: Some(update::Update::Add(WeightedAddrSet { addrs: added, metric_labels })),
        });
    }
    updates
}

fn weighted_addr(ep: &Endpoint) -> WeightedAddr {
    let tls_identity = ep.identity.as_ref().map(|id| match id {
        TlsId::Dns(name) => TlsIdentity {
            strategy: Some(tls_identity::Strategy::DnsLikeIdentity(tls_identity::DnsLikeIdentity {
                name: name.clone(),
            })),
            server_name: Some(tls_identity::DnsLikeIdentity { name: name.clone() }),
        },
        TlsId::Uri { uri, server_name } => TlsIdentity {
            strategy: Some(tls_identity::Strategy::UriLikeIdentity(tls_identity::UriLikeIdentity {
                uri: uri.clone(),
            })),
            server_name: Some(tls_identity::DnsLikeIdentity { name: server_name.clone() }),
        },
    });
    let protocol_hint = match (ep.opaque_transport_port, ep.http2) {
        (Some(port), _) => Some(ProtocolHint {
            protocol: Some(protocol_hint::Protocol::Opaque(protocol_hint::Opaque {})),
            opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: port.into() }),
        }),
        (None, true) => Some(ProtocolHint {
            protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})),
            opaque_transport: None,
        }),
        (None, false) => None,
    };
    WeightedAddr {
        addr: Some(ep.addr.into()),
        weight: ep.weight,
        metric_labels: ep.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        tls_identity,
        protocol_hint,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::BTreeMap, net::SocketAddr};

    fn set(addrs: &[&str]) -> EndpointSet {
        let endpoints = addrs
            .iter()
            .map(|a| {
                let addr: SocketAddr = a.parse().unwrap();
                let ep = Endpoint {
                    addr,
                    weight: 10_000,
                    labels: BTreeMap::new(),
                    identity: None,
                    http2: false,
                    opaque_transport_port: None,
                };
                (addr, ep)
            })
            .collect();
        EndpointSet { exists: true, endpoints, changed_at: None }
    }

    fn sp() -> ServicePort {
        ServicePort { namespace: "shop".into(), name: "web".into(), port: 80 }
    }

    fn kinds(updates: &[Update]) -> Vec<String> {
        updates
            .iter()
            .map(|u| match u.update.as_ref().unwrap() {
                update::Update::Add(set) => format!("add {}", set.addrs.len()),
                update::Update::Remove(set) => format!("remove {}", set.addrs.len()),
                update::Update::NoEndpoints(ne) => format!("none exists={}", ne.exists),
            })
            .collect()
    }

    #[test]
    fn updates_follow_the_protocol() {
        let empty = EndpointSet::default();
        assert_eq!(kinds(&diff(&sp(), &empty, &empty, true)), ["none exists=false"]);
        let two = set(&["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(kinds(&diff(&sp(), &empty, &two, true)), ["add 2"]);
        let swapped = set(&["10.0.0.2:80", "10.0.0.3:80"]);
        assert_eq!(kinds(&diff(&sp(), &two, &swapped, false)), ["remove 1", "add 1"]);
        assert_eq!(kinds(&diff(&sp(), &swapped, &swapped, false)), Vec::<String>::new());
        let gone = EndpointSet { exists: true, ..Default::default() };
        assert_eq!(kinds(&diff(&sp(), &swapped, &gone, false)), ["none exists=true"]);
    }

    #[test]
    fn meshed_endpoints_carry_identity_and_hints() {
        let ep = Endpoint {
            addr: "10.0.0.1:8080".parse().unwrap(),
            weight: 10_000,
            labels: BTreeMap::from([("pod".to_string(), "web-1".to_string())]),
            identity: Some(TlsId::Dns("web.shop.serviceaccount.identity.weft.cluster.local".into())),
            http2: true,
            opaque_transport_port: None,
        };
        let wa = weighted_addr(&ep);
        let id = wa.tls_identity.unwrap();
        assert_eq!(id.server_name.unwrap().name, "web.shop.serviceaccount.identity.weft.cluster.local");
        assert!(matches!(wa.protocol_hint.unwrap().protocol, Some(protocol_hint::Protocol::H2(_))));
        assert_eq!(wa.metric_labels["pod"], "web-1");
    }
}
