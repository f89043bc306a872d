//! Upstream HTTP clients: one per target endpoint and protocol, each with
//! its own keep-alive pool (HTTP/1) or multiplexed connection (HTTP/2), so
//! requests from many accepted connections share upstream connections.

use super::{
    body::{RequestBody, UpstreamBody},
    error::ConnectError,
    h2::Connection as H2Connection,
};
use crate::{
    config::ConnectConfig,
    io::MeteredIo,
    metrics::{Direction, Metrics, Peer, TcpLabels, Tls},
};
use http::{Method, Request, Response, Uri, Version, uri::Parts};
use hyper::client::conn;
use hyper_util::rt::TokioIo;
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

#[derive(Copy, Clone, Debug, Hash, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Where a client connects, how, and as whom the server must prove to be.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientKey {
    addr: SocketAddr,
    proto: Proto,
    /// The server's mesh identity; `None` is plaintext.
    identity: Option<Arc<str>>,
}

/// Hashes the address and protocol only: an endpoint has one identity, so
/// they tell keys apart as well, and a routed request looks its client up
/// each time without hashing a long identity name (equal keys still hash
/// alike; the identity is compared on a match).
impl std::hash::Hash for ClientKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.proto.hash(state);
    }
}

/// The clients of one direction, by endpoint, protocol and identity.
pub struct Clients {
    direction: Direction,
    connect: ConnectConfig,
    metrics: Arc<Metrics>,
    /// Set when this proxy has a mesh identity (outbound).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTP/1 connections to one meshed endpoint before further concurrent
    /// HTTP/1 requests to it ride HTTP/2 (see [`Clients::for_endpoint`]).
    mesh_http1: usize,
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

/// A pooled HTTP/2 connection unused for this long is closed (HTTP/1 ones
/// at [`H1_REUSE_IDLE`]).
const POOL_IDLE: Duration = Duration::from_secs(60);

/// An idle HTTP/1 connection is not taken for a request once it has been
/// unused this long: weft's inbound closes keep-alive connections idle for
/// 60 s by default (its header read timeout runs between requests), and a request
/// written as the server closes would fail.
const H1_REUSE_IDLE: Duration = Duration::from_secs(50);

/// A server may close a keep-alive connection it finds idle just as a
/// request goes out on it (Node.js closes them after 5 s by default, Apache
/// httpd after 5 s): the request fails though the server never saw it. A
/// request that is safe to send twice (idempotent, no body) taken by a
/// connection idle at least this long is kept, and sent once more on a new
/// connection if the old one closes under it. Busier connections never pay
/// for the copy.
const H1_RESEND_IDLE: Duration = Duration::from_secs(1);

/// At most this many idle HTTP/1 connections are kept per endpoint.
const POOL_MAX: usize = 64;

/// HTTP/1 connections to one meshed endpoint before further concurrent
/// HTTP/1 requests share its proxy's HTTP/2 connection.
pub const DEFAULT_MESH_HTTP1_CONNECTIONS: usize = 32;

// === impl Clients ===

impl Clients {
    pub fn new(
        direction: Direction,
        connect: ConnectConfig,
        metrics: Arc<Metrics>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let mesh_http1 = DEFAULT_MESH_HTTP1_CONNECTIONS;
        Self { direction, connect, metrics, tls, mesh_http1, cache: Default::default() }
    }

    /// Sets how many HTTP/1 connections one meshed endpoint gets before
    /// HTTP/1 requests to it ride HTTP/2 (0: always, as linkerd2-proxy does).
    pub fn with_mesh_http1(mut self, connections: usize) -> Self {
        self.mesh_http1 = connections;
        self
    }

    /// Whether connections to meshed endpoints are mesh TLS.
    pub fn meshed(&self) -> bool {
        self.tls.is_some()
    }

    pub fn get(&self, addr: SocketAddr, proto: Proto) -> HttpClient {
        self.get_key(ClientKey { addr, proto, identity: None })
    }

