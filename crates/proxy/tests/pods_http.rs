//! HTTP through two real proxies in two pods (network namespaces with
//! proxy-init's iptables rules): the client's app connects to the server's
//! address as if there were no mesh.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::Ordering;
use support::*;
use weft_test_support::apps;

#[test]
fn http1_keep_alive_with_exact_metrics() {
    let Some(mesh) = Mesh::start("http1_keep_alive_with_exact_metrics") else { return };
    let (stats, serve) = apps::http(mesh.server.listen(8080));
    mesh.server.spawn(serve);
    let dst = mesh.server_addr(8080);

    mesh.client.block_on(async move {
        let sock = tokio::net::TcpStream::connect(dst).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.unwrap();
        tokio::spawn(conn);
        for i in 0..7 {
            let req = Request::get(format!("/bytes/{}", 100 + i))
                .header("host", "web.test:8080")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let rsp = send.send_request(req).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
            assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes().len(), 100 + i);
        }
    });
    // One connection all the way: client → proxy → proxy → app.
    assert_eq!(stats.connections.load(Ordering::SeqCst), 1, "keep-alive reused no connection");
    assert_eq!(stats.requests.load(Ordering::SeqCst), 7);

    let out = outbound_labels("web.test:8080", dst);
    await_metric(&mesh.client, &format!("request_total{{{out}}}"), 7.0);
    await_metric(
        &mesh.client,
        &format!(r#"response_total{{{out},status_code="200",classification="success"}}"#),
        7.0,
    );
    await_metric(&mesh.client, &format!(r#"response_latency_ms_count{{{out},status_code="200"}}"#), 7.0);
    let inb = inbound_labels("web.test:8080", dst);
    await_metric(&mesh.server, &format!("request_total{{{inb}}}"), 7.0);
    await_metric(
        &mesh.server,
        &format!(r#"response_total{{{inb},status_code="200",classification="success"}}"#),
        7.0,
    );

    let tcp = format!(
        r#"direction="outbound",peer="src",target_addr="{dst}",tls="no_identity",no_tls_reason="not_provided_by_service_discovery""#
    );
    await_metric(&mesh.client, &format!("tcp_open_total{{{tcp}}}"), 1.0);
    let text = mesh.client.metrics();
    let read = metric(&text, &format!("tcp_read_bytes_total{{{tcp}}}")).unwrap();
    let written = metric(&text, &format!("tcp_write_bytes_total{{{tcp}}}")).unwrap();
    assert!(read > 7.0 * 40.0, "read {read} bytes from the app");
    assert!(written > (100..107).sum::<usize>() as f64, "wrote {written} bytes to the app");
}

#[test]
fn h2c_multiplexes_on_one_connection() {
    let Some(mesh) = Mesh::start("h2c_multiplexes_on_one_connection") else { return };
    let (stats, serve) = apps::http(mesh.server.listen(8080));
    mesh.server.spawn(serve);
    let dst = mesh.server_addr(8080);

    mesh.client.block_on(async move {
        let sock = tokio::net::TcpStream::connect(dst).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(sock)).await.unwrap();
        tokio::spawn(conn);
        let requests = (0..20).map(|i| {
            let mut send = send.clone();
            async move {
                let req = Request::get(format!("http://web.test:8080/bytes/{i}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let rsp = send.send_request(req).await.unwrap();
                assert_eq!(rsp.version(), http::Version::HTTP_2);
                assert_eq!(rsp.status(), StatusCode::OK);
                assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes().len(), i);
            }
        });
        futures_util::future::join_all(requests).await;
    });
    assert_eq!(stats.requests.load(Ordering::SeqCst), 20);
    assert_eq!(stats.connections.load(Ordering::SeqCst), 1, "HTTP/2 was not multiplexed");
    let out = outbound_labels("web.test:8080", dst);
    await_metric(&mesh.client, &format!("request_total{{{out}}}"), 20.0);
}

#[test]
fn a_1gib_upload_streams_without_buffering() {
    let Some(mesh) = Mesh::start("a_1gib_upload_streams_without_buffering") else { return };
    let (_stats, serve) = apps::http(mesh.server.listen(8080));
    mesh.server.spawn(serve);
    let dst = mesh.server_addr(8080);
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16 * 1024; // 1 GiB

    let echoed = mesh.client.block_on(async move {
        let sock = tokio::net::TcpStream::connect(dst).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.unwrap();
        tokio::spawn(conn);
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        let frames = futures_util::stream::iter(
            (0..CHUNKS)
                .map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone()))),
        );
        let req = Request::post("/upload").header("host", "web.test").body(StreamBody::new(frames)).unwrap();
        let rsp = send.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        rsp.into_body().collect().await.unwrap().to_bytes()
    });
    assert_eq!(echoed, (CHUNK * CHUNKS).to_string());
    // And it went through the proxy.
    let tcp = format!(
        r#"direction="outbound",peer="src",target_addr="{dst}",tls="no_identity",no_tls_reason="not_provided_by_service_discovery""#
    );
    let read = metric(&mesh.client.metrics(), &format!("tcp_read_bytes_total{{{tcp}}}")).unwrap();
    assert!(read >= (CHUNK * CHUNKS) as f64, "the client's proxy read only {read} bytes");
    // Buffering even a tenth of the body would show here.
    for (name, proxy) in [("client", &mesh.client_proxy), ("server", &mesh.server_proxy)] {
        let peak = proxy.peak_rss_kib();
        println!("the {name} proxy peaked at {peak} KiB");
        assert!(peak > 0 && peak < 64 * 1024, "the {name} proxy peaked at {peak} KiB");
    }
}

