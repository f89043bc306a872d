//! Socket wrappers: replaying the bytes that detection read, and counting
//! bytes into the transport metrics as they flow; and socket options.

use crate::{config::TcpOptions, metrics::TcpMetrics};
use bytes::{Buf, Bytes};
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads `prefix` first, then from `io`; writes go to `io`, several small
/// buffers as one (see [`poll_write_flat`]).
pub struct PrefixedIo<I> {
    prefix: Bytes,
    io: I,
}

/// Counts every byte read and written into the connection's metrics;
/// several small buffers are written as one (see [`poll_write_flat`]).
pub struct MeteredIo<I> {
    io: I,
    metrics: TcpMetrics,
}

// === impl PrefixedIo ===

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_flat(&mut self.io, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The largest write of several buffers that is copied into one.
const FLATTEN_MAX: usize = 4096;

thread_local! {
    /// Where small writes are flattened: one buffer per thread, reused.
    static FLAT: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(FLATTEN_MAX));
}

/// Writes `bufs` (an HTTP/1 head and its body, TLS records) to `io` with
/// `poll_write` where that is cheaper than a vectored write. A socket's
/// `writev` goes through the kernel's file layer, where `send` goes
/// straight to the socket: on this project's 2-core machine the pair costs
/// ~0.2-0.4 µs more per call for a 1-4 KiB message, more than copying it
/// into one buffer costs (docs/bench.md, "Small writes as one send"). So a
/// lone buffer holding bytes goes as it is, several holding up to
/// [`FLATTEN_MAX`] bytes together are copied into one, and larger writes
/// stay vectored, uncopied. Both wrappers that sit on sockets use it:
/// `PrefixedIo` on accepted ones (also beneath mesh TLS), `MeteredIo` on
/// the upstream ones; stacked, the outer one's single write passes the
/// inner one straight through.
fn poll_write_flat<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let (mut filled, mut total, mut last) = (0, 0, &[][..]);
    for buf in bufs.iter().filter(|b| !b.is_empty()) {
        (filled, total, last) = (filled + 1, total + buf.len(), &**buf);
    }
    if filled <= 1 {
        return Pin::new(io).poll_write(cx, last);
    }
    if total > FLATTEN_MAX {
        return Pin::new(io).poll_write_vectored(cx, bufs);
    }
    FLAT.with(|flat| match flat.try_borrow_mut() {
        Ok(mut flat) => {
            flat.clear();
            for buf in bufs {
                flat.extend_from_slice(buf);
            }
            Pin::new(io).poll_write(cx, &flat)
        }
        // Only if a write re-entered this one on the same thread.
        Err(_) => Pin::new(io).poll_write_vectored(cx, bufs),
    })
}

// === impl MeteredIo ===