    /// The client for a request of `proto` to the endpoint at `addr`, with
    /// mesh TLS when the endpoint has an `identity` (and this proxy one of
    /// its own), and whether an HTTP/1 request rides HTTP/2 there.
    ///
    /// HTTP/1 to a meshed endpoint stays HTTP/1 over mesh TLS while the
    /// endpoint has an idle connection or fewer than `mesh_http1` of them:
    /// hyper's HTTP/1 takes about a third fewer instructions per request at
    /// each proxy than HTTP/1 carried over HTTP/2, and less latency
    /// (docs/bench.md). Past that, when `h2_allowed` (the endpoint's proxy
    /// takes HTTP/2, from discovery's protocol hint, and the request is no
    /// upgrade), requests share one HTTP/2 connection (marked
    /// `l5d-orig-proto`, as Linkerd does) rather than open more.
    pub fn for_endpoint(
        &self,
        addr: SocketAddr,
        proto: Proto,
        identity: Option<&Arc<str>>,
        h2_allowed: bool,
    ) -> (HttpClient, bool) {
        let identity = identity.filter(|_| self.meshed());
        let client = self.get_key(ClientKey { addr, proto, identity: identity.cloned() });
        let meshed_http1 = identity.is_some() && proto == Proto::Http1;
        if meshed_http1 && h2_allowed && !client.pool.h1_has_room(self.mesh_http1) {
            let identity = identity.cloned();
            return (self.get_key(ClientKey { addr, proto: Proto::Http2, identity }), true);
        }
        (client, false)
    }

    fn get_key(&self, key: ClientKey) -> HttpClient {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("client cache lock");
        if let Some(cached) = cache.get_mut(&key) {
            cached.last_used = now;
            return cached.client.clone();
        }
        // A new target: sweep out the clients no one has used lately.
        cache.retain(|_, c| now.duration_since(c.last_used) < CLIENT_IDLE);
        let connector = Connector {
            addr: key.addr,
            connect: self.connect,
            direction: self.direction,
            metrics: self.metrics.clone(),
            tls: self.tls.clone().zip(key.identity.clone()),
        };
        let client = HttpClient::new(connector, key.proto);
        cache.insert(key, Cached { client: client.clone(), last_used: now });
        client
    }
}

// === impl HttpClient ===

/// The upstream client of one endpoint: a pool of HTTP/1 connections, or
/// one multiplexed HTTP/2 connection, over hyper's connection API.
///
/// Written here rather than taken from hyper-util's pooled client, which
/// serves any authority and so hashes the request's authority byte by
/// byte into a shared map on every checkout and checkin, and spawns a task
/// per HTTP/1 request to wait for the connection to come back: together a
/// tenth of the proxy's instructions per request (docs/bench.md). A weft
/// client only ever talks to one endpoint, so its pool is a list.
#[derive(Clone)]
pub struct HttpClient {
    pool: Arc<Pool>,
}

struct Pool {
    connector: Connector,
    proto: Proto,
    state: Mutex<PoolState>,
    /// Held while an HTTP/2 connection is being opened, so concurrent
    /// requests share one connection instead of each opening their own.
    h2_connecting: tokio::sync::Mutex<()>,
    /// HTTP/1 connections open, idle or busy.
    h1_open: Arc<AtomicUsize>,
}

#[derive(Default)]
struct PoolState {
    /// HTTP/1: each connection's sender, most recently used last. A sender
    /// goes back in as soon as its request is written; it is ready for the
    /// next one when its response has been read to the end.
    h1: Vec<(conn::http1::SendRequest<RequestBody>, Instant)>,
    /// HTTP/2: the one shared connection.
    h2: Option<(H2Connection, Instant)>,
    sweeping: bool,
    /// HTTP/2: when the last connect failed, and why. Requests that were
    /// waiting on that connect get its error rather than each trying (and
    /// perhaps timing out) again in turn.
    h2_failed: Option<(Instant, ConnectError)>,
}

/// Why the upstream request failed: the connection could not be made, or
/// the exchange on it failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Http2(#[from] h2::Error),
    #[error("an HTTP/2 request cannot go to an HTTP/1 endpoint")]
    Version,
}

