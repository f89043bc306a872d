//! HTTP proxying: each request on an accepted HTTP/1 or HTTP/2 connection
//! is forwarded to its target with the application's authority, counted,
//! and answered, by the upstream or, when that fails, by the proxy itself.

mod body;
pub mod client;
pub mod error;
pub(crate) mod h2;
pub mod head_timeout;
pub mod headers;
mod routed;

use self::{
    body::{ConnBody, ObservedBody, Recorder, RequestBody},
    client::{Clients, HttpClient, Proto},
    error::ProxyError,
};
use crate::{
    discovery::{Discovery, Resolution, ServiceRoute, TargetKey, balance::InFlight},
    metrics::{AuthzLabels, Direction, HttpLabels, LastAuthz, Metrics, RouteMetrics, Tls},
    policy::{Verdict, discover::PortPolicy},
};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header::HOST, uri::Authority};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Instant,
};

pub type ResponseBody = Either<ObservedBody, Full<Bytes>>;

const L5D_DST_OVERRIDE: &str = "l5d-dst-override";
/// The client's mesh identity, set by the inbound proxy (Linkerd's header).
pub const L5D_CLIENT_ID: &str = "l5d-client-id";
/// Marks an HTTP/1 request carried over HTTP/2 between proxies, with the
/// version it had (Linkerd's header).
pub const L5D_ORIG_PROTO: &str = "l5d-orig-proto";

/// What all HTTP connections of one direction share.
pub struct HttpProxy {
    pub direction: Direction,
    pub clients: Clients,
    pub metrics: Arc<Metrics>,
    /// Route by `l5d-dst-override` or the authority, never by the original
    /// destination (LINKERD2_PROXY_INGRESS_MODE).
    pub ingress_mode: bool,
    /// This direction's own listener: a request routed to it would loop.
    pub own_addr: SocketAddr,
    pub drain: crate::drain::Drain,
    /// The controller's answers, for outbound traffic in ingress mode.
    pub discovery: Option<Arc<Discovery>>,
    /// Open taps, told about the requests they match.
    pub taps: Arc<crate::tap::Taps>,
}

/// The service for one accepted connection.
#[derive(Clone)]
pub struct ConnService {
    inner: Arc<Conn>,
    /// HTTP/1: what the connection's head timeout watches.
    activity: Option<Arc<head_timeout::Activity>>,
}

struct Conn {
    proxy: Arc<HttpProxy>,
    proto: Proto,
    /// Where the connection was going, when known (`SO_ORIGINAL_DST`).
    target: Option<SocketAddr>,
    /// The upstream client for `target`, looked up once per connection.
    client: Option<HttpClient>,
    /// Where `target` is a service: each request goes to an endpoint the
    /// balancer picks.
    service: Option<Arc<ServiceRoute>>,
    tls: Tls,
    /// Inbound: the port's policy and the client's address, for a
    /// verdict on each request.
    authz: Option<(PortPolicy, std::net::IpAddr)>,
    /// Who opened the connection (taps report it as the source).
    peer: SocketAddr,
    /// The last route used: most connections speak to one authority.
    route: Mutex<Option<RouteMetrics>>,
    last_authz: LastAuthz,
}

// === impl ConnService ===

impl ConnService {
    pub fn new(
        proxy: Arc<HttpProxy>,
        proto: Proto,
        target: Option<SocketAddr>,
        service: Option<Arc<ServiceRoute>>,
        tls: Tls,
        authz: Option<(PortPolicy, std::net::IpAddr)>,
        peer: SocketAddr,
    ) -> Self {
        let target = target.filter(|_| !proxy.ingress_mode);
        let client = target.filter(|_| service.is_none()).map(|t| proxy.clients.get(t, proto));
        let route = Mutex::new(None);
        let last_authz = LastAuthz::default();
        Self {
            inner: Arc::new(Conn {
                proxy,
                proto,
                target,
                client,
                service,
                tls,
                authz,
                peer,
                route,
                last_authz,
            }),
            activity: None,
        }
    }

