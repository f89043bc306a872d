//! The index: every resource from every source, and the values derived
//! from them (a service port's endpoints) published on watch channels.
//!
//! A source is anything that defines resources as a unit: a file of the
//! directory source, or one object of the Kubernetes source. Replacing a
//! source is atomic, so a file never half-applies.

use crate::{
    Key, Kind, Resource,
    endpoints::{self, EndpointSet, ServicePort},
};
use k8s_openapi::api::core::v1::{Pod, Service};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Instant,
};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster's DNS domain: services are `name.ns.svc.<domain>`.
    pub cluster_domain: String,
    /// Identities are `<sa>.<ns>.serviceaccount.identity.<cp-ns>.<domain>`.
    pub trust_domain: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { cluster_domain: "cluster.local".into(), trust_domain: "cluster.local".into() }
    }
}

pub struct Index {
    config: Config,
    objects: Objects,
    /// Each source's resources, and when it was last written: where two
    /// sources define one key, the latest wins.
    sources: HashMap<String, (u64, BTreeMap<Key, Resource>)>,
    key_sources: HashMap<Key, BTreeSet<String>>,
    seq: u64,
    endpoint_watches: HashMap<ServicePort, watch::Sender<Arc<EndpointSet>>>,
    /// Bumped on every change, for what is derived from more than
    /// endpoints (outbound policies with their routes).
    changes: watch::Sender<u64>,
    /// Resources (or files) a source could not use: malformed or invalid.
    rejected: u64,
}

/// The resources in effect, by kind, then namespace and name; and the
/// workloads (Pods, ExternalWorkloads) by label, so a selector finds its
/// workloads without scanning the namespace.
#[derive(Default)]
pub struct Objects {
    by_kind: HashMap<Kind, BTreeMap<(String, String), Resource>>,
    labels: HashMap<LabelKey, BTreeSet<String>>,
}

/// (kind, namespace, label name, label value)
type LabelKey = (Kind, String, String, String);

// === impl Index ===

