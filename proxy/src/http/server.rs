//! Serves one downstream connection as HTTP/1.1 or HTTP/2, honouring the listener's limits and
//! the drain signal (HTTP/1 finishes its exchange and closes; HTTP/2 gets a GOAWAY).

use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;
use crate::http::proxy::{ConnCtx, handle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

pub async fn serve<I>(
    io: I,
    version: HttpVersion,
    settings: &HttpSettings,
    ctx: Arc<ConnCtx>,
    drain: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = ctx.client;
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
            tokio::select! {
                r = conn.as_mut() => r,
                () = drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "downstream connection ended with an error");
    }
}
