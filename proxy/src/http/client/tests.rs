//! The client against scripted upstreams on loopback: each test server answers with exact
//! bytes, so every framing rule is seen as an upstream would send it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::config::Config;
use crate::error::ProxyError;
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::h1::chunk_size_line;
use crate::http::observe::Sinks;
use crate::snapshot::{self, BackendRt, Shared};

const DEADLINE: Duration = Duration::from_secs(10);

/// What the scripted upstream does after reading a request.
#[derive(Clone)]
enum Step {
    /// Writes these bytes (in pieces of `piece` bytes, to exercise partial reads) and waits
    /// for the next request on the same connection.
    Answer(&'static [u8], usize),
    /// Writes these bytes and closes the connection.
    AnswerClose(&'static [u8]),
    /// Closes the connection without answering.
    Close,
    /// Answers without reading the request body, and keeps the connection open.
    AnswerUnread(&'static [u8]),
}

/// A scripted upstream: connection `i` runs `script[i]` (the last script repeats), and every
/// request head it reads is sent on the channel. Returns the address and the count of
/// connections accepted.
async fn upstream(
    script: Vec<Vec<Step>>,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let i = count.fetch_add(1, Ordering::SeqCst);
            let steps = script.get(i).or(script.last()).cloned().unwrap_or_default();
            tokio::spawn(serve(stream, steps, tx.clone()));
        }
    });
    (addr, accepted, rx)
}

async fn serve(mut s: TcpStream, steps: Vec<Step>, seen: mpsc::UnboundedSender<String>) {
    s.set_nodelay(true).expect("nodelay");
    let mut pending = Vec::new();
    for step in steps {
        let unread = matches!(step, Step::AnswerUnread(_));
        let Some(request) = read_request(&mut s, &mut pending, !unread).await else {
            return;
        };
        let _ = seen.send(request);
        match step {
            Step::Answer(bytes, piece) => {
                for part in bytes.chunks(piece.max(1)) {
                    if s.write_all(part).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }
            Step::AnswerClose(bytes) => {
                let _ = s.write_all(bytes).await;
                return;
            }
            Step::Close => return,
            Step::AnswerUnread(bytes) => {
                let _ = s.write_all(bytes).await;
                // Keep the connection open, reading nothing more (the test's end drops it).
                std::future::pending::<()>().await;
            }
        }
    }
    // Script done: hold the connection until the client closes it.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

/// Reads one request head (and, with `body`, its `content-length` body) as text.
async fn read_request(s: &mut TcpStream, pending: &mut Vec<u8>, body: bool) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let want = end + 4 + if body { length } else { 0 };
            if pending.len() >= want {
                let text = String::from_utf8_lossy(&pending[..want]).into_owned();
                pending.drain(..want);
                return Some(text);
            }
        }
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn backend(addr: SocketAddr) -> Arc<BackendRt> {
    let yaml = format!(
        "listeners:
  - name: l
    address: 127.0.0.1:0
    protocol: http1
    routes:
      - name: all
        backends: [{{name: b}}]
backends:
  - name: b
    endpoints: [{addr}]
"
    );
    let config = Config::from_yaml(&yaml).expect("config");
    let snap = snapshot::compile(config, None, &Shared::new(), 1, 1, &Sinks::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = snap.listener("l").expect("listener");
    Arc::clone(&listener.backends[0])
}

fn request(method: Method, body: RequestBody) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = "/p?q=1".parse().expect("uri");
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("up"));
    req
}

