//! weft-proxy on loopback, without root or iptables: configuration errors,
//! ingress-mode routing, the admin server and shutdown.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{process::Command, time::Duration};
use support::*;
use weft_test_support::{LocalProxy, apps, http_get};

#[test]
fn a_bad_variable_is_named_at_start_up() {
    let out = Command::new(PROXY)
        .env("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "fast")
        .output()
        .expect("running weft-proxy");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT="fast""#), "{stderr}");
}

#[test]
fn a_taken_port_is_named_at_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(PROXY)
        .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &addr)
        .output()
        .expect("running weft-proxy");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("LINKERD2_PROXY_ADMIN_LISTEN_ADDR={addr}")), "{stderr}");
}

async fn request(proxy: std::net::SocketAddr, req: Request<Empty<Bytes>>) -> http::Response<Bytes> {
    let sock = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.unwrap();
    tokio::spawn(conn);
    let (parts, body) = send.send_request(req).await.unwrap().into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn ingress_mode_routes_by_l5d_dst_override() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (stats, serve) = apps::http(listener);
    tokio::spawn(serve);

    let server = LocalProxy::start(PROXY.as_ref(), &[("WEFT_PROXY_INBOUND_FORWARD", &app.to_string())]);
    let client = LocalProxy::start(PROXY.as_ref(), &[("LINKERD2_PROXY_INGRESS_MODE", "true")]);

    let req = Request::get("/headers")
        .header("host", "web.test")
        .header("l5d-dst-override", server.inbound.to_string())
        .header("connection", "x-private")
        .header("x-private", "hop-by-hop")
        .body(Empty::new())
        .unwrap();
    let rsp = request(client.outbound, req).await;
    assert_eq!(rsp.status(), StatusCode::OK);
    let seen = String::from_utf8_lossy(rsp.body());
    assert!(seen.contains("host: web.test\n"), "the app saw:\n{seen}");
    assert!(!seen.contains("x-private"), "a hop-by-hop header reached the app:\n{seen}");
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Without an override, the authority is the route.
    let req = Request::get("/").header("host", server.inbound.to_string()).body(Empty::new()).unwrap();
    assert_eq!(request(client.outbound, req).await.body(), "hello");

    let (_, text) = http_get(client.admin, "/metrics").await.unwrap();
    let out = outbound_labels(&server.inbound.to_string(), server.inbound);
    assert_eq!(metric(&text, &format!("request_total{{{out}}}")), Some(2.0), "{text}");
}

#[tokio::test]
async fn admin_serves_ready_live_and_no_shutdown_by_default() {
    let proxy = LocalProxy::start(PROXY.as_ref(), &[]);
    assert_eq!(http_get(proxy.admin, "/ready").await.unwrap(), (200, "ready\n".into()));
    assert_eq!(http_get(proxy.admin, "/live").await.unwrap(), (200, "live\n".into()));
    assert_eq!(http_get(proxy.admin, "/nope").await.unwrap().0, 404);
    let req = Request::post("/shutdown").header("host", "admin").body(Empty::new()).unwrap();
    assert_eq!(request(proxy.admin, req).await.status(), StatusCode::NOT_FOUND);
}