impl HttpClient {
    fn new(connector: Connector, proto: Proto) -> Self {
        let pool = Pool {
            connector,
            proto,
            state: Mutex::default(),
            h2_connecting: tokio::sync::Mutex::new(()),
            h1_open: Arc::default(),
        };
        Self { pool: Arc::new(pool) }
    }

    /// The protocol this client speaks to its endpoint.
    pub fn proto(&self) -> Proto {
        self.pool.proto
    }

    /// Sends `req` on a pooled connection, or a new one. The request is
    /// sent at most once: a connection that fails under it is an error,
    /// never a silent retry (the application, or a route's retry policy,
    /// decides about retries).
    ///
    /// Not an async fn: when a pooled connection is there (nearly every
    /// request), the request goes to it now, and the future only waits for
    /// the response. It then holds hyper's or h2's handle and nothing of
    /// the request (about 300 bytes rather than 800 for an async block,
    /// which keeps the request it gave away) inside the proxy's future,
    /// which the connection's service boxes, and hyper moves, per request.
    pub fn request(
        &self,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ClientError>> + Send + 'static {
        let pool = &self.pool;
        match pool.proto {
            Proto::Http1 if req.version() != Version::HTTP_2 => {
                request_form(&mut req);
                if let Some((mut sender, idle)) = pool.h1_idle() {
                    let again = if idle >= H1_RESEND_IDLE { resendable(&req) } else { None };
                    let sent = sender.send_request(req);
                    pool.h1_put(sender);
                    let again = again.map(|req| (req, pool.clone()));
                    return Sending::Http1 { sent, again };
                }
                // Boxed: connecting (and its TLS handshake) is the rare case.
                Sending::Other { other: Box::pin(pool.clone().h1_send_new(req)) }
            }
            Proto::Http1 => Sending::Other { other: Box::pin(std::future::ready(Err(ClientError::Version))) },
            Proto::Http2 => {
                let Some(connection) = pool.h2_shared() else {
                    return Sending::Other { other: Box::pin(pool.clone().h2_send_new(req)) };
                };
                match connection.send(req) {
                    Ok(response) => Sending::Http2 { response },
                    Err(refused) => match *refused {
                        // The connection had gone away with nothing of the
                        // request written: it goes once on a new one.
                        (_, Some(req)) => Sending::Other { other: Box::pin(pool.clone().h2_send_new(req)) },
                        (error, None) => Sending::Other { other: Box::pin(std::future::ready(Err(error))) },
                    },
                }
            }
        }
    }
}

type BoxResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, ClientError>> + Send + 'static>>;

pin_project_lite::pin_project! {
    /// [`HttpClient::request`]'s future: the wait for a response to a
    /// request already handed to a connection, or (rarely) a boxed future
    /// that connects first.
    #[project = SendingProj]
    enum Sending<H1, H2> {
        Http1 {
            #[pin]
            sent: H1,
            // A copy to send again on a new connection of the pool if
            // this one, idle a while, turns out to have closed under the
            // request.
            again: Option<(Box<Request<RequestBody>>, Arc<Pool>)>,
        },
        Http2 {
            #[pin]
            response: H2,
        },
        Other {
            other: BoxResponseFuture,
        },
    }
}

