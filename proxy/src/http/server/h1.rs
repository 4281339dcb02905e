//! The downstream HTTP/1.1 server: one connection's requests, read, answered and written back
//! on the connection's own task.
//!
//! Why not hyper's server: its dispatcher, its body channel and its buffers cost about 7k
//! instructions per request (callgrind, benches/), and its read buffer was reallocated for
//! every request (it reads ahead while the request in flight still holds slices of it). Here a
//! request head is parsed by `httparse` (hyper's parser) into the connection's buffer, which is
//! reclaimed once the request is gone, and the response head and a small body leave in one
//! write: about 6k instructions, most of them the request's header map, the parse and the I/O
//! calls, and a fifth less user time per request than hyper's in a timed A/B. The request is
//! boxed as it is parsed (`BoxedRequest`) and the response body written where it lies.
//!
//! What a client gets, as from hyper: keep-alive and pipelining (answers in order);
//! `Expect: 100-continue` answered when the proxy first reads the body; `400` for a malformed
//! head or framing (several `Content-Length`s that disagree, `Transfer-Encoding` not ending in
//! `chunked`, or both headers: a smuggling vector), `431` for a head over `max_header_bytes`
//! or `max_headers`; a client that closes while its answer is pending cancels the exchange
//! upstream; upgrades (`101`) become a tunnel. A response is framed by its `Content-Length`,
//! else by its body's known length, else chunked (HTTP/1.0: to the close); a body that fails
//! mid-way closes the connection, so the client sees it break, never a short body.

use std::future::poll_fn;
use std::hint::cold_path;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use crate::http::body::{BoxedRequest, BoxedResponse, RequestBody, ResponseBody};
use crate::http::h1::{
    Decode, Step, content_length_value, has_token, header_map, note_fields, push_field,
    push_trailers, put_data,
};
use crate::http::proxy::{ConnCtx, answer, tunnel};

/// Room made in the read buffer before each read of a head.
const READ_CHUNK: usize = 8 * 1024;
/// ... and before each read of a request body (fewer reads for an upload).
const BODY_READ_CHUNK: usize = 64 * 1024;
/// Header slots on the stack; a listener allowing more fields parses into a vector.
const STACK_HEADERS: usize = 128;
/// How long a connection closed after an error still reads (and drops) what the client sends,
/// so that its pending bytes do not turn our close into a reset that destroys the answer.
const LINGER: Duration = Duration::from_secs(1);

/// The limits a request head is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

/// The connection's read side: the socket's read half and what was read but not yet consumed.
struct Reader {
    io: OwnedReadHalf,
    buf: BytesMut,
    /// Where the head's fields lie in `buf` while it is parsed (kept: no allocation).
    fields: Vec<[u32; 4]>,
}

/// What a connection and the body of its current request share: the read side comes back
/// through it, and the body asks through it for `100 Continue`.
struct Shared {
    /// The read side, back from a request body read to its end (the next request starts at the
    /// buffer's start). A body dropped before its end drops the read side with it: where the
    /// next request would start is unknown, so the connection closes after its answer.
    back: Mutex<Option<Box<Reader>>>,
    want_continue: AtomicBool,
    task: AtomicWaker,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            back: Mutex::new(None),
            want_continue: AtomicBool::new(false),
            task: AtomicWaker::new(),
        })
    }
}

/// A request body read from the client's connection. It holds the connection's read side while
/// it is read and hands it back to the connection at its end.
pub struct Body {
    reader: Option<Box<Reader>>,
    state: Decode,
    shared: Arc<Shared>,
    /// `Expect: 100-continue`: the first read asks the connection to send `100 Continue`.
    expect_continue: bool,
}

/// Why a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client closed the connection before the request body was complete")]
    Closed,
    #[error("invalid request body: {0}")]
    Invalid(&'static str),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("state", &self.state).finish()
    }
}