async fn send(
    b: &BackendRt,
    req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ProxyError> {
    tokio::time::timeout(
        DEADLINE,
        crate::http::proxy::send(
            b,
            &b.endpoints[0],
            Box::new(req),
            false,
            std::time::Instant::now(),
        ),
    )
    .await
    .expect("the exchange ends")
    .map(|resp| *resp)
}

async fn get(b: &BackendRt) -> (Response<()>, Result<(Bytes, Option<HeaderMap>), String>) {
    let resp = send(b, request(Method::GET, RequestBody::Empty))
        .await
        .expect("a response");
    let (head, body) = resp.into_parts();
    let collected = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("the body ends")
        .map(|c| {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        })
        .map_err(|e| e.to_string());
    (Response::from_parts(head, ()), collected)
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello";

#[tokio::test]
async fn a_sized_response_is_read_and_its_connection_reused() {
    let (addr, accepted, mut seen) = upstream(vec![vec![
        Step::Answer(OK_HELLO, 4096),
        Step::Answer(OK_HELLO, 3),
    ]])
    .await;
    let b = backend(addr);
    for _ in 0..2 {
        let (head, body) = get(&b).await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["x-a"], "1");
        assert_eq!(body.expect("body").0, "hello");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for both"
    );
    assert_eq!(
        seen.recv().await.expect("request"),
        "GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n"
    );
}

/// Written in pieces of 1 to 7 bytes (each its own segment, `TCP_NODELAY`), so the decoder
/// meets every boundary: inside a size line, its extension, the data, each CRLF, the trailers.
#[tokio::test]
async fn a_chunked_response_keeps_its_data_and_trailers_and_its_connection() {
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n";
    let pieces = [1, 2, 3, 5, 7, 4096];
    let mut script: Vec<Step> = pieces.iter().map(|&p| Step::Answer(CHUNKED, p)).collect();
    script.push(Step::Answer(OK_HELLO, 4096));
    let (addr, accepted, _seen) = upstream(vec![script]).await;
    let b = backend(addr);
    for piece in pieces {
        let (_, body) = get(&b).await;
        let (data, trailers) = body.unwrap_or_else(|e| panic!("pieces of {piece}: {e}"));
        assert_eq!(data, "hello world", "pieces of {piece}");
        assert_eq!(trailers.expect("trailers")["x-checksum"], "abc");
    }
    let (_, body) = get(&b).await;
    assert_eq!(body.expect("body").0, "hello");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "every exchange on one connection"
    );
}

