//! HAProxy as a sidecar pair, in HTTP mode, on the same ports behind the
//! same iptables redirection, one thread. HAProxy does not route by the
//! original destination here: the benchmark's topology is fixed, so each
//! side sends to the one peer it has, gRPC (by content type) to its port.

use std::net::Ipv4Addr;

/// The client side: 127.0.0.1:4140 to the server pod's ports (which the
/// server's rules redirect to its sidecar).
pub fn client_config(server: Ipv4Addr) -> String {
    config("127.0.0.1:4140", &format!("{server}:8080"), &format!("{server}:50051"))
}

/// The server side: :4143 to the application on loopback.
pub fn server_config() -> String {
    config("0.0.0.0:4143", "127.0.0.1:8080", "127.0.0.1:50051")
}

fn config(bind: &str, http: &str, grpc: &str) -> String {
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
    use_backend grpc if {{ req.hdr(content-type) -m beg application/grpc }}
    default_backend http

backend http
    http-reuse always
    server app {http}

backend grpc
    http-reuse always
    server app {grpc} proto h2
"#
    )
}