impl<I> MeteredIo<I> {
    pub fn new(io: I, metrics: TcpMetrics) -> Self {
        Self { io, metrics }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for MeteredIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.metrics.read_bytes.inc_by(n as u64);
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for MeteredIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.metrics.write_bytes.inc_by(n as u64);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = poll_write_flat(&mut self.io, cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.metrics.write_bytes.inc_by(n as u64);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<I> Drop for MeteredIo<I> {
    fn drop(&mut self) {
        self.metrics.closed();
    }
}

/// The address a connection was sent to before iptables redirected it to
/// the proxy (`SO_ORIGINAL_DST`), or `None` when it was not redirected.
pub fn orig_dst(socket: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(socket);
    let local = socket.local_addr().ok()?;
    let orig = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    // Without a redirect, the kernel reports the socket's own address.
    (orig != local).then_some(orig)
}

/// Sets the configured TCP options, so that a peer that vanished without
/// a FIN or RST is found out: on an idle connection by keepalive probes
/// after `keepalive` without traffic, on a busy one when data stays
/// unacknowledged for `user_timeout`. `None` leaves the kernel's default.
/// A socket that refuses is logged and served anyway.
pub fn set_tcp_options(socket: &tokio::net::TcpStream, options: &TcpOptions) {
    let sock = socket2::SockRef::from(socket);
    if let Some(idle) = options.keepalive {
        if let Err(error) = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle)) {
            tracing::warn!(%error, ?idle, "cannot turn on TCP keepalive");
        }
    }
    if let Some(timeout) = options.user_timeout {
        if let Err(error) = sock.set_tcp_user_timeout(Some(timeout)) {
            tracing::warn!(%error, ?timeout, "cannot set the TCP user timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, TcpLabels};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_options_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let get = |sock: &tokio::net::TcpStream| {
            let sock = socket2::SockRef::from(sock);
            let keepalive = sock.keepalive().unwrap().then(|| sock.tcp_keepalive_time().unwrap());
            (keepalive, sock.tcp_user_timeout().unwrap())
        };
        set_tcp_options(&sock, &TcpOptions::default());
        assert_eq!(get(&sock), (None, None), "no options leave the kernel's defaults");
        let options = TcpOptions {
            keepalive: Some(std::time::Duration::from_secs(7)),
            user_timeout: Some(std::time::Duration::from_millis(1500)),
        };
        set_tcp_options(&sock, &options);
        assert_eq!(get(&sock), (options.keepalive, options.user_timeout));
    }

    /// What a write reached the socket as.
    #[derive(Debug, PartialEq)]
    enum Write {
        One(Vec<u8>),
        Vectored(usize, Vec<u8>),
    }

    /// A socket that records each write and takes at most `take` bytes of it.
    struct Recorder {
        writes: Vec<Write>,
        take: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.take);
            self.writes.push(Write::One(buf[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.take);
            self.writes.push(Write::Vectored(bufs.len(), all[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn metered(take: usize) -> MeteredIo<Recorder> {
        let labels = TcpLabels::inbound_plain("127.0.0.1:8080".parse().unwrap());
        MeteredIo::new(Recorder { writes: Vec::new(), take }, Metrics::new().tcp(labels))
    }

    /// One vectored write of `bufs`, as hyper makes them.
    fn write(io: &mut (impl AsyncWrite + Unpin), bufs: &[&[u8]]) -> usize {
        let slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(io).poll_write_vectored(&mut cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_small_write_of_several_buffers_reaches_the_socket_as_one() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n".as_slice();
        let body = vec![b'x'; 1024];
        let mut io = metered(usize::MAX);
        assert_eq!(write(&mut io, &[head, &body]), head.len() + body.len());
        assert_eq!(io.io.writes, [Write::One([head, &body].concat())]);
        assert_eq!(io.metrics.write_bytes.get(), (head.len() + body.len()) as u64);
    }

    #[test]
    fn one_filled_buffer_is_written_without_a_copy_whatever_its_size() {
        let body = vec![b'x'; 3 * FLATTEN_MAX];
        let mut io = metered(usize::MAX);
        assert_eq!(write(&mut io, &[b"", &body, b""]), body.len());
        assert_eq!(io.io.writes, [Write::One(body)]);
    }

    #[test]
    fn the_accepted_sockets_wrapper_writes_small_buffers_as_one_too() {
        // PrefixedIo is what mesh TLS writes its records through, inbound.
        let mut io = PrefixedIo::new(Bytes::new(), Recorder { writes: Vec::new(), take: usize::MAX });
        assert_eq!(write(&mut io, &[b"record one", b"record two"]), 20);
        assert_eq!(io.io.writes, [Write::One(b"record onerecord two".to_vec())]);
    }

    #[test]
    fn a_large_write_stays_vectored() {
        let head = b"HTTP/1.1 200 OK\r\n\r\n".as_slice();
        let body = vec![b'x'; FLATTEN_MAX];
        let mut io = metered(usize::MAX);
        assert_eq!(write(&mut io, &[head, &body]), head.len() + body.len());
        assert_eq!(io.io.writes, [Write::Vectored(2, [head, &body].concat())]);
    }

    #[test]
    fn a_short_write_of_a_flattened_buffer_says_how_much_went() {
        let mut io = metered(5);
        assert_eq!(write(&mut io, &[b"abc", b"defgh"]), 5);
        assert_eq!(io.io.writes, [Write::One(b"abcde".to_vec())]);
        assert_eq!(io.metrics.write_bytes.get(), 5);
        // The caller goes on from there, as from any short write.
        assert_eq!(write(&mut io, &[b"fgh"]), 3);
        assert_eq!(io.metrics.write_bytes.get(), 8);
    }

    #[tokio::test]
    async fn prefix_is_replayed_before_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello"), server);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