impl Body {
    /// Hands the read side back to the connection: the body has been read to its end.
    fn give_back(&mut self) {
        if let Some(reader) = self.reader.take() {
            if let Ok(mut back) = self.shared.back.lock() {
                *back = Some(reader);
            }
            self.shared.task.wake();
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.expect_continue {
            self.expect_continue = false;
            self.shared.want_continue.store(true, Ordering::Release);
            self.shared.task.wake();
        }
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state.step(&mut reader.buf) {
                Ok(Step::Frame(f)) => {
                    if self.state.is_done() {
                        self.give_back();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Ok(Step::Done) => {
                    self.give_back();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    self.reader = None;
                    return Poll::Ready(Some(Err(BodyError::Invalid(e))));
                }
            }
            reader.buf.reserve(BODY_READ_CHUNK);
            let n = match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut reader.io),
                cx,
                &mut reader.buf
            )) {
                Ok(n) => n,
                Err(e) => {
                    self.reader = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            if n == 0 {
                self.reader = None;
                return Poll::Ready(Some(Err(BodyError::Closed)));
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.state.size_hint()
    }
}

/// A parsed request head and what it says about the connection.
struct Head {
    /// Boxed where it is built (see `BoxedRequest`); its body is set once the framing is known.
    request: BoxedRequest,
    body: Option<Decode>,
    keep_alive: bool,
    expect_continue: bool,
    /// `TE: trailers`: the client takes trailers on a chunked response.
    trailers: bool,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest(&'static str),
    TooLarge,
}

/// Serves HTTP/1.1 on `stream` until the client closes, the listener drains, or a request
/// says `close`. `prefix`: bytes already read from it (protocol detection).
pub async fn serve(
    stream: TcpStream,
    prefix: BytesMut,
    limits: Limits,
    ctx: Arc<ConnCtx>,
    drain: CancellationToken,
) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = Some(Box::new(Reader {
        io: rd,
        buf: prefix,
        fields: Vec::new(),
    }));
    let shared = Shared::new();
    // The response head is encoded here; kept for the connection's life.
    let mut out: Vec<u8> = Vec::with_capacity(512);
    loop {
        let Some(mut r) = reader.take() else { return };
        let head = match read_head(&mut r, limits).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                cold_path();
                return refuse(r, wr, refusal).await;
            }
        };
        let Head {
            request: mut req,
            body,
            keep_alive,
            expect_continue,
            trailers,
        } = head;
        let head_only = req.method() == Method::HEAD;
        let version = req.version();
        let has_body = body.is_some();
        match body {
            None => reader = Some(r),
            Some(state) => {
                let body = Body {
                    reader: Some(r),
                    state,
                    shared: Arc::clone(&shared),
                    expect_continue,
                };
                *req.body_mut() = RequestBody::Incoming(http_body_util::Either::Left(body));
            }
        }
        let stream_guard = ctx.activity.begin();
        let answering = answer(req, Arc::clone(&ctx), stream_guard);
        let mut answering = std::pin::pin!(answering);
        // The client may leave while the answer is pending (cancel the exchange), or its body
        // may ask for `100 Continue`.
        let mut more_sent = false;
        let mut resp = loop {
            let event = poll_fn(|cx| {
                if let Poll::Ready(Ok(resp)) = answering.as_mut().poll(cx) {
                    return Poll::Ready(Event::Answer(resp));
                }
                if has_body {
                    shared.task.register(cx.waker());
                    if shared.want_continue.swap(false, Ordering::AcqRel) {
                        return Poll::Ready(Event::Continue);
                    }
                    if reader.is_none() {
                        reader = take_back(&shared);
                    }
                }
                if let Some(r) = reader.as_mut()
                    && !more_sent
                {
                    match client_gone(r, cx) {
                        Poll::Ready(true) => return Poll::Ready(Event::Gone),
                        Poll::Ready(false) => more_sent = true,
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Answer(resp) => break resp,
                Event::Continue => {
                    cold_path();
                    if wr
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Event::Gone => {
                    cold_path();
                    tracing::debug!(client = %ctx.client, "client closed the connection before its answer");
                    return;
                }
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            cold_path();
            return upgrade(resp, reader, wr, &mut out, version).await;
        }
        // Draining: this answer is the connection's last, and says so.
        let keep_alive = keep_alive && !drain.is_cancelled();
        let framing = encode_head(&mut out, &resp, version, head_only, keep_alive, trailers);
        let complete = match write_response(&mut wr, &mut out, resp.body_mut(), framing).await {
            Ok(complete) => complete,
            Err(e) => {
                cold_path();
                tracing::debug!(client = %ctx.client, error = %e, "writing the response failed");
                return;
            }
        };
        // Its last byte is written: the request is over (its stream guard goes with the body).
        drop(resp);
        if has_body && reader.is_none() {
            reader = take_back(&shared);
            if reader.is_none() {
                // The body is still held (an upload the upstream stopped reading).
                return;
            }
        }
        if !complete || !framing.keep_alive || drain.is_cancelled() {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

enum Event {
    Answer(BoxedResponse),
    Continue,
    Gone,
}

/// The read side, if a body read to its end handed it back.
fn take_back(shared: &Shared) -> Option<Box<Reader>> {
    shared.back.lock().ok()?.take()
}

/// Whether the client closed its side while its answer is pending: `Ready(true)` when it did,
/// `Ready(false)` when it sent more (a pipelined request: left for later, and no more checks
/// this exchange). Costs no syscall until the socket is readable.
fn client_gone(r: &mut Reader, cx: &mut Context<'_>) -> Poll<bool> {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    let mut probe = tokio::io::ReadBuf::uninit(&mut probe);
    match ready!(r.io.poll_peek(cx, &mut probe)) {
        Ok(0) | Err(_) => Poll::Ready(true),
        Ok(_) => Poll::Ready(false),
    }
}

/// Reads until a request head is complete. `Ok(None)`: the client closed between requests.
///
/// A head that arrives in pieces is parsed again only once a piece brings a blank line (the
/// head's end): a client trickling a 64 KiB head a byte at a time would otherwise have it
/// parsed from the start 64 Ki times.
async fn read_head(r: &mut Reader, limits: Limits) -> Result<Option<Head>, Refusal> {
    // How much of the buffer is known to hold no head end.
    let mut scanned = 0;
    loop {
        if !r.buf.is_empty() && (scanned == 0 || has_blank_line(&r.buf, scanned)) {
            if let Some(head) = parse_head(&mut r.buf, &mut r.fields, limits)? {
                return Ok(Some(head));
            }
            if r.buf.len() >= limits.max_head_bytes {
                return Err(Refusal::TooLarge);
            }
            scanned = r.buf.len();
        } else if r.buf.len() >= limits.max_head_bytes {
            return Err(Refusal::TooLarge);
        } else {
            scanned = r.buf.len();
        }
        r.buf.reserve(READ_CHUNK);
        let n = match r.io.read_buf(&mut r.buf).await {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            if r.buf.is_empty() {
                return Ok(None);
            }
            return Err(Refusal::BadRequest("the connection closed mid-head"));
        }
    }
}

/// Whether `buf` past `from` (less the three bytes a blank line can straddle) holds a blank
/// line: `\n\n` or `\n\r\n` (the parser takes bare `\n` line ends too).
fn has_blank_line(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3).min(buf.len())..];
    tail.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && tail.get(i + 2) == Some(&b'\n')))
    })
}

/// Parses a request head at the start of `buf` and consumes it; `Ok(None)` when incomplete.
fn parse_head(
    buf: &mut BytesMut,
    fields: &mut Vec<[u32; 4]>,
    limits: Limits,
) -> Result<Option<Head>, Refusal> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap;
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap = Vec::with_capacity(limits.max_headers);
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .allow_multiple_spaces_in_request_line_delimiters(false)
        .parse_request_with_uninit_headers(&mut req, buf, slots)
    {
        Ok(httparse::Status::Complete(len)) if len > limits.max_head_bytes => {
            cold_path();
            return Err(Refusal::TooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            cold_path();
            return Err(Refusal::TooLarge);
        }
        Err(_) => {
            cold_path();
            return Err(Refusal::BadRequest("malformed request head"));
        }
    };
    let bad = Refusal::BadRequest;
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("invalid method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // The target and the field values become slices of the head, split off and frozen.
    let path = req.path.unwrap_or("");
    let start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = start..start + path.len();
    note_fields(buf, req.headers, fields);
    let head = buf.split_to(len).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(target)).map_err(|_| bad("invalid request target"))?;
    let (mut expect_continue, mut trailers) = (false, false);
    // Room for the fields the proxy adds (request id, trace context) without the map growing.
    let (headers, framing) = header_map(&head, fields, 4, |name, value| {
        if name == EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == TE {
            trailers = has_token(value.as_bytes(), b"trailers");
        }
    })
    .map_err(bad)?;
    // RFC 9112 §6.1-6.3: chunked must be the last coding; both framings at once, or a
    // chunked HTTP/1.0 message, are refused rather than guessed at (request smuggling).
    let body = match (framing.transfer_encoding, framing.length) {
        (true, Some(_)) => return Err(bad("both Transfer-Encoding and Content-Length")),
        (true, None) if !framing.chunked || version == Version::HTTP_10 => {
            return Err(bad("unsupported Transfer-Encoding"));
        }
        (true, None) => Some(Decode::ChunkSize),
        (false, Some(None)) => return Err(bad("invalid Content-Length")),
        (false, Some(Some(0))) | (false, None) => None,
        (false, Some(Some(n))) => Some(Decode::Length(n)),
    };
    let mut request = Box::new(Request::new(RequestBody::Empty));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        expect_continue: expect_continue && body.is_some() && version == Version::HTTP_11,
        body,
        keep_alive: framing.persistent(version),
        trailers,
    }))
}

