//! The proxy's shape: three listeners, and for each accepted connection,
//! accept → find the original destination → detect the protocol → proxy.

use crate::{
    admin::Admin,
    config::{Config, ListenerConfig, PortSet},
    detect::{self, Detected, Protocol},
    discovery::{Discovery, Resolution, ServiceRoute, TargetKey},
    drain::Drain,
    http::{ConnService, HttpProxy, client::Clients, client::Proto, h2, head_timeout::HeadTimeout},
    identity::Identity,
    io::{self, MeteredIo, PrefixedIo},
    metrics::{AuthzLabels, Direction, Metrics, Peer, TcpLabels, Tls},
    policy::{Client, Policies, ServerPolicy, Verdict, discover::PortPolicy},
    tcp,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("failed to listen on {name}={addr}: {source}")]
    Listen { name: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("{name}={addr:?} cannot be used to reach the controller: {source}")]
    Controller { name: &'static str, addr: String, source: tonic::transport::Error },
}

/// A proxy whose listeners are bound.
pub struct Proxy {
    config: Config,
    metrics: Arc<Metrics>,
    drain: Drain,
    inbound: TcpListener,
    outbound: TcpListener,
    admin: TcpListener,
    discovery: Option<Arc<Discovery>>,
    identity: Option<Arc<Identity>>,
    policies: Arc<Policies>,
    /// The control listener and the identity allowed to tap, when taps
    /// are served.
    tap: Option<(TcpListener, String)>,
    taps: Arc<crate::tap::Taps>,
}

/// One direction's listener and what its connections share.
struct Listener {
    direction: Direction,
    config: ListenerConfig,
    http: Arc<HttpProxy>,
    metrics: Arc<Metrics>,
    drain: Drain,
    /// Where inbound connections go when nothing redirected them.
    forward: Option<SocketAddr>,
    /// The controller's answers about outbound targets.
    discovery: Option<Arc<Discovery>>,
    /// Set inbound when the proxy has a mesh identity: TLS to it is
    /// terminated here.
    identity: Option<Arc<Identity>>,
    /// Inbound ports that take only clients with a mesh identity.
    require_identity: PortSet,
    /// Set outbound when the proxy has a mesh identity: connections to
    /// meshed endpoints are mesh TLS.
    mesh_tls: Option<Arc<rustls::ClientConfig>>,
    /// Inbound: each port's authorization policy.
    policies: Option<Arc<Policies>>,
}

/// What an inbound connection's verdicts need.
struct Inbound {
    /// The port's policy (inbound only).
    policy: Option<PortPolicy>,
    client: SocketAddr,
    /// The inbound target, for metrics.
    target: SocketAddr,
}

/// The client as a policy sees it.
pub(crate) fn client_of(addr: SocketAddr, tls: &Tls) -> Client<'_> {
    match tls {
        Tls::Mesh(id) => Client { ip: addr.ip(), tls: true, identity: id.as_deref() },
        _ => Client { ip: addr.ip(), tls: false, identity: None },
    }
}

// === impl Proxy ===

