//! A service port's endpoints, computed from what the index holds:
//! EndpointSlices or Endpoints where given, else the Pods and
//! ExternalWorkloads the Service's selector picks.

use crate::{Index, Kind, Resource, index::Objects};
use k8s_openapi::{
    api::core::v1::{Pod, Service, ServicePort as K8sServicePort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

/// A service port, as proxies ask for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, Default)]
pub struct EndpointSet {
    /// Whether the service exists at all (proxies fail fast when not).
    pub exists: bool,
    pub endpoints: BTreeMap<SocketAddr, Endpoint>,
    /// When the index published this set (for the update-latency metric;
    /// not part of what the set is).
    pub changed_at: Option<std::time::Instant>,
}

impl PartialEq for EndpointSet {
    fn eq(&self, other: &Self) -> bool {
        self.exists == other.exists && self.endpoints == other.endpoints
    }
}

impl Eq for EndpointSet {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Metric labels for this endpoint (`pod`, `serviceaccount`, ...).
    pub labels: BTreeMap<String, String>,
    /// Set where the endpoint is meshed: the identity its proxy presents.
    pub identity: Option<TlsId>,
    /// The endpoint's proxy takes HTTP/2 (so HTTP/1 may be upgraded to it).
    pub http2: bool,
    /// Where an opaque port's traffic goes on the endpoint's proxy.
    pub opaque_transport_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsId {
    Dns(String),
    Uri { uri: String, server_name: String },
}

/// The port a meshed workload's proxy accepts connections on.
pub const PROXY_INBOUND_PORT: u16 = 4143;
pub const DEFAULT_WEIGHT: u32 = 10_000;

const CONTROL_PLANE_NS_LABEL: &str = "linkerd.io/control-plane-ns";
const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(crate) fn compute(index: &Index, objects: &Objects, sp: &ServicePort) -> EndpointSet {
    let Some(svc) = objects.service(&sp.namespace, &sp.name) else {
        return EndpointSet::default();
    };
    let mut set = EndpointSet { exists: true, ..EndpointSet::default() };
    let Some(port) =
        svc.spec.iter().flat_map(|s| s.ports.iter().flatten()).find(|p| p.port == sp.port as i32)
    else {
        return set;
    };
    let opaque = opaque_ports(svc.metadata.annotations.as_ref());

    let slices: Vec<_> = objects
        .in_namespace(Kind::EndpointSlice, &sp.namespace)
        .filter_map(|r| match r {
            Resource::EndpointSlice(s) => Some(s),
            _ => None,
        })
        .filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&sp.name))
        .collect();
    if !slices.is_empty() {
        for slice in slices {
            let Some(target_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name == port.name || slice.ports.as_ref().is_some_and(|ps| ps.len() == 1))
                .and_then(|p| p.port)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                let pod = ep.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| {
                    objects.pod(r.namespace.as_deref().unwrap_or(&sp.namespace), r.name.as_deref()?)
                });
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let addr = SocketAddr::new(ip, target_port as u16);
                    set.endpoints.insert(addr, index.pod_endpoint(addr, pod, &opaque));
                }
            }
        }
        return set;
    }

    if let Some(Resource::Endpoints(eps)) = objects.get(Kind::Endpoints, &sp.namespace, &sp.name) {
        for subset in eps.subsets.iter().flatten() {
            let ports = subset.ports.iter().flatten();
            let Some(target_port) = ports
                .clone()
                .find(|p| p.name == port.name || subset.ports.as_ref().is_some_and(|ps| ps.len() == 1))
                .map(|p| p.port)
            else {
                continue;
            };
            for address in subset.addresses.iter().flatten() {
                let Ok(ip) = address.ip.parse::<IpAddr>() else { continue };
                let pod =
                    address.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| {
                        objects.pod(r.namespace.as_deref().unwrap_or(&sp.namespace), r.name.as_deref()?)
                    });
                let addr = SocketAddr::new(ip, target_port as u16);
                set.endpoints.insert(addr, index.pod_endpoint(addr, pod, &opaque));
            }
        }
        return set;
    }

    // No endpoints given: the selector picks Pods and ExternalWorkloads.
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else {
        return set;
    };
    for resource in objects.selected(Kind::Pod, &sp.namespace, selector) {
        let Resource::Pod(pod) = resource else { continue };
        if !pod_is_running(pod) {
            continue;
        }
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok())
        else {
            continue;
        };
        let Some(target) = target_port(port, |name| pod_port(pod, name)) else { continue };
        let addr = SocketAddr::new(ip, target);
        set.endpoints.insert(addr, index.pod_endpoint(addr, Some(pod), &opaque));
    }
    for resource in objects.selected(Kind::ExternalWorkload, &sp.namespace, selector) {
        let Resource::ExternalWorkload(ew) = resource else { continue };
        let named = |name: &str| {
            ew.spec.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name)).map(|p| p.port)
        };
        let Some(target) = target_port(port, named) else { continue };
        for ip in ew.spec.workload_ips.iter().flatten().filter_map(|w| w.ip.parse::<IpAddr>().ok()) {
            let addr = SocketAddr::new(ip, target);
            let mut labels = BTreeMap::new();
            labels.insert("external_workload".into(), ew.metadata.name.clone().unwrap_or_default());
            let tls = &ew.spec.mesh_tls;
            let identity = if tls.identity.starts_with("spiffe://") {
                TlsId::Uri { uri: tls.identity.clone(), server_name: tls.server_name.clone() }
            } else {
                TlsId::Dns(tls.identity.clone())
            };
            let opaque_transport_port = opaque.contains(&target).then_some(PROXY_INBOUND_PORT);
            set.endpoints.insert(
                addr,
                Endpoint {
                    addr,
                    weight: DEFAULT_WEIGHT,
                    labels,
                    identity: Some(identity),
                    http2: true,
                    opaque_transport_port,
                },
            );
        }
    }
    set
}

