//! Protocols through the real proxy: HTTP/1.1 keep-alive and upstream reuse, HTTP/2 (h2c)
//! downstream to HTTP/1 and HTTP/2 upstreams, protocol detection on `auto` listeners (HTTP/1,
//! h2c and opaque TCP on one port, server-speaks-first), `tcp` listeners, gRPC with a real
//! gRPC client and server (Python `grpcio`, `tests/grpc_peer.py`), trailers, WebSocket
//! upgrades, 100 MB bodies without buffering, slow and oversized request heads, and `curl` as
//! a client that is not ours.
//!
//! Every test starts its own proxy and peers on loopback and asserts on what a client sees.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tern_e2e::body::{self, Body};
use tern_e2e::{
    ANY_PORT, Proxy, TestBackend, TestResponse, free_addr, free_port, h2_connect, http1_client,
    http2_client, raw_http1, raw_status, wait_for, wait_for_value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout};

const SECOND: Duration = Duration::from_secs(1);

/// Upper bound for any single network wait in these tests: far above what a passing run
/// needs, so reaching it means a hang.
const DEADLINE: Duration = Duration::from_secs(10);

// --- config helpers -----------------------------------------------------------------------------

/// Settings of `auto` listeners whose test is not about detection timing: `detect_timeout`
/// takes a client that connects and then waits that long for opaque TCP; pinned here so these
/// tests do not depend on the default (10s).
const AUTO_HTTP: &str = "http: {detect_timeout: 5s}";

/// One listener entry on a free port with a catch-all route `all` to `backend`; `extra` holds
/// more listener fields, one per line, unindented (`tcp_backend: raw`,
/// `http: {detect_timeout: 200ms}`). An `auto` listener without an `http` line gets
/// [`AUTO_HTTP`].
fn listener(name: &str, protocol: &str, backend: &str, extra: &[&str]) -> String {
    let mut text = format!("  - name: {name}\n    address: {ANY_PORT}\n    protocol: {protocol}\n");
    for line in extra {
        text.push_str(&format!("    {line}\n"));
    }
    if protocol == "auto" && !extra.iter().any(|l| l.starts_with("http:")) {
        text.push_str(&format!("    {AUTO_HTTP}\n"));
    }
    text.push_str(&format!(
        "    routes:\n      - name: all\n        backends: [{{name: \"{backend}\"}}]\n"
    ));
    text
}

/// A `tcp` listener entry on a free port: everything goes to `tcp_backend` (no routes).
fn tcp_listener(name: &str, tcp_backend: &str) -> String {
    format!(
        "  - name: {name}\n    address: {ANY_PORT}\n    protocol: tcp\n    tcp_backend: {tcp_backend}\n"
    )
}

/// A whole config from listener entries ([`listener`]) and backend entries
/// ([`TestBackend::yaml`], [`TcpPeer::yaml`]).
fn config(listeners: &[String], backends: &[String]) -> String {
    let mut text = String::from("shutdown_grace: 1s\nlisteners:\n");
    for l in listeners {
        text.push_str(l);
    }
    text.push_str("backends:\n");
    for b in backends {
        text.push_str(&format!("  - {b}\n"));
    }
    text
}

/// The proxy's `tern_connections_total` for one listener (0 when not exported yet).
async fn connections_accepted(proxy: &Proxy, listener: &str) -> f64 {
    proxy
        .metric("tern_connections_total", &[("listener", listener)])
        .await
        .unwrap_or(0.0)
}

// --- raw TCP helpers -----------------------------------------------------------------------------

