//! A workload's inbound policies as people read them: per port, the
//! Server (or default policy), its routes and who each authorization
//! admits. `weft authz`, `weft diagnostics policy` and the dashboard's
//! workload page show these.

use crate::inbound::{InboundConfig, policy_for};
use linkerd2_proxy_api::{
    inbound::{Authz, Server, authn::Permit, authn::permit_mesh_tls::Clients, proxy_protocol::Kind},
    meta::{Metadata, metadata},
};
use serde::Serialize;
use std::collections::BTreeSet;
use weft_store::{Index, Kind as ResourceKind, Resource, policy::PortRef, policy::ServerSpec};

/// The ports worth listing: the workload's own and those of Servers in its
/// namespace (numbered).
pub fn ports(index: &Index, workload: &Resource) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    match workload {
        Resource::Pod(pod) => {
            for c in pod.spec.iter().flat_map(|s| &s.containers) {
                ports.extend(c.ports.iter().flatten().filter_map(|p| u16::try_from(p.container_port).ok()));
            }
        }
        Resource::ExternalWorkload(ew) => ports.extend(ew.spec.ports.iter().flatten().map(|p| p.port)),
        _ => {}
    }
    let ns = workload.metadata().namespace.clone().unwrap_or_default();
    for r in index.in_namespace(ResourceKind::Server, &ns) {
        let Resource::Other(g) = r else { continue };
        if let Ok(ServerSpec { port: PortRef::Number(p), .. }) = serde_json::from_value(g.spec.clone()) {
            ports.insert(p);
        }
    }
    ports
}

pub fn server_name(server: &Server) -> String {
    let get = |k: &str| server.labels.get(k).cloned().unwrap_or_default();
    format!("{}/{}", get("kind"), get("name"))
}

fn meta_name(meta: Option<&Metadata>) -> String {
    match meta.and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Resource(r)) => format!("{}/{}", r.kind.to_lowercase(), r.name),
        Some(metadata::Kind::Default(d)) => format!("default/{d}"),
        None => "?".into(),
    }
}

pub fn authz_name(a: &Authz) -> String {
    match (a.labels.get("kind"), a.labels.get("name")) {
        (Some(k), Some(n)) => format!("{k}/{n}"),
        _ => meta_name(a.metadata.as_ref()),
    }
}

/// (route, its authorizations) for each route, or the server's own for
/// protocols without routes.
pub fn rows(server: &Server) -> Vec<(String, Vec<String>)> {
    let names = |authzs: &[Authz]| authzs.iter().map(authz_name).collect::<Vec<_>>();
    let kind = server.protocol.as_ref().and_then(|p| p.kind.as_ref());
    let http = match kind {
        Some(Kind::Detect(d)) => Some(&d.http_routes),
        Some(Kind::Http1(h)) => Some(&h.routes),
        Some(Kind::Http2(h)) => Some(&h.routes),
        _ => None,
    };
    if let Some(routes) = http {
        return routes.iter().map(|r| (meta_name(r.metadata.as_ref()), names(&r.authorizations))).collect();
    }
    if let Some(Kind::Grpc(g)) = kind {
        return g.routes.iter().map(|r| (meta_name(r.metadata.as_ref()), names(&r.authorizations))).collect();
    }
    vec![("(tcp)".into(), names(&server.authorizations))]
}

/// A server policy as text: protocol, then each authorization with whom
/// it admits, then routes.
pub fn render(server: &Server) -> String {
    let mut out = String::new();
    out += &format!("server: {} ({})\n", server_name(server), protocol(server));
    out += "authorizations (connections that are not HTTP):\n";
    for a in &server.authorizations {
        out += &format!("  {}\n", describe(a));
    }
    if server.authorizations.is_empty() {
        out += "  (none: denied)\n";
    }
    out += "routes:\n";
    for (route, authzs) in rows(server) {
        out += &format!(
            "  {route}: {}\n",
            if authzs.is_empty() { "(none: denied)".into() } else { authzs.join(", ") }
        );
    }
    out
}

pub fn describe(a: &Authz) -> String {
    let nets: Vec<String> = a
        .networks
        .iter()
        .filter_map(|n| {
            let net = ipnet::IpNet::try_from(n.net?).ok()?;
            let except: Vec<String> = n
                .except
                .iter()
                .filter_map(|e| ipnet::IpNet::try_from(*e).ok())
                .map(|e| e.to_string())
                .collect();
            Some(if except.is_empty() {
                net.to_string()
            } else {
                format!("{net} except {}", except.join(" "))
            })
        })
        .collect();
    let who = match a.authentication.as_ref().and_then(|a| a.permit.as_ref()) {
        Some(Permit::Unauthenticated(_)) => "anyone".to_string(),
        Some(Permit::MeshTls(tls)) => match &tls.clients {
            Some(Clients::Unauthenticated(_)) => "any mesh-TLS client".into(),
            Some(Clients::Identities(ids)) => {
                let mut who: Vec<String> = ids.identities.iter().map(|i| i.name.clone()).collect();
                who.extend(ids.suffixes.iter().map(|s| {
                    if s.parts.is_empty() {
                        "any mesh identity".into()
                    } else {
                        format!("*.{}", s.parts.join("."))
                    }
                }));
                who.join(", ")
            }
            None => "no one".into(),
        },
        None => "no one".into(),
    };
    format!("{}: {who} from {}", authz_name(a), nets.join(", "))
}

/// One port's policy, for the dashboard.
#[derive(Serialize, Debug)]
pub struct PortPolicy {
    pub pod: String,
    pub port: u16,
    /// `kind/name` of the Server, or `default/POLICY`.
    pub server: String,
    pub protocol: String,
    /// Each authorization with whom it admits (connections that are not
    /// HTTP).
    pub authorizations: Vec<String>,
    pub routes: Vec<RoutePolicy>,
}

#[derive(Serialize, Debug)]
pub struct RoutePolicy {
    pub route: String,
    /// Empty: every request is denied.
    pub authorizations: Vec<String>,
}

/// The policy of each port of a workload's pods (`app` label, else the
/// pod's name), as the controller serves it to their proxies.
pub fn workload_policies(
    index: &Index,
    config: &InboundConfig,
    namespace: &str,
    workload: &str,
) -> Vec<PortPolicy> {
    let mut out = Vec::new();
    for r in index.in_namespace(ResourceKind::Pod, namespace) {
        let Resource::Pod(pod) = r else { continue };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let app = labels.get("app").or_else(|| labels.get("app.kubernetes.io/name"));
        if app.map_or(name != workload, |a| a != workload) {
            continue;
        }
        for port in ports(index, r) {
            let Ok(server) = policy_for(index, config, &format!("{namespace}:{name}"), port) else {
                continue;
            };
            out.push(PortPolicy {
                pod: name.clone(),
                port,
                server: server_name(&server),
                protocol: protocol(&server).to_string(),
                authorizations: server.authorizations.iter().map(describe).collect(),
                routes: rows(&server)
                    .into_iter()
                    .map(|(route, authorizations)| RoutePolicy { route, authorizations })
                    .collect(),
            });
        }
    }
    out
}

fn protocol(server: &Server) -> &'static str {
    match server.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(_)) => "detect",
        Some(Kind::Http1(_)) => "HTTP/1",
        Some(Kind::Http2(_)) => "HTTP/2",
        Some(Kind::Grpc(_)) => "gRPC",
        Some(Kind::Opaque(_)) => "opaque",
        Some(Kind::Tls(_)) => "TLS",
        None => "?",
    }
}
