//! Traffic management resources, typed: Gateway API HTTPRoute and GRPCRoute
//! (and Linkerd's `policy.linkerd.io` HTTPRoute), ServiceProfile,
//! TrafficSplit, and the traffic annotations; with the checks that make a
//! bad one a clear rejection naming the field, instead of a policy that
//! proxies refuse or that silently does something else.

pub mod annotations;
mod profile;
mod validate;
pub use profile::split_authority;
pub use validate::validate_route;

pub use profile::{
    BudgetSpec, ClassSpec, OverrideSpec, ProfileRoute, RequestSpec, ResponseSpec, ServiceProfileSpec,
    SplitBackend, StatusSpec, TrafficSplitSpec,
};

use serde::Deserialize;
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteSpec {
    pub parent_refs: Vec<ParentRef>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub filters: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub filters: Vec<Filter>,
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: Option<RuleTimeouts>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleTimeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Match {
    pub path: Option<PathMatch>,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    pub method: Option<Method>,
}

/// An HTTP method (HTTPRoute) or an RPC (GRPCRoute).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Method {
    Http(String),
    Grpc(GrpcMethod),
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GrpcMethod {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ValueMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<Redirect>,
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    pub request_mirror: Option<Mirror>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeaderModifier {
    pub add: Vec<Header>,
    pub set: Vec<Header>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status_code: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Mirror {
    pub backend_ref: Option<BackendRef>,
    pub percent: Option<i64>,
    pub fraction: Option<Fraction>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Fraction {
    pub numerator: i64,
    pub denominator: Option<i64>,
}

// === impl RouteSpec ===

impl RouteSpec {
    /// A route's spec as the Gateway API reads it: no `rules` is one rule
    /// that matches everything and goes to the parent.
    pub fn from_value(v: &serde_json::Value) -> Result<Self, serde_json::Error> {
        let mut spec: Self = serde_json::from_value(v.clone())?;
        if spec.rules.is_empty() {
            spec.rules.push(Rule::default());
        }
        Ok(spec)
    }

    /// Whether a parent is the service port `namespace/name:port` (a route
    /// in `route_ns`).
    pub fn attaches_to_service(&self, route_ns: &str, name: &str, port: u16) -> bool {
        self.parent_refs.iter().any(|p| {
            matches!(p.group.as_deref(), None | Some("") | Some("core"))
                && p.kind.as_deref() == Some("Service")
                && p.name == name
                && p.namespace.as_deref().is_none_or(|ns| ns == route_ns)
                && p.port.is_none_or(|p| p == port)
        })
    }
}

// === impl Mirror ===

impl Mirror {
    /// The share of requests mirrored, as numerator and denominator.
    pub fn ratio(&self) -> (u32, u32) {
        match (&self.fraction, self.percent) {
            (Some(f), _) => (f.numerator as u32, f.denominator.unwrap_or(100) as u32),
            (None, Some(p)) => (p as u32, 100),
            (None, None) => (100, 100),
        }
    }
}

/// Go-style durations, as Linkerd's annotations and the Gateway API write
/// them: `300ms`, `1.5s`, `1m30s`, `2h`; `0` alone is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("an empty duration".into());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as 300ms, 10s or 1m30s"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{s:?} is not a duration such as 300ms, 10s or 1m30s (units ms, s, m, h)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{s:?} is too long"))
}

/// A percentage from 0 to 100, decimals allowed.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err("not a percentage between 0 and 100".into()),
    }
}

/// A Kubernetes quantity as thousandths: `1` is 1000, `500m` is 500.
pub fn quantity_milli(v: &serde_json::Value) -> Result<u32, String> {
    let milli = match v {
        serde_json::Value::Number(n) => n.as_f64().map(|f| f * 1000.0),
        serde_json::Value::String(s) => match s.trim().strip_suffix('m') {
            Some(m) => m.parse::<f64>().ok(),
            None => s.trim().parse::<f64>().ok().map(|f| f * 1000.0),
        },
        _ => None,
    };
    match milli {
        Some(m) if (0.0..=MAX_QUANTITY_MILLI as f64).contains(&m) => Ok(m.round() as u32),
        _ => {
            Err(format!("{v} is not a weight such as 1, 0.5 or 500m (at most {})", MAX_QUANTITY_MILLI / 1000))
        }
    }
}

/// The largest weight as a quantity (in thousandths): many of them still
/// add up within 32 bits, as proxies add them.
pub const MAX_QUANTITY_MILLI: u32 = 100_000_000;

/// The largest backendRef weight (the Gateway API's own maximum).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// A Kubernetes object name used in a DNS name (a Service, a namespace):
/// lowercase letters, digits and '-', starting and ending with a letter or
/// digit, at most 63 characters.
pub fn dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"))
    }
}

/// The HTTP methods a route can match.
pub fn http_method(m: &str) -> Result<(), String> {
    const METHODS: [&str; 9] =
        ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    if METHODS.contains(&m) {
        Ok(())
    } else {
        Err(format!("{m:?} is not an HTTP method ({})", METHODS.join(", ")))
    }
}

#[cfg(test)]
mod tests;
