use super::*;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: { app: web }
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: { app: web }
spec:
  containers: [{ name: app, image: web }]
status:
  podIP: 10.1.0.5
---
# an empty document is fine
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: vm-1
  namespace: shop
  labels: { app: web }
spec:
  meshTLS:
    identity: spiffe://cluster.local/ns/shop/sa/web
    serverName: vm-1.shop.cluster.local
  ports: [{ port: 8080, name: http }]
  workloadIPs: [{ ip: 192.168.1.20 }]
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: { name: web-http, namespace: shop }
spec:
  podSelector: { matchLabels: { app: web } }
  port: http
"#;

#[test]
fn parses_a_multi_document_manifest() {
    let resources = Resource::parse_all(MANIFEST).unwrap();
    let keys: Vec<String> = resources.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(
        keys,
        ["Service shop/web", "Pod default/web-1", "ExternalWorkload shop/vm-1", "Server shop/web-http"]
    );
    let Resource::ExternalWorkload(ew) = &resources[2] else { panic!("not an ExternalWorkload") };
    assert_eq!(ew.spec.workload_ips.as_ref().unwrap()[0].ip, "192.168.1.20");
    let Resource::Other(server) = &resources[3] else { panic!("not generic") };
    assert_eq!(server.spec["port"], "http");
}

#[test]
fn errors_say_where_and_what() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: { name: ok }\n---\napiVersion: v1\nkind: Service\nmetadata: { name: bad }\nspec:\n  ports: [{ port: 70000 }]\n";
    let err = Resource::parse_all(text).unwrap_err();
    assert_eq!(
        err,
        ParseError::Invalid {
            line: 5,
            what: "Service bad".into(),
            reason: "port 70000 is not between 1 and 65535".into()
        }
    );

    let err =
        Resource::parse_all("apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n").unwrap_err();
    assert!(matches!(err, ParseError::Yaml { line: 4 | 5, .. }), "{err:?}");

    let err =
        Resource::parse_all("apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\n").unwrap_err();
    assert!(err.to_string().contains("weft does not know kind Deployment in apps/v1"), "{err}");

    let err = Resource::parse_all("apiVersion: v1\nkind: Pod\nmetadata: {}\n").unwrap_err();
    assert!(err.to_string().contains("metadata.name is missing"), "{err}");

    let bad_ip = "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: { name: vm }\nspec:\n  meshTLS: { identity: a, serverName: b }\n  workloadIPs: [{ ip: nope }]\n";
    let err = Resource::parse_all(bad_ip).unwrap_err();
    assert!(err.to_string().contains("\"nope\" is not an IP address"), "{err}");
}

#[test]
fn documents_know_their_lines() {
    let docs = documents("a: 1\n---\nb: 2\nc: 3\n--- \n---\nd: 4");
    assert_eq!(docs, [(1, "a: 1\n"), (3, "b: 2\nc: 3\n"), (7, "d: 4")]);
}
