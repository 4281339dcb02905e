//! The floor: a TCP relay that parses nothing. Each client connection gets a connection of
//! its own to the backend, and bytes are copied both ways as they come.
//!
//! Over keep-alive HTTP/1.1 it makes the system calls an HTTP proxy with a connection pool
//! makes per request (read the request, write it upstream, read the response, write it
//! back), on the runtime Tern uses, with one worker thread. So its CPU per request is what
//! the kernel and tokio cost before any proxy does any work of its own: no proxy measured
//! here can go below it, and a goal below it cannot be met on this host.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

/// Relays `listen` to `backend` until the process is killed (the harness stops it with
/// SIGTERM). `workers` threads: a current-thread runtime for one, as Tern runs.
pub fn serve(listen: SocketAddr, backend: SocketAddr, workers: usize) -> Result<()> {
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .context("building the relay's runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        loop {
            let client = crate::backend::accept(&listener, "relay").await;
            tokio::spawn(async move {
                if let Err(e) = relay(client, backend).await {
                    eprintln!("relay: {e:#}");
                }
            });
        }
    })
}

async fn relay(mut client: TcpStream, backend: SocketAddr) -> Result<()> {
    let mut upstream = TcpStream::connect(backend)
        .await
        .with_context(|| format!("connecting to {backend}"))?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    // A peer closing (or resetting) ends the pair; that is how every connection ends here.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::loadgen::{self, Budget, Endpoint, Pace, Protocol};

    #[test]
    fn relays_both_protocols() -> Result<()> {
        let backend = crate::backend::for_tests()?;
        let listen = crate::targets::process::free_addr()?;
        std::thread::spawn(move || serve(listen, backend, 1));
        crate::backend::wait_answering(listen)?;
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let spec = loadgen::tests::spec(
                Endpoint::for_addr(listen, "/")?,
                protocol,
                Pace::Closed,
                Budget::Requests(300),
            );
            let r = loadgen::run(&spec, |_| {})?;
            assert_eq!((r.ok, r.failures()), (300, 0), "{protocol:?}: {r:?}");
            assert!((r.response_bytes_per_request - 1024.0).abs() < 1e-9);
        }
        Ok(())
    }

    #[test]
    fn a_backend_that_is_down_closes_the_client() -> Result<()> {
        use std::io::Read;
        // Nothing listens on the backend's address.
        let backend = crate::targets::process::free_addr()?;
        let listen = crate::targets::process::free_addr()?;
        std::thread::spawn(move || serve(listen, backend, 1));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut client = loop {
            match std::net::TcpStream::connect(listen) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        client.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 16];
        // EOF, not a hang: the relay gives up on the pair.
        assert_eq!(client.read(&mut buf)?, 0);
        Ok(())
    }
}