    /// Tells `activity` when each request starts and its response ends.
    pub fn with_activity(mut self, activity: Option<Arc<head_timeout::Activity>>) -> Self {
        self.activity = activity;
        self
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ConnBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.as_ref().map(head_timeout::Activity::busy);
        Box::pin(Proxied { inner: self.inner.clone().proxy(req), busy })
    }
}

pin_project_lite::pin_project! {
    /// `Conn::proxy`'s future, its response's body made a [`ConnBody`]. Not
    /// an async block, which would hold the inner future twice (captured,
    /// and again while awaited): hyper boxes this per request, and under
    /// ~1 KiB the box comes from the allocator's per-thread cache. Nor
    /// `futures_util`'s `map`, which moves the finished inner future out
    /// to call its closure: a ~900-byte copy per request (callgrind: 459
    /// more instructions per request than this).
    struct Proxied<F> {
        #[pin]
        inner: F,
        busy: Option<head_timeout::Busy>,
    }
}

impl<F: Future<Output = Response<ResponseBody>>> Future for Proxied<F> {
    type Output = Result<Response<ConnBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let rsp = std::task::ready!(this.inner.poll(cx));
        std::task::Poll::Ready(Ok(rsp.map(|body| ConnBody::new(body, this.busy.take()))))
    }
}

// === impl Conn ===

