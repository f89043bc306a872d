//! Protocol detection: what does a client speak, judged from its first bytes?
//!
//! The classifier is a pure function over a prefix so it can be unit-tested
//! and fuzzed; [`detect`] drives it over a socket with the detect timeout.

use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest prefix read before giving up on finding an HTTP/1 request
/// line. Longer request lines exist but are rare enough that treating them
/// as opaque TCP (still proxied, just not per request) is the safe choice.
pub const MAX_PREFIX: usize = 8 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC).
    H2,
    /// A TLS ClientHello: passed through untouched.
    Tls,
    Opaque,
}

/// Why a connection ended up as it did: kept for logs and tests.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    Protocol(Protocol),
    /// The client sent nothing within the detect timeout.
    Timeout,
    /// The client closed its side before sending anything.
    Empty,
}

/// The largest ClientHello read to find the server name it asks for.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Reads the rest of a TLS ClientHello into `buf` (which holds its start)
/// and returns the server name it asks for. rustls parses it: weft does not
/// hand-parse TLS. `None` when there is no name, the hello is malformed or
/// too large, or the client stalls past `timeout`; the bytes read stay in
/// `buf` either way, to be replayed.
pub async fn client_hello_sni<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < buf.len() {
            match acceptor.read_tls(&mut &buf[fed..]) {
                Ok(0) | Err(_) => return None,
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return accepted.client_hello().server_name().map(str::to_string),
            Ok(None) => {}
            Err(_) => return None,
        }
        if buf.len() >= MAX_CLIENT_HELLO {
            return None;
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Classifies a prefix; `None` means more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }

    // HTTP/2's preface starts like an HTTP/1 request line ("PRI * HTTP/2.0"),
    // so it is checked first.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::H2);
    }

    // A TLS record header: handshake (22), then version major 3.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }

    classify_http1(buf)
}

/// An HTTP/1 request line is `METHOD SP request-target SP HTTP/1.x CRLF`.
fn classify_http1(buf: &[u8]) -> Option<Protocol> {
    let method_len = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
    if !buf[..method_len].iter().all(|&b| is_tchar(b)) || method_len > 32 {
        return Some(Protocol::Opaque);
    }
    if method_len == 0 {
        return Some(Protocol::Opaque);
    }
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        // Still reading the request line: give up only if no plausible
        // request line could be this long, or a byte rules it out.
        if buf.len() >= MAX_PREFIX || buf.iter().any(|&b| b.is_ascii_control() && b != b'\r') {
            return Some(Protocol::Opaque);
        }
        return None;
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let http1 = (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        && line.len() > method_len + " HTTP/1.1".len()
        && !line.iter().any(|b| b.is_ascii_control());
    Some(if http1 { Protocol::Http1 } else { Protocol::Opaque })
}

/// RFC 9110 token characters, which make up a method.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, the client goes quiet for
/// `timeout`, or it closes. Returns what was read so it can be replayed.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<(Detected, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(MAX_PREFIX - buf.len()));
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_elapsed) => {
                let detected = match classify(&buf) {
                    Some(p) => Detected::Protocol(p),
                    None if buf.is_empty() => Detected::Timeout,
                    None => Detected::Protocol(Protocol::Opaque),
                };
                return Ok((detected, buf));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                let detected = match classify(&buf) {
                    _ if buf.is_empty() => Detected::Empty,
                    Some(p) => Detected::Protocol(p),
                    None => Detected::Protocol(Protocol::Opaque),
                };
                return Ok((detected, buf));
            }
            Ok(Ok(_)) => {
                if let Some(p) = classify(&buf) {
                    return Ok((Detected::Protocol(p), buf));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /upload?x=1 HTTP/1.0\r\nHost: a\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"CONNECT db:5432 HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HTTP/1.1\n"), Some(Protocol::Http1));
        // Partial request lines wait for more.
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /very/long/path"), None);
    }

    #[test]
    fn http2_preface() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(classify(&more), Some(Protocol::H2));
        // "PRI" with another continuation is not HTTP/2.
        assert_eq!(classify(b"PRI * HTTP/2.1\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn tls_client_hello() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Some(Protocol::Tls));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(&[0x16, 0x09]), Some(Protocol::Opaque));
    }

    #[test]
    fn binary_and_other_text_is_opaque() {
        // A PostgreSQL startup message, a Redis command, SSH's banner.
        assert_eq!(classify(&[0, 0, 0, 8, 4, 210, 22, 47]), Some(Protocol::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"HELLO world\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / HTTP/3\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET / HTTP/1.1\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn overlong_lines_are_opaque() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_PREFIX, b'a');
        assert_eq!(classify(&line), Some(Protocol::Opaque));
    }

    /// Random and mutated prefixes: no panic, and once a prefix decides,
    /// more bytes never change the decision (detection stops reading there).
    #[test]
    fn decisions_are_final_for_any_input() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let starts: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\n",
            H2_PREFACE,
            &[0x16, 3, 1],
            b"POST /x HTTP/1.0\r\n",
            b"PRI * HTTP/2.0\r\n",
        ];
        for i in 0..20_000 {
            let mut buf = if i % 2 == 0 { starts[next() as usize % starts.len()].to_vec() } else { vec![] };
            let extra = next() as usize % 48;
            buf.extend((0..extra).map(|_| next() as u8));
            if !buf.is_empty() && i % 3 == 0 {
                let at = next() as usize % buf.len();
                buf[at] = next() as u8;
            }
            let whole = classify(&buf);
            if let Some(cut) = (0..=buf.len()).find(|&cut| classify(&buf[..cut]).is_some()) {
                assert_eq!(classify(&buf[..cut]), whole, "{:?} decided otherwise than {buf:?}", &buf[..cut]);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn detect_times_out_on_a_quiet_client() {
        // The client stays connected but silent.
        let (_client, mut server) = tokio::io::duplex(64);
        let (detected, buf) = detect(&mut server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(detected, Detected::Timeout);
        assert!(buf.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn detect_reads_until_it_knows() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        let detect = tokio::spawn(async move { detect(&mut server, Duration::from_secs(10)).await });
        client.write_all(b"GET / HT").await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (detected, buf) = detect.await.unwrap().unwrap();
        assert_eq!(detected, Detected::Protocol(Protocol::Http1));
        assert!(buf.starts_with(b"GET / HTTP/1.1\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn detect_on_close() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /partial").await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        let (detected, buf) = detect(&mut server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(detected, Detected::Protocol(Protocol::Opaque));
        assert_eq!(&buf[..], b"GET /partial");

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let (detected, _) = detect(&mut server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(detected, Detected::Empty);
    }
}
