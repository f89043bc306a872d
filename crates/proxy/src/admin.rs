//! The admin server: `/metrics`, `/ready`, `/live`, and `/shutdown` when
//! enabled (LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED), as linkerd2-proxy
//! serves them.

use crate::{drain::Drain, metrics::Metrics};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::net::TcpListener;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub shutdown_enabled: bool,
    pub drain: Drain,
    /// TCP options on accepted connections (the inbound listener's, as
    /// linkerd2-proxy's admin server takes).
    pub tcp: crate::config::TcpOptions,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            };
            crate::io::set_tcp_options(&sock, &self.tcp);
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(sock), svc);
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "admin connection failed");
                }
            });
        }
    }

    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => Response::builder()
                .header(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")
                .body(Full::new(Bytes::from(self.metrics.encode())))
                .expect("a valid response"),
            (&Method::GET, "/ready") => {
                if self.ready.load(Ordering::Acquire) && !self.drain.is_draining() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (_, "/shutdown") if !self.shutdown_enabled => text(
                StatusCode::NOT_FOUND,
                "the shutdown endpoint is off; set LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED=true\n",
            ),
            (&Method::POST, "/shutdown") => {
                // Only the pod itself may stop its proxy.
                if !peer.ip().is_loopback() {
                    return text(StatusCode::FORBIDDEN, "shutdown is only allowed from localhost\n");
                }
                tracing::info!("shutdown requested through the admin server");
                self.drain.start();
                text(StatusCode::OK, "shutdown\n")
            }
            (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid response")
}