/// An opaque TCP upstream: echoes every byte back, optionally after writing a greeting first
/// (a server-speaks-first protocol such as SMTP or MySQL). Half-closes when the client does.
struct TcpPeer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpPeer {
    async fn start(greeting: Option<&'static [u8]>) -> TcpPeer {
        // A port from the harness, so no proxy of a parallel test is promised the same one.
        let std_listener =
            std::net::TcpListener::bind(free_addr()).expect("binding the TCP peer's port");
        std_listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let listener = TcpListener::from_std(std_listener).expect("registering the listener");
        let addr = listener.local_addr().expect("local_addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            // Connections live in this task's JoinSet: aborting the task cuts them too.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut stream, _)) = accepted else {
                            // Out of file descriptors and the like: back off, don't spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        conns.spawn(async move {
                            if let Some(greeting) = greeting
                                && stream.write_all(greeting).await.is_err()
                            {
                                return;
                            }
                            let (mut r, mut w) = stream.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        TcpPeer {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// A backend entry named `name` for this peer.
    fn yaml(&self, name: &str) -> String {
        format!(r#"{{name: "{name}", endpoints: ["{}"]}}"#, self.addr)
    }
}

impl Drop for TcpPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a read-until-the-end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Eof,
    Reset,
    Deadline,
}

/// Reads until the peer closes (EOF or reset) or `limit` passes; returns what arrived, how it
/// ended, and when (since `since`).
async fn read_to_close(
    stream: &mut TcpStream,
    limit: Duration,
    since: Instant,
) -> (Vec<u8>, Ending, Duration) {
    let until = Instant::now() + limit;
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return (received, Ending::Deadline, since.elapsed()),
            Ok(Ok(0)) => return (received, Ending::Eof, since.elapsed()),
            Ok(Err(_)) => return (received, Ending::Reset, since.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads exactly `n` bytes or fails the test after [`DEADLINE`].
async fn read_n(stream: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: {n} bytes did not arrive within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: reading {n} bytes: {e}"));
    buf
}

/// Reads an HTTP/1 response head (through the blank line), byte by byte so nothing after it
/// is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            head.push(byte[0]);
            assert!(head.len() < 64 * 1024, "endless response head");
        }
        Ok::<_, std::io::Error>(())
    };
    match timeout(DEADLINE, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "reading a response head: {e}; got so far: {:?}",
            String::from_utf8_lossy(&head)
        ),
        Err(_) => panic!("no response head within {DEADLINE:?}"),
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

// --- child processes -----------------------------------------------------------------------------

/// What a finished child process left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to completion with output in temp files, polling without blocking the test's
/// runtime (backends on it must keep serving); kills it and fails the test after `limit`.
async fn run_process(command: &mut Command, limit: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("a temp dir for a child's output");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling a child") {
            break status;
        }
        if Instant::now() >= deadline {
            // Our own child, by its handle (its pid).
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} still running after {limit:?}; stderr:\n{}",
                read_lossy(&err_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Finished {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

// --- 1. HTTP/1.1 keep-alive ----------------------------------------------------------------------

/// The kinds of request the keep-alive test sends in turn.
#[derive(Debug, Clone, Copy)]
enum Exchange {
    Get,
    /// A body with `Content-Length`.
    Sized(u64),
    /// A body of unknown length: chunked.
    Chunked(u64),
    /// No response body despite a `Content-Length`: the framing trap for reuse.
    Head,
}

#[tokio::test]
async fn http1_keep_alive_reuses_the_client_and_upstream_connections() {
    keep_alive_sequence(TestBackend::echo("a").await, "HTTP/1.1").await;
}

/// The same sequence to an HTTP/2 backend: request bodies are read by hyper's HTTP/2 client
/// on its own task, and the client connection's read side comes back from there.
#[tokio::test]
async fn http1_keep_alive_holds_with_an_http2_backend() {
    let backend = TestBackend::builder("a").http2().start().await;
    keep_alive_sequence(backend, "HTTP/2.0").await;
}

/// Requests of every framing in turn on one client connection: each answered, the client and
/// the upstream connection kept.
async fn keep_alive_sequence(backend: TestBackend, upstream_version: &str) {
    let proxy = Proxy::start(config(
        &[listener("web", "http1", "a", &[])],
        &[backend.yaml()],
    ))
    .await;
    let addr = proxy.addr("web");

    // One client connection, used for every request in turn.
    let stream = connect(addr).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake with the proxy");
    let conn = tokio::spawn(conn);

    let exchanges = [
        Exchange::Get,
        Exchange::Sized(1000),
        Exchange::Head,
        Exchange::Chunked(300),
        Exchange::Get,
        Exchange::Head,
        Exchange::Sized(200_000),
        Exchange::Chunked(70_000),
        Exchange::Get,
    ];
    for (i, exchange) in exchanges.iter().enumerate() {
        let (method, body): (&str, Body) = match *exchange {
            Exchange::Get => ("GET", body::empty()),
            Exchange::Head => ("HEAD", body::empty()),
            Exchange::Sized(n) => ("POST", body::pattern(n)),
            Exchange::Chunked(n) => {
                let (tx, rx) = body::channel();
                tokio::spawn(async move {
                    for _ in 0..n / 100 {
                        if !tx.send(vec![7u8; 100]).await {
                            break;
                        }
                    }
                });
                ("POST", rx)
            }
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("/req/{i}"))
            .header("host", "keepalive.test")
            .body(body)
            .expect("request");
        timeout(DEADLINE, sender.ready())
            .await
            .expect("the connection ready in time")
            .unwrap_or_else(|e| {
                panic!("before request {i} ({exchange:?}): the proxy closed the connection: {e}")
            });
        let response = timeout(DEADLINE, sender.send_request(request))
            .await
            .expect("a response in time")
            .unwrap_or_else(|e| {
                panic!("request {i} ({exchange:?}) on the kept-alive connection: {e}")
            });
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(
            response.status,
            200,
            "request {i} ({exchange:?}): {}",
            response.text()
        );
        let sent = match *exchange {
            Exchange::Head => {
                assert!(response.body.is_empty(), "a HEAD response has no body");
                assert!(
                    response.header("content-length").is_some(),
                    "HEAD keeps Content-Length"
                );
                continue;
            }
            Exchange::Get => 0,
            Exchange::Sized(n) | Exchange::Chunked(n) => n,
        };
        let echo = response.echo();
        assert_eq!(echo.path(), format!("/req/{i}"));
        assert_eq!(
            echo.body_len(),
            sent,
            "request {i} ({exchange:?}): body bytes upstream"
        );
        assert_eq!(echo.version(), upstream_version);
    }

    assert_eq!(backend.requests(), exchanges.len());
    assert_eq!(
        backend.connections(),
        1,
        "sequential requests on one client connection should reuse one pooled upstream \
         connection"
    );
    assert_eq!(
        connections_accepted(&proxy, "web").await,
        1.0,
        "all requests came over one client connection"
    );
    assert!(
        !conn.is_finished(),
        "the proxy closed the client connection"
    );
}

#[tokio::test]
async fn http1_pipelined_requests_are_answered_in_order() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[listener("web", "auto", "a", &[])],
        &[backend.yaml()],
    ))
    .await;
    let responses = tern_e2e::raw_http1_until_close(
        proxy.addr("web"),
        "GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
         POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
         GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    let statuses: Vec<&str> = responses
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &responses[at + 9..at + 12])
        .collect();
    assert_eq!(
        statuses,
        ["200", "200", "200"],
        "three answers:\n{responses}"
    );
    let first = responses.find(r#""path":"/first""#);
    let second = responses.find(r#""path":"/second""#);
    let third = responses.find(r#""path":"/third""#);
    assert!(
        first.is_some() && first < second && second < third,
        "answers out of order:\n{responses}"
    );
    assert!(responses.contains(r#""body_len":3"#), "{responses}");
}

#[tokio::test]
async fn http1_expect_100_continue_is_answered_before_the_body() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[listener("web", "auto", "a", &[])],
        &[backend.yaml()],
    ))
    .await;
    let mut stream = connect(proxy.addr("web")).await;
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .expect("write the head");
    // A client waits for `100 Continue` before it sends the body (curl gives up after 1 s).
    let interim = read_head(&mut stream).await;
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "expected 100 Continue before the body, got:\n{interim}"
    );
    stream.write_all(b"hello").await.expect("write the body");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    let body = read_n(&mut stream, length, "the response body").await;
    let echo: Value = serde_json::from_slice(&body).expect("an echo");
    assert_eq!(echo["body_len"], 5);
}

// --- 2. HTTP/2 downstream ------------------------------------------------------------------------

/// Listener `web` (given protocol) routing `/one` to HTTP/1 backend `h1` and `/two` to h2c
/// backend `h2`.
fn two_backend_config(protocol: &str, h1: &TestBackend, h2: &TestBackend) -> String {
    format!(
        "\
listeners:
  - name: web
    address: {ANY_PORT}
    protocol: {protocol}
    {http}
    routes:
      - name: one
        matches: [{{path: {{value: /one}}}}]
        backends: [{{name: \"{h1name}\"}}]
      - name: two
        matches: [{{path: {{value: /two}}}}]
        backends: [{{name: \"{h2name}\"}}]
backends:
  - {h1yaml}
  - {h2yaml}
",
        http = if protocol == "auto" { AUTO_HTTP } else { "" },
        h1name = h1.name(),
        h2name = h2.name(),
        h1yaml = h1.yaml(),
        h2yaml = h2.yaml(),
    )
}

#[tokio::test]
async fn h2c_client_reaches_http1_and_http2_backends() {
    // Connection-specific response fields are malformed in HTTP/2 (RFC 9113 §8.2.2): the
    // proxy must drop them, and whatever `Connection` names.
    let h1 = TestBackend::builder("h1")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .start()
        .await;
    let h2 = TestBackend::builder("h2").http2().start().await;
    let proxy = Proxy::start(two_backend_config("http2", &h1, &h2)).await;
    let client = http2_client();

    let r = client
        .send(
            "POST",
            &proxy.url("web", "/one/x?q=1"),
            &[("x-custom", "v")],
            "hello",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.backend(), Some("h1"));
    for name in ["connection", "x-hop", "keep-alive", "transfer-encoding"] {
        assert!(
            r.header(name).is_none(),
            "hop-by-hop {name} reached the h2 client: {:?}",
            r.headers
        );
    }
    let echo = r.echo();
    assert_eq!(
        echo.version(),
        "HTTP/1.1",
        "an http1 backend is spoken to in HTTP/1.1"
    );
    assert_eq!(echo.path(), "/one/x?q=1");
    assert_eq!(echo.body_len(), 5);
    assert_eq!(echo.header("x-custom"), Some("v"));
    let authority = proxy.addr("web").to_string();
    assert_eq!(
        echo.header("host"),
        Some(authority.as_str()),
        "HTTP/1 upstreams get the client's :authority as Host"
    );

    let r = client
        .send(
            "POST",
            &proxy.url("web", "/two/y?q=2"),
            &[("x-custom", "w")],
            "hello!",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.backend(), Some("h2"));
    let echo = r.echo();
    assert_eq!(
        echo.version(),
        "HTTP/2.0",
        "an http2 backend is spoken to in h2c"
    );
    assert_eq!(echo.path(), "/two/y?q=2");
    assert_eq!(echo.authority(), Some(authority.as_str()));
    assert_eq!(echo.body_len(), 6);
    assert_eq!(echo.header("x-custom"), Some("w"));
    assert_eq!(
        echo.header("host"),
        None,
        "h2 upstreams carry :authority, not Host"
    );
}

/// A WebSocket opening handshake (RFC 6455 §1.3's example key).
const WEBSOCKET_UPGRADE: &[u8] =
    b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// HTTP/2 has no `Connection` or `Upgrade` (RFC 9113 §8.2.2): an HTTP/1.1 upgrade request
/// routed to an h2c backend goes as a plain request, without them, and its answer comes back
/// as a plain one (not a 502 for fields HTTP/2 cannot carry).
#[tokio::test]
async fn an_upgrade_request_to_an_h2_backend_goes_as_a_plain_request() {
    let h2 = TestBackend::builder("h2").http2().start().await;
    let proxy = Proxy::start(config(&[listener("web", "http1", "h2", &[])], &[h2.yaml()])).await;

    let mut stream = connect(proxy.addr("web")).await;
    stream
        .write_all(WEBSOCKET_UPGRADE)
        .await
        .expect("write the upgrade request");
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "expected 200, got:\n{head}"
    );
    assert!(head.contains("\r\nx-backend: h2\r\n"), "{head}");
    assert!(!head.contains("\r\nupgrade:"), "{head}");
}

/// An h2c upstream that sends GOAWAY while a stream is still open: on its first connection it
/// starts a graceful shutdown as soon as it accepts `/slow`, then answers `/slow` with a head
/// and a body it never ends. Other requests (on later connections) get `200 fresh`. Returns
/// its address and how many connections it accepted.
async fn going_away_h2_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the h2 upstream");
    let addr = listener.local_addr().expect("its address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                let mut open = Vec::new();
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let slow = request.uri().path() == "/slow";
                    if slow {
                        // GOAWAY goes out before the answer's head: the proxy has read it by
                        // the time the client sees that head.
                        conn.graceful_shutdown();
                    }
                    let head = http::Response::builder()
                        .status(200)
                        .header("x-backend", "going-away")
                        .body(())
                        .expect("a response head");
                    match respond.send_response(head, false) {
                        Ok(body) if slow => open.push(body),
                        Ok(mut body) => {
                            let _ = body.send_data(Bytes::from_static(b"fresh"), true);
                        }
                        Err(_) => {}
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// An upstream going away (GOAWAY, as nginx sends after `keepalive_requests`, or any server
/// shutting down) keeps its connection while its last streams finish. Requests in that window
/// must not fail on it: the proxy sees the connection takes no new streams and sends them on a
/// new one, transparently.
#[tokio::test]
async fn requests_after_an_upstream_goaway_go_on_a_new_connection() {
    let (upstream, accepted) = going_away_h2_upstream().await;
    let proxy = Proxy::start(config(
        &[listener("web", "http1", "away", &[])],
        &[format!(
            r#"{{name: "away", endpoints: ["{upstream}"], protocol: http2}}"#
        )],
    ))
    .await;

    let mut slow = connect(proxy.addr("web")).await;
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: away.test\r\n\r\n")
        .await
        .expect("write the slow request");
    let head = read_head(&mut slow).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let client = http1_client();
    for _ in 0..3 {
        let r = client.get(&proxy.url("web", "/fresh")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "fresh");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one new connection after the GOAWAY, shared by the requests that followed"
    );
}

/// RFC 9113 §8.2.3: HTTP/2 clients may split `Cookie` into several fields (for HPACK); they
/// MUST be joined with "; " into one field before the request goes to HTTP/1.1.
#[tokio::test]
async fn h2_cookie_fields_are_joined_for_http1_upstreams() {
    let h1 = TestBackend::echo("h1").await;
    let h2 = TestBackend::builder("h2").http2().start().await;
    let proxy = Proxy::start(two_backend_config("http2", &h1, &h2)).await;
    let r = http2_client()
        .send(
            "GET",
            &proxy.url("web", "/one/cookies"),
            &[("cookie", "a=1"), ("cookie", "b=2")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echo().header_all("cookie"),
        ["a=1; b=2"],
        "an HTTP/1.1 upstream must get one Cookie field"
    );
}

/// Sends `paths` as concurrent streams on one bare h2 connection; returns each answer's echo
/// JSON in order.
async fn concurrent_h2_gets(
    client: &h2::client::SendRequest<Bytes>,
    authority: &str,
    paths: Vec<String>,
) -> Vec<Value> {
    let mut tasks = JoinSet::new();
    for (index, path) in paths.into_iter().enumerate() {
        let mut client = client.clone();
        let uri = format!("http://{authority}{path}");
        tasks.spawn(async move {
            let request = Request::get(&uri).body(()).expect("request");
            client = client.ready().await.expect("h2 connection ready");
            let (response, _) = client
                .send_request(request, true)
                .unwrap_or_else(|e| panic!("opening a stream for {uri}: {e}"));
            let response = response
                .await
                .unwrap_or_else(|e| panic!("response head for {uri}: {e}"));
            assert_eq!(response.status(), 200, "{uri}");
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap_or_else(|e| panic!("body of {uri}: {e}"));
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            let value: Value = serde_json::from_slice(&bytes).expect("an echo answer");
            (index, value)
        });
    }
    let mut answers = vec![Value::Null; tasks.len()];
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            let (index, value) = joined.expect("a stream task");
            answers[index] = value;
        }
    };
    timeout(DEADLINE * 2, all)
        .await
        .expect("every concurrent stream answered in time");
    answers
}

#[tokio::test]
async fn many_concurrent_h2_streams_on_one_connection() {
    const STREAMS: usize = 100;
    let h1 = TestBackend::echo("h1").await;
    let h2 = TestBackend::builder("h2").http2().start().await;
    let proxy = Proxy::start(two_backend_config("auto", &h1, &h2)).await;
    let addr = proxy.addr("web");
    let authority = addr.to_string();
    let client = h2_connect(addr).await.expect("h2c connection to the proxy");

    // Warm up: one request to each backend, so the upstream h2 connection exists.
    let warm =
        concurrent_h2_gets(&client, &authority, vec!["/one/w".into(), "/two/w".into()]).await;
    assert_eq!(warm[0]["backend"], "h1");
    assert_eq!(warm[1]["backend"], "h2");

    let paths: Vec<String> = (0..STREAMS)
        .map(|i| format!("/{}/{i}", if i % 2 == 0 { "one" } else { "two" }))
        .collect();
    let answers = concurrent_h2_gets(&client, &authority, paths.clone()).await;
    for (path, answer) in paths.iter().zip(&answers) {
        assert_eq!(answer["path"], path.as_str(), "the answer to {path}");
        let expected = if path.starts_with("/one") { "h1" } else { "h2" };
        assert_eq!(answer["backend"], expected, "backend for {path}");
    }
    assert_eq!(h1.requests(), 1 + STREAMS / 2);
    assert_eq!(h2.requests(), 1 + STREAMS / 2);
    assert_eq!(
        h2.connections(),
        1,
        "every stream to the h2c backend should share its one upstream connection"
    );
    assert_eq!(
        connections_accepted(&proxy, "web").await,
        1.0,
        "all streams came over one client connection"
    );
}

/// RFC 9113 §9.1: a client SHOULD NOT open more than one HTTP/2 connection to a server. The
/// proxy is the client of its h2c upstreams: a burst of streams arriving before the first
/// upstream connection exists must still share one connection.
#[tokio::test]
async fn cold_burst_to_an_h2_backend_shares_one_upstream_connection() {
    const STREAMS: usize = 50;
    let h1 = TestBackend::echo("h1").await;
    let h2 = TestBackend::builder("h2").http2().start().await;
    let proxy = Proxy::start(two_backend_config("auto", &h1, &h2)).await;
    let addr = proxy.addr("web");
    let client = h2_connect(addr).await.expect("h2c connection to the proxy");
    let paths = (0..STREAMS).map(|i| format!("/two/{i}")).collect();
    let answers = concurrent_h2_gets(&client, &addr.to_string(), paths).await;
    assert!(answers.iter().all(|a| a["backend"] == "h2"));
    assert_eq!(
        h2.connections(),
        1,
        "{STREAMS} concurrent streams on one client connection to a cold h2c backend opened \
         {} upstream connections",
        h2.connections()
    );
}

#[tokio::test]
async fn h2_listener_advertises_max_concurrent_streams() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[listener(
            "web",
            "http2",
            "a",
            &["http: {max_concurrent_streams: 7}"],
        )],
        &[backend.yaml()],
    ))
    .await;
    let addr = proxy.addr("web");
    let client = h2_connect(addr).await.expect("h2c connection");
    // One exchange, so the server's SETTINGS have certainly been applied.
    let answers = concurrent_h2_gets(&client, &addr.to_string(), vec!["/".into()]).await;
    assert_eq!(answers[0]["backend"], "a");
    assert_eq!(client.current_max_send_streams(), 7);
}

// --- 3. protocol detection -----------------------------------------------------------------------

#[tokio::test]
async fn auto_listener_serves_http1_h2c_and_opaque_tcp_on_one_port() {
    let backend = TestBackend::echo("a").await;
    let raw = TcpPeer::start(None).await;
    let proxy = Proxy::start(config(
        &[listener("web", "auto", "a", &["tcp_backend: raw"])],
        &[backend.yaml(), raw.yaml("raw")],
    ))
    .await;
    let addr = proxy.addr("web");

    let r = http1_client().get(&proxy.url("web", "/h1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.echo().path(), "/h1");

    let r = http2_client().get(&proxy.url("web", "/h2")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.echo().path(), "/h2");
    assert_eq!(raw.connections(), 0, "HTTP must not reach the tcp_backend");

    // A TLS ClientHello-like first byte is not HTTP: opaque TCP to the tcp_backend.
    let mut stream = connect(addr).await;
    stream.write_all(b"\x16\x03\x01hello").await.expect("write");
    assert_eq!(
        read_n(&mut stream, 8, "the echo of the first bytes").await,
        b"\x16\x03\x01hello"
    );
    let more: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let (mut reader, mut writer) = stream.into_split();
    let to_send = more.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&to_send).await.expect("write more");
        writer.shutdown().await.expect("half-close");
    });
    let mut echoed = Vec::new();
    timeout(DEADLINE, reader.read_to_end(&mut echoed))
        .await
        .expect("the tunnel closed after the client's half-close")
        .expect("reading the echo");
    writing.await.expect("writer task");
    assert!(
        echoed == more,
        "100 kB through the opaque tunnel came back altered ({} bytes)",
        echoed.len()
    );
    assert_eq!(raw.connections(), 1);
    assert_eq!(
        backend.requests(),
        2,
        "the opaque connection must not reach HTTP routes"
    );
}

#[tokio::test]
async fn auto_listener_without_tcp_backend_closes_non_http_connections() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[
            // A long detect timeout: binary first bytes are decided at once, not after it.
            listener("web", "auto", "a", &["http: {detect_timeout: 10s}"]),
            listener("quick", "auto", "a", &["http: {detect_timeout: 200ms}"]),
        ],
        &[backend.yaml()],
    ))
    .await;
    let addr = proxy.addr("web");

    let mut stream = connect(addr).await;
    let start = Instant::now();
    stream.write_all(b"\x16\x03\x01hello").await.expect("write");
    let (received, ending, elapsed) = read_to_close(&mut stream, 5 * SECOND, start).await;
    assert_ne!(
        ending,
        Ending::Deadline,
        "the non-HTTP connection was left open"
    );
    assert!(
        received.is_empty(),
        "nothing should be answered to a non-HTTP client, got {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(elapsed < 5 * SECOND, "closed after {elapsed:?}");

    // A client that says nothing is opaque after detect_timeout, and so closed as well.
    let mut stream = connect(proxy.addr("quick")).await;
    let (received, ending, elapsed) = read_to_close(&mut stream, 5 * SECOND, Instant::now()).await;
    assert_ne!(ending, Ending::Deadline, "a silent client was never closed");
    assert!(received.is_empty(), "{received:?}");
    assert!(
        elapsed >= Duration::from_millis(190),
        "a silent client was closed after {elapsed:?}, before detect_timeout (200ms)"
    );

    // HTTP on the same port is unaffected.
    let r = http1_client().get(&proxy.url("web", "/still")).await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn tcp_listener_forwards_http_looking_bytes_opaquely() {
    let backend = TestBackend::echo("a").await;
    let raw = TcpPeer::start(None).await;
    let proxy = Proxy::start(config(
        &[tcp_listener("tcp", "raw")],
        &[raw.yaml("raw"), backend.yaml()],
    ))
    .await;
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut stream = connect(proxy.addr("tcp")).await;
    stream.write_all(request).await.expect("write");
    assert_eq!(
        read_n(&mut stream, request.len(), "the echoed request").await,
        request,
        "a tcp listener must not interpret HTTP"
    );
    stream.shutdown().await.expect("half-close");
    let (rest, ending, _) = read_to_close(&mut stream, DEADLINE, Instant::now()).await;
    assert_eq!(
        ending,
        Ending::Eof,
        "the half-close should travel through and back"
    );
    assert!(rest.is_empty());
    assert_eq!(raw.connections(), 1);
    assert_eq!(backend.requests(), 0);

    // With the upstream gone, a connection is closed rather than left hanging.
    drop(raw);
    let mut stream = connect(proxy.addr("tcp")).await;
    let (_, ending, elapsed) = read_to_close(&mut stream, 5 * SECOND, Instant::now()).await;
    assert_ne!(
        ending,
        Ending::Deadline,
        "an opaque connection to a refused upstream stayed open ({elapsed:?})"
    );
}

#[tokio::test]
async fn server_speaks_first_after_detect_timeout() {
    let backend = TestBackend::echo("a").await;
    let greeter = TcpPeer::start(Some(b"HELLO\n")).await;
    let proxy = Proxy::start(config(
        &[
            listener(
                "auto",
                "auto",
                "a",
                &["tcp_backend: greeter", "http: {detect_timeout: 200ms}"],
            ),
            tcp_listener("tcp", "greeter"),
        ],
        &[backend.yaml(), greeter.yaml("greeter")],
    ))
    .await;

    // On `auto` the client says nothing: after detect_timeout it is opaque TCP, and the
    // backend's greeting reaches it.
    let start = Instant::now();
    let mut stream = connect(proxy.addr("auto")).await;
    let greeting = read_n(&mut stream, 6, "the greeting via the auto listener").await;
    let elapsed = start.elapsed();
    assert_eq!(greeting, b"HELLO\n");
    assert!(
        elapsed >= Duration::from_millis(190),
        "the greeting came after {elapsed:?}, before detect_timeout (200ms) passed"
    );
    assert!(elapsed < 3 * SECOND, "the greeting took {elapsed:?}");
    stream.write_all(b"QUIT\n").await.expect("write");
    assert_eq!(
        read_n(&mut stream, 5, "the echo after the greeting").await,
        b"QUIT\n"
    );

    // On `tcp` there is nothing to detect.
    let mut stream = connect(proxy.addr("tcp")).await;
    assert_eq!(
        read_n(&mut stream, 6, "the greeting via the tcp listener").await,
        b"HELLO\n"
    );
    assert_eq!(greeter.connections(), 2);
    assert_eq!(backend.requests(), 0);
}

// --- 4. gRPC -------------------------------------------------------------------------------------

const GRPC_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc_peer.py");

/// The Python gRPC server of `grpc_peer.py`, killed on drop.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl GrpcServer {
    async fn start() -> GrpcServer {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(GRPC_PEER)
            .arg("server")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawning the gRPC server");
        let listening = wait_for_value("the gRPC server to listen", DEADLINE, async || {
            if read_lossy(&out).contains("LISTENING") {
                return Some(Ok(()));
            }
            match child.try_wait() {
                Ok(Some(status)) => Some(Err(status)),
                _ => None,
            }
        })
        .await;
        if let Err(status) = listening {
            panic!(
                "the gRPC server exited ({status}) before listening:\n{}",
                read_lossy(&err)
            );
        }
        GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether python3 can be run at all (the only reason to skip the gRPC test).
fn python3_present() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

async fn grpc_client(target: SocketAddr) -> Value {
    let finished = run_process(
        Command::new("python3")
            .arg(GRPC_PEER)
            .arg("client")
            .arg(target.to_string()),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        finished.status.success(),
        "the gRPC client via {target} failed ({}):\n{}{}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    serde_json::from_str(finished.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the gRPC client's output is not JSON ({e}):\n{}{}",
            finished.stdout, finished.stderr
        )
    })
}

fn assert_grpc_result(via: &str, r: &Value) {
    let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
    let ctx = format!("gRPC via the {via} listener; client saw:\n{pretty}");
    for section in [
        "unary",
        "unary_big",
        "server_stream",
        "bidi",
        "fail",
        "stream_then_fail",
    ] {
        assert!(r[section]["error"].is_null(), "{section} raised; {ctx}");
    }
    let trailer = |section: &str| r[section]["trailers"]["x-trailer"].clone();

    assert_eq!(r["unary"]["reply"], "echo:hello", "{ctx}");
    assert_eq!(r["unary"]["code"], "OK", "{ctx}");
    assert_eq!(trailer("unary"), "yes", "unary trailing metadata; {ctx}");

    assert_eq!(r["unary_big"]["intact"], true, "a 1 MiB message; {ctx}");

    assert_eq!(r["server_stream"]["count"], 100, "{ctx}");
    assert_eq!(r["server_stream"]["in_order"], true, "{ctx}");
    assert_eq!(r["server_stream"]["code"], "OK", "{ctx}");
    assert_eq!(trailer("server_stream"), "yes", "{ctx}");

    assert_eq!(
        r["bidi"]["replies_in_lockstep"], true,
        "ping-pong bidi; {ctx}"
    );
    assert_eq!(r["bidi"]["code"], "OK", "{ctx}");
    assert_eq!(trailer("bidi"), "yes", "{ctx}");

    assert_eq!(r["fail"]["code"], "NOT_FOUND", "{ctx}");
    assert_eq!(r["fail"]["details"], "nope", "{ctx}");
    assert_eq!(trailer("fail"), "yes", "{ctx}");

    let parts: Vec<String> = (0..5).map(|i| format!("part-{i}")).collect();
    assert_eq!(
        r["stream_then_fail"]["received"],
        serde_json::json!(parts),
        "{ctx}"
    );
    assert_eq!(r["stream_then_fail"]["code"], "RESOURCE_EXHAUSTED", "{ctx}");
    assert_eq!(r["stream_then_fail"]["details"], "enough", "{ctx}");
    assert_eq!(trailer("stream_then_fail"), "yes", "{ctx}");
}

#[tokio::test]
async fn grpc_passes_through_with_a_real_client_and_server() {
    if !python3_present() {
        eprintln!("SKIPPED grpc_passes_through_with_a_real_client_and_server: no python3");
        return;
    }
    let import = Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .expect("running python3");
    assert!(
        import.status.success(),
        "the Python package grpcio is missing: run scripts/test (it installs it) or \
         `python3 -m pip install grpcio`\n{}",
        String::from_utf8_lossy(&import.stderr)
    );

    let server = GrpcServer::start().await;
    let proxy = Proxy::start(config(
        &[
            listener("h2", "http2", "grpc", &[]),
            listener("auto", "auto", "grpc", &[]),
        ],
        &[format!(
            r#"{{name: "grpc", endpoints: ["{}"], protocol: http2}}"#,
            server.addr
        )],
    ))
    .await;

    let (via_h2, via_auto) = tokio::join!(
        grpc_client(proxy.addr("h2")),
        grpc_client(proxy.addr("auto"))
    );
    assert_grpc_result("http2", &via_h2);
    assert_grpc_result("auto", &via_auto);
    // Sanity: the answers came through the proxy.
    let answered = proxy
        .metric("tern_requests_total", &[("route", "all")])
        .await
        .unwrap_or(0.0);
    assert!(
        answered >= 12.0,
        "only {answered} requests counted by the proxy"
    );
}

// --- 5. trailers over HTTP/2 ---------------------------------------------------------------------

/// An HTTP/1.1 client that says `TE: trailers` gets an upstream's trailers at the end of a
/// chunked answer; one that does not gets the same body without them (RFC 9110 §6.5.1). Its
/// own chunked trailers reach the upstream.
#[tokio::test]
async fn http1_clients_get_trailers_when_they_take_them() {
    let h2 = TestBackend::builder("h2")
        .http2()
        .response_trailers(&[("grpc-status", "0")])
        .start()
        .await;
    let proxy = Proxy::start(config(&[listener("web", "http1", "h2", &[])], &[h2.yaml()])).await;
    let client = http1_client();

    let r = client
        .send(
            "GET",
            &proxy.url("web", "/t"),
            &[("te", "trailers")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.trailer("grpc-status"),
        Some("0"),
        "trailers: {:?}",
        r.trailers
    );
    assert!(r.header("grpc-status").is_none());

    let r = client.get(&proxy.url("web", "/plain")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.trailers.is_none() || r.trailer("grpc-status").is_none(),
        "{:?}",
        r.trailers
    );
    assert_eq!(r.echo().path(), "/plain", "the body is whole");

    // A chunked upload with trailers, written raw (hyper's client sends request trailers only
    // when a `Trailer` field declares them).
    let raw = raw_http1(
        proxy.addr("web"),
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-request-sum\r\n\r\n\
         5\r\nhello\r\n0\r\nx-request-sum: 42\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), Some(200), "{raw:.300}");
    let echo = &raw[raw.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    assert!(
        echo.contains("x-request-sum") && echo.contains("42"),
        "the upstream saw the trailer: {echo:.600}"
    );
}

#[tokio::test]
async fn h2_trailers_pass_end_to_end() {
    let small = TestBackend::builder("small")
        .http2()
        .response_trailers(&[("grpc-status", "0"), ("x-checksum", "abc")])
        .start()
        .await;
    let big = TestBackend::builder("big")
        .http2()
        .streaming_body(8 << 20)
        .response_trailers(&[("x-total", "8388608")])
        .start()
        .await;
    // An HTTP/1.1 upstream sends trailers (chunked) when asked with `TE: trailers` and when
    // its response declares them in `Trailer`.
    let legacy = TestBackend::builder("legacy")
        .header("trailer", "x-h1-trailer")
        .response_trailers(&[("x-h1-trailer", "yes")])
        .start()
        .await;
    let proxy = Proxy::start(format!(
        "\
listeners:
  - name: web
    address: {ANY_PORT}
    {AUTO_HTTP}
    routes:
      - name: big
        matches: [{{path: {{value: /big}}}}]
        backends: [{{name: big}}]
      - name: legacy
        matches: [{{path: {{value: /legacy}}}}]
        backends: [{{name: legacy}}]
      - name: small
        backends: [{{name: small}}]
backends:
  - {}
  - {}
  - {}
",
        small.yaml(),
        big.yaml(),
        legacy.yaml()
    ))
    .await;
    let client = http2_client();

    let r = client.get(&proxy.url("web", "/small")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.trailer("grpc-status"),
        Some("0"),
        "trailers: {:?}",
        r.trailers
    );
    assert_eq!(
        r.trailer("x-checksum"),
        Some("abc"),
        "trailers: {:?}",
        r.trailers
    );
    assert!(
        r.header("x-checksum").is_none(),
        "a trailer must not turn into a header"
    );

    // Trailers after a large, flow-controlled body.
    let response = client
        .request(
            Request::get(proxy.url("web", "/big"))
                .body(body::empty())
                .expect("request"),
        )
        .await
        .expect("response head");
    assert_eq!(response.status(), 200);
    let drained = body::drain(response.into_body()).await.expect("body");
    assert_eq!(drained.bytes, 8 << 20);
    assert!(drained.matches_pattern);
    let trailers = drained.trailers.expect("trailers after an 8 MiB body");
    assert_eq!(
        trailers.get("x-total").map(|v| v.as_bytes()),
        Some(&b"8388608"[..])
    );

    // HTTP/1.1 chunked trailers become HTTP/2 trailers.
    let r = client
        .send(
            "GET",
            &proxy.url("web", "/legacy"),
            &[("te", "trailers")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echo().header("te"),
        Some("trailers"),
        "TE: trailers goes upstream"
    );
    assert_eq!(
        r.trailer("x-h1-trailer"),
        Some("yes"),
        "trailers from an HTTP/1.1 upstream: {:?}",
        r.trailers
    );

    // Request trailers reach the upstream too.
    let mut sent = HeaderMap::new();
    sent.insert("x-request-sum", "42".parse().expect("value"));
    let request = Request::post(proxy.url("web", "/small"))
        .body(body::pattern_with_trailers(100_000, sent))
        .expect("request");
    let r = TestResponse::collect(client.request(request).await.expect("response"))
        .await
        .expect("body");
    let echo = r.echo();
    assert_eq!(echo.body_len(), 100_000);
    assert_eq!(
        echo.trailer("x-request-sum"),
        Some("42"),
        "request trailers upstream"
    );
}

// --- 6. WebSocket / Upgrade ----------------------------------------------------------------------

#[tokio::test]
async fn websocket_upgrade_tunnels_bytes_both_ways() {
    let backend = TestBackend::builder("ws").websocket_echo().start().await;
    let proxy = Proxy::start(config(
        &[listener("web", "auto", "ws", &[])],
        &[backend.yaml()],
    ))
    .await;

    let mut stream = connect(proxy.addr("web")).await;
    stream
        .write_all(WEBSOCKET_UPGRADE)
        .await
        .expect("write the upgrade request");
    let head = read_head(&mut stream).await;
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.starts_with("http/1.1 101"),
        "expected 101, got:\n{head}"
    );
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(lower.contains("\r\nx-backend: ws\r\n"), "{head}");

    // Small frames, ping-pong.
    for i in 0..5u8 {
        let frame = [0x81, 4, b'p', b'i', b'n', i];
        stream.write_all(&frame).await.expect("write a frame");
        assert_eq!(
            read_n(&mut stream, frame.len(), "a frame's echo").await,
            frame
        );
    }

    // 2 MB written while reading: both directions at once, then a half-close that travels
    // through the tunnel to the backend and back.
    let blob: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut reader, mut writer) = stream.into_split();
    let to_send = blob.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&to_send).await.expect("write the blob");
        writer.shutdown().await.expect("half-close");
    });
    let mut echoed = Vec::new();
    timeout(DEADLINE, reader.read_to_end(&mut echoed))
        .await
        .expect("the tunnel closed after the client's half-close")
        .expect("reading the echo");
    writing.await.expect("writer task");
    assert_eq!(
        echoed.len(),
        blob.len(),
        "bytes echoed through the upgraded connection"
    );
    assert!(echoed == blob, "the echoed bytes differ from the sent ones");
    assert_eq!(backend.requests(), 1);
}

