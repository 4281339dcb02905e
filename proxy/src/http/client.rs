//! The upstream HTTP/1.1 client: the request's own task writes the request on a pooled
//! connection it holds for the exchange, reads the response head, and the response body reads
//! the rest and hands the connection back when it ends.
//!
//! Why not hyper's client: its connection runs as a task of its own, fed through a request
//! channel, answering through a oneshot and a body channel. That machinery cost ≈ 11k
//! instructions per request, two fifths of the proxy's whole cost (callgrind, benches/). Here
//! there is no task, no channel and no wake-up between tasks: one `write` of the head, one
//! `read` for a small response, parsed by `httparse` (hyper's parser). The read buffer is
//! reclaimed for the next response on the connection instead of reallocated (hyper reads ahead
//! while slices of the last message still hold its buffer). HTTP/2 upstreams keep hyper's
//! client. The downstream HTTP/1.1 side is ours too (`server::h1`); both share the framing in
//! `http::h1`.
//!
//! Message framing follows RFC 9112: a request body goes with `Content-Length` when its length
//! is known, chunked otherwise; a response is framed by its request's method and its status,
//! then `Transfer-Encoding`, then `Content-Length`, else it runs to the connection's end.

use std::hint::cold_path;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::breaker::Permit;
use crate::http::body::{BoxedRequest, RequestBody};
use crate::http::h1::{
    Decode, Step, content_length, header_map, note_fields, push_field, push_trailers, put_data,
};
use crate::http::pool::Returner;

/// Most header fields a response head may carry (hyper's default).
const MAX_HEADERS: usize = 100;
/// Largest response head (hyper's default buffer limit).
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// One upstream HTTP/1.1 connection, boxed: it moves from the pool to a request to its
/// response body and back, a pointer each time.
pub type Conn = Box<Connection>;

#[derive(Debug)]
pub struct Connection {
    io: TcpStream,
    /// Bytes read and not yet consumed. Owned by the connection and reused: once the last
    /// response's slices are dropped, `reserve` reclaims it rather than allocating.
    buf: BytesMut,
    /// The request head is encoded here (kept for the connection's life: no allocation).
    head: Vec<u8>,
    /// Where the response head's fields lie in `buf` while it is parsed (kept, like `head`).
    fields: Vec<[u32; 4]>,
    /// The circuit breaker's connection permit (`max_connections`), for the connection's life.
    _permit: Permit,
    /// A response has been read on it before: a failure before any byte of a response may be
    /// the race with the upstream closing it while idle (then the request is sent again on a
    /// fresh connection when that is safe).
    reused: bool,
}

impl Connection {
    pub fn new(io: TcpStream, permit: Permit) -> Conn {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            fields: Vec::new(),
            _permit: permit,
            reused: false,
        })
    }

    /// Whether an idle connection can take a request. Costs no syscall unless the socket was
    /// reported readable: an idle connection has nothing to say, so anything there (the
    /// upstream's FIN, or bytes nobody asked for) means it must not be used.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection before the response was complete")]
    Closed,
    #[error("the upstream sent an invalid response: {0}")]
    Invalid(&'static str),
    #[error("the request body failed mid-stream")]
    RequestBody,
}

/// How a message's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// To the end of the connection (responses only).
    Eof,
}

/// A failed send, with the request when it may go again on a fresh connection (nothing of it
/// was taken by an upstream that could have acted on it). Boxed: rare, and inline it would make
/// every send's result the size of a request, copied at each step.
#[derive(Debug)]
pub struct SendError {
    pub error: ClientError,
    pub retry: Option<BoxedRequest>,
}

/// An upstream connection switched to another protocol, with any bytes already read past the
/// `101` head (they belong to the new protocol, to be sent downstream first).
#[derive(Debug)]
pub struct Upgraded {
    pub io: TcpStream,
    pub read_ahead: Bytes,
}

