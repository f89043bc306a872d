//! Opaque TCP: bytes forwarded both ways, each half closed when its sender
//! closes, so protocols that half-close (and those that never speak HTTP)
//! work through the proxy.

use crate::{
    discovery::balance::DstLabels,
    http::client::connect,
    io::{MeteredIo, PrefixedIo},
    metrics::{Direction, Metrics, Peer, TcpLabels, Tls},
};
use bytes::Bytes;
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncRead, AsyncWrite};

/// The per-direction copy buffer: small, because a proxy holds two per
/// connection and memory per connection is what a sidecar is judged by.
const COPY_BUF: usize = 16 * 1024;

pub async fn forward<I>(
    mut client: PrefixedIo<I>,
    target: SocketAddr,
    connect_timeout: Duration,
    direction: Direction,
    tls: Tls,
    dst: Option<DstLabels>,
    metrics: &Metrics,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let server = match connect(target, connect_timeout).await {
        Ok(s) => s,
        Err(error) => {
            tracing::info!(?direction, %error, "opaque connection not forwarded");
            return;
        }
    };
    let labels = TcpLabels { direction, peer: Peer::Dst, target_addr: target, tls, dst };
    let mut server = MeteredIo::new(server, metrics.tcp(labels));
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, COPY_BUF, COPY_BUF).await {
        Ok((sent, received)) => tracing::debug!(%target, sent, received, "opaque connection closed"),
        Err(error) => tracing::debug!(%target, %error, "opaque connection failed"),
    }
}

/// A prefix with nothing after it yet: for connections that skip detection.
pub fn no_prefix<I>(io: I) -> PrefixedIo<I> {
    PrefixedIo::new(Bytes::new(), io)
}
