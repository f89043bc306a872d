//! What `weft check` says and the dashboard's Health page shows
//! (`/api/check`): the store, the identity issuer, and the proxies, as the
//! controller sees them.

use super::ProxyInfo;
use serde::Serialize;

/// One check's outcome (the shape `weft check -o json` prints).
#[derive(Serialize, Debug, Clone)]
pub struct CheckResult {
    pub check: String,
    pub ok: bool,
    /// A warning does not fail the run.
    pub warning: bool,
    pub hint: Option<String>,
}

impl CheckResult {
    pub fn pass(check: impl Into<String>) -> Self {
        Self { check: check.into(), ok: true, warning: false, hint: None }
    }

    pub fn fail(check: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { check: check.into(), ok: false, warning: false, hint: Some(hint.into()) }
    }

    fn warn(check: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { warning: true, ..Self::fail(check, hint) }
    }
}

/// The checks, from the controller's own metrics (`metrics`, as its
/// `/metrics` serves them), the proxies it scrapes, and the time (`now`,
/// Unix seconds).
pub fn checks(metrics: &str, proxies: &[ProxyInfo], now: u64) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let gauge = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    match gauge("weft_controller_index_rejected") {
        Some(n) if n > 0.0 => out.push(CheckResult::fail(
            "the store has no rejected resources",
            format!("{n} resources (or files) were refused: the controller's log says which and why"),
        )),
        _ => out.push(CheckResult::pass("the store has no rejected resources")),
    }
    let now = now as f64;
    match gauge("weft_controller_identity_issuer_expiration_timestamp_seconds") {
        Some(t) if t > 0.0 => {
            let days = (t - now) / 86_400.0;
            if days < 30.0 {
                out.push(CheckResult::fail(
                    "the identity issuer is not near expiry",
                    format!(
                        "it expires in {days:.1} days: `weft identity rotate-issuer DIR` makes a new one"
                    ),
                ));
            } else {
                out.push(CheckResult::pass(format!("the identity issuer is valid for {days:.0} more days")));
            }
        }
        _ => out.push(CheckResult::warn(
            "identity is on",
            "the controller has no CA: start it with --identity-dir (see `weft identity init`)",
        )),
    }
    if proxies.is_empty() {
        out.push(CheckResult::fail(
            "the controller sees meshed proxies",
            "no meshed pod yet (label linkerd.io/control-plane-ns, with a podIP), or the first scrape is still coming",
        ));
        return out;
    }
    out.push(CheckResult::pass(format!("the controller sees {} proxies", proxies.len())));
    let name = |p: &ProxyInfo| format!("{}/{}", p.namespace, p.pod);
    let not_ready: Vec<String> = proxies
        .iter()
        .filter(|p| !p.ready)
        .map(|p| format!("{} ({})", name(p), p.error.as_deref().unwrap_or("not ready")))
        .collect();
    if not_ready.is_empty() {
        out.push(CheckResult::pass("every proxy is ready"));
    } else {
        out.push(CheckResult::fail("every proxy is ready", format!("not ready: {}", not_ready.join(", "))));
    }
    let stale: Vec<String> =
        proxies.iter().filter(|p| p.certificate_expires.is_none_or(|t| t as f64 <= now)).map(name).collect();
    if stale.is_empty() {
        out.push(CheckResult::pass("every proxy has a current certificate"));
    } else {
        out.push(CheckResult::fail(
            "every proxy has a current certificate",
            format!("no current certificate: {} (their logs say why certification fails)", stale.join(", ")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(pod: &str, ready: bool, expires: Option<u64>) -> ProxyInfo {
        ProxyInfo {
            namespace: "demo".into(),
            pod: pod.into(),
            workload: pod.into(),
            admin: "127.0.0.1:4191".into(),
            ready,
            certificate_expires: expires,
            error: None,
        }
    }

    #[test]
    fn a_healthy_mesh_passes() {
        let now = 1_000_000;
        let metrics = format!(
            "weft_controller_index_rejected 0\nweft_controller_identity_issuer_expiration_timestamp_seconds {}\n",
            now + 365 * 86_400
        );
        let results = checks(&metrics, &[proxy("web-0", true, Some(now + 3600))], now);
        assert!(results.iter().all(|c| c.ok), "{results:?}");
        assert!(results.iter().any(|c| c.check == "the identity issuer is valid for 365 more days"));
    }

    #[test]
    fn each_failure_has_a_hint() {
        let now = 1_000_000;
        let metrics = format!(
            "weft_controller_index_rejected 2\nweft_controller_identity_issuer_expiration_timestamp_seconds {}\n",
            now + 86_400
        );
        let results =
            checks(&metrics, &[proxy("web-0", false, None), proxy("emoji-0", true, Some(now - 1))], now);
        let failed: Vec<_> = results.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 4, "{results:?}");
        assert!(failed.iter().all(|c| c.hint.is_some() && !c.warning));
        assert!(failed[2].hint.as_deref().unwrap().contains("demo/web-0"));
        assert!(failed[3].hint.as_deref().unwrap().contains("demo/emoji-0"));
        // No CA: a warning, not a failure.
        let results = checks("", &[proxy("web-0", true, Some(now + 1))], now);
        assert!(results.iter().any(|c| c.warning && !c.ok), "{results:?}");
    }
}
