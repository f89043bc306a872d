//! Linkerd's traffic annotations (`retry.linkerd.io/*`, `timeout.linkerd.io/*`,
//! `balancer.linkerd.io/failure-accrual*`) and weft's fault injection
//! (`fault.weft.io/*`), typed. Each parser names the annotation and the value
//! it could not use.

use super::{parse_duration, parse_percent};
use std::{collections::BTreeMap, time::Duration};

pub type Annotations = BTreeMap<String, String>;

pub const RETRY_HTTP: &str = "retry.linkerd.io/http";
pub const RETRY_GRPC: &str = "retry.linkerd.io/grpc";
pub const RETRY_LIMIT: &str = "retry.linkerd.io/limit";
pub const RETRY_TIMEOUT: &str = "retry.linkerd.io/timeout";
pub const TIMEOUT_REQUEST: &str = "timeout.linkerd.io/request";
pub const TIMEOUT_RESPONSE: &str = "timeout.linkerd.io/response";
pub const TIMEOUT_IDLE: &str = "timeout.linkerd.io/idle";
pub const ACCRUAL: &str = "balancer.linkerd.io/failure-accrual";
pub const ACCRUAL_MAX_FAILURES: &str = "balancer.linkerd.io/failure-accrual-consecutive-max-failures";
pub const ACCRUAL_MIN_PENALTY: &str = "balancer.linkerd.io/failure-accrual-consecutive-min-penalty";
pub const ACCRUAL_MAX_PENALTY: &str = "balancer.linkerd.io/failure-accrual-consecutive-max-penalty";
pub const ACCRUAL_JITTER: &str = "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio";
pub const FAULT_ABORT_PERCENT: &str = "fault.weft.io/abort-percent";
pub const FAULT_ABORT_STATUS: &str = "fault.weft.io/abort-status";
pub const FAULT_ABORT_GRPC_STATUS: &str = "fault.weft.io/abort-grpc-status";
pub const FAULT_DELAY_PERCENT: &str = "fault.weft.io/delay-percent";
pub const FAULT_DELAY: &str = "fault.weft.io/delay";

/// Retry settings; each field is one annotation, unset when it is absent.
/// Retries happen only where conditions are named (Linkerd's semantics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Retry {
    /// HTTP statuses to retry, as inclusive ranges.
    pub http: Option<Vec<(u16, u16)>>,
    pub grpc: Option<GrpcConditions>,
    pub limit: Option<u32>,
    /// Per attempt.
    pub timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcConditions {
    pub cancelled: bool,
    pub deadline_exceeded: bool,
    pub internal: bool,
    pub resource_exhausted: bool,
    pub unavailable: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub response: Option<Duration>,
    pub idle: Option<Duration>,
}

/// Consecutive-failures circuit breaking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailureAccrual {
    pub max_failures: u32,
    pub min_penalty: Duration,
    pub max_penalty: Duration,
    pub jitter_ratio: f32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fault {
    pub abort: Option<Abort>,
    pub delay: Option<Delay>,
}

/// Answer a share of requests with an error instead of sending them on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Abort {
    /// 0 to 100, decimals allowed.
    pub percent: f64,
    pub http_status: u16,
    pub grpc_status: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delay {
    pub percent: f64,
    pub duration: Duration,
}

const GRPC_CODES: &[(&str, u32)] = &[
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

fn get<'a>(a: Option<&'a Annotations>, key: &str) -> Option<&'a str> {
    a.and_then(|a| a.get(key)).map(|v| v.trim())
}

fn bad(key: &str, value: &str, why: impl std::fmt::Display) -> String {
    format!("metadata.annotations[{key}]: {value:?}: {why}")
}

fn duration(a: Option<&Annotations>, key: &str) -> Result<Option<Duration>, String> {
    get(a, key).map(|v| parse_duration(v).map_err(|e| bad(key, v, e))).transpose()
}

// === impl Retry ===

