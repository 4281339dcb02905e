//! The two body types of the proxy: what goes upstream and what goes back downstream. Enums,
//! not boxes: the request path stays monomorphic and allocation-free.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::http::pool::Returner;
use crate::http::server::StreamGuard;

/// A request body sent upstream: the client's own stream, or nothing.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    Incoming(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Incoming(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Incoming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Incoming(b) => b.size_hint(),
        }
    }
}

/// A response body sent downstream: the upstream's stream (which hands its HTTP/1 connection
/// back to the pool once fully read), or a small body the proxy wrote itself.
#[derive(Debug)]
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        /// Present for pooled HTTP/1 connections; fires when the body has been read to its end.
        returner: Option<Returner>,
        /// Keeps an HTTP/2 downstream connection counted as busy while this body streams.
        stream: Option<StreamGuard>,
    },
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

    pub fn upstream(body: Incoming, returner: Option<Returner>) -> Self {
        Self::Upstream {
            body,
            returner,
            stream: None,
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Upstream { body, returner, .. } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(None) = polled
                    && let Some(r) = returner.take()
                {
                    r.release();
                } else if returner.is_some() && body.is_end_stream() {
                    // The last data frame was just read; give the connection back now rather
                    // than waiting for the client to poll once more.
                    if let Some(r) = returner.take() {
                        r.release();
                    }
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