/// Serves h2c on `listener`, each request answered by `answer`.
async fn serve_h2<F, Fut, B>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((sock, _)) = listener.accept().await else { return };
        let svc = hyper::service::service_fn(move |req| {
            let rsp = answer(req);
            async move { Ok::<_, std::convert::Infallible>(rsp.await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

/// An HTTP/2 echo service: the response body is the request body, sent
/// back as it arrives, the response head first.
async fn h2_echo(listener: tokio::net::TcpListener) {
    serve_h2(listener, |req| async move { hyper::Response::new(req.into_body()) }).await
}

/// An h2c client's request whose body is what `chunks` sends.
async fn h2_request(
    dst: std::net::SocketAddr,
    path: &str,
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
) -> hyper::Response<hyper::body::Incoming> {
    let sock = tokio::net::TcpStream::connect(dst).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(sock)).await.unwrap();
    tokio::spawn(conn);
    let frames = Box::pin(futures_util::stream::unfold(chunks, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk)), rx))
    }));
    let req =
        Request::post(format!("http://web.test:{}{path}", dst.port())).body(StreamBody::new(frames)).unwrap();
    send.send_request(req).await.unwrap()
}

#[test]
fn http2_request_and_response_bodies_stream_both_ways() {
    let Some(mesh) = Mesh::start("http2_request_and_response_bodies_stream_both_ways") else { return };
    mesh.server.spawn(h2_echo(mesh.server.listen(8082)));
    let dst = mesh.server_addr(8082);

    mesh.client.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Bytes::from_static(b"chunk 0")).await.unwrap();
        let rsp = h2_request(dst, "/echo", rx).await;
        assert_eq!(rsp.status(), StatusCode::OK);
        let mut body = rsp.into_body();
        // Each chunk comes back before the next is sent: neither proxy
        // waits for the end of the request body, nor holds the response's.
        for i in 0..10 {
            if i > 0 {
                tx.send(Bytes::from(format!("chunk {i}"))).await.unwrap();
            }
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), format!("chunk {i}"));
        }
        drop(tx);
        while let Some(frame) = body.frame().await {
            assert!(frame.unwrap().data_ref().is_none_or(|d| d.is_empty()), "more came back than was sent");
        }
    });
}