impl Retry {
    pub fn parse(a: Option<&Annotations>) -> Result<Self, String> {
        let http =
            get(a, RETRY_HTTP).map(|v| status_ranges(v).map_err(|e| bad(RETRY_HTTP, v, e))).transpose()?;
        let grpc =
            get(a, RETRY_GRPC).map(|v| grpc_conditions(v).map_err(|e| bad(RETRY_GRPC, v, e))).transpose()?;
        let limit = get(a, RETRY_LIMIT)
            .map(|v| {
                v.parse::<u16>()
                    .map(u32::from)
                    .map_err(|_| bad(RETRY_LIMIT, v, "not a whole number up to 65535"))
            })
            .transpose()?;
        Ok(Self { http, grpc, limit, timeout: duration(a, RETRY_TIMEOUT)? })
    }

    /// These settings where set, `base`'s elsewhere: a route's annotation
    /// replaces the Service's of the same name.
    pub fn or(self, base: &Retry) -> Retry {
        Retry {
            http: self.http.or_else(|| base.http.clone()),
            grpc: self.grpc.or(base.grpc),
            limit: self.limit.or(base.limit),
            timeout: self.timeout.or(base.timeout),
        }
    }
}

/// `5xx`, `500,502-504`, `gateway-error` (502 to 504).
pub fn status_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let status = |v: &str| match v.trim().parse::<u16>() {
        Ok(n) if (100..=599).contains(&n) => Ok(n),
        _ => Err(format!("{:?} is not an HTTP status between 100 and 599", v.trim())),
    };
    s.split(',')
        .map(str::trim)
        .map(|part| match part {
            "gateway-error" => Ok((502, 504)),
            p if p.len() == 3 && p.ends_with("xx") => {
                let hundreds = status(&format!("{}00", &p[..1]))?;
                Ok((hundreds, hundreds + 99))
            }
            p => match p.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (status(lo)?, status(hi)?);
                    if lo > hi {
                        return Err(format!("range {p:?} ends before it starts"));
                    }
                    Ok((lo, hi))
                }
                None => status(p).map(|n| (n, n)),
            },
        })
        .collect()
}

fn grpc_conditions(s: &str) -> Result<GrpcConditions, String> {
    let mut c = GrpcConditions::default();
    for name in s.split(',').map(str::trim) {
        match name {
            "cancelled" => c.cancelled = true,
            "deadline-exceeded" => c.deadline_exceeded = true,
            "internal" => c.internal = true,
            "resource-exhausted" => c.resource_exhausted = true,
            "unavailable" => c.unavailable = true,
            other => {
                return Err(format!(
                    "{other:?} is not one of cancelled, deadline-exceeded, internal, resource-exhausted, unavailable"
                ));
            }
        }
    }
    Ok(c)
}

// === impl Timeouts ===

impl Timeouts {
    pub fn parse(a: Option<&Annotations>) -> Result<Self, String> {
        Ok(Self {
            request: duration(a, TIMEOUT_REQUEST)?,
            response: duration(a, TIMEOUT_RESPONSE)?,
            idle: duration(a, TIMEOUT_IDLE)?,
        })
    }

    /// These timeouts where set, `base`'s elsewhere.
    pub fn or(self, base: &Timeouts) -> Timeouts {
        Timeouts {
            request: self.request.or(base.request),
            response: self.response.or(base.response),
            idle: self.idle.or(base.idle),
        }
    }
}

// === impl FailureAccrual ===

