//! `io.linkerd.proxy.inbound.InboundServerPolicies`: who may talk to a
//! workload's port. The Server that selects the workload and port (the
//! oldest, when several do) with the authorizations that target it, its
//! namespace or its routes; a default policy where no Server does.
//!
//! Authorizations that target a Server apply to every route of it; those
//! that target a route, to that route only. A Server without routes gets
//! one default route that matches every request.

use crate::{
    Metrics,
    routes::{RouteSpec, grpc_matches, http_matches, metadata},
};
use ipnet::IpNet;
use linkerd2_proxy_api::{
    http_route::{HttpRouteMatch, PathMatch, path_match},
    inbound::{
        Authn, Authz, GrpcRoute, HttpRoute, Identity, IdentitySuffix, Network, PortSpec, ProxyProtocol,
        Server, authn, grpc_route, http_route, inbound_server_policies_server::InboundServerPolicies,
        proxy_protocol,
    },
    meta::{Metadata, metadata as meta},
    net::IpNetwork,
};
use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use weft_store::{
    Index, Kind, Resource, SharedIndex,
    policy::{
        AuthorizationPolicySpec, DEFAULT_POLICY_ANNOTATION, MeshTlsAuthenticationSpec,
        NetworkAuthenticationSpec, PortRef, ServerAuthorizationSpec, ServerSpec, TargetRef,
    },
};

const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
const POLICY_GROUP: &str = "policy.linkerd.io";

/// What the controller decides for ports no Server covers.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    /// The cluster-wide default policy (`all-unauthenticated` unless set).
    pub default_policy: String,
    /// The networks `cluster-*` policies admit.
    pub cluster_networks: Vec<IpNet>,
    /// The control plane's namespace, part of every identity name.
    pub control_plane_ns: String,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            default_policy: "all-unauthenticated".into(),
            cluster_networks: ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
                .iter()
                .map(|n| n.parse().expect("a valid network"))
                .collect(),
            control_plane_ns: "weft".into(),
        }
    }
}

pub struct InboundService {
    pub(crate) index: SharedIndex,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Arc<InboundConfig>,
}

/// A workload as the proxy names it: `ns:name` or Linkerd's JSON
/// (`{"ns":"shop","pod":"web-1"}`, or `"external_workload"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Workload {
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) external: bool,
}

pub(crate) fn parse_workload(s: &str) -> Result<Workload, Status> {
    let bad =
        || Status::invalid_argument(format!("{s:?} names no workload (want ns:pod, or Linkerd's JSON form)"));
    if s.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|_| bad())?;
        let ns = v.get("ns").and_then(|n| n.as_str()).ok_or_else(bad)?;
        if let Some(pod) = v.get("pod").and_then(|n| n.as_str()) {
            return Ok(Workload { ns: ns.into(), name: pod.into(), external: false });
        }
        let ew = v.get("external_workload").and_then(|n| n.as_str()).ok_or_else(bad)?;
        return Ok(Workload { ns: ns.into(), name: ew.into(), external: true });
    }
    let (ns, name) = s.split_once(':').filter(|(n, p)| !n.is_empty() && !p.is_empty()).ok_or_else(bad)?;
    Ok(Workload { ns: ns.into(), name: name.into(), external: false })
}

#[tonic::async_trait]
impl InboundServerPolicies for InboundService {
    type WatchPortStream = Pin<Box<dyn Stream<Item = Result<Server, Status>> + Send>>;

    async fn get_port(&self, req: Request<PortSpec>) -> Result<Response<Server>, Status> {
        let (workload, port) = spec(req.into_inner())?;
        Ok(Response::new(compute(&crate::lock(&self.index), &self.config, &workload, port)))
    }