/// An upstream that speaks first after its `101`, in the same write as the head: those bytes
/// arrive with the head and must reach the client first, before the tunnel copies the rest.
/// (The peer writes its `101` and greeting as it accepts, then echoes: the upgrade request comes
/// back through the tunnel too.)
#[tokio::test]
async fn bytes_sent_with_the_101_reach_the_client_first() {
    let peer = TcpPeer::start(Some(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: hello\r\n\r\nHELLO",
    ))
    .await;
    let proxy = Proxy::start(config(
        &[listener("web", "http1", "raw", &[])],
        &[peer.yaml("raw")],
    ))
    .await;
    let mut stream = connect(proxy.addr("web")).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: hello\r\n\r\n")
        .await
        .expect("write the upgrade request");
    let head = read_head(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "expected 101, got:\n{head}"
    );
    assert_eq!(
        read_n(&mut stream, 5, "the upstream's first bytes").await,
        b"HELLO"
    );
    // The echo of the request the proxy sent upstream, then of what the client sends now.
    let echoed = read_head(&mut stream).await;
    assert!(echoed.starts_with("GET / HTTP/1.1\r\n"), "{echoed}");
    stream.write_all(b"ping").await.expect("write");
    assert_eq!(read_n(&mut stream, 4, "the echo").await, b"ping");
}

