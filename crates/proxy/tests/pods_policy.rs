//! Authorization policy end to end: a server pod whose proxy enforces the
//! policies the controller computes from a store directory, and client
//! pods that are meshed as two service accounts (alice, bob) or not meshed
//! at all, all with mesh TLS and proxy-init's rules.

mod support;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use support::metric;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_test_support::{
    Net, Pod, ProxyProcess, TestCa, apps,
    mesh_ca::{env_refs, meshed_pod},
};

/// Fields drop in order: proxies and controller first, then pods, then
/// the network and the CA's directory.
struct Cluster {
    _proxies: Vec<ProxyProcess>,
    controller: Option<tokio::runtime::Runtime>,
    web: Pod,
    alice: Pod,
    bob: Pod,
    plain: Pod,
    _control: Pod,
    net: Net,
    ca: TestCa,
    /// Bytes the TCP app on port 7000 received.
    tcp_bytes: Arc<AtomicUsize>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.controller.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

const HTTP_PORTS: &[u16] = &[8080, 8081, 8082, 8083, 8084, 9000];

impl Cluster {
    fn start(test: &str) -> Option<Cluster> {
        let net = Net::for_test(test)?;
        let ca = TestCa::new(test);
        let control = net.pod("control");
        let web = net.pod("web");
        let alice = net.pod("alice");
        let bob = net.pod("bob");
        let plain = net.pod("plain");

        // The web pod denies by default: only what a Server and its
        // policies allow gets in.
        let pod = meshed_pod("web-0", "shop", "web", "web", &web.ip().to_string()).replace(
            "linkerd.io/control-plane-ns: weft }",
            "linkerd.io/control-plane-ns: weft }, annotations: { config.linkerd.io/default-inbound-policy: deny }",
        );
        let ports: Vec<String> = HTTP_PORTS
            .iter()
            .chain(&[7000, 50051])
            .map(|p| format!("{{ name: p{p}, port: {p}, targetPort: {p} }}"))
            .collect();
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  clusterIP: {}\n  selector: {{ app: web }}\n  ports: [{}]\n---\n{pod}",
            net.address(200),
            ports.join(", ")
        );
        std::fs::write(ca.store().join("web.yaml"), svc).unwrap();
        std::fs::write(ca.store().join("policy.yaml"), policies(&plain.ip(), &["alice"])).unwrap();

        let controller_addr = SocketAddr::from((control.ip(), 8086));
        let rt = control.new_runtime();
        let bind = rt.spawn(async move { tokio::net::TcpListener::bind(controller_addr).await.unwrap() });
        let listener = rt.block_on(bind).unwrap();
        rt.block_on(async { ca.serve(listener, Duration::from_secs(3600)) });

