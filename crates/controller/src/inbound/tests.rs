use super::*;
use weft_store::Config;

fn index(yaml: &str) -> Index {
    let mut index = Index::new(Config::default());
    index.replace_source("test", Resource::parse_all(yaml).expect("valid YAML"));
    index
}

fn pod(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ app: web }}, annotations: {{ {annotations} }} }}\nspec: {{ containers: [{{ name: app, ports: [{{ name: http, containerPort: 8080 }}] }}] }}\nstatus: {{ podIP: 10.1.0.1 }}\n---\n"
    )
}

const SERVER: &str = "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: { name: web-http, namespace: shop }\nspec:\n  podSelector: { matchLabels: { app: web } }\n  port: http\n---\n";

fn web() -> Workload {
    Workload { ns: "shop".into(), name: "web-1".into(), external: false }
}

fn kind_name(labels: &HashMap<String, String>) -> (String, String) {
    (labels["kind"].clone(), labels["name"].clone())
}

fn http_routes(server: &Server) -> &[HttpRoute] {
    match server.protocol.as_ref().unwrap().kind.as_ref().unwrap() {
        proxy_protocol::Kind::Detect(d) => &d.http_routes,
        proxy_protocol::Kind::Http1(h) => &h.routes,
        other => panic!("not HTTP: {other:?}"),
    }
}

#[test]
fn ports_without_a_server_get_the_default_policy_by_annotation() {
    let config = InboundConfig::default();
    let plain = index(&pod("web-1", ""));
    let server = compute(&plain, &config, &web(), 8080);
    assert_eq!(kind_name(&server.labels), ("default".into(), "all-unauthenticated".into()));
    assert_eq!(server.authorizations.len(), 1);
    assert_eq!(http_routes(&server)[0].authorizations.len(), 1);

    // The namespace says deny; the pod says all-authenticated, and wins.
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop, annotations: { config.linkerd.io/default-inbound-policy: deny } }\n---\n";
    let denied = index(&format!("{ns}{}", pod("web-1", "")));
    let server = compute(&denied, &config, &web(), 8080);
    assert_eq!(kind_name(&server.labels).1, "deny");
    assert!(server.authorizations.is_empty());
    assert!(http_routes(&server)[0].authorizations.is_empty());
    let pod_says = index(&format!(
        "{ns}{}",
        pod("web-1", "config.linkerd.io/default-inbound-policy: all-authenticated")
    ));
    let server = compute(&pod_says, &config, &web(), 8080);
    assert_eq!(kind_name(&server.labels).1, "all-authenticated");
    let Some(authn::Permit::MeshTls(_)) = server.authorizations[0].authentication.as_ref().unwrap().permit
    else {
        panic!("all-authenticated must require a mesh identity");
    };

    // cluster-* admit the cluster's networks only.
    let config = InboundConfig { default_policy: "cluster-unauthenticated".into(), ..Default::default() };
    let server = compute(&plain, &config, &web(), 8080);
    assert_eq!(server.authorizations[0].networks.len(), 5);
}

