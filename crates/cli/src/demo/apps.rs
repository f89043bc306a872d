//! The demo application, in the spirit of Linkerd's emojivoto: each role
//! runs as its own process (`weft demo-app ROLE`), beside its own
//! weft-proxy.
//!
//! - `web` (HTTP/1): `GET /vote/EMOJI` asks `emoji` (gRPC) about the emoji
//!   and records the vote with `voting` (gRPC); `GET /leaderboard` asks
//!   `leaderboard` (HTTP/2). It answers 502 when a back end failed.
//! - `emoji` (gRPC): always answers.
//! - `voting` (gRPC): fails a share of its calls (`UNAVAILABLE`), so
//!   success rates have something to show.
//! - `leaderboard` (HTTP/2, prior knowledge).
//! - `vote-bot`: votes and reads the leaderboard at a steady rate.
//!
//! The gRPC service is `grpc.health.v1.Health` (its `service` field names
//! the emoji or vote): a real protocol with generated code, without a
//! protobuf compiler in the build.

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_client::HealthClient,
    health_server::{Health, HealthServer},
};

#[derive(clap::Args)]
pub struct AppArgs {
    /// web, emoji, voting, leaderboard or vote-bot.
    role: String,
    /// Where to serve.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where this workload's outbound traffic goes: its proxy's outbound
    /// listener (local mode), or nothing (with iptables, the service
    /// addresses themselves are dialled and redirected).
    #[arg(long)]
    via: Option<SocketAddr>,
    /// The services' addresses when dialled directly: NAME=IP:PORT.
    #[arg(long, value_delimiter = ',')]
    service: Vec<String>,
    /// vote-bot: requests per second.
    #[arg(long, default_value_t = 10)]
    rps: u32,
    /// voting: the share of calls that fail, in percent.
    #[arg(long, default_value_t = 15)]
    failure_percent: u64,
}

/// How a workload reaches a service: the address it dials, and the
/// authority it asks for.
#[derive(Clone)]
struct Upstream {
    dial: SocketAddr,
    authority: String,
}

impl AppArgs {
    fn upstream(&self, name: &str) -> anyhow::Result<Upstream> {
        let authority = format!("{name}.demo.svc.cluster.local:8080");
        if let Some(via) = self.via {
            return Ok(Upstream { dial: via, authority });
        }
        let addr = self
            .service
            .iter()
            .find_map(|s| s.strip_prefix(&format!("{name}=")))
            .ok_or_else(|| anyhow::anyhow!("no --via and no --service {name}=ADDR"))?;
        Ok(Upstream { dial: addr.parse()?, authority })
    }
}

pub fn run(args: AppArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        let listen = || args.listen.ok_or_else(|| anyhow::anyhow!("--listen is required for {}", args.role));
        match args.role.as_str() {
            "emoji" => serve_grpc(listen()?, Service { fail_percent: 0, calls: AtomicU64::new(0) }).await,
            "voting" => {
                serve_grpc(
                    listen()?,
                    Service { fail_percent: args.failure_percent, calls: AtomicU64::new(0) },
                )
                .await
            }
            "leaderboard" => serve_h2(listen()?).await,
            "web" => {
                let web = Arc::new(Web {
                    emoji: grpc_client(args.upstream("emoji")?)?,
                    voting: grpc_client(args.upstream("voting")?)?,
                    leaderboard: args.upstream("leaderboard")?,
                });
                serve_web(listen()?, web).await
            }
            "vote-bot" => vote_bot(args.upstream("web")?, args.rps).await,
            other => anyhow::bail!("unknown demo role {other:?} (web, emoji, voting, leaderboard, vote-bot)"),
        }
    })
}

struct Service {
    fail_percent: u64,
    calls: AtomicU64,
}

#[tonic::async_trait]
impl Health for Service {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        // Deterministic spread: every n-th call in a hundred fails.
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if (n * 37) % 100 < self.fail_percent {
            return Err(tonic::Status::unavailable("the ballot box is jammed"));
        }
        Ok(tonic::Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("the demo does not watch"))
    }
}

