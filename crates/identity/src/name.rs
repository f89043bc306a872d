//! Workload identity names (DESIGN.md contract 4):
//! `<serviceaccount>.<namespace>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`.

/// The parts of every identity name that the mesh fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub control_plane_ns: String,
    pub trust_domain: String,
}

impl Default for Names {
    fn default() -> Self {
        Self { control_plane_ns: "weft".into(), trust_domain: "cluster.local".into() }
    }
}

impl Names {
    /// The identity of the workloads running as `sa` in `ns`.
    pub fn workload(&self, ns: &str, sa: &str) -> String {
        format!("{sa}.{ns}.serviceaccount.identity.{}.{}", self.control_plane_ns, self.trust_domain)
    }

    /// The namespace and service account an identity names, if it is a
    /// workload identity of this mesh.
    pub fn parse<'a>(&self, name: &'a str) -> Option<(&'a str, &'a str)> {
        let suffix = format!(".serviceaccount.identity.{}.{}", self.control_plane_ns, self.trust_domain);
        let (sa, ns) = name.strip_suffix(suffix.as_str())?.split_once('.')?;
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        (label(sa) && label(ns)).then_some((ns, sa))
    }

    /// The identity the controller's Identity API presents
    /// (`LINKERD2_PROXY_IDENTITY_SVC_NAME`).
    pub fn identity_service(&self) -> String {
        self.workload(&self.control_plane_ns, &format!("{}-identity", self.control_plane_ns))
    }

    /// The identity that may tap proxies (`LINKERD2_PROXY_TAP_SVC_NAME`).
    pub fn tap_service(&self) -> String {
        self.workload(&self.control_plane_ns, &format!("{}-tap", self.control_plane_ns))
    }

    /// The identity the controller's Destination and policy APIs present
    /// (`LINKERD2_PROXY_DESTINATION_SVC_NAME`, `..._POLICY_SVC_NAME`).
    pub fn destination_service(&self) -> String {
        self.workload(&self.control_plane_ns, &format!("{}-destination", self.control_plane_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let names = Names::default();
        let web = names.workload("shop", "web");
        assert_eq!(web, "web.shop.serviceaccount.identity.weft.cluster.local");
        assert_eq!(names.parse(&web), Some(("shop", "web")));
        assert_eq!(names.parse("web.shop.serviceaccount.identity.linkerd.cluster.local"), None);
        assert_eq!(names.parse("a.b.shop.serviceaccount.identity.weft.cluster.local"), None);
        assert_eq!(names.parse(".shop.serviceaccount.identity.weft.cluster.local"), None);
        assert_eq!(names.identity_service(), "weft-identity.weft.serviceaccount.identity.weft.cluster.local");
    }
}