impl<H1, H2> Future for Sending<H1, H2>
where
    H1: Future<Output = hyper::Result<Response<hyper::body::Incoming>>>,
    H2: Future<Output = Result<Response<super::h2::H2Body>, ClientError>>,
{
    type Output = Result<Response<UpstreamBody>, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let resend = match self.as_mut().project() {
                SendingProj::Http1 { sent, again } => {
                    let error = match std::task::ready!(sent.poll(cx)) {
                        Ok(rsp) => return Poll::Ready(Ok(rsp.map(UpstreamBody::Http1))),
                        Err(error) => error,
                    };
                    match again.take() {
                        Some((again, pool)) if closed_under_request(&error) => {
                            let addr = pool.connector.addr;
                            tracing::debug!(%addr, %error, "an idle connection closed under a request; sending it on a new one");
                            Box::pin(pool.h1_send_new(*again))
                        }
                        _ => return Poll::Ready(Err(error.into())),
                    }
                }
                SendingProj::Http2 { response } => {
                    return response.poll(cx).map(|r| r.map(|rsp| rsp.map(UpstreamBody::Http2)));
                }
                SendingProj::Other { other } => return other.as_mut().poll(cx),
            };
            self.set(Sending::Other { other: resend });
        }
    }
}

// === impl Pool ===

impl Pool {
    /// Sends `req` on a new HTTP/1 connection, which then joins the pool.
    async fn h1_send_new(
        self: Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let mut sender = self.h1_connect().await?;
        let sent = sender.send_request(req);
        self.h1_put(sender);
        Ok(sent.await?.map(UpstreamBody::Http1))
    }

    /// Sends `req` on a new HTTP/2 connection: the shared one went away
    /// before it took the request.
    async fn h2_send_new(
        self: Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let connection = self.h2_connect().await?;
        let rsp = connection.send(req).map_err(|refused| refused.0)?.await?;
        Ok(rsp.map(UpstreamBody::Http2))
    }

    /// The most recently used HTTP/1 connection that is ready for a
    /// request, and how long it has been idle; closed ones are dropped on
    /// the way.
    fn h1_idle(&self) -> Option<(conn::http1::SendRequest<RequestBody>, Duration)> {
        let mut state = self.state.lock().expect("pool lock");
        let mut now = None;
        let mut i = state.h1.len();
        while i > 0 {
            i -= 1;
            let (sender, used) = &state.h1[i];
            if sender.is_closed() {
                state.h1.remove(i);
            } else if sender.is_ready() {
                let now = *now.get_or_insert_with(Instant::now);
                let idle = now.duration_since(*used);
                if idle < H1_REUSE_IDLE {
                    return Some((state.h1.remove(i).0, idle));
                }
                // Too long idle to trust: closed (dropping its sender).
                state.h1.remove(i);
            }
        }
        None
    }

    /// Whether an HTTP/1 request would find an idle connection, or may open
    /// one without the endpoint having more than `limit`. A hint, not a
    /// reservation: requests racing for the last idle one may open one more.
    fn h1_has_room(&self, limit: usize) -> bool {
        if self.h1_open.load(Ordering::Relaxed) < limit {
            return true;
        }
        limit > 0 && self.state.lock().expect("pool lock").h1.iter().any(|(s, _)| s.is_ready())
    }

    fn h1_put(self: &Arc<Self>, sender: conn::http1::SendRequest<RequestBody>) {
        let mut state = self.state.lock().expect("pool lock");
        state.h1.push((sender, Instant::now()));
        if state.h1.len() > POOL_MAX {
            // The limit is on idle connections: busy ones (more requests in
            // flight than the limit) stay, and the least recently used idle
            // ones past the limit go. Dropping a sender closes its connection.
            state.h1.retain(|(s, _)| !s.is_closed());
            let idle = state.h1.iter().filter(|(s, _)| s.is_ready()).count();
            let mut excess = idle.saturating_sub(POOL_MAX);
            state.h1.retain(|(s, _)| match excess > 0 && s.is_ready() {
                true => {
                    excess -= 1;
                    false
                }
                false => true,
            });
        }
        self.sweep_idle(&mut state);
    }

