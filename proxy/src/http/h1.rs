//! HTTP/1.1 message framing shared by the upstream client and the downstream server (RFC 9112):
//! the body decoder (length, chunked with trailers, or to the connection's end), field and
//! chunk encoding, and `Content-Length` / `Transfer-Encoding` reading.

use std::cell::RefCell;
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
/// Slots of each worker thread's header-name cache (`header_name`), a power of two, and the
/// longest name kept there.
const NAME_SLOTS: usize = 128;
const _: () = assert!(NAME_SLOTS.is_power_of_two() && NAME_SLOTS > 1);
const KEPT_NAME_LEN: usize = 64;

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

/// Body data up to this size is copied behind what `buf` holds (a head, earlier data) and goes
/// out with it; larger data is written at once, with `buf`, in one vectored write.
pub(crate) const COPY_BELOW: usize = 8 * 1024;

/// Frames `data` (a chunk, or as is for a body of known length) behind `buf`. Small data stays
/// in `buf` for the caller to write; large data goes out now, with `buf`, which is emptied.
pub(crate) async fn put_data<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &mut Vec<u8>,
    data: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    if chunked {
        let mut hex = [0u8; 18];
        buf.extend_from_slice(chunk_size_line(data.len(), &mut hex));
    }
    let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
    if data.len() < COPY_BELOW {
        buf.extend_from_slice(data);
        buf.extend_from_slice(tail);
        return Ok(());
    }
    let mut bufs = [IoSlice::new(buf), IoSlice::new(data), IoSlice::new(tail)];
    write_all_vectored(wr, &mut bufs).await?;
    buf.clear();
    Ok(())
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

/// Where a parsed head's fields lie in its buffer: `[name start, name end, value start, value
/// end]`. Offsets, not slices: the head is then split off its buffer and frozen, and the values
/// become slices of that (no copy). Heads are far under 4 GiB, so offsets fit `u32`.
pub(crate) fn note_fields(buf: &[u8], parsed: &[httparse::Header<'_>], fields: &mut Vec<[u32; 4]>) {
    let base = buf.as_ptr() as usize;
    let offset = |p: *const u8| u32::try_from(p as usize - base).unwrap_or(u32::MAX);
    fields.clear();
    for h in parsed {
        let (n, v) = (offset(h.name.as_ptr()), offset(h.value.as_ptr()));
        fields.push([n, n + h.name.len() as u32, v, v + h.value.len() as u32]);
    }
}

/// What a head's framing and connection fields said, noted as the fields went into the map (a
/// name compare each) rather than looked up again afterwards.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HeadFields {
    /// `Transfer-Encoding` was present, and whether its last coding is `chunked`.
    pub transfer_encoding: bool,
    pub chunked: bool,
    /// `None`: no `Content-Length`; `Some(None)`: an invalid one, or several that disagree.
    pub length: Option<Option<u64>>,
    /// `Connection` listed `close` / `keep-alive`.
    pub close: bool,
    pub keep_alive: bool,
}

impl HeadFields {
    /// Whether the connection may carry another message (RFC 9112 §9.3): HTTP/1.1 unless
    /// `close`; HTTP/1.0 only when `keep-alive` was asked for.
    pub(crate) fn persistent(&self, version: http::Version) -> bool {
        match version {
            http::Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        }
    }
}

/// The header map of a head split off as `head`, from the offsets [`note_fields`] took, with
/// room for `extra` more fields; `seen` gets every other field as it goes in. `Err` names what
/// was invalid.
pub(crate) fn header_map(
    head: &Bytes,
    fields: &[[u32; 4]],
    extra: usize,
    mut seen: impl FnMut(&HeaderName, &HeaderValue),
) -> Result<(HeaderMap, HeadFields), &'static str> {
    use http::header::{CONNECTION, TRANSFER_ENCODING};
    let mut headers = HeaderMap::with_capacity(fields.len() + extra);
    let mut framing = HeadFields::default();
    for &[n0, n1, v0, v1] in fields {
        let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
        let name = head
            .get(n0..n1)
            .and_then(header_name)
            .ok_or("invalid header name")?;
        if v1 > head.len() || v0 > v1 {
            return Err("invalid header value");
        }
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| "invalid header value")?;
        if name == CONTENT_LENGTH {
            framing.length = Some(
                match (framing.length, content_length_value(value.as_bytes())) {
                    (Some(None), _) | (_, None) => None,
                    (None, n) => n,
                    (Some(Some(a)), Some(b)) => (a == b).then_some(a),
                },
            );
        } else if name == TRANSFER_ENCODING {
            framing.transfer_encoding = true;
            framing.chunked = last_coding_is_chunked(value.as_bytes());
        } else if name == CONNECTION {
            let v = value.as_bytes();
            framing.close |= has_token(v, b"close");
            framing.keep_alive |= has_token(v, b"keep-alive");
        } else {
            seen(&name, &value);
        }
        headers.append(name, value);
    }
    Ok((headers, framing))
}

/// A header name as it was spelled on the wire, and what it parsed to.
type KeptName = Option<(Box<[u8]>, HeaderName)>;