        for port in HTTP_PORTS {
            let (_, serve) = apps::http(web.listen(*port));
            web.spawn(serve);
        }
        let (_, grpc) = apps::grpc(web.listen(50051));
        web.spawn(grpc);
        let tcp_bytes = Arc::new(AtomicUsize::new(0));
        let listener = web.listen(7000);
        let counted = tcp_bytes.clone();
        web.spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counted.fetch_add(n, Ordering::SeqCst);
                        let _ = sock.write_all(&buf[..n]).await;
                    }
                });
            }
        });

        let proxy = |pod: &Pod, sa: &str, workload: &str| {
            let mut env = ca.proxy_env("shop", sa, controller_addr);
            env.push(("LINKERD2_PROXY_DESTINATION_SVC_ADDR".into(), controller_addr.to_string()));
            env.push(("LINKERD2_PROXY_POLICY_WORKLOAD".into(), workload.into()));
            pod.start_proxy(support::PROXY.as_ref(), &env_refs(&env))
        };
        let proxies = vec![
            proxy(&web, "web", "shop:web-0"),
            proxy(&alice, "alice", "shop:alice"),
            proxy(&bob, "bob", "shop:bob"),
        ];
        Some(Cluster {
            _proxies: proxies,
            controller: Some(rt),
            web,
            alice,
            bob,
            plain,
            _control: control,
            net,
            ca,
            tcp_bytes,
        })
    }

    fn service(&self, port: u16) -> SocketAddr {
        (self.net.address(200), port).into()
    }

    /// A request from `pod`'s application: status and `l5d-proxy-error`.
    fn request(&self, pod: &Pod, method: Method, dst: SocketAddr, path: &str) -> (StatusCode, String) {
        let path = path.to_string();
        pod.block_on(async move {
            let sock = tokio::net::TcpStream::connect(dst).await.expect("connect");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.unwrap();
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "web.shop.svc.cluster.local")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let rsp = send.send_request(req).await.expect("a response");
            let error = rsp
                .headers()
                .get("l5d-proxy-error")
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .unwrap_or_default();
            let status = rsp.status();
            let _ = rsp.into_body().collect().await;
            (status, error)
        })
    }

    fn get(&self, pod: &Pod, port: u16, path: &str) -> StatusCode {
        self.request(pod, Method::GET, self.service(port), path).0
    }

    fn web_metrics(&self) -> String {
        self.web.metrics()
    }
}

/// The policies: port 8080 (HTTP), 50051 (gRPC) and 7000 (TCP) admit the
/// service accounts `admitted`; 8081 has routes (GET /public for everyone,
/// POST /admin for alice); 8082 admits the network of `plain` only; 8083
/// audits; 9000 has no Server (the pod's default, deny).
fn policies(plain: &Ipv4Addr, admitted: &[&str]) -> String {
    let server = |name: &str, port: u16, extra: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  podSelector: {{ matchLabels: {{ app: web }} }}\n  port: {port}\n{extra}---\n"
        )
    };
    let policy = |name: &str, target_kind: &str, target_group: &str, target: &str, authn: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  targetRef: {{ group: {target_group}, kind: {target_kind}, name: {target} }}\n  requiredAuthenticationRefs: [{authn}]\n---\n"
        )
    };
    let refs: Vec<String> =
        admitted.iter().map(|sa| format!("{{ kind: ServiceAccount, name: {sa} }}")).collect();
    let mut yaml = String::new();
    yaml += &format!(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {{ name: admitted, namespace: shop }}\nspec:\n  identityRefs: [{}]\n---\n",
        refs.join(", ")
    );
    let mesh = "{ group: policy.linkerd.io, kind: MeshTLSAuthentication, name: admitted }";
    for (name, port, protocol) in
        [("web-http", 8080, "HTTP/1"), ("web-grpc", 50051, "gRPC"), ("web-tcp", 7000, "opaque")]
    {
        yaml += &server(name, port, &format!("  proxyProtocol: {protocol}\n"));
        yaml += &policy(name, "Server", "policy.linkerd.io", name, mesh);
    }
    yaml += &server("web-routes", 8081, "");
    yaml += "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: { name: public, namespace: shop }\nspec:\n  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: web-routes }]\n  rules: [{ matches: [{ path: { type: PathPrefix, value: /public }, method: GET }] }]\n---\n";
    yaml += "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: { name: admin, namespace: shop }\nspec:\n  parentRefs: [{ group: policy.linkerd.io, kind: Server, name: web-routes }]\n  rules: [{ matches: [{ path: { type: Exact, value: /admin }, method: POST }] }]\n---\n";
    yaml += "apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: { name: everyone, namespace: shop }\nspec: { networks: [{ cidr: 0.0.0.0/0 }] }\n---\n";
    yaml += &policy(
        "public",
        "HTTPRoute",
        "policy.linkerd.io",
        "public",
        "{ group: policy.linkerd.io, kind: NetworkAuthentication, name: everyone }",
    );
    yaml +=
        &policy("admin", "HTTPRoute", "policy.linkerd.io", "admin", "{ kind: ServiceAccount, name: alice }");
    yaml += &server("web-net", 8082, "");
    yaml += &format!(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {{ name: plain, namespace: shop }}\nspec: {{ networks: [{{ cidr: {plain}/32 }}] }}\n---\n"
    );
    yaml += &policy(
        "web-net",
        "Server",
        "policy.linkerd.io",
        "web-net",
        "{ group: policy.linkerd.io, kind: NetworkAuthentication, name: plain }",
    );
    yaml += &server("web-audit", 8083, "  accessPolicy: audit\n");
    yaml += &server("web-live", 8084, "");
    yaml += &policy("web-live", "Server", "policy.linkerd.io", "web-live", mesh);
    yaml
}

