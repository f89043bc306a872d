//! The controller's admin server: `/metrics`, `/ready`, the dashboard
//! (`/`), and the JSON API that the dashboard and the observability
//! commands use (docs/dashboard.md lists it).

use crate::{
    Metrics, dashboard,
    observe::{Observer, now_unix},
    policy_view,
};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use weft_store::SharedIndex;

pub async fn serve_admin(
    listener: TcpListener,
    index: SharedIndex,
    metrics: Arc<Metrics>,
    observer: Option<Arc<Observer>>,
) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let (index, metrics, observer) = (index.clone(), metrics.clone(), observer.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let rsp = handle(&req, &index, &metrics, observer.as_deref());
                std::future::ready(Ok::<_, Infallible>(rsp.expect("a valid response")))
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
        });
    }
}

fn handle<B>(
    req: &http::Request<B>,
    index: &SharedIndex,
    metrics: &Metrics,
    observer: Option<&Observer>,
) -> Result<Response<Body>, http::Error> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or_default();
    if !matches!(path, "/metrics" | "/ready" | "/live") {
        // The dashboard and its API: nothing here changes the mesh, and
        // nothing answers another site's page (DNS rebinding) or writes.
        if let Some(refusal) = dashboard::refusal(req) {
            return refusal;
        }
        if let Some(asset) = dashboard::asset(path) {
            return asset;
        }
    }
    let window = || Duration::from_secs(param(query, "window").and_then(|w| w.parse().ok()).unwrap_or(30));
    let named = |name| param(query, name).map(decode);
    match (path, observer) {
        ("/api/tap", Some(o)) => tap(o, query),
        ("/metrics", _) => Response::builder()
            .header(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(full(metrics.encode(index))),
        ("/ready" | "/live", _) => Response::builder().body(full("ok\n")),
        ("/api/proxies", Some(o)) => json(&o.proxies()),
        ("/api/check", Some(o)) => {
            json(&crate::observe::check::checks(&metrics.encode(index), &o.proxies(), now_unix()))
        }
        ("/api/stat", Some(o)) => match param(query, "by") {
            Some("svc") => json(&o.stat_services(param(query, "namespace"), window())),
            by => json(&o.stat(param(query, "namespace"), by == Some("pod"), window())),
        },
        ("/api/edges", Some(o)) => json(&o.edges(param(query, "namespace"))),
        ("/api/topology", Some(o)) => json(&o.topology(param(query, "namespace"), window())),
        ("/api/routes", Some(o)) => {
            json(&o.routes(named("namespace").as_deref(), named("workload").as_deref(), window()))
        }
        ("/api/series" | "/api/policy" | "/api/denials", Some(o)) => {
            let (Some(ns), Some(workload)) = (named("namespace"), named("workload")) else {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(full("namespace and workload are required\n"));
            };
            match path {
                "/api/series" => json(&o.series(&ns, &workload, window())),
                "/api/denials" => json(&o.denials(&ns, &workload, window())),
                _ => {
                    let index = crate::lock(o.index());
                    json(&policy_view::workload_policies(&index, &o.inbound_config(), &ns, &workload))
                }
            }
        }
        _ => Response::builder().status(StatusCode::NOT_FOUND).body(full("not found\n")),
    }
}

pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response<Body>, http::Error> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder().header(header::CONTENT_TYPE, "application/json").body(full(body))
}

/// `/api/tap`: tap events as JSON lines, for as long as the client reads.
fn tap(observer: &Observer, query: &str) -> Result<Response<Body>, http::Error> {
    let get = |name| param(query, name).map(decode);
    let Some(namespace) = get("namespace") else {
        return Response::builder().status(StatusCode::BAD_REQUEST).body(full("namespace is required\n"));
    };
    let query = crate::tap::TapQuery {
        namespace,
        workload: get("workload"),
        pod: get("pod"),
        method: get("method"),
        path: get("path"),
        authority: get("authority"),
        limit: get("limit").and_then(|l| l.parse().ok()).unwrap_or(0),
    };
    let Some(rx) = observer.tap(query) else {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(full("taps need the controller's identity: start it with --identity-dir\n"));
    };
    use futures_util::StreamExt;
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|line| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(line + "\n"))));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(lines)))
}

/// Percent-decoding of a query value.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query parameter (values are plain names and numbers: no decoding).
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).filter(|v| !v.is_empty())
}
