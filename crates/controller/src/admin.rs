//! The controller's admin server: `/metrics` and `/ready`.

use crate::Metrics;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc};
use tokio::net::TcpListener;
use weft_store::SharedIndex;

pub async fn serve_admin(listener: TcpListener, index: SharedIndex, metrics: Arc<Metrics>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let (index, metrics) = (index.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let rsp = match req.uri().path() {
                    "/metrics" => Response::builder()
                        .header(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(metrics.encode(&index)))),
                    "/ready" | "/live" => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
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
