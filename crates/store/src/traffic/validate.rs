//! The checks the serde types alone do not make, for HTTPRoutes and
//! GRPCRoutes: every error names the field, from `rules[i]` down.

use super::{
    BackendRef, Filter, HeaderModifier, Match, Method, PathModifier, RouteSpec, Rule, ValueMatch,
    parse_duration,
};

/// What the serde types alone do not check, for HTTPRoutes (`grpc: false`)
/// and GRPCRoutes.
pub fn validate_route(spec: &RouteSpec, grpc: bool) -> Result<(), String> {
    for (i, rule) in spec.rules.iter().enumerate() {
        validate_rule(rule, grpc).map_err(|e| format!("rules[{i}].{e}"))?;
    }
    Ok(())
}

fn validate_rule(rule: &Rule, grpc: bool) -> Result<(), String> {
    for (i, m) in rule.matches.iter().enumerate() {
        validate_match(m, grpc).map_err(|e| format!("matches[{i}].{e}"))?;
    }
    for (i, f) in rule.filters.iter().enumerate() {
        validate_filter(f, rule, grpc).map_err(|e| format!("filters[{i}].{e}"))?;
    }
    for (i, b) in rule.backend_refs.iter().enumerate() {
        validate_backend(b).map_err(|e| format!("backendRefs[{i}].{e}"))?;
        if !b.filters.is_empty() {
            return Err(format!(
                "backendRefs[{i}].filters: weft does not apply filters per backend; put them on the rule"
            ));
        }
    }
    if let Some(t) = &rule.timeouts {
        let mut parsed = [None, None];
        for (i, (field, value)) in
            [("request", &t.request), ("backendRequest", &t.backend_request)].into_iter().enumerate()
        {
            if let Some(v) = value {
                parsed[i] = Some(parse_duration(v).map_err(|e| format!("timeouts.{field}: {e}"))?);
            }
        }
        if let [Some(request), Some(backend)] = parsed {
            if !request.is_zero() && backend > request {
                return Err(format!(
                    "timeouts.backendRequest: {backend:?} is longer than the request timeout {request:?}"
                ));
            }
        }
    }
    Ok(())
}

fn validate_backend(b: &BackendRef) -> Result<(), String> {
    if !matches!(b.group.as_deref(), None | Some("") | Some("core"))
        || b.kind.as_deref().is_some_and(|k| k != "Service")
    {
        return Err(format!(
            "kind: {}/{} is not a Service (the only backend weft routes to)",
            b.group.as_deref().unwrap_or(""),
            b.kind.as_deref().unwrap_or("")
        ));
    }
    if b.name.is_empty() {
        return Err("name is missing".into());
    }
    super::dns_label(&b.name).map_err(|e| format!("name: {e}"))?;
    if let Some(ns) = &b.namespace {
        super::dns_label(ns).map_err(|e| format!("namespace: {e}"))?;
    }
    if b.port == Some(0) {
        return Err("port: 0 is not a port".into());
    }
    if b.weight.is_some_and(|w| w > super::MAX_WEIGHT) {
        return Err(format!("weight: at most {}", super::MAX_WEIGHT));
    }
    Ok(())
}

fn validate_match(m: &Match, grpc: bool) -> Result<(), String> {
    if let Some(p) = &m.path {
        if grpc {
            return Err("path: a GRPCRoute matches by method, not path".into());
        }
        let value = p.value.as_deref().unwrap_or("/");
        match p.kind.as_deref().unwrap_or("PathPrefix") {
            "Exact" | "PathPrefix" if !value.starts_with('/') => {
                return Err(format!("path.value: {value:?} must start with '/'"));
            }
            "Exact" | "PathPrefix" => {}
            "RegularExpression" => regex(value).map_err(|e| format!("path.value: {e}"))?,
            other => {
                return Err(format!("path.type: {other:?} is not Exact, PathPrefix or RegularExpression"));
            }
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        value_match(h, true).map_err(|e| format!("headers[{i}].{e}"))?;
    }
    if !m.query_params.is_empty() && grpc {
        return Err("queryParams: a GRPCRoute cannot match query parameters".into());
    }
    for (i, q) in m.query_params.iter().enumerate() {
        value_match(q, false).map_err(|e| format!("queryParams[{i}].{e}"))?;
    }
    match (&m.method, grpc) {
        (None, _) => {}
        (Some(Method::Http(method)), false) => {
            super::http_method(method).map_err(|e| format!("method: {e}"))?;
        }
        (Some(Method::Grpc(g)), true) => {
            match g.kind.as_deref().unwrap_or("Exact") {
                "Exact" => {}
                "RegularExpression" => {
                    return Err(
                        "method.type: RegularExpression cannot be expressed to proxies; use Exact".into()
                    );
                }
                other => return Err(format!("method.type: {other:?} is not Exact")),
            }
            if g.service.is_none() && g.method.is_none() {
                return Err("method: one of service or method is required".into());
            }
        }
        (Some(_), false) => return Err("method: an HTTPRoute's method is a string such as GET".into()),
        (Some(_), true) => return Err("method: a GRPCRoute's method is {service, method}".into()),
    }
    Ok(())
}

fn value_match(m: &ValueMatch, header: bool) -> Result<(), String> {
    if m.name.is_empty() {
        return Err("name is missing".into());
    }
    if header {
        http::HeaderName::from_bytes(m.name.as_bytes())
            .map_err(|_| format!("name: {:?} is not a header name", m.name))?;
    }
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" if header => http::HeaderValue::from_str(&m.value)
            .map(drop)
            .map_err(|_| format!("value: {:?} is not a header value", m.value)),
        "Exact" => Ok(()),
        "RegularExpression" => regex(&m.value).map_err(|e| format!("value: {e}")),
        other => Err(format!("type: {other:?} is not Exact or RegularExpression")),
    }
}