/// Polls a condition other processes make true.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

#[test]
fn a_mesh_identity_admits_one_service_account_over_http_grpc_and_tcp() {
    let Some(c) = Cluster::start("pods_policy_identity") else { return };
    // HTTP.
    assert_eq!(c.get(&c.alice, 8080, "/"), StatusCode::OK);
    let (status, error) = c.request(&c.bob, Method::GET, c.service(8080), "/");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error.contains("not authorized"), "{error}");
    // Not meshed at all: no identity, no entry.
    let (status, _) = c.request(&c.plain, Method::GET, SocketAddr::from((c.web.ip(), 8080)), "/");
    assert_eq!(status, StatusCode::FORBIDDEN);

    // gRPC.
    let grpc = |pod: &Pod| {
        let dst = c.service(50051);
        pod.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{dst}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            client.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.map(|_| ())
        })
    };
    grpc(&c.alice).expect("alice's call");
    let denied = grpc(&c.bob).unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // Raw TCP: bob's bytes never reach the application.
    let echo = |pod: &Pod| {
        let dst = c.service(7000);
        pod.block_on(async move {
            let mut sock = tokio::net::TcpStream::connect(dst).await.unwrap();
            // Not an HTTP method's first byte: detected as TCP at once.
            sock.write_all(b"{ping}").await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                let mut chunk = [0u8; 16];
                while let Ok(n) = sock.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() >= 6 {
                        break;
                    }
                }
            })
            .await;
            buf
        })
    };
    assert_eq!(echo(&c.alice), b"{ping}");
    assert_eq!(c.tcp_bytes.load(Ordering::SeqCst), 6);
    assert_eq!(echo(&c.bob), b"", "bob got an answer");
    assert_eq!(c.tcp_bytes.load(Ordering::SeqCst), 6, "bob's bytes reached the application");

    let text = c.web_metrics();
    let alice = c.ca.identity("shop", "alice");
    let bob = c.ca.identity("shop", "bob");
    let allow = format!(
        r#"inbound_http_authz_allow_total{{target_addr="{}:8080",srv_group="policy.linkerd.io",srv_kind="server",srv_name="web-http",route_group="",route_kind="default",route_name="default",authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="web-http",tls="true",client_id="{alice}"}}"#,
        c.web.ip()
    );
    assert_eq!(metric(&text, &allow), Some(1.0), "{text}");
    let deny = format!(
        r#"inbound_http_authz_deny_total{{target_addr="{}:8080",srv_group="policy.linkerd.io",srv_kind="server",srv_name="web-http",route_group="",route_kind="default",route_name="default",tls="true",client_id="{bob}"}}"#,
        c.web.ip()
    );
    assert_eq!(metric(&text, &deny), Some(1.0), "{text}");
    let tcp_deny = format!(
        r#"inbound_tcp_authz_deny_total{{target_addr="{}:7000",srv_group="policy.linkerd.io",srv_kind="server",srv_name="web-tcp",tls="true",client_id="{bob}"}}"#,
        c.web.ip()
    );
    assert_eq!(metric(&text, &tcp_deny), Some(1.0), "{text}");
}

