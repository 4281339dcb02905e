//! Test clients: pooled HTTP/1.1 and h2c clients as real callers use them, collected
//! responses with echo helpers, raw HTTP/1 bytes for malformed requests, and a bare `h2`
//! connection for frame-level tests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http::header::HOST;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout};

use crate::backend::BACKEND_HEADER;
use crate::body::{self, Body, BoxError};

/// How long a request may take, head and body, before the test fails: far above anything
/// a passing test needs, so hitting it means a hang, never slowness.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`raw_http1`] waits for a response.
pub const RAW_DEADLINE: Duration = Duration::from_secs(5);

/// An HTTP/1.1 client with keep-alive and a connection pool (hyper-util's legacy client).
pub fn http1_client() -> TestClient {
    TestClient::new(Version::HTTP_11)
}

/// An HTTP/2 client with prior knowledge (h2c), one multiplexed connection per authority.
pub fn http2_client() -> TestClient {
    TestClient::new(Version::HTTP_2)
}

/// A client for tests. Every call fails the test after [`DEFAULT_REQUEST_TIMEOUT`] (see
/// [`TestClient::timeout`]) so a hung proxy fails fast instead of hanging the suite.
pub struct TestClient {
    version: Version,
    pooled: bool,
    target: Option<SocketAddr>,
    timeout: Duration,
    inner: Inner,
}

enum Inner {
    Legacy(Box<Client<HttpConnector, Body>>),
    /// hyper-util's connector cannot be replaced without `tower-service`, so connections to
    /// a fixed address use hyper's connection API directly.
    Pinned {
        target: SocketAddr,
        /// The one shared HTTP/2 connection. The lock is held while connecting so that
        /// concurrent first requests share one connection, as a real h2 client does.
        h2: Mutex<Option<hyper::client::conn::http2::SendRequest<Body>>>,
    },
}

impl TestClient {
    fn new(version: Version) -> Self {
        TestClient {
            version,
            pooled: true,
            target: None,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            inner: build_inner(version, true, None),
        }
    }

    fn rebuild(&mut self) {
        self.inner = build_inner(self.version, self.pooled, self.target);
    }

    /// Connects to `addr` whatever the URL's host says, which then only sets `Host` /
    /// `:authority`: hostname routing tests send `http://api.example.com/` to the proxy.
    /// HTTP/1.1 then opens one connection per request; HTTP/2 shares one connection.
    pub fn connect_to(mut self, addr: SocketAddr) -> Self {
        self.target = Some(addr);
        self.rebuild();
        self
    }

    /// No idle connections are kept: every HTTP/1.1 request opens a new connection.
    pub fn no_pool(mut self) -> Self {
        self.pooled = false;
        self.rebuild();
        self
    }