async fn serve_grpc(listen: SocketAddr, service: Service) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let service = HealthServer::new(service);
    loop {
        let (sock, _) = listener.accept().await?;
        let svc = hyper_util::service::TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

async fn serve_h2(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                let body = r#"{"top":["🍩","🦄","🐳"]}"#;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body.as_bytes()))))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

fn grpc_client(up: Upstream) -> anyhow::Result<HealthClient<tonic::transport::Channel>> {
    // Dial the proxy (or the service address), ask for the service by name.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", up.dial))?
        .origin(format!("http://{}", up.authority).parse::<Uri>()?)
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy();
    Ok(HealthClient::new(channel))
}

struct Web {
    emoji: HealthClient<tonic::transport::Channel>,
    voting: HealthClient<tonic::transport::Channel>,
    leaderboard: Upstream,
}

async fn serve_web(listen: SocketAddr, web: Arc<Web>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (sock, _) = listener.accept().await?;
        let web = web.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(web.handle(req).await) }
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
        });
    }
}

impl Web {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let answer = |status: StatusCode, text: String| {
            let mut rsp = Response::new(Full::new(Bytes::from(text)));
            *rsp.status_mut() = status;
            rsp
        };
        if let Some(emoji) = path.strip_prefix("/vote/") {
            let ask = |service: String| HealthCheckRequest { service };
            if let Err(status) = self.emoji.clone().check(ask(format!("emoji:{emoji}"))).await {
                return answer(StatusCode::BAD_GATEWAY, format!("emoji: {}\n", status.message()));
            }
            return match self.voting.clone().check(ask(format!("vote:{emoji}"))).await {
                Ok(_) => answer(StatusCode::OK, format!("voted for {emoji}\n")),
                Err(status) => answer(StatusCode::BAD_GATEWAY, format!("voting: {}\n", status.message())),
            };
        }
        if path == "/leaderboard" {
            // With HTTP/2 the authority travels in the URI.
            let uri = format!("http://{}/top", self.leaderboard.authority);
            let Ok(req) = Request::get(uri).body(Empty::new()) else {
                return answer(StatusCode::INTERNAL_SERVER_ERROR, "bad authority\n".into());
            };
            return match h2_via(self.leaderboard.dial, req).await {
                Ok(body) => answer(StatusCode::OK, body),
                Err(e) => answer(StatusCode::BAD_GATEWAY, format!("leaderboard: {e}\n")),
            };
        }
        answer(StatusCode::NOT_FOUND, "try /vote/🍩 or /leaderboard\n".into())
    }
}

/// One HTTP/2 request sent to `dial` whatever its URI names.
async fn h2_via(dial: SocketAddr, req: Request<Empty<Bytes>>) -> anyhow::Result<String> {
    let sock = tokio::net::TcpStream::connect(dial).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(sock)).await?;
    tokio::spawn(conn);
    let rsp = send.send_request(req).await?;
    anyhow::ensure!(rsp.status().is_success(), "status {}", rsp.status());
    Ok(String::from_utf8_lossy(&rsp.into_body().collect().await?.to_bytes()).into_owned())
}

async fn vote_bot(web: Upstream, rps: u32) -> anyhow::Result<()> {
    const EMOJI: &[&str] = &["doughnut", "unicorn", "whale", "rocket", "taco"];
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
    let mut n = 0usize;
    loop {
        tick.tick().await;
        n += 1;
        let path =
            if n % 5 == 0 { "/leaderboard".to_string() } else { format!("/vote/{}", EMOJI[n % EMOJI.len()]) };
        let web = web.clone();
        tokio::spawn(async move {
            let sock = tokio::net::TcpStream::connect(web.dial).await.ok()?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.ok()?;
            tokio::spawn(conn);
            let req = Request::get(path)
                .header(http::header::HOST, web.authority)
                .body(Empty::<Bytes>::new())
                .ok()?;
            let rsp = send.send_request(req).await.ok()?;
            let _ = rsp.into_body().collect().await;
            Some(())
        });
    }
}