/// How a response body goes out.
#[derive(Debug, Clone, Copy)]
struct Framing {
    /// `None`: no body at all (HEAD, 1xx, 204, 304).
    body: Option<BodyFraming>,
    keep_alive: bool,
    trailers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(u64),
    Chunked,
    /// To the close (an HTTP/1.0 client, length unknown).
    Close,
}

/// How a response body is framed (RFC 9112 §6): its declared `Content-Length`, else the body's
/// known length, else chunks; an HTTP/1.0 client cannot take chunks, so it reads to the close.
fn body_framing(declared: Option<u64>, known: Option<u64>, version: Version) -> BodyFraming {
    match (declared, known) {
        (Some(n), _) | (None, Some(n)) => BodyFraming::Length(n),
        (None, None) if version == Version::HTTP_11 => BodyFraming::Chunked,
        (None, None) => BodyFraming::Close,
    }
}

/// Encodes the response head into `out` and decides the body's framing.
fn encode_head(
    out: &mut Vec<u8>,
    resp: &Response<ResponseBody>,
    version: Version,
    head_only: bool,
    mut keep_alive: bool,
    trailers: bool,
) -> Framing {
    out.clear();
    let status = resp.status();
    let headers = resp.headers();
    // A `101` keeps the upstream's `Connection: upgrade` and `Upgrade` fields.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = match headers.get(CONTENT_LENGTH) {
        Some(v) => content_length_value(v.as_bytes()),
        None => None,
    };
    let body = if no_body {
        None
    } else {
        Some(body_framing(
            declared,
            resp.body().size_hint().exact(),
            version,
        ))
    };
    let add_length = match (body, declared) {
        (Some(BodyFraming::Length(n)), None) => Some(n),
        _ => None,
    };
    let chunked = body == Some(BodyFraming::Chunked);
    if body == Some(BodyFraming::Close) {
        keep_alive = false;
    }
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || (name == CONNECTION && !switching) {
            continue;
        }
        if name == CONTENT_LENGTH && declared.is_none() && !no_body {
            // An invalid one: the body's own length (or chunks) frame it instead.
            continue;
        }
        has_date |= name == DATE;
        push_field(out, name, value);
    }
    if let Some(n) = add_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date::push(out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive && !switching {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 && !switching {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Framing {
        body,
        keep_alive,
        trailers,
    }
}

/// Writes the head in `out` and the body. `Ok(false)`: the body failed or fell short of its
/// length after its head went out; the connection must close (the client sees it break). The
/// caller drops the body after this returns: the request stays open until its last write.
async fn write_response(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    body: &mut ResponseBody,
    framing: Framing,
) -> std::io::Result<bool> {
    let Some(body_framing) = framing.body else {
        wr.write_all(out).await?;
        return Ok(true);
    };
    let chunked = body_framing == BodyFraming::Chunked;
    let mut left = match body_framing {
        BodyFraming::Length(n) => Some(n),
        _ => None,
    };
    loop {
        // What is ready goes out together; `out` is written when the body must wait.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    wr.write_all(out).await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed mid-stream");
                wr.write_all(out).await?;
                return Ok(false);
            }
        };
        let mut data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let (true, true, Ok(t)) = (chunked, framing.trailers, frame.into_trailers()) {
                    push_trailers(out, &t);
                    wr.write_all(out).await?;
                    out.clear();
                    return Ok(true);
                }
                continue;
            }
        };
        if let Some(left) = left.as_mut() {
            if data.len() as u64 > *left {
                // More than the length the head announced: send what fits, then close.
                data.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                out.extend_from_slice(&data);
                wr.write_all(out).await?;
                return Ok(false);
            }
            *left -= data.len() as u64;
        }
        if !data.is_empty() {
            put_data(wr, out, &data, chunked).await?;
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    Ok(left.is_none_or(|l| l == 0))
}

