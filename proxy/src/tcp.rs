//! Opaque TCP: bytes copied both ways between the client and one endpoint of the listener's
//! TCP backend.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use prometheus_client::metrics::counter::Counter;

use crate::breaker::Outcome;
use crate::snapshot::BackendRt;

/// `bytes`: the listener's (received from clients, sent to clients) counters.
pub async fn proxy<I>(
    mut client: I,
    backend: &BackendRt,
    peer: SocketAddr,
    bytes: &(Counter, Counter),
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let picked = match backend.pick(Instant::now()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%peer, backend = %backend.name, error = %e, "opaque connection closed");
            return;
        }
    };
    let ep = picked.endpoint;
    let connect = tokio::time::timeout(
        backend.settings.connect_timeout,
        TcpStream::connect(ep.addr),
    );
    // Outlier detection hears how connecting went: the only verdict opaque bytes allow.
    let mut upstream = match connect.await {
        Ok(Ok(s)) => {
            backend.record(picked.index, Outcome::Success, Instant::now());
            s
        }
        _ => {
            backend.record(picked.index, Outcome::Failure, Instant::now());
            tracing::debug!(%peer, endpoint = %ep.addr, "opaque connection closed: connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((received, sent)) => {
            bytes.0.inc_by(received);
            bytes.1.inc_by(sent);
        }
        Err(e) => tracing::debug!(%peer, error = %e, "opaque connection ended"),
    }
}
