//! The controller's admin server: `/metrics`, `/ready`, and what the
//! observability commands ask (`/api/proxies`, `/api/stat`, `/api/edges`,
//! as JSON).

use crate::{Metrics, observe::Observer};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
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
                let query = req.uri().query().unwrap_or_default().to_string();
                let rsp = match (req.uri().path(), &observer) {
                    ("/metrics", _) => Response::builder()
                        .header(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(metrics.encode(&index)))),
                    ("/ready" | "/live", _) => {
                        Response::builder().body(Full::new(Bytes::from_static(b"ok\n")))
                    }
                    ("/api/proxies", Some(o)) => json(&o.proxies()),
                    ("/api/stat", Some(o)) => {
                        let window = Duration::from_secs(
                            param(&query, "window").and_then(|w| w.parse().ok()).unwrap_or(30),
                        );
                        let by_pod = param(&query, "by") == Some("pod");
                        json(&o.stat(param(&query, "namespace"), by_pod, window))
                    }
                    ("/api/edges", Some(o)) => json(&o.edges(param(&query, "namespace"))),
                    _ => Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"not found\n"))),
                };
                std::future::ready(Ok::<_, Infallible>(rsp.expect("a valid response")))
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
        });
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response<Full<Bytes>>, http::Error> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder().header(header::CONTENT_TYPE, "application/json").body(Full::new(Bytes::from(body)))
}

/// A query parameter (values are plain names and numbers: no decoding).
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).filter(|v| !v.is_empty())
}
