//! Taps through the controller: `/api/tap` on the admin port opens
//! `io.linkerd.proxy.tap.Tap/Observe` on each matching pod's proxy (its
//! control port, over mesh TLS as the tap service's identity) and streams
//! the events back as JSON lines.

use crate::identity::Ca;
use linkerd2_proxy_api::{
    http_types::HttpMethod,
    tap::{
        ObserveRequest, TapEvent,
        observe_request::{
            Match,
            r#match::{
                Http, Match as M, Seq, http::Match as HttpMatch, http::StringMatch, http::string_match,
            },
        },
        tap_client::TapClient,
        tap_event::{self, http as ev},
    },
};
use serde::Serialize;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::mpsc;
use weft_store::{Kind, Resource, SharedIndex};

/// What to tap.
#[derive(Debug, Default)]
pub struct TapQuery {
    pub namespace: String,
    /// A workload (`app` label), or all of the namespace's.
    pub workload: Option<String>,
    pub pod: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub limit: u32,
}

/// One event, as `weft tap` prints it.
#[derive(Serialize)]
pub struct TapLine {
    pub pod: String,
    pub direction: &'static str,
    /// `request` or `response`.
    pub event: &'static str,
    pub id: String,
    pub source: String,
    pub destination: String,
    pub tls: String,
    pub client_id: Option<String>,
    pub server_id: Option<String>,
    pub method: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub status: Option<u32>,
    pub latency_ms: Option<f64>,
    /// `end` events: the response body's length and how it ended.
    pub bytes: Option<u64>,
    pub grpc_status: Option<u32>,
    pub reset: Option<bool>,
}

const CONTROL_PORT: u16 = 4190;

/// Starts the taps; lines arrive on the receiver until it is dropped (or
/// every tap ends). Errors (a proxy that cannot be tapped) arrive as
/// lines starting with `error:`.
pub fn start(index: &SharedIndex, ca: Arc<Ca>, query: TapQuery) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(256);
    let targets = targets(index, ca.names().trust_domain.as_str(), &query);
    if targets.is_empty() {
        let _ = tx.try_send(format!("error: no meshed pod matches in namespace {}", query.namespace));
    }
    let request = observe_request(&query);
    for (pod, addr, identity) in targets {
        let (tx, ca, request) = (tx.clone(), ca.clone(), request.clone());
        tokio::spawn(async move {
            if let Err(error) = tap_one(&pod, addr, &identity, ca, request, &tx).await {
                let _ = tx.send(format!("error: {pod}: {error}")).await;
            }
        });
    }
    rx
}

fn targets(index: &SharedIndex, trust_domain: &str, q: &TapQuery) -> Vec<(String, SocketAddr, String)> {
    let index = crate::lock(index);
    index
        .in_namespace(Kind::Pod, &q.namespace)
        .filter_map(|r| {
            let Resource::Pod(pod) = r else { return None };
            let meta = &pod.metadata;
            let name = meta.name.clone()?;
            let labels = meta.labels.clone().unwrap_or_default();
            let cp = labels.get("linkerd.io/control-plane-ns")?;
            if q.pod.as_ref().is_some_and(|p| *p != name) {
                return None;
            }
            if q.workload.as_ref().is_some_and(|w| labels.get("app") != Some(w)) {
                return None;
            }
            let ip = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let port = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get("config.linkerd.io/control-port"))
                .and_then(|p| p.parse().ok())
                .unwrap_or(CONTROL_PORT);
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let identity = format!("{sa}.{}.serviceaccount.identity.{cp}.{trust_domain}", q.namespace);
            Some((name, SocketAddr::new(ip, port), identity))
        })
        .collect()
}