/// Encodes `req`'s head into the connection's buffer; returns how the body follows.
fn encode_head(head: &mut Vec<u8>, req: &Request<RequestBody>) -> Framing {
    head.clear();
    let body = req.body();
    let headers = req.headers();
    let has_body = !body.is_end_stream();
    let declared = content_length(headers);
    // RFC 9112 §6.1-6.3: a valid Content-Length frames a body of that length; a body of
    // another known length gets one; a body of unknown length goes chunked.
    let (framing, add_length) = if !has_body {
        (Framing::Length(0), None)
    } else {
        match (declared, body.size_hint().exact()) {
            (Ok(Some(n)), _) => (Framing::Length(n), None),
            (_, Some(n)) => (Framing::Length(n), Some(n)),
            (_, None) => (Framing::Chunked, None),
        }
    };
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let drop_length = has_body && (add_length.is_some() || framing == Framing::Chunked);
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || (drop_length && name == CONTENT_LENGTH) {
            continue;
        }
        push_field(head, name, value);
    }
    match (framing, add_length) {
        (Framing::Chunked, _) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (_, Some(n)) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    head.extend_from_slice(b"\r\n");
    framing
}

/// Idempotent methods (RFC 9110 §9.2.2): safe to send again when the upstream may have closed
/// the connection before reading them.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends `req` on `conn` and reads the response head. The response body holds the connection
/// and hands it to `returner` once read to its end (if the connection can be used again).
pub async fn send(
    mut conn: Conn,
    req: BoxedRequest,
    upgrade: bool,
    returner: Returner,
) -> Result<Response<Body>, SendError> {
    if !req.body().is_end_stream() {
        // Boxed: a request body's future (frames, the early-answer race) would otherwise make
        // every exchange's future larger, to be moved at each step.
        return Box::pin(send_with_body(conn, req, upgrade, returner)).await;
    }
    // No body: one write, then the response head.
    encode_head(&mut conn.head, &req);
    let reused = conn.reused;
    // A reused connection that turns out dead when written to took nothing; one that closes
    // without a byte of response may have been closing as we wrote: only what is safe to
    // repeat goes again (RFC 9110 §9.2.2).
    let result = match conn.io.write_all(&conn.head).await {
        Err(e) => Err((ClientError::from(e), reused)),
        Ok(()) => read_head(&mut conn, req.method(), upgrade)
            .await
            .map_err(|(e, nothing_read)| (e, reused && nothing_read && idempotent(req.method()))),
    };
    match result {
        Ok(parsed) => Ok(finish(conn, parsed, returner)),
        Err((error, retry)) => {
            cold_path();
            Err(SendError {
                error,
                retry: retry.then_some(req),
            })
        }
    }
}

/// A request with a body: the head goes with the first piece of it, and the response may come
/// before the body is all sent.
async fn send_with_body(
    mut conn: Conn,
    req: BoxedRequest,
    upgrade: bool,
    returner: Returner,
) -> Result<Response<Body>, SendError> {
    let framing = encode_head(&mut conn.head, &req);
    let fail = |error| SendError { error, retry: None };
    let (parts, body) = (*req).into_parts();
    let early = {
        let Connection {
            io,
            buf,
            head,
            fields,
            ..
        } = &mut *conn;
        let (mut rd, mut wr) = io.split();
        let write = write_body(&mut wr, head, body, framing);
        tokio::pin!(write);
        // The upstream may answer before it has read the whole body (an early error): stop
        // sending then; the connection is not reused (its request was not finished).
        tokio::select! {
            biased;
            written = &mut write => match written {
                Ok(()) => None,
                Err(WriteError::Upstream(e)) => return Err(fail(e.into())),
                Err(WriteError::Downstream) => return Err(fail(ClientError::RequestBody)),
            },
            head = read_head_from(&mut rd, buf, fields, &parts.method, upgrade) => Some(head),
        }
    };
    let parsed = match early {
        None => read_head(&mut conn, &parts.method, upgrade).await,
        Some(head) => head.map(|mut p| {
            p.reusable = false;
            p
        }),
    };
    match parsed {
        Ok(parsed) => Ok(finish(conn, parsed, returner)),
        Err((e, _)) => Err(fail(e)),
    }
}

/// Errors while sending a request body.
enum WriteError {
    Upstream(std::io::Error),
    /// The client's body failed (it went away mid-upload).
    Downstream,
}