/// A `101`: the head goes out, then the connection is a tunnel to the upstream's.
async fn upgrade(
    mut resp: BoxedResponse,
    reader: Option<Box<Reader>>,
    mut wr: OwnedWriteHalf,
    out: &mut Vec<u8>,
    version: Version,
) {
    let up = resp.body_mut().take_upgrade();
    encode_head(out, &resp, version, true, true, false);
    if wr.write_all(out).await.is_err() {
        return;
    }
    let (Some(up), Some(reader)) = (up, reader) else {
        return;
    };
    let Reader { io, buf, .. } = *reader;
    let Ok(down) = io.reunite(wr) else {
        return;
    };
    // The stream guard (in the response body) ends here: a tunnel is not an open request.
    drop(resp);
    tokio::spawn(tunnel(down, buf.freeze(), up));
}

/// Answers a refused head and closes.
async fn refuse(mut r: Box<Reader>, mut wr: OwnedWriteHalf, refusal: Refusal) {
    let answer: &[u8] = match refusal {
        Refusal::BadRequest(why) => {
            tracing::debug!(reason = why, "refusing a malformed request head");
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Refusal::TooLarge => {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
    };
    if wr.write_all(answer).await.is_err() || wr.shutdown().await.is_err() {
        return;
    }
    // Linger: read what the client still sends, so that closing with unread bytes does not
    // reset the connection before the client has read the answer.
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            r.buf.clear();
            r.buf.reserve(READ_CHUNK);
            if !matches!(r.io.read_buf(&mut r.buf).await, Ok(n) if n > 0) {
                break;
            }
        }
    })
    .await;
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub fn push(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with_borrow_mut(|(at, text)| {
            if *at != secs {
                let s = httpdate::fmt_http_date(now);
                if s.len() == text.len() {
                    text.copy_from_slice(s.as_bytes());
                    *at = secs;
                }
            }
            out.extend_from_slice(text);
        });
    }
}

#[cfg(test)]
mod tests;
