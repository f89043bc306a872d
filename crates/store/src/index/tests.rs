use super::*;
use crate::endpoints::TlsId;

fn parse(text: &str) -> Vec<Resource> {
    Resource::parse_all(text).unwrap()
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop, annotations: { config.linkerd.io/opaque-ports: "9000" } }
spec:
  clusterIP: 10.96.0.10
  selector: { app: web }
  ports:
  - { name: http, port: 80, targetPort: http }
  - { name: raw, port: 9000 }
"#;

fn pod(name: &str, ip: &str, meshed: bool) -> String {
    let cp = if meshed { r#", linkerd.io/control-plane-ns: weft"# } else { "" };
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: shop, labels: {{ app: web{cp} }} }}
spec:
  serviceAccountName: web
  containers: [{{ name: app, image: web, ports: [{{ name: http, containerPort: 8080 }}] }}]
status: {{ podIP: {ip} }}
"#
    )
}

fn sp(port: u16) -> ServicePort {
    ServicePort { namespace: "shop".into(), name: "web".into(), port }
}

fn addrs(set: &EndpointSet) -> Vec<String> {
    set.endpoints.keys().map(|a| a.to_string()).collect()
}

#[test]
fn selected_pods_are_endpoints_and_changes_are_published() {
    let mut index = Index::new(Config::default());
    index.replace_source("svc.yaml", parse(SERVICE));
    index.replace_source(
        "pods.yaml",
        parse(&(pod("web-1", "10.1.0.1", true) + "---" + &pod("web-2", "10.1.0.2", false))),
    );
    let mut rx = index.watch_endpoints(sp(80));
    let set = rx.borrow_and_update().clone();
    assert!(set.exists);
    assert_eq!(addrs(&set), ["10.1.0.1:8080", "10.1.0.2:8080"]);
    let meshed = &set.endpoints[&"10.1.0.1:8080".parse().unwrap()];
    assert_eq!(
        meshed.identity,
        Some(TlsId::Dns("web.shop.serviceaccount.identity.weft.cluster.local".into()))
    );
    assert!(meshed.http2);
    assert_eq!(meshed.labels["pod"], "web-1");
    let plain = &set.endpoints[&"10.1.0.2:8080".parse().unwrap()];
    assert_eq!(plain.identity, None);
    assert!(!plain.http2);

    // web-2 goes away: published at once.
    index.replace_source("pods.yaml", parse(&pod("web-1", "10.1.0.1", true)));
    assert!(rx.has_changed().unwrap());
    assert_eq!(addrs(&rx.borrow_and_update()), ["10.1.0.1:8080"]);

    // A change elsewhere publishes nothing.
    index.replace_source("other.yaml", parse("apiVersion: v1\nkind: Namespace\nmetadata: { name: other }\n"));
    assert!(!rx.has_changed().unwrap());

    // The service goes away.
    index.remove_source("svc.yaml");
    let set = rx.borrow_and_update().clone();
    assert!(!set.exists && set.endpoints.is_empty());
}

#[test]
fn opaque_ports_get_the_proxy_port_for_transport() {
    let mut index = Index::new(Config::default());
    index.replace_source("a", parse(&(SERVICE.to_string() + "---" + &pod("web-1", "10.1.0.1", true))));
    let rx = index.watch_endpoints(sp(9000));
    let set = rx.borrow().clone();
    assert_eq!(set.endpoints[&"10.1.0.1:9000".parse().unwrap()].opaque_transport_port, Some(4143));
    let rx = index.watch_endpoints(sp(80));
    assert_eq!(rx.borrow().endpoints[&"10.1.0.1:8080".parse().unwrap()].opaque_transport_port, None);
}

#[test]
fn external_workloads_are_selected_with_their_identity() {
    let ew = r#"
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: { name: vm-1, namespace: shop, labels: { app: web } }
spec:
  meshTLS: { identity: "spiffe://cluster.local/ns/shop/sa/web", serverName: vm-1.shop.cluster.local }
  ports: [{ port: 8081, name: http }]
  workloadIPs: [{ ip: 192.168.1.20 }]
"#;
    let mut index = Index::new(Config::default());
    index.replace_source("a", parse(&(SERVICE.to_string() + "---" + ew)));
    let rx = index.watch_endpoints(sp(80));
    let set = rx.borrow().clone();
    let ep = &set.endpoints[&"192.168.1.20:8081".parse().unwrap()];
    assert_eq!(
        ep.identity,
        Some(TlsId::Uri {
            uri: "spiffe://cluster.local/ns/shop/sa/web".into(),
            server_name: "vm-1.shop.cluster.local".into()
        })
    );
    assert_eq!(ep.labels["external_workload"], "vm-1");
}