    async fn h1_connect(self: &Arc<Self>) -> Result<conn::http1::SendRequest<RequestBody>, ClientError> {
        // Counted from the connect on, so a burst of first requests sees
        // the connections already on their way.
        let open = Counted::new(self.h1_open.clone());
        let io = self.connector.connect().await?;
        let (sender, connection) = conn::http1::Builder::new().handshake(TokioIo::new(io)).await?;
        let addr = self.connector.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream HTTP/1 connection failed");
            }
            drop(open);
        });
        Ok(sender)
    }

    fn h2_shared(&self) -> Option<H2Connection> {
        let mut state = self.state.lock().expect("pool lock");
        let (sender, used) = state.h2.as_mut()?;
        if sender.is_closed() {
            state.h2 = None;
            return None;
        }
        *used = Instant::now();
        Some(sender.clone())
    }

    async fn h2_connect(self: &Arc<Self>) -> Result<H2Connection, ClientError> {
        let waiting_since = Instant::now();
        let _connecting = self.h2_connecting.lock().await;
        // Another request may have connected, or failed to, while this one
        // waited.
        if let Some(sender) = self.h2_shared() {
            return Ok(sender);
        }
        if let Some((at, error)) = &self.state.lock().expect("pool lock").h2_failed {
            if *at >= waiting_since {
                return Err(error.clone().into());
            }
        }
        let io = match self.connector.connect().await {
            Ok(io) => io,
            Err(error) => {
                self.state.lock().expect("pool lock").h2_failed = Some((Instant::now(), error.clone()));
                return Err(error.into());
            }
        };
        let connection = H2Connection::handshake(io, self.connector.addr).await?;
        let mut state = self.state.lock().expect("pool lock");
        state.h2 = Some((connection.clone(), Instant::now()));
        self.sweep_idle(&mut state);
        Ok(connection)
    }

    /// Starts, once, the task that closes connections left unused (HTTP/1
    /// for [`H1_REUSE_IDLE`], HTTP/2 for [`POOL_IDLE`]); it ends with the pool.
    fn sweep_idle(self: &Arc<Self>, state: &mut PoolState) {
        if state.sweeping {
            return;
        }
        state.sweeping = true;
        let pool: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(POOL_IDLE / 2);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                let mut state = pool.state.lock().expect("pool lock");
                // A busy HTTP/1 connection is not ready; it stays. An idle
                // one is closed once it is too old to be taken again.
                state.h1.retain(|(s, used)| match s.is_closed() {
                    true => false,
                    false => !s.is_ready() || now - *used < H1_REUSE_IDLE,
                });
                if state.h2.as_ref().is_some_and(|(s, used)| s.is_closed() || now - *used >= POOL_IDLE) {
                    // Streams still open on it finish before it closes.
                    state.h2 = None;
                }
            }
        });
    }
}

/// One in a count for as long as it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A copy of `req` to send again, when sending it twice is safe: an
/// idempotent method (RFC 9110 §9.2.2) and no body. Extensions are not
/// copied; an HTTP/1 client has no use for them.
///
/// Boxed: the copy is rare, and is kept across the request's await, where
/// an unboxed one would make every request's future larger.
fn resendable(req: &Request<RequestBody>) -> Option<Box<Request<RequestBody>>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent
        || !matches!(req.body(), RequestBody::Empty)
        || super::headers::wants_upgrade(req.headers())
    {
        return None;
    }
    let mut again = Request::new(RequestBody::Empty);
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(Box::new(again))
}

/// Whether an HTTP/1 exchange failed because the connection closed under
/// it (before a whole response), rather than because of what was sent.
fn closed_under_request(error: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), BrokenPipe | ConnectionAborted | ConnectionReset);
        }
        source = e.source();
    }
    false
}

/// HTTP/1 writes the request target in origin form (`/path?query`), or
/// authority form for CONNECT; the proxy's requests carry absolute URIs.
fn request_form(req: &mut Request<RequestBody>) {
    let uri = req.uri();
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    let form = if req.method() == Method::CONNECT {
        uri.authority().map(|a| Uri::from(a.clone()))
    } else {
        let mut parts = Parts::default();
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).ok()
    };
    *req.uri_mut() = form.unwrap_or_else(|| Uri::from_static("/"));
}

