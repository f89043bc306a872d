//! The Kubernetes source against a fake API server: `weft_store::kube::run`
//! starts kube-rs watchers on a `kube::Client` whose transport is a tower
//! service, and the index follows what they list and watch.
//!
//! The fake serves the core kinds weft watches (Namespaces, Services,
//! Endpoints, EndpointSlices, Pods, ServiceAccounts) from one event log with
//! a cluster-wide resourceVersion, as etcd does: a LIST returns the current
//! objects and the latest resourceVersion, a WATCH streams the events after
//! the resourceVersion it names (newline-delimited JSON), then a BOOKMARK if
//! asked for, then new events as they happen. Every other kind (the custom
//! resources) answers 404, as when its CRD is not installed.
//!
//! The fake can also lose a deletion: the object is gone from later LISTs,
//! and open watches get a 410 Gone instead of the DELETED event, as when a
//! watch falls behind the API server's history.

use bytes::Bytes;
use futures_util::{StreamExt, stream::BoxStream};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};
use weft_store::{Config, EndpointSet, Index, ServicePort};

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

const SERVED: &[&str] = &[
    "/api/v1/namespaces",
    "/api/v1/services",
    "/api/v1/endpoints",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/api/v1/pods",
    "/api/v1/serviceaccounts",
];

#[derive(Default)]
struct State {
    /// The last resourceVersion handed out, cluster-wide.
    rv: u64,
    /// Per collection path: (resourceVersion, event type, object). The
    /// type "EXPIRED" is a deletion that watches do not see (they get a
    /// 410 Gone instead).
    log: BTreeMap<String, Vec<(u64, &'static str, Value)>>,
    /// Every request, as "LIST path" / "WATCH path", in order.
    requests: Vec<String>,
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Bumped on every new event, to wake open watches.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl FakeApi {
    fn new() -> Self {
        Self { state: Default::default(), changed: Arc::new(tokio::sync::watch::channel(0).0) }
    }

    /// Records a change to the object at `path` (a collection path).
    fn event(&self, path: &str, kind: &'static str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.log.entry(path.into()).or_default().push((rv, kind, object));
        self.changed.send_replace(rv);
    }

    /// Deletes an object so that watches miss it: they must relist.
    fn expire(&self, path: &str, object: Value) {
        self.event(path, "EXPIRED", object);
    }

    fn requests(&self, prefix: &str) -> usize {
        self.state.lock().unwrap().requests.iter().filter(|r| r.starts_with(prefix)).count()
    }

    fn serve(&self, req: http::Request<kube::client::Body>) -> http::Response<Body> {
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let watch = query.get("watch").is_some_and(|w| w == "true");
        let mut state = self.state.lock().unwrap();
        state.requests.push(format!("{} {path}", if watch { "WATCH" } else { "LIST" }));
        if !SERVED.contains(&path.as_str()) {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
            return respond(http::StatusCode::NOT_FOUND, futures_util::stream::iter([line(&status)]).boxed());
        }
        if !watch {
            // What the log adds up to, keyed by namespace/name.
            let mut objects = BTreeMap::new();
            for (_, kind, object) in state.log.get(&path).into_iter().flatten() {
                let key = format!("{}/{}", object["metadata"]["namespace"], object["metadata"]["name"]);
                match *kind {
                    "DELETED" | "EXPIRED" => objects.remove(&key),
                    _ => objects.insert(key, object.clone()),
                };
            }
            let list = json!({"apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": state.rv.to_string()},
                "items": objects.into_values().collect::<Vec<_>>()});
            return respond(http::StatusCode::OK, futures_util::stream::iter([line(&list)]).boxed());
        }
        let from: u64 = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
        let bookmark = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let events = futures_util::stream::unfold(
            (self.clone(), path, from, bookmark),
            |(api, path, from, bookmark)| async move {
                let mut changed = api.changed.subscribe();
                loop {
                    {
                        let state = api.state.lock().unwrap();
                        let next = state.log.get(&path).into_iter().flatten().find(|(rv, ..)| *rv > from);
                        if let Some((rv, kind, object)) = next {
                            let event = match *kind {
                                "EXPIRED" => line(&json!({"type": "ERROR", "object": {"kind": "Status",
                                    "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                    "message": "too old resource version", "reason": "Expired", "code": 410}})),
                                _ => line(&json!({"type": kind, "object": object})),
                            };
                            return Some((event, (api.clone(), path, *rv, bookmark)));
                        }
                        if bookmark {
                            // Everything up to the current resourceVersion is sent.
                            let rv = state.rv;
                            let event = line(&json!({"type": "BOOKMARK", "object": {"apiVersion": "v1",
                                "kind": "Bookmark", "metadata": {"resourceVersion": rv.to_string()}}}));
                            return Some((event, (api.clone(), path, rv, false)));
                        }
                    }
                    changed.changed().await.ok()?;
                }
            },
        );
        respond(http::StatusCode::OK, events.boxed())
    }
}

fn line(value: &Value) -> Result<Frame<Bytes>, Infallible> {
    let mut bytes = serde_json::to_vec(value).unwrap();
    bytes.push(b'\n');
    Ok(Frame::data(Bytes::from(bytes)))
}

fn respond(
    status: http::StatusCode,
    body: BoxStream<'static, Result<Frame<Bytes>, Infallible>>,
) -> http::Response<Body> {
    let mut rsp = http::Response::new(StreamBody::new(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    rsp
}

fn pod(name: &str, ip: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "status": {"podIP": ip}})
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
}

/// Waits (at most 10s) until the set is `expected`: the service exists or
/// not, with these addresses.
async fn until(rx: &mut tokio::sync::watch::Receiver<Arc<EndpointSet>>, exists: bool, expected: &[&str]) {
    let addrs = |set: &EndpointSet| set.endpoints.keys().map(|a| a.to_string()).collect::<Vec<_>>();
    let wait = rx.wait_for(|set| set.exists == exists && addrs(set) == expected);
    if tokio::time::timeout(Duration::from_secs(10), wait).await.is_err() {
        let set = rx.borrow();
        panic!("after 10s: exists={} {:?}; expected exists={exists} {expected:?}", set.exists, addrs(&set));
    }
}

#[tokio::test]
async fn the_index_follows_the_watchers() {
    let api = FakeApi::new();
    // What the cluster holds before the controller starts: a Service with
    // a selector, a Pod it picks and one it does not.
    api.event("/api/v1/services", "ADDED", service());
    api.event("/api/v1/pods", "ADDED", pod("a", "10.0.0.1", "web"));
    api.event("/api/v1/pods", "ADDED", pod("x", "10.0.0.9", "other"));

    let fake = api.clone();
    let client = kube::Client::new(
        tower::service_fn(move |req| std::future::ready(Ok::<_, Infallible>(fake.serve(req)))),
        "default",
    );
    let index = Arc::new(Mutex::new(Index::new(Config::default())));
    let mut rx = index.lock().unwrap().watch_endpoints(ServicePort {
        namespace: "shop".into(),
        name: "web".into(),
        port: 80,
    });
    assert!(!rx.borrow().exists);
    let source = tokio::spawn(weft_store::kube::run(client, index.clone()));

    // The initial LIST.
    until(&mut rx, true, &["10.0.0.1:80"]).await;

    // Watch events: a new pod, a pod that moves, one deleted.
    api.event("/api/v1/pods", "ADDED", pod("b", "10.0.0.2", "web"));
    until(&mut rx, true, &["10.0.0.1:80", "10.0.0.2:80"]).await;
    api.event("/api/v1/pods", "MODIFIED", pod("a", "10.0.0.3", "web"));
    until(&mut rx, true, &["10.0.0.2:80", "10.0.0.3:80"]).await;
    api.event("/api/v1/pods", "DELETED", pod("b", "10.0.0.2", "web"));
    until(&mut rx, true, &["10.0.0.3:80"]).await;
    // The unselected pod's label changes: now it is picked.
    api.event("/api/v1/pods", "MODIFIED", pod("x", "10.0.0.9", "web"));
    until(&mut rx, true, &["10.0.0.3:80", "10.0.0.9:80"]).await;
    // So far the changes came over the watches, not from relisting.
    assert_eq!(api.requests("LIST /api/v1/pods"), 1);
    assert_eq!(api.requests("WATCH /api/v1/pods"), 1);

    // The pods' watch misses a deletion (410 Gone): it relists, and what
    // was not relisted leaves the index.
    api.expire("/api/v1/pods", pod("a", "10.0.0.3", "web"));
    until(&mut rx, true, &["10.0.0.9:80"]).await;
    assert_eq!(api.requests("LIST /api/v1/pods"), 2);
    // And the new watch follows.
    api.event("/api/v1/pods", "ADDED", pod("c", "10.0.0.4", "web"));
    until(&mut rx, true, &["10.0.0.4:80", "10.0.0.9:80"]).await;

    api.event("/api/v1/services", "DELETED", service());
    until(&mut rx, false, &[]).await;
    assert_eq!(api.requests("LIST /api/v1/services"), 1);
    // The custom kinds' 404s (retried with backoff) held up none of this,
    // and a kind that cannot be listed is not watched.
    assert!(api.requests("LIST /apis/policy.linkerd.io/v1beta3/servers") >= 1);
    assert_eq!(api.requests("WATCH /apis/"), api.requests("WATCH /apis/discovery.k8s.io/"));
    source.abort();
}