async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    head: &mut Vec<u8>,
    mut body: RequestBody,
    framing: Framing,
) -> Result<(), WriteError> {
    let chunked = framing == Framing::Chunked;
    // `head` holds what is still to be written: at first the request head, which waits for
    // the first frame so that a small body goes in the same write.
    loop {
        let frame = match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed mid-stream");
                return Err(WriteError::Downstream);
            }
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                // Trailers go with a chunked body; otherwise there is nowhere to put them.
                if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                    push_trailers(head, &trailers);
                    wr.write_all(head).await.map_err(WriteError::Upstream)?;
                    head.clear();
                    return wr.flush().await.map_err(WriteError::Upstream);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        put_data(wr, head, &data, chunked)
            .await
            .map_err(WriteError::Upstream)?;
        if !head.is_empty() {
            wr.write_all(head).await.map_err(WriteError::Upstream)?;
            head.clear();
        }
    }
    if chunked {
        head.extend_from_slice(b"0\r\n\r\n");
    }
    if !head.is_empty() {
        wr.write_all(head).await.map_err(WriteError::Upstream)?;
        head.clear();
    }
    wr.flush().await.map_err(WriteError::Upstream)
}

/// A response head, parsed.
struct Parsed {
    head: Response<()>,
    framing: Framing,
    /// Whether the connection can carry another exchange once this body is read.
    reusable: bool,
}

/// Reads until a final response head (skipping `1xx` interim ones) is complete. On failure,
/// also says whether nothing at all was read (the stale-connection case).
async fn read_head(
    conn: &mut Conn,
    method: &Method,
    upgrade: bool,
) -> Result<Parsed, (ClientError, bool)> {
    let Connection {
        io, buf, fields, ..
    } = &mut **conn;
    read_head_from(io, buf, fields, method, upgrade).await
}

async fn read_head_from<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    fields: &mut Vec<[u32; 4]>,
    method: &Method,
    upgrade: bool,
) -> Result<Parsed, (ClientError, bool)> {
    let mut read_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match parse_head(buf, fields, method, upgrade) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) if buf.len() >= MAX_HEAD_BYTES => {
                    cold_path();
                    return Err((ClientError::Invalid("response head too large"), false));
                }
                Ok(None) => {}
                Err(e) => {
                    cold_path();
                    return Err((e, false));
                }
            }
        }
        buf.reserve(READ_CHUNK);
        let n =
            std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *rd), cx, buf))
                .await
                .map_err(|e| (ClientError::Io(e), !read_any))?;
        if n == 0 {
            cold_path();
            return Err((ClientError::Closed, !read_any));
        }
        read_any = true;
    }
}

/// Parses a response head at the start of `buf` and consumes it; `Ok(None)` when incomplete.
/// Interim `1xx` responses are consumed and skipped (`101` ends an upgrade).
fn parse_head(
    buf: &mut BytesMut,
    fields: &mut Vec<[u32; 4]>,
    method: &Method,
    upgrade: bool,
) -> Result<Option<Parsed>, ClientError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
        let len = match status {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
                cold_path();
                return Err(ClientError::Invalid("response head too large"));
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                cold_path();
                return Err(ClientError::Invalid("too many response headers"));
            }
            Err(_) => {
                cold_path();
                return Err(ClientError::Invalid("malformed response head"));
            }
        };
        let code = res.code.unwrap_or(0);
        let version = match res.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        note_fields(buf, res.headers, fields);
        let status =
            StatusCode::from_u16(code).map_err(|_| ClientError::Invalid("invalid status code"))?;
        if status.is_informational() && !(status == StatusCode::SWITCHING_PROTOCOLS && upgrade) {
            cold_path();
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ClientError::Invalid("101 to a request that was no upgrade"));
            }
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let head = buf.split_to(len).freeze();
        // Room for the few fields the proxy adds (request id, rate-limit headers) without
        // the map growing.
        let (headers, fields) =
            header_map(&head, fields, 2, |_, _| {}).map_err(ClientError::Invalid)?;
        let mut reusable = fields.persistent(version);
        let (te, te_chunked, length) = (fields.transfer_encoding, fields.chunked, fields.length);
        let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
            reusable = false;
            Framing::Length(0)
        } else if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if te {
            // Both headers: Transfer-Encoding wins, and the connection is not to be trusted
            // with another message (RFC 9112 §6.3 point 3).
            if length.is_some() {
                reusable = false;
            }
            if te_chunked {
                Framing::Chunked
            } else {
                reusable = false;
                Framing::Eof
            }
        } else {
            match length {
                Some(Some(n)) => Framing::Length(n),
                None => {
                    reusable = false;
                    Framing::Eof
                }
                Some(None) => return Err(ClientError::Invalid("invalid content-length")),
            }
        };
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        return Ok(Some(Parsed {
            head: resp,
            framing,
            reusable,
        }));
    }
}

