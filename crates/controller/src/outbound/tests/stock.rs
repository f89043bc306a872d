//! What the stock linkerd2-proxy checks before it takes an outbound policy
//! (it rejects the whole policy, and fails every request, otherwise), and
//! what weft-proxy relies on in weft's additions.

use linkerd2_proxy_api::{
    http_route::Ratio,
    meta::{Metadata, metadata},
    outbound::{Backend, backend, grpc_route, http_route, opaque_route, proxy_protocol},
};
use weft_api::OutboundPolicy;

/// The balancer's destination path of a backend.
pub(super) fn dst(backend: &Backend) -> String {
    let Some(backend::Kind::Balancer(p2c)) = &backend.kind else { panic!("not a balancer: {backend:?}") };
    let Some(backend::endpoint_discovery::Kind::Dst(dst)) =
        p2c.discovery.as_ref().and_then(|d| d.kind.as_ref())
    else {
        panic!("no discovery: {backend:?}")
    };
    dst.path.clone()
}

fn meta(m: &Option<Metadata>, what: &str) {
    match m.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Default(name)) => assert!(!name.is_empty(), "{what}: empty default metadata"),
        Some(metadata::Kind::Resource(r)) => {
            assert!(!r.kind.is_empty() && !r.name.is_empty(), "{what}: {r:?}");
            if r.kind == "Service" {
                assert_eq!(r.group, "core", "{what}: a Service's group is core");
            }
        }
        None => panic!("{what}: metadata is required"),
    }
}

fn check_backend(b: &Backend, what: &str) {
    meta(&b.metadata, what);
    assert!(
        b.queue.as_ref().and_then(|q| q.failfast_timeout).is_some(),
        "{what}: queue with failfast_timeout"
    );
    let path = dst(b);
    // A DNS name with a port: an IP:port makes the stock proxy panic.
    let (host, port) = path.rsplit_once(':').unwrap_or_else(|| panic!("{what}: {path} has no port"));
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{what}: {path}");
    assert!(
        host.parse::<std::net::IpAddr>().is_err() && host.contains('.'),
        "{what}: {path} is not a DNS name"
    );
    let Some(backend::Kind::Balancer(p2c)) = &b.kind else { unreachable!() };
    let Some(backend::balance_p2c::Load::PeakEwma(ewma)) = &p2c.load else { panic!("{what}: PeakEwma load") };
    assert!(
        ewma.default_rtt.is_some() && ewma.decay.is_some(),
        "{what}: PeakEwma needs default_rtt and decay"
    );
}

fn check_ratio(r: &Option<Ratio>, what: &str) {
    let r = r.unwrap_or_else(|| panic!("{what}: a ratio"));
    assert!(r.denominator > 0 && r.numerator <= r.denominator, "{what}: {r:?}");
}

fn check_http_rule(rule: &http_route::Rule, what: &str) {
    let backends: Vec<&http_route::RouteBackend> = match rule.backends.as_ref().and_then(|d| d.kind.as_ref())
    {
        Some(http_route::distribution::Kind::FirstAvailable(f)) => f.backends.iter().collect(),
        Some(http_route::distribution::Kind::RandomAvailable(r)) => {
            r.backends.iter().map(|b| b.backend.as_ref().expect("a weighted backend")).collect()
        }
        other => panic!("{what}: distribution {other:?}"),
    };
    assert!(!backends.is_empty(), "{what}: an empty distribution");
    for (i, b) in backends.iter().enumerate() {
        check_backend(b.backend.as_ref().expect("a backend"), &format!("{what} backend {i}"));
    }
    for f in &rule.filters {
        match f.kind.as_ref().unwrap_or_else(|| panic!("{what}: a filter without a kind")) {
            http_route::filter::Kind::FailureInjector(fi) => {
                assert!(http::StatusCode::from_u16(fi.status as u16).is_ok(), "{what}: {fi:?}");
                check_ratio(&fi.ratio, what);
            }
            http_route::filter::Kind::Redirect(r) => {
                assert!(
                    r.port <= 65535 && http::StatusCode::from_u16(r.status as u16).is_ok(),
                    "{what}: {r:?}"
                );
            }
            _ => {}
        }
    }
    if let Some(retry) = &rule.retry {
        let conditions = retry.conditions.as_ref().unwrap_or_else(|| panic!("{what}: retry conditions"));
        for r in &conditions.status_ranges {
            assert!(r.start > 0 && r.start <= r.end && r.end <= 599, "{what}: {r:?}");
        }
        assert!(retry.max_retries <= u16::MAX as u32);
    }
}