fn regex(r: &str) -> Result<(), String> {
    regex_lite::Regex::new(r).map(drop).map_err(|e| format!("{r:?} is not a regular expression: {e}"))
}

fn validate_filter(f: &Filter, rule: &Rule, grpc: bool) -> Result<(), String> {
    let kinds: &[&str] = if grpc {
        &["RequestHeaderModifier", "RequestMirror"]
    } else {
        &["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "RequestMirror"]
    };
    if !kinds.contains(&f.kind.as_str()) {
        return Err(format!(
            "type: {:?} is not a filter weft applies to a {} (it applies {})",
            f.kind,
            if grpc { "GRPCRoute" } else { "HTTPRoute" },
            kinds.join(", ")
        ));
    }
    let missing = |field: &str| format!("{field}: required by type {}", f.kind);
    match f.kind.as_str() {
        "RequestHeaderModifier" => header_modifier(
            f.request_header_modifier.as_ref().ok_or_else(|| missing("requestHeaderModifier"))?,
        )
        .map_err(|e| format!("requestHeaderModifier.{e}")),
        "ResponseHeaderModifier" => header_modifier(
            f.response_header_modifier.as_ref().ok_or_else(|| missing("responseHeaderModifier"))?,
        )
        .map_err(|e| format!("responseHeaderModifier.{e}")),
        "RequestRedirect" => {
            let r = f.request_redirect.as_ref().ok_or_else(|| missing("requestRedirect"))?;
            if let Some(s) = r.scheme.as_deref() {
                if !["http", "https"].contains(&s) {
                    return Err(format!("requestRedirect.scheme: {s:?} is not http or https"));
                }
            }
            if let Some(h) = r.hostname.as_deref() {
                hostname(h).map_err(|e| format!("requestRedirect.hostname: {e}"))?;
            }
            if r.port == Some(0) {
                return Err("requestRedirect.port: 0 is not a port".into());
            }
            if let Some(code) = r.status_code {
                if ![301, 302, 303, 307, 308].contains(&code) {
                    return Err(format!(
                        "requestRedirect.statusCode: {code} is not 301, 302, 303, 307 or 308"
                    ));
                }
            }
            if let Some(p) = &r.path {
                path_modifier(p, rule).map_err(|e| format!("requestRedirect.path.{e}"))?;
            }
            Ok(())
        }
        "URLRewrite" => {
            let r = f.url_rewrite.as_ref().ok_or_else(|| missing("urlRewrite"))?;
            if let Some(h) = r.hostname.as_deref() {
                hostname(h).map_err(|e| format!("urlRewrite.hostname: {e}"))?;
            }
            if let Some(p) = &r.path {
                path_modifier(p, rule).map_err(|e| format!("urlRewrite.path.{e}"))?;
            }
            Ok(())
        }
        "RequestMirror" => {
            let m = f.request_mirror.as_ref().ok_or_else(|| missing("requestMirror"))?;
            let backend = m.backend_ref.as_ref().ok_or("requestMirror.backendRef: required")?;
            validate_backend(backend).map_err(|e| format!("requestMirror.backendRef.{e}"))?;
            if let Some(p) = m.percent {
                if !(0..=100).contains(&p) {
                    return Err(format!("requestMirror.percent: {p} is not between 0 and 100"));
                }
            }
            if let Some(fr) = &m.fraction {
                let d = fr.denominator.unwrap_or(100);
                if d <= 0 || d > u32::MAX as i64 || fr.numerator < 0 || fr.numerator > d {
                    return Err(format!(
                        "requestMirror.fraction: {}/{d} is not a fraction from 0 to 1 with a denominator above 0",
                        fr.numerator
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn header_modifier(m: &HeaderModifier) -> Result<(), String> {
    for (field, headers) in [("add", &m.add), ("set", &m.set)] {
        for (i, h) in headers.iter().enumerate() {
            http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{field}[{i}].name: {:?} is not a header name", h.name))?;
            http::HeaderValue::from_str(&h.value)
                .map_err(|_| format!("{field}[{i}].value: {:?} is not a header value", h.value))?;
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("remove[{i}]: {name:?} is not a header name"))?;
    }
    Ok(())
}

fn hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok { Ok(()) } else { Err(format!("{h:?} is not a host name")) }
}

fn path_modifier(p: &PathModifier, rule: &Rule) -> Result<(), String> {
    match p.kind.as_str() {
        "ReplaceFullPath" => match p.replace_full_path.as_deref() {
            Some(path) if path.starts_with('/') => Ok(()),
            Some(path) => Err(format!("replaceFullPath: {path:?} must start with '/'")),
            None => Err("replaceFullPath: required by type ReplaceFullPath".into()),
        },
        "ReplacePrefixMatch" => {
            match p.replace_prefix_match.as_deref() {
                Some(path) if path.starts_with('/') => {}
                Some(path) => return Err(format!("replacePrefixMatch: {path:?} must start with '/'")),
                None => return Err("replacePrefixMatch: required by type ReplacePrefixMatch".into()),
            }
            let prefix_only = rule.matches.iter().all(|m| {
                m.path.as_ref().is_some_and(|p| p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix")
            });
            if rule.matches.is_empty() || !prefix_only {
                return Err(
                    "type: ReplacePrefixMatch needs every match of the rule to be a PathPrefix".into()
                );
            }
            Ok(())
        }
        other => Err(format!("type: {other:?} is not ReplaceFullPath or ReplacePrefixMatch")),
    }
}