fn observe_request(q: &TapQuery) -> ObserveRequest {
    let mut all = Vec::new();
    let http = |m| Match { r#match: Some(M::Http(Http { r#match: Some(m) })) };
    if let Some(method) = q.method.as_ref().and_then(|m| http::Method::from_bytes(m.as_bytes()).ok()) {
        all.push(http(HttpMatch::Method(HttpMethod::from(method))));
    }
    if let Some(path) = &q.path {
        all.push(http(HttpMatch::Path(StringMatch {
            r#match: Some(string_match::Match::Prefix(path.clone())),
        })));
    }
    if let Some(authority) = &q.authority {
        all.push(http(HttpMatch::Authority(StringMatch {
            r#match: Some(string_match::Match::Exact(authority.clone())),
        })));
    }
    ObserveRequest {
        limit: q.limit,
        r#match: Some(Match { r#match: Some(M::All(Seq { matches: all })) }),
        extract: None,
    }
}

async fn tap_one(
    pod: &str,
    addr: SocketAddr,
    identity: &str,
    ca: Arc<Ca>,
    request: ObserveRequest,
    tx: &mpsc::Sender<String>,
) -> Result<(), String> {
    let name = rustls_pki_types::ServerName::try_from(identity.to_string()).map_err(|e| e.to_string())?;
    let connector = TlsConnector { addr, name, tls: ca.client_tls() };
    let channel = tonic::transport::Endpoint::from_static("http://tap")
        .connect_timeout(Duration::from_secs(3))
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connecting to its proxy's tap at {addr}: {e}"))?;
    let limit = request.limit;
    let mut stream =
        TapClient::new(channel).observe(request).await.map_err(|s| s.message().to_string())?.into_inner();
    let mut responses = 0;
    loop {
        if limit > 0 && responses >= limit {
            return Ok(());
        }
        tokio::select! {
            () = tx.closed() => return Ok(()),
            next = stream.message() => match next {
                Ok(Some(event)) => {
                    if let Some(line) = line(pod, event) {
                        if line.event == "end" {
                            responses += 1;
                        }
                        if tx.send(serde_json::to_string(&line).unwrap_or_default()).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(status) => return Err(status.message().to_string()),
            }
        }
    }
}

fn line(pod: &str, event: TapEvent) -> Option<TapLine> {
    let addr = |a: Option<linkerd2_proxy_api::net::TcpAddress>| {
        a.and_then(|a| SocketAddr::try_from(a).ok()).map(|a| a.to_string()).unwrap_or_default()
    };
    let inbound = event.proxy_direction == tap_event::ProxyDirection::Inbound as i32;
    let meta = if inbound { event.source_meta.as_ref() } else { event.destination_meta.as_ref() };
    let label = |k: &str| meta.and_then(|m| m.labels.get(k)).cloned();
    let Some(tap_event::Event::Http(http)) = event.event else { return None };
    let mut line = TapLine {
        pod: pod.to_string(),
        direction: if inbound { "in" } else { "out" },
        event: "request",
        id: String::new(),
        source: addr(event.source),
        destination: addr(event.destination),
        tls: label("tls").unwrap_or_default(),
        client_id: label("client_id"),
        server_id: label("server_id"),
        method: None,
        authority: None,
        path: None,
        status: None,
        latency_ms: None,
        bytes: None,
        grpc_status: None,
        reset: None,
    };
    let id = |id: Option<ev::StreamId>| id.map(|i| format!("{}:{}", i.base, i.stream)).unwrap_or_default();
    match http.event? {
        ev::Event::RequestInit(r) => {
            line.id = id(r.id);
            line.method = r.method.and_then(|m| http::Method::try_from(m).ok()).map(|m| m.to_string());
            line.authority = Some(r.authority);
            line.path = Some(r.path);
        }
        ev::Event::ResponseInit(r) => {
            line.event = "response";
            line.id = id(r.id);
            line.status = Some(r.http_status);
            line.latency_ms = r
                .since_request_init
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| d.as_secs_f64() * 1000.0);
        }
        ev::Event::ResponseEnd(r) => {
            use linkerd2_proxy_api::tap::eos::End;
            line.event = "end";
            line.id = id(r.id);
            line.bytes = Some(r.response_bytes);
            line.latency_ms = r
                .since_request_init
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| d.as_secs_f64() * 1000.0);
            match r.eos.and_then(|e| e.end) {
                Some(End::GrpcStatusCode(code)) => line.grpc_status = Some(code),
                Some(End::ResetErrorCode(_)) => line.reset = Some(true),
                None => {}
            }
        }
    }
    Some(line)
}

#[derive(Clone)]
struct TlsConnector {
    addr: SocketAddr,
    name: rustls_pki_types::ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), std::io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(this.addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(this.tls).connect(this.name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