/// An HTTP/2 service that reads uploads slowly (a millisecond per 256 KiB)
/// and answers with the number of bytes read.
async fn h2_slow_sink(listener: tokio::net::TcpListener) {
    serve_h2(listener, |req| async move {
        let mut body = req.into_body();
        let (mut total, mut since_pause) = (0, 0);
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            total += n;
            since_pause += n;
            if since_pause >= 256 * 1024 {
                since_pause = 0;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        hyper::Response::new(http_body_util::Full::new(Bytes::from(total.to_string())))
    })
    .await
}

#[test]
fn an_http2_upload_to_a_slow_reader_streams_without_buffering() {
    let Some(mesh) = Mesh::start("an_http2_upload_to_a_slow_reader_streams_without_buffering") else {
        return;
    };
    mesh.server.spawn(h2_slow_sink(mesh.server.listen(8083)));
    let dst = mesh.server_addr(8083);
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 2 * 1024; // 128 MiB
    let before = [mesh.client_proxy.rss_kib(), mesh.server_proxy.rss_kib()];

    let echoed = mesh.client.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![7u8; CHUNK]);
            for _ in 0..CHUNKS {
                tx.send(chunk.clone()).await.unwrap();
            }
        });
        let rsp = h2_request(dst, "/upload", rx).await;
        assert_eq!(rsp.status(), StatusCode::OK);
        rsp.into_body().collect().await.unwrap().to_bytes()
    });
    assert_eq!(echoed, (CHUNK * CHUNKS).to_string());
    // The client writes far faster than the service reads: only HTTP/2
    // flow control, kept by both proxies, stops the difference piling up
    // in them. Each offers a peer 2 MiB per connection ahead of its
    // reader; buffering even a tenth of the body would show here. (The
    // growth is measured, not the total, which in a debug build under a
    // loaded machine varies by more than the windows.)
    let proxies = [("client", &mesh.client_proxy), ("server", &mesh.server_proxy)];
    for ((name, proxy), before) in proxies.into_iter().zip(before) {
        let peak = proxy.peak_rss_kib();
        println!("the {name} proxy grew from {before} KiB to a peak of {peak} KiB");
        assert!(before > 0 && peak > 0, "no memory figures for the {name} proxy");
        let grown = peak.saturating_sub(before);
        assert!(grown < 12 * 1024, "the {name} proxy grew by {grown} KiB to {peak} KiB");
    }
}

#[test]
fn websocket_upgrades_are_tunnelled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let Some(mesh) = Mesh::start("websocket_upgrades_are_tunnelled") else { return };
    mesh.server.spawn(apps::websocket_echo(mesh.server.listen(8081)));
    let dst = mesh.server_addr(8081);

    mesh.client.block_on(async move {
        let sock = tokio::net::TcpStream::connect(dst).await.unwrap();
        let (mut ws, rsp) =
            tokio_tungstenite::client_async("ws://chat.test:8081/socket", sock).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
        let big = vec![42u8; 200 * 1024];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        ws.close(None).await.unwrap();
    });
}

#[test]
fn failed_connects_are_answered_502_and_timeouts_504() {
    let client_env = [("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "300ms")];
    let Some(mesh) = Mesh::start_with("failed_connects_are_answered_502_and_timeouts_504", &client_env, &[])
    else {
        return;
    };
    // Nothing listens on the server's port 9999: its proxy answers.
    let refused = mesh.server_addr(9999);
    let rsp = mesh.client.block_on(get(refused, "gone.test:9999", "/"));
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    let error = rsp.headers()["l5d-proxy-error"].to_str().unwrap();
    assert!(error.contains(&format!("connect to {refused} failed")), "{error}");
    await_metric(
        &mesh.server,
        &format!(
            r#"response_total{{{},status_code="502",classification="failure",error="connect"}}"#,
            inbound_labels("gone.test:9999", refused)
        ),
        1.0,
    );

    // No pod has this address: the client's proxy gives up connecting.
    let nowhere = std::net::SocketAddr::from((mesh.net.unused_ip(), 80));
    let rsp = mesh.client.block_on(get(nowhere, "nowhere.test", "/"));
    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    let error = rsp.headers()["l5d-proxy-error"].to_str().unwrap();
    assert!(error.contains("timed out"), "{error}");
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let Some(mut mesh) = Mesh::start("sigterm_finishes_the_request_in_flight_then_exits_0") else { return };
    let (stats, serve) = apps::http(mesh.server.listen(8080));
    mesh.server.spawn(serve);
    let dst = mesh.server_addr(8080);

    let in_flight = mesh.client.spawn(get(dst, "web.test", "/slow"));
    mesh.client.block_on({
        let stats = stats.clone();
        async move { stats.slow_arrived.notified().await }
    });

    mesh.server_proxy.signal(libc::SIGTERM);
    // Draining: the admin server says not ready, the request still waits.
    mesh.server.block_on(weft_test_support::wait_for(
        "the server's proxy to report draining",
        std::time::Duration::from_secs(10),
        || async {
            matches!(weft_test_support::http_get(([127, 0, 0, 1], 4191).into(), "/ready").await, Ok((503, _)))
        },
    ));
    assert!(!in_flight.is_finished());

    stats.release.notify_one();
    let rsp = mesh.client.block_on(async move { in_flight.await.unwrap() });
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.body(), "slow");
    let status = mesh.server_proxy.wait_exit(std::time::Duration::from_secs(20));
    assert!(status.success(), "weft-proxy exited with {status}");
}