#[test]
fn a_server_selects_by_labels_and_named_port_with_its_policies() {
    let yaml = format!(
        "{}{SERVER}{}",
        pod("web-1", ""),
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: { name: clients, namespace: shop }\nspec:\n  identityRefs: [{ kind: ServiceAccount, name: client }]\n  identities: [\"*.ops.serviceaccount.identity.weft.cluster.local\"]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: { name: office, namespace: shop }\nspec:\n  networks: [{ cidr: 192.168.0.0/16, except: [192.168.9.0/24] }]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: web-clients, namespace: shop }\nspec:\n  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }\n  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: clients }]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: office, namespace: shop }\nspec:\n  targetRef: { kind: Namespace, name: shop }\n  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: NetworkAuthentication, name: office }]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: dangling, namespace: shop }\nspec:\n  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }\n  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: nobody }]\n"
    );
    let index = index(&yaml);
    let config = InboundConfig::default();
    let server = compute(&index, &config, &web(), 8080);
    assert_eq!(kind_name(&server.labels), ("server".into(), "web-http".into()));
    // The dangling policy admits no one; the two others stand.
    let names: Vec<_> = server.authorizations.iter().map(|a| a.labels["name"].clone()).collect();
    assert_eq!(names, ["office", "web-clients"]);
    let office = &server.authorizations[0];
    assert_eq!(office.networks.len(), 1);
    assert_eq!(office.networks[0].except.len(), 1);
    let Some(authn::Permit::MeshTls(tls)) = &server.authorizations[1].authentication.as_ref().unwrap().permit
    else {
        panic!()
    };
    let Some(authn::permit_mesh_tls::Clients::Identities(ids)) = &tls.clients else { panic!() };
    assert_eq!(ids.identities[0].name, "client.shop.serviceaccount.identity.weft.cluster.local");
    assert_eq!(ids.suffixes[0].parts[0], "ops");
    // No routes: one default route with the Server's authorizations.
    assert_eq!(http_routes(&server).len(), 1);
    assert_eq!(http_routes(&server)[0].authorizations.len(), 2);

    // Another port of the pod is not the Server's.
    let other = compute(&index, &config, &web(), 9090);
    assert_eq!(kind_name(&other.labels).0, "default");
}

#[test]
fn route_policies_apply_to_their_route_only() {
    let yaml = format!(
        "{}{SERVER}{}",
        pod("web-1", ""),
        "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: { name: public, namespace: shop }\nspec:\n  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: web-http }]\n  rules: [{ matches: [{ path: { type: PathPrefix, value: /public }, method: GET }] }]\n---\napiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: { name: admin, namespace: shop }\nspec:\n  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: web-http }]\n  rules: [{ matches: [{ path: { type: Exact, value: /admin }, method: POST }] }]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: { name: everyone, namespace: shop }\nspec:\n  networks: [{ cidr: 0.0.0.0/0 }]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: public, namespace: shop }\nspec:\n  targetRef: { group: policy.linkerd.io, kind: HTTPRoute, name: public }\n  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: NetworkAuthentication, name: everyone }]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: admin, namespace: shop }\nspec:\n  targetRef: { group: policy.linkerd.io, kind: HTTPRoute, name: admin }\n  requiredAuthenticationRefs: [{ kind: ServiceAccount, name: admin }]\n"
    );
    let server = compute(&index(&yaml), &InboundConfig::default(), &web(), 8080);
    assert!(server.authorizations.is_empty(), "route policies are not server-wide");
    let routes = http_routes(&server);
    let by_name: HashMap<String, &HttpRoute> = routes
        .iter()
        .map(|r| match r.metadata.as_ref().unwrap().kind.as_ref().unwrap() {
            meta::Kind::Resource(res) => (res.name.clone(), r),
            meta::Kind::Default(d) => (d.clone(), r),
        })
        .collect();
    assert_eq!(by_name.len(), 2);
    assert_eq!(by_name["public"].authorizations[0].labels["name"], "public");
    assert_eq!(by_name["admin"].authorizations[0].labels["name"], "admin");
    assert_eq!(by_name["admin"].authorizations.len(), 1);
}

#[test]
fn the_oldest_server_wins_and_workloads_parse() {
    let newer = SERVER.replace("name: web-http,", "name: a-newer,").replace(
        "metadata: { name: a-newer, namespace: shop }",
        "metadata: { name: a-newer, namespace: shop, creationTimestamp: \"2026-02-01T00:00:00Z\" }",
    );
    let older = SERVER.replace(
        "metadata: { name: web-http, namespace: shop }",
        "metadata: { name: web-http, namespace: shop, creationTimestamp: \"2026-01-01T00:00:00Z\" }",
    );
    let server = compute(
        &index(&format!("{}{newer}{older}", pod("web-1", ""))),
        &InboundConfig::default(),
        &web(),
        8080,
    );
    assert_eq!(server.labels["name"], "web-http");

    assert_eq!(parse_workload("shop:web-1").unwrap(), web());
    assert_eq!(parse_workload(r#"{"ns":"shop","pod":"web-1"}"#).unwrap(), web());
    assert!(parse_workload(r#"{"ns":"shop","external_workload":"vm-1"}"#).unwrap().external);
    assert!(parse_workload("nonsense").is_err());
}