// === impl Connector ===

/// Dials one endpoint, whatever the request's URI says: the URI carries the
/// authority the application asked for, the connector where it really goes.
#[derive(Clone)]
pub struct Connector {
    addr: SocketAddr,
    connect: ConnectConfig,
    direction: Direction,
    metrics: Arc<Metrics>,
    /// Mesh TLS to the identity the endpoint's proxy must present.
    tls: Option<(Arc<rustls::ClientConfig>, Arc<str>)>,
}

impl Connector {
    async fn connect(&self) -> Result<Upstream, ConnectError> {
        let Connector { addr, connect: settings, direction, metrics, tls } = self;
        let (addr, timeout, direction) = (*addr, settings.timeout, *direction);
        let started = tokio::time::Instant::now();
        let stream = connect(addr, settings).await?;
        let label = match (tls, direction) {
            (Some((_, id)), _) => Tls::Mesh(Some(id.clone())),
            (None, Direction::Inbound) => Tls::INBOUND_PLAIN,
            (None, Direction::Outbound) => Tls::OUTBOUND_PLAIN,
        };
        let labels = TcpLabels { direction, peer: Peer::Dst, target_addr: addr, tls: label, dst: None };
        let stream = MeteredIo::new(stream, metrics.tcp(labels));
        let Some((config, identity)) = tls else {
            return Ok(Upstream::Plain(stream));
        };
        // The handshake shares the connect timeout.
        let stream = tokio::time::timeout_at(started + timeout, mesh_tls(stream, config.clone(), identity))
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })?
            .map_err(|reason| ConnectError::Tls { addr, identity: identity.to_string(), reason })?;
        Ok(Upstream::Tls(Box::new(stream)))
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

