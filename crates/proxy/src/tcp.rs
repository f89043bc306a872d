//! Opaque TCP: bytes forwarded both ways, each half closed when its sender
//! closes, so protocols that half-close (and those that never speak HTTP)
//! work through the proxy.

use crate::{
    config::ConnectConfig,
    discovery::balance::DstLabels,
    http::client::mesh_tls,
    io::{MeteredIo, PrefixedIo},
    metrics::{Direction, Metrics, Peer, TcpLabels, Tls},
};
use bytes::Bytes;
use std::{net::SocketAddr, sync::Arc};
use tokio::io::{AsyncRead, AsyncWrite};

/// The per-direction copy buffer: small, because a proxy holds two per
/// connection and memory per connection is what a sidecar is judged by.
const COPY_BUF: usize = 16 * 1024;

/// Where an opaque connection goes, and how.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connect: ConnectConfig,
    pub direction: Direction,
    /// The `tls` label of the accepted side.
    pub tls: Tls,
    pub dst: Option<DstLabels>,
    /// Mesh TLS to the endpoint's proxy, which must prove this identity.
    pub mesh: Option<(Arc<rustls::ClientConfig>, Arc<str>)>,
}

pub async fn forward<I>(mut client: I, upstream: Upstream, metrics: &Metrics)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Upstream { addr, connect, direction, tls, dst, mesh } = upstream;
    let server = match crate::http::client::connect(addr, &connect).await {
        Ok(s) => s,
        Err(error) => {
            tracing::info!(?direction, %error, "opaque connection not forwarded");
            return;
        }
    };
    let tls = match &mesh {
        Some((_, id)) => Tls::Mesh(Some(id.clone())),
        None => tls,
    };
    let labels = TcpLabels { direction, peer: Peer::Dst, target_addr: addr, tls, dst };
    let server = MeteredIo::new(server, metrics.tcp(labels));
    let result = match mesh {
        None => copy(&mut client, server).await,
        Some((config, identity)) => match mesh_tls(server, config, &identity).await {
            Ok(server) => copy(&mut client, server).await,
            Err(reason) => {
                tracing::info!(?direction, %addr, %identity, %reason, "mesh TLS failed; connection not forwarded");
                return;
            }
        },
    };
    match result {
        Ok((sent, received)) => tracing::debug!(%addr, sent, received, "opaque connection closed"),
        Err(error) => tracing::debug!(%addr, %error, "opaque connection failed"),
    }
}

async fn copy<A, B>(a: &mut A, mut b: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(a, &mut b, COPY_BUF, COPY_BUF).await
}

/// A prefix with nothing after it yet: for connections that skip detection.
pub fn no_prefix<I>(io: I) -> PrefixedIo<I> {
    PrefixedIo::new(Bytes::new(), io)
}
