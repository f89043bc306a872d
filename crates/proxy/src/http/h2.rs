//! weft's HTTP/2 client connection, on the h2 crate directly.
//!
//! hyper's HTTP/2 client hands each request through a channel to a
//! dispatch task, which spawns one task for the response and another to
//! send the request body; and the body's first bytes wait until the
//! connection task has opened the stream, so a small gRPC call's HEADERS
//! and DATA leave in two writes, three task hops apart. Here the request's
//! own task opens the stream and queues the body's first bytes at once, so
//! the connection task writes both together, and it awaits the response
//! itself. A body still streaming after its first bytes gets a task of its
//! own, as with hyper. The connection is h2's; only the hand-off is weft's.

use super::{body::RequestBody, client::ClientError};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// Flow-control windows weft offers on every HTTP/2 connection, to its
/// upstreams here and to its clients in the inbound and outbound servers:
/// enough for a few gigabits per second per stream at a millisecond's
/// round trip, while what a peer may send ahead of a slow reader, and so
/// what the proxy holds for it, is at most this per stream and per
/// connection. (hyper's adaptive window would grow to 16 MiB for a fast
/// sender, and keep that much of a slow reader's upload in the proxy.)
pub const STREAM_WINDOW: u32 = 512 * 1024;
pub const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// The largest response header block taken (hyper's default).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// A PING goes out this often, and a connection whose peer does not answer
/// in [`KEEPALIVE_TIMEOUT`] is closed (as hyper's keep-alive did).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// One HTTP/2 connection to an endpoint; clones share it.
#[derive(Clone)]
pub struct Connection {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Connection {
    /// Opens HTTP/2 over `io` and spawns the task that drives it.
    pub async fn handshake<T>(io: T, addr: std::net::SocketAddr) -> Result<Self, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<T, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let (dead_tx, mut dead) = oneshot::channel();
        if let Some(ping) = conn.ping_pong() {
            tokio::spawn(keepalive(ping, dead_tx));
        }
        let done = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                result = &mut conn => if let Err(error) = result {
                    tracing::debug!(%addr, %error, "upstream HTTP/2 connection failed");
                },
                Ok(()) = &mut dead => {
                    tracing::debug!(%addr, "upstream HTTP/2 connection did not answer a PING; closing it");
                }
            }
            done.store(true, Ordering::Release);
        });
        Ok(Self { send, closed })
    }

    /// Whether the connection has ended (or failed its keep-alive); a
    /// connection that was told to go away fails its next request instead.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the connection still takes new streams (tests).
    #[cfg(test)]
    pub fn takes_streams(&self) -> bool {
        let mut send = self.send.clone();
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        !matches!(send.poll_ready(cx), Poll::Ready(Err(_)))
    }

    /// Sends `req`: opens its stream, queues what of its body is ready, and
    /// gives the future of the response. A request the connection refuses
    /// before anything of it is written (the connection has gone away) is
    /// given back, so that it can go on a new connection.
    ///
    /// Not an async fn: all of this happens at once, and the future kept
    /// across the wait for the response holds only h2's handle to it, so
    /// the request's own future (and every HTTP/1 request's, which shares
    /// its type) stays small.
    pub fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<impl Future<Output = Result<Response<H2Body>, ClientError>> + Send + use<>, Box<Refused>>
    {
        let mut send = self.send.clone();
        // A fresh handle has no stream waiting to open: this only asks
        // whether the connection still takes requests, and never waits.
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Err(error)) = send.poll_ready(cx) {
            self.closed.store(true, Ordering::Release);
            return Err(Box::new((error.into(), Some(req))));
        }
        let (mut head, body) = req.into_parts();
        // The proxy has stripped hop-by-hop headers already (a pass of
        // cheap compares when there are none); h2 refuses a request that
        // still has one, so they go here too whoever calls.
        super::headers::strip_hop_by_hop(&mut head.headers, false);
        let eos = body.is_end_stream();
        let (response, stream) =
            send.send_request(Request::from_parts(head, ()), eos).map_err(|e| Box::new((e.into(), None)))?;
        // Dropping the guard (the response's future dropped: the client
        // went away) resets a stream whose body is still being sent.
        let cancel = if eos { None } else { pipe(body, stream) };
        Ok(async move {
            let rsp = response.await?;
            if let Some(mut cancel) = cancel {
                // The response came: the body goes on being sent.
                cancel.0.take();
            }
            let (parts, recv) = rsp.into_parts();
            let body = H2Body::new(recv, &parts.headers);
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// Why [`Connection::send`] did not send: the error, and the request when
/// nothing of it was written (boxed where returned: it is rare, and large).
pub type Refused = (ClientError, Option<Request<RequestBody>>);

/// Pings the peer every [`KEEPALIVE_INTERVAL`]; says so on `dead` when an
/// answer does not come in [`KEEPALIVE_TIMEOUT`]. Ends with the connection.
async fn keepalive(mut ping: h2::PingPong, dead: oneshot::Sender<()>) {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection is gone, and its task knows.
            Ok(Err(_)) => return,
            Err(_) => {
                let _ = dead.send(());
                return;
            }
        }
    }
}

