//! Opaque TCP: bytes copied both ways between the client and one endpoint of the listener's
//! TCP backend.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::snapshot::BackendRt;

pub async fn proxy<I>(mut client: I, backend: &BackendRt, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let ep = match backend.pick(std::time::Instant::now()) {
        Ok(p) => p.endpoint,
        Err(e) => {
            tracing::debug!(%peer, backend = %backend.name, error = %e, "opaque connection closed");
            return;
        }
    };
    let connect = tokio::time::timeout(
        backend.settings.connect_timeout,
        TcpStream::connect(ep.addr),
    );
    let mut upstream = match connect.await {
        Ok(Ok(s)) => s,
        _ => {
            tracing::debug!(%peer, endpoint = %ep.addr, "opaque connection closed: connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%peer, error = %e, "opaque connection ended");
    }
}