thread_local! {
    static NAMES: RefCell<[KeptName; NAME_SLOTS]> = const {
        RefCell::new([const { None }; NAME_SLOTS])
    };
}

/// The header name `raw` spells, or `None` if it is not one.
///
/// `HeaderName::from_bytes` copies every name outside `http`'s standard list
/// (`x-request-id`, `traceparent`, `x-forwarded-for`, a team's business headers) into an
/// allocation of its own, on every message. The same names come back on every request, spelled
/// the same way by the same peers, so each worker keeps the names it parsed in a small
/// direct-mapped cache: one slot per spelling, chosen from its length and three of its bytes,
/// and a hit is one `memcmp` and a reference-count clone. A miss parses as before and takes the
/// slot; names a peer makes up anew each time cost that slot's replacement, no scan.
fn header_name(raw: &[u8]) -> Option<HeaderName> {
    let (Some(&first), Some(&last)) = (raw.first(), raw.last()) else {
        return None;
    };
    let middle = raw.get(raw.len() / 2).copied().unwrap_or(first);
    let key = (raw.len() as u32) << 24 | u32::from(first) << 16 | u32::from(middle) << 8;
    // Fibonacci hashing: the top bits of the product pick the slot.
    let bits = NAME_SLOTS.trailing_zeros();
    let slot = ((key | u32::from(last)).wrapping_mul(0x9E37_79B1) >> (32 - bits)) as usize;
    NAMES.with_borrow_mut(|slots| {
        let kept = slots.get_mut(slot)?;
        if let Some((spelled, name)) = kept
            && **spelled == *raw
        {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if raw.len() <= KEPT_NAME_LEN {
            *kept = Some((Box::from(raw), name.clone()));
        }
        Some(name)
    })
}

/// For tests of parsers: `bytes` damaged at one to three places (a byte flipped, dropped or
/// inserted, or the rest cut off), as hostile or broken peers send them.
#[cfg(test)]
pub(crate) fn mangle(mut bytes: Vec<u8>, rng: &mut fastrand::Rng) -> Vec<u8> {
    for _ in 0..rng.usize(1..4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.usize(..bytes.len());
        match rng.u8(..4) {
            0 => bytes[at] = rng.u8(..),
            1 => {
                bytes.remove(at);
            }
            2 => bytes.insert(at, *rng.choice(b"\r\n:, 0\t").unwrap_or(&b'x')),
            _ => bytes.truncate(at),
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> usize {
        NAMES.with_borrow(|slots| slots.iter().flatten().count())
    }

    #[test]
    fn header_names_are_the_ones_http_parses_in_any_case() {
        let id = HeaderName::from_static("x-request-id");
        for _ in 0..2 {
            for raw in [&b"X-Request-Id"[..], b"x-request-id", b"X-REQUEST-ID"] {
                assert_eq!(header_name(raw), Some(id.clone()));
            }
            assert_eq!(header_name(b"Content-Length"), Some(CONTENT_LENGTH));
        }
        let before = kept();
        assert!((1..=4).contains(&before), "{before}");
        // Not names, and not kept: a near miss of a kept name included.
        for raw in [
            &b""[..],
            b"x request-id",
            b"x-request-id ",
            b"a:b",
            b"x-\xffid",
        ] {
            assert_eq!(header_name(raw), None, "{raw:?}");
        }
        assert_eq!(kept(), before);
        // Too long to keep, still parsed.
        let long = vec![b'x'; KEPT_NAME_LEN + 1];
        assert_eq!(header_name(&long), HeaderName::from_bytes(&long).ok());
        assert_eq!(kept(), before);
    }

    #[test]
    fn names_made_up_anew_only_replace_slots() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut names = Vec::new();
        for i in 0..2_000 {
            let raw: Vec<u8> = format!("x-made-up-{i}-{}", rng.u32(..))
                .bytes()
                .map(|b| {
                    if rng.bool() {
                        b.to_ascii_uppercase()
                    } else {
                        b
                    }
                })
                .collect();
            let parsed = HeaderName::from_bytes(&raw).ok();
            assert!(parsed.is_some());
            assert_eq!(header_name(&raw), parsed);
            // Seen again (a later message): the same name.
            assert_eq!(header_name(&raw), parsed);
            names.push((raw, parsed));
        }
        assert!(kept() <= NAME_SLOTS);
        // Whatever each slot holds now, every spelling still gives its own name.
        for (raw, parsed) in &names {
            assert_eq!(header_name(raw), *parsed);
        }
    }

    #[test]
    fn a_usual_message_keeps_its_names_apart() {
        // The names of a usual request and response mostly land in slots of their own, so
        // each message finds them again.
        let names: [&[u8]; 14] = [
            b"Host",
            b"User-Agent",
            b"Accept",
            b"Accept-Encoding",
            b"Content-Type",
            b"Content-Length",
            b"Date",
            b"Server",
            b"Connection",
            b"x-request-id",
            b"traceparent",
            b"tracestate",
            b"x-forwarded-for",
            b"x-user-id",
        ];
        for raw in names {
            assert!(header_name(raw).is_some());
        }
        assert!(kept() >= 12, "{}", kept());
    }
}
