use super::*;

fn client(ip: &str, identity: Option<&'static str>) -> Client<'static> {
    Client { ip: ip.parse().unwrap(), tls: identity.is_some(), identity }
}

/// The policy the controller computes from `yaml` for shop/web-1:8080,
/// as this proxy reads it.
fn from_controller(yaml: &str) -> ServerPolicy {
    let mut index = weft_store::Index::new(weft_store::Config::default());
    index.replace_source("test", weft_store::Resource::parse_all(yaml).unwrap());
    let config = weft_controller::inbound::InboundConfig::default();
    let server = weft_controller::inbound::policy_for(&index, &config, "shop:web-1", 8080).unwrap();
    proto::server_policy(server)
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: { name: web-1, namespace: shop, labels: { app: web } }\nstatus: { podIP: 10.1.0.1 }\n---\napiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: { name: web, namespace: shop }\nspec:\n  podSelector: { matchLabels: { app: web } }\n  port: 8080\n---\n";

const ALICE: &str = "alice.shop.serviceaccount.identity.weft.cluster.local";
const BOB: &str = "bob.shop.serviceaccount.identity.weft.cluster.local";

#[test]
fn mesh_identities_and_networks_decide_connections() {
    let yaml = format!(
        "{POD}apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {{ name: alice, namespace: shop }}\nspec: {{ identityRefs: [{{ kind: ServiceAccount, name: alice }}] }}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: alice, namespace: shop }}\nspec:\n  targetRef: {{ group: policy.linkerd.io, kind: Server, name: web }}\n  requiredAuthenticationRefs: [{{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: alice }}]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {{ name: office, namespace: shop }}\nspec: {{ networks: [{{ cidr: 192.168.0.0/16, except: [192.168.9.0/24] }}] }}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: office, namespace: shop }}\nspec:\n  targetRef: {{ group: policy.linkerd.io, kind: Server, name: web }}\n  requiredAuthenticationRefs: [{{ group: policy.linkerd.io, kind: NetworkAuthentication, name: office }}]\n"
    );
    let policy = from_controller(&yaml);
    assert_eq!(policy.meta.name, "web");
    let allowed_by = |c: Client<'_>| match policy.authorize_tcp(&c) {
        Verdict::Allow { authz, audit: false } => Some(authz.name.clone()),
        Verdict::Allow { audit: true, .. } => panic!("no audit here"),
        Verdict::Deny => None,
    };
    assert_eq!(allowed_by(client("10.1.0.7", Some(ALICE))).as_deref(), Some("alice"));
    assert_eq!(allowed_by(client("10.1.0.7", Some(BOB))), None);
    assert_eq!(allowed_by(client("10.1.0.7", None)), None);
    assert_eq!(allowed_by(client("192.168.1.5", None)).as_deref(), Some("office"));
    assert_eq!(allowed_by(client("192.168.9.5", None)), None, "the exception is not admitted");

    // HTTP: the default route carries the same authorizations.
    let headers = HeaderMap::new();
    let (route, verdict) = policy
        .authorize_http(&Method::GET, "/x", None, &headers, false, &client("10.1.0.7", Some(BOB)))
        .unwrap();
    assert_eq!(route.name, "default");
    assert_eq!(verdict, Verdict::Deny);
}

#[test]
fn routes_carry_their_own_authorizations() {
    let yaml = format!(
        "{POD}apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: {{ name: public, namespace: shop }}\nspec:\n  parentRefs: [{{ group: policy.linkerd.io, kind: Server, name: web }}]\n  rules: [{{ matches: [{{ path: {{ type: PathPrefix, value: /public }}, method: GET }}] }}]\n---\napiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: {{ name: admin, namespace: shop }}\nspec:\n  parentRefs: [{{ group: policy.linkerd.io, kind: Server, name: web }}]\n  rules: [{{ matches: [{{ path: {{ type: Exact, value: /admin }}, method: POST }}] }}]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {{ name: everyone, namespace: shop }}\nspec: {{ networks: [{{ cidr: 0.0.0.0/0 }}] }}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: public, namespace: shop }}\nspec:\n  targetRef: {{ group: policy.linkerd.io, kind: HTTPRoute, name: public }}\n  requiredAuthenticationRefs: [{{ group: policy.linkerd.io, kind: NetworkAuthentication, name: everyone }}]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: admin, namespace: shop }}\nspec:\n  targetRef: {{ group: policy.linkerd.io, kind: HTTPRoute, name: admin }}\n  requiredAuthenticationRefs: [{{ kind: ServiceAccount, name: alice }}]\n"
    );
    let policy = from_controller(&yaml);
    let h = HeaderMap::new();
    let anyone = client("10.1.0.9", None);
    let alice = client("10.1.0.9", Some(ALICE));
    let bob = client("10.1.0.9", Some(BOB));
    let verdict = |m: Method, path: &str, c: &Client<'_>| {
        policy
            .authorize_http(&m, path, None, &h, false, c)
            .map(|(route, v)| (route.name.clone(), matches!(v, Verdict::Allow { .. })))
    };
    assert_eq!(verdict(Method::GET, "/public/a", &anyone), Some(("public".into(), true)));
    assert_eq!(verdict(Method::GET, "/publicity", &anyone), None, "prefixes match whole segments");
    assert_eq!(verdict(Method::POST, "/admin", &alice), Some(("admin".into(), true)));
    assert_eq!(verdict(Method::POST, "/admin", &bob), Some(("admin".into(), false)));
    assert_eq!(verdict(Method::POST, "/admin", &anyone), Some(("admin".into(), false)));
    assert_eq!(verdict(Method::GET, "/admin", &alice), None, "no route for GET /admin");
    // No route-level policy reaches TCP: the Server itself has none.
    assert_eq!(policy.authorize_tcp(&alice), Verdict::Deny);
}