#[test]
fn the_shutdown_endpoint_stops_the_proxy_cleanly() {
    let mut proxy =
        LocalProxy::start(PROXY.as_ref(), &[("LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "true")]);
    let admin = proxy.admin;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rsp = rt.block_on(async move {
        let req = Request::post("/shutdown").header("host", "admin").body(Empty::new()).unwrap();
        request(admin, req).await
    });
    assert_eq!(rsp.status(), StatusCode::OK);
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "weft-proxy exited with {status}");
}

#[test]
fn sigterm_with_nothing_in_flight_exits_0_at_once() {
    let mut proxy = LocalProxy::start(PROXY.as_ref(), &[]);
    proxy.signal(libc::SIGTERM);
    // The grace period is 2 minutes: an idle proxy must not wait for it.
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "weft-proxy exited with {status}");
}

/// Discovery without root: ingress mode routes by authority, and the
/// controller (serving a store directory) says where the service's
/// endpoints are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_mode_discovers_services_by_authority() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (stats, serve) = apps::http(listener);
    tokio::spawn(serve);

    let dir = std::env::temp_dir().join(format!("weft-local-discovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ port: 80, targetPort: {port} }}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: web-1, namespace: shop, labels: {{ app: web }} }}\nstatus: {{ podIP: 127.0.0.1 }}\n",
        port = app.port()
    );
    std::fs::write(dir.join("shop.yaml"), store).unwrap();
    let index =
        std::sync::Arc::new(std::sync::Mutex::new(weft_store::Index::new(weft_store::Config::default())));
    weft_store::DirSource::new(&dir).watch(index.clone()).unwrap();
    let controller = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller_addr = controller.local_addr().unwrap().to_string();
    tokio::spawn(weft_controller::serve_grpc(controller, index, weft_controller::Metrics::new(), None));

    let proxy = LocalProxy::start(
        PROXY.as_ref(),
        &[("LINKERD2_PROXY_INGRESS_MODE", "true"), ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &controller_addr)],
    );
    for _ in 0..3 {
        let req =
            Request::get("/").header("host", "web.shop.svc.cluster.local:80").body(Empty::new()).unwrap();
        let rsp = request(proxy.outbound, req).await;
        assert_eq!(rsp.status(), StatusCode::OK, "{:?}", rsp.headers().get("l5d-proxy-error"));
    }
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    let (_, text) = http_get(proxy.admin, "/metrics").await.unwrap();
    assert!(text.contains(r#"dst_namespace="shop",dst_service="web""#), "{text}");

    // A name the controller does not know is not routed anywhere by it.
    let req = Request::get("/").header("host", "nope.shop.svc.cluster.local:80").body(Empty::new()).unwrap();
    assert_ne!(request(proxy.outbound, req).await.status(), StatusCode::OK);
    let _ = std::fs::remove_dir_all(&dir);
}

/// weft's own HTTP/1 header read timeout (`WEFT_PROXY_HTTP1_HEADER_READ_TIMEOUT`):
/// a client that never finishes a request head, or sits idle between
/// requests, is let go after the timeout; a response that takes longer
/// than the timeout, and requests sent closer together than it, keep the
/// connection. The waits below are the timeout passing, what is tested.
#[tokio::test]
async fn http1_connections_without_a_request_head_are_closed_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{Instant, sleep, timeout};
    const TIMEOUT: Duration = Duration::from_millis(500);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap().to_string();
    let (stats, serve) = apps::http(listener);
    tokio::spawn(serve);
    let proxy = LocalProxy::start(
        PROXY.as_ref(),
        &[("WEFT_PROXY_INBOUND_FORWARD", &app), ("WEFT_PROXY_HTTP1_HEADER_READ_TIMEOUT", "500ms")],
    );

    // A head sent a few bytes at a time and never finished (slowloris).
    let sock = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let started = Instant::now();
    let (mut rx, mut tx) = sock.into_split();
    tx.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n").await.unwrap();
    let trickle = async move {
        while tx.write_all(b"x-slow: 1\r\n").await.is_ok() {
            sleep(Duration::from_millis(100)).await;
        }
        // Closed under a write: the read below says so.
        std::future::pending::<()>().await;
    };
    let closed = async move {
        let mut buf = [0u8; 64];
        // Closed: the end of the stream, or a reset if a write crossed it.
        if let Ok(n @ 1..) = rx.read(&mut buf).await {
            panic!("the proxy answered a head it never got whole: {:?}", &buf[..n]);
        }
    };
    let closed = tokio::select! {
        () = closed => true,
        () = trickle => unreachable!(),
        () = sleep(Duration::from_secs(20)) => false,
    };
    assert!(closed, "a head that never ends was not cut off by the header read timeout");
    assert!(started.elapsed() >= TIMEOUT, "closed after {:?}, before the timeout", started.elapsed());
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A response slower than the timeout, then requests at under the
    // timeout apart for longer than it, all on one connection.
    let sock = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.unwrap();
    let mut conn = tokio::spawn(conn);
    let get = |path: &str| Request::get(path).header("host", "app").body(Empty::<Bytes>::new()).unwrap();
    let slow = send.send_request(get("/slow"));
    let release = async {
        stats.slow_arrived.notified().await;
        sleep(TIMEOUT * 3).await;
        stats.release.notify_one();
    };
    let (slow, ()) = tokio::join!(slow, release);
    assert_eq!(slow.expect("the slow response arrives").status(), StatusCode::OK);
    for _ in 0..5 {
        sleep(TIMEOUT * 2 / 5).await;
        send.ready().await.expect("the connection is still open");
        let rsp = send.send_request(get("/")).await.expect("a request on the kept connection");
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "hello");
    }

    // Then idle: closed once the timeout has passed.
    let idle = Instant::now();
    let ended = timeout(Duration::from_secs(20), &mut conn).await;
    assert!(ended.is_ok(), "an idle keep-alive connection was kept past the header read timeout");
    assert!(idle.elapsed() >= TIMEOUT - Duration::from_millis(50), "closed after {:?} idle", idle.elapsed());
}

