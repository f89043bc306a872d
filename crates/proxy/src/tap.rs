//! Live taps (`io.linkerd.proxy.tap.Tap/Observe`), served on the control
//! port over mesh TLS to the tap service's identity only.
//!
//! While no tap is open a request pays one atomic load. An open tap gets
//! the requests it matches, up to its limit, through a bounded channel that
//! never waits: when the tapper is slow, events are dropped, not traffic.

use crate::metrics::{Direction, Tls};
use http::Method;
use linkerd2_proxy_api::{
    http_types::HttpMethod,
    net::TcpAddress,
    tap::{
        ObserveRequest, TapEvent,
        observe_request::{
            Match,
            r#match::{Match as M, http::Match as HttpMatch, http::string_match::Match as StringMatch},
        },
        tap_event::{self, http as ev},
        tap_server::Tap,
    },
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};

/// Events a tap may have queued before more are dropped.
const TAP_BUFFER: usize = 1024;

#[derive(Default)]
pub struct Taps {
    active: AtomicUsize,
    taps: Mutex<Vec<Arc<OneTap>>>,
    next_base: AtomicU32,
}

struct OneTap {
    matcher: Option<Match>,
    remaining: AtomicU32,
    base: u32,
    next_stream: AtomicU64,
    tx: mpsc::Sender<Result<TapEvent, tonic::Status>>,
}

/// What a request's tap events say about it.
pub struct RequestInfo<'a> {
    pub direction: Direction,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub tls: &'a Tls,
    pub dst_labels: Option<&'a [(String, String)]>,
    pub method: &'a Method,
    pub authority: &'a str,
    pub path: &'a str,
}

/// The taps that took a request, to tell them about its response.
pub struct Tapped {
    taps: Vec<(Arc<OneTap>, u64)>,
    started: Instant,
    /// Boxed: a tapped request is rare, and every request's future holds
    /// an `Option<Tapped>` across the wait for its response.
    base: Box<TapEvent>,
}

impl Taps {
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Offers a request to the open taps; `None` when none takes it.
    pub fn request(&self, info: &RequestInfo<'_>) -> Option<Tapped> {
        let taps: Vec<Arc<OneTap>> = self.taps.lock().ok()?.iter().cloned().collect();
        let mut taken = Vec::new();
        for tap in taps {
            if tap.tx.is_closed() {
                continue;
            }
            if tap.matcher.as_ref().is_some_and(|m| !matches(m, info)) {
                continue;
            }
            let claimed =
                tap.remaining.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
            if claimed {
                let stream = tap.next_stream.fetch_add(1, Ordering::Relaxed);
                taken.push((tap, stream));
            }
        }
        if taken.is_empty() {
            return None;
        }
        let base = base_event(info);
        for (tap, stream) in &taken {
            let mut event = base.clone();
            event.event = Some(tap_event::Event::Http(tap_event::Http {
                event: Some(ev::Event::RequestInit(ev::RequestInit {
                    id: Some(ev::StreamId { base: tap.base, stream: *stream }),
                    method: Some(HttpMethod::from(info.method.clone())),
                    scheme: None,
                    authority: info.authority.to_string(),
                    path: info.path.to_string(),
                    headers: None,
                })),
            }));
            let _ = tap.tx.try_send(Ok(event));
        }
        Some(Tapped { taps: taken, started: Instant::now(), base: Box::new(base) })
    }

    fn open(&self, req: ObserveRequest) -> ReceiverStream<Result<TapEvent, tonic::Status>> {
        let (tx, rx) = mpsc::channel(TAP_BUFFER);
        let tap = Arc::new(OneTap {
            matcher: req.r#match,
            remaining: AtomicU32::new(if req.limit == 0 { u32::MAX } else { req.limit }),
            base: self.next_base.fetch_add(1, Ordering::Relaxed),
            next_stream: AtomicU64::new(0),
            tx,
        });
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        // Taps whose tapper went away are dropped as new ones come.
        taps.retain(|t| !t.tx.is_closed());
        taps.push(tap);
        self.active.store(taps.len(), Ordering::Relaxed);
        ReceiverStream::new(rx)
    }

    /// Forgets taps whose tapper went away.
    fn sweep(&self) {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| !t.tx.is_closed() && t.remaining.load(Ordering::Relaxed) > 0);
        self.active.store(taps.len(), Ordering::Relaxed);
    }
}

impl Tapped {
    /// The response's head came (or the proxy answered itself).
    pub fn response(&self, status: u16) {
        let since = self.started.elapsed().try_into().ok();
        for (tap, stream) in &self.taps {
            let mut event = TapEvent::clone(&self.base);
            event.event = Some(tap_event::Event::Http(tap_event::Http {
                event: Some(ev::Event::ResponseInit(ev::ResponseInit {
                    id: Some(ev::StreamId { base: tap.base, stream: *stream }),
                    since_request_init: since,
                    http_status: status.into(),
                    headers: None,
                })),
            }));
            let _ = tap.tx.try_send(Ok(event));
        }
    }
}

impl Tapped {
    /// The response's body ended (or was cut off).
    pub fn end(&self, bytes: u64, grpc_status: Option<u32>, reset: bool) {
        use linkerd2_proxy_api::tap::{Eos, eos};
        let since = self.started.elapsed().try_into().ok();
        let end = match (grpc_status, reset) {
            (Some(code), _) => Some(eos::End::GrpcStatusCode(code)),
            // A reset without an HTTP/2 code: INTERNAL_ERROR.
            (None, true) => Some(eos::End::ResetErrorCode(2)),
            (None, false) => None,
        };
        for (tap, stream) in &self.taps {
            let mut event = TapEvent::clone(&self.base);
            event.event = Some(tap_event::Event::Http(tap_event::Http {
                event: Some(ev::Event::ResponseEnd(ev::ResponseEnd {
                    id: Some(ev::StreamId { base: tap.base, stream: *stream }),
                    since_request_init: since,
                    since_response_init: None,
                    response_bytes: bytes,
                    eos: Some(Eos { end }),
                    trailers: None,
                })),
            }));
            let _ = tap.tx.try_send(Ok(event));
        }
    }
}