    async fn watch_port(&self, req: Request<PortSpec>) -> Result<Response<Self::WatchPortStream>, Status> {
        let (workload, port) = spec(req.into_inner())?;
        let (mut changes, first) = {
            let index = crate::lock(&self.index);
            (index.changes(), compute(&index, &self.config, &workload, port))
        };
        let (tx, out) = mpsc::channel(1);
        let gauge = self.metrics.watch("inbound_policy");
        let (index, config) = (self.index.clone(), self.config.clone());
        tokio::spawn(async move {
            let _gauge = gauge;
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
                let next = compute(&crate::lock(&index), &config, &workload, port);
                if next != last {
                    last = next;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

fn spec(spec: PortSpec) -> Result<(Workload, u16), Status> {
    let workload = parse_workload(&spec.workload)?;
    let port = u16::try_from(spec.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument(format!("{} is not a port", spec.port)))?;
    Ok((workload, port))
}

/// The policy a workload (`ns:name`, or Linkerd's JSON form) gets on a
/// port, as `GetPort` answers it.
pub fn policy_for(
    index: &Index,
    config: &InboundConfig,
    workload: &str,
    port: u16,
) -> Result<Server, Status> {
    Ok(compute(index, config, &parse_workload(workload)?, port))
}

/// The policy of `workload`'s `port`.
pub(crate) fn compute(index: &Index, config: &InboundConfig, workload: &Workload, port: u16) -> Server {
    let labels = workload_labels(index, workload);
    match server_for(index, workload, labels.as_ref(), port) {
        Some((resource, server)) => server_policy(index, config, workload, resource, &server),
        None => default_server(config, &default_policy(index, config, workload)),
    }
}

fn workload_resource<'a>(index: &'a Index, w: &Workload) -> Option<&'a Resource> {
    let kind = if w.external { Kind::ExternalWorkload } else { Kind::Pod };
    index.get(&weft_store::Key { kind, namespace: w.ns.clone(), name: w.name.clone() })
}

fn workload_labels(index: &Index, w: &Workload) -> Option<std::collections::BTreeMap<String, String>> {
    workload_resource(index, w).and_then(|r| r.metadata().labels.clone())
}

/// The workload's annotation, else its namespace's, else the cluster's.
fn default_policy(index: &Index, config: &InboundConfig, w: &Workload) -> String {
    let annotation = |r: Option<&Resource>| {
        r.and_then(|r| r.metadata().annotations.as_ref()?.get(DEFAULT_POLICY_ANNOTATION).cloned())
            .filter(|p| weft_store::policy::DEFAULT_POLICIES.contains(&p.as_str()))
    };
    let ns =
        index.get(&weft_store::Key { kind: Kind::Namespace, namespace: String::new(), name: w.ns.clone() });
    annotation(workload_resource(index, w))
        .or_else(|| annotation(ns))
        .unwrap_or_else(|| config.default_policy.clone())
}

/// The Server that selects the workload and port; the oldest wins.
fn server_for<'a>(
    index: &'a Index,
    w: &Workload,
    labels: Option<&std::collections::BTreeMap<String, String>>,
    port: u16,
) -> Option<(&'a Resource, ServerSpec)> {
    let named_port = |name: &str| -> bool {
        match workload_resource(index, w) {
            Some(Resource::Pod(pod)) => pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some(name) && p.container_port == port as i32)
            }),
            Some(Resource::ExternalWorkload(ew)) => {
                ew.spec.ports.iter().flatten().any(|p| p.name.as_deref() == Some(name) && p.port == port)
            }
            _ => false,
        }
    };
    let mut found: Vec<(&Resource, ServerSpec)> = index
        .in_namespace(Kind::Server, &w.ns)
        .filter_map(|r| {
            let Resource::Other(g) = r else { return None };
            let spec: ServerSpec = serde_json::from_value(g.spec.clone()).ok()?;
            let selector = if w.external {
                spec.external_workload_selector.as_ref()
            } else {
                spec.pod_selector.as_ref()
            };
            let selects = selector.is_some_and(|s| s.matches(labels));
            let port_matches = match &spec.port {
                PortRef::Number(p) => *p == port,
                PortRef::Name(name) => named_port(name),
            };
            (selects && port_matches).then_some((r, spec))
        })
        .collect();
    found.sort_by(|(a, _), (b, _)| {
        let key =
            |r: &Resource| (r.metadata().creation_timestamp.clone().map(|t| t.0), r.metadata().name.clone());
        key(a).cmp(&key(b))
    });
    found.into_iter().next()
}