#[tokio::test]
async fn a_response_without_length_runs_to_the_close_and_its_connection_is_not_reused() {
    let (addr, accepted, _seen) = upstream(vec![vec![Step::AnswerClose(
        b"HTTP/1.1 200 OK\r\n\r\nto the end",
    )]])
    .await;
    let b = backend(addr);
    for _ in 0..2 {
        let (_, body) = get(&b).await;
        assert_eq!(body.expect("body").0, "to the end");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_and_http10_responses_do_not_go_back_to_the_pool() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"[..],
        &b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..],
    ] {
        // The upstream keeps the connection open: only the header says not to reuse it.
        let (addr, accepted, _seen) = upstream(vec![vec![Step::Answer(answer, 4096)]]).await;
        let b = backend(addr);
        for _ in 0..2 {
            let (_, body) = get(&b).await;
            assert_eq!(body.expect("body").0, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
    // HTTP/1.0 with keep-alive is reused.
    let (addr, accepted, _seen) = upstream(vec![vec![
        Step::Answer(
            b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello",
            4096,
        );
        2
    ]])
    .await;
    let b = backend(addr);
    for _ in 0..2 {
        get(&b).await.1.expect("body");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let (addr, _, _seen) = upstream(vec![vec![Step::Answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        5,
    )]])
    .await;
    let (head, body) = get(&backend(addr)).await;
    assert_eq!(head.status(), 200);
    assert!(head.headers().get("link").is_none());
    assert_eq!(body.expect("body").0, "ok");
}

#[tokio::test]
async fn head_204_and_304_responses_have_no_body_and_keep_their_connection() {
    let (addr, accepted, _seen) = upstream(vec![vec![
        Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", 4096),
        Step::Answer(b"HTTP/1.1 204 No Content\r\n\r\n", 4096),
        Step::Answer(
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
            4096,
        ),
        Step::Answer(OK_HELLO, 4096),
    ]])
    .await;
    let b = backend(addr);
    let resp = send(&b, request(Method::HEAD, RequestBody::Empty))
        .await
        .expect("HEAD");
    assert_eq!(resp.headers()["content-length"], "100");
    assert!(resp.body().is_end_stream());
    for status in [204, 304] {
        let (head, body) = get(&b).await;
        assert_eq!(head.status(), status);
        assert!(body.expect("body").0.is_empty());
    }
    assert_eq!(get(&b).await.1.expect("body").0, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn malformed_or_ambiguous_responses_are_bad_gateway() {
    for answer in [
        &b"HTTP/1.1 abc OK\r\n\r\n"[..],
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
    ] {
        let (addr, _, _seen) = upstream(vec![vec![Step::AnswerClose(answer)]]).await;
        let got = send(&backend(addr), request(Method::GET, RequestBody::Empty)).await;
        assert_eq!(
            got.err(),
            Some(ProxyError::BadUpstreamResponse),
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[tokio::test]
async fn an_oversized_response_head_is_bad_gateway() {
    static HUGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut v = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        v.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 1));
        v.extend_from_slice(b"\r\n\r\n");
        v
    });
    let (addr, _, _seen) = upstream(vec![vec![Step::AnswerClose(HUGE.as_slice())]]).await;
    let got = send(&backend(addr), request(Method::GET, RequestBody::Empty)).await;
    assert_eq!(got.err(), Some(ProxyError::BadUpstreamResponse));
}

#[tokio::test]
async fn a_body_cut_short_fails_after_the_data_it_had() {
    let (addr, _, _seen) = upstream(vec![vec![Step::AnswerClose(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
    )]])
    .await;
    let resp = send(&backend(addr), request(Method::GET, RequestBody::Empty))
        .await
        .expect("the head arrives");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "abc");
    assert!(body.frame().await.expect("an end").is_err());
}

/// The race with an upstream closing an idle connection: the request was written, the
/// connection closed without a byte back. A GET goes again on a new connection; a POST does
/// not (the upstream may have acted on it).
fn closes_the_second_exchange() -> Vec<Vec<Step>> {
    vec![
        vec![Step::Answer(OK_HELLO, 4096), Step::Close],
        vec![Step::Answer(OK_HELLO, 4096)],
    ]
}

// (Each test runs on its own thread: the worker-local pool is keyed by endpoint slot, and two
// snapshots compiled apart both number their first endpoint 0.)
#[tokio::test]
async fn a_reused_connection_closed_unanswered_sends_a_get_again() {
    let (addr, accepted, mut seen) = upstream(closes_the_second_exchange()).await;
    let b = backend(addr);
    get(&b).await.1.expect("first");
    let (_, body) = get(&b).await;
    assert_eq!(body.expect("the GET went again").0, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        std::iter::from_fn(|| seen.try_recv().ok()).count(),
        3,
        "first GET, the unanswered one, its repeat"
    );
}

#[tokio::test]
async fn a_reused_connection_closed_unanswered_does_not_send_a_post_again() {
    let (addr, accepted, mut seen) = upstream(closes_the_second_exchange()).await;
    let b = backend(addr);
    get(&b).await.1.expect("first");
    let post = send(&b, request(Method::POST, RequestBody::Empty)).await;
    assert_eq!(post.err(), Some(ProxyError::UpstreamReset));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the POST was not sent again"
    );
    assert_eq!(std::iter::from_fn(|| seen.try_recv().ok()).count(), 2);
}

/// An idle pooled connection the upstream has closed is noticed before it is used.
#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_not_used() {
    let (addr, accepted, _seen) = upstream(vec![
        vec![Step::AnswerClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        )],
        vec![Step::Answer(OK_HELLO, 4096)],
    ])
    .await;
    let b = backend(addr);
    get(&b).await.1.expect("first");
    // Once the runtime has seen the upstream's FIN (it reads the socket only when asked).
    let slot = b.endpoints[0].slot;
    let until = tokio::time::Instant::now() + DEADLINE;
    while crate::http::pool::last_idle_usable(slot) != Some(false) {
        assert!(
            tokio::time::Instant::now() < until,
            "the close was never seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A POST is never sent twice: it succeeds only if the closed connection is skipped.
    let resp = send(&b, request(Method::POST, RequestBody::Empty)).await;
    assert_eq!(resp.expect("the POST on a new connection").status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_body_goes_with_its_length() {
    let (addr, _, mut seen) = upstream(vec![vec![Step::Answer(OK_HELLO, 4096)]]).await;
    let req = request(
        Method::POST,
        RequestBody::full(Bytes::from_static(b"ping!")),
    );
    let resp = send(&backend(addr), req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        seen.recv().await.expect("request"),
        "POST /p?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 5\r\n\r\nping!"
    );
}

/// An upstream that answers without reading the body (say, 413) gets its answer through even
/// though the upload can no longer proceed.
#[tokio::test]
async fn an_early_answer_ends_the_upload() {
    let (addr, accepted, _seen) = upstream(vec![vec![Step::AnswerUnread(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
    )]])
    .await;
    let b = backend(addr);
    let big = Bytes::from(vec![b'x'; 64 << 20]);
    let resp = send(&b, request(Method::POST, RequestBody::full(big)))
        .await
        .expect("the early answer");
    assert_eq!(resp.status(), 413);
    drop(resp);
    // Its connection is not reused: its request was never finished.
    get(&b).await.1.expect("next");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn request_heads_are_framed_as_rfc_9112_says() {
    let mut head = Vec::new();
    let mut req = request(Method::PUT, RequestBody::full(Bytes::from_static(b"abc")));
    req.headers_mut().insert(
        http::header::TRANSFER_ENCODING,
        http::HeaderValue::from_static("gzip"),
    );
    req.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("3"),
    );
    assert_eq!(encode_head(&mut head, &req), Framing::Length(3));
    assert_eq!(
        String::from_utf8_lossy(&head),
        "PUT /p?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\n"
    );
    // No declared length: the body's own is added.
    let req = request(Method::POST, RequestBody::full(Bytes::from_static(b"abcd")));
    assert_eq!(encode_head(&mut head, &req), Framing::Length(4));
    assert!(String::from_utf8_lossy(&head).ends_with("content-length: 4\r\n\r\n"));
    // No body: nothing added.
    let req = request(Method::GET, RequestBody::Empty);
    assert_eq!(encode_head(&mut head, &req), Framing::Length(0));
    assert_eq!(
        String::from_utf8_lossy(&head),
        "GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n"
    );
}

#[test]
fn chunk_size_lines_are_hex() {
    let mut out = [0u8; 18];
    assert_eq!(chunk_size_line(1, &mut out), b"1\r\n");
    assert_eq!(chunk_size_line(0x1f4a, &mut out), b"1f4a\r\n");
    assert_eq!(
        chunk_size_line(usize::MAX, &mut out),
        b"ffffffffffffffff\r\n"
    );
}

#[test]
fn content_lengths_must_agree() {
    let mut h = HeaderMap::new();
    assert_eq!(content_length(&h), Ok(None));
    h.append(CONTENT_LENGTH, http::HeaderValue::from_static("7"));
    h.append(CONTENT_LENGTH, http::HeaderValue::from_static("7, 7"));
    assert_eq!(content_length(&h), Ok(Some(7)));
    h.append(CONTENT_LENGTH, http::HeaderValue::from_static("8"));
    assert_eq!(content_length(&h), Err(()));
    let mut h = HeaderMap::new();
    h.append(CONTENT_LENGTH, http::HeaderValue::from_static("+7"));
    assert_eq!(content_length(&h), Err(()));
}

/// Response heads from an upstream are input the proxy does not control: mangled ones (bytes
/// flipped, dropped, duplicated, cut short) must parse or fail cleanly, never panic, and a
/// head that parses must have been consumed from the buffer whole.
#[test]
fn mangled_response_heads_fail_cleanly() {
    let corpus: [&[u8]; 5] = [
        OK_HELLO,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.0 204 No Content\r\nconnection: keep-alive, close\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nrest",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7, 7\r\netag: \"x\"\r\n\r\n",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut fields = Vec::new();
    for round in 0..20_000 {
        let bytes = crate::http::h1::mangle(corpus[round % corpus.len()].to_vec(), &mut rng);
        let method = if rng.bool() {
            Method::GET
        } else {
            Method::HEAD
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        if let Ok(Some(parsed)) = parse_head(&mut buf, &mut fields, &method, rng.bool()) {
            assert!(buf.len() < before, "a parsed head is consumed: {bytes:?}");
            if parsed.head.status() == StatusCode::SWITCHING_PROTOCOLS {
                assert!(!parsed.reusable);
            }
            if let Framing::Eof = parsed.framing {
                assert!(!parsed.reusable, "a body to the close ends its connection");
            }
        }
    }
}
