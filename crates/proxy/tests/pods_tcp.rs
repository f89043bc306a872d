//! Opaque TCP through two proxies in two pods: a protocol that is not HTTP
//! on a port where the proxy detects, a server that speaks first on an
//! opaque port and on a detected one, and half-close.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_test_support::apps;

#[test]
fn opaque_tcp_on_a_detected_port_with_half_close() {
    let Some(mesh) = Mesh::start("opaque_tcp_on_a_detected_port_with_half_close") else { return };
    mesh.server.spawn(apps::tcp_echo(mesh.server.listen(9000)));
    let dst = mesh.server_addr(9000);

    let sent: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let echoed = mesh.client.block_on({
        let sent = sent.clone();
        async move {
            let mut sock = tokio::net::TcpStream::connect(dst).await.unwrap();
            sock.write_all(&sent).await.unwrap();
            // Half-close: the echo server answers everything, then closes.
            sock.shutdown().await.unwrap();
            let mut echoed = Vec::new();
            sock.read_to_end(&mut echoed).await.unwrap();
            echoed
        }
    });
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the echo differs from what was sent");

    let dst_labels = format!(
        r#"direction="outbound",peer="dst",target_addr="{dst}",tls="no_identity",no_tls_reason="not_provided_by_service_discovery""#
    );
    await_metric(&mesh.client, &format!("tcp_open_total{{{dst_labels}}}"), 1.0);
    await_metric(&mesh.client, &format!(r#"tcp_close_total{{{dst_labels},errno=""}}"#), 1.0);
    await_metric(&mesh.client, &format!("tcp_write_bytes_total{{{dst_labels}}}"), sent.len() as f64);
    await_metric(&mesh.client, &format!("tcp_read_bytes_total{{{dst_labels}}}"), sent.len() as f64);
    // It was not taken for HTTP.
    assert!(!mesh.client.metrics().contains("request_total{"), "opaque bytes were counted as HTTP");
}

/// Reads a server's greeting without sending anything first.
async fn greeting(dst: std::net::SocketAddr, len: usize) -> Vec<u8> {
    let mut sock = tokio::net::TcpStream::connect(dst).await.unwrap();
    let mut buf = vec![0u8; len];
    sock.read_exact(&mut buf).await.unwrap();
    sock.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    sock.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    buf
}

#[test]
fn server_speaks_first_on_an_opaque_port() {
    let Some(mesh) = Mesh::start("server_speaks_first_on_an_opaque_port") else { return };
    const BANNER: &[u8] = b"5.7.44-mysql greeting\0";
    // 3306 is in the default opaque list: no detection, so no wait.
    mesh.server.spawn(apps::banner(mesh.server.listen(3306), BANNER));
    let dst = mesh.server_addr(3306);
    let got = mesh.client.block_on(async move {
        // Detection would hold the greeting for the 10s detect timeout.
        tokio::time::timeout(Duration::from_secs(5), greeting(dst, BANNER.len()))
            .await
            .expect("the greeting did not arrive: was the opaque port detected?")
    });
    assert_eq!(got, BANNER);
}

#[test]
fn server_speaks_first_on_a_detected_port_after_the_detect_timeout() {
    let env = [
        ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "200ms"),
        ("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "200ms"),
    ];
    let Some(mesh) =
        Mesh::start_with("server_speaks_first_on_a_detected_port_after_the_detect_timeout", &env, &env)
    else {
        return;
    };
    const BANNER: &[u8] = b"220 smtp.test ESMTP ready\r\n";
    mesh.server.spawn(apps::banner(mesh.server.listen(2525), BANNER));
    let dst = mesh.server_addr(2525);
    let got = mesh.client.block_on(async move {
        tokio::time::timeout(Duration::from_secs(10), greeting(dst, BANNER.len()))
            .await
            .expect("the greeting never arrived")
    });
    assert_eq!(got, BANNER);
}

#[test]
fn connect_tunnels_through_both_proxies() {
    let Some(mesh) = Mesh::start("connect_tunnels_through_both_proxies") else { return };
    let (_stats, serve) = apps::http(mesh.server.listen(8080));
    mesh.server.spawn(serve);
    let dst = mesh.server_addr(8080);
    mesh.client.block_on(async move {
        let mut sock = tokio::net::TcpStream::connect(dst).await.unwrap();
        sock.write_all(b"CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(sock.read(&mut byte).await.unwrap(), 1, "closed before the response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        sock.write_all(b"through the tunnel").await.unwrap();
        let mut echo = [0u8; 18];
        sock.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"through the tunnel");
    });
}

#[test]
fn tls_is_passed_through_untouched() {
    let Some(mesh) = Mesh::start("tls_is_passed_through_untouched") else { return };
    mesh.server.spawn(apps::tcp_echo(mesh.server.listen(8443)));
    let dst = mesh.server_addr(8443);
    // The start of a TLS 1.2/1.3 ClientHello record, then arbitrary bytes:
    // the proxies must forward them as they are, not terminate them.
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03];
    hello.extend((0..=255u8).cycle().take(4096));
    let echoed = mesh.client.block_on({
        let hello = hello.clone();
        async move {
            let mut sock = tokio::net::TcpStream::connect(dst).await.unwrap();
            sock.write_all(&hello).await.unwrap();
            sock.shutdown().await.unwrap();
            let mut echoed = Vec::new();
            sock.read_to_end(&mut echoed).await.unwrap();
            echoed
        }
    });
    assert!(echoed == hello, "the TLS bytes changed on the way");
    await_metric(
        &mesh.client,
        &format!(r#"tcp_open_total{{direction="outbound",peer="dst",target_addr="{dst}",tls="passthru"}}"#),
        1.0,
    );
}
