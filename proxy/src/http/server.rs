//! Serves one downstream connection as HTTP/1.1 or HTTP/2, honouring the listener's limits and
//! the drain signal (HTTP/1 finishes its exchange and closes; HTTP/2 gets a GOAWAY).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;
use crate::http::proxy::{ConnCtx, handle};
use crate::snapshot::ListenerSnapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// Open streams of one HTTP/2 connection and when it last had none. hyper closes an HTTP/1
/// connection that waits longer than `header_read_timeout` for a request head (between
/// keep-alive requests too); this gives HTTP/2 the same rule, which hyper lacks: a client that
/// sends nothing, or never finishes a HEADERS block, is closed with GOAWAY.
pub struct Activity {
    open: AtomicUsize,
    /// Milliseconds after `start` when the last stream ended.
    idle_since_ms: AtomicU64,
    start: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    pub fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }

    /// When the connection went idle, or `None` while a stream is open.
    fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.start + Duration::from_millis(ms))
    }
}

/// Counts one open stream until dropped (with its response body).
#[derive(Debug)]
pub struct StreamGuard(Arc<Activity>);

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Release);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pub async fn serve<I>(
    io: I,
    version: HttpVersion,
    settings: &HttpSettings,
    listener: Arc<ArcSwap<ListenerSnapshot>>,
    client: SocketAddr,
    drain: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = (version == HttpVersion::Http2).then(|| Arc::new(Activity::new()));
    let ctx = Arc::new(ConnCtx {
        listener,
        client,
        activity: activity.clone(),
    });
    let svc = service_fn(move |req| handle(req, Arc::clone(&ctx)));
    let io = TokioIo::new(io);
    let result = match version {
        HttpVersion::Http1 => {
            let mut b = http1::Builder::new();
            // Without a timer hyper's header_read_timeout never fires (slowloris).
            b.timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                .max_buf_size(settings.max_header_bytes.max(8192))
                .max_headers(settings.max_headers)
                .keep_alive(true);
            let conn = b.serve_connection(io, svc).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        HttpVersion::Http2 => {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(settings.max_concurrent_streams)
                .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(2 << 20);
            let conn = b.serve_connection(io, svc);
            tokio::pin!(conn);
            let idle_limit = settings.header_read_timeout;
            let mut deadline = Instant::now() + idle_limit;
            loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    () = drain.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        let idle = activity.as_ref().and_then(|a| a.idle_since());
                        match idle {
                            Some(since) if since + idle_limit <= Instant::now() => {
                                tracing::debug!(%client, "closing an idle HTTP/2 connection");
                                conn.as_mut().graceful_shutdown();
                                // GOAWAY waits for the client's PING ack; a stalled client
                                // never sends one, and no stream is open: don't wait long.
                                match tokio::time::timeout(idle_limit, conn.as_mut()).await {
                                    Ok(r) => break r,
                                    Err(_) => break Ok(()),
                                }
                            }
                            Some(since) => deadline = since + idle_limit,
                            None => deadline = Instant::now() + idle_limit,
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "downstream connection ended with an error");
    }
}
