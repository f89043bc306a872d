//! Request matches, as the proxy API's HTTP and gRPC routes give them:
//! path, method, headers and query parameters. One model for the routes a
//! server authorizes (inbound policy) and the routes a client's requests
//! take (outbound traffic management).

use http::{HeaderMap, HeaderName, Method};
use linkerd2_proxy_api::{grpc_route::GrpcRouteMatch, http_route as api};

/// A request matches when it matches all of these that are set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    Exact(String),
    /// Whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    Regex(Regex),
    /// A gRPC method of any service: `/<service>/<method>`.
    GrpcMethod(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueMatch {
    Exact(Vec<u8>),
    Regex(Regex),
}

/// A compiled regular expression, anchored: it must match the whole value,
/// as the Gateway API's RegularExpression does.
#[derive(Clone, Debug)]
pub struct Regex(regex_lite::Regex);

/// How specific a match is; greater wins (the Gateway API's precedence:
/// exact path, regex, longest prefix, gRPC method only; then a method, then
/// the most header and query matches).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    /// 4 exact, 3 regex, 2 prefix, 1 gRPC method only, 0 none.
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

// === impl RequestMatch ===

impl RequestMatch {
    pub fn matches(&self, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => path == p,
            Some(PathMatch::Prefix(p)) => prefix_matches(path, p),
            Some(PathMatch::Regex(r)) => r.0.is_match(path),
            Some(PathMatch::GrpcMethod(m)) => path
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .is_some_and(|(service, method)| !service.is_empty() && method == m),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| value.accepts(v.as_bytes())))
            && self.query.iter().all(|(name, value)| {
                query_pairs(query).any(|(k, v)| k == name && value.accepts(v.as_bytes()))
            })
    }

    pub fn score(&self) -> Score {
        let (path_kind, path_len) = match &self.path {
            None => (0, 0),
            Some(PathMatch::Exact(p)) => (4, p.len()),
            Some(PathMatch::Regex(r)) => (3, r.0.as_str().len()),
            Some(PathMatch::Prefix(p)) => (2, p.len()),
            Some(PathMatch::GrpcMethod(m)) => (1, m.len()),
        };
        Score {
            path_kind,
            path_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        }
    }
}

/// A path prefix matches whole segments: `/api` matches `/api` and
/// `/api/x`, not `/apix`.
pub fn prefix_matches(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

impl ValueMatch {
    fn accepts(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => std::str::from_utf8(value).is_ok_and(|s| r.0.is_match(s)),
        }
    }
}

// === impl Regex ===

impl Regex {
    pub fn new(pattern: &str) -> Result<Self, &'static str> {
        regex_lite::Regex::new(&format!("^(?:{pattern})$")).map(Regex).map_err(|_| "regex")
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

// === from the proxy API ===
//
// Errors name what was malformed; callers decide whether that drops one
// match (authorization) or the whole policy (traffic).

pub fn http_match(m: &api::HttpRouteMatch) -> Result<RequestMatch, &'static str> {
    let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(api::path_match::Kind::Exact(p)) => Some(PathMatch::Exact(p.clone())),
        Some(api::path_match::Kind::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
        Some(api::path_match::Kind::Regex(r)) => Some(PathMatch::Regex(Regex::new(r)?)),
        None => None,
    };
    let query = m
        .query_params
        .iter()
        .map(|q| {
            let value = match &q.value {
                Some(api::query_param_match::Value::Exact(v)) => ValueMatch::Exact(v.as_bytes().to_vec()),
                Some(api::query_param_match::Value::Regex(r)) => ValueMatch::Regex(Regex::new(r)?),
                None => return Err("query match"),
            };
            Ok((q.name.clone(), value))
        })
        .collect::<Result<_, _>>()?;
    let method = m.method.clone().map(Method::try_from).transpose().map_err(|_| "method")?;
    Ok(RequestMatch { path, method, headers: headers(&m.headers)?, query })
}

/// A gRPC match as a path match on `/service/method`.
pub fn grpc_match(m: &GrpcRouteMatch) -> Result<RequestMatch, &'static str> {
    let path = match &m.rpc {
        Some(rpc) if !rpc.service.is_empty() && !rpc.method.is_empty() => {
            Some(PathMatch::Exact(format!("/{}/{}", rpc.service, rpc.method)))
        }
        Some(rpc) if !rpc.service.is_empty() => Some(PathMatch::Prefix(format!("/{}", rpc.service))),
        Some(rpc) if !rpc.method.is_empty() => Some(PathMatch::GrpcMethod(rpc.method.clone())),
        _ => None,
    };
    Ok(RequestMatch { path, headers: headers(&m.headers)?, ..Default::default() })
}

fn headers(m: &[api::HeaderMatch]) -> Result<Vec<(HeaderName, ValueMatch)>, &'static str> {
    m.iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "header name")?;
            let value = match &h.value {
                Some(api::header_match::Value::Exact(v)) => ValueMatch::Exact(v.clone()),
                Some(api::header_match::Value::Regex(r)) => ValueMatch::Regex(Regex::new(r)?),
                None => return Err("header match"),
            };
            Ok((name, value))
        })
        .collect()
}