impl Conn {
    /// Not an async fn, whose future would keep the request twice (as the
    /// argument, and again as the body's local): `ConnService` boxes this
    /// future for every request.
    #[allow(clippy::manual_async_fn, reason = "an async fn's future keeps its arguments twice")]
    fn proxy(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        async move {
            let started = Instant::now();
            let grpc = is_grpc(&req);

            let authority = match request_authority(&req, self.proxy.ingress_mode) {
                Some(a) => a,
                None => match self.target {
                    Some(t) => Authority::try_from(t.to_string()).expect("a socket address is an authority"),
                    None => return self.fail(None, ProxyError::NoAuthority, grpc),
                },
            };
            let upgrading = self.proto == Proto::Http1
                && (req.method() == Method::CONNECT || headers::wants_upgrade(req.headers()));
            // A meshed peer carried this HTTP/1 request over HTTP/2: it goes
            // to the application as the HTTP/1 it was.
            let downgrade = self.proxy.direction == Direction::Inbound
                && self.proto == Proto::Http2
                && req.headers_mut().remove(L5D_ORIG_PROTO).is_some();
            let service = self.service_for(&authority).await;
            if let Some(service) = service.as_ref().filter(|s| s.router.is_some() && !upgrading) {
                // Boxed, as are the other rarely taken awaits below: each request's
                // future is moved whole a few times, and these would make it kilobytes.
                return Box::pin(self.proxy_routed(req, authority, service.clone(), started, grpc)).await;
            }
            let (target, client, picked, upgrade_h2) =
                match self.endpoint(&authority, service, upgrading, downgrade).await {
                    Ok(endpoint) => endpoint,
                    Err(e) => return self.fail(None, e, grpc),
                };
            let route = self.route(&authority, target, picked.as_ref());
            route.request();
            let tapped = self.tap(&req, &authority, target, &route);
            let fail = |error| {
                let rsp = self.fail(Some(&route), error, grpc);
                if let Some(tapped) = &tapped {
                    tapped.response(rsp.status().as_u16());
                }
                rsp
            };
            if is_same_listener(self.proxy.own_addr, target) {
                return fail(ProxyError::Loop { addr: target });
            }
            if let Err(denied) = self.authorize(&req, grpc, target) {
                return fail(denied);
            }

            // Prepare the request for the next hop.
            let keep_upgrade = upgrading && req.method() != Method::CONNECT;
            headers::strip_hop_by_hop(req.headers_mut(), keep_upgrade);
            if (self.proto == Proto::Http1 || downgrade) && !req.headers().contains_key(HOST) {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    req.headers_mut().insert(HOST, host);
                }
            }
            if self.proxy.direction == Direction::Inbound {
                // Only this proxy says who the client is.
                req.headers_mut().remove(L5D_CLIENT_ID);
                if let Tls::Mesh(Some(id)) = &self.tls {
                    if let Ok(id) = HeaderValue::from_str(id) {
                        req.headers_mut().insert(L5D_CLIENT_ID, id);
                    }
                }
            }
            let orig_version = req.version();
            if downgrade {
                *req.version_mut() = http::Version::HTTP_11;
            }
            if upgrade_h2 {
                let orig = if orig_version == http::Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" };
                req.headers_mut().insert(L5D_ORIG_PROTO, HeaderValue::from_static(orig));
                *req.version_mut() = http::Version::HTTP_2;
            }
            // HTTP/2 carries the authority in the URI; HTTP/1 writes the
            // request target as the client sent it (the client puts it in
            // origin form), so it is not made absolute only to be cut back.
            if client.proto() == Proto::Http2 {
                *req.uri_mut() = absolute_uri(req.uri(), &authority);
            }
            let downstream_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

            // Not boxed: the client's future is small (it holds no request),
            // and with it this one stays under ~1 KiB, which the allocator
            // serves from its per-thread cache when `ConnService` boxes it.
            let mut rsp = match client.request(req.map(|b| RequestBody::new(b, None))).await {
                Ok(rsp) => rsp,
                Err(e) => return fail(ProxyError::from_client(e)),
            };
            if let Some(tapped) = &tapped {
                tapped.response(rsp.status().as_u16());
            }
            if upgrade_h2 {
                rsp.headers_mut().remove(L5D_ORIG_PROTO);
                *rsp.version_mut() = orig_version;
            }
            if downgrade {
                rsp.headers_mut().insert(L5D_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
            }
            let status = rsp.status();
            route.response_headers(status.as_u16(), started);
            if let Some(picked) = picked {
                picked.responded();
            }

            let switched = status == StatusCode::SWITCHING_PROTOCOLS || (upgrading && status.is_success());
            // Upgrades go to HTTP/1 upstreams only, whose connection leaves
            // hyper's handle for the upgraded stream in the response.
            if let (Some(downstream), true) = (downstream_upgrade, switched) {
                if let Some(upstream) = rsp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
                    self.proxy.drain.spawn(tunnel(downstream, upstream));
                }
            }
            headers::strip_hop_by_hop(
                rsp.headers_mut(),
                switched && status == StatusCode::SWITCHING_PROTOCOLS,
            );

            let recorder = Recorder::new(route, status.as_u16(), grpc, rsp.headers()).tapped(tapped);
            rsp.map(|body| Either::Left(ObservedBody::new(body, recorder)))
        }
    }

    /// Where this request goes: an endpoint of the connection's service
    /// (balanced per request), the connection's original destination, or
    /// (ingress mode, or no original destination) what the authority names.
    /// The last value says whether an HTTP/1 request is carried over
    /// HTTP/2 to a meshed endpoint.
    async fn endpoint(
        &self,
        authority: &Authority,
        service: Option<Arc<ServiceRoute>>,
        upgrading: bool,
        downgrade: bool,
    ) -> Result<(SocketAddr, HttpClient, Option<InFlight>, bool), ProxyError> {
        let clients = &self.proxy.clients;
        if service.is_none() {
            match (self.target, &self.client) {
                (Some(t), Some(_)) if downgrade => return Ok((t, clients.get(t, Proto::Http1), None, false)),
                (Some(t), Some(c)) => return Ok((t, c.clone(), None, false)),
                _ => {}
            }
        }
        if let Some(service) = service {
            let picked = service
                .balancer
                .pick_within(service.failfast)
                .await
                .ok_or_else(|| ProxyError::NoEndpoints { service: service.name.clone() })?;
            let addr = picked.addr();
            let meta = picked.meta();
            // Not upgrades: they need the HTTP/1 connection itself.
            let (client, upgrade_h2) =
                clients.for_endpoint(addr, self.proto, meta.identity.as_ref(), meta.http2 && !upgrading);
            return Ok((addr, client, Some(picked), upgrade_h2));
        }
        let t = resolve(authority).await?;
        Ok((t, clients.get(t, self.proto), None, false))
    }

    /// The service the request goes to, if any: the connection's, or (no
    /// original destination, or ingress mode) the one the authority names.
    async fn service_for(&self, authority: &Authority) -> Option<Arc<ServiceRoute>> {
        if let Some(service) = &self.service {
            return Some(service.clone());
        }
        if self.target.is_some() && self.client.is_some() {
            return None;
        }
        let discovery = self.proxy.discovery.as_ref()?;
        match Box::pin(discovery.resolve(TargetKey::Authority(authority.to_string()))).await {
            Resolution::Service(service) => Some(service),
            _ => None,
        }
    }

    /// Offers the request to the open taps (one atomic load when none is).
    fn tap<B>(
        &self,
        req: &Request<B>,
        authority: &Authority,
        target: SocketAddr,
        route: &RouteMetrics,
    ) -> Option<crate::tap::Tapped> {
        self.tap_head(req.method(), req.uri().path(), authority, target, route)
    }

    fn tap_head(
        &self,
        method: &Method,
        path: &str,
        authority: &Authority,
        target: SocketAddr,
        route: &RouteMetrics,
    ) -> Option<crate::tap::Tapped> {
        if !self.proxy.taps.is_active() {
            return None;
        }
        let labels = route.labels();
        self.proxy.taps.request(&crate::tap::RequestInfo {
            direction: self.proxy.direction,
            source: self.peer,
            destination: target,
            tls: &labels.tls,
            dst_labels: labels.dst.as_deref(),
            method,
            authority: authority.as_str(),
            path,
        })
    }

    /// The port policy's verdict on an inbound request, counted.
    fn authorize<B>(&self, req: &Request<B>, grpc: bool, target: SocketAddr) -> Result<(), ProxyError> {
        let Some((port, ip)) = &self.authz else { return Ok(()) };
        let policy = port.current();
        let client = crate::app::client_of(SocketAddr::new(*ip, 0), &self.tls);
        let Some((route, verdict)) = policy.authorize_http(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
            grpc,
            &client,
        ) else {
            return Err(ProxyError::NoRoute { server: policy.meta.name.clone() });
        };
        let mut labels = AuthzLabels {
            target_addr: target,
            server: policy.meta.clone(),
            route: Some(route.clone()),
            authz: None,
            tls: self.tls.clone(),
        };
        match verdict {
            Verdict::Allow { authz, audit } => {
                if audit {
                    tracing::info!(client = %ip, server = %policy.meta.name, route = %route.name, "audit: a request the policy would deny");
                }
                labels.authz = Some(authz);
                self.proxy.metrics.authz_http(&self.last_authz, labels);
                Ok(())
            }
            Verdict::Deny => {
                self.proxy.metrics.authz_http(&self.last_authz, labels);
                Err(ProxyError::Unauthorized { server: policy.meta.name.clone(), route: route.name.clone() })
            }
        }
    }

    /// The metrics of requests to `authority` at `target`: `tls` is the
    /// accepted connection's inbound, the endpoint connection's outbound
    /// (`server_id` when it is mesh TLS).
    fn route(&self, authority: &Authority, target: SocketAddr, picked: Option<&InFlight>) -> RouteMetrics {
        let dst = picked.map(|p| p.labels());
        let tls = match self.proxy.direction {
            Direction::Inbound => self.tls.clone(),
            Direction::Outbound => match picked.and_then(|p| p.meta().identity.clone()) {
                Some(id) if self.proxy.clients.meshed() => Tls::Mesh(Some(id)),
                _ => Tls::OUTBOUND_PLAIN,
            },
        };
        let mut last = self.route.lock().expect("route lock");
        if let Some(route) = last.as_ref() {
            let labels = route.labels();
            if labels.target_addr == target
                && *labels.authority == *authority.as_str()
                && labels.dst.as_ref() == dst
                && labels.tls == tls
            {
                return route.clone();
            }
        }
        let route = self.proxy.metrics.route(HttpLabels {
            direction: self.proxy.direction,
            authority: authority.as_str().into(),
            target_addr: target,
            dst: dst.cloned(),
            tls,
        });
        *last = Some(route.clone());
        route
    }

    fn fail(&self, route: Option<&RouteMetrics>, error: ProxyError, grpc: bool) -> Response<ResponseBody> {
        tracing::info!(direction = ?self.proxy.direction, %error, "proxy error");
        let rsp = error.to_response(grpc);
        if let Some(route) = route {
            let status = rsp.status().as_u16();
            let grpc_status = grpc.then(|| error.grpc_code());
            route.response_end(status, grpc_status, Some(error.label()));
        }
        rsp.map(Either::Right)
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The authority the application addressed: `l5d-dst-override` in ingress
/// mode, else the URI's authority (HTTP/2, absolute-form, CONNECT), else
/// `Host`.
fn request_authority<B>(req: &Request<B>, ingress_mode: bool) -> Option<Authority> {
    if ingress_mode {
        if let Some(a) =
            req.headers().get(L5D_DST_OVERRIDE).and_then(|v| Authority::try_from(v.as_bytes()).ok())
        {
            return Some(a);
        }
    }
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    req.headers().get(HOST).and_then(|v| Authority::try_from(v.as_bytes()).ok())
}

fn absolute_uri(uri: &Uri, authority: &Authority) -> Uri {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Finds where an authority points when no original destination says so.
/// Until discovery exists this is the name service (or a literal address).
async fn resolve(authority: &Authority) -> Result<SocketAddr, ProxyError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let err = |reason: String| ProxyError::Resolve { authority: authority.to_string(), reason };
    let mut addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| err(e.to_string()))?;
    addrs.next().ok_or_else(|| err("no addresses".into()))
}

