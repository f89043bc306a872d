//! Linkerd's authorization resources (`policy.linkerd.io`), typed: Server,
//! ServerAuthorization, AuthorizationPolicy, MeshTLSAuthentication and
//! NetworkAuthentication, with the checks that make a bad one a clear
//! rejection instead of a broken port policy; and the entry to the traffic
//! kinds' checks (`crate::traffic`).

use crate::{Kind, Resource, traffic};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A label selector (`matchLabels` and `matchExpressions`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Expression>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Expression {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

/// A port by number or by the name a container gives it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    pub pod_selector: Option<Selector>,
    pub external_workload_selector: Option<Selector>,
    pub port: PortRef,
    #[serde(default)]
    pub proxy_protocol: Option<String>,
    /// What happens to traffic no authorization admits (v1beta3): `deny`
    /// (the default), `audit`, or a default policy's name.
    #[serde(default)]
    pub access_policy: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetRef {
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub required_authentication_refs: Vec<TargetRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshTlsAuthenticationSpec {
    pub identities: Vec<String>,
    pub identity_refs: Vec<TargetRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct NetworkSpec {
    pub cidr: String,
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<NetworkSpec>,
}

/// The older, server-bound form of authorization (`v1beta1`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerAuthorizationSpec {
    pub server: ServerRef,
    pub client: ClientSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerRef {
    pub name: Option<String>,
    pub selector: Option<Selector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientSpec {
    pub networks: Vec<NetworkSpec>,
    pub unauthenticated: bool,
    #[serde(rename = "meshTLS")]
    pub mesh_tls: Option<MeshTlsClients>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshTlsClients {
    #[serde(rename = "unauthenticatedTLS")]
    pub unauthenticated_tls: bool,
    pub identities: Vec<String>,
    pub service_accounts: Vec<ServiceAccountRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServiceAccountRef {
    pub name: String,
    pub namespace: Option<String>,
}

/// The default policies a port without a Server gets (Linkerd's names).
pub const DEFAULT_POLICIES: &[&str] = &[
    "all-unauthenticated",
    "all-authenticated",
    "cluster-unauthenticated",
    "cluster-authenticated",
    "deny",
    "audit",
];

/// The annotation that picks a workload's or namespace's default policy.
pub const DEFAULT_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";

// === impl Selector ===

impl Selector {
    /// Whether `labels` satisfy the selector. An empty selector selects
    /// everything, as in Kubernetes.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k));
        self.match_labels.iter().all(|(k, v)| get(k) == Some(v))
            && self.match_expressions.iter().all(|e| match e.operator.as_str() {
                "In" => get(&e.key).is_some_and(|v| e.values.contains(v)),
                "NotIn" => get(&e.key).is_none_or(|v| !e.values.contains(v)),
                "Exists" => get(&e.key).is_some(),
                "DoesNotExist" => get(&e.key).is_none(),
                _ => false,
            })
    }

    fn validate(&self) -> Result<(), String> {
        for e in &self.match_expressions {
            match e.operator.as_str() {
                "In" | "NotIn" if e.values.is_empty() => {
                    return Err(format!("matchExpressions {}: {} needs values", e.key, e.operator));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => return Err(format!("matchExpressions {}: unknown operator {other:?}", e.key)),
            }
        }
        Ok(())
    }
}

// === impl NetworkSpec ===

impl NetworkSpec {
    /// The network and its exceptions, parsed. A bare address is a /32
    /// (or /128).
    pub fn parse(&self) -> Result<(IpNet, Vec<IpNet>), String> {
        let net = parse_net(&self.cidr)?;
        let except = self.except.iter().map(|e| parse_net(e)).collect::<Result<Vec<_>, _>>()?;
        Ok((net, except))
    }
}

pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR (such as 10.0.0.0/8) or an IP address"))
}

// === validation ===

fn spec<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("spec: {e}"))
}

/// What the serde types alone do not check, for the policy kinds.
pub(crate) fn validate(resource: &Resource) -> Result<(), String> {
    let Resource::Other(r) = resource else { return Ok(()) };
    match r.kind {
        Kind::Server => {
            let s: ServerSpec = spec(&r.spec)?;
            match (&s.pod_selector, &s.external_workload_selector) {
                (Some(_), Some(_)) => {
                    return Err("podSelector and externalWorkloadSelector cannot both be set".into());
                }
                (None, None) => {
                    return Err("one of podSelector or externalWorkloadSelector is required".into());
                }
                (Some(sel), None) | (None, Some(sel)) => sel.validate()?,
            }
            if let PortRef::Number(0) = s.port {
                return Err("port 0 is not a port".into());
            }
            if let Some(p) = s.proxy_protocol.as_deref() {
                if !["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"].contains(&p) {
                    return Err(format!(
                        "proxyProtocol {p:?} is not one of unknown, HTTP/1, HTTP/2, gRPC, opaque, TLS"
                    ));
                }
            }
            if let Some(a) = s.access_policy.as_deref() {
                if !DEFAULT_POLICIES.contains(&a) {
                    return Err(format!("accessPolicy {a:?} is not one of {}", DEFAULT_POLICIES.join(", ")));
                }
            }
            Ok(())
        }
        Kind::AuthorizationPolicy => {
            let s: AuthorizationPolicySpec = spec(&r.spec)?;
            let t = &s.target_ref;
            let ok = match t.kind.as_str() {
                "Namespace" => matches!(t.group.as_deref(), None | Some("") | Some("core")),
                "Server" => t.group.as_deref() == Some("policy.linkerd.io"),
                "HTTPRoute" => {
                    matches!(
                        t.group.as_deref(),
                        Some("policy.linkerd.io") | Some("gateway.networking.k8s.io")
                    )
                }
                "GRPCRoute" => t.group.as_deref() == Some("gateway.networking.k8s.io"),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "targetRef {}/{} is not a Namespace, a policy.linkerd.io Server, an HTTPRoute or a GRPCRoute",
                    t.group.as_deref().unwrap_or(""),
                    t.kind
                ));
            }
            if s.required_authentication_refs.is_empty() {
                return Err("requiredAuthenticationRefs is empty: it would authorize no one".into());
            }
            for a in &s.required_authentication_refs {
                match a.kind.as_str() {
                    "MeshTLSAuthentication" | "NetworkAuthentication" | "ServiceAccount" => {}
                    other => {
                        return Err(format!(
                            "requiredAuthenticationRefs: kind {other:?} is not MeshTLSAuthentication, NetworkAuthentication or ServiceAccount"
                        ));
                    }
                }
            }
            Ok(())
        }
        Kind::MeshTlsAuthentication => {
            let s: MeshTlsAuthenticationSpec = spec(&r.spec)?;
            if s.identities.is_empty() && s.identity_refs.is_empty() {
                return Err("one of identities or identityRefs is required".into());
            }
            for i in &s.identities {
                if i != "*" && (i.is_empty() || i[1..].contains('*') || i.contains(' ')) {
                    return Err(format!("identity {i:?}: only a leading '*' wildcard is allowed"));
                }
            }
            for r in &s.identity_refs {
                if !["ServiceAccount", "Namespace"].contains(&r.kind.as_str()) {
                    return Err(format!(
                        "identityRefs: kind {:?} is not ServiceAccount or Namespace",
                        r.kind
                    ));
                }
            }
            Ok(())
        }
        Kind::NetworkAuthentication => {
            let s: NetworkAuthenticationSpec = spec(&r.spec)?;
            if s.networks.is_empty() {
                return Err("networks is empty".into());
            }
            for n in &s.networks {
                n.parse().map_err(|e| format!("networks: {e}"))?;
            }
            Ok(())
        }
        Kind::ServerAuthorization => {
            let s: ServerAuthorizationSpec = spec(&r.spec)?;
            if s.server.name.is_none() && s.server.selector.is_none() {
                return Err("server needs a name or a selector".into());
            }
            for n in &s.client.networks {
                n.parse().map_err(|e| format!("client.networks: {e}"))?;
            }
            if !s.client.unauthenticated && s.client.mesh_tls.is_none() {
                return Err("client needs unauthenticated: true or meshTLS".into());
            }
            Ok(())
        }
        Kind::PolicyHttpRoute | Kind::GatewayHttpRoute | Kind::GatewayGrpcRoute => {
            let s = traffic::RouteSpec::from_value(&r.spec).map_err(|e| e.to_string())?;
            traffic::validate_route(&s, r.kind == Kind::GatewayGrpcRoute)?;
            traffic::annotations::validate(r.metadata.annotations.as_ref(), true)
        }
        Kind::ServiceProfile => spec::<traffic::ServiceProfileSpec>(&r.spec)?.validate(),
        Kind::TrafficSplit => spec::<traffic::TrafficSplitSpec>(&r.spec)?.validate(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::Resource;

    fn reason(yaml: &str) -> String {
        match Resource::parse_all(yaml) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_policy_resources_are_rejected_with_the_reason() {
        let net = "apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {name: n, namespace: shop}\nspec:\n  networks: [{cidr: 10.0.0.0/33}]\n";
        assert!(reason(net).contains("\"10.0.0.0/33\" is not a CIDR"), "{}", reason(net));
        let ok = net.replace("/33", "/8");
        assert_eq!(reason(&ok), "accepted");

        let target = "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  targetRef: {group: apps, kind: Deployment, name: web}\n  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: m}]\n";
        assert!(reason(target).contains("is not a Namespace"), "{}", reason(target));
        let route = "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: policy.linkerd.io, kind: Server, name: web}]\n";
        // No rules is the Gateway API's one catch-all rule.
        assert_eq!(reason(route), "accepted");
        let server = "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: s, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  port: http\n  proxyProtocol: HTTP/3\n";
        assert!(reason(server).contains("proxyProtocol \"HTTP/3\""), "{}", reason(server));
        let server = server.replace("  proxyProtocol: HTTP/3\n", "  accessPolicy: audit\n");
        assert_eq!(reason(&server), "accepted");
        let wildcard = "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {name: m, namespace: shop}\nspec:\n  identities: [\"web.*.serviceaccount\"]\n";
        assert!(reason(wildcard).contains("leading '*'"), "{}", reason(wildcard));
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel: super::Selector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert!(sel.matches(Some(&labels(&[("app", "web"), ("tier", "edge")]))));
        assert!(!sel.matches(Some(&labels(&[("app", "web"), ("tier", "back")]))));
        assert!(!sel.matches(Some(&labels(&[("app", "web"), ("tier", "edge"), ("canary", "1")]))));
        assert!(super::Selector::default().matches(None));
    }
}
