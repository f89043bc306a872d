//! The controller's APIs as a proxy sees them: a real gRPC client against
//! the controller serving a store directory that the test edits.

use linkerd2_proxy_api::{
    destination::{GetDestination, Update, destination_client::DestinationClient, update},
    net::TcpAddress,
    outbound::{TrafficSpec, outbound_policies_client::OutboundPoliciesClient, traffic_spec},
};
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use weft_store::{Config, DirSource, Index};

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\nspec:\n  clusterIP: 10.96.0.10\n  selector: { app: web }\n  ports: [{ port: 80, targetPort: 8080 }]\n";

fn pod(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ app: web, linkerd.io/control-plane-ns: weft }} }}\nstatus: {{ podIP: {ip} }}\n"
    )
}

struct Fixture {
    dir: PathBuf,
    channel: tonic::transport::Channel,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("weft-controller-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("svc.yaml"), SVC).unwrap();
    std::fs::write(dir.join("web-1.yaml"), pod("web-1", "10.1.0.1")).unwrap();
    let index = Arc::new(std::sync::Mutex::new(Index::new(Config::default())));
    DirSource::new(&dir).watch(index.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(weft_controller::serve_grpc(listener, index, weft_controller::Metrics::new(), None));
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    Fixture { dir, channel }
}

async fn next(stream: &mut tonic::Streaming<Update>) -> Update {
    let message =
        tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("no update in 5s");
    message.unwrap().expect("the stream ended")
}

fn addrs(set: &[TcpAddress]) -> Vec<SocketAddr> {
    set.iter().map(|a| SocketAddr::try_from(*a).unwrap()).collect()
}

#[tokio::test]
async fn get_streams_endpoint_changes_as_the_store_changes() {
    let fx = start("get").await;
    let mut client = DestinationClient::new(fx.channel.clone());
    let req = GetDestination { path: "web.shop.svc.cluster.local:80".into(), ..Default::default() };
    let mut stream = client.get(req).await.unwrap().into_inner();

    let first = next(&mut stream).await;
    let Some(update::Update::Add(set)) = first.update else { panic!("{first:?}") };
    assert_eq!(
        addrs(&set.addrs.iter().map(|a| a.addr.unwrap()).collect::<Vec<_>>()),
        ["10.1.0.1:8080".parse().unwrap()]
    );
    let id = set.addrs[0].tls_identity.clone().unwrap().server_name.unwrap().name;
    assert_eq!(id, "default.shop.serviceaccount.identity.weft.cluster.local");
    assert_eq!(set.metric_labels["service"], "web");

    std::fs::write(fx.dir.join("web-2.yaml"), pod("web-2", "10.1.0.2")).unwrap();
    let added = next(&mut stream).await;
    let Some(update::Update::Add(set)) = added.update else { panic!("{added:?}") };
    assert_eq!(
        set.addrs[0].addr.map(|a| SocketAddr::try_from(a).unwrap()),
        Some("10.1.0.2:8080".parse().unwrap())
    );

    std::fs::remove_file(fx.dir.join("web-1.yaml")).unwrap();
    let removed = next(&mut stream).await;
    let Some(update::Update::Remove(set)) = removed.update else { panic!("{removed:?}") };
    assert_eq!(addrs(&set.addrs), ["10.1.0.1:8080".parse().unwrap()]);

    std::fs::remove_file(fx.dir.join("svc.yaml")).unwrap();
    let gone = next(&mut stream).await;
    let Some(update::Update::NoEndpoints(ne)) = gone.update else { panic!("{gone:?}") };
    assert!(!ne.exists);
}

#[tokio::test]
async fn outbound_policies_for_services_and_not_found_for_the_rest() {
    let fx = start("outbound").await;
    let mut client = OutboundPoliciesClient::new(fx.channel.clone());
    let by_name = TrafficSpec {
        source_workload: "shop:client".into(),
        target: Some(traffic_spec::Target::Authority("web.shop.svc.cluster.local:80".into())),
    };
    let policy = client.get(by_name).await.unwrap().into_inner();
    assert!(policy.protocol.is_some() && policy.metadata.is_some());

    let by_ip = TrafficSpec {
        source_workload: String::new(),
        target: Some(traffic_spec::Target::Addr("10.96.0.10:80".parse::<SocketAddr>().unwrap().into())),
    };
    let mut watch = client.watch(by_ip).await.unwrap().into_inner();
    assert!(watch.message().await.unwrap().is_some());

    let unknown = TrafficSpec {
        source_workload: String::new(),
        target: Some(traffic_spec::Target::Addr("10.9.9.9:80".parse::<SocketAddr>().unwrap().into())),
    };
    let status = client.get(unknown).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn profiles_name_the_service() {
    let fx = start("profile").await;
    let mut client = DestinationClient::new(fx.channel.clone());
    let req = GetDestination { path: "10.96.0.10:80".into(), ..Default::default() };
    let mut stream = client.get_profile(req).await.unwrap().into_inner();
    let profile = stream.message().await.unwrap().unwrap();
    assert_eq!(profile.fully_qualified_name, "web.shop.svc.cluster.local");
    assert!(!profile.opaque_protocol);
}

#[tokio::test]
async fn routes_attached_to_a_service_reach_a_watching_proxy() {
    use linkerd2_proxy_api::outbound::{http_route, proxy_protocol};
    let fx = start("routes").await;
    let mut client = OutboundPoliciesClient::new(fx.channel.clone());
    let spec = TrafficSpec {
        source_workload: String::new(),
        target: Some(traffic_spec::Target::Authority("web.shop.svc.cluster.local:80".into())),
    };
    let mut watch = client.watch(spec).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    let Some(proxy_protocol::Kind::Detect(detect)) = first.protocol.unwrap().kind else {
        panic!("not detect")
    };
    assert_eq!(detect.http1.unwrap().routes[0].rules.len(), 1, "the default route");

    // A canary split, written while the proxy watches.
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: web-split, namespace: shop }
spec:
  parentRefs: [{ group: core, kind: Service, name: web, port: 80 }]
  rules:
  - matches: [{ path: { type: PathPrefix, value: /api }, method: GET }]
    backendRefs: [{ name: web, port: 80, weight: 90 }, { name: web-canary, port: 80, weight: 10 }]
"#;
    std::fs::write(fx.dir.join("route.yaml"), route).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("no update")
        .unwrap()
        .unwrap();
    let Some(proxy_protocol::Kind::Detect(detect)) = next.protocol.unwrap().kind else {
        panic!("not detect")
    };
    let route = &detect.http1.unwrap().routes[0];
    let rule = &route.rules[0];
    assert!(rule.matches[0].method.is_some());
    let Some(http_route::distribution::Kind::RandomAvailable(split)) =
        rule.backends.as_ref().unwrap().kind.as_ref()
    else {
        panic!("not a weighted split")
    };
    let weights: Vec<u32> = split.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
}

/// weft-proxy's client reads weft's additions (field 1000) from `Watch`
/// through the real server; a stock client reads the same policy without
/// them.
#[tokio::test]
async fn a_weft_client_reads_the_extensions_from_watch() {
    use linkerd2_proxy_api::outbound::proxy_protocol;
    use weft_api::client::OutboundPoliciesClient as WeftClient;
    let fx = start("extensions").await;
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web-faults
  namespace: shop
  annotations: { fault.weft.io/delay: 50ms, fault.weft.io/delay-percent: "20" }
spec:
  parentRefs: [{ kind: Service, name: web, port: 80 }]
  rules:
  - matches: [{ path: { type: PathPrefix, value: /api } }]
    filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: web-shadow, port: 80 }, percent: 5 } }]