fn is_same_listener(own: SocketAddr, target: SocketAddr) -> bool {
    own.port() == target.port()
        && (own.ip() == target.ip() || (own.ip().is_unspecified() && target.ip().is_loopback()))
}

/// Joins the two halves of an upgraded connection (WebSocket, CONNECT).
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(ios) => ios,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(%error, "upgraded connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_prefers_override_in_ingress_mode() {
        let req = Request::builder()
            .uri("/path")
            .header(HOST, "web.default:8080")
            .header(L5D_DST_OVERRIDE, "web.default.svc.cluster.local:80")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&req, true).unwrap().as_str(), "web.default.svc.cluster.local:80");
        assert_eq!(request_authority(&req, false).unwrap().as_str(), "web.default:8080");
        let h2 = Request::builder().uri("http://api:9090/x").body(()).unwrap();
        assert_eq!(request_authority(&h2, false).unwrap().as_str(), "api:9090");
        let none = Request::builder().uri("/").body(()).unwrap();
        assert!(request_authority(&none, false).is_none());
    }

    #[test]
    fn uris_become_absolute() {
        let a = Authority::from_static("web:80");
        assert_eq!(absolute_uri(&Uri::from_static("/a?b=1"), &a), "http://web:80/a?b=1");
        assert_eq!(absolute_uri(&Uri::from_static("http://other/x"), &a), "http://web:80/x");
    }

    #[test]
    fn loops_are_recognised() {
        let own: SocketAddr = "0.0.0.0:4143".parse().unwrap();
        assert!(is_same_listener(own, "127.0.0.1:4143".parse().unwrap()));
        assert!(!is_same_listener(own, "127.0.0.1:8080".parse().unwrap()));
        assert!(!is_same_listener(own, "10.0.0.2:4143".parse().unwrap()));
    }
}

/// The per-request values that hyper and the proxy move several times per
/// request stay small: every byte here is copied a few times per request.
/// A change that grows them should be a choice, made knowing the cost.
#[cfg(all(test, target_pointer_width = "64"))]
mod sizes {
    use std::mem::size_of;

    #[test]
    fn moved_per_request_values_stay_small() {
        assert!(size_of::<super::body::Recorder>() <= 48, "Recorder: {}", size_of::<super::body::Recorder>());
        assert!(
            size_of::<super::body::RequestBody>() <= 40,
            "RequestBody: {}",
            size_of::<super::body::RequestBody>()
        );
        let rsp = size_of::<http::Response<super::body::ConnBody>>();
        assert!(rsp <= 224, "a response as hyper writes it: {rsp} bytes");
    }
}