// --- 7. large bodies without buffering -----------------------------------------------------------

const HUNDRED_MB: u64 = 100 << 20;

/// The proxy's peak resident set (`VmHWM`), in bytes.
fn peak_rss(proxy: &Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid()))
        .expect("reading the proxy's /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line");
    kb * 1024
}

/// Uploads and downloads 100 MB at once through a listener of `protocol` (not `auto`: this
/// test's client shares its thread with 100 MB of pattern checking, and on a loaded machine
/// may connect well before it writes, which `auto` rightly takes for a server-speaks-first
/// client).
async fn hundred_mb_each_way(client: tern_e2e::TestClient, protocol: &str, version: &str) {
    // Far above the ~4 s a passing run takes on 2 cores, for slow loaded machines.
    let client = client.timeout(Duration::from_secs(90));
    let sink = TestBackend::echo("sink").await;
    let source = TestBackend::builder("source")
        .streaming_body(HUNDRED_MB)
        .start()
        .await;
    let proxy = Proxy::start(format!(
        "\
listeners:
  - name: web
    address: {ANY_PORT}
    protocol: {protocol}
    routes:
      - name: download
        matches: [{{path: {{value: /download}}}}]
        backends: [{{name: source}}]
      - name: upload
        backends: [{{name: sink}}]
backends:
  - {}
  - {}
",
        sink.yaml(),
        source.yaml()
    ))
    .await;
    // Warm up both routes (pools, buffers) before the baseline.
    let small = client
        .send("POST", &proxy.url("web", "/up"), &[], vec![1u8; 100_000])
        .await;
    assert_eq!(small.echo().body_len(), 100_000);
    let before = peak_rss(&proxy);

    let upload = async {
        let request = Request::post(proxy.url("web", "/upload"))
            .body(body::pattern(HUNDRED_MB))
            .expect("request");
        let response = client.request(request).await.expect("upload response head");
        let response = TestResponse::collect(response)
            .await
            .expect("upload response body");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(
            response.echo().body_len(),
            HUNDRED_MB,
            "bytes the upstream received"
        );
    };
    let download = async {
        let request = Request::get(proxy.url("web", "/download"))
            .body(body::empty())
            .expect("request");
        let response = client
            .request(request)
            .await
            .expect("download response head");
        assert_eq!(response.status(), 200);
        let drained = body::drain(response.into_body())
            .await
            .expect("download body");
        assert_eq!(drained.bytes, HUNDRED_MB);
        assert!(drained.matches_pattern, "the download arrived altered");
    };
    timeout(Duration::from_secs(120), async {
        tokio::join!(upload, download)
    })
    .await
    .expect("100 MB each way within 120 s");

    let after = peak_rss(&proxy);
    let growth = after.saturating_sub(before);
    eprintln!(
        "{version}: proxy peak RSS {} kB before, {} kB after 100 MB each way",
        before >> 10,
        after >> 10
    );
    assert!(
        growth < 30 << 20,
        "{version}: the proxy's peak RSS grew by {} MB ({} → {} MB) moving 100 MB each way: \
         bodies are being buffered",
        growth >> 20,
        before >> 20,
        after >> 20
    );
}

