//! The response body as the proxy streams it back: frames pass through
//! untouched while the end of the stream (and gRPC's status in trailers)
//! is recorded into `response_total`.

use crate::metrics::RouteMetrics;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

/// A response body as an upstream sends it: over HTTP/1 (hyper) or over
/// HTTP/2 (h2, see `h2.rs`).
#[derive(Debug)]
pub enum UpstreamBody {
    Http1(Incoming),
    Http2(super::h2::H2Body),
}

/// Why an upstream response body failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    #[error(transparent)]
    Http2(#[from] h2::Error),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::Http2(body) => body.size_hint(),
        }
    }
}

pub struct ObservedBody {
    inner: UpstreamBody,
    recorder: Option<Recorder>,
}

/// Records one response's outcome, once. Kept small (48 bytes): it rides
/// in every response body, which hyper moves several times per request;
/// what only some requests have (taps, route series) is boxed.
pub struct Recorder {
    route: RouteMetrics,
    status: u16,
    grpc: bool,
    grpc_status: Option<u32>,
    /// The taps that took the request, told when the response ends.
    tapped: Option<Box<crate::tap::Tapped>>,
    bytes: u64,
    /// A routed request: its route series, recorded when the response ends.
    route_end: Option<Box<RouteEnd>>,
}

/// What the route series need when a routed request's response ends.
pub struct RouteEnd {
    pub series: Arc<crate::traffic::metrics::RuleSeries>,
    pub started: std::time::Instant,
    pub attempts: u32,
}

impl Recorder {
    pub fn new(route: RouteMetrics, status: u16, grpc: bool, headers: &HeaderMap) -> Self {
        // A trailers-only gRPC response carries its status in the headers.
        let grpc_status = if grpc { grpc_status(headers) } else { None };
        Self { route, status, grpc, grpc_status, tapped: None, bytes: 0, route_end: None }
    }

    pub fn routed(mut self, end: RouteEnd) -> Self {
        self.route_end = Some(Box::new(end));
        self
    }

    pub fn tapped(mut self, tapped: Option<crate::tap::Tapped>) -> Self {
        self.tapped = tapped.map(Box::new);
        self
    }

    fn finish(self, error: Option<&'static str>) {
        let grpc_status = match (self.grpc, self.grpc_status) {
            (true, None) if error.is_none() => None,
            (_, status) => status,
        };
        self.route.response_end(self.status, grpc_status, error);
        if let Some(end) = &self.route_end {
            let status =
                if self.grpc { grpc_status.map(crate::metrics::grpc_label) } else { Some(self.status) };
            let error = error.map(|_| "UNEXPECTED");
            end.series.request(status, error, end.started.elapsed(), end.attempts);
        }
        if let Some(tapped) = &self.tapped {
            tapped.end(self.bytes, grpc_status, error.is_some());
        }
    }
}

pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl ObservedBody {
    pub fn new(inner: UpstreamBody, recorder: Recorder) -> Self {
        Self { inner, recorder: Some(recorder) }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(rec)) = (frame.data_ref(), this.recorder.as_mut()) {
                    rec.bytes += data.len() as u64;
                }
                if let (Some(trailers), Some(rec)) = (frame.trailers_ref(), this.recorder.as_mut()) {
                    if rec.grpc {
                        rec.grpc_status = grpc_status(trailers);
                    }
                }
                if this.inner.is_end_stream() {
                    if let Some(rec) = this.recorder.take() {
                        rec.finish(None);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(rec) = this.recorder.take() {
                    rec.finish(Some("response_body"));
                }
            }
            None => {
                if let Some(rec) = this.recorder.take() {
                    rec.finish(None);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(rec) = self.recorder.take() {
            // An empty body may never be polled; anything else dropped
            // before its end was cut off (the client went away).
            let error = (!self.inner.is_end_stream()).then_some("stream_reset");
            rec.finish(error);
        }
    }
}

/// A response as the connection writes it: over HTTP/1 it holds the
/// connection's head timeout (`head_timeout.rs`) until hyper has written
/// it and lets it go.
pub struct ConnBody {
    inner: super::ResponseBody,
    _busy: Option<super::head_timeout::Busy>,
}

impl ConnBody {
    pub fn new(inner: super::ResponseBody, busy: Option<super::head_timeout::Busy>) -> Self {
        Self { inner, _busy: busy }
    }
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = <super::ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body as the proxy sends it upstream: the client's stream as
/// it comes, nothing, or a body that can be sent again (retries, mirrors).
pub enum RequestBody {
    Stream(Incoming),
    Empty,
    /// Boxed: most requests stream, and the body is moved with its request.
    Replay(Box<Replay>),
}

impl RequestBody {
    /// The client's body; `replay_limit` makes it replayable while it is
    /// no longer than that.
    pub fn new(body: Incoming, replay_limit: Option<usize>) -> Self {
        if body.is_end_stream() {
            return RequestBody::Empty;
        }
        match replay_limit {
            // A body known to be larger than the limit is sent once.
            Some(limit) if body.size_hint().lower() <= limit as u64 => {
                RequestBody::Replay(Box::new(Replay::new(body, limit)))
            }
            _ => RequestBody::Stream(body),
        }
    }

    /// A copy to send: an empty body, or (for a replayable body) a copy
    /// that replays what was read so far and reads on where the last copy
    /// stopped, as long as nothing overflowed the limit and no other copy
    /// is still reading. A streamed body gives no copies; it is sent by
    /// taking it.
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Stream(_) => None,
            RequestBody::Replay(r) => r.try_clone().map(|r| RequestBody::Replay(Box::new(r))),
        }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Replay(r) => r.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Replay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Replay(r) => r.size_hint(),
        }
    }
}

