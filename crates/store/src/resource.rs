//! The resources weft understands, in the form `kubectl apply` takes, and
//! their parsing from YAML with errors that say where and what.

use k8s_openapi::api::{
    core::v1::{Endpoints, Namespace, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A workload outside Kubernetes (Linkerd's mesh expansion): a VM or a
/// process on a host, with its addresses, ports and identity.
#[derive(Clone, Debug, PartialEq, Eq, CustomResource, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "workload.linkerd.io",
    version = "v1beta1",
    kind = "ExternalWorkload",
    namespaced,
    derive = "PartialEq"
)]
pub struct ExternalWorkloadSpec {
    #[serde(rename = "meshTLS")]
    pub mesh_tls: MeshTls,
    pub ports: Option<Vec<WorkloadPort>>,
    #[serde(rename = "workloadIPs")]
    pub workload_ips: Option<Vec<WorkloadIp>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct MeshTls {
    /// The identity peers verify in the mTLS handshake.
    pub identity: String,
    /// The DNS-like name the workload answers to (SNI).
    #[serde(rename = "serverName")]
    pub server_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct WorkloadPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct WorkloadIp {
    pub ip: String,
}

/// One resource of any kind weft knows.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Namespace(Namespace),
    Service(Box<Service>),
    Endpoints(Endpoints),
    EndpointSlice(EndpointSlice),
    Pod(Box<Pod>),
    ServiceAccount(ServiceAccount),
    ExternalWorkload(ExternalWorkload),
    /// Policy, route and profile kinds (contract 5): indexed as they are,
    /// acted on by the issues that need them.
    Other(Generic),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generic {
    pub kind: Kind,
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: serde_json::Value,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Service,
    Endpoints,
    EndpointSlice,
    Pod,
    ServiceAccount,
    ExternalWorkload,
    Server,
    ServerAuthorization,
    AuthorizationPolicy,
    MeshTlsAuthentication,
    NetworkAuthentication,
    PolicyHttpRoute,
    ServiceProfile,
    GatewayHttpRoute,
    GatewayGrpcRoute,
    TrafficSplit,
}

/// Where a resource lives: its kind, namespace (none for cluster-scoped
/// kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("line {line}: not valid YAML: {reason}")]
    Yaml { line: usize, reason: String },
    #[error("line {line}: {what}: {reason}")]
    Invalid { line: usize, what: String, reason: String },
}

// === impl Kind ===

impl Kind {
    /// The kind for an `apiVersion` and `kind`, if weft knows it.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Some(match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Service") => Kind::Service,
            ("", "Endpoints") => Kind::Endpoints,
            ("", "Pod") => Kind::Pod,
            ("", "ServiceAccount") => Kind::ServiceAccount,
            ("discovery.k8s.io", "EndpointSlice") => Kind::EndpointSlice,
            ("workload.linkerd.io", "ExternalWorkload") => Kind::ExternalWorkload,
            ("policy.linkerd.io", "Server") => Kind::Server,
            ("policy.linkerd.io", "ServerAuthorization") => Kind::ServerAuthorization,
            ("policy.linkerd.io", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            ("policy.linkerd.io", "MeshTLSAuthentication") => Kind::MeshTlsAuthentication,
            ("policy.linkerd.io", "NetworkAuthentication") => Kind::NetworkAuthentication,
            ("policy.linkerd.io", "HTTPRoute") => Kind::PolicyHttpRoute,
            ("linkerd.io", "ServiceProfile") => Kind::ServiceProfile,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::GatewayHttpRoute,
            ("gateway.networking.k8s.io", "GRPCRoute") => Kind::GatewayGrpcRoute,
            ("split.smi-spec.io", "TrafficSplit") => Kind::TrafficSplit,
            _ => return None,
        })
    }

    pub fn is_namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.namespace.as_str() {
            "" => write!(f, "{} {}", self.kind, self.name),
            ns => write!(f, "{} {ns}/{}", self.kind, self.name),
        }
    }
}

// === impl Resource ===

