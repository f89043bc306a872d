//! `weft authz` and `weft diagnostics policy` as a user runs them.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

const STORE: &str = "apiVersion: v1\nkind: Pod\nmetadata: { name: web-0, namespace: shop, labels: { app: web } }\nspec: { containers: [{ name: app, ports: [{ containerPort: 8080 }, { containerPort: 9090 }] }] }\nstatus: { podIP: 10.1.0.1 }\n---\napiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: { name: web-http, namespace: shop }\nspec:\n  podSelector: { matchLabels: { app: web } }\n  port: 8080\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: { name: alice, namespace: shop }\nspec: { identityRefs: [{ kind: ServiceAccount, name: alice }] }\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: alice-only, namespace: shop }\nspec:\n  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }\n  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: alice }]\n";

struct Store(std::path::PathBuf);

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn store(name: &str) -> Store {
    let dir = std::env::temp_dir().join(format!("weft-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shop.yaml"), STORE).unwrap();
    Store(dir)
}

#[test]
fn authz_lists_each_port_with_its_server_and_authorizations() {
    let store = store("authz");
    let out = Command::new(WEFT)
        .args(["authz", "--store"])
        .arg(&store.0)
        .args(["-n", "shop", "web-0", "--default-inbound-policy", "deny"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line =
        |port: &str| stdout.lines().find(|l| l.starts_with(port)).unwrap_or_else(|| panic!("{stdout}"));
    let http = line("8080");
    assert!(http.contains("server/web-http") && http.contains("authorizationpolicy/alice-only"), "{stdout}");
    let other = line("9090");
    assert!(other.contains("default/deny") && other.contains("(none: denied)"), "{stdout}");

    let missing = Command::new(WEFT)
        .args(["authz", "--store"])
        .arg(&store.0)
        .args(["-n", "shop", "nope"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Pod shop/nope is not in the store"));
}

#[test]
fn diagnostics_policy_asks_the_controller() {
    let store = store("diag");
    let mut controller = Command::new(WEFT)
        .args(["controller", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--store"])
        .arg(&store.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(controller.stderr.take().unwrap());
    let line =
        stderr.lines().map_while(Result::ok).find(|l| l.contains("weft controller is serving")).unwrap();
    let grpc = line.split("grpc=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let out = Command::new(WEFT)
        .args(["diagnostics", "policy", "--controller", &grpc, "--workload", "shop:web-0", "--port", "8080"])
        .output()
        .unwrap();
    let _ = controller.kill();
    let _ = controller.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("server: server/web-http (detect)"), "{stdout}");
    assert!(
        stdout.contains("authorizationpolicy/alice-only: alice.shop.serviceaccount.identity.weft.cluster.local from 0.0.0.0/0, ::/0"),
        "{stdout}"
    );
}