#[tokio::test]
async fn hundred_mb_each_way_over_http1_without_buffering() {
    hundred_mb_each_way(http1_client(), "http1", "HTTP/1.1").await;
}

#[tokio::test]
async fn hundred_mb_each_way_over_http2_without_buffering() {
    hundred_mb_each_way(http2_client(), "http2", "HTTP/2").await;
}

// --- 8. slow request heads -----------------------------------------------------------------------

/// Sends `parts` (each after `gap`) and never finishes the head; returns how the proxy ended the
/// connection and when, counted from the first byte.
async fn stall_head(
    addr: SocketAddr,
    parts: &[&[u8]],
    gap: Duration,
) -> (Vec<u8>, Ending, Duration) {
    let mut stream = connect(addr).await;
    let start = Instant::now();
    let mut received = Vec::new();
    for part in parts {
        if stream.write_all(part).await.is_err() {
            // Closed by the proxy while we were still trickling: see what it said.
            break;
        }
        let mut buf = [0u8; 1024];
        match timeout(gap, stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) => return (received, Ending::Eof, start.elapsed()),
            Ok(Err(_)) => return (received, Ending::Reset, start.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    let (rest, ending, elapsed) = read_to_close(&mut stream, 5 * SECOND, start).await;
    received.extend(rest);
    (received, ending, elapsed)
}

fn assert_cut_off(what: &str, (received, ending, elapsed): (Vec<u8>, Ending, Duration)) {
    let text = String::from_utf8_lossy(&received);
    assert_ne!(
        ending,
        Ending::Deadline,
        "{what}: the connection stayed open ({elapsed:?})"
    );
    assert!(
        received.is_empty() || raw_status(&text) == Some(408),
        "{what}: expected the connection closed or a 408, got {text:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed <= 2 * SECOND,
        "{what}: closed after {elapsed:?}, want about header_read_timeout (500ms)"
    );
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_after_header_read_timeout() {
    let backend = TestBackend::echo("a").await;
    let timeout_line = "http: {header_read_timeout: 500ms}";
    let proxy = Proxy::start(config(
        &[
            listener("auto", "auto", "a", &[timeout_line]),
            listener("h1", "http1", "a", &[timeout_line]),
        ],
        &[backend.yaml()],
    ))
    .await;

    let partial: &[&[u8]] = &[b"GET / HTTP/1.1\r\nHost: a\r\n"];
    // A trickle of header bytes must not reset the clock (slowloris).
    let trickle: Vec<&[u8]> = std::iter::once(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..])
        .chain(std::iter::repeat_n(&b"X-Slow: 1\r\n"[..], 30))
        .collect();
    let gap = Duration::from_millis(100);
    let (stalled_auto, stalled_h1, trickled_auto, trickled_h1) = tokio::join!(
        stall_head(proxy.addr("auto"), partial, gap),
        stall_head(proxy.addr("h1"), partial, gap),
        stall_head(proxy.addr("auto"), &trickle, gap),
        stall_head(proxy.addr("h1"), &trickle, gap),
    );
    assert_cut_off("stalled head on auto", stalled_auto);
    assert_cut_off("stalled head on http1", stalled_h1);
    assert_cut_off("trickled head on auto", trickled_auto);
    assert_cut_off("trickled head on http1", trickled_h1);

    // A normal request on another connection is served.
    let response = raw_http1(proxy.addr("auto"), "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(raw_status(&response), Some(200), "{response}");
    assert_eq!(
        backend.requests(),
        1,
        "no stalled request may reach the backend"
    );
}

/// `header_read_timeout` is a listener setting, not an HTTP/1 one (unlike `max_headers`): an
/// HTTP/2 client that starts a request head (HEADERS without END_HEADERS) and never finishes
/// it must be cut off too, or one connection per attacker stays open forever.
#[tokio::test]
async fn slow_h2_request_head_is_cut_off_after_header_read_timeout() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[listener(
            "h2",
            "http2",
            "a",
            &["http: {header_read_timeout: 500ms}"],
        )],
        &[backend.yaml()],
    ))
    .await;
    // Preface, empty SETTINGS, then HEADERS on stream 1 (GET http /) with END_STREAM but no
    // END_HEADERS: the head is incomplete until a CONTINUATION that never comes.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 0, 3, 0x1, 0x1, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    let mut stream = connect(proxy.addr("h2")).await;
    let start = Instant::now();
    stream.write_all(&bytes).await.expect("write");
    let (_, ending, elapsed) = read_to_close(&mut stream, 3 * SECOND, start).await;
    assert_ne!(
        ending,
        Ending::Deadline,
        "an HTTP/2 request head left unfinished kept its connection open for {elapsed:?} \
         (header_read_timeout: 500ms)"
    );
    assert!(elapsed <= 2 * SECOND, "closed only after {elapsed:?}");
    assert_eq!(backend.requests(), 0);
}

