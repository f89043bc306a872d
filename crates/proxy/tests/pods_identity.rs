//! Mesh TLS on the wire: a client pod and a server pod, each with
//! weft-proxy and proxy-init's rules, certified by the controller's CA in a
//! third pod; a packet capture on the bridge shows what crosses it.

mod support;

use std::{net::SocketAddr, time::Duration};
use support::metric;
use weft_test_support::mesh_ca::{TestCa, env_refs, meshed_pod};
use weft_test_support::{Capture, Net, Pod, ProxyProcess, apps};

const CANARY: &str = "x-weft-canary: plaintext-canary-4711";

/// Fields drop in order: proxies and controller first, then pods, then
/// the network and the CA's directory.
struct Cluster {
    _proxies: Vec<ProxyProcess>,
    controller: Option<tokio::runtime::Runtime>,
    client: Pod,
    server: Pod,
    _control: Pod,
    net: Net,
    ca: TestCa,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.controller.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Cluster {
    fn start(test: &str) -> Option<Cluster> {
        let net = Net::for_test(test)?;
        let ca = TestCa::new(test);
        let control = net.pod("control");
        let client = net.pod("client");
        let server = net.pod("server");
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  clusterIP: {}\n  selector: {{ app: web }}\n  ports: [{{ port: 80, targetPort: 8080 }}]\n---\n{}",
            net.address(200),
            meshed_pod("web-0", "shop", "web", "web", &server.ip().to_string())
        );
        std::fs::write(ca.store().join("shop.yaml"), svc).unwrap();

        let controller_addr = SocketAddr::from((control.ip(), 8086));
        let rt = control.new_runtime();
        // Bound on one of the runtime's threads, which live in the pod.
        let bind = rt.spawn(async move { tokio::net::TcpListener::bind(controller_addr).await.unwrap() });
        let listener = rt.block_on(bind).unwrap();
        rt.block_on(async { ca.serve(listener, Duration::from_secs(3600)) });

        let server_env = ca.proxy_env("shop", "web", controller_addr);
        let server_proxy = server.start_proxy(support::PROXY.as_ref(), &env_refs(&server_env));
        let mut client_env = ca.proxy_env("shop", "client", controller_addr);
        client_env.push(("LINKERD2_PROXY_DESTINATION_SVC_ADDR".into(), controller_addr.to_string()));
        client_env.push(("LINKERD2_PROXY_POLICY_WORKLOAD".into(), "shop:client".into()));
        let client_proxy = client.start_proxy(support::PROXY.as_ref(), &env_refs(&client_env));
        Some(Cluster {
            _proxies: vec![client_proxy, server_proxy],
            controller: Some(rt),
            client,
            server,
            _control: control,
            net,
            ca,
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn traffic_between_meshed_pods_is_tls_on_the_wire() {
    let Some(cluster) = Cluster::start("pods_identity_wire") else { return };
    let (_, serve) = apps::http(cluster.server.listen(8080));
    cluster.server.spawn(serve);

    // Everything between the client pod and the server pod, as it leaves
    // and enters the client pod.
    let filter = format!("host {}", cluster.server.ip());
    let capture = Capture::start(&cluster.client, "identity-wire", &filter);
    let service = SocketAddr::from((cluster.net.address(200), 80));
    let (name, value) = CANARY.split_once(": ").unwrap();
    for _ in 0..10 {
        let rsp = cluster.client.block_on(async move {
            let sock = tokio::net::TcpStream::connect(service).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/headers")
                .header("host", "web.shop.svc.cluster.local")
                .header(name, value)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let rsp = send.send_request(req).await.unwrap();
            let status = rsp.status();
            let body = http_body_util::BodyExt::collect(rsp.into_body()).await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        });
        assert_eq!(rsp.0, 200);
        // The server's application got the canary, and the client's name.
        assert!(rsp.1.contains(CANARY), "{}", rsp.1);
        assert!(
            rsp.1.contains(&format!("l5d-client-id: {}", cluster.ca.identity("shop", "client"))),
            "{}",
            rsp.1
        );
    }
    let pcap = capture.stop();

    // Packets were captured (the filter saw the traffic), they carry TLS
    // 1.3 records (handshake 0x16 and application data 0x17, version
    // 0x0303), and none of the plaintext: not the canary, not a request
    // line, not a response line.
    assert!(pcap.len() > 2_000, "the capture is nearly empty ({} bytes)", pcap.len());
    assert!(contains(&pcap, &[0x16, 0x03, 0x01]) || contains(&pcap, &[0x16, 0x03, 0x03]), "no TLS handshake");
    assert!(contains(&pcap, &[0x17, 0x03, 0x03]), "no TLS application data");
    for plaintext in [CANARY.as_bytes(), b"plaintext-canary", b"GET /headers", b"HTTP/1.1", b"PRI * HTTP/2.0"]
    {
        assert!(
            !contains(&pcap, plaintext),
            "{:?} crossed the wire in plaintext",
            String::from_utf8_lossy(plaintext)
        );
    }

    let text = cluster.server.metrics();
    let series = format!(
        r#"request_total{{direction="inbound",authority="web.shop.svc.cluster.local",target_addr="{}:8080",tls="true",client_id="{}"}}"#,
        cluster.server.ip(),
        cluster.ca.identity("shop", "client")
    );
    assert_eq!(metric(&text, &series), Some(10.0), "{text}");
}