fn server_policy(
    index: &Index,
    config: &InboundConfig,
    w: &Workload,
    resource: &Resource,
    server: &ServerSpec,
) -> Server {
    let name = resource.metadata().name.clone().unwrap_or_default();
    let server_labels = resource.metadata().labels.clone();
    let mut authorizations = Vec::new();
    let mut route_authz: HashMap<(String, String), Vec<Authz>> = HashMap::new();

    for r in index.in_namespace(Kind::AuthorizationPolicy, &w.ns) {
        let Resource::Other(g) = r else { continue };
        let Ok(spec) = serde_json::from_value::<AuthorizationPolicySpec>(g.spec.clone()) else { continue };
        let t = &spec.target_ref;
        let target = match t.kind.as_str() {
            "Server" if t.name == name => Some(None),
            "Namespace" if t.name == w.ns => Some(None),
            "HTTPRoute" | "GRPCRoute" => Some(Some((t.kind.clone(), t.name.clone()))),
            _ => None,
        };
        let Some(target) = target else { continue };
        let Some(authz) = policy_authz(index, config, r, &spec) else { continue };
        match target {
            None => authorizations.push(authz),
            Some(route) => route_authz.entry(route).or_default().push(authz),
        }
    }
    for r in index.in_namespace(Kind::ServerAuthorization, &w.ns) {
        let Resource::Other(g) = r else { continue };
        let Ok(spec) = serde_json::from_value::<ServerAuthorizationSpec>(g.spec.clone()) else { continue };
        let selects = spec.server.name.as_deref() == Some(name.as_str())
            || spec.server.selector.as_ref().is_some_and(|s| s.matches(server_labels.as_ref()));
        if selects {
            authorizations.extend(server_authorization(index, config, r, &spec));
        }
    }
    match server.access_policy.as_deref() {
        None | Some("deny") => {}
        Some(policy) => authorizations.extend(default_authz(config, policy)),
    }

    // Routes attached to this Server, each with the Server's
    // authorizations and its own.
    let attached = |kind: Kind| {
        index.in_namespace(kind, &w.ns).filter_map(|r| {
            let Resource::Other(g) = r else { return None };
            let spec = RouteSpec::from_value(&g.spec).ok()?;
            let attaches = spec.parent_refs.iter().any(|p| {
                p.group.as_deref() == Some(POLICY_GROUP)
                    && p.kind.as_deref() == Some("Server")
                    && p.name == name
            });
            attaches.then_some((r, spec))
        })
    };
    let own = |kind: &str, r: &Resource| {
        let mut authz = authorizations.clone();
        let key = (kind.to_string(), r.metadata().name.clone().unwrap_or_default());
        authz.extend(route_authz.get(&key).cloned().unwrap_or_default());
        authz
    };
    let mut http_routes: Vec<HttpRoute> = attached(Kind::PolicyHttpRoute)
        .map(|(r, s)| (r, s, POLICY_GROUP))
        .chain(attached(Kind::GatewayHttpRoute).map(|(r, s)| (r, s, "gateway.networking.k8s.io")))
        .map(|(r, spec, group)| HttpRoute {
            metadata: Some(metadata(r, group, "HTTPRoute")),
            hosts: vec![],
            authorizations: own("HTTPRoute", r),
            rules: spec
                .rules
                .iter()
                .map(|rule| http_route::Rule { matches: http_matches(rule), filters: vec![] })
                .collect(),
        })
        .collect();
    if http_routes.is_empty() {
        http_routes.push(default_http_route(authorizations.clone()));
    }
    let mut grpc_routes: Vec<GrpcRoute> = attached(Kind::GatewayGrpcRoute)
        .map(|(r, spec)| GrpcRoute {
            metadata: Some(metadata(r, "gateway.networking.k8s.io", "GRPCRoute")),
            hosts: vec![],
            authorizations: own("GRPCRoute", r),
            rules: spec
                .rules
                .iter()
                .map(|rule| grpc_route::Rule { matches: grpc_matches(rule), filters: vec![] })
                .collect(),
        })
        .collect();
    if grpc_routes.is_empty() {
        grpc_routes.push(GrpcRoute {
            metadata: Some(default_meta("default")),
            hosts: vec![],
            authorizations: authorizations.clone(),
            rules: vec![grpc_route::Rule { matches: vec![], filters: vec![] }],
        });
    }
    use proxy_protocol::Kind as P;
    let protocol = match server.proxy_protocol.as_deref() {
        Some("HTTP/1") => P::Http1(proxy_protocol::Http1 { routes: http_routes, local_rate_limit: None }),
        Some("HTTP/2") => P::Http2(proxy_protocol::Http2 { routes: http_routes, local_rate_limit: None }),
        Some("gRPC") => P::Grpc(proxy_protocol::Grpc { routes: grpc_routes }),
        Some("opaque") => P::Opaque(proxy_protocol::Opaque {}),
        Some("TLS") => P::Tls(proxy_protocol::Tls {}),
        _ => P::Detect(proxy_protocol::Detect {
            timeout: DETECT_TIMEOUT.try_into().ok(),
            http_routes,
            http_local_rate_limit: None,
        }),
    };
    Server {
        protocol: Some(ProxyProtocol { kind: Some(protocol) }),
        server_ips: vec![],
        authorizations,
        labels: labels(POLICY_GROUP, "server", &name),
    }
}