/// A body streamed to the first attempt while a copy is kept (up to a
/// limit), so a retry can send it again: what the first attempt read is
/// replayed, and the rest is read from the client where it left off.
///
/// Written here because neither hyper nor http-body-util has a replayable
/// body; Linkerd's proxy has its own for the same reason.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    /// Data frames this copy has sent.
    pos: usize,
    /// The client's stream, while this copy is the one reading it.
    inner: Option<Incoming>,
    trailers_sent: bool,
    size_hint: SizeHint,
}

struct Shared {
    /// The data frames read so far, while they fit in `limit`.
    frames: Vec<Bytes>,
    /// How many data frames have been read from the client (kept or not).
    read: usize,
    len: usize,
    limit: usize,
    /// More than `limit` was read: nothing can be replayed.
    overflow: bool,
    /// The client's stream when no copy is reading it.
    inner: Option<Incoming>,
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl Replay {
    fn new(body: Incoming, limit: usize) -> Self {
        let size_hint = body.size_hint();
        let shared = Shared {
            frames: Vec::new(),
            read: 0,
            len: 0,
            limit,
            overflow: false,
            inner: Some(body),
            trailers: None,
            ended: false,
        };
        // This one is the template copies are made from; it is never sent.
        Self { shared: Arc::new(Mutex::new(shared)), pos: 0, inner: None, trailers_sent: false, size_hint }
    }

    fn try_clone(&self) -> Option<Self> {
        let shared = self.shared.lock().ok()?;
        // A copy still held elsewhere (hyper lets go of a request body on
        // its own time) keeps the stream: then there is nothing to send.
        let available = shared.ended || shared.inner.is_some();
        if shared.overflow || !available {
            return None;
        }
        drop(shared);
        Some(Self {
            shared: self.shared.clone(),
            pos: 0,
            inner: None,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }

    /// A copy sends exactly the client's body or fails: it replays what was
    /// kept, then reads on only if it has sent every frame read so far.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut shared = self.shared.lock().expect("replay lock");
        if self.pos < shared.read {
            if shared.overflow {
                return Poll::Ready(Some(Err("the request body was too large to send again".into())));
            }
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(shared.frames[self.pos - 1].clone()))));
        }
        if shared.ended {
            if !self.trailers_sent {
                self.trailers_sent = true;
                if let Some(t) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        if self.inner.is_none() {
            self.inner = shared.inner.take();
        }
        let Some(inner) = self.inner.as_mut() else {
            // Another copy is reading the stream: this one cannot go on
            // (never a truncated body).
            return Poll::Ready(Some(Err("the request body is being sent by another attempt".into())));
        };
        loop {
            let frame = std::task::ready!(Pin::new(&mut *inner).poll_frame(cx));
            match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        if inner.is_end_stream() {
                            shared.ended = true;
                            self.trailers_sent = true;
                        }
                        // An empty chunk (an END_STREAM frame, say) is not
                        // passed on: sent as a frame of its own, peers
                        // count it as abuse.
                        if data.is_empty() {
                            if shared.ended {
                                return Poll::Ready(None);
                            }
                            continue;
                        }
                        shared.read += 1;
                        self.pos = shared.read;
                        shared.len += data.len();
                        if shared.len > shared.limit {
                            shared.overflow = true;
                            shared.frames = Vec::new();
                        } else if !shared.overflow {
                            shared.frames.push(data.clone());
                        }
                    } else if let Some(t) = f.trailers_ref() {
                        shared.trailers = Some(t.clone());
                        shared.ended = true;
                        self.trailers_sent = true;
                    }
                }
                Some(Err(_)) => shared.overflow = true,
                None => {
                    shared.ended = true;
                    self.trailers_sent = true;
                }
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
    }

    /// Done once the stream ended and this copy sent all of it, so the
    /// last frame carries END_STREAM.
    fn is_end_stream(&self) -> bool {
        let Ok(shared) = self.shared.lock() else { return false };
        shared.ended && self.pos >= shared.read && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        // Hand the rest of the client's stream to the next copy.
        if let Some(inner) = self.inner.take() {
            if let Ok(mut shared) = self.shared.lock() {
                shared.inner = Some(inner);
            }
        }
    }
}