impl Proxy {
    pub async fn bind(config: Config) -> Result<Self, BindError> {
        use crate::config::*;
        let bind = |name: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| BindError::Listen { name, addr, source })
        };
        let identity = config.identity.clone().map(Identity::new);
        // The controller's APIs are reached over mesh TLS where their
        // names are given and this proxy has an identity to present.
        let control_tls = |name: &Option<String>| {
            identity.as_ref().zip(name.as_deref()).and_then(|(id, n)| id.control_tls(n))
        };
        let discovery = match &config.discovery {
            None => None,
            Some(d) => Some(
                Discovery::new(
                    (&d.destination_addr, control_tls(&d.destination_name)),
                    (&d.policy_addr, control_tls(&d.policy_name)),
                    d.workload.clone(),
                    d.idle_timeout,
                    config.outbound.connect.timeout.max(Duration::from_secs(1)),
                )
                .map_err(|source| BindError::Controller {
                    name: ENV_DESTINATION_SVC_ADDR,
                    addr: d.destination_addr.clone(),
                    source,
                })?,
            ),
        };
        // Inbound policy: from the controller where this proxy names its
        // workload, else the default policy for every port.
        let default_policy = ServerPolicy::default(&config.default_policy, &config.cluster_networks);
        let policy_client = match &config.discovery {
            Some(d) if !d.workload.is_empty() => {
                let timeout = config.outbound.connect.timeout.max(Duration::from_secs(1));
                let channel = crate::control::channel(&d.policy_addr, control_tls(&d.policy_name), timeout)
                    .map_err(|source| BindError::Controller {
                    name: ENV_POLICY_SVC_ADDR,
                    addr: d.policy_addr.clone(),
                    source,
                })?;
                Some((channel, d.workload.clone()))
            }
            _ => None,
        };
        let policies = Policies::new(policy_client, default_policy);
        // Taps are served only over mesh TLS, so only with an identity.
        let tap = match (&identity, &config.tap_name) {
            (Some(_), Some(name)) => {
                Some((bind(ENV_CONTROL_LISTEN_ADDR, config.control_addr).await?, name.clone()))
            }
            (None, Some(_)) => {
                tracing::warn!(
                    "{ENV_TAP_SVC_NAME} is set but identity is off: taps need mesh TLS; not serving them"
                );
                None
            }
            _ => None,
        };
        Ok(Self {
            tap,
            taps: Arc::default(),
            discovery,
            identity,
            policies,
            inbound: bind(ENV_INBOUND_LISTEN_ADDR, config.inbound.addr).await?,
            outbound: bind(ENV_OUTBOUND_LISTEN_ADDR, config.outbound.addr).await?,
            admin: bind(ENV_ADMIN_LISTEN_ADDR, config.admin_addr).await?,
            metrics: Metrics::new(),
            drain: Drain::new(),
            config,
        })
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound.local_addr().expect("a bound listener has an address")
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound.local_addr().expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves (SIGTERM) or the admin server's
    /// `/shutdown` is called, then drains for the grace period. Returns the
    /// number of connections that were still open when the grace ran out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let own_addrs = [self.inbound_addr(), self.outbound_addr(), self.admin_addr()];
        tracing::info!(
            inbound = %own_addrs[0], outbound = %own_addrs[1], admin = %own_addrs[2],
            "weft-proxy is listening"
        );
        let listener = |direction, config: &ListenerConfig, own_addr, forward| {
            let discovery = self.discovery.clone().filter(|_| direction == Direction::Outbound);
            // Outbound connections to meshed endpoints are mesh TLS.
            let mesh_tls = self
                .identity
                .as_ref()
                .filter(|_| direction == Direction::Outbound)
                .map(|id| id.client_tls.clone());
            Arc::new(Listener {
                direction,
                http: Arc::new(HttpProxy {
                    direction,
                    clients: Clients::new(direction, config.connect, self.metrics.clone(), mesh_tls.clone())
                        .with_mesh_http1(self.config.mesh_http1_connections),
                    metrics: self.metrics.clone(),
                    ingress_mode: direction == Direction::Outbound && self.config.ingress_mode,
                    own_addr,
                    drain: self.drain.clone(),
                    discovery: discovery.clone(),
                    taps: self.taps.clone(),
                }),
                discovery,
                identity: self.identity.clone().filter(|_| direction == Direction::Inbound),
                mesh_tls,
                policies: (direction == Direction::Inbound).then(|| self.policies.clone()),
                require_identity: match direction {
                    Direction::Inbound => self.config.require_identity_ports.clone(),
                    Direction::Outbound => PortSet::default(),
                },
                config: config.clone(),
                metrics: self.metrics.clone(),
                drain: self.drain.clone(),
                forward,
            })
        };
        let inbound =
            listener(Direction::Inbound, &self.config.inbound, own_addrs[0], self.config.inbound_forward);
        let outbound = listener(Direction::Outbound, &self.config.outbound, own_addrs[1], None);

        // With an identity, the proxy is ready once it is certified.
        let ready = Arc::new(AtomicBool::new(self.identity.is_none()));
        let identity_task = self.identity.clone().map(|identity| {
            let timeout = self.config.outbound.connect.timeout.max(Duration::from_secs(1));
            tokio::spawn(identity.run(ready.clone(), self.metrics.clone(), timeout))
        });
        let admin = Arc::new(Admin {
            metrics: self.metrics.clone(),
            ready,
            shutdown_enabled: self.config.shutdown_endpoint_enabled,
            drain: self.drain.clone(),
            tcp: self.config.inbound.accept,
        });
        let admin_task = tokio::spawn(admin.serve(self.admin));
        let tap_task = match (self.tap, &self.identity) {
            (Some((listener, name)), Some(identity)) => {
                tracing::info!(addr = ?listener.local_addr().ok(), tapper = %name, "serving taps");
                Some(tokio::spawn(crate::tap::serve(
                    listener,
                    self.taps.clone(),
                    identity.server_tls.clone(),
                    name,
                )))
            }
            _ => None,
        };
        let inbound_task = tokio::spawn(inbound.accept_loop(self.inbound));
        let outbound_task = tokio::spawn(outbound.accept_loop(self.outbound));

        tokio::select! {
            () = shutdown => tracing::info!("received a shutdown signal; draining"),
            () = self.drain.signaled() => {}
        }
        self.drain.start();
        let _ = tokio::join!(inbound_task, outbound_task);
        let grace = self.config.shutdown_grace_period;
        let left = self.drain.wait(grace).await;
        if left > 0 {
            tracing::warn!(connections = left, ?grace, "grace period over; closing the rest");
        }
        admin_task.abort();
        for task in [identity_task, tap_task].into_iter().flatten() {
            task.abort();
        }
        left
    }
}

