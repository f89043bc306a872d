//! `io.linkerd.proxy.outbound.OutboundPolicies`: how a proxy should treat
//! traffic to a service: the protocol, and routes to backends that it
//! balances over the service's endpoints.
//!
//! Routes come from HTTPRoute/GRPCRoute (`routes`), else from a
//! ServiceProfile and TrafficSplit (`legacy`), else one default route to
//! the service itself; weft's additions ride in field 1000
//! (`weft_api::Extensions`), which stock proxies skip. The policy is
//! shaped the way the stock linkerd2-proxy requires (DESIGN.md, contract
//! 1): metadata everywhere, a `core` Service resource, a complete Detect,
//! non-empty distributions, a queue with a failfast timeout, and a
//! balancer with discovery by DNS name and port and a PeakEwma load.

use crate::{Metrics, Target, legacy, routes, traffic::ServiceTraffic};
use linkerd2_proxy_api::{
    http_route::{HttpRouteMatch, PathMatch, path_match},
    meta::{Metadata, Resource, metadata},
    outbound::{
        Backend, HttpRoute, OpaqueRoute, OutboundPolicy, ProxyProtocol, Queue, TrafficSpec, backend,
        http_route, opaque_route, proxy_protocol, traffic_spec,
    },
};
use std::{pin::Pin, sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use weft_api::server::OutboundPolicies;
use weft_store::{ServicePort, SharedIndex, endpoints::opaque_ports};

pub struct OutboundService {
    pub(crate) index: SharedIndex,
    pub(crate) metrics: Arc<Metrics>,
}

const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
const FAILFAST_TIMEOUT: Duration = Duration::from_secs(3);
const QUEUE_CAPACITY: u32 = 100;
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl OutboundPolicies for OutboundService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<weft_api::OutboundPolicy, Status>> + Send>>;

    async fn get(&self, req: Request<TrafficSpec>) -> Result<Response<weft_api::OutboundPolicy>, Status> {
        let sp = self.target(req.into_inner())?;
        Ok(Response::new(policy(&crate::lock(&self.index), &sp)?))
    }

    async fn watch(&self, req: Request<TrafficSpec>) -> Result<Response<Self::WatchStream>, Status> {
        let sp = self.target(req.into_inner())?;
        let (mut changes, first) = {
            let index = crate::lock(&self.index);
            (index.changes(), policy(&index, &sp)?)
        };
        let (tx, out) = mpsc::channel(1);
        let gauge = self.metrics.watch("outbound_policy");
        let index = self.index.clone();
        tokio::spawn(async move {
            let _gauge = gauge;
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            // Recompute on every change of the index; send what differs
            // (routes added or edited, the service made opaque, ...).
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
                let next = policy(&crate::lock(&index), &sp);
                match next {
                    Ok(policy) if policy == last => continue,
                    Ok(policy) => {
                        last = policy;
                        if tx.send(Ok(last.clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        // The service went away.
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

impl OutboundService {
    fn target(&self, spec: TrafficSpec) -> Result<ServicePort, Status> {
        let target = match spec.target {
            Some(traffic_spec::Target::Addr(addr)) => {
                let addr = std::net::SocketAddr::try_from(addr)
                    .map_err(|_| Status::invalid_argument("the target address is not a valid IP address"))?;
                addr.to_string()
            }
            Some(traffic_spec::Target::Authority(authority)) => authority,
            None => return Err(Status::invalid_argument("the traffic spec names no target")),
        };
        // NOT_FOUND tells the proxy to forward to the original destination.
        match crate::parse_target(&self.index, &target)? {
            Target::Service(sp) => Ok(sp),
            Target::Other => Err(Status::not_found(format!("{target} is not a known service"))),
        }
    }
}

/// The policy for a service port: its GRPCRoutes, else its HTTPRoutes,
/// else its ServiceProfile's routes and a default route to the service
/// (weighted by the profile's `dstOverrides` or a TrafficSplit); with the
/// Service's traffic annotations, and weft's additions in field 1000.
/// Opaque ports get the default opaque route.
pub fn policy(index: &weft_store::Index, sp: &ServicePort) -> Result<weft_api::OutboundPolicy, Status> {
    let Some(svc) = index.service(&sp.namespace, &sp.name) else {
        return Err(Status::not_found(format!("service {}/{} does not exist", sp.namespace, sp.name)));
    };
    let domain = &index.config().cluster_domain;
    let annotations = svc.metadata.annotations.as_ref();
    let opaque = opaque_ports(annotations).contains(&sp.port);
    let mut policy = default_policy(sp, domain, opaque);
    if opaque {
        return Ok(policy.into());
    }
    let traffic = ServiceTraffic::of(annotations);
    let accrual = traffic.accrual.as_ref().map(crate::traffic::failure_accrual);
    let mut extensions =
        weft_api::Extensions { rules: vec![], retry_budget: legacy::retry_budget(index, sp) };
    let grpc = routes::grpc_routes(index, sp, &traffic);
    if !grpc.routes.is_empty() {
        extensions.rules = grpc.rules;
        policy.protocol = Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
                routes: grpc.routes,
                failure_accrual: accrual,
            })),
        });
    } else if let Some(ProxyProtocol { kind: Some(proxy_protocol::Kind::Detect(detect)) }) =
        policy.protocol.as_mut()
    {
        let mut http = routes::http_routes(index, sp, &traffic);
        if http.routes.is_empty() {
            let default = detect.http1.as_mut().map(|h| std::mem::take(&mut h.routes)).unwrap_or_default();
            let default = default.into_iter().next().unwrap_or_default();
            http = legacy::http_routes(index, sp, &traffic, default);
        }
        extensions.rules = http.rules;
        detect.http1 = Some(proxy_protocol::Http1 { routes: http.routes.clone(), failure_accrual: accrual });
        detect.http2 = Some(proxy_protocol::Http2 { routes: http.routes, failure_accrual: accrual });
    }
    let mut policy = weft_api::OutboundPolicy::from(policy);
    if !extensions.rules.is_empty() || extensions.retry_budget.is_some() {
        policy.weft = Some(extensions);
    }
    Ok(policy)
}

/// A service port as a backend: balanced over its endpoints.
pub fn backend_for(sp: &ServicePort, cluster_domain: &str) -> Backend {
    Backend {
        metadata: Some(service_metadata(sp)),
        queue: Some(Queue { capacity: QUEUE_CAPACITY, failfast_timeout: duration(FAILFAST_TIMEOUT) }),
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(backend::endpoint_discovery::Kind::Dst(
                    backend::endpoint_discovery::DestinationGet {
                        path: format!("{}.{}.svc.{cluster_domain}:{}", sp.name, sp.namespace, sp.port),
                    },
                )),
            }),
            load: Some(backend::balance_p2c::Load::PeakEwma(backend::balance_p2c::PeakEwma {
                default_rtt: duration(DEFAULT_RTT),
                decay: duration(EWMA_DECAY),
            })),
        })),
    }
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    crate::traffic::duration(d)
}