impl Index {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            objects: Objects::default(),
            sources: HashMap::new(),
            key_sources: HashMap::new(),
            seq: 0,
            endpoint_watches: HashMap::new(),
            changes: watch::channel(0).0,
            rejected: 0,
        }
    }

    /// A source could not use a resource (or a file of them).
    pub fn record_rejection(&mut self) {
        self.rejected += 1;
    }

    /// How many times a source could not use what it was given.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets everything `source` defines, replacing what it defined before.
    pub fn replace_source(&mut self, source: &str, resources: Vec<Resource>) {
        self.seq += 1;
        let resources: BTreeMap<Key, Resource> = resources.into_iter().map(|r| (r.key(), r)).collect();
        let mut touched: BTreeSet<Key> = resources.keys().cloned().collect();
        for key in &touched {
            let sources = self.key_sources.entry(key.clone()).or_default();
            sources.insert(source.to_string());
            if sources.len() > 1 {
                let others: Vec<&str> = sources.iter().map(String::as_str).filter(|s| *s != source).collect();
                tracing::warn!(%key, ?others, winner = source, "defined in more than one place; the latest wins");
            }
        }
        if let Some((_, old)) = self.sources.insert(source.to_string(), (self.seq, resources)) {
            for key in old.into_keys().filter(|k| !touched.contains(k)).collect::<Vec<_>>() {
                if let Some(sources) = self.key_sources.get_mut(&key) {
                    sources.remove(source);
                }
                touched.insert(key);
            }
        }
        self.settle(touched);
    }

    /// Forgets everything `source` defined (its file was deleted).
    pub fn remove_source(&mut self, source: &str) {
        let Some((_, old)) = self.sources.remove(source) else { return };
        let touched: BTreeSet<Key> = old.into_keys().collect();
        for key in &touched {
            if let Some(sources) = self.key_sources.get_mut(key) {
                sources.remove(source);
            }
        }
        self.settle(touched);
    }

    /// Puts the winning definition of each touched key in effect, then
    /// republishes what depends on the namespaces they are in.
    fn settle(&mut self, touched: BTreeSet<Key>) {
        let mut affected = Affected::default();
        for key in touched {
            if let Some(old) = self.objects.get(key.kind, &key.namespace, &key.name) {
                affected.add(&self.objects, old);
            }
            let winner = self.key_sources.get(&key).and_then(|sources| {
                sources
                    .iter()
                    .filter_map(|s| self.sources.get(s))
                    .max_by_key(|(seq, _)| *seq)
                    .and_then(|(_, rs)| rs.get(&key))
            });
            if self.key_sources.get(&key).is_some_and(BTreeSet::is_empty) {
                self.key_sources.remove(&key);
            }
            if let Some(new) = winner {
                affected.add(&self.objects, new);
            }
            match winner {
                Some(r) => self.objects.insert(&key, r.clone()),
                None => self.objects.remove(&key),
            }
        }
        self.publish(&affected);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Ticks on every change of the index.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The resources of a kind in a namespace.
    pub fn in_namespace<'a>(
        &'a self,
        kind: Kind,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        self.objects.in_namespace(kind, namespace)
    }

    /// Every resource of a kind, by namespace and name.
    pub fn all(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.objects.by_kind.get(&kind).into_iter().flat_map(|m| m.values())
    }

    /// Recomputes the watched service ports a change can have affected.
    fn publish(&mut self, affected: &Affected) {
        self.endpoint_watches.retain(|_, tx| tx.receiver_count() > 0);
        let watched: Vec<ServicePort> =
            self.endpoint_watches.keys().filter(|sp| affected.reaches(&self.objects, sp)).cloned().collect();
        let now = Instant::now();
        for sp in watched {
            let mut set = endpoints::compute(self, &self.objects, &sp);
            set.changed_at = Some(now);
            self.endpoint_watches[&sp].send_if_modified(|current| {
                if **current == set {
                    return false;
                }
                *current = Arc::new(set);
                true
            });
        }
    }

    /// The endpoints of a service port, now and as they change.
    pub fn watch_endpoints(&mut self, sp: ServicePort) -> watch::Receiver<Arc<EndpointSet>> {
        if let Some(tx) = self.endpoint_watches.get(&sp) {
            return tx.subscribe();
        }
        let set = endpoints::compute(self, &self.objects, &sp);
        let (tx, rx) = watch::channel(Arc::new(set));
        self.endpoint_watches.insert(sp, tx);
        rx
    }

    /// The service a proxy names by `host` (FQDN or cluster IP) and port.
    pub fn resolve(&self, host: &str, port: u16) -> Option<ServicePort> {
        endpoints::resolve(&self.objects, &self.config.cluster_domain, host, port)
    }

    pub fn get(&self, key: &Key) -> Option<&Resource> {
        self.objects.get(key.kind, &key.namespace, &key.name)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.objects.service(namespace, name)
    }

    /// How many resources of each kind are in effect.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        self.objects.by_kind.iter().map(|(k, m)| (*k, m.len())).collect()
    }

    pub fn watch_count(&self) -> usize {
        self.endpoint_watches.values().map(|tx| tx.receiver_count()).sum()
    }
}

/// What a change can affect: named services, and services whose selector
/// picks (or picked) a workload with these labels.
#[derive(Default)]
struct Affected {
    services: BTreeSet<(String, String)>,
    workloads: Vec<(String, BTreeMap<String, String>)>,
}

