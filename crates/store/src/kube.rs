//! The Kubernetes source (`--store kubernetes`): kube-rs watchers over the
//! same kinds the directory source reads, feeding the same index. Each
//! object is a source of its own, so an update replaces exactly that
//! object; a relist (the watch restarted) removes what was not listed.
//!
//! What turns watch events into index changes ([`KindWatch`]) is separate
//! from the watchers, so it is tested without an API server.

use crate::{Index, Kind, Resource, SharedIndex, resource::Generic};
use futures_util::StreamExt;
use k8s_openapi::api::{
    core::v1::{Endpoints, Namespace, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt, watcher},
};
use std::{collections::HashSet, sync::Mutex};

/// The custom kinds, at the versions weft reads: (kind, group, version,
/// plural).
const CUSTOM: &[(Kind, &str, &str, &str, &str)] = &[
    (Kind::Server, "policy.linkerd.io", "v1beta3", "Server", "servers"),
    (
        Kind::ServerAuthorization,
        "policy.linkerd.io",
        "v1beta1",
        "ServerAuthorization",
        "serverauthorizations",
    ),
    (
        Kind::AuthorizationPolicy,
        "policy.linkerd.io",
        "v1alpha1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        Kind::MeshTlsAuthentication,
        "policy.linkerd.io",
        "v1alpha1",
        "MeshTLSAuthentication",
        "meshtlsauthentications",
    ),
    (
        Kind::NetworkAuthentication,
        "policy.linkerd.io",
        "v1alpha1",
        "NetworkAuthentication",
        "networkauthentications",
    ),
    (Kind::PolicyHttpRoute, "policy.linkerd.io", "v1beta3", "HTTPRoute", "httproutes"),
    (Kind::ServiceProfile, "linkerd.io", "v1alpha2", "ServiceProfile", "serviceprofiles"),
    (Kind::GatewayHttpRoute, "gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    (Kind::GatewayGrpcRoute, "gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    (Kind::TrafficSplit, "split.smi-spec.io", "v1alpha2", "TrafficSplit", "trafficsplits"),
];

/// Watches every kind until the task is dropped, the watchers with it.
/// Watch errors (an API server away, a CRD not installed) are logged and
/// retried with backoff; the index keeps what it has.
pub async fn run(client: Client, index: SharedIndex) {
    // A JoinSet: dropping `run` aborts every watcher with it.
    let mut watches = tokio::task::JoinSet::new();
    for watch in [
        Box::pin(watch_typed(
            Api::<Namespace>::all(client.clone()),
            index.clone(),
            Kind::Namespace,
            Resource::Namespace,
        )),
        Box::pin(watch_typed(Api::<Service>::all(client.clone()), index.clone(), Kind::Service, |s| {
            Resource::Service(Box::new(s))
        })),
        Box::pin(watch_typed(
            Api::<Endpoints>::all(client.clone()),
            index.clone(),
            Kind::Endpoints,
            Resource::Endpoints,
        )),
        Box::pin(watch_typed(
            Api::<EndpointSlice>::all(client.clone()),
            index.clone(),
            Kind::EndpointSlice,
            Resource::EndpointSlice,
        )),
        Box::pin(watch_typed(Api::<Pod>::all(client.clone()), index.clone(), Kind::Pod, |p| {
            Resource::Pod(Box::new(p))
        })),
        Box::pin(watch_typed(
            Api::<ServiceAccount>::all(client.clone()),
            index.clone(),
            Kind::ServiceAccount,
            Resource::ServiceAccount,
        )),
        Box::pin(watch_typed(
            Api::<crate::resource::ExternalWorkload>::all(client.clone()),
            index.clone(),
            Kind::ExternalWorkload,
            Resource::ExternalWorkload,
        )),
    ] as [std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>; 7]
    {
        watches.spawn(watch);
    }
    for &(kind, group, version, name, plural) in CUSTOM {
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, name), plural);
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let api_version = format!("{group}/{version}");
        watches.spawn(watch_typed(api, index.clone(), kind, move |obj: DynamicObject| {
            Resource::Other(Generic {
                kind,
                api_version: api_version.clone(),
                spec: obj.data.get("spec").cloned().unwrap_or_else(|| serde_json::json!({})),
                metadata: obj.metadata,
            })
        }));
    }
    while let Some(ended) = watches.join_next().await {
        if let Err(error) = ended {
            if error.is_panic() {
                tracing::error!(%error, "a Kubernetes watcher panicked; that kind no longer updates");
            }
        }
    }
}

async fn watch_typed<K>(api: Api<K>, index: SharedIndex, kind: Kind, convert: impl Fn(K) -> Resource)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut state = KindWatch::new(kind);
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                let event = match event {
                    watcher::Event::Apply(k) => watcher::Event::Apply(convert(k)),
                    watcher::Event::InitApply(k) => watcher::Event::InitApply(convert(k)),
                    watcher::Event::Delete(k) => watcher::Event::Delete(convert(k)),
                    watcher::Event::Init => watcher::Event::Init,
                    watcher::Event::InitDone => watcher::Event::InitDone,
                };
                state.apply(&index, event);
            }
            Err(error) => {
                tracing::warn!(%kind, %error, "watch failed; retrying, the index keeps what it has")
            }
        }
    }
}