/// What serves HTTP on one connection, once it is known to be HTTP.
type HttpPhase<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// hyper's HTTP/1 server connection, built here and boxed. Built inline,
/// its copies on the way (a few KiB each with a TLS stream inside) would
/// make the frame of `serve_http1`'s poll, which every request's poll
/// enters, 8.5 KiB with stack probes, where the boxed connection leaves
/// 2.5 KiB.
#[inline(never)]
fn http1_connection<I>(
    io: TokioIo<MeteredIo<I>>,
    svc: ConnService,
) -> Pin<Box<hyper::server::conn::http1::UpgradeableConnection<TokioIo<MeteredIo<I>>, ConnService>>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(
        hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(io, svc)
            .with_upgrades(),
    )
}

// === impl Listener ===

impl Listener {
    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = self.drain.signaled() => return,
            };
            match accepted {
                Ok((sock, client)) => {
                    let this = self.clone();
                    self.drain.spawn(async move {
                        // Two futures, each boxed and polled through its
                        // vtable: detection, TLS and the opaque paths in
                        // the first, HTTP in the second, which this task
                        // then polls itself. So no poll of an HTTP
                        // connection passes through the first's stack
                        // frame (10 KiB, for TLS and detection), and the
                        // HTTP/1 one holds only HTTP/1.
                        let accepted: Pin<Box<dyn Future<Output = Option<HttpPhase<'_>>> + Send + '_>> =
                            Box::pin(this.serve(sock, client));
                        if let Some(http) = accepted.await {
                            http.await;
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors, most likely: don't spin.
                    tracing::warn!(direction = ?self.direction, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves a connection, up to HTTP: what serves HTTP on it is given
    /// back, for the connection's task to run.
    async fn serve(&self, mut sock: TcpStream, client: SocketAddr) -> Option<HttpPhase<'_>> {
        let _ = sock.set_nodelay(true);
        io::set_tcp_options(&sock, &self.config.accept);
        let target = io::orig_dst(&sock).or(self.forward);
        let plain = match self.direction {
            Direction::Inbound => Tls::INBOUND_PLAIN,
            Direction::Outbound => Tls::OUTBOUND_PLAIN,
        };
        let local = sock.local_addr().unwrap_or(self.config.addr);
        let service = match (&self.discovery, target) {
            (Some(discovery), Some(t)) if !self.http.ingress_mode => {
                match discovery.resolve(TargetKey::Addr(t)).await {
                    Resolution::Service(service) => Some(service),
                    Resolution::Pending | Resolution::Forward => None,
                }
            }
            _ => None,
        };
        // Inbound ports that require a mesh identity take only mesh TLS.
        let requires_identity = self.direction == Direction::Inbound
            && self.require_identity.contains(target.unwrap_or(local).port());
        let policy = match &self.policies {
            Some(policies) => Some(policies.port(target.unwrap_or(local).port()).await),
            None => None,
        };
        let inbound = Inbound { policy, client, target: target.unwrap_or(local) };

        // Ports whose clients or servers speak first skip detection.
        let opaque = |t: &SocketAddr| {
            self.config.opaque_ports.contains(t.port()) || service.as_ref().is_some_and(|s| s.opaque)
        };
        if let Some(target) = target.filter(opaque).filter(|_| !requires_identity) {
            if self.authorize_tcp(&inbound, &plain) {
                let sock = self.metered(tcp::no_prefix(sock), target, plain.clone());
                self.forward_opaque(sock, target, plain, service.as_deref()).await;
            }
            return None;
        }

        let (detected, mut prefix) = match detect::detect(&mut sock, self.config.detect_timeout).await {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(%client, %error, "connection failed during detection");
                return None;
            }
        };
        // A ClientHello for this proxy's own name is mesh TLS to terminate;
        // any other TLS belongs to the application and passes through.
        if let (Detected::Protocol(Protocol::Tls), Some(identity)) = (detected, &self.identity) {
            let sni = detect::client_hello_sni(&mut sock, &mut prefix, self.config.detect_timeout).await;
            if sni.as_deref() == Some(identity.local_name()) {
                let io = PrefixedIo::new(prefix.freeze(), sock);
                return self.serve_mesh_tls(io, identity, target, &inbound, requires_identity).await;
            }
        }
        if requires_identity {
            tracing::info!(%client, port = target.unwrap_or(local).port(), "refused a client without a mesh identity");
            return None;
        }
        let io = self.metered(PrefixedIo::new(prefix.freeze(), sock), target.unwrap_or(local), plain.clone());
        self.serve_detected(io, detected, &inbound, target, service, plain).await
    }

    /// Terminates mesh TLS (inbound), then serves what the client speaks
    /// inside it, with the client's identity in metrics and headers.
    async fn serve_mesh_tls(
        &self,
        io: PrefixedIo<TcpStream>,
        identity: &Identity,
        target: Option<SocketAddr>,
        inbound: &Inbound,
        requires_identity: bool,
    ) -> Option<HttpPhase<'_>> {
        let client = inbound.client;
        let handshake = tokio_rustls::TlsAcceptor::from(identity.server_tls.clone()).accept(io);
        let mut stream = match tokio::time::timeout(self.config.detect_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::info!(%client, %error, "mesh TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::info!(%client, "mesh TLS handshake timed out");
                return None;
            }
        };
        let client_id = weft_identity::tls::peer_identity(stream.get_ref().1.peer_certificates());
        if requires_identity && client_id.is_none() {
            tracing::info!(%client, "refused a TLS client that presented no mesh identity");
            return None;
        }
        let tls = Tls::Mesh(client_id.map(Arc::from));
        let (detected, prefix) = match detect::detect(&mut stream, self.config.detect_timeout).await {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(%client, %error, "connection failed during detection");
                return None;
            }
        };
        let io = self.metered(PrefixedIo::new(prefix.freeze(), stream), inbound.target, tls.clone());
        self.serve_detected(io, detected, inbound, target, None, tls).await
    }

    /// The policy's verdict on a connection that is not HTTP (inbound),
    /// counted; `false` means close it.
    fn authorize_tcp(&self, inbound: &Inbound, tls: &Tls) -> bool {
        let Some(port) = &inbound.policy else { return true };
        let policy = port.current();
        let verdict = policy.authorize_tcp(&client_of(inbound.client, tls));
        let mut labels = AuthzLabels {
            target_addr: inbound.target,
            server: policy.meta.clone(),
            route: None,
            authz: None,
            tls: tls.clone(),
        };
        match verdict {
            Verdict::Allow { authz, audit } => {
                if audit {
                    tracing::info!(client = %inbound.client, server = %policy.meta.name, "audit: a connection the policy would deny");
                }
                labels.authz = Some(authz);
                self.metrics.authz_tcp(&labels);
                true
            }
            Verdict::Deny => {
                tracing::info!(client = %inbound.client, server = %policy.meta.name, "connection denied by policy");
                self.metrics.authz_tcp(&labels);
                false
            }
        }
    }

    /// Serves a detected connection: what serves it as HTTP is given back
    /// (not run here); anything else is forwarded here.
    async fn serve_detected<I>(
        &self,
        io: MeteredIo<I>,
        detected: Detected,
        inbound: &Inbound,
        target: Option<SocketAddr>,
        service: Option<Arc<ServiceRoute>>,
        tls: Tls,
    ) -> Option<HttpPhase<'_>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client = inbound.client;
        match detected {
            Detected::Protocol(Protocol::Http1) => {
                return Some(self.serve_http(io, Proto::Http1, target, service, tls, inbound));
            }
            Detected::Protocol(Protocol::H2) => {
                return Some(self.serve_http(io, Proto::Http2, target, service, tls, inbound));
            }
            Detected::Protocol(Protocol::Tls) => {
                // The application's own TLS: its client is not known to
                // the mesh.
                if let Some(target) = target.filter(|_| self.authorize_tcp(inbound, &tls)) {
                    self.forward_opaque(io, target, Tls::Passthru, service.as_deref()).await
                }
            }
            Detected::Protocol(Protocol::Opaque) | Detected::Timeout => match target {
                Some(target) => {
                    if self.authorize_tcp(inbound, &tls) {
                        self.forward_opaque(io, target, tls, service.as_deref()).await
                    }
                }
                None => tracing::info!(
                    direction = ?self.direction, %client,
                    "a non-HTTP connection has no original destination; closing it"
                ),
            },
            Detected::Empty => {}
        }
        None
    }

    fn metered<I>(&self, io: I, target: SocketAddr, tls: Tls) -> MeteredIo<I> {
        let labels =
            TcpLabels { direction: self.direction, peer: Peer::Src, target_addr: target, tls, dst: None };
        MeteredIo::new(io, self.metrics.tcp(labels))
    }

    /// Forwards a connection as TCP: to an endpoint of its service, picked
    /// per connection, or else to where it was going.
    async fn forward_opaque<I>(&self, io: I, target: SocketAddr, tls: Tls, service: Option<&ServiceRoute>)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let upstream = |addr, tls, dst, mesh| tcp::Upstream {
            addr,
            connect: self.config.connect,
            direction: self.direction,
            tls,
            dst,
            mesh,
        };
        let Some(service) = service else {
            return tcp::forward(io, upstream(target, tls, None, None), &self.metrics).await;
        };
        let Some(picked) = service.balancer.pick_within(service.failfast).await else {
            tracing::info!(service = %service.name, "no endpoints; closing the connection");
            return;
        };
        // `picked` counts the connection as in flight at its endpoint.
        let dst = Some(picked.labels().clone());
        // Mesh TLS where the endpoint has an identity, except on opaque
        // ports: the server's proxy does not look at those connections
        // (weft has no opaque transport yet), so they stay as they are.
        let mesh = match (&self.mesh_tls, &picked.meta().identity) {
            (Some(config), Some(id)) if !service.opaque => Some((config.clone(), id.clone())),
            _ => None,
        };
        tcp::forward(io, upstream(picked.addr(), tls, dst, mesh), &self.metrics).await;
        drop(picked);
    }

    /// What serves HTTP on a connection: a future of its own for each
    /// version, boxed (see `accept_loop`).
    fn serve_http<I>(
        &self,
        io: MeteredIo<I>,
        proto: Proto,
        target: Option<SocketAddr>,
        service: Option<Arc<ServiceRoute>>,
        tls: Tls,
        inbound: &Inbound,
    ) -> HttpPhase<'_>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let authz = inbound.policy.clone().map(|policy| (policy, inbound.client.ip()));
        let svc = ConnService::new(self.http.clone(), proto, target, service, tls, authz, inbound.client);
        let io = TokioIo::new(io);
        match proto {
            Proto::Http1 => Box::pin(self.serve_http1(io, svc)),
            Proto::Http2 => Box::pin(self.serve_http2(io, svc)),
        }
    }

    async fn serve_http1<I>(&self, io: TokioIo<MeteredIo<I>>, svc: ConnService)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // weft's own header read timeout, not hyper's (see head_timeout.rs).
        let head_timeout = HeadTimeout::new(self.config.header_read_timeout);
        let svc = svc.with_activity(head_timeout.as_ref().map(HeadTimeout::activity));
        let mut conn = http1_connection(io, svc);
        let expired = async {
            match &head_timeout {
                Some(timeout) => timeout.expired().await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            biased;
            res = self.until_drained(conn.as_mut(), |c| c.graceful_shutdown()) => res,
            () = expired => {
                tracing::debug!(direction = ?self.direction, "no request head within the header read timeout; closing");
                Ok(())
            }
        };
        self.http_closed(result);
    }

    async fn serve_http2<I>(&self, io: TokioIo<MeteredIo<I>>, svc: ConnService)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.config.http2_keep_alive.interval)
            .keep_alive_timeout(self.config.http2_keep_alive.timeout)
            .initial_stream_window_size(h2::STREAM_WINDOW)
            .initial_connection_window_size(h2::CONNECTION_WINDOW)
            .serve_connection(io, svc);
        let result = self.until_drained(std::pin::pin!(conn), |c| c.graceful_shutdown()).await;
        self.http_closed(result);
    }

    /// Runs a server connection to its end; once the proxy drains, `shutdown`
    /// tells it to finish what it has in flight and take nothing new.
    async fn until_drained<C>(&self, mut conn: Pin<&mut C>, shutdown: fn(Pin<&mut C>)) -> hyper::Result<()>
    where
        C: Future<Output = hyper::Result<()>>,
    {
        tokio::select! {
            biased;
            res = conn.as_mut() => res,
            () = self.drain.signaled() => {
                shutdown(conn.as_mut());
                conn.await
            }
        }
    }

    fn http_closed(&self, result: Result<(), hyper::Error>) {
        if let Err(error) = result {
            let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
            tracing::debug!(direction = ?self.direction, %error, %source, "HTTP connection closed with an error");
        }
    }
}