impl Affected {
    fn add(&mut self, objects: &Objects, resource: &Resource) {
        let meta = resource.metadata();
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        match resource {
            Resource::Service(_) | Resource::Endpoints(_) => {
                self.services.insert((ns, name));
            }
            Resource::EndpointSlice(slice) => {
                if let Some(svc) =
                    slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"))
                {
                    self.services.insert((ns, svc.clone()));
                }
            }
            Resource::Pod(_) | Resource::ExternalWorkload(_) => {
                // Endpoints and slices name pods for their identities.
                for r in objects
                    .in_namespace(Kind::EndpointSlice, &ns)
                    .chain(objects.in_namespace(Kind::Endpoints, &ns))
                {
                    if endpoints::refers_to_pod(r, &name) {
                        let svc = match r {
                            Resource::EndpointSlice(s) => s
                                .metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get("kubernetes.io/service-name"))
                                .cloned(),
                            other => other.metadata().name.clone(),
                        };
                        self.services.extend(svc.map(|svc| (ns.clone(), svc)));
                    }
                }
                self.workloads.push((ns, meta.labels.clone().unwrap_or_default()));
            }
            _ => {}
        }
    }

    fn reaches(&self, objects: &Objects, sp: &ServicePort) -> bool {
        if self.services.contains(&(sp.namespace.clone(), sp.name.clone())) {
            return true;
        }
        let Some(selector) =
            objects.service(&sp.namespace, &sp.name).and_then(|s| s.spec.as_ref()?.selector.as_ref())
        else {
            return false;
        };
        self.workloads.iter().any(|(ns, labels)| {
            *ns == sp.namespace
                && !selector.is_empty()
                && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    }
}

// === impl Objects ===

impl Objects {
    fn insert(&mut self, key: &Key, resource: Resource) {
        self.remove(key);
        if matches!(key.kind, Kind::Pod | Kind::ExternalWorkload) {
            for (k, v) in resource.metadata().labels.iter().flatten() {
                let label = (key.kind, key.namespace.clone(), k.clone(), v.clone());
                self.labels.entry(label).or_default().insert(key.name.clone());
            }
        }
        self.by_kind.entry(key.kind).or_default().insert((key.namespace.clone(), key.name.clone()), resource);
    }

    fn remove(&mut self, key: &Key) {
        let slot = (key.namespace.clone(), key.name.clone());
        let Some(old) = self.by_kind.get_mut(&key.kind).and_then(|m| m.remove(&slot)) else { return };
        for (k, v) in old.metadata().labels.iter().flatten() {
            let label = (key.kind, key.namespace.clone(), k.clone(), v.clone());
            if let Some(names) = self.labels.get_mut(&label) {
                names.remove(&key.name);
                if names.is_empty() {
                    self.labels.remove(&label);
                }
            }
        }
    }

    /// The workloads of `kind` in `namespace` that carry every label of a
    /// (non-empty) selector.
    pub fn selected<'a>(
        &'a self,
        kind: Kind,
        namespace: &str,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        // Start from the selector's rarest label.
        let smallest = selector
            .iter()
            .map(|(k, v)| self.labels.get(&(kind, namespace.to_string(), k.clone(), v.clone())))
            .min_by_key(|names| names.map_or(0, |n| n.len()))
            .flatten();
        let namespace = namespace.to_string();
        smallest.into_iter().flatten().filter_map(move |name| {
            let r = self.get(kind, &namespace, name)?;
            let labels = r.metadata().labels.as_ref();
            selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)).then_some(r)
        })
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Resource> {
        self.by_kind.get(&kind)?.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn in_namespace<'a>(
        &'a self,
        kind: Kind,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        let lo = (namespace.to_string(), String::new());
        let ns = namespace.to_string();
        self.by_kind
            .get(&kind)
            .into_iter()
            .flat_map(move |m| m.range(lo.clone()..))
            .take_while(move |((n, _), _)| *n == ns)
            .map(|(_, r)| r)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        match self.get(Kind::Service, namespace, name)? {
            Resource::Service(svc) => Some(svc),
            _ => None,
        }
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.by_kind.get(&Kind::Service).into_iter().flat_map(|m| m.values()).filter_map(|r| match r {
            Resource::Service(svc) => Some(&**svc),
            _ => None,
        })
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        match self.get(Kind::Pod, namespace, name)? {
            Resource::Pod(pod) => Some(pod),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
