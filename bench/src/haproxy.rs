//! HAProxy as a sidecar pair, in HTTP mode, on the same ports behind the
//! same iptables redirection, one thread. HAProxy does not route by the
//! original destination here: the benchmark's topology is fixed, so each
//! side sends to the one peer it has, gRPC (by content type) to its port.

use std::net::Ipv4Addr;

use crate::envoy::TlsFiles;

/// The client side: 127.0.0.1:4140 to the server pod's ports (which the
/// server's rules redirect to its sidecar); with `tls`, mutual TLS 1.3 to
/// it, verifying its name.
pub fn client_config(server: Ipv4Addr, tls: Option<(&TlsFiles, &str)>) -> String {
    let (http, grpc) = match tls {
        None => (format!("{server}:8080"), format!("{server}:50051 proto h2")),
        Some((files, peer)) => {
            let ssl = format!(
                "ssl crt {} ca-file {} verify required verifyhost {peer} sni str({peer}) ssl-min-ver TLSv1.3",
                files.combined.display(),
                files.anchors.display()
            );
            (format!("{server}:8080 {ssl} alpn http/1.1"), format!("{server}:50051 {ssl} alpn h2"))
        }
    };
    config("127.0.0.1:4140", &http, &grpc, "")
}

/// The server side: :4143 to the application on loopback; with `tls`,
/// terminating mutual TLS 1.3 and admitting only the client's name.
pub fn server_config(tls: Option<(&TlsFiles, &str)>) -> String {
    let (bind, check) = match tls {
        None => ("0.0.0.0:4143".to_string(), String::new()),
        Some((files, peer)) => (
            format!(
                "0.0.0.0:4143 ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3 alpn h2,http/1.1",
                files.combined.display(),
                files.anchors.display()
            ),
            format!("    http-request deny unless {{ ssl_c_s_dn(CN) -m str {peer} }}\n"),
        ),
    };
    config(&bind, "127.0.0.1:8080", "127.0.0.1:50051 proto h2", &check)
}

fn config(bind: &str, http: &str, grpc: &str, check: &str) -> String {
    format!(
        r#"global
    nbthread 1
    maxconn 4000

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    option http-keep-alive

frontend ready
    bind 127.0.0.1:9902
    http-request return status 200 content-type text/plain string "ok"

frontend sidecar
    bind {bind}
{check}    use_backend grpc if {{ req.hdr(content-type) -m beg application/grpc }}
    default_backend http

backend http
    http-reuse always
    server app {http}

backend grpc
    http-reuse always
    server app {grpc}
"#
    )
}