#[test]
fn routes_networks_defaults_and_audit() {
    let Some(c) = Cluster::start("pods_policy_routes") else { return };
    // Route-level: GET /public for everyone, POST /admin for alice only.
    assert_eq!(c.get(&c.bob, 8081, "/public/page"), StatusCode::OK);
    let plain_direct = SocketAddr::from((c.web.ip(), 8081));
    assert_eq!(c.request(&c.plain, Method::GET, plain_direct, "/public").0, StatusCode::OK);
    assert_eq!(c.request(&c.alice, Method::POST, c.service(8081), "/admin").0, StatusCode::OK);
    assert_eq!(c.request(&c.bob, Method::POST, c.service(8081), "/admin").0, StatusCode::FORBIDDEN);
    assert_eq!(c.request(&c.plain, Method::POST, plain_direct, "/admin").0, StatusCode::FORBIDDEN);
    // No route for it at all.
    assert_eq!(c.get(&c.alice, 8081, "/other"), StatusCode::NOT_FOUND);

    // A network: the unmeshed pod is in it, alice's pod is not.
    assert_eq!(c.request(&c.plain, Method::GET, SocketAddr::from((c.web.ip(), 8082)), "/").0, StatusCode::OK);
    assert_eq!(c.get(&c.alice, 8082, "/"), StatusCode::FORBIDDEN);

    // The pod's default, deny, on a port no Server covers.
    assert_eq!(c.get(&c.alice, 9000, "/"), StatusCode::FORBIDDEN);
    assert_eq!(
        c.request(&c.plain, Method::GET, SocketAddr::from((c.web.ip(), 9000)), "/").0,
        StatusCode::FORBIDDEN
    );

    // Audit: through, and counted as what it was.
    assert_eq!(c.get(&c.bob, 8083, "/"), StatusCode::OK);
    let text = c.web_metrics();
    let audited = text
        .lines()
        .find(|l| l.starts_with("inbound_http_authz_allow_total{") && l.contains(r#"srv_name="web-audit""#))
        .unwrap_or_else(|| panic!("no audit allow counted:\n{text}"));
    assert!(audited.contains(r#"authz_kind="default",authz_name="audit""#), "{audited}");
}

#[test]
fn a_policy_change_switches_the_verdict_under_load() {
    let Some(c) = Cluster::start("pods_policy_live") else { return };
    assert_eq!(c.get(&c.bob, 8084, "/"), StatusCode::FORBIDDEN);

    // Alice's load runs throughout; none of it may fail.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let dst = c.service(8084);
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        c.alice.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let ok = async {
                    let sock = tokio::net::TcpStream::connect(dst).await.ok()?;
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.ok()?;
                    tokio::spawn(conn);
                    let req =
                        Request::get("/").header("host", "web").body(Empty::<bytes::Bytes>::new()).ok()?;
                    let rsp = send.send_request(req).await.ok()?;
                    (rsp.status() == StatusCode::OK).then_some(())
                };
                if ok.await.is_none() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until("alice's load to start", Duration::from_secs(5), || sent.load(Ordering::SeqCst) > 20);

    // Bob is admitted too, from one write of the policy file.
    std::fs::write(c.ca.store().join("policy.yaml"), policies(&c.plain.ip(), &["alice", "bob"])).unwrap();
    let took = wait_until("bob to be admitted", Duration::from_secs(5), || {
        c.get(&c.bob, 8084, "/") == StatusCode::OK
    });
    let before = sent.load(Ordering::SeqCst);
    wait_until("more load after the change", Duration::from_secs(5), || {
        sent.load(Ordering::SeqCst) > before + 20
    });
    stop.store(true, Ordering::SeqCst);
    c.alice.block_on(load).unwrap();
    println!(
        "the new policy took effect in {took:?}; {} requests by alice, none failed",
        sent.load(Ordering::SeqCst)
    );
    assert!(took < Duration::from_secs(1), "the change took {took:?}");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "allowed requests failed while the policy changed");
}
