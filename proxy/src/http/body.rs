//! The two body types of the proxy: what goes upstream and what goes back downstream. Enums,
//! not boxes: the request path stays monomorphic and allocation-free.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::breaker::Permit;
use crate::http::client;
use crate::http::observe::Pending;
use crate::http::server::{StreamGuard, h1};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request on its way upstream, boxed once when it arrives: it passes through half a dozen
/// functions and futures (routing, retries, a try, the pool, the client), and moving a pointer
/// costs less than moving a ≈ 220-byte request at each step.
pub type BoxedRequest = Box<http::Request<RequestBody>>;

/// A response on its way back, boxed once where it is made, for the same reason.
pub type BoxedResponse = Box<http::Response<ResponseBody>>;

/// A request body from the client: read by our HTTP/1 server, or hyper's HTTP/2 one.
pub type ClientBody = http_body_util::Either<h1::Body, Incoming>;

/// A request body sent upstream: the client's own stream, a body kept whole so that it can be
/// sent again (retries, mirrors), or nothing.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    Incoming(ClientBody),
    /// The client's stream, its data bytes counted as they pass (for the access log's
    /// `bytes_in` of a logged request).
    Counted(ClientBody, Arc<AtomicU64>),
    Full(Option<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Incoming(b) => Pin::new(b).poll_frame(cx),
            Self::Counted(b, n) => {
                let frame = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &frame
                    && let Some(data) = f.data_ref()
                {
                    n.fetch_add(data.len() as u64, Relaxed);
                }
                frame
            }
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Incoming(b) | Self::Counted(b, _) => b.is_end_stream(),
            Self::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Incoming(b) | Self::Counted(b, _) => b.size_hint(),
            Self::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl RequestBody {
    /// A replayable body: `None` or empty bytes send no body.
    pub fn full(bytes: Bytes) -> Self {
        Self::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// This body with its bytes counted: a streamed one gets a counter (one allocation, only
    /// for logged requests that have a body), a whole one's length is known.
    pub fn counted(self) -> (Self, BytesIn) {
        match self {
            Self::Incoming(b) if !b.is_end_stream() => {
                let n = Arc::new(AtomicU64::new(0));
                (Self::Counted(b, Arc::clone(&n)), BytesIn::Counting(n))
            }
            Self::Full(d) => {
                let len = d.as_ref().map_or(0, |d| d.len() as u64);
                (Self::Full(d), BytesIn::Known(len))
            }
            other => (other, BytesIn::Known(0)),
        }
    }
}

/// The request body bytes received from the client, for the access log.
#[derive(Debug, Clone, Default)]
pub enum BytesIn {
    /// Not counted (the request is not logged, or its body was never read).
    #[default]
    Unknown,
    Known(u64),
    /// Read as the body streams upstream; final when the exchange ends.
    Counting(Arc<AtomicU64>),
}

impl BytesIn {
    pub fn get(&self) -> u64 {
        match self {
            Self::Unknown => 0,
            Self::Known(n) => *n,
            Self::Counting(n) => n.load(Relaxed),
        }
    }
}

/// The time limits on a response body: the route's deadline for the whole exchange (the same
/// timer that bounded the wait for the headers, handed on), and the longest silence between
/// two frames. Only present when configured; timers are `!Unpin`, hence boxed.
#[derive(Debug)]
pub struct BodyTimers {
    deadline: Option<Pin<Box<Sleep>>>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl BodyTimers {
    pub fn new(deadline: Option<Pin<Box<Sleep>>>, idle: Option<Duration>) -> Option<Self> {
        if deadline.is_none() && idle.is_none() {
            return None;
        }
        Some(Self {
            deadline,
            idle: idle.map(|i| (i, Box::pin(tokio::time::sleep(i)))),
        })
    }

    /// True when a limit has passed (and registers for wake-up otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        let idle = self
            .idle
            .as_mut()
            .is_some_and(|(_, s)| s.as_mut().poll(cx).is_ready());
        deadline || idle
    }

    fn activity(&mut self) {
        if let Some((i, s)) = &mut self.idle {
            s.as_mut().reset(Instant::now() + *i);
        }
    }
}

/// The error a response body ends with when a time limit passed mid-stream: the client sees
/// an incomplete body (HTTP/1 connection closed, HTTP/2 stream reset), never a short one.
#[derive(Debug, thiserror::Error)]
#[error("the response body did not finish within the route's time limits")]
pub struct BodyTimeout;

/// An upstream's response body: read by our HTTP/1 client (`Left`, which hands its connection
/// back to the pool once the body is read to its end), or an HTTP/2 stream (`Right`).
pub type UpstreamBody = http_body_util::Either<client::Body, crate::http::h2client::Body>;

/// A response body sent downstream: the upstream's stream, or a small body the proxy wrote
/// itself.
#[derive(Debug)]
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        /// Keeps an HTTP/2 downstream connection counted as busy while this body streams.
        stream: Option<StreamGuard>,
        /// The backend's request permit (circuit breaker): the request counts until its body
        /// is done.
        permit: Option<Permit>,
        timers: Option<BodyTimers>,
        /// A gRPC response's status counters: the status arrives in the trailers.
        grpc: Option<std::sync::Arc<crate::metrics::GrpcCounters>>,
        /// The span and access-log line, finished when the body ends (or is dropped).
        pending: Option<Box<Pending>>,
    },
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the connection did).
        if let Self::Upstream { pending, .. } = self
            && let Some(p) = pending.take()
        {
            p.finish(false, None);
        }
    }
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self::Full(None)
    }

    pub fn text(s: &'static str) -> Self {
        Self::Full(Some(Bytes::from_static(s.as_bytes())))
    }

    pub fn bytes(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Self::Full(if b.is_empty() { None } else { Some(b) })
    }

    pub fn upstream(body: UpstreamBody) -> Self {
        Self::Upstream {
            body,
            stream: None,
            permit: None,
            timers: None,
            grpc: None,
            pending: None,
        }
    }

    /// The upstream connection of a `101` answer from our HTTP/1 client, for the tunnel.
    pub fn take_upgrade(&mut self) -> Option<client::Upgraded> {
        match self {
            Self::Upstream {
                body: UpstreamBody::Left(b),
                ..
            } => b.take_upgrade(),
            _ => None,
        }
    }

    /// Finishes `p` when this body ends; a body the proxy wrote itself ends now.
    pub fn finish_with(&mut self, p: Box<Pending>) {
        match self {
            Self::Upstream { pending, body, .. } if !body.is_end_stream() => *pending = Some(p),
            Self::Upstream { .. } => p.finish(true, None),
            Self::Full(data) => {
                let mut p = p;
                p.add_bytes(data.as_ref().map_or(0, Bytes::len));
                p.finish(true, None);
            }
        }
    }

    /// Counts the `grpc-status` of the trailers when they arrive.
    pub fn count_grpc(&mut self, counters: std::sync::Arc<crate::metrics::GrpcCounters>) {
        if let Self::Upstream { grpc, .. } = self {
            *grpc = Some(counters);
        }
    }

    /// Holds the request permit until the body is done, and applies the time limits to it.
    pub fn guard(&mut self, p: Option<Permit>, t: Option<BodyTimers>) {
        if let Self::Upstream { permit, timers, .. } = self {
            *permit = p;
            *timers = t;
        }
    }

    /// Ties the stream's lifetime to this body: a streamed body keeps it until it ends; a body
    /// the proxy wrote itself is written at once, so the guard is released now.
    pub fn hold(&mut self, guard: StreamGuard) {
        if let Self::Upstream { stream, .. } = self {
            *stream = Some(guard);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Upstream {
                body,
                timers,
                grpc,
                pending,
                ..
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(p), Some(d)) = (pending.as_mut(), frame.data_ref()) {
                            p.add_bytes(d.len());
                        }
                        if let (Some(g), Some(code)) = (
                            grpc.as_ref(),
                            frame
                                .trailers_ref()
                                .and_then(|t| t.get("grpc-status"))
                                .and_then(crate::retry::GrpcCode::from_header),
                        ) {
                            g.inc(code.code());
                        }
                        if let Some(t) = timers {
                            t.activity();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(p) = pending.take() {
                            p.finish(false, Some(crate::error::ProxyError::UpstreamReset));
                        }
                    }
                    Poll::Pending => {
                        if timers.as_mut().is_some_and(|t| t.expired(cx)) {
                            if let Some(p) = pending.take() {
                                p.finish(false, Some(crate::error::ProxyError::Timeout));
                            }
                            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                        }
                    }
                    Poll::Ready(None) => {}
                }
                // The end: the stream said so, or its last data frame was just read (finish the
                // records now, not one poll later; an HTTP/1 body has already handed its
                // connection back).
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if ended && let Some(p) = pending.take() {
                    p.finish(true, None);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(d) => d.is_none(),
            Self::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Upstream { body, .. } => body.size_hint(),
        }
    }
}