    /// Replaces [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET url`; panics on transport errors.
    pub async fn get(&self, url: &str) -> TestResponse {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    /// Sends a request and collects the response; panics on transport errors (use
    /// [`TestClient::try_send`] where an error is the expected outcome).
    pub async fn send(
        &self,
        method: impl AsRef<str>,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let method = method.as_ref().to_owned();
        self.try_send(&method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url} ({:?}) failed: {e:#}", self.version))
    }

    /// Like [`TestClient::send`], returning transport errors (reset, refused, closed).
    pub async fn try_send(
        &self,
        method: impl AsRef<str>,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<TestResponse> {
        let req = build_request(method.as_ref(), url, headers, body::full(body))?;
        let limit = self.timeout;
        timeout(limit, async {
            let response = self.request(req).await?;
            TestResponse::collect(response).await
        })
        .await
        .map_err(|_| anyhow!("no complete response within {limit:?}"))?
    }

    /// Sends any request (streaming bodies: [`body::pattern`], [`body::channel`]) and returns
    /// the response as soon as its head arrives, body unread. Only the head is under the
    /// timeout; read the body with [`TestResponse::collect`] or [`body::drain`].
    pub async fn request(&self, mut req: Request<Body>) -> anyhow::Result<Response<Incoming>> {
        let limit = self.timeout;
        let version = self.version;
        // An HTTP/1 request keeps its version, so a test can send HTTP/1.0.
        if version == Version::HTTP_2 {
            *req.version_mut() = version;
        }
        let fut = async {
            match &self.inner {
                Inner::Legacy(client) => Ok(client.request(req).await?),
                Inner::Pinned { target, h2 } => {
                    if version == Version::HTTP_2 {
                        send_pinned_h2(*target, h2, req).await
                    } else {
                        send_pinned_h1(*target, req).await
                    }
                }
            }
        };
        timeout(limit, fut)
            .await
            .map_err(|_| anyhow!("no response head within {limit:?}"))?
    }
}

fn build_inner(version: Version, pooled: bool, target: Option<SocketAddr>) -> Inner {
    if let Some(target) = target {
        return Inner::Pinned {
            target,
            h2: Mutex::new(None),
        };
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new());
    if !pooled {
        builder.pool_max_idle_per_host(0);
    }
    if version == Version::HTTP_2 {
        builder.http2_only(true);
    }
    Inner::Legacy(Box::new(builder.build(connector)))
}

async fn send_pinned_h2(
    target: SocketAddr,
    slot: &Mutex<Option<hyper::client::conn::http2::SendRequest<Body>>>,
    req: Request<Body>,
) -> anyhow::Result<Response<Incoming>> {
    let mut sender = {
        let mut slot = slot.lock().await;
        match slot.as_ref() {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let stream = connect(target).await?;
                let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(TokioIo::new(stream))
                    .await
                    .context("HTTP/2 handshake")?;
                tokio::spawn(conn);
                *slot = Some(sender.clone());
                sender
            }
        }
    };
    sender.ready().await.context("HTTP/2 connection")?;
    Ok(sender.send_request(req).await?)
}

async fn send_pinned_h1(
    target: SocketAddr,
    mut req: Request<Body>,
) -> anyhow::Result<Response<Incoming>> {
    // hyper's connection API sends the URI as given: HTTP/1.1 wants the origin form plus a
    // `Host` header, which the URL's authority provides unless the test set one.
    if !req.headers().contains_key(HOST)
        && let Some(authority) = req.uri().authority()
    {
        let host = HeaderValue::try_from(authority.as_str()).context("Host from URL")?;
        req.headers_mut().insert(HOST, host);
    }
    let origin: Uri = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .context("origin-form URI")?;
    *req.uri_mut() = origin;
    let stream = connect(target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender.send_request(req).await?)
}

async fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Builds a request from the parts tests usually have.
pub fn build_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> anyhow::Result<Request<Body>> {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).context("method")?)
        .uri(url)
        .body(body)
        .context("request")?;
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::try_from(*name).with_context(|| format!("header name {name:?}"))?,
            HeaderValue::try_from(*value).with_context(|| format!("header value {value:?}"))?,
        );
    }
    Ok(req)
}

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl TestResponse {
    /// Reads a response's body to the end.
    pub async fn collect<B>(response: Response<B>) -> anyhow::Result<Self>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = response.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response body: {}", e.into()))?;
        let trailers = collected.trailers().cloned();
        Ok(TestResponse {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// The first value of a header, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The first value of a trailer.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// Which backend answered (its `x-backend` header); `None` for answers of the proxy itself.
    pub fn backend(&self) -> Option<&str> {
        self.header(BACKEND_HEADER)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status,
                self.text()
            )
        })
    }

    /// What an echo backend saw of the request; panics when the answer is not an echo (an
    /// error page of the proxy, say), showing what it was instead.
    pub fn echo(&self) -> Echo {
        let value = self.json();
        assert!(
            value.get("backend").is_some(),
            "not an echo backend's answer: status {}, body: {}",
            self.status,
            self.text()
        );
        Echo(value)
    }
}

/// The request as an echo backend received it (after the proxy's rewrites).
#[derive(Debug, Clone)]
pub struct Echo(pub Value);

impl Echo {
    fn str_field(&self, field: &str) -> &str {
        self.0[field].as_str().unwrap_or_default()
    }