/// Sends `body` on `stream`: what is ready now goes at once, behind the
/// request's HEADERS; the rest, if any, from a task of its own, which the
/// returned guard cancels (resetting the stream) when dropped before the
/// response came.
fn pipe(body: RequestBody, stream: h2::SendStream<Bytes>) -> Option<CancelGuard> {
    let mut pipe = Pipe { body, stream, ahead: 0 };
    // One poll, here: a unary call's body is already in. Nothing waits on
    // this poll's waker; a body that is not all here gets a task, which
    // polls it again at once.
    let cx = &mut Context::from_waker(std::task::Waker::noop());
    match pipe.poll(cx) {
        Poll::Ready(result) => {
            if let Err(error) = result {
                tracing::debug!(%error, "request body not sent whole");
            }
            None
        }
        Poll::Pending => {
            let (cancel, cancelled) = oneshot::channel::<()>();
            tokio::spawn(async move {
                let mut cancelled = Some(cancelled);
                let sent = poll_fn(|cx| {
                    if let Some(rx) = &mut cancelled {
                        if let Poll::Ready(told) = Pin::new(rx).poll(cx) {
                            cancelled = None;
                            if told.is_ok() {
                                pipe.stream.send_reset(h2::Reason::CANCEL);
                                return Poll::Ready(Ok(()));
                            }
                        }
                    }
                    pipe.poll(cx)
                });
                if let Err(error) = sent.await {
                    tracing::debug!(%error, "request body not sent whole");
                }
            });
            Some(CancelGuard(Some(cancel)))
        }
    }
}

/// Resets the request's stream when the request is dropped before its
/// response headers arrived.
struct CancelGuard(Option<oneshot::Sender<()>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let _ = cancel.send(());
        }
    }
}

/// A request body on its way into an HTTP/2 stream.
struct Pipe {
    body: RequestBody,
    stream: h2::SendStream<Bytes>,
    /// Bytes sent ahead of flow-control capacity. A new stream has none
    /// until the connection task opens it, and waiting for it would send a
    /// small body's last frame (often an empty one that only ends the
    /// stream) in a write of its own; h2 keeps such bytes until the stream
    /// may send them. Past [`AHEAD`] bytes, the pipe waits for room, so a
    /// fast client cannot fill the proxy's memory.
    ahead: usize,
}

/// How much of a request body may go ahead of flow-control capacity.
const AHEAD: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Pipe {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if self.ahead >= AHEAD {
                self.stream.reserve_capacity(1);
                while self.stream.capacity() == 0 {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Poll::Ready(Err(error.into())),
                        None => return Poll::Ready(Err("the stream closed while its body was sent".into())),
                    }
                }
                self.ahead = 0;
            }
            if let Poll::Ready(reason) = self.stream.poll_reset(cx) {
                let reason = reason.map_err(BoxError::from)?;
                return Poll::Ready(Err(format!("upstream reset the stream ({reason})").into()));
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    self.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err(error));
                }
                None => {
                    self.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let eos = self.body.is_end_stream();
                    if self.stream.capacity() < data.len() {
                        self.ahead += data.len();
                    }
                    self.stream.send_data(data, eos)?;
                    if eos {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.stream.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// A response body from an HTTP/2 upstream. Flow-control credit goes back
/// to the upstream as each chunk is taken, that is, as the proxy's client
/// side is ready for it.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    /// What `content-length` said is still to come.
    remaining: Option<u64>,
}

impl H2Body {
    fn new(recv: h2::RecvStream, headers: &HeaderMap) -> Self {
        let remaining =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Self { recv, data_done: false, remaining }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.recv.is_end_stream(), self.remaining) {
            (true, _) => SizeHint::with_exact(0),
            (false, Some(n)) => SizeHint::with_exact(n),
            (false, None) => SizeHint::default(),
        }
    }
}
