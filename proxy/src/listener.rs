//! Listening sockets and the accept loop. Each worker owns one `SO_REUSEPORT` socket per
//! listener, so the kernel spreads connections over workers without a shared accept lock.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenerProtocol;
use crate::detect::{self, Prefixed, Protocol};
use crate::http::server::{self, HttpVersion};
use crate::snapshot::ListenerSnapshot;

/// Binds one socket of a listener (one per worker), non-blocking, ready for tokio.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Everything an accept loop needs; one per listener per worker.
pub struct Accept {
    pub socket: std::net::TcpListener,
    pub handle: Arc<ArcSwap<ListenerSnapshot>>,
    /// Cancelled when the listener is removed by a config change.
    pub stop: CancellationToken,
    /// Cancelled on shutdown: stop accepting and drain connections.
    pub drain: CancellationToken,
    pub tracker: TaskTracker,
    pub open: prometheus_client::metrics::gauge::Gauge,
    pub accepted: prometheus_client::metrics::counter::Counter,
}

pub async fn accept_loop(a: Accept) {
    let listener = match TcpListener::from_std(a.socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener with the runtime");
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = a.stop.cancelled() => break,
            () = a.drain.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let handle = Arc::clone(&a.handle);
                let drain = a.drain.clone();
                let open = a.open.clone();
                a.accepted.inc();
                open.inc();
                a.tracker.spawn(async move {
                    connection(stream, peer, handle, drain).await;
                    open.dec();
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handle: Arc<ArcSwap<ListenerSnapshot>>,
    drain: CancellationToken,
) {
    let snap = handle.load_full();
    let version = match snap.protocol {
        ListenerProtocol::Http1 => HttpVersion::Http1,
        ListenerProtocol::Http2 => HttpVersion::Http2,
        ListenerProtocol::Tcp => {
            if let Some(b) = snap.tcp_backend.and_then(|i| snap.backends.get(i)) {
                crate::tcp::proxy(stream, b, peer, &snap.tcp_bytes).await;
            }
            return;
        }
        ListenerProtocol::Auto => {
            let (proto, prefix) = match detect::detect(&mut stream, snap.http.detect_timeout).await
            {
                Ok(Some(found)) => found,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection failed during detection");
                    return;
                }
            };
            let version = match proto {
                Protocol::Http1 => HttpVersion::Http1,
                Protocol::Http2 => HttpVersion::Http2,
                Protocol::Opaque => {
                    match snap.tcp_backend.and_then(|i| snap.backends.get(i)) {
                        Some(b) => {
                            let io = Prefixed::new(prefix, stream);
                            crate::tcp::proxy(io, b, peer, &snap.tcp_bytes).await;
                        }
                        None => {
                            tracing::debug!(%peer, "closing non-HTTP connection: the listener has no tcp_backend")
                        }
                    }
                    return;
                }
            };
            server::serve_tcp(stream, prefix, version, &snap.http, handle, peer, drain).await;
            return;
        }
    };
    let prefix = bytes::BytesMut::new();
    server::serve_tcp(stream, prefix, version, &snap.http, handle, peer, drain).await;
}
