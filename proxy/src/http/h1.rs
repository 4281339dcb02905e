//! HTTP/1.1 message framing shared by the upstream client and the downstream server (RFC 9112):
//! the body decoder (length, chunked with trailers, or to the connection's end), field and
//! chunk encoding, and `Content-Length` / `Transfer-Encoding` reading.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most fields in a trailer section.
const MAX_TRAILERS: usize = 32;

/// Where a body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// A `Content-Length` body: bytes left.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk: bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// To the connection's end (responses only).
    Eof,
    Done,
}

/// What the decoder made of the bytes at hand.
#[derive(Debug)]
pub(crate) enum Step {
    Frame(Frame<Bytes>),
    /// The body has ended.
    Done,
    /// More bytes are needed.
    More,
}

impl Decode {
    /// Consumes what needs no more bytes: a zero length, or the framing of a chunked body's
    /// end already buffered, so that a body ends with its last data, not one read later.
    pub fn advance(&mut self, buf: &mut BytesMut) {
        loop {
            match *self {
                Decode::Length(0) => *self = Decode::Done,
                Decode::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        if size == 0 {
                            *self = Decode::Trailers;
                        } else {
                            *self = Decode::ChunkData(size);
                            return;
                        }
                    }
                    _ => return,
                },
                Decode::ChunkEnd if buf.starts_with(b"\r\n") => {
                    buf.advance(2);
                    *self = Decode::ChunkSize;
                }
                Decode::Trailers if buf.starts_with(b"\r\n") => {
                    buf.advance(2);
                    *self = Decode::Done;
                }
                _ => return,
            }
        }
    }

    /// The next frame from `buf`, or what stops it.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        self.advance(buf);
        match *self {
            Decode::Done => Ok(Step::Done),
            Decode::Length(left) | Decode::ChunkData(left) if !buf.is_empty() => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                *self = match *self {
                    Decode::Length(_) => Decode::Length(left),
                    _ if left == 0 => Decode::ChunkEnd,
                    _ => Decode::ChunkData(left),
                };
                self.advance(buf);
                Ok(Step::Frame(Frame::data(data)))
            }
            Decode::Eof if !buf.is_empty() => Ok(Step::Frame(Frame::data(buf.split().freeze()))),
            Decode::ChunkSize if buf.len() > MAX_CHUNK_LINE => Err("chunk size line too long"),
            Decode::ChunkSize if httparse::parse_chunk_size(buf).is_err() => {
                Err("invalid chunk size")
            }
            Decode::ChunkEnd if buf.len() >= 2 => Err("chunk not followed by CRLF"),
            Decode::Trailers if !buf.is_empty() => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for h in fields {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(h.name.as_bytes()),
                                HeaderValue::from_bytes(h.value),
                            ) {
                                trailers.append(n, v);
                            }
                        }
                        buf.advance(used);
                        *self = Decode::Done;
                        Ok(Step::Frame(Frame::trailers(trailers)))
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILER_BYTES => {
                        Ok(Step::More)
                    }
                    _ => Err("invalid trailers"),
                }
            }
            _ => Ok(Step::More),
        }
    }

    /// The connection ended: fine for a body that runs to the end, an error for any other
    /// that has not ended.
    pub fn at_eof(&mut self) -> bool {
        match *self {
            Decode::Eof | Decode::Done => {
                *self = Decode::Done;
                true
            }
            _ => false,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Decode::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match *self {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// `name: value\r\n`, as a head or a trailer section carries it.
pub(crate) fn push_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// The last chunk and a trailer section.
pub(crate) fn push_trailers(buf: &mut Vec<u8>, trailers: &HeaderMap) {
    buf.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        push_field(buf, name, value);
    }
    buf.extend_from_slice(b"\r\n");
}

/// The one `Content-Length` of `headers`: `Ok(None)` when absent, `Err` when invalid or when
/// several disagree (RFC 9112 §6.3).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut found = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        let n = content_length_value(v.as_bytes()).ok_or(())?;
        match found {
            Some(f) if f != n => return Err(()),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// One `Content-Length` field's value: a number, or a list of the same number (`7, 7`).
pub(crate) fn content_length_value(v: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in v.split(|&b| b == b',') {
        let n = parse_decimal(part.trim_ascii())?;
        match found {
            Some(f) if f != n => return None,
            _ => found = Some(n),
        }
    }
    found
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether the last transfer coding of a `Transfer-Encoding` value is `chunked`.
pub(crate) fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a `Connection` value lists `token`.
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// `{len:x}\r\n` without `core::fmt`.
pub(crate) fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        out[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[i..]
}

pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    // Skips a leading empty slice (no head left to write).
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = wr.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}