/// Opens a TCP connection to an endpoint within the configured timeout.
pub async fn connect(addr: SocketAddr, settings: &ConnectConfig) -> Result<TcpStream, ConnectError> {
    let timeout = settings.timeout;
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            crate::io::set_tcp_options(&stream, &settings.tcp);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioExecutor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn connect_within(timeout: Duration) -> ConnectConfig {
        ConnectConfig { timeout, tcp: Default::default() }
    }

    /// A local listener that counts the connections it accepts and hands
    /// each to `serve` (with how many came before it) on a task of its own.
    async fn counting_server<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream, usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, count.fetch_add(1, Ordering::SeqCst)));
            }
        });
        (addr, accepted)
    }

    /// A local server that counts the connections it accepts and answers
    /// with the request target: `/slow` after 200 ms, anything else at
    /// once; `/big` answers 1 MiB instead.
    async fn server(h2: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        counting_server(move |stream, _| async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let mut target = req.uri().to_string();
                if req.uri().path() == "/big" {
                    target = "x".repeat(1 << 20);
                }
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(target),
                )))
            });
            let io = TokioIo::new(stream);
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            }
        })
        .await
    }

    fn client(addr: SocketAddr, proto: Proto) -> HttpClient {
        Clients::new(Direction::Inbound, connect_within(Duration::from_secs(1)), Metrics::new(), None)
            .get(addr, proto)
    }

    fn get(path: &str, version: Version) -> Request<RequestBody> {
        Request::builder()
            .uri(format!("http://web.shop:8080{path}"))
            .version(version)
            .body(RequestBody::Empty)
            .unwrap()
    }

    async fn body(rsp: Response<UpstreamBody>) -> String {
        String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn http1_reuses_an_idle_connection_and_opens_more_under_concurrency() {
        let (addr, accepted) = server(false).await;
        let client = client(addr, Proto::Http1);
        for _ in 0..5 {
            let rsp = client.request(get("/a?b=1", Version::HTTP_11)).await.unwrap();
            // HTTP/1 writes origin form, whatever URI the proxy carries.
            assert_eq!(body(rsp).await, "/a?b=1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "sequential requests share one connection");

        let slow = (0..3).map(|_| client.request(get("/slow", Version::HTTP_11)));
        for rsp in futures_util::future::join_all(slow).await {
            assert_eq!(body(rsp.unwrap()).await, "/slow");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "concurrent requests take a connection each");
        // The pool now holds three idle connections; more requests open none.
        for _ in 0..5 {
            body(client.request(get("/", Version::HTTP_11)).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn http1_does_not_reuse_a_connection_idle_long_enough_for_its_server_to_close_it() {
        let (addr, accepted) = server(false).await;
        let client = client(addr, Proto::Http1);
        body(client.request(get("/", Version::HTTP_11)).await.unwrap()).await;
        // The connection ages past the limit.
        body(after_idle(&client, H1_REUSE_IDLE, get("/", Version::HTTP_11)).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a connection idle too long was reused");
        assert_eq!(client.pool.state.lock().unwrap().h1.len(), 1, "the old connection was kept");
    }

    /// An HTTP/1 server that answers the first request on each connection
    /// and closes the connection when the second arrives, unanswered: what
    /// a server that times out idle keep-alive connections does when a
    /// request crosses its close.
    async fn closing_server() -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn read_head(sock: &mut TcpStream) -> bool {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            true
        }
        counting_server(|mut sock, _| async move {
            if read_head(&mut sock).await {
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            }
            read_head(&mut sock).await;
        })
        .await
    }

    /// Sends `req` on `client`'s one pooled connection, made to look idle
    /// for `idle` first (once it is ready: its response read to the end).
    async fn after_idle(
        client: &HttpClient,
        idle: Duration,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        while !client.pool.state.lock().unwrap().h1.iter().all(|(s, _)| s.is_ready()) {
            tokio::task::yield_now().await;
        }
        for (_, used) in client.pool.state.lock().unwrap().h1.iter_mut() {
            *used -= idle;
        }
        client.request(req).await
    }

    #[tokio::test]
    async fn http1_sends_a_get_again_when_an_idle_connection_closes_under_it() {
        let (addr, accepted) = closing_server().await;
        let client = client(addr, Proto::Http1);
        assert_eq!(body(client.request(get("/", Version::HTTP_11)).await.unwrap()).await, "ok");
        let rsp = after_idle(&client, H1_RESEND_IDLE, get("/", Version::HTTP_11)).await.unwrap();
        assert_eq!(body(rsp).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the GET went again on a new connection");
    }

    #[tokio::test]
    async fn http1_does_not_send_again_a_post_or_from_a_busy_connection() {
        let (addr, accepted) = closing_server().await;
        let client = client(addr, Proto::Http1);
        body(client.request(get("/", Version::HTTP_11)).await.unwrap()).await;
        let mut post = get("/", Version::HTTP_11);
        *post.method_mut() = Method::POST;
        let error = after_idle(&client, H1_RESEND_IDLE, post).await.unwrap_err();
        assert!(matches!(&error, ClientError::Http(e) if closed_under_request(e)), "{error:?}");

        // A connection in use a moment ago: its server had no reason to
        // close it, so a failure there is the server's answer.
        body(client.request(get("/", Version::HTTP_11)).await.unwrap()).await;
        let error = after_idle(&client, Duration::ZERO, get("/", Version::HTTP_11)).await.unwrap_err();
        assert!(matches!(&error, ClientError::Http(e) if closed_under_request(e)), "{error:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "nothing was sent again");
    }

    #[tokio::test]
    async fn http1_keeps_more_connections_than_the_idle_limit_while_they_are_busy() {
        let (addr, accepted) = server(false).await;
        let client = client(addr, Proto::Http1);
        let n = POOL_MAX + 6;
        let slow = (0..n).map(|_| client.request(get("/slow", Version::HTTP_11)));
        for rsp in futures_util::future::join_all(slow).await {
            assert_eq!(body(rsp.unwrap()).await, "/slow");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), n);
        // None was dropped while busy...
        assert_eq!(client.pool.state.lock().unwrap().h1.len(), n);
        // ...and once idle, the next request reuses one and trims the idle
        // rest to the limit (its own, busy when it went back, stays too).
        body(client.request(get("/", Version::HTTP_11)).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), n);
        assert_eq!(client.pool.state.lock().unwrap().h1.len(), POOL_MAX + 1);
    }

    #[tokio::test]
    async fn http1_does_not_reuse_a_connection_whose_response_is_unread() {
        let (addr, accepted) = server(false).await;
        let client = client(addr, Proto::Http1);
        let first = client.request(get("/big", Version::HTTP_11)).await.unwrap();
        // The first response's body is still unread: its connection is busy.
        let second = client.request(get("/", Version::HTTP_11)).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(body(first).await.len(), 1 << 20);
        assert_eq!(body(second).await, "/");
    }

    #[tokio::test]
    async fn http2_multiplexes_concurrent_requests_on_one_connection() {
        let (addr, accepted) = server(true).await;
        let client = client(addr, Proto::Http2);
        let slow = (0..8).map(|_| client.request(get("/slow", Version::HTTP_2)));
        for rsp in futures_util::future::join_all(slow).await {
            assert_eq!(body(rsp.unwrap()).await, "http://web.shop:8080/slow");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection is opened, even when requests race");
    }

    #[tokio::test]
    async fn http2_a_request_refused_by_a_connection_going_away_goes_on_a_new_one() {
        // An h2 server whose first connection, once its first request is
        // in, says it is going away while that request is still open;
        // later connections answer every request.
        let (addr, accepted) = counting_server(|sock, before| async move {
            let mut conn = ::h2::server::handshake(sock).await.unwrap();
            let mut held = Vec::new();
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                if before == 0 {
                    conn.graceful_shutdown();
                    held.push(respond);
                    continue;
                }
                let rsp = Response::new(());
                let mut body = respond.send_response(rsp, false).unwrap();
                body.send_data(bytes::Bytes::from_static(b"new"), true).unwrap();
            }
        })
        .await;
        let client = client(addr, Proto::Http2);
        let held = tokio::spawn(client.request(get("/held", Version::HTTP_2)));
        // The first connection is up, its one stream open, and it has said
        // it is going away.
        loop {
            let going = client.pool.state.lock().unwrap().h2.as_ref().map(|(c, _)| !c.takes_streams());
            if going == Some(true) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let rsp = client.request(get("/next", Version::HTTP_2)).await.unwrap();
        assert_eq!(body(rsp).await, "new");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        held.abort();
    }

    #[tokio::test]
    async fn http2_requests_waiting_on_a_failing_connect_share_its_error() {
        // A listener that never accepts, its one-place backlog taken: the
        // kernel drops further SYNs, so connects time out.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let _queued = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client = Clients::new(
            Direction::Inbound,
            connect_within(Duration::from_millis(300)),
            Metrics::new(),
            None,
        )
        .get(addr, Proto::Http2);
        let started = Instant::now();
        let all = (0..20).map(|_| client.request(get("/", Version::HTTP_2)));
        for result in futures_util::future::join_all(all).await {
            assert!(matches!(result, Err(ClientError::Connect(_))), "{result:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waiters retried in turn: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client(addr, Proto::Http1).request(get("/", Version::HTTP_11)).await.unwrap_err();
        assert!(matches!(err, ClientError::Connect(ConnectError::Refused { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn a_closed_pooled_connection_is_not_used() {
        let (addr, accepted) = server(false).await;
        let client = client(addr, Proto::Http1);
        let mut req = get("/", Version::HTTP_11);
        req.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        body(client.request(req).await.unwrap()).await;
        body(client.request(get("/", Version::HTTP_11)).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