/// One AuthorizationPolicy as a proxy authorization: every required
/// authentication must hold. `None` when a reference is missing (the
/// policy then admits no one; the others stand).
fn policy_authz(
    index: &Index,
    config: &InboundConfig,
    r: &Resource,
    spec: &AuthorizationPolicySpec,
) -> Option<Authz> {
    let ns = r.metadata().namespace.clone().unwrap_or_default();
    let mut networks: Option<Vec<Network>> = None;
    let mut identities: Option<(Vec<Identity>, Vec<IdentitySuffix>)> = None;
    for a in &spec.required_authentication_refs {
        let ref_ns = a.namespace.clone().unwrap_or_else(|| ns.clone());
        let get =
            |kind| index.get(&weft_store::Key { kind, namespace: ref_ns.clone(), name: a.name.clone() });
        match a.kind.as_str() {
            "NetworkAuthentication" => {
                let Some(Resource::Other(g)) = get(Kind::NetworkAuthentication) else {
                    return missing(r, a);
                };
                let spec: NetworkAuthenticationSpec = serde_json::from_value(g.spec.clone()).ok()?;
                let nets = spec
                    .networks
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .map(|(net, except)| network(net, &except));
                networks.get_or_insert_with(Vec::new).extend(nets);
            }
            "MeshTLSAuthentication" => {
                let Some(Resource::Other(g)) = get(Kind::MeshTlsAuthentication) else {
                    return missing(r, a);
                };
                let spec: MeshTlsAuthenticationSpec = serde_json::from_value(g.spec.clone()).ok()?;
                let (names, suffixes) = identities.get_or_insert_with(Default::default);
                for id in &spec.identities {
                    push_identity(id, names, suffixes);
                }
                for i in &spec.identity_refs {
                    let i_ns = i.namespace.clone().unwrap_or_else(|| ref_ns.clone());
                    match i.kind.as_str() {
                        "ServiceAccount" => {
                            names.push(Identity { name: workload_identity(index, config, &i_ns, &i.name) })
                        }
                        "Namespace" => suffixes.push(IdentitySuffix {
                            parts: workload_identity(index, config, &i.name, "x")
                                .split('.')
                                .skip(1)
                                .map(str::to_string)
                                .collect(),
                        }),
                        _ => {}
                    }
                }
            }
            "ServiceAccount" => {
                let (names, _) = identities.get_or_insert_with(Default::default);
                names.push(Identity { name: workload_identity(index, config, &ref_ns, &a.name) });
            }
            _ => return None,
        }
    }
    let authentication = match identities {
        Some((identities, suffixes)) => authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(authn::permit_mesh_tls::Clients::Identities(
                authn::permit_mesh_tls::PermitClientIdentities { identities, suffixes },
            )),
        }),
        None => authn::Permit::Unauthenticated(authn::PermitUnauthenticated {}),
    };
    let name = r.metadata().name.clone().unwrap_or_default();
    Some(Authz {
        networks: networks.unwrap_or_else(all_networks),
        authentication: Some(Authn { permit: Some(authentication) }),
        labels: labels(POLICY_GROUP, "authorizationpolicy", &name),
        metadata: Some(metadata(r, POLICY_GROUP, "AuthorizationPolicy")),
    })
}

fn missing(r: &Resource, a: &TargetRef) -> Option<Authz> {
    tracing::info!(policy = %r.key(), kind = %a.kind, name = %a.name, "the policy refers to a resource that does not exist; it admits no one");
    None
}

fn push_identity(id: &str, names: &mut Vec<Identity>, suffixes: &mut Vec<IdentitySuffix>) {
    if id == "*" {
        suffixes.push(IdentitySuffix { parts: vec![] });
    } else if let Some(rest) = id.strip_prefix("*.") {
        suffixes.push(IdentitySuffix { parts: rest.split('.').map(str::to_string).collect() });
    } else {
        names.push(Identity { name: id.to_string() });
    }
}

fn workload_identity(index: &Index, config: &InboundConfig, ns: &str, sa: &str) -> String {
    format!("{sa}.{ns}.serviceaccount.identity.{}.{}", config.control_plane_ns, index.config().trust_domain)
}

