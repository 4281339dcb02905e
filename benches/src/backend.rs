//! The test backend: answers every request at once with a fixed body, over HTTP/1.1 or h2c
//! (detected per connection), on one single-threaded runtime so it costs one core at most.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves `addr` until the process is killed (the harness stops it with SIGTERM).
pub fn serve(addr: SocketAddr, response_size: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the backend's runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let body = Bytes::from(vec![b'a'; response_size]);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        builder.http2().max_concurrent_streams(1024);
        loop {
            let stream = accept(&listener, "backend").await;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, body.clone()));
                // A client going away mid-exchange is not our problem.
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

/// The next connection. A failed accept (out of descriptors and the like) is reported and
/// backed off from instead of spun on.
pub async fn accept(listener: &TcpListener, who: &str) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                eprintln!("{who}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request body so the connection can carry the next request.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// A backend on its own thread for unit tests (it serves until the test process exits),
/// answering 1 KiB; returns once a request to it succeeds.
#[cfg(test)]
pub fn for_tests() -> Result<SocketAddr> {
    let addr = crate::targets::process::free_addr()?;
    std::thread::spawn(move || serve(addr, 1024));
    wait_answering(addr)?;
    Ok(addr)
}

/// Waits (10 s at most) until a request to `addr` succeeds.
#[cfg(test)]
pub fn wait_answering(addr: SocketAddr) -> Result<()> {
    use crate::loadgen::{Endpoint, Protocol, probe};
    let endpoint = Endpoint::for_addr(addr, "/")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe(&endpoint, Protocol::Http1, Duration::from_secs(1)).is_err() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("nothing answers on {addr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
