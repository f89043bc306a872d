//! HTTPRoute and GRPCRoute (Gateway API, and Linkerd's `policy.linkerd.io`
//! HTTPRoute) attached to a Service, as outbound policy routes: matches,
//! filters, timeouts, retries and weighted backends in the standard
//! policy; mirrors, URL rewrites, delays and per-route failure accrual as
//! weft's additions (`weft_api::RuleExtension`).

use crate::{
    outbound::backend_for,
    traffic::{self, Listed, RouteTraffic, ServiceTraffic},
};
use linkerd2_proxy_api::{
    grpc_route::{GrpcRouteMatch, GrpcRpcMatch},
    http_route::{
        HeaderMatch, HttpRouteMatch, PathMatch, PathModifier, QueryParamMatch, RequestHeaderModifier,
        RequestRedirect, ResponseHeaderModifier, header_match, path_match, path_modifier, query_param_match,
    },
    http_types::{HttpMethod, Scheme, headers},
    meta::{Metadata, Resource as MetaResource, metadata},
    outbound::{Backend, GrpcRoute, HttpRoute, grpc_route, http_route},
};
use weft_api::{Mirror, RuleExtension, UrlRewrite};
use weft_store::{
    Index, Kind, Resource, ServicePort,
    traffic::{self as spec, Method, annotations::Timeouts, parse_duration},
};

pub(crate) use weft_store::traffic::{RouteSpec, Rule as RuleSpec};