// --- 9. header limits ----------------------------------------------------------------------------

/// A request head of about `size` bytes (padding in one header), complete.
fn head_of_size(size: usize) -> String {
    let base = "GET /big HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n";
    format!(
        "GET /big HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(size.saturating_sub(base.len()))
    )
}

fn head_with_headers(count: usize) -> String {
    // `Host` is one of the fields.
    let mut head = String::from("GET /many HTTP/1.1\r\nHost: a\r\n");
    for i in 1..count {
        head.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let backend = TestBackend::echo("a").await;
    let limits = "http: {max_header_bytes: 16384, max_headers: 20}";
    let proxy = Proxy::start(config(
        &[
            listener("auto", "auto", "a", &[limits]),
            listener("h1", "http1", "a", &[limits]),
        ],
        &[backend.yaml()],
    ))
    .await;

    for name in ["auto", "h1"] {
        let addr = proxy.addr(name);
        let ok = raw_http1(addr, head_of_size(12 * 1024)).await;
        assert_eq!(
            raw_status(&ok),
            Some(200),
            "{name}: a 12 KiB head is allowed: {ok:.200}"
        );
        let big = raw_http1(addr, head_of_size(24 * 1024)).await;
        assert_eq!(
            raw_status(&big),
            Some(431),
            "{name}: a 24 KiB head: {big:.300}"
        );

        let ok = raw_http1(addr, head_with_headers(20)).await;
        assert_eq!(
            raw_status(&ok),
            Some(200),
            "{name}: 20 header fields are allowed: {ok:.200}"
        );
        let many = raw_http1(addr, head_with_headers(21)).await;
        assert_eq!(
            raw_status(&many),
            Some(431),
            "{name}: 21 header fields: {many:.300}"
        );
    }
    assert_eq!(
        backend.requests(),
        4,
        "only the heads within limits reach the backend"
    );
}

/// Heads that cannot be read one way only get a `400` and a closed connection, and reach no
/// backend: a malformed request line or field, and the framings a smuggler relies on
/// (`Content-Length` with `Transfer-Encoding`, two lengths that disagree, a coding that does not
/// end in `chunked`, chunked HTTP/1.0). A good request on the same listener still works.
#[tokio::test]
async fn malformed_http1_heads_get_400_and_reach_no_backend() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[
            listener("auto", "auto", "a", &[]),
            listener("h1", "http1", "a", &[]),
        ],
        &[backend.yaml()],
    ))
    .await;
    let bad: [&str; 7] = [
        "GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for name in ["auto", "h1"] {
        let addr = proxy.addr(name);
        for request in bad {
            let mut stream = connect(addr).await;
            stream.write_all(request.as_bytes()).await.expect("write");
            let (got, ending, _) = read_to_close(&mut stream, DEADLINE, Instant::now()).await;
            let got = String::from_utf8_lossy(&got);
            assert_eq!(
                raw_status(&got),
                Some(400),
                "{name}: {request:?} got {got:?}"
            );
            assert_ne!(
                ending,
                Ending::Deadline,
                "{name}: {request:?}: the connection stays open"
            );
        }
        let ok = raw_http1(addr, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(raw_status(&ok), Some(200), "{name}: {ok:.200}");
    }
    assert_eq!(
        backend.requests(),
        2,
        "only the good requests reach the backend"
    );
}

