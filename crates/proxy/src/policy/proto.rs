//! The controller's `inbound::Server` to a [`ServerPolicy`], once, as it
//! arrives. What cannot be used (a malformed network, a regex that does not
//! compile) drops that one authorization or match, and says so: it never
//! widens what is allowed.

use super::*;
use crate::matching;
use linkerd2_proxy_api::{
    inbound::{self as api, authn::Permit, authn::permit_mesh_tls::Clients, proxy_protocol::Kind},
    meta::{Metadata, metadata},
};
use std::collections::HashMap;

pub(crate) fn server_policy(server: api::Server) -> ServerPolicy {
    let meta = Arc::new(meta_from_labels(&server.labels));
    let authorizations = authorizations(server.authorizations);
    let (http_routes, grpc_routes) = match server.protocol.and_then(|p| p.kind) {
        Some(Kind::Detect(d)) => (d.http_routes.into_iter().map(http_route).collect(), None),
        Some(Kind::Http1(h)) => (h.routes.into_iter().map(http_route).collect(), None),
        Some(Kind::Http2(h)) => (h.routes.into_iter().map(http_route).collect(), None),
        Some(Kind::Grpc(g)) => (vec![], Some(g.routes.into_iter().map(grpc_route).collect())),
        Some(Kind::Opaque(_)) | Some(Kind::Tls(_)) | None => (vec![], None),
    };
    ServerPolicy { meta, authorizations, http_routes, grpc_routes }
}

fn meta_from_labels(labels: &HashMap<String, String>) -> Meta {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Meta { group: get("group"), kind: get("kind"), name: get("name") }
}

fn meta_from_metadata(metadata: Option<Metadata>) -> Meta {
    match metadata.and_then(|m| m.kind) {
        Some(metadata::Kind::Resource(r)) => {
            Meta { group: r.group, kind: r.kind.to_lowercase(), name: r.name }
        }
        Some(metadata::Kind::Default(name)) => Meta { group: String::new(), kind: "default".into(), name },
        None => Meta { group: String::new(), kind: "default".into(), name: "unknown".into() },
    }
}

fn authorizations(authzs: Vec<api::Authz>) -> Vec<Authorization> {
    authzs.into_iter().filter_map(authorization).collect()
}

fn authorization(authz: api::Authz) -> Option<Authorization> {
    let meta = if authz.labels.is_empty() {
        meta_from_metadata(authz.metadata)
    } else {
        meta_from_labels(&authz.labels)
    };
    let mut networks = Vec::new();
    for n in authz.networks {
        let net = n.net.and_then(|net| ipnet::IpNet::try_from(net).ok());
        let except: Option<Vec<IpNet>> =
            n.except.into_iter().map(|e| ipnet::IpNet::try_from(e).ok()).collect();
        match (net, except) {
            (Some(net), Some(except)) => networks.push((net, except)),
            _ => {
                // Dropping only the exception would widen the grant.
                tracing::warn!(authz = %meta.name, "an authorization has a malformed network; ignoring the authorization");
                return None;
            }
        }
    }
    let authn = match authz.authentication.and_then(|a| a.permit) {
        Some(Permit::Unauthenticated(_)) => Authn::Unauthenticated,
        Some(Permit::MeshTls(tls)) => match tls.clients {
            Some(Clients::Unauthenticated(_)) => Authn::TlsUnauthenticated,
            Some(Clients::Identities(ids)) => Authn::Identities {
                names: ids.identities.into_iter().map(|i| i.name).collect(),
                suffixes: ids.suffixes.into_iter().map(|s| s.parts.join(".")).collect(),
            },
            None => return None,
        },
        None => return None,
    };
    Some(Authorization { meta: Arc::new(meta), networks, authn })
}

fn http_route(route: api::HttpRoute) -> Route {
    let matches = route
        .rules
        .iter()
        .flat_map(|rule| {
            // A rule without matches matches every request.
            if rule.matches.is_empty() {
                vec![Some(RequestMatch::default())]
            } else {
                rule.matches.iter().map(|m| usable(matching::http_match(m))).collect()
            }
        })
        .flatten()
        .collect();
    Route {
        meta: Arc::new(meta_from_metadata(route.metadata)),
        matches,
        authorizations: authorizations(route.authorizations),
    }
}

/// A match weft can use, or `None` (logged): the match is dropped rather
/// than widened.
fn usable(m: Result<RequestMatch, &'static str>) -> Option<RequestMatch> {
    m.map_err(|error| tracing::warn!(%error, "a route's match is malformed; the match is ignored")).ok()
}

fn grpc_route(route: api::GrpcRoute) -> Route {
    let matches = route
        .rules
        .iter()
        .flat_map(|rule| {
            if rule.matches.is_empty() {
                return vec![Some(RequestMatch::default())];
            }
            rule.matches.iter().map(|m| usable(matching::grpc_match(m))).collect()
        })
        .flatten()
        .collect();
    Route {
        meta: Arc::new(meta_from_metadata(route.metadata)),
        matches,
        authorizations: authorizations(route.authorizations),
    }
}
