//! Channels to the control plane: plaintext, or mesh TLS to the identity a
//! `*_SVC_NAME` variable names (verified against the trust anchors, with
//! this proxy's certificate presented once it has one).

use rustls_pki_types::ServerName;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

/// How to reach one control-plane service.
#[derive(Clone)]
pub struct ControlTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// A lazily connected channel to `addr` (`host:port`), remade with
/// backoff by tonic when it breaks.
pub fn channel(
    addr: &str,
    tls: Option<ControlTls>,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(3));
    Ok(match tls {
        None => endpoint.tcp_nodelay(true).connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector { addr: addr.into(), tls }),
    })
}

#[derive(Clone)]
struct TlsConnector {
    addr: String,
    tls: ControlTls,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let Self { addr, tls } = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(addr.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls.config).connect(tls.name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// Exponential backoff with jitter, 100 ms to 5 s.
#[derive(Default)]
pub(crate) struct Backoff(u32);

impl Backoff {
    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }

    pub(crate) async fn wait(&mut self) {
        let base = Duration::from_millis(100) * 2u32.pow(self.0.min(6));
        let base = base.min(Duration::from_secs(5));
        let jitter = Duration::from_millis(u64::from(std::process::id() % 50));
        self.0 += 1;
        tokio::time::sleep(base + jitter).await;
    }
}
