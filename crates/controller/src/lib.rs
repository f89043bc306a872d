//! weft's control plane, over the store: the destination and
//! outbound-policy APIs that proxies (weft's or Linkerd's) call, and an
//! admin server with the controller's own metrics.

mod admin;
mod dashboard;
mod destination;
pub mod identity;
pub mod inbound;
mod legacy;
mod metrics;
pub mod observe;
pub mod outbound;
pub mod policy_view;
mod profile;
mod routes;
pub mod tap;
mod traffic;

pub use admin::serve_admin;
pub use destination::DestinationService;
pub use metrics::Metrics;
pub use outbound::OutboundService;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::{
    destination::destination_server::DestinationServer, identity::identity_server::IdentityServer,
    inbound::inbound_server_policies_server::InboundServerPoliciesServer,
};
use std::{convert::Infallible, sync::Arc};
use tokio::net::TcpListener;
use tonic::{Status, server::NamedService};
use weft_api::server::OutboundPoliciesServer;
use weft_store::{Index, ServicePort, SharedIndex};

/// What a proxy asked about.
pub(crate) enum Target {
    Service(ServicePort),
    /// An address or name that is no service this controller knows.
    Other,
}

/// Parses `host:port` (or a bare host, port 80) into a service port: a
/// service's DNS name (known or not yet) or its cluster IP.
pub(crate) fn parse_target(index: &SharedIndex, target: &str) -> Result<Target, Status> {
    let (host, port) = match target.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => {
            let port =
                port.parse::<u16>().map_err(|_| Status::invalid_argument(format!("{target}: bad port")))?;
            (host, port)
        }
        _ => (target, 80),
    };
    let index = lock(index);
    if let Some(sp) = index.resolve(host, port) {
        return Ok(Target::Service(sp));
    }
    // A service name that does not exist (yet) is still a service name:
    // its watch says `exists: false` until it appears.
    let domain = format!(".svc.{}", index.config().cluster_domain);
    let name = host.trim_end_matches('.');
    let name = name.strip_suffix(domain.as_str()).or_else(|| name.strip_suffix(".svc"));
    if let Some((svc, ns)) =
        name.and_then(|n| n.split_once('.')).filter(|(s, n)| !s.is_empty() && !n.contains('.'))
    {
        return Ok(Target::Service(ServicePort { namespace: ns.into(), name: svc.into(), port }));
    }
    Ok(Target::Other)
}

pub(crate) fn lock(index: &SharedIndex) -> std::sync::MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves the proxy APIs on `listener` (gRPC over HTTP/2) until the task is
/// dropped. With a CA, the Identity API is served too, and clients that
/// open with a TLS ClientHello get mesh TLS with the controller's own
/// certificate; plaintext clients (proxies without identity) still work.
pub async fn serve_grpc(
    listener: TcpListener,
    index: SharedIndex,
    metrics: Arc<Metrics>,
    ca: Option<Arc<identity::Ca>>,
) {
    serve_grpc_with(listener, index, metrics, ca, inbound::InboundConfig::default()).await
}

/// As [`serve_grpc`], with the inbound policy defaults given.
pub async fn serve_grpc_with(
    listener: TcpListener,
    index: SharedIndex,
    metrics: Arc<Metrics>,
    ca: Option<Arc<identity::Ca>>,
    inbound: inbound::InboundConfig,
) {
    let router = Router {
        inbound: InboundServerPoliciesServer::new(inbound::InboundService {
            index: index.clone(),
            metrics: metrics.clone(),
            config: Arc::new(inbound),
        }),
        destination: DestinationServer::new(DestinationService {
            index: index.clone(),
            metrics: metrics.clone(),
        }),
        outbound: OutboundPoliciesServer::new(OutboundService { index, metrics: metrics.clone() }),
        identity: ca.clone().map(|ca| IdentityServer::new(identity::IdentityService(ca))),
    };
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let router = router.clone();
        let ca = ca.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let Some(ca) = ca else {
                metrics.connection(false);
                return serve_conn(sock, router).await;
            };
            let mut first = [0u8; 1];
            let tls = matches!(
                tokio::time::timeout(std::time::Duration::from_secs(10), sock.peek(&mut first)).await,
                Ok(Ok(1)) if first[0] == 0x16
            );
            metrics.connection(tls);
            if !tls {
                return serve_conn(sock, router).await;
            }
            match tokio_rustls::TlsAcceptor::from(ca.server_config()).accept(sock).await {
                Ok(tls) => serve_conn(tls, router).await,
                Err(error) => tracing::info!(%error, "TLS handshake with a client failed"),
            }
        });
    }
}

async fn serve_conn<I>(io: I, router: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| router.clone().route(req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(10)))
        .serve_connection(TokioIo::new(io), svc);
    if let Err(error) = conn.await {
        tracing::debug!(%error, "gRPC connection closed");
    }
}

/// Dispatches by gRPC service name. Written by hand because tonic's own
/// router brings axum into the build for what is a prefix match.
#[derive(Clone)]
struct Router {
    destination: DestinationServer<DestinationService>,
    outbound: OutboundPoliciesServer<OutboundService>,
    identity: Option<IdentityServer<identity::IdentityService>>,
    inbound: InboundServerPoliciesServer<inbound::InboundService>,
}

impl Router {
    async fn route(mut self, req: Request<Incoming>) -> Result<Response<tonic::body::Body>, Infallible> {
        use tower_service::Service;
        let path = req.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        if service == <DestinationServer<DestinationService> as NamedService>::NAME {
            return self.destination.call(req).await;
        }
        if service == <OutboundPoliciesServer<OutboundService> as NamedService>::NAME {
            return self.outbound.call(req).await;
        }
        if service == <InboundServerPoliciesServer<inbound::InboundService> as NamedService>::NAME {
            return self.inbound.call(req).await;
        }
        if let Some(identity) = self.identity.as_mut() {
            if service == <IdentityServer<identity::IdentityService> as NamedService>::NAME {
                return identity.call(req).await;
            }
        }
        Ok(Status::unimplemented(format!("weft's controller does not serve {service}")).into_http())
    }
}
