//! The load generator: open loop at a fixed rate (or closed loop, as fast as
//! it goes, for maximum throughput), with latency measured so that a slow
//! response delays no one's clock (coordinated omission).

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Copy, Clone, Debug)]
pub enum Protocol {
    Http1,
    Grpc,
}

#[derive(Clone, Debug)]
pub struct Load {
    pub protocol: Protocol,
    /// Requests per second; `None` for as fast as the connections go.
    pub rate: Option<u32>,
    pub duration: Duration,
    pub connections: usize,
}

pub struct Report {
    latency_us: Histogram<u64>,
    pub completed: u64,
    pub errors: u64,
    elapsed: Duration,
}

/// How one worker sends a request.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Grpc(HealthClient<tonic::transport::Channel>),
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Grpc => "grpc",
        }
    }
}

impl Load {
    pub async fn run(self, target: SocketAddr) -> anyhow::Result<Report> {
        let senders = self.connect(target).await?;
        // Warm the connections (and the proxies' pools) before measuring.
        let mut warmed = Vec::with_capacity(senders.len());
        for mut s in senders {
            s.send().await.context("a warm-up request failed")?;
            warmed.push(s);
        }

        let total = self.rate.map(|r| r as u64 * self.duration.as_secs().max(1));
        let interval = self.rate.map(|r| Duration::from_secs(1) / r);
        let start = Instant::now() + Duration::from_millis(5);
        let end = start + self.duration;
        let next = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = warmed
            .into_iter()
            .map(|mut sender| {
                let next = next.clone();
                tokio::spawn(async move {
                    let mut hist =
                        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                    let (mut completed, mut errors) = (0u64, 0u64);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let began = match (total, interval) {
                            (Some(total), Some(interval)) => {
                                if i >= total {
                                    break;
                                }
                                let scheduled = start + interval * i as u32;
                                if Instant::now() < scheduled {
                                    // On time: the clock starts when the request
                                    // goes out (timer granularity is the
                                    // generator's, not the proxy's).
                                    tokio::time::sleep_until(scheduled).await;
                                    Instant::now()
                                } else {
                                    // Late because this connection was busy:
                                    // the wait counts against the system.
                                    scheduled.max(start)
                                }
                            }
                            _ => {
                                if Instant::now() >= end {
                                    break;
                                }
                                Instant::now()
                            }
                        };
                        match sender.send().await {
                            Ok(()) => {
                                completed += 1;
                                let us = began.elapsed().as_micros() as u64;
                                hist.saturating_record(us.max(1));
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (hist, completed, errors)
                })
            })
            .collect();

        let mut report = Report {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            completed: 0,
            errors: 0,
            elapsed: Duration::ZERO,
        };
        for worker in workers {
            let (hist, completed, errors) = worker.await.context("a load worker panicked")?;
            report.latency_us.add(&hist).expect("same bounds");
            report.completed += completed;
            report.errors += errors;
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    async fn connect(&self, target: SocketAddr) -> anyhow::Result<Vec<Sender>> {
        match self.protocol {
            Protocol::Http1 => {
                let mut senders = Vec::new();
                for _ in 0..self.connections {
                    let sock = tokio::net::TcpStream::connect(target).await.context("connecting")?;
                    sock.set_nodelay(true)?;
                    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await?;
                    tokio::spawn(conn);
                    senders.push(Sender::Http1(send));
                }
                Ok(senders)
            }
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .context("connecting")?;
                Ok((0..self.connections).map(|_| Sender::Grpc(HealthClient::new(channel.clone()))).collect())
            }
        }
    }
}

impl Sender {
    async fn send(&mut self) -> anyhow::Result<()> {
        match self {
            Sender::Http1(send) => {
                send.ready().await?;
                let req = Request::get("/bytes/1024").header("host", "bench.test:8080").body(Empty::new())?;
                let rsp = send.send_request(req).await?;
                let status = rsp.status();
                let body = rsp.into_body().collect().await?.to_bytes();
                // The body says why, when a proxy answered instead.
                anyhow::ensure!(
                    status.is_success(),
                    "status {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                );
                Ok(())
            }
            Sender::Grpc(client) => {
                client.check(HealthCheckRequest { service: String::new() }).await?;
                Ok(())
            }
        }
    }
}

impl Report {
    pub fn quantile(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }

    pub fn max(&self) -> u64 {
        self.latency_us.max()
    }

    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