"#;
    std::fs::write(fx.dir.join("route.yaml"), route).unwrap();
    let spec = TrafficSpec {
        source_workload: String::new(),
        target: Some(traffic_spec::Target::Authority("web.shop.svc.cluster.local:80".into())),
    };
    let mut client = WeftClient::new(fx.channel.clone());
    let mut watch = client.watch(spec.clone()).await.unwrap().into_inner();
    // The directory is rescanned within a moment; wait for the route.
    let policy = loop {
        let policy = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("no policy with the route in 5s")
            .unwrap()
            .expect("the stream ended");
        if policy.weft.is_some() {
            break policy;
        }
    };
    let ext = &policy.weft.clone().unwrap().rules[0];
    assert_eq!((ext.route, ext.rule), (0, 0));
    let delay = ext.delay.clone().unwrap();
    assert_eq!(delay.duration, Some(prost_types::Duration { seconds: 0, nanos: 50_000_000 }));
    let mirror = ext.mirrors[0].backend.clone().unwrap();
    let Some(linkerd2_proxy_api::outbound::backend::Kind::Balancer(p2c)) = mirror.kind else { panic!() };
    let Some(linkerd2_proxy_api::outbound::backend::endpoint_discovery::Kind::Dst(dst)) =
        p2c.discovery.unwrap().kind
    else {
        panic!()
    };
    assert_eq!(dst.path, "web-shadow.shop.svc.cluster.local:80");
    let Some(proxy_protocol::Kind::Detect(detect)) = policy.protocol.clone().unwrap().kind else { panic!() };
    assert_eq!(detect.http1.unwrap().routes[0].rules.len(), 1);

    // The stock client gets the same standard policy.
    let stock = OutboundPoliciesClient::new(fx.channel.clone()).get(spec).await.unwrap().into_inner();
    assert_eq!(stock, linkerd2_proxy_api::outbound::OutboundPolicy::from(policy));
}