impl Resource {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(r) => &r.metadata,
            Resource::Service(r) => &r.metadata,
            Resource::Endpoints(r) => &r.metadata,
            Resource::EndpointSlice(r) => &r.metadata,
            Resource::Pod(r) => &r.metadata,
            Resource::ServiceAccount(r) => &r.metadata,
            Resource::ExternalWorkload(r) => &r.metadata,
            Resource::Other(r) => &r.metadata,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Service(_) => Kind::Service,
            Resource::Endpoints(_) => Kind::Endpoints,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
            Resource::Pod(_) => Kind::Pod,
            Resource::ServiceAccount(_) => Kind::ServiceAccount,
            Resource::ExternalWorkload(_) => Kind::ExternalWorkload,
            Resource::Other(r) => r.kind,
        }
    }

    pub fn key(&self) -> Key {
        let meta = self.metadata();
        Key {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// Parses every document of a YAML text (`---`-separated, as `kubectl
    /// apply -f` takes it). All or nothing: one bad document fails the text,
    /// so the caller keeps the last good version of the whole file.
    pub fn parse_all(text: &str) -> Result<Vec<Resource>, ParseError> {
        let mut resources = Vec::new();
        for (line, doc) in documents(text) {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).map_err(|e| ParseError::Yaml {
                line: line + e.location().map_or(0, |l| l.line().saturating_sub(1)),
                reason: e.to_string(),
            })?;
            if value.is_null() {
                continue; // an empty document
            }
            let resource = Self::from_value(value).map_err(|(what, reason)| ParseError::Invalid {
                line,
                what,
                reason,
            })?;
            resources.push(resource);
        }
        Ok(resources)
    }

    /// Turns one document into a resource, checking what weft relies on.
    /// The error says which resource (as far as known) and why.
    fn from_value(value: serde_yaml::Value) -> Result<Resource, (String, String)> {
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let api_version =
            field("apiVersion").ok_or(("a document".to_string(), "apiVersion is missing".to_string()))?;
        let kind_name = field("kind").ok_or(("a document".to_string(), "kind is missing".to_string()))?;
        let name = value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str());
        let what = format!("{kind_name} {}", name.unwrap_or("(no name)"));
        let kind = Kind::of(&api_version, &kind_name)
            .ok_or_else(|| (what.clone(), format!("weft does not know kind {kind_name} in {api_version}")))?;
        if name.is_none_or(str::is_empty) {
            return Err((what, "metadata.name is missing".into()));
        }
        let typed = |e: serde_yaml::Error| (what.clone(), e.to_string());
        let mut resource = match kind {
            Kind::Namespace => Resource::Namespace(serde_yaml::from_value(value).map_err(typed)?),
            Kind::Service => Resource::Service(serde_yaml::from_value(value).map_err(typed)?),
            Kind::Endpoints => Resource::Endpoints(serde_yaml::from_value(value).map_err(typed)?),
            Kind::EndpointSlice => Resource::EndpointSlice(serde_yaml::from_value(value).map_err(typed)?),
            Kind::Pod => Resource::Pod(serde_yaml::from_value(value).map_err(typed)?),
            Kind::ServiceAccount => Resource::ServiceAccount(serde_yaml::from_value(value).map_err(typed)?),
            Kind::ExternalWorkload => {
                Resource::ExternalWorkload(serde_yaml::from_value(value).map_err(typed)?)
            }
            kind => {
                let metadata = value.get("metadata").cloned().unwrap_or_default();
                let spec = value.get("spec").cloned().unwrap_or_default();
                let spec: serde_json::Value = serde_yaml::from_value(spec).map_err(typed)?;
                if !spec.is_object() {
                    return Err((what, "spec must be a mapping".into()));
                }
                Resource::Other(Generic {
                    kind,
                    api_version,
                    metadata: serde_yaml::from_value(metadata).map_err(typed)?,
                    spec,
                })
            }
        };
        resource.validate().map_err(|reason| (what, reason))?;
        if kind.is_namespaced() {
            resource.metadata_mut().namespace.get_or_insert_with(|| "default".into());
        }
        Ok(resource)
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::Namespace(r) => &mut r.metadata,
            Resource::Service(r) => &mut r.metadata,
            Resource::Endpoints(r) => &mut r.metadata,
            Resource::EndpointSlice(r) => &mut r.metadata,
            Resource::Pod(r) => &mut r.metadata,
            Resource::ServiceAccount(r) => &mut r.metadata,
            Resource::ExternalWorkload(r) => &mut r.metadata,
            Resource::Other(r) => &mut r.metadata,
        }
    }

    /// What the types alone do not check.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Resource::Service(svc) => {
                for port in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                    if !(1..=65535).contains(&port.port) {
                        return Err(format!("port {} is not between 1 and 65535", port.port));
                    }
                }
                // Retry, timeout and failure-accrual annotations apply to
                // every route of the service.
                crate::traffic::annotations::validate(svc.metadata.annotations.as_ref(), false)
            }
            Resource::ExternalWorkload(ew) => {
                for ip in ew.spec.workload_ips.iter().flatten() {
                    ip.ip
                        .parse::<std::net::IpAddr>()
                        .map_err(|_| format!("workloadIPs: {:?} is not an IP address", ip.ip))?;
                }
                if ew.spec.mesh_tls.identity.is_empty() || ew.spec.mesh_tls.server_name.is_empty() {
                    return Err("meshTLS needs both identity and serverName".into());
                }
                Ok(())
            }
            Resource::Pod(pod) => {
                for ip in pod.status.iter().filter_map(|s| s.pod_ip.as_ref()) {
                    ip.parse::<std::net::IpAddr>()
                        .map_err(|_| format!("status.podIP: {ip:?} is not an IP address"))?;
                }
                Ok(())
            }
            _ => crate::policy::validate(self),
        }
    }
}

/// Splits a YAML text into its documents, each with the (1-based) line it
/// starts on.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs.into_iter().filter(|(_, d)| !d.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests;
