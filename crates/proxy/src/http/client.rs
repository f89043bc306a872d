//! Upstream HTTP clients: one per target endpoint and protocol, each with
//! its own keep-alive pool (HTTP/1) or multiplexed connection (HTTP/2), so
//! requests from many accepted connections share upstream connections.

use super::error::ConnectError;
use crate::{
    io::MeteredIo,
    metrics::{Direction, Metrics, Peer, TcpLabels, Tls},
};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

pub type HttpClient = Client<Connector, Incoming>;

#[derive(Copy, Clone, Debug, Hash, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Dials one endpoint, whatever the request's URI says: the URI carries the
/// authority the application asked for, the connector where it really goes.
#[derive(Clone)]
pub struct Connector {
    addr: SocketAddr,
    timeout: Duration,
    direction: Direction,
    metrics: Arc<Metrics>,
}

/// The clients of one direction, by endpoint and protocol.
pub struct Clients {
    direction: Direction,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    cache: Mutex<HashMap<(SocketAddr, Proto), Cached>>,
}

struct Cached {
    client: HttpClient,
    last_used: Instant,
}

/// A client unused for this long is dropped (its pooled connections have
/// long closed by then), so a proxy that meets many targets over its life
/// does not keep a client for each.
const CLIENT_IDLE: Duration = Duration::from_secs(300);

// === impl Clients ===

impl Clients {
    pub fn new(direction: Direction, connect_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self { direction, connect_timeout, metrics, cache: Default::default() }
    }

    pub fn get(&self, addr: SocketAddr, proto: Proto) -> HttpClient {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("client cache lock");
        if let Some(cached) = cache.get_mut(&(addr, proto)) {
            cached.last_used = now;
            return cached.client.clone();
        }
        // A new target: sweep out the clients no one has used lately.
        cache.retain(|_, c| now.duration_since(c.last_used) < CLIENT_IDLE);
        let client = {
            let connector = Connector {
                addr,
                timeout: self.connect_timeout,
                direction: self.direction,
                metrics: self.metrics.clone(),
            };
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                // The proxy must not replay a request the application
                // sent once; the application decides about retries.
                .retry_canceled_requests(false)
                .set_host(false);
            if proto == Proto::Http2 {
                builder
                    .http2_only(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .http2_keep_alive_timeout(Duration::from_secs(3))
                    .http2_adaptive_window(true);
            }
            builder.build(connector)
        };
        cache.insert((addr, proto), Cached { client: client.clone(), last_used: now });
        client
    }
}

// === impl Connector ===

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let Connector { addr, timeout, direction, metrics } = self.clone();
        Box::pin(async move {
            let stream = connect(addr, timeout).await?;
            let tls = match direction {
                Direction::Inbound => Tls::INBOUND_PLAIN,
                Direction::Outbound => Tls::OUTBOUND_PLAIN,
            };
            let labels = TcpLabels { direction, peer: Peer::Dst, target_addr: addr, tls, dst: None };
            Ok(TokioIo::new(Upstream(MeteredIo::new(stream, metrics.tcp(labels)))))
        })
    }
}

/// Opens a TCP connection to an endpoint within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(ConnectError::Refused { addr, kind: e.kind(), reason: e.to_string() }),
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
    }
}

/// An upstream connection, counted into the transport metrics.
pub struct Upstream(MeteredIo<TcpStream>);

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