fn base_event(info: &RequestInfo<'_>) -> TapEvent {
    let mut tls_labels = HashMap::new();
    match info.tls {
        Tls::Mesh(id) => {
            tls_labels.insert("tls".to_string(), "true".to_string());
            if let Some(id) = id {
                let key = match info.direction {
                    Direction::Inbound => "client_id",
                    Direction::Outbound => "server_id",
                };
                tls_labels.insert(key.to_string(), id.to_string());
            }
        }
        Tls::None(reason) => {
            tls_labels.insert("tls".to_string(), "no_identity".to_string());
            tls_labels.insert("no_tls_reason".to_string(), reason.to_string());
        }
        Tls::Passthru => {
            tls_labels.insert("tls".to_string(), "passthru".to_string());
        }
    }
    let mut dst_labels: HashMap<String, String> = info
        .dst_labels
        .iter()
        .flat_map(|l| l.iter())
        .map(|(k, v)| (k.trim_start_matches("dst_").to_string(), v.clone()))
        .collect();
    let (source_meta, direction) = match info.direction {
        Direction::Inbound => (tls_labels, tap_event::ProxyDirection::Inbound),
        Direction::Outbound => {
            dst_labels.extend(tls_labels);
            (HashMap::new(), tap_event::ProxyDirection::Outbound)
        }
    };
    TapEvent {
        source: Some(TcpAddress::from(info.source)),
        source_meta: Some(tap_event::EndpointMeta { labels: source_meta }),
        route_meta: None,
        destination: Some(TcpAddress::from(info.destination)),
        destination_meta: Some(tap_event::EndpointMeta { labels: dst_labels }),
        proxy_direction: direction as i32,
        event: None,
    }
}

/// Whether a request matches a tap's `match` (sequences, negation,
/// destination labels, method, authority, path; TCP masks and route
/// labels are not matched, so a tap that asks for them gets nothing).
fn matches(m: &Match, info: &RequestInfo<'_>) -> bool {
    let Some(m) = &m.r#match else { return true };
    match m {
        M::All(seq) => seq.matches.iter().all(|m| matches(m, info)),
        M::Any(seq) => seq.matches.iter().any(|m| matches(m, info)),
        M::Not(m) => !matches(m, info),
        M::DestinationLabel(label) => info.dst_labels.is_some_and(|labels| {
            labels.iter().any(|(k, v)| k.trim_start_matches("dst_") == label.key && *v == label.value)
        }),
        M::Http(http) => match &http.r#match {
            Some(HttpMatch::Method(method)) => {
                Method::try_from(method.clone()).is_ok_and(|m| m == *info.method)
            }
            Some(HttpMatch::Authority(s)) => string_matches(s.r#match.as_ref(), info.authority),
            Some(HttpMatch::Path(s)) => string_matches(s.r#match.as_ref(), info.path),
            Some(HttpMatch::Scheme(_)) | None => true,
        },
        M::Source(_) | M::Destination(_) | M::RouteLabel(_) => false,
    }
}

fn string_matches(m: Option<&StringMatch>, value: &str) -> bool {
    match m {
        Some(StringMatch::Exact(e)) => value == e,
        Some(StringMatch::Prefix(p)) => value.starts_with(p.as_str()),
        None => true,
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct TapService(pub Arc<Taps>);

#[tonic::async_trait]
impl Tap for TapService {
    type ObserveStream = Pin<Box<dyn Stream<Item = Result<TapEvent, tonic::Status>> + Send>>;

    async fn observe(
        &self,
        req: tonic::Request<ObserveRequest>,
    ) -> Result<tonic::Response<Self::ObserveStream>, tonic::Status> {
        let stream = self.0.open(req.into_inner());
        let taps = self.0.clone();
        // When the tapper goes, forget its tap.
        let stream = SweepOnDrop { inner: stream, taps };
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

struct SweepOnDrop {
    inner: ReceiverStream<Result<TapEvent, tonic::Status>>,
    taps: Arc<Taps>,
}

impl Stream for SweepOnDrop {
    type Item = Result<TapEvent, tonic::Status>;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for SweepOnDrop {
    fn drop(&mut self) {
        self.inner.close();
        self.taps.sweep();
    }
}

/// Serves taps on the control listener: mesh TLS only, and only to a
/// client that proves `tap_name`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    taps: Arc<Taps>,
    tls: Arc<rustls::ServerConfig>,
    tap_name: String,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let service = linkerd2_proxy_api::tap::tap_server::TapServer::new(TapService(taps));
    loop {
        let Ok((sock, peer)) = listener.accept().await else { continue };
        let (service, tls, tap_name) = (service.clone(), tls.clone(), tap_name.clone());
        tokio::spawn(async move {
            let stream = match tokio_rustls::TlsAcceptor::from(tls).accept(sock).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::info!(%peer, %error, "tap: not mesh TLS; refused");
                    return;
                }
            };
            if !weft_identity::tls::peer_has_identity(stream.get_ref().1.peer_certificates(), &tap_name) {
                tracing::info!(%peer, "tap: the client is not {tap_name}; refused");
                return;
            }
            let svc = hyper_util::service::TowerToHyperService::new(service);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