fn check_grpc_rule(rule: &grpc_route::Rule, what: &str) {
    let backends: Vec<&grpc_route::RouteBackend> = match rule.backends.as_ref().and_then(|d| d.kind.as_ref())
    {
        Some(grpc_route::distribution::Kind::FirstAvailable(f)) => f.backends.iter().collect(),
        Some(grpc_route::distribution::Kind::RandomAvailable(r)) => {
            r.backends.iter().map(|b| b.backend.as_ref().expect("a weighted backend")).collect()
        }
        other => panic!("{what}: distribution {other:?}"),
    };
    assert!(!backends.is_empty(), "{what}: an empty distribution");
    for (i, b) in backends.iter().enumerate() {
        check_backend(b.backend.as_ref().expect("a backend"), &format!("{what} backend {i}"));
    }
    for f in &rule.filters {
        if let grpc_route::filter::Kind::FailureInjector(fi) = f.kind.as_ref().expect("a filter kind") {
            check_ratio(&fi.ratio, what);
        }
    }
    if let Some(retry) = &rule.retry {
        assert!(retry.conditions.is_some(), "{what}: retry conditions");
    }
}

fn check_opaque(o: &proxy_protocol::Opaque) {
    for route in &o.routes {
        meta(&route.metadata, "opaque route");
        for rule in &route.rules {
            let Some(opaque_route::distribution::Kind::FirstAvailable(f)) =
                rule.backends.as_ref().and_then(|d| d.kind.as_ref())
            else {
                panic!("opaque distribution")
            };
            assert!(!f.backends.is_empty());
            for b in &f.backends {
                check_backend(b.backend.as_ref().unwrap(), "opaque backend");
            }
        }
    }
}

/// Panics, saying why, unless the stock proxy would take the policy and
/// weft's additions point at rules and backends that exist.
pub(crate) fn assert_stock_accepts(policy: &OutboundPolicy) {
    meta(&policy.metadata, "the policy");
    let Some(metadata::Kind::Resource(r)) = policy.metadata.as_ref().and_then(|m| m.kind.as_ref()) else {
        panic!("the policy's metadata names the Service")
    };
    assert_eq!((r.group.as_str(), r.kind.as_str()), ("core", "Service"));
    let mut rule_counts: Vec<usize> = vec![];
    match policy.protocol.as_ref().and_then(|p| p.kind.as_ref()).expect("a protocol") {
        proxy_protocol::Kind::Detect(d) => {
            assert!(d.timeout.is_some(), "Detect needs a timeout");
            check_opaque(d.opaque.as_ref().expect("Detect needs opaque"));
            let h1 = d.http1.as_ref().expect("Detect needs http1");
            let h2 = d.http2.as_ref().expect("Detect needs http2");
            assert_eq!(h1.routes, h2.routes, "the HTTP/1 and HTTP/2 lists are one list");
            assert_eq!(h1.failure_accrual, h2.failure_accrual);
            for (i, route) in h1.routes.iter().enumerate() {
                meta(&route.metadata, &format!("route {i}"));
                for (j, rule) in route.rules.iter().enumerate() {
                    check_http_rule(rule, &format!("route {i} rule {j}"));
                }
                rule_counts.push(route.rules.len());
            }
        }
        proxy_protocol::Kind::Grpc(g) => {
            for (i, route) in g.routes.iter().enumerate() {
                meta(&route.metadata, &format!("route {i}"));
                for (j, rule) in route.rules.iter().enumerate() {
                    check_grpc_rule(rule, &format!("route {i} rule {j}"));
                }
                rule_counts.push(route.rules.len());
            }
        }
        proxy_protocol::Kind::Opaque(o) => check_opaque(o),
        other => panic!("weft serves no {other:?}"),
    }
    for ext in policy.weft.iter().flat_map(|w| &w.rules) {
        let rules = rule_counts.get(ext.route as usize).unwrap_or_else(|| panic!("no route {}", ext.route));
        assert!((ext.rule as usize) < *rules, "route {} has no rule {}", ext.route, ext.rule);
        for m in &ext.mirrors {
            check_backend(m.backend.as_ref().expect("a mirror backend"), "mirror");
            check_ratio(&m.ratio, "mirror");
        }
        if let Some(d) = &ext.delay {
            check_ratio(&d.ratio, "delay");
            assert!(d.duration.is_some());
        }
    }
}