fn finish(mut conn: Conn, parsed: Parsed, returner: Returner) -> Response<Body> {
    conn.reused = true;
    let Parsed {
        head,
        framing,
        reusable,
    } = parsed;
    // A `101`: the connection is the tunnel's now; the body ends at once and keeps it until
    // `take_upgrade`.
    let upgraded = head.status() == StatusCode::SWITCHING_PROTOCOLS;
    let state = match framing {
        _ if upgraded => Decode::Done,
        Framing::Length(n) => Decode::Length(n),
        Framing::Chunked => Decode::ChunkSize,
        Framing::Eof => Decode::Eof,
    };
    let mut body = Body {
        conn: Some(conn),
        state,
        upgraded,
        reusable,
        returner: Some(returner),
        failed: None,
    };
    if !upgraded {
        body.advance_without_io();
    }
    head.map(|()| body)
}

/// A response body read from its connection; the connection goes back to its pool when the
/// body has been read to its end, and is closed if the body is dropped before.
pub struct Body {
    conn: Option<Conn>,
    state: Decode,
    /// A `101` answer: no body; the connection waits for `take_upgrade`.
    upgraded: bool,
    reusable: bool,
    returner: Option<Returner>,
    /// An upstream failure waiting to be reported (see `fail`).
    failed: Option<ClientError>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("state", &self.state).finish()
    }
}

impl Body {
    /// The connection of a `101 Switching Protocols` answer, with any bytes already read past
    /// its head (they belong to the new protocol, to be sent downstream first).
    pub fn take_upgrade(&mut self) -> Option<Upgraded> {
        if !self.upgraded {
            return None;
        }
        self.upgraded = false;
        let Connection { io, buf, .. } = *self.conn.take()?;
        Some(Upgraded {
            io,
            read_ahead: buf.freeze(),
        })
    }

    /// Ends the body: the connection goes back if it is clean, else it is closed.
    fn done(&mut self) {
        self.state = Decode::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
            && let Some(returner) = self.returner.take()
        {
            returner.release(conn);
        }
    }

    /// Consumes what needs no I/O, so that the body ends (and its connection goes back) with
    /// its last data, not one read later.
    fn advance_without_io(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            self.state.advance(&mut conn.buf);
            if self.state.is_done() {
                self.done();
            }
        }
    }

    /// The upstream failed mid-body. The error is reported at the next poll, not this one: the
    /// response head and the data already handed out are flushed to the client first, so the
    /// client sees the response begin and then break, never a short body.
    fn fail(
        &mut self,
        e: ClientError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        self.conn = None;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        if let Some(e) = self.failed.take() {
            self.state = Decode::Done;
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if self.upgraded {
                return Poll::Ready(None);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match self.state.step(buf) {
                Ok(Step::Frame(f)) => {
                    if self.state.is_done() {
                        self.done();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Ok(Step::Done) => {
                    self.done();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return Poll::Ready(Some(Err(ClientError::Invalid(e)))),
            }
            // Nothing buffered to hand out: read.
            buf.reserve(READ_CHUNK);
            let n = match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                buf
            )) {
                Ok(n) => n,
                Err(e) => return self.fail(ClientError::Io(e), cx),
            };
            if n == 0 {
                if self.state.at_eof() {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                return self.fail(ClientError::Closed, cx);
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A failed body leaves its connection mid-message: close it.
            this.conn = None;
            this.state = Decode::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.upgraded || self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        if self.upgraded {
            return SizeHint::with_exact(0);
        }
        self.state.size_hint()
    }
}

#[cfg(test)]
mod tests;