fn server_authorization(
    index: &Index,
    config: &InboundConfig,
    r: &Resource,
    spec: &ServerAuthorizationSpec,
) -> Option<Authz> {
    let ns = r.metadata().namespace.clone().unwrap_or_default();
    let client = &spec.client;
    let networks = if client.networks.is_empty() {
        all_networks()
    } else {
        client
            .networks
            .iter()
            .filter_map(|n| n.parse().ok())
            .map(|(net, except)| network(net, &except))
            .collect()
    };
    let permit = if client.unauthenticated {
        authn::Permit::Unauthenticated(authn::PermitUnauthenticated {})
    } else {
        let tls = client.mesh_tls.as_ref()?;
        let clients = if tls.unauthenticated_tls {
            authn::permit_mesh_tls::Clients::Unauthenticated(authn::PermitUnauthenticated {})
        } else {
            let (mut names, mut suffixes) = (Vec::new(), Vec::new());
            for id in &tls.identities {
                push_identity(id, &mut names, &mut suffixes);
            }
            for sa in &tls.service_accounts {
                let sa_ns = sa.namespace.clone().unwrap_or_else(|| ns.clone());
                names.push(Identity { name: workload_identity(index, config, &sa_ns, &sa.name) });
            }
            authn::permit_mesh_tls::Clients::Identities(authn::permit_mesh_tls::PermitClientIdentities {
                identities: names,
                suffixes,
            })
        };
        authn::Permit::MeshTls(authn::PermitMeshTls { clients: Some(clients) })
    };
    let name = r.metadata().name.clone().unwrap_or_default();
    Some(Authz {
        networks,
        authentication: Some(Authn { permit: Some(permit) }),
        labels: labels(POLICY_GROUP, "serverauthorization", &name),
        metadata: Some(metadata(r, POLICY_GROUP, "ServerAuthorization")),
    })
}

/// The authorization a default policy grants (none for `deny`).
fn default_authz(config: &InboundConfig, policy: &str) -> Option<Authz> {
    let any_identity = || {
        authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(authn::permit_mesh_tls::Clients::Identities(
                authn::permit_mesh_tls::PermitClientIdentities {
                    identities: vec![],
                    suffixes: vec![IdentitySuffix { parts: vec![] }],
                },
            )),
        })
    };
    let anyone = || authn::Permit::Unauthenticated(authn::PermitUnauthenticated {});
    let cluster = || config.cluster_networks.iter().map(|n| network(*n, &[])).collect();
    let (networks, permit) = match policy {
        "all-unauthenticated" | "audit" => (all_networks(), anyone()),
        "all-authenticated" => (all_networks(), any_identity()),
        "cluster-unauthenticated" => (cluster(), anyone()),
        "cluster-authenticated" => (cluster(), any_identity()),
        _ => return None,
    };
    Some(Authz {
        networks,
        authentication: Some(Authn { permit: Some(permit) }),
        labels: labels("", "default", policy),
        metadata: Some(default_meta(policy)),
    })
}

/// A port no Server covers.
fn default_server(config: &InboundConfig, policy: &str) -> Server {
    let authorizations: Vec<Authz> = default_authz(config, policy).into_iter().collect();
    Server {
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: DETECT_TIMEOUT.try_into().ok(),
                http_routes: vec![default_http_route(authorizations.clone())],
                http_local_rate_limit: None,
            })),
        }),
        server_ips: vec![],
        authorizations,
        labels: labels("", "default", policy),
    }
}

fn default_http_route(authorizations: Vec<Authz>) -> HttpRoute {
    HttpRoute {
        metadata: Some(default_meta("default")),
        hosts: vec![],
        authorizations,
        rules: vec![http_route::Rule {
            matches: vec![HttpRouteMatch {
                path: Some(PathMatch { kind: Some(path_match::Kind::Prefix("/".into())) }),
                ..Default::default()
            }],
            filters: vec![],
        }],
    }
}

fn default_meta(name: &str) -> Metadata {
    Metadata { kind: Some(meta::Kind::Default(name.into())) }
}

fn labels(group: &str, kind: &str, name: &str) -> HashMap<String, String> {
    [("group", group), ("kind", kind), ("name", name)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn all_networks() -> Vec<Network> {
    ["0.0.0.0/0", "::/0"].iter().map(|n| network(n.parse().expect("a valid network"), &[])).collect()
}

fn network(net: IpNet, except: &[IpNet]) -> Network {
    Network { net: Some(ip_network(net)), except: except.iter().map(|e| ip_network(*e)).collect() }
}

fn ip_network(net: IpNet) -> IpNetwork {
    IpNetwork { ip: Some(net.addr().into()), prefix_len: u32::from(net.prefix_len()) }
}

#[cfg(test)]
mod tests;
