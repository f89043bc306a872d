//! A client pod and a server pod, each with weft-proxy beside its app.

#![allow(dead_code)] // Each test binary uses part of it.

pub mod cluster;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, time::Duration};
use weft_test_support::{Net, Pod, ProxyProcess};

pub const PROXY: &str = env!("CARGO_BIN_EXE_weft-proxy");

/// Fields drop in order: proxies, then pods, then the network.
pub struct Mesh {
    pub client_proxy: ProxyProcess,
    pub server_proxy: ProxyProcess,
    pub client: Pod,
    pub server: Pod,
    pub net: Net,
}

impl Mesh {
    /// Two pods with proxies, or `None` where the machine cannot make pods
    /// (the test then says it did not run).
    pub fn start(test: &str) -> Option<Mesh> {
        Self::start_with(test, &[], &[])
    }

    pub fn start_with(test: &str, client_env: &[(&str, &str)], server_env: &[(&str, &str)]) -> Option<Mesh> {
        let net = Net::for_test(test)?;
        let client = net.pod("client");
        let server = net.pod("server");
        let client_proxy = client.start_proxy(PROXY.as_ref(), client_env);
        let server_proxy = server.start_proxy(PROXY.as_ref(), server_env);
        Some(Mesh { client_proxy, server_proxy, client, server, net })
    }

    pub fn server_addr(&self, port: u16) -> SocketAddr {
        (self.server.ip(), port).into()
    }
}

/// The value of one series, matched on its whole name and label set.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the pod's proxy reports `series` at `value`.
pub fn await_metric(pod: &Pod, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = pod.metrics();
        if metric(&text, series) == Some(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {:?}, not {value}, in pod {}:\n{text}",
            metric(&text, series),
            pod.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Labels weft-proxy puts on plaintext HTTP series.
pub fn outbound_labels(authority: &str, target: SocketAddr) -> String {
    format!(
        r#"direction="outbound",authority="{authority}",target_addr="{target}",tls="no_identity",no_tls_reason="not_provided_by_service_discovery""#
    )
}

pub fn inbound_labels(authority: &str, target: SocketAddr) -> String {
    format!(
        r#"direction="inbound",authority="{authority}",target_addr="{target}",tls="no_identity",no_tls_reason="no_tls_from_remote""#
    )
}

/// One HTTP/1 GET on a fresh connection: status, headers and body.
pub async fn get(dst: SocketAddr, host: &str, path: &str) -> http::Response<Bytes> {
    let sock = tokio::net::TcpStream::connect(dst).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(Empty::<Bytes>::new()).unwrap();
    let rsp = send.send_request(req).await.expect("a response");
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    http::Response::from_parts(parts, body)
}
