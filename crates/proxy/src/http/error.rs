//! Errors the proxy makes itself, and the answers they become: a 502 when
//! the connect fails, a 504 when it times out, with `l5d-proxy-error`; for
//! gRPC, a gRPC status instead.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use std::{net::SocketAddr, time::Duration};

pub const L5D_PROXY_ERROR: &str = "l5d-proxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("the request names no authority to route it by (no Host or :authority)")]
    NoAuthority,
    #[error("failed to resolve {authority}: {reason}")]
    Resolve { authority: String, reason: String },
    #[error("{addr} is this proxy's own listener; refusing to loop")]
    Loop { addr: SocketAddr },
    #[error("the upstream connection failed: {0}")]
    Upstream(String),
    #[error("{service} has no endpoints")]
    NoEndpoints { service: String },
    #[error("mesh TLS to {addr} ({identity}) failed: {reason}")]
    Tls { addr: SocketAddr, identity: String, reason: String },
    #[error("the client is not authorized for route {route} of server {server}")]
    Unauthorized { server: String, route: String },
    #[error("no route of server {server} matches the request")]
    NoRoute { server: String },
    #[error("no route of {service} matches the request")]
    NoOutboundRoute { service: String },
    #[error("the matching route of {service} has no backend to send the request to")]
    NoBackend { service: String },
    #[error("every endpoint of {service} is failing; the circuit is open")]
    CircuitOpen { service: String },
    #[error("request timed out after {timeout:?}")]
    RequestTimeout { timeout: Duration },
    #[error("response headers timed out after {timeout:?}")]
    ResponseTimeout { timeout: Duration },
}

impl ProxyError {
    /// A failed connect keeps its own error; a failure mid-request says
    /// what failed, with its causes.
    pub fn from_client(err: super::client::ClientError) -> Self {
        let err = match err {
            super::client::ClientError::Connect(connect) => return connect.into(),
            other => other,
        };
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            msg.push_str(": ");
            msg.push_str(&e.to_string());
            source = e.source();
        }
        ProxyError::Upstream(msg)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::ConnectTimeout { .. }
            | ProxyError::RequestTimeout { .. }
            | ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoAuthority => StatusCode::BAD_REQUEST,
            ProxyError::NoEndpoints { .. }
            | ProxyError::NoBackend { .. }
            | ProxyError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoOutboundRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized { .. } => StatusCode::FORBIDDEN,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `error` label on `response_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } => "connect",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::NoAuthority => "no_authority",
            ProxyError::Resolve { .. } => "resolve",
            ProxyError::Loop { .. } => "loop",
            ProxyError::Upstream(_) => "upstream",
            ProxyError::NoEndpoints { .. } => "no_endpoints",
            ProxyError::Tls { .. } => "tls",
            ProxyError::Unauthorized { .. } => "unauthorized",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::NoOutboundRoute { .. } => "no_route",
            ProxyError::NoBackend { .. } => "no_backend",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::RequestTimeout { .. } => "request_timeout",
            ProxyError::ResponseTimeout { .. } => "response_timeout",
        }
    }

    /// The `error` label of the route series (Linkerd's values).
    pub fn route_label(&self) -> &'static str {
        match self {
            ProxyError::RequestTimeout { .. } => "REQUEST_TIMEOUT",
            ProxyError::ResponseTimeout { .. } => "RESPONSE_HEADERS_TIMEOUT",
            ProxyError::NoEndpoints { .. }
            | ProxyError::NoBackend { .. }
            | ProxyError::CircuitOpen { .. } => "FAILFAST",
            _ => "UNEXPECTED",
        }
    }

    /// Whether another attempt could go better: the request never reached
    /// an application, or its answer did not come in time.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::Upstream(_)
                | ProxyError::Tls { .. }
                | ProxyError::ResponseTimeout { .. }
        )
    }

    pub fn grpc_code(&self) -> u32 {
        match self {
            ProxyError::ConnectTimeout { .. }
            | ProxyError::RequestTimeout { .. }
            | ProxyError::ResponseTimeout { .. } => 4, // DEADLINE_EXCEEDED
            ProxyError::NoAuthority => 3,         // INVALID_ARGUMENT
            ProxyError::Unauthorized { .. } => 7, // PERMISSION_DENIED
            ProxyError::NoRoute { .. } | ProxyError::NoOutboundRoute { .. } => 12, // UNIMPLEMENTED
            _ => 14,                              // UNAVAILABLE
        }
    }

    /// The answer the client gets in place of the one the proxy could not
    /// fetch.
    pub fn to_response(&self, grpc: bool) -> Response<Full<Bytes>> {
        let message = self.to_string();
        let header_value =
            HeaderValue::from_str(&printable(&message)).unwrap_or(HeaderValue::from_static("proxy error"));
        if grpc {
            // A trailers-only gRPC response: the status rides in the headers.
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", self.grpc_code())
                .header("grpc-message", percent_encode(&message))
                .header(L5D_PROXY_ERROR, header_value)
                .body(Full::default())
                .expect("a valid response");
        }
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "text/plain")
            .header(L5D_PROXY_ERROR, header_value)
            .body(Full::new(Bytes::from(message + "\n")))
            .expect("a valid response")
    }
}

/// What the connector fails with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} failed: {reason}")]
    Refused { addr: SocketAddr, kind: std::io::ErrorKind, reason: String },
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("mesh TLS to {addr} ({identity}) failed: {reason}")]
    Tls { addr: SocketAddr, identity: String, reason: String },
}

impl From<ConnectError> for ProxyError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Refused { addr, kind, reason } => {
                ProxyError::Connect { addr, source: std::io::Error::new(kind, reason) }
            }
            ConnectError::Timeout { addr, timeout } => ProxyError::ConnectTimeout { addr, timeout },
            ConnectError::Tls { addr, identity, reason } => ProxyError::Tls { addr, identity, reason },
        }
    }
}

fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_are_502_and_timeouts_504() {
        let addr = "10.0.0.1:80".parse().unwrap();
        let refused =
            ProxyError::Connect { addr, source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused) };
        let rsp = refused.to_response(false);
        assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
        let header = rsp.headers()[L5D_PROXY_ERROR].to_str().unwrap();
        assert!(header.starts_with("connect to 10.0.0.1:80 failed"), "{header}");

        let timeout = ProxyError::ConnectTimeout { addr, timeout: Duration::from_secs(1) };
        assert_eq!(timeout.to_response(false).status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn grpc_clients_get_a_grpc_status() {
        let addr = "10.0.0.1:80".parse().unwrap();
        let err =
            ProxyError::Connect { addr, source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused) };
        let rsp = err.to_response(true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()["content-type"], "application/grpc");
        let timeout = ProxyError::ConnectTimeout { addr, timeout: Duration::from_secs(1) };
        assert_eq!(timeout.to_response(true).headers()["grpc-status"], "4");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
    }
}
