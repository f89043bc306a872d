//! Upstream HTTP clients: one per target endpoint and protocol, each with
//! its own keep-alive pool (HTTP/1) or multiplexed connection (HTTP/2), so
//! requests from many accepted connections share upstream connections.

use super::error::ConnectError;
use crate::{
    io::MeteredIo,
    metrics::{Direction, Metrics, Peer, TcpLabels, Tls},
};
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

pub type HttpClient = Client<Connector, super::body::RequestBody>;

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
    /// Mesh TLS to the identity the endpoint's proxy must present.
    tls: Option<(Arc<rustls::ClientConfig>, Arc<str>)>,
}

/// Where a client connects, how, and as whom the server must prove to be.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ClientKey {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// The server's mesh identity; `None` is plaintext.
    pub identity: Option<Arc<str>>,
}

/// The clients of one direction, by endpoint, protocol and identity.
pub struct Clients {
    direction: Direction,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Set when this proxy has a mesh identity (outbound).
    tls: Option<Arc<rustls::ClientConfig>>,
    cache: Mutex<HashMap<ClientKey, Cached>>,
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
    pub fn new(
        direction: Direction,
        connect_timeout: Duration,
        metrics: Arc<Metrics>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self { direction, connect_timeout, metrics, tls, cache: Default::default() }
    }

    /// Whether connections to meshed endpoints are mesh TLS.
    pub fn meshed(&self) -> bool {
        self.tls.is_some()
    }

    pub fn get(&self, addr: SocketAddr, proto: Proto) -> HttpClient {
        self.get_key(ClientKey { addr, proto, identity: None })
    }

    pub fn get_key(&self, key: ClientKey) -> HttpClient {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("client cache lock");
        if let Some(cached) = cache.get_mut(&key) {
            cached.last_used = now;
            return cached.client.clone();
        }
        // A new target: sweep out the clients no one has used lately.
        cache.retain(|_, c| now.duration_since(c.last_used) < CLIENT_IDLE);
        let client = {
            let connector = Connector {
                addr: key.addr,
                timeout: self.connect_timeout,
                direction: self.direction,
                metrics: self.metrics.clone(),
                tls: self.tls.clone().zip(key.identity.clone()),
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
            if key.proto == Proto::Http2 {
                builder
                    .http2_only(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .http2_keep_alive_timeout(Duration::from_secs(3))
                    .http2_adaptive_window(true);
            }
            builder.build(connector)
        };
        cache.insert(key, Cached { client: client.clone(), last_used: now });
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
        let Connector { addr, timeout, direction, metrics, tls } = self.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let stream = connect(addr, timeout).await?;
            let label = match (&tls, direction) {
                (Some((_, id)), _) => Tls::Mesh(Some(id.clone())),
                (None, Direction::Inbound) => Tls::INBOUND_PLAIN,
                (None, Direction::Outbound) => Tls::OUTBOUND_PLAIN,
            };
            let labels = TcpLabels { direction, peer: Peer::Dst, target_addr: addr, tls: label, dst: None };
            let stream = MeteredIo::new(stream, metrics.tcp(labels));
            let Some((config, identity)) = tls else {
                return Ok(TokioIo::new(Upstream::Plain(stream)));
            };
            // The handshake shares the connect timeout.
            let stream = tokio::time::timeout_at(started + timeout, mesh_tls(stream, config, &identity))
                .await
                .map_err(|_| ConnectError::Timeout { addr, timeout })?
                .map_err(|reason| ConnectError::Tls { addr, identity: identity.to_string(), reason })?;
            Ok(TokioIo::new(Upstream::Tls(Box::new(stream))))
        })
    }
}

/// Originates mesh TLS over `io`, requiring the server to prove `identity`.
pub async fn mesh_tls<I>(
    io: I,
    config: Arc<rustls::ClientConfig>,
    identity: &str,
) -> Result<tokio_rustls::client::TlsStream<I>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = rustls_pki_types::ServerName::try_from(identity.to_string())
        .map_err(|e| format!("{identity:?} is not a DNS-like identity: {e}"))?;
    tokio_rustls::TlsConnector::from(config).connect(name, io).await.map_err(|e| e.to_string())
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

/// An upstream connection, counted into the transport metrics: plaintext,
/// or mesh TLS over the counted TCP stream.
pub enum Upstream {
    Plain(MeteredIo<TcpStream>),
    Tls(Box<tokio_rustls::client::TlsStream<MeteredIo<TcpStream>>>),
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

macro_rules! each {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Upstream::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Upstream::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each!(self, io => io.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(io) => io.is_write_vectored(),
            Upstream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, io => io.poll_shutdown(cx))
    }
}