#[test]
fn endpoint_slices_take_precedence_over_the_selector() {
    let slice = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-abc, namespace: shop, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints:
- addresses: [10.2.0.1]
  conditions: { ready: true }
  targetRef: { kind: Pod, name: web-1, namespace: shop }
- addresses: [10.2.0.2]
  conditions: { ready: false }
"#;
    let mut index = Index::new(Config::default());
    index.replace_source("a", parse(&(SERVICE.to_string() + "---" + &pod("web-1", "10.1.0.1", true))));
    let rx = index.watch_endpoints(sp(80));
    assert_eq!(addrs(&rx.borrow()), ["10.1.0.1:8080"]);
    index.replace_source("b", parse(slice));
    let set = rx.borrow().clone();
    assert_eq!(addrs(&set), ["10.2.0.1:8080"]);
    // The slice's targetRef gives the endpoint the pod's identity.
    assert!(set.endpoints.values().next().unwrap().identity.is_some());
}

#[test]
fn the_latest_source_wins_and_the_other_returns_when_it_goes() {
    let mut index = Index::new(Config::default());
    index.replace_source("svc.yaml", parse(SERVICE));
    index.replace_source("a.yaml", parse(&pod("web-1", "10.1.0.1", false)));
    let rx = index.watch_endpoints(sp(80));
    index.replace_source("b.yaml", parse(&pod("web-1", "10.1.0.9", false)));
    assert_eq!(addrs(&rx.borrow()), ["10.1.0.9:8080"]);
    index.remove_source("b.yaml");
    assert_eq!(addrs(&rx.borrow()), ["10.1.0.1:8080"]);
}

#[test]
fn names_and_cluster_ips_resolve_to_services() {
    let mut index = Index::new(Config::default());
    index.replace_source("svc.yaml", parse(SERVICE));
    assert_eq!(index.resolve("web.shop.svc.cluster.local", 80), Some(sp(80)));
    assert_eq!(index.resolve("web.shop.svc.cluster.local.", 80), Some(sp(80)));
    assert_eq!(index.resolve("web.shop.svc", 80), Some(sp(80)));
    assert_eq!(index.resolve("10.96.0.10", 80), Some(sp(80)));
    assert_eq!(index.resolve("web.shop.svc.other.domain", 80), None);
    assert_eq!(index.resolve("nope.shop.svc.cluster.local", 80), None);
    assert_eq!(index.resolve("10.96.0.11", 80), None);
}

#[test]
fn a_change_republishes_only_the_services_it_reaches() {
    let other = "apiVersion: v1\nkind: Service\nmetadata: { name: api, namespace: shop }\nspec:\n  selector: { app: api }\n  ports: [{ port: 80 }]\n";
    let mut index = Index::new(Config::default());
    index.replace_source("svc.yaml", parse(&(SERVICE.to_string() + "---\n" + other)));
    let mut web = index.watch_endpoints(sp(80));
    let mut api =
        index.watch_endpoints(ServicePort { namespace: "shop".into(), name: "api".into(), port: 80 });
    web.borrow_and_update();
    api.borrow_and_update();
    index.replace_source("pods.yaml", parse(&pod("web-1", "10.1.0.1", false)));
    assert!(web.has_changed().unwrap());
    assert!(!api.has_changed().unwrap(), "api changed for a pod it does not select");
    // Relabelled from web to api: both hear of it.
    web.borrow_and_update();
    index
        .replace_source("pods.yaml", parse(&pod("web-1", "10.1.0.1", false).replace("app: web", "app: api")));
    assert!(web.has_changed().unwrap() && api.has_changed().unwrap());
    assert!(web.borrow_and_update().endpoints.is_empty());
    assert_eq!(addrs(&api.borrow_and_update()), ["10.1.0.1:80"]);
}
