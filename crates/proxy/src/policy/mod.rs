//! Inbound authorization: the policy of each inbound port (from the
//! controller's InboundServerPolicies, or the proxy's default policy when
//! there is none) and its verdict on each connection (TCP) and request
//! (HTTP, gRPC).
//!
//! Policies are converted from protobuf once, when they arrive; a verdict
//! reads them through `Arc`s and allocates nothing.

pub mod discover;
mod proto;

pub use discover::Policies;

use http::{HeaderMap, Method};
use ipnet::IpNet;
use std::{collections::HashSet, net::IpAddr, sync::Arc};

/// `group`, `kind` and `name` of a server, route or authorization, as the
/// `srv_*`, `route_*` and `authz_*` metric labels show it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Meta {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// One port's policy.
#[derive(Debug, PartialEq)]
pub struct ServerPolicy {
    pub meta: Arc<Meta>,
    /// Authorizations for connections that are not HTTP.
    pub authorizations: Vec<Authorization>,
    pub http_routes: Vec<Route>,
    /// Set when the Server is gRPC: requests are matched by RPC.
    pub grpc_routes: Option<Vec<Route>>,
}

#[derive(Debug, PartialEq)]
pub struct Authorization {
    pub meta: Arc<Meta>,
    /// (network, exceptions); a client must be in one and in none of its
    /// exceptions.
    pub networks: Vec<(IpNet, Vec<IpNet>)>,
    pub authn: Authn,
}

#[derive(Debug, PartialEq)]
pub enum Authn {
    Unauthenticated,
    /// Any mesh-TLS client, with or without an identity.
    TlsUnauthenticated,
    Identities {
        names: HashSet<String>,
        suffixes: Vec<String>,
    },
}

#[derive(Debug, PartialEq)]
pub struct Route {
    pub meta: Arc<Meta>,
    /// A request matches the route when it matches any of these (each a
    /// conjunction); no matches at all matches nothing.
    pub matches: Vec<RequestMatch>,
    pub authorizations: Vec<Authorization>,
}

pub use crate::matching::{PathMatch, RequestMatch, ValueMatch};

/// Who is asking: the client's address and, over mesh TLS, its identity.
#[derive(Clone, Debug)]
pub struct Client<'a> {
    pub ip: IpAddr,
    pub tls: bool,
    pub identity: Option<&'a str>,
}

/// A verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Admitted by this authorization; `audit` when only the audit policy
    /// admitted it (it would otherwise have been denied).
    Allow {
        authz: Arc<Meta>,
        audit: bool,
    },
    Deny,
}

// === impl ServerPolicy ===

impl ServerPolicy {
    /// A connection that is not HTTP.
    pub fn authorize_tcp(&self, client: &Client<'_>) -> Verdict {
        authorize(&self.authorizations, client)
    }

    /// An HTTP request: its route, then whether the route admits the
    /// client. `None` when no route matches (a 404, as in Linkerd).
    pub fn authorize_http(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        grpc: bool,
        client: &Client<'_>,
    ) -> Option<(&Arc<Meta>, Verdict)> {
        let routes = match (&self.grpc_routes, grpc) {
            (Some(grpc_routes), true) => grpc_routes,
            _ => &self.http_routes,
        };
        let route =
            routes.iter().find(|r| r.matches.iter().any(|m| m.matches(method, path, query, headers)))?;
        Some((&route.meta, authorize(&route.authorizations, client)))
    }

    /// A policy of one default (`all-unauthenticated`, ..., `deny`,
    /// `audit`), as the proxy applies it when the controller has none.
    pub fn default(name: &str, cluster_networks: &[IpNet]) -> ServerPolicy {
        let everywhere: Vec<(IpNet, Vec<IpNet>)> =
            ["0.0.0.0/0", "::/0"].iter().map(|n| (n.parse().expect("a valid network"), vec![])).collect();
        let cluster = || cluster_networks.iter().map(|n| (*n, vec![])).collect::<Vec<_>>();
        let any_identity = || Authn::Identities { names: HashSet::new(), suffixes: vec![String::new()] };
        let (networks, authn) = match name {
            "all-unauthenticated" | "audit" => (everywhere, Authn::Unauthenticated),
            "all-authenticated" => (everywhere, any_identity()),
            "cluster-unauthenticated" => (cluster(), Authn::Unauthenticated),
            "cluster-authenticated" => (cluster(), any_identity()),
            _ => (vec![], Authn::Unauthenticated),
        };
        let meta = Arc::new(Meta { group: String::new(), kind: "default".into(), name: name.into() });
        let authz = || {
            if networks.is_empty() {
                vec![]
            } else {
                vec![Authorization {
                    meta: meta.clone(),
                    networks: networks.clone(),
                    authn: match &authn {
                        Authn::Unauthenticated => Authn::Unauthenticated,
                        _ => any_identity(),
                    },
                }]
            }
        };
        let route_meta =
            Arc::new(Meta { group: String::new(), kind: "default".into(), name: "default".into() });
        ServerPolicy {
            meta: meta.clone(),
            authorizations: authz(),
            http_routes: vec![Route {
                meta: route_meta,
                matches: vec![RequestMatch {
                    path: Some(PathMatch::Prefix("/".into())),
                    ..Default::default()
                }],
                authorizations: authz(),
            }],
            grpc_routes: None,
        }
    }
}

/// The first authorization that admits the client; the audit policy's only
/// when no other does.
fn authorize(authorizations: &[Authorization], client: &Client<'_>) -> Verdict {
    let mut audit = None;
    for authz in authorizations {
        if authz.admits(client) {
            if authz.meta.kind == "default" && authz.meta.name == "audit" {
                audit = Some(authz.meta.clone());
                continue;
            }
            return Verdict::Allow { authz: authz.meta.clone(), audit: false };
        }
    }
    match audit {
        Some(authz) => Verdict::Allow { authz, audit: true },
        None => Verdict::Deny,
    }
}

// === impl Authorization ===

impl Authorization {
    pub fn admits(&self, client: &Client<'_>) -> bool {
        let in_network = self
            .networks
            .iter()
            .any(|(net, except)| net.contains(&client.ip) && !except.iter().any(|e| e.contains(&client.ip)));
        in_network
            && match &self.authn {
                Authn::Unauthenticated => true,
                Authn::TlsUnauthenticated => client.tls,
                Authn::Identities { names, suffixes } => client.identity.is_some_and(|id| {
                    names.contains(id)
                        || suffixes.iter().any(|s| {
                            s.is_empty()
                                || (id.len() > s.len() + 1
                                    && id.ends_with(s.as_str())
                                    && id.as_bytes()[id.len() - s.len() - 1] == b'.')
                        })
                }),
            }
    }
}

#[cfg(test)]
mod tests;
