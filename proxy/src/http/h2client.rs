//! Requests to HTTP/2 upstreams, on the `h2` crate directly.
//!
//! hyper's HTTP/2 client wraps `h2` in a dispatch layer: each request goes through a channel
//! to the connection's task, which opens the stream, spawns a task per request to wait for the
//! response, and hands the response back through a oneshot. Under callgrind that layer cost
//! about 6k instructions per request of an h2c exchange (`instructions --protocol h2`). Here
//! the exchange's own task opens the stream and awaits the response head; only a request body
//! that is still streaming gets a task of its own (as in hyper), so that it keeps flowing while
//! the response streams back (gRPC's bidirectional streams need both at once).
//!
//! What the dispatch layer did that is kept here:
//! - connection-specific header fields are never sent (`h2` refuses them; an upgrade request's
//!   `Connection` and `Upgrade` are dropped, the request goes as a plain one);
//! - `content-length` is set from a body of known length when the request has none;
//! - a request body is sent as `h2`'s flow control allows, one chunk buffered at most, and
//!   stops when the upstream resets the stream;
//! - an exchange that gives up before the response head (a timeout, the client gone) resets
//!   the stream, even while the client is still sending the body;
//! - the response body gives its bytes back to the flow-control windows as it is read, so an
//!   upstream is held back by a slow client and never buffered without bound;
//! - settings: no server push, windows of 1 MiB per stream and 2 MiB per connection, a 16 KiB
//!   header-list limit, a 1 MiB send buffer.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::breaker::Permit;
use crate::error::ProxyError;
use crate::http::body::{BoxedRequest, RequestBody};

/// One HTTP/2 connection to an upstream, shared by every request to it from this worker.
#[derive(Clone)]
pub struct H2Conn {
    sender: SendRequest<Bytes>,
    /// Set when the connection's task has ended: the pool opens a new one.
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl H2Conn {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Handshakes over `io` and spawns the connection's task, which keeps `permit` (the circuit
/// breaker's connection count) for the connection's life.
pub async fn handshake(
    io: TcpStream,
    addr: std::net::SocketAddr,
    permit: Permit,
) -> Result<H2Conn, ProxyError> {
    let (io, polls) = super::h2io::writer(io);
    let (sender, conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_max_send_streams(100)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(2 << 20)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(1 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 handshake failed");
            ProxyError::ConnectFailed
        })?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closed);
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = polls.count(conn).await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
        }
        flag.store(true, Ordering::Relaxed);
    });
    Ok(H2Conn { sender, closed })
}

/// Why a request got no response.
pub enum SendError {
    /// The connection was going away (the upstream's GOAWAY, or the connection failed) before
    /// a stream was opened: nothing was sent, and the request comes back to be sent on a new
    /// connection. The connection is marked closed, so the pool opens that one.
    NotSent(BoxedRequest),
    Failed(ProxyError),
}

/// Sends `req` on a new stream of `conn` and waits for the response head. `upgrade`: the
/// request asked for a protocol switch, whose hop-by-hop fields HTTP/2 cannot carry.
pub async fn send(
    conn: &H2Conn,
    req: BoxedRequest,
    upgrade: bool,
) -> Result<Response<Body>, SendError> {
    let mut sender = match conn.sender.clone().ready().await {
        Ok(sender) => sender,
        Err(e) => {
            // A GOAWAY the connection's task has not finished with yet (it lives until the
            // streams it still carries end): every request until then would fail here.
            tracing::debug!(error = %e, "upstream HTTP/2 connection no longer takes streams");
            conn.closed.store(true, Ordering::Relaxed);
            return Err(SendError::NotSent(req));
        }
    };
    let (mut parts, body) = (*req).into_parts();
    if upgrade {
        crate::http::headers::strip_hop_by_hop(&mut parts.headers, false);
    }
    if let Some(len) = body.size_hint().exact()
        && (len != 0 || has_payload_semantics(&parts.method))
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    let eos = body.is_end_stream();
    let (response, stream) = sender
        .send_request(Request::from_parts(parts, ()), eos)
        .map_err(upstream_error)?;
    let mut cancel = None;
    if !eos {
        let (tx, rx) = tokio::sync::oneshot::channel();
        cancel = Some(CancelOnDrop(Some(tx)));
        tokio::spawn(pipe(body, stream, rx));
    }
    // Dropped here (a timeout, the client gone, an error) before the response head came, the
    // guard tells the body's task to reset the stream: the upstream stops working on a request
    // nobody waits for, even while the client is still sending its body.
    let response = response.await.map_err(upstream_error)?;
    if let Some(mut guard) = cancel {
        // Answered: the body goes on flowing for as long as the client sends it.
        guard.0 = None;
    }
    let remaining = crate::http::h1::content_length(response.headers())
        .ok()
        .flatten();
    Ok(response.map(|recv| Body {
        recv,
        data_done: false,
        remaining,
    }))
}

/// Methods whose empty body still says something (hyper's rule for `content-length: 0`).
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

/// An upstream stream's failure as the proxy reports it: `REFUSED_STREAM` means the upstream
/// did not act on the request (safe to retry), anything else is a reset.
fn upstream_error(e: h2::Error) -> SendError {
    tracing::debug!(error = %e, "upstream HTTP/2 exchange failed");
    SendError::Failed(if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        ProxyError::RefusedStream
    } else {
        ProxyError::UpstreamReset
    })
}

/// Resets a request's stream through its body's task when dropped armed (see [`send`]).
struct CancelOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Streams a request body into its stream: a chunk is sent once the stream has some window,
/// trailers end it, and a failed read resets it (the upstream must not take a cut-short body
/// for a whole one). `cancel` resolving with `Ok` resets it too (the exchange gave up before
/// the response came); closed without a value, it is no longer watched.
async fn pipe(
    mut body: RequestBody,
    mut tx: SendStream<Bytes>,
    cancel: tokio::sync::oneshot::Receiver<()>,
) {
    let mut cancel = Some(cancel);
    let piped = poll_fn(|cx| {
        if let Some(rx) = &mut cancel {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(())) => {
                    tx.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err("the exchange gave up before the response".into()));
                }
                Poll::Ready(Err(_)) => cancel = None,
                Poll::Pending => {}
            }
        }
        poll_pipe(&mut body, &mut tx, cx)
    })
    .await;
    if let Err(e) = piped {
        tracing::debug!(error = %e, "request body to an HTTP/2 upstream ended early");
    }
}

fn poll_pipe(
    body: &mut RequestBody,
    tx: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), crate::http::body::BoxError>> {
    loop {
        // Ask for a byte of window before reading the next chunk, so at most one chunk waits
        // in h2's buffer; h2 splits the chunk to the window it gets.
        tx.reserve_capacity(1);
        if tx.capacity() == 0 {
            loop {
                match ready!(tx.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    Some(Err(e)) => return Poll::Ready(Err(e.into())),
                    None => return Poll::Ready(Err("the upstream stream closed".into())),
                }
            }
        } else if let Poll::Ready(reason) = tx.poll_reset(cx)? {
            return Poll::Ready(Err(h2::Error::from(reason).into()));
        }
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    tx.send_data(data, eos)?;
                    if eos {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.reserve_capacity(0);
                        tx.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                tx.send_reset(h2::Reason::CANCEL);
                return Poll::Ready(Err(e));
            }
            None => {
                tx.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// An HTTP/2 upstream's response body: data, then trailers if any.
#[derive(Debug)]
pub struct Body {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` said is still to come (h2 checks the data against it).
    remaining: Option<u64>,
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read: the upstream may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = &mut this.remaining {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