impl Index {
    fn pod_endpoint(&self, addr: SocketAddr, pod: Option<&Pod>, service_opaque: &[u16]) -> Endpoint {
        let mut endpoint = Endpoint {
            addr,
            weight: DEFAULT_WEIGHT,
            labels: BTreeMap::new(),
            identity: None,
            http2: false,
            opaque_transport_port: None,
        };
        let Some(pod) = pod else { return endpoint };
        let meta = &pod.metadata;
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        endpoint.labels.insert("pod".into(), meta.name.clone().unwrap_or_default());
        endpoint.labels.insert("serviceaccount".into(), sa.clone());
        if let Some(cp_ns) = meta.labels.as_ref().and_then(|l| l.get(CONTROL_PLANE_NS_LABEL)) {
            let ns = meta.namespace.as_deref().unwrap_or("default");
            let trust_domain = &self.config().trust_domain;
            endpoint.identity =
                Some(TlsId::Dns(format!("{sa}.{ns}.serviceaccount.identity.{cp_ns}.{trust_domain}")));
            endpoint.http2 = true;
            let pod_opaque = opaque_ports(meta.annotations.as_ref());
            if pod_opaque.contains(&addr.port()) || service_opaque.contains(&addr.port()) {
                endpoint.opaque_transport_port = Some(PROXY_INBOUND_PORT);
            }
        }
        endpoint
    }
}

/// Whether an Endpoints or EndpointSlice names this pod in a targetRef.
pub(crate) fn refers_to_pod(resource: &Resource, pod: &str) -> bool {
    let is_pod = |r: &k8s_openapi::api::core::v1::ObjectReference| {
        r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(pod)
    };
    match resource {
        Resource::EndpointSlice(s) => s.endpoints.iter().any(|e| e.target_ref.as_ref().is_some_and(is_pod)),
        Resource::Endpoints(e) => e
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .any(|a| a.target_ref.as_ref().is_some_and(is_pod)),
        _ => false,
    }
}

fn pod_is_running(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn pod_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port as u16)
}

/// The port on the workload: `targetPort` as a number, or a name looked
/// up on the workload, or (unset) the service port itself.
fn target_port(port: &K8sServicePort, named: impl Fn(&str) -> Option<u16>) -> Option<u16> {
    match &port.target_port {
        None => Some(port.port as u16),
        Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
        Some(IntOrString::String(name)) => match name.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => named(name),
        },
    }
}

/// `config.linkerd.io/opaque-ports`: ports and ranges, comma-separated.
pub fn opaque_ports(annotations: Option<&BTreeMap<String, String>>) -> Vec<u16> {
    let Some(value) = annotations.and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION)) else { return vec![] };
    let mut ports = Vec::new();
    for item in value.split(',').map(str::trim) {
        match item.split_once('-') {
            Some((lo, hi)) => {
                if let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                    ports.extend(lo..=hi.min(lo.saturating_add(1000)));
                }
            }
            None => ports.extend(item.parse::<u16>().ok()),
        }
    }
    ports
}

/// The services a proxy may name: `name.ns.svc.<cluster domain>` (with or
/// without the trailing dot, or without the cluster domain), or a
/// service's cluster IP.
pub(crate) fn resolve(objects: &Objects, cluster_domain: &str, host: &str, port: u16) -> Option<ServicePort> {
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        let ip = ip.to_string();
        return objects.services().find_map(|svc: &Service| {
            let spec = svc.spec.as_ref()?;
            let matches = spec.cluster_ip.as_deref() == Some(&ip)
                || spec.cluster_ips.iter().flatten().any(|c| *c == ip);
            matches.then(|| ServicePort {
                namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                name: svc.metadata.name.clone().unwrap_or_default(),
                port,
            })
        });
    }
    let host = host.trim_end_matches('.');
    let mut parts = host.splitn(4, '.');
    let (name, namespace, svc) = (parts.next()?, parts.next()?, parts.next()?);
    if svc != "svc" || parts.next().is_some_and(|domain| domain != cluster_domain) {
        return None;
    }
    objects.service(namespace, name)?;
    Some(ServicePort { namespace: namespace.into(), name: name.into(), port })
}