impl FailureAccrual {
    /// Unset unless `balancer.linkerd.io/failure-accrual: consecutive`.
    pub fn parse(a: Option<&Annotations>) -> Result<Option<Self>, String> {
        match get(a, ACCRUAL) {
            None => return Ok(None),
            Some("consecutive") => {}
            Some(other) => return Err(bad(ACCRUAL, other, "the only kind is \"consecutive\"")),
        }
        let max_failures = match get(a, ACCRUAL_MAX_FAILURES) {
            None => 7,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(ACCRUAL_MAX_FAILURES, v, "not a whole number above 0")),
            },
        };
        let min_penalty = duration(a, ACCRUAL_MIN_PENALTY)?.unwrap_or(Duration::from_secs(1));
        let max_penalty = duration(a, ACCRUAL_MAX_PENALTY)?.unwrap_or(Duration::from_secs(60));
        if min_penalty > max_penalty {
            return Err(format!(
                "metadata.annotations[{ACCRUAL_MIN_PENALTY}]: {min_penalty:?} is above the max penalty {max_penalty:?}"
            ));
        }
        if max_penalty.is_zero() {
            return Err(bad(ACCRUAL_MAX_PENALTY, "0", "the max penalty must be above 0"));
        }
        let jitter_ratio = match get(a, ACCRUAL_JITTER) {
            None => 0.5,
            Some(v) => match v.parse::<f32>() {
                Ok(j) if (0.0..=100.0).contains(&j) => j,
                _ => return Err(bad(ACCRUAL_JITTER, v, "not a number between 0 and 100")),
            },
        };
        Ok(Some(Self { max_failures, min_penalty, max_penalty, jitter_ratio }))
    }
}

// === impl Fault ===

impl Fault {
    pub fn parse(a: Option<&Annotations>) -> Result<Self, String> {
        let percent =
            |key: &str| get(a, key).map(|v| parse_percent(v).map_err(|e| bad(key, v, e))).transpose();
        let abort = match percent(FAULT_ABORT_PERCENT)? {
            None => None,
            Some(percent) => {
                let http_status = match get(a, FAULT_ABORT_STATUS) {
                    None => 503,
                    Some(v) => match v.parse::<u16>() {
                        Ok(s) if (100..=599).contains(&s) => s,
                        _ => {
                            return Err(bad(FAULT_ABORT_STATUS, v, "not an HTTP status between 100 and 599"));
                        }
                    },
                };
                let grpc_status = match get(a, FAULT_ABORT_GRPC_STATUS) {
                    None => 14,
                    Some(v) => grpc_code(v).ok_or_else(|| {
                        bad(
                            FAULT_ABORT_GRPC_STATUS,
                            v,
                            "not a gRPC status code (1 to 16, or a name such as UNAVAILABLE)",
                        )
                    })?,
                };
                Some(Abort { percent, http_status, grpc_status })
            }
        };
        let delay = match (percent(FAULT_DELAY_PERCENT)?, duration(a, FAULT_DELAY)?) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(format!(
                    "metadata.annotations[{FAULT_DELAY}] is required with {FAULT_DELAY_PERCENT}"
                ));
            }
            (percent, Some(duration)) => Some(Delay { percent: percent.unwrap_or(100.0), duration }),
        };
        for (key, needs) in
            [(FAULT_ABORT_STATUS, FAULT_ABORT_PERCENT), (FAULT_ABORT_GRPC_STATUS, FAULT_ABORT_PERCENT)]
        {
            if get(a, key).is_some() && abort.is_none() {
                return Err(format!("metadata.annotations[{key}] needs {needs}"));
            }
        }
        Ok(Self { abort, delay })
    }
}

/// A gRPC status by number or by name (`UNAVAILABLE`, `unavailable`,
/// `deadline-exceeded`); OK is no failure.
fn grpc_code(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=16).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase().replace('-', "_");
    GRPC_CODES.iter().find(|(n, code)| *n == name && *code != 0).map(|(_, code)| *code)
}

/// Checks every traffic annotation a resource carries; `route` says whether
/// the route-only ones (fault injection) apply.
pub fn validate(a: Option<&Annotations>, route: bool) -> Result<(), String> {
    Retry::parse(a)?;
    Timeouts::parse(a)?;
    FailureAccrual::parse(a)?;
    if route {
        Fault::parse(a)?;
    }
    Ok(())
}
