//! HTTPRoute and GRPCRoute (Gateway API, and Linkerd's `policy.linkerd.io`
//! HTTPRoute) attached to a Service, as outbound policy routes: their
//! matches, and their backends as a weighted distribution.

use crate::outbound::backend_for;
use linkerd2_proxy_api::{
    grpc_route::{GrpcRouteMatch, GrpcRpcMatch},
    http_route::{HeaderMatch, HttpRouteMatch, PathMatch, header_match, path_match},
    http_types::HttpMethod,
    meta::{Metadata, Resource as MetaResource, metadata},
    outbound::{GrpcRoute, HttpRoute, grpc_route, http_route},
};
use serde::Deserialize;
use weft_store::{Index, Kind, Resource, ServicePort};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RouteSpec {
    pub(crate) parent_refs: Vec<Ref>,
    pub(crate) rules: Vec<RuleSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Ref {
    pub(crate) group: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    port: Option<u16>,
    weight: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RuleSpec {
    matches: Vec<MatchSpec>,
    backend_refs: Vec<Ref>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MatchSpec {
    path: Option<ValueMatch>,
    headers: Vec<HeaderSpec>,
    /// An HTTP method (HTTPRoute) or an RPC (GRPCRoute).
    method: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ValueMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HeaderSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

/// The routes of `kind` whose parent is the service port, oldest first.
fn attached<'a>(
    index: &'a Index,
    sp: &'a ServicePort,
    kind: Kind,
) -> impl Iterator<Item = (&'a Resource, RouteSpec)> + 'a {
    index.in_namespace(kind, &sp.namespace).filter_map(move |r| {
        let Resource::Other(route) = r else { return None };
        let spec: RouteSpec = serde_json::from_value(route.spec.clone()).ok()?;
        let attaches = spec.parent_refs.iter().any(|p| {
            matches!(p.group.as_deref(), None | Some("") | Some("core"))
                && p.kind.as_deref() == Some("Service")
                && p.name == sp.name
                && p.namespace.as_deref().is_none_or(|ns| ns == sp.namespace)
                && p.port.is_none_or(|port| port == sp.port)
        });
        attaches.then_some((r, spec))
    })
}

pub(crate) fn metadata(resource: &Resource, group: &str, kind: &str) -> Metadata {
    let meta = resource.metadata();
    Metadata {
        kind: Some(metadata::Kind::Resource(MetaResource {
            group: group.into(),
            kind: kind.into(),
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            ..Default::default()
        })),
    }
}

/// Weighted backends; a rule without any goes to the parent service.
fn backends(
    index: &Index,
    sp: &ServicePort,
    refs: &[Ref],
) -> Vec<(linkerd2_proxy_api::outbound::Backend, u32)> {
    let domain = &index.config().cluster_domain;
    if refs.is_empty() {
        return vec![(backend_for(sp, domain), 1)];
    }
    refs.iter()
        .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Service"))
        .map(|r| {
            let target = ServicePort {
                namespace: r.namespace.clone().unwrap_or_else(|| sp.namespace.clone()),
                name: r.name.clone(),
                port: r.port.unwrap_or(sp.port),
            };
            (backend_for(&target, domain), r.weight.unwrap_or(1))
        })
        .collect()
}

/// A rule's HTTP matches, as the proxy API spells them.
pub(crate) fn http_matches(rule: &RuleSpec) -> Vec<HttpRouteMatch> {
    rule.matches
        .iter()
        .map(|m| HttpRouteMatch {
            path: m.path.as_ref().map(|p| {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                PathMatch {
                    kind: Some(match p.kind.as_deref() {
                        Some("Exact") => path_match::Kind::Exact(value),
                        Some("RegularExpression") => path_match::Kind::Regex(value),
                        _ => path_match::Kind::Prefix(value),
                    }),
                }
            }),
            headers: headers(&m.headers),
            method: m
                .method
                .as_ref()
                .and_then(|v| v.as_str())
                .and_then(|v| http::Method::from_bytes(v.as_bytes()).ok())
                .map(HttpMethod::from),
            ..Default::default()
        })
        .collect()
}

/// A rule's gRPC matches.
pub(crate) fn grpc_matches(rule: &RuleSpec) -> Vec<GrpcRouteMatch> {
    rule.matches
        .iter()
        .map(|m| GrpcRouteMatch {
            rpc: m.method.as_ref().map(|method| GrpcRpcMatch {
                service: method.get("service").and_then(|s| s.as_str()).unwrap_or_default().into(),
                method: method.get("method").and_then(|s| s.as_str()).unwrap_or_default().into(),
            }),
            headers: headers(&m.headers),
        })
        .collect()
}

fn headers(specs: &[HeaderSpec]) -> Vec<HeaderMatch> {
    specs
        .iter()
        .map(|h| HeaderMatch {
            name: h.name.clone(),
            value: Some(match h.kind.as_deref() {
                Some("RegularExpression") => header_match::Value::Regex(h.value.clone()),
                _ => header_match::Value::Exact(h.value.clone().into_bytes()),
            }),
        })
        .collect()
}

pub(crate) fn http_routes(index: &Index, sp: &ServicePort) -> Vec<HttpRoute> {
    let gateway =
        attached(index, sp, Kind::GatewayHttpRoute).map(|(r, s)| (r, s, "gateway.networking.k8s.io"));
    let linkerd = attached(index, sp, Kind::PolicyHttpRoute).map(|(r, s)| (r, s, "policy.linkerd.io"));
    gateway
        .chain(linkerd)
        .map(|(resource, spec, group)| HttpRoute {
            metadata: Some(metadata(resource, group, "HTTPRoute")),
            hosts: vec![],
            rules: spec
                .rules
                .iter()
                .map(|rule| http_route::Rule {
                    matches: http_matches(rule),
                    backends: Some(http_route::Distribution {
                        kind: Some(http_route::distribution::Kind::RandomAvailable(
                            http_route::distribution::RandomAvailable {
                                backends: backends(index, sp, &rule.backend_refs)
                                    .into_iter()
                                    .map(|(backend, weight)| http_route::WeightedRouteBackend {
                                        backend: Some(http_route::RouteBackend {
                                            backend: Some(backend),
                                            ..Default::default()
                                        }),
                                        weight,
                                    })
                                    .collect(),
                            },
                        )),
                    }),
                    ..Default::default()
                })
                .collect(),
        })
        .collect()
}

pub(crate) fn grpc_routes(index: &Index, sp: &ServicePort) -> Vec<GrpcRoute> {
    attached(index, sp, Kind::GatewayGrpcRoute)
        .map(|(resource, spec)| GrpcRoute {
            metadata: Some(metadata(resource, "gateway.networking.k8s.io", "GRPCRoute")),
            hosts: vec![],
            rules: spec
                .rules
                .iter()
                .map(|rule| grpc_route::Rule {
                    matches: grpc_matches(rule),
                    backends: Some(grpc_route::Distribution {
                        kind: Some(grpc_route::distribution::Kind::RandomAvailable(
                            grpc_route::distribution::RandomAvailable {
                                backends: backends(index, sp, &rule.backend_refs)
                                    .into_iter()
                                    .map(|(backend, weight)| grpc_route::WeightedRouteBackend {
                                        backend: Some(grpc_route::RouteBackend {
                                            backend: Some(backend),
                                            ..Default::default()
                                        }),
                                        weight,
                                    })
                                    .collect(),
                            },
                        )),
                    }),
                    ..Default::default()
                })
                .collect(),
        })
        .collect()
}