/// One kind's watch state: which objects the index holds from it.
pub struct KindWatch {
    kind: Kind,
    known: HashSet<String>,
    /// The objects listed since the watch restarted, until `InitDone`.
    relisted: Option<HashSet<String>>,
}

impl KindWatch {
    pub fn new(kind: Kind) -> Self {
        Self { kind, known: HashSet::new(), relisted: None }
    }

    pub fn apply(&mut self, index: &Mutex<Index>, event: watcher::Event<Resource>) {
        let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(resource) | watcher::Event::InitApply(resource) => {
                let source = source(&resource);
                if let Some(relisted) = self.relisted.as_mut() {
                    relisted.insert(source.clone());
                }
                if let Err(reason) = resource.validate() {
                    // The API server took it, weft cannot use it: keep the
                    // last good version.
                    tracing::error!(key = %resource.key(), %reason, "rejected; its last good version stays in effect");
                    index.record_rejection();
                    return;
                }
                index.replace_source(&source, vec![resource]);
                self.known.insert(source);
            }
            watcher::Event::Delete(resource) => {
                let source = source(&resource);
                index.remove_source(&source);
                self.known.remove(&source);
            }
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let relisted = self.relisted.take().unwrap_or_default();
                for gone in self.known.difference(&relisted) {
                    tracing::debug!(kind = %self.kind, source = %gone, "not relisted; removing");
                    index.remove_source(gone);
                }
                self.known.retain(|s| relisted.contains(s));
            }
        }
    }
}

fn source(resource: &Resource) -> String {
    format!("kubernetes:{}", resource.key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, ServicePort};

    fn parse(text: &str) -> Resource {
        Resource::parse_all(text).unwrap().remove(0)
    }

    fn pod(name: &str, ip: &str) -> Resource {
        parse(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ app: web }} }}\nstatus: {{ podIP: {ip} }}\n"
        ))
    }

    #[test]
    fn watch_events_become_index_changes() {
        let index = Mutex::new(Index::new(Config::default()));
        let svc = parse(
            "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\nspec:\n  selector: { app: web }\n  ports: [{ port: 80 }]\n",
        );
        KindWatch::new(Kind::Service).apply(&index, watcher::Event::Apply(svc));
        let rx = index.lock().unwrap().watch_endpoints(ServicePort {
            namespace: "shop".into(),
            name: "web".into(),
            port: 80,
        });
        let addrs = || rx.borrow().endpoints.keys().map(|a| a.to_string()).collect::<Vec<_>>();

        let mut pods = KindWatch::new(Kind::Pod);
        pods.apply(&index, watcher::Event::Apply(pod("a", "10.0.0.1")));
        pods.apply(&index, watcher::Event::Apply(pod("b", "10.0.0.2")));
        assert_eq!(addrs(), ["10.0.0.1:80", "10.0.0.2:80"]);

        // An update replaces the object; a delete removes it.
        pods.apply(&index, watcher::Event::Apply(pod("a", "10.0.0.3")));
        pods.apply(&index, watcher::Event::Delete(pod("b", "10.0.0.2")));
        assert_eq!(addrs(), ["10.0.0.3:80"]);

        // The watch restarts: what is not relisted was deleted meanwhile.
        pods.apply(&index, watcher::Event::Init);
        pods.apply(&index, watcher::Event::InitApply(pod("c", "10.0.0.4")));
        assert_eq!(addrs(), ["10.0.0.3:80", "10.0.0.4:80"], "nothing is removed before the relist is done");
        pods.apply(&index, watcher::Event::InitDone);
        assert_eq!(addrs(), ["10.0.0.4:80"]);
    }

    #[test]
    fn an_invalid_update_keeps_the_last_good_version() {
        let index = Mutex::new(Index::new(Config::default()));
        let mut pods = KindWatch::new(Kind::Pod);
        pods.apply(&index, watcher::Event::Apply(pod("a", "10.0.0.1")));
        let Resource::Pod(mut bad) = pod("a", "10.0.0.1") else { unreachable!() };
        bad.status.as_mut().unwrap().pod_ip = Some("not-an-ip".into());
        pods.apply(&index, watcher::Event::Apply(Resource::Pod(bad)));
        let key = crate::Key { kind: Kind::Pod, namespace: "shop".into(), name: "a".into() };
        let Some(Resource::Pod(kept)) = index.lock().unwrap().get(&key).cloned() else {
            panic!("the pod is gone")
        };
        assert_eq!(kept.status.unwrap().pod_ip.as_deref(), Some("10.0.0.1"));
    }
}
