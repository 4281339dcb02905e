//! Peers that misbehave mid-exchange: a backend that dies in the middle of its response body,
//! a client that vanishes in the middle of its upload. Each has a defined outcome, and the
//! proxy keeps serving afterwards.

use std::time::Duration;

use http_body_util::BodyExt;
use tern_e2e::{Proxy, TestBackend, http1_client, http2_client, raw_http1, raw_status, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(10);

/// A backend that answers every request with headers promising 1000 bytes, sends 10, and
/// closes the connection.
async fn dies_mid_body() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                    .await;
            });
        }
    });
    addr
}

fn config(endpoint: std::net::SocketAddr) -> String {
    format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    routes: [{{ name: all, backends: [{{ name: b }}] }}]\nbackends:\n  - name: b\n    endpoints: [{endpoint}]\n"
    )
}

/// The client must learn the body is incomplete: a truncated body is never passed off as a
/// complete one, over HTTP/1.1 (connection closed early) or HTTP/2 (stream reset).
#[tokio::test]
async fn a_backend_dying_mid_body_is_an_error_for_the_client_not_a_short_body() {
    let proxy = Proxy::start(config(dies_mid_body().await)).await;
    let url = proxy.url("web", "/");
    for (name, client) in [("HTTP/1.1", http1_client()), ("HTTP/2", http2_client())] {
        let response = client
            .request(
                http::Request::get(url.as_str())
                    .body(tern_e2e::body::empty())
                    .expect("req"),
            )
            .await
            .expect("the response head arrives");
        assert_eq!(response.status(), 200, "{name}");
        let body = response.into_body().collect().await;
        assert!(
            body.is_err(),
            "{name}: a 10-byte body for a 1000-byte promise was accepted"
        );
    }
    // Still serving: the proxy answers its admin port and the next exchange the same way.
    assert!(proxy.is_ready().await);
    let raw = raw_http1(
        proxy.addr("web"),
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), Some(200), "{raw}");
}

/// A client that sends half its body and disconnects: the backend sees the upload end early,
/// and the proxy carries on.
#[tokio::test]
async fn a_client_vanishing_mid_upload_is_cut_upstream_and_the_proxy_carries_on() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(tern_e2e::config::simple(&[&a])).await;
    {
        let mut s = tokio::net::TcpStream::connect(proxy.addr("web"))
            .await
            .expect("connect");
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
            .await
            .expect("head");
        s.write_all(&[b'x'; 1000]).await.expect("part of the body");
        wait_for("the upload reaches the backend", DEADLINE, async || {
            a.requests() == 1
        })
        .await;
    } // dropped: the client is gone
    // The proxy lets go of the dead client's connection instead of waiting on it forever.
    wait_for(
        "the proxy closes the dead client's connection",
        DEADLINE,
        async || {
            proxy
                .metric("tern_connections_open", &[("listener", "web")])
                .await
                == Some(0.0)
        },
    )
    .await;
    assert!(
        a.bytes_received() < 100_000,
        "the backend got a body the client never sent"
    );
    let r = http1_client().get(&proxy.url("web", "/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().path(), "/after");
}

/// CONNECT tunnels are not something the proxy offers: a clear 400, not a garbled forward.
#[tokio::test]
async fn connect_is_refused_with_a_reason() {
    let a = TestBackend::echo("a").await;
    let proxy = Proxy::start(tern_e2e::config::simple(&[&a])).await;
    let raw = raw_http1(
        proxy.addr("web"),
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), Some(400), "{raw}");
    assert!(raw.contains("tern-proxy-error: bad-request"), "{raw}");
    assert_eq!(a.requests(), 0);
}