/// Linkerd's injector sets `LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE` and
/// `..._OUTBOUND_CONNECT_KEEPALIVE` (`10000ms`): the kernel then probes a
/// connection after that long idle, which `ss -o` shows as the socket's
/// keepalive timer. Without them, the proxy's sockets have none.
#[tokio::test]
async fn tcp_keepalive_follows_linkerds_variables() {
    let mut app_addrs = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        app_addrs.push(listener.local_addr().unwrap());
        tokio::spawn(apps::http(listener).1);
    }
    let (app_with, app_without) = (app_addrs[0].to_string(), app_addrs[1].to_string());
    let with = LocalProxy::start(
        PROXY.as_ref(),
        &[
            ("WEFT_PROXY_INBOUND_FORWARD", &app_with),
            ("LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE", "7s"),
            ("LINKERD2_PROXY_INBOUND_CONNECT_KEEPALIVE", "9000ms"),
        ],
    );
    let without = LocalProxy::start(PROXY.as_ref(), &[("WEFT_PROXY_INBOUND_FORWARD", &app_without)]);

    // One request through each, and one to the admin server that takes
    // the inbound side's keepalive, on connections kept open (as is the
    // proxy's pooled connection to the app).
    let mut open = Vec::new();
    for (addr, path) in [(with.inbound, "/"), (without.inbound, "/"), (with.admin, "/ready")] {
        let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path).header("host", "web.test").body(Empty::<Bytes>::new()).unwrap();
        let rsp = send.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        rsp.into_body().collect().await.unwrap();
        open.push(send);
    }

    // A socket shows a retransmit timer instead while data is unacknowledged:
    // wait for the keepalive timers to be what `ss` shows.
    let accepted = format!(":{}", with.inbound.port());
    let admin = format!(":{}", with.admin.port());
    let to_app = format!(":{}", app_addrs[0].port());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let accepted_timers = keepalive_ms("sport", &accepted);
        let admin_timers = keepalive_ms("sport", &admin);
        let to_app_timers = keepalive_ms("dport", &to_app);
        let ok = |timers: &[Option<u64>], max_ms| {
            !timers.is_empty() && timers.iter().all(|t| t.is_some_and(|t| t <= max_ms))
        };
        if ok(&accepted_timers, 7_000) && ok(&admin_timers, 7_000) && ok(&to_app_timers, 9_000) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keepalive timers (ms) on the accepted sockets: {accepted_timers:?} (want <= 7000), \
             on the admin server's: {admin_timers:?} (want <= 7000), \
             on the connections to the app: {to_app_timers:?} (want <= 9000)"
        );
        tokio::task::yield_now().await;
    }
    let plain = keepalive_ms("sport", &format!(":{}", without.inbound.port()));
    assert_eq!(plain, [None], "a proxy without the variables kept a keepalive timer");
    let plain = keepalive_ms("dport", &format!(":{}", app_addrs[1].port()));
    assert_eq!(plain, [None], "a proxy without the variables kept a keepalive timer");
    drop(open);
}