    pub fn backend(&self) -> &str {
        self.str_field("backend")
    }

    pub fn method(&self) -> &str {
        self.str_field("method")
    }

    /// Path and query, exactly as received.
    pub fn path(&self) -> &str {
        self.str_field("path")
    }

    /// The request URI's authority: HTTP/2's `:authority`; usually `None` on HTTP/1.1, where
    /// the `host` header carries it.
    pub fn authority(&self) -> Option<&str> {
        self.0["authority"].as_str()
    }

    /// `"HTTP/1.1"` or `"HTTP/2.0"`: the version between proxy and backend.
    pub fn version(&self) -> &str {
        self.str_field("version")
    }

    pub fn body_len(&self) -> u64 {
        self.0["body_len"].as_u64().unwrap_or_default()
    }

    /// The first value of a request header (names are lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of a request header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        values(&self.0["headers"], name)
    }

    /// The first value of a request trailer.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        values(&self.0["trailers"], name).into_iter().next()
    }
}

fn values<'a>(map: &'a Value, name: &str) -> Vec<&'a str> {
    map[name.to_ascii_lowercase()]
        .as_array()
        .map(|vs| vs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Writes `request` as raw bytes on a new connection and returns what came back (lossy
/// UTF-8), once one whole response has arrived, the server closed, or [`RAW_DEADLINE`]
/// passed. For requests hyper's clients refuse to send: two `Host` headers, no `Host`,
/// bad framing. A response to `HEAD` looks incomplete: send `Connection: close` with it.
pub async fn raw_http1(addr: SocketAddr, request: impl AsRef<[u8]>) -> String {
    raw_exchange(addr, request.as_ref(), RAW_DEADLINE, true).await
}

/// Like [`raw_http1`] but reads until the server closes the connection (or `deadline`):
/// for pipelined requests, where every response counts.
pub async fn raw_http1_until_close(
    addr: SocketAddr,
    request: impl AsRef<[u8]>,
    deadline: Duration,
) -> String {
    raw_exchange(addr, request.as_ref(), deadline, false).await
}

/// The status code of a raw HTTP/1 response (`"HTTP/1.1 400 Bad Request..."` → 400).
pub fn raw_status(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    deadline: Duration,
    stop_after_one: bool,
) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("raw HTTP/1: connecting to {addr}: {e}"));
    stream
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("raw HTTP/1: writing to {addr}: {e}"));
    let until = Instant::now() + deadline;
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout_at(until, stream.read(&mut buf)).await;
        match read {
            // Deadline, EOF, or reset: the caller sees whatever arrived.
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
        if stop_after_one && response_complete(&received) {
            break;
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Whether `data` holds one whole HTTP/1 response (after any `100 Continue`), judged by its
/// framing: no body, `Content-Length`, or chunked. Close-delimited bodies are complete only
/// at EOF.
fn response_complete(data: &[u8]) -> bool {
    let mut rest = data;
    loop {
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
        let body = &rest[head_end + 4..];
        let status = raw_status(&head).unwrap_or(0);
        if status == 100 {
            rest = body;
            continue;
        }
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return true;
        }
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            // The last chunk is `0\r\n`, then optional trailer fields, then an empty line.
            let last = if body.starts_with(b"0\r\n") {
                Some(0)
            } else {
                find(body, b"\r\n0\r\n").map(|i| i + 2)
            };
            return last.is_some_and(|i| {
                let rest = &body[i + 3..];
                rest.starts_with(b"\r\n") || find(rest, b"\r\n\r\n").is_some()
            });
        }
        if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            return body.len() >= len;
        }
        return false;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A bare HTTP/2 connection (the `h2` crate) for what hyper hides: sending `RST_STREAM`,
/// watching flow control, many concurrent streams on one connection.
pub async fn h2_connect(addr: SocketAddr) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let stream = connect(addr).await?;
    let (client, conn) = h2::client::handshake(stream)
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        // The connection ends when the test drops the client, or with the error the test
        // provoked: nothing to report from here.
        let _ = conn.await;
    });
    Ok(client)
}