/// The routes of `kind` whose parent is the service port, by name.
fn attached<'a>(
    index: &'a Index,
    sp: &'a ServicePort,
    kind: Kind,
) -> impl Iterator<Item = (&'a Resource, RouteSpec)> + 'a {
    index.in_namespace(kind, &sp.namespace).filter_map(move |r| {
        let Resource::Other(route) = r else { return None };
        let spec = RouteSpec::from_value(&route.spec).ok()?;
        spec.attaches_to_service(&sp.namespace, &sp.name, sp.port).then_some((r, spec))
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

/// A backend reference as a service port: its namespace defaults to the
/// route's, its port to the parent's.
fn target(sp: &ServicePort, r: &spec::BackendRef) -> ServicePort {
    ServicePort {
        namespace: r.namespace.clone().unwrap_or_else(|| sp.namespace.clone()),
        name: r.name.clone(),
        port: r.port.unwrap_or(sp.port),
    }
}

/// Weighted backends; a rule without any goes to the parent service.
fn backends(index: &Index, sp: &ServicePort, refs: &[spec::BackendRef]) -> Vec<(Backend, u32)> {
    let domain = &index.config().cluster_domain;
    if refs.is_empty() {
        return vec![(backend_for(sp, domain), 1)];
    }
    refs.iter().map(|r| (backend_for(&target(sp, r), domain), r.weight.unwrap_or(1))).collect()
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
            query_params: m
                .query_params
                .iter()
                .map(|q| QueryParamMatch {
                    name: q.name.clone(),
                    value: Some(match q.kind.as_deref() {
                        Some("RegularExpression") => query_param_match::Value::Regex(q.value.clone()),
                        _ => query_param_match::Value::Exact(q.value.clone()),
                    }),
                })
                .collect(),
            method: match &m.method {
                Some(Method::Http(v)) => http::Method::from_bytes(v.as_bytes()).ok().map(HttpMethod::from),
                _ => None,
            },
        })
        .collect()
}

/// A rule's gRPC matches.
pub(crate) fn grpc_matches(rule: &RuleSpec) -> Vec<GrpcRouteMatch> {
    rule.matches
        .iter()
        .map(|m| GrpcRouteMatch {
            rpc: match &m.method {
                Some(Method::Grpc(g)) => Some(GrpcRpcMatch {
                    service: g.service.clone().unwrap_or_default(),
                    method: g.method.clone().unwrap_or_default(),
                }),
                _ => None,
            },
            headers: headers(&m.headers),
        })
        .collect()
}

fn headers(specs: &[spec::ValueMatch]) -> Vec<HeaderMatch> {
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

fn header_list(list: &[spec::Header]) -> Option<linkerd2_proxy_api::http_types::Headers> {
    (!list.is_empty()).then(|| linkerd2_proxy_api::http_types::Headers {
        headers: list
            .iter()
            .map(|h| headers::Header { name: h.name.clone(), value: h.value.clone().into_bytes() })
            .collect(),
    })
}

fn request_headers(m: &spec::HeaderModifier) -> RequestHeaderModifier {
    RequestHeaderModifier { add: header_list(&m.add), set: header_list(&m.set), remove: m.remove.clone() }
}

fn path_modifier(p: &spec::PathModifier) -> Option<PathModifier> {
    let replace = match p.kind.as_str() {
        "ReplaceFullPath" => path_modifier::Replace::Full(p.replace_full_path.clone()?),
        "ReplacePrefixMatch" => path_modifier::Replace::Prefix(p.replace_prefix_match.clone()?),
        _ => return None,
    };
    Some(PathModifier { replace: Some(replace) })
}

fn rule_timeouts(rule: &RuleSpec) -> Timeouts {
    let parse = |v: &Option<String>| v.as_deref().and_then(|v| parse_duration(v).ok());
    let t = rule.timeouts.clone().unwrap_or_default();
    Timeouts { request: parse(&t.request), response: parse(&t.backend_request), idle: None }
}

/// The rule's mirror filters as weft's mirrors.
fn mirror(index: &Index, sp: &ServicePort, m: &spec::Mirror) -> Option<Mirror> {
    let backend = backend_for(&target(sp, m.backend_ref.as_ref()?), &index.config().cluster_domain);
    let (numerator, denominator) = m.ratio();
    Some(Mirror {
        backend: Some(backend),
        ratio: Some(linkerd2_proxy_api::http_route::Ratio { numerator, denominator }),
    })
}

fn http_rule(
    index: &Index,
    sp: &ServicePort,
    rule: &RuleSpec,
    at: usize,
    rt: &RouteTraffic,
) -> (http_route::Rule, RuleExtension) {
    use http_route::filter::Kind as F;
    let mut ext = rt.extension(at);
    let backends = backends(index, sp, &rule.backend_refs);
    let mut filters: Vec<http_route::Filter> = Vec::new();
    if traffic::all_zero(&backends) {
        filters.push(traffic::no_backends_http());
    }
    filters.extend(rt.http_abort());
    for f in &rule.filters {
        let kind = match f.kind.as_str() {
            "RequestHeaderModifier" => {
                f.request_header_modifier.as_ref().map(|m| F::RequestHeaderModifier(request_headers(m)))
            }
            "ResponseHeaderModifier" => f.response_header_modifier.as_ref().map(|m| {
                F::ResponseHeaderModifier(ResponseHeaderModifier {
                    add: header_list(&m.add),
                    set: header_list(&m.set),
                    remove: m.remove.clone(),
                })
            }),
            "RequestRedirect" => f.request_redirect.as_ref().map(|r| {
                F::Redirect(RequestRedirect {
                    scheme: r.scheme.as_deref().map(Scheme::from),
                    host: r.hostname.clone().unwrap_or_default(),
                    path: r.path.as_ref().and_then(path_modifier),
                    port: r.port.map_or(0, u32::from),
                    status: r.status_code.map_or(302, u32::from),
                })
            }),
            "URLRewrite" => {
                ext.url_rewrite = f.url_rewrite.as_ref().map(|u| UrlRewrite {
                    hostname: u.hostname.clone().unwrap_or_default(),
                    path: u.path.as_ref().and_then(path_modifier),
                });
                None
            }
            "RequestMirror" => {
                ext.mirrors.extend(f.request_mirror.as_ref().and_then(|m| mirror(index, sp, m)));
                None
            }
            _ => None,
        };
        filters.extend(kind.map(|kind| http_route::Filter { kind: Some(kind) }));
    }
    let rule = http_route::Rule {
        matches: http_matches(rule),
        filters,
        backends: Some(traffic::http_distribution(backends)),
        timeouts: rt.timeouts(rule_timeouts(rule)),
        retry: rt.http_retry(),
        ..Default::default()
    };
    (rule, ext)
}

fn grpc_rule(
    index: &Index,
    sp: &ServicePort,
    rule: &RuleSpec,
    at: usize,
    rt: &RouteTraffic,
) -> (grpc_route::Rule, RuleExtension) {
    let mut ext = rt.extension(at);
    let backends = backends(index, sp, &rule.backend_refs);
    let mut filters: Vec<grpc_route::Filter> = Vec::new();
    if traffic::all_zero(&backends) {
        filters.push(traffic::no_backends_grpc());
    }
    filters.extend(rt.grpc_abort());
    for f in &rule.filters {
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                filters.extend(f.request_header_modifier.as_ref().map(|m| grpc_route::Filter {
                    kind: Some(grpc_route::filter::Kind::RequestHeaderModifier(request_headers(m))),
                }))
            }
            "RequestMirror" => {
                ext.mirrors.extend(f.request_mirror.as_ref().and_then(|m| mirror(index, sp, m)))
            }
            _ => {}
        }
    }
    let rule = grpc_route::Rule {
        matches: grpc_matches(rule),
        filters,
        backends: Some(traffic::grpc_distribution(backends)),
        timeouts: rt.timeouts(rule_timeouts(rule)),
        retry: rt.grpc_retry(),
        ..Default::default()
    };
    (rule, ext)
}

/// The HTTPRoutes (Gateway API's, then Linkerd's) attached to the port.
pub(crate) fn http_routes(index: &Index, sp: &ServicePort, svc: &ServiceTraffic) -> Listed<HttpRoute> {
    let gateway =
        attached(index, sp, Kind::GatewayHttpRoute).map(|(r, s)| (r, s, "gateway.networking.k8s.io"));
    let linkerd = attached(index, sp, Kind::PolicyHttpRoute).map(|(r, s)| (r, s, "policy.linkerd.io"));
    let mut listed = Listed::default();
    for (resource, spec, group) in gateway.chain(linkerd) {
        let rt = svc.with_route(resource.metadata().annotations.as_ref());
        let (rules, exts) =
            spec.rules.iter().enumerate().map(|(i, rule)| http_rule(index, sp, rule, i, &rt)).unzip();
        let route =
            HttpRoute { metadata: Some(metadata(resource, group, "HTTPRoute")), hosts: vec![], rules };
        listed.push(route, exts);
    }
    listed
}

/// The GRPCRoutes attached to the port.
pub(crate) fn grpc_routes(index: &Index, sp: &ServicePort, svc: &ServiceTraffic) -> Listed<GrpcRoute> {
    let mut listed = Listed::default();
    for (resource, spec) in attached(index, sp, Kind::GatewayGrpcRoute) {
        let rt = svc.with_route(resource.metadata().annotations.as_ref());
        let (rules, exts) =
            spec.rules.iter().enumerate().map(|(i, rule)| grpc_rule(index, sp, rule, i, &rt)).unzip();
        let route = GrpcRoute {
            metadata: Some(metadata(resource, "gateway.networking.k8s.io", "GRPCRoute")),
            hosts: vec![],
            rules,
        };
        listed.push(route, exts);
    }
    listed
}