fn service_metadata(sp: &ServicePort) -> Metadata {
    Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "core".into(),
            kind: "Service".into(),
            name: sp.name.clone(),
            namespace: sp.namespace.clone(),
            section: String::new(),
            port: sp.port.into(),
        })),
    }
}

fn default_metadata(name: &str) -> Metadata {
    Metadata { kind: Some(metadata::Kind::Default(name.into())) }
}

/// One route to the service itself, balanced over its endpoints.
pub fn default_policy(sp: &ServicePort, cluster_domain: &str, opaque: bool) -> OutboundPolicy {
    let backend = backend_for(sp, cluster_domain);

    let opaque_route = OpaqueRoute {
        metadata: Some(default_metadata("opaq")),
        rules: vec![opaque_route::Rule {
            backends: Some(opaque_route::Distribution {
                kind: Some(opaque_route::distribution::Kind::FirstAvailable(
                    opaque_route::distribution::FirstAvailable {
                        backends: vec![opaque_route::RouteBackend {
                            backend: Some(backend.clone()),
                            filters: vec![],
                        }],
                    },
                )),
            }),
            filters: vec![],
        }],
    };
    let opaque_protocol = proxy_protocol::Opaque { routes: vec![opaque_route] };

    let kind = if opaque {
        proxy_protocol::Kind::Opaque(opaque_protocol)
    } else {
        let http_route = HttpRoute {
            metadata: Some(default_metadata("http")),
            hosts: vec![],
            rules: vec![http_route::Rule {
                matches: vec![HttpRouteMatch {
                    path: Some(PathMatch { kind: Some(path_match::Kind::Prefix("/".into())) }),
                    ..Default::default()
                }],
                filters: vec![],
                backends: Some(http_route::Distribution {
                    kind: Some(http_route::distribution::Kind::FirstAvailable(
                        http_route::distribution::FirstAvailable {
                            backends: vec![http_route::RouteBackend {
                                backend: Some(backend),
                                filters: vec![],
                                ..Default::default()
                            }],
                        },
                    )),
                }),
                ..Default::default()
            }],
        };
        proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: duration(DETECT_TIMEOUT),
            opaque: Some(opaque_protocol),
            http1: Some(proxy_protocol::Http1 { routes: vec![http_route.clone()], failure_accrual: None }),
            http2: Some(proxy_protocol::Http2 { routes: vec![http_route], failure_accrual: None }),
        })
    };
    OutboundPolicy {
        protocol: Some(ProxyProtocol { kind: Some(kind) }),
        metadata: Some(service_metadata(sp)),
    }
}

#[cfg(test)]
mod tests;
