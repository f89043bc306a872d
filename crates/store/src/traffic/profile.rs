//! ServiceProfile (`linkerd.io/v1alpha2`) and SMI TrafficSplit
//! (`split.smi-spec.io`), typed, with their checks.

use super::{parse_duration, quantity_milli};
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceProfileSpec {
    pub routes: Vec<ProfileRoute>,
    pub retry_budget: Option<BudgetSpec>,
    pub dst_overrides: Vec<OverrideSpec>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ProfileRoute {
    pub name: String,
    pub condition: Option<RequestSpec>,
    pub response_classes: Vec<ClassSpec>,
    pub is_retryable: bool,
    pub timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestSpec {
    pub method: Option<String>,
    pub path_regex: Option<String>,
    pub all: Vec<RequestSpec>,
    pub any: Vec<RequestSpec>,
    pub not: Option<Box<RequestSpec>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ClassSpec {
    pub condition: Option<ResponseSpec>,
    pub is_failure: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ResponseSpec {
    pub status: Option<StatusSpec>,
    pub all: Vec<ResponseSpec>,
    pub any: Vec<ResponseSpec>,
    pub not: Option<Box<ResponseSpec>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatusSpec {
    pub min: u32,
    pub max: u32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct BudgetSpec {
    pub retry_ratio: f32,
    pub min_retries_per_second: u32,
    pub ttl: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct OverrideSpec {
    pub authority: String,
    pub weight: serde_json::Value,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TrafficSplitSpec {
    /// The apex service clients address.
    pub service: String,
    pub backends: Vec<SplitBackend>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SplitBackend {
    pub service: String,
    pub weight: serde_json::Value,
}

// === impl ServiceProfileSpec ===

impl ServiceProfileSpec {
    pub fn validate(&self) -> Result<(), String> {
        for (i, r) in self.routes.iter().enumerate() {
            let at = |e: String| format!("routes[{i}] ({:?}).{e}", r.name);
            if let Some(c) = &r.condition {
                c.validate().map_err(|e| at(format!("condition{e}")))?;
                let n = c.matches(0).map_err(|e| at(format!("condition: {e}")))?;
                if n > MAX_MATCHES {
                    return Err(at(format!(
                        "condition: its all/any combinations make {n} matches; at most {MAX_MATCHES}"
                    )));
                }
            }
            for (j, class) in r.response_classes.iter().enumerate() {
                if let Some(c) = &class.condition {
                    c.validate().map_err(|e| at(format!("responseClasses[{j}].condition{e}")))?;
                }
            }
            if let Some(t) = &r.timeout {
                parse_duration(t).map_err(|e| at(format!("timeout: {e}")))?;
            }
        }
        if let Some(b) = &self.retry_budget {
            if !(b.retry_ratio.is_finite() && (0.0..=1000.0).contains(&b.retry_ratio)) {
                return Err(format!(
                    "retryBudget.retryRatio: {} is not a ratio between 0 and 1000",
                    b.retry_ratio
                ));
            }
            parse_duration(&b.ttl).map_err(|e| format!("retryBudget.ttl: {e}"))?;
        }
        for (i, o) in self.dst_overrides.iter().enumerate() {
            split_authority(&o.authority).map_err(|e| format!("dstOverrides[{i}].authority: {e}"))?;
            quantity_milli(&o.weight).map_err(|e| format!("dstOverrides[{i}].weight: {e}"))?;
        }
        Ok(())
    }
}

impl ResponseSpec {
    fn validate(&self) -> Result<(), String> {
        self.validate_at(0)
    }

    fn validate_at(&self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(": all/any/not nest deeper than {MAX_DEPTH}"));
        }
        if let Some(st) = &self.status {
            let (min, max) = (if st.min == 0 { 100 } else { st.min }, if st.max == 0 { 599 } else { st.max });
            if !(100..=599).contains(&min) || !(100..=599).contains(&max) || min > max {
                return Err(format!(
                    ".status: {{min: {}, max: {}}} is not a range of HTTP statuses (100 to 599)",
                    st.min, st.max
                ));
            }
        }
        for (i, c) in self.all.iter().enumerate() {
            c.validate_at(depth + 1).map_err(|e| format!(".all[{i}]{e}"))?;
        }
        for (i, c) in self.any.iter().enumerate() {
            c.validate_at(depth + 1).map_err(|e| format!(".any[{i}]{e}"))?;
        }
        if let Some(n) = &self.not {
            n.validate_at(depth + 1).map_err(|e| format!(".not{e}"))?;
        }
        Ok(())
    }
}

/// The most route matches one profile condition may expand to.
const MAX_MATCHES: u64 = 64;
/// The deepest nesting of `all`/`any`/`not` in a condition.
const MAX_DEPTH: usize = 8;

impl RequestSpec {
    /// How many route matches this condition becomes (`all` multiplies,
    /// `any` adds), saturating; too deep a condition is an error.
    fn matches(&self, depth: usize) -> Result<u64, String> {
        if depth > MAX_DEPTH {
            return Err(format!("all/any/not nest deeper than {MAX_DEPTH}"));
        }
        let mut n: u64 = 1;
        for c in &self.all {
            n = n.saturating_mul(c.matches(depth + 1)?);
        }
        if !self.any.is_empty() {
            let mut alternatives: u64 = 0;
            for c in &self.any {
                alternatives = alternatives.saturating_add(c.matches(depth + 1)?);
            }
            n = n.saturating_mul(alternatives);
        }
        if let Some(c) = &self.not {
            c.matches(depth + 1)?;
        }
        Ok(n)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(m) = &self.method {
            super::http_method(m).map_err(|e| format!(".method: {e}"))?;
        }
        if let Some(r) = &self.path_regex {
            regex_lite::Regex::new(r)
                .map_err(|e| format!(".pathRegex: {r:?} is not a regular expression: {e}"))?;
        }
        for (i, c) in self.all.iter().enumerate() {
            c.validate().map_err(|e| format!(".all[{i}]{e}"))?;
        }
        for (i, c) in self.any.iter().enumerate() {
            c.validate().map_err(|e| format!(".any[{i}]{e}"))?;
        }
        if let Some(n) = &self.not {
            n.validate().map_err(|e| format!(".not{e}"))?;
        }
        Ok(())
    }
}

/// A `dstOverrides` authority as (service, namespace if named, port if
/// named): `web`, `web.shop`, `web.shop.svc.cluster.local:8080`.
pub fn split_authority(authority: &str) -> Result<(String, Option<String>, Option<u16>), String> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{authority:?}: bad port"))?),
        ),
        None => (authority, None),
    };
    let mut labels = host.trim_end_matches('.').split('.');
    let name =
        labels.next().filter(|n| !n.is_empty()).ok_or_else(|| format!("{authority:?} names no service"))?;
    super::dns_label(name).map_err(|e| format!("{authority:?}: {e}"))?;
    let namespace = labels.next().map(str::to_string);
    if let Some(ns) = &namespace {
        super::dns_label(ns).map_err(|e| format!("{authority:?}: {e}"))?;
    }
    match labels.next() {
        None | Some("svc") => Ok((name.to_string(), namespace, port)),
        Some(_) => Err(format!("{authority:?} is not a service name such as web.shop.svc.cluster.local:80")),
    }
}

// === impl TrafficSplitSpec ===

impl TrafficSplitSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.service.is_empty() {
            return Err("service: the apex service is required".into());
        }
        super::dns_label(&self.service).map_err(|e| format!("service: {e}"))?;
        if self.backends.is_empty() {
            return Err("backends: at least one backend is required".into());
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.service.is_empty() {
                return Err(format!("backends[{i}].service: required"));
            }
            super::dns_label(&b.service).map_err(|e| format!("backends[{i}].service: {e}"))?;
            quantity_milli(&b.weight).map_err(|e| format!("backends[{i}].weight: {e}"))?;
        }
        Ok(())
    }
}
