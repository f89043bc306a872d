//! The applications that run in test pods: an HTTP server (HTTP/1 and
//! HTTP/2), a gRPC service, a WebSocket echo, a TCP echo, and a server that
//! speaks first.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Notify,
};

/// What the HTTP app saw.
#[derive(Default)]
pub struct HttpStats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// `/slow` requests wait for this before answering.
    pub release: Notify,
    /// Notified when a `/slow` request arrives.
    pub slow_arrived: Notify,
    /// Added to every answer, in milliseconds (a slow endpoint).
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// This share of requests (in percent) is answered 500, spread evenly
    /// (never two in a row below 50%).
    pub fail_percent: std::sync::atomic::AtomicU64,
    /// Requests answered 500 on purpose.
    pub failed: AtomicUsize,
}

impl HttpStats {
    /// Whether request number `n` fails, for a failing share of `percent`.
    fn fails(&self, n: usize) -> bool {
        let percent = self.fail_percent.load(Ordering::Relaxed) as usize;
        percent >= 100 || (percent > 0 && (n * percent) % 100 < percent)
    }
}

/// Serves HTTP/1 and HTTP/2 (prior knowledge) on `listener`:
/// - `/bytes/N`: N bytes of body
/// - `/upload`: reads the whole body and answers with its length
/// - `/headers`: answers with the request's headers, one per line
/// - `/slow`: answers only once [`HttpStats::release`] is notified
/// - `/status/N`: answers with status N
/// - `CONNECT`: a tunnel that echoes
/// - anything else: `hello`
pub fn http(listener: TcpListener) -> (Arc<HttpStats>, impl Future<Output = ()>) {
    let stats = Arc::new(HttpStats::default());
    let serve = {
        let stats = stats.clone();
        async move {
            loop {
                let Some(sock) = accept(&listener).await else { continue };
                stats.connections.fetch_add(1, Ordering::SeqCst);
                let stats = stats.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(stats.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                        .await;
                });
            }
        }
    };
    (stats, serve)
}

async fn handle(stats: Arc<HttpStats>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = stats.requests.fetch_add(1, Ordering::SeqCst);
    let delay = stats.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if stats.fails(n) {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        let rsp = Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Full::from("failing on purpose"));
        return Ok(rsp.unwrap());
    }
    if let Some(status) = req.uri().path().strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(Response::builder().status(status).body(Full::default()).unwrap());
    }
    if req.method() == http::Method::CONNECT {
        // A forward proxy's tunnel: answer 200, then echo what comes.
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        });
        return Ok(Response::new(Full::default()));
    }
    let path = req.uri().path().to_string();
    let body = if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        Bytes::from(vec![b'x'; n])
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => {
                    let rsp =
                        Response::builder().status(StatusCode::BAD_REQUEST).body(Full::from(e.to_string()));
                    return Ok(rsp.unwrap());
                }
            }
        }
        Bytes::from(total.to_string())
    } else if path == "/headers" {
        let mut text = String::new();
        for (name, value) in req.headers() {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("<binary>")));
        }
        Bytes::from(text)
    } else if path == "/slow" {
        let released = stats.release.notified();
        stats.slow_arrived.notify_one();
        released.await;
        Bytes::from_static(b"slow")
    } else {
        Bytes::from_static(b"hello")
    };
    Ok(Response::new(Full::new(body)))
}

/// A gRPC service (grpc.health.v1.Health: unary `Check`, server-streaming
/// `Watch`); the reporter changes what it answers.
pub fn grpc(listener: TcpListener) -> (tonic_health::server::HealthReporter, impl Future<Output = ()>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    // Served by hyper directly: tonic's own server would bring its router
    // (and axum) into every test build.
    let serve = async move {
        loop {
            let Some(sock) = accept(&listener).await else { continue };
            let svc = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    };
    (reporter, serve)
}

/// A gRPC server that answers every unary call (whatever its method) with
/// `grpc.health.v1.HealthCheckResponse { status: SERVING }`, except a share
/// of calls (`HttpStats::fail_percent`, spread as for HTTP) that fail with
/// `UNAVAILABLE` in a trailers-only response.
pub fn grpc_flaky(listener: TcpListener) -> (Arc<HttpStats>, impl Future<Output = ()>) {
    use http_body_util::StreamBody;
    let stats = Arc::new(HttpStats::default());
    let serve = {
        let stats = stats.clone();
        async move {
            loop {
                let Some(sock) = accept(&listener).await else { continue };
                let stats = stats.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let stats = stats.clone();
                        async move {
                            let n = stats.requests.fetch_add(1, Ordering::SeqCst);
                            let _ = req.into_body().collect().await;
                            type Frames = Vec<Result<http_body::Frame<Bytes>, Infallible>>;
                            let rsp = Response::builder().header("content-type", "application/grpc");
                            let rsp = if stats.fails(n) {
                                stats.failed.fetch_add(1, Ordering::SeqCst);
                                let frames: Frames = vec![];
                                rsp.header("grpc-status", "14")
                                    .header("grpc-message", "failing on purpose")
                                    .body(StreamBody::new(futures_util::stream::iter(frames)))
                            } else {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                                // One message: status = SERVING (field 1, varint 1).
                                let message = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
                                let frames: Frames = vec![
                                    Ok(http_body::Frame::data(message)),
                                    Ok(http_body::Frame::trailers(trailers)),
                                ];
                                rsp.body(StreamBody::new(futures_util::stream::iter(frames)))
                            };
                            Ok::<_, Infallible>(rsp.unwrap())
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        }
    };
    (stats, serve)
}

/// Echoes every WebSocket message back.
pub async fn websocket_echo(listener: TcpListener) {
    use futures_util::{SinkExt, StreamExt};
    loop {
        let Some(sock) = accept(&listener).await else { continue };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Echoes bytes until the client closes its side, then closes its own:
/// a client that half-closes still gets every byte back.
pub async fn tcp_echo(listener: TcpListener) {
    loop {
        let Some(mut sock) = accept(&listener).await else { continue };
        tokio::spawn(async move {
            let (mut r, mut w) = sock.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Speaks first (as SMTP and MySQL servers do), then echoes.
pub async fn banner(listener: TcpListener, banner: &'static [u8]) {
    loop {
        let Some(mut sock) = accept(&listener).await else { continue };
        tokio::spawn(async move {
            if sock.write_all(banner).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            while let Ok(n) = sock.read(&mut buf).await {
                if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The next connection, without Nagle's delay on answers written in more
/// than one piece, as real servers have it (Go's and gRPC's set it by
/// default).
async fn accept(listener: &TcpListener) -> Option<tokio::net::TcpStream> {
    let (sock, _) = listener.accept().await.ok()?;
    let _ = sock.set_nodelay(true);
    Some(sock)
}