/// HTTP/1.0 clients: without `Connection: keep-alive` the answer says `close` and the
/// connection ends; with it, the connection carries a second request. An answer of unknown
/// length to HTTP/1.0 runs to the close (HTTP/1.0 has no chunks).
#[tokio::test]
async fn http10_clients_keep_alive_only_when_they_ask() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[listener("web", "http1", "a", &[])],
        &[backend.yaml()],
    ))
    .await;
    let addr = proxy.addr("web");

    let mut once = connect(addr).await;
    once.write_all(b"GET /once HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let (got, ending, _) = read_to_close(&mut once, DEADLINE, Instant::now()).await;
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(got.starts_with("http/1.0 200"), "{got:.300}");
    assert!(got.contains("connection: close\r\n"), "{got:.300}");
    assert!(
        got.contains("date: "),
        "every answer carries a date: {got:.300}"
    );
    assert_eq!(ending, Ending::Eof);

    let mut kept = connect(addr).await;
    for path in ["/one", "/two"] {
        let request = format!("GET {path} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
        kept.write_all(request.as_bytes()).await.expect("write");
        let head = read_head(&mut kept).await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(head.contains("connection: keep-alive\r\n"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("a length to keep the connection: {head}"));
        let body = read_n(&mut kept, length, "the echo").await;
        assert!(String::from_utf8_lossy(&body).contains(path), "{path}");
    }
}

/// A client that gives up before its answer (closes its connection) cancels the exchange: the
/// request stops counting as in flight and the proxy lets go of the connection, though the
/// backend never answers.
#[tokio::test]
async fn a_client_leaving_before_its_answer_cancels_the_exchange() {
    let backend = TestBackend::builder("a").hang().start().await;
    let proxy = Proxy::start(config(
        &[listener("web", "http1", "a", &[])],
        &[backend.yaml()],
    ))
    .await;
    let in_flight = async || {
        proxy
            .metric("tern_requests_in_flight", &[("listener", "web")])
            .await
            .unwrap_or(0.0)
    };
    {
        let mut stream = connect(proxy.addr("web")).await;
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        wait_for("the request to reach the backend", DEADLINE, async || {
            backend.requests() == 1
        })
        .await;
        assert_eq!(in_flight().await, 1.0);
    }
    wait_for("the exchange to be cancelled", DEADLINE, async || {
        in_flight().await == 0.0
    })
    .await;
    wait_for("the connection to be let go", DEADLINE, async || {
        proxy
            .metric("tern_connections_open", &[("listener", "web")])
            .await
            == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn oversized_h2_header_list_is_refused() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[listener(
            "web",
            "http2",
            "a",
            &["http: {max_header_bytes: 16384}"],
        )],
        &[backend.yaml()],
    ))
    .await;
    let client = http2_client();
    let ok = client
        .send(
            "GET",
            &proxy.url("web", "/"),
            &[("x-pad", &"p".repeat(8 * 1024))],
            Bytes::new(),
        )
        .await;
    assert_eq!(ok.status, 200);
    let padding = "p".repeat(24 * 1024);
    let result = client
        .try_send(
            "GET",
            &proxy.url("web", "/"),
            &[("x-pad", padding.as_str())],
            Bytes::new(),
        )
        .await;
    match result {
        Ok(r) => assert_eq!(r.status, 431, "a 24 KiB header list over HTTP/2"),
        Err(e) => {
            let text = format!("{e:#}").to_ascii_lowercase();
            assert!(
                text.contains("refused") || text.contains("reset") || text.contains("stream"),
                "expected a stream reset, got: {e:#}"
            );
        }
    }
    assert_eq!(
        backend.requests(),
        1,
        "the oversized request must not reach the backend"
    );
}

// --- 10. curl --------------------------------------------------------------------------------------

#[tokio::test]
async fn curl_gets_200_over_http1_and_h2c() {
    let backend = TestBackend::echo("a").await;
    let proxy = Proxy::start(config(
        &[listener("web", "auto", "a", &[])],
        &[backend.yaml()],
    ))
    .await;
    let url = proxy.url("web", "/curl");
    let run = async |extra: &[&str]| {
        let finished = run_process(
            Command::new("curl")
                .args(["-s", "-S", "--max-time", "10", "-o", "/dev/null"])
                .args(["-w", "%{http_code} %{http_version}"])
                .args(extra)
                .arg(&url),
            Duration::from_secs(20),
        )
        .await;
        assert!(
            finished.status.success(),
            "curl {extra:?} failed ({}): {}",
            finished.status,
            finished.stderr
        );
        finished.stdout
    };
    assert_eq!(run(&["--http1.1"]).await, "200 1.1");
    assert_eq!(run(&["--http2-prior-knowledge"]).await, "200 2");
    assert_eq!(backend.requests(), 2);
}
