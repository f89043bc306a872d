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
    task::{Context, Poll},
};

pub struct ObservedBody {
    inner: Incoming,
    recorder: Option<Recorder>,
}

/// Records one response's outcome, once.
pub struct Recorder {
    route: RouteMetrics,
    status: u16,
    grpc: bool,
    grpc_status: Option<u32>,
    /// The taps that took the request, told when the response ends.
    tapped: Option<crate::tap::Tapped>,
    bytes: u64,
}

impl Recorder {
    pub fn new(route: RouteMetrics, status: u16, grpc: bool, headers: &HeaderMap) -> Self {
        // A trailers-only gRPC response carries its status in the headers.
        let grpc_status = if grpc { grpc_status(headers) } else { None };
        Self { route, status, grpc, grpc_status, tapped: None, bytes: 0 }
    }

    pub fn tapped(mut self, tapped: Option<crate::tap::Tapped>) -> Self {
        self.tapped = tapped;
        self
    }

    fn finish(self, error: Option<&'static str>) {
        let grpc_status = match (self.grpc, self.grpc_status) {
            (true, None) if error.is_none() => None,
            (_, status) => status,
        };
        self.route.response_end(self.status, grpc_status, error);
        if let Some(tapped) = &self.tapped {
            tapped.end(self.bytes, grpc_status, error.is_some());
        }
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl ObservedBody {
    pub fn new(inner: Incoming, recorder: Recorder) -> Self {
        Self { inner, recorder: Some(recorder) }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