#[test]
fn defaults_and_audit() {
    let none: &[IpNet] = &["10.0.0.0/8".parse().unwrap()];
    let deny = ServerPolicy::default("deny", none);
    assert_eq!(deny.authorize_tcp(&client("10.1.0.1", Some(ALICE))), Verdict::Deny);
    let authd = ServerPolicy::default("all-authenticated", none);
    assert!(matches!(authd.authorize_tcp(&client("10.1.0.1", Some(ALICE))), Verdict::Allow { .. }));
    assert_eq!(authd.authorize_tcp(&client("10.1.0.1", None)), Verdict::Deny);
    let cluster = ServerPolicy::default("cluster-unauthenticated", none);
    assert!(matches!(cluster.authorize_tcp(&client("10.1.0.1", None)), Verdict::Allow { .. }));
    assert_eq!(cluster.authorize_tcp(&client("192.168.0.1", None)), Verdict::Deny);
    let audit = ServerPolicy::default("audit", none);
    assert!(matches!(audit.authorize_tcp(&client("192.168.0.1", None)), Verdict::Allow { audit: true, .. }));

    // A Server whose accessPolicy is audit: what its authorizations admit
    // is allowed; the rest is allowed and marked.
    let yaml = POD.replace("  port: 8080\n", "  port: 8080\n  accessPolicy: audit\n");
    let policy = from_controller(&yaml);
    assert!(matches!(policy.authorize_tcp(&client("10.1.0.1", None)), Verdict::Allow { audit: true, .. }));
}

#[test]
fn suffixes_match_whole_labels() {
    let authz = Authorization {
        meta: Arc::new(Meta { group: String::new(), kind: "x".into(), name: "x".into() }),
        networks: vec![("0.0.0.0/0".parse().unwrap(), vec![])],
        authn: Authn::Identities {
            names: HashSet::new(),
            suffixes: vec!["shop.serviceaccount.identity.weft.cluster.local".into()],
        },
    };
    assert!(authz.admits(&client("10.0.0.1", Some(ALICE))));
    assert!(
        !authz.admits(&client("10.0.0.1", Some("alice.xshop.serviceaccount.identity.weft.cluster.local")))
    );
    assert!(!authz.admits(&client("10.0.0.1", Some("shop.serviceaccount.identity.weft.cluster.local"))));
}
