//! Protocol detection on `auto` listeners: read the first bytes and decide between the HTTP/2
//! preface, an HTTP/1 request line, and anything else (opaque TCP). The bytes read are replayed
//! to whichever protocol handles the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token we accept as HTTP/1 (`PROPPATCH`, `UPDATEREDIRECTREF`: 17).
const MAX_METHOD: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// Decides from the bytes so far, or `None` when more are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Some(Protocol::Http2)
        } else {
            None
        };
    }
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => continue,
            b' ' if i > 0 => return Some(Protocol::Http1),
            _ => return Some(Protocol::Opaque),
        }
    }
    if buf.len() >= MAX_METHOD {
        Some(Protocol::Opaque)
    } else {
        None
    }
}

/// Reads until the protocol is known. A client that sends nothing within `timeout` (a
/// server-speaks-first protocol) is opaque TCP. `Ok(None)`: the client closed first.
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    timeout: Duration,
) -> io::Result<Option<(Protocol, BytesMut)>> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return Ok(Some((Protocol::Opaque, buf))),
            Ok(Ok(0)) => {
                return Ok(if buf.is_empty() {
                    None
                } else {
                    Some((classify(&buf).unwrap_or(Protocol::Opaque), buf))
                });
            }
            Ok(Ok(_)) => {
                if let Some(p) = classify(&buf) {
                    return Ok(Some((p, buf)));
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// An IO that first replays bytes already read from it.
pub struct Prefixed<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http2)
        );
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        // "PRI " is also a valid method start until the preface disagrees.
        assert_eq!(classify(b"PRIX / HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET"), Some(Protocol::Opaque));
        assert_eq!(classify(&[b'A'; 25]), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn replays_prefix() -> io::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n").await?;
        let detected = detect(&mut b, Duration::from_secs(1)).await?;
        let Some((p, buf)) = detected else {
            return Err(io::Error::other("no data detected"));
        };
        assert_eq!(p, Protocol::Http1);
        let mut io = Prefixed::new(buf, b);
        drop(a);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await?;
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_opaque() -> io::Result<()> {
        let (_a, mut b) = tokio::io::duplex(64);
        let detected = detect(&mut b, Duration::from_secs(1)).await?;
        let Some((p, buf)) = detected else {
            return Err(io::Error::other("a timeout must mean opaque, not closed"));
        };
        assert_eq!(p, Protocol::Opaque);
        assert!(buf.is_empty());
        Ok(())
    }
}