/// The keepalive timer, in milliseconds, of each established TCP socket
/// whose `side` (`sport` or `dport`) is `port` (`:4143`), from `ss -o`
/// (`timer:(keepalive,6.988ms,0)` is 6 s 988 ms; `2min`, `12sec`).
fn keepalive_ms(side: &str, port: &str) -> Vec<Option<u64>> {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", side, "=", port])
        .output()
        .expect("running ss (iproute2)");
    assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    let parse = |t: &str| -> Option<u64> {
        let (min, rest) = match t.split_once("min") {
            Some((m, rest)) => (m.parse::<u64>().ok()?, rest),
            None => (0, t),
        };
        let (secs, ms) = if let Some(s) = rest.strip_suffix("sec") {
            (s.parse::<u64>().ok()?, 0)
        } else if let Some(body) = rest.strip_suffix("ms") {
            match body.split_once('.') {
                Some((s, ms)) => (s.parse().ok()?, ms.parse().ok()?),
                None => (0, body.parse().ok()?),
            }
        } else if rest.is_empty() {
            (0, 0)
        } else {
            return None;
        };
        Some(min * 60_000 + secs * 1_000 + ms)
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split("timer:(keepalive,").nth(1).and_then(|t| parse(t.split(',').next()?)))
        .collect()
}

/// `LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL` and `..._TIMEOUT`:
/// an HTTP/2 client is pinged that often, and one that does not answer is
/// let go. The client here speaks raw frames so that it answers nothing.
#[tokio::test]
async fn http2_clients_are_pinged_as_configured_and_dropped_when_silent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap().to_string();
    tokio::spawn(apps::http(listener).1);
    let proxy = LocalProxy::start(
        PROXY.as_ref(),
        &[
            ("WEFT_PROXY_INBOUND_FORWARD", &app),
            ("LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL", "1s"),
            ("LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT", "500ms"),
        ],
    );

    let mut sock = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    // The connection preface and an empty SETTINGS frame.
    sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let started = std::time::Instant::now();
    // With the default interval (10 s) no PING would come before this.
    let deadline = Duration::from_secs(8);
    let (mut pinged, mut buf) = (None, Vec::new());
    let closed = loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at((started + deadline).into(), sock.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => break true, // reset: closed
            Err(_) => break false,
        };
        if n == 0 {
            break true;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Frames: 3-byte length, type, flags, 4-byte stream id, payload.
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            if kind == 0x6 && flags & 0x1 == 0 && pinged.is_none() {
                pinged = Some(started.elapsed());
            }
            buf.drain(..9 + len);
        }
    };
    let pinged = pinged.expect("no PING within 8 s: the configured 1 s interval was not used");
    assert!(pinged < Duration::from_secs(5), "first PING after {pinged:?}");
    assert!(closed, "a client that never answered a PING was still connected after {deadline:?}");
}

/// A user moving a Linkerd manifest over hears which of its proxy
/// variables weft-proxy does not use (or which are misspelt).
#[test]
fn variables_weft_does_not_read_are_logged_at_start_up() {
    let proxy = LocalProxy::start(
        PROXY.as_ref(),
        &[("LINKERD2_PROXY_INBOUND_IPS", "10.0.0.1"), ("LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE", "10000ms")],
    );
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("set, and not used by weft-proxy"))
        .unwrap_or_else(|| panic!("no line about unused variables in:\n{log}"));
    assert!(line.contains("LINKERD2_PROXY_INBOUND_IPS"), "{line}");
    assert!(!line.contains("KEEPALIVE") && !line.contains("LISTEN_ADDR"), "{line}");
}
