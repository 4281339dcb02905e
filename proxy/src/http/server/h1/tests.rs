//! The request head parser and the response framing, on bytes and values; the connection loop
//! is tested end to end (tests/protocols.rs, tests/failures.rs).

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode, Version};

use super::*;

const LIMITS: Limits = Limits {
    max_head_bytes: 64 * 1024,
    max_headers: 100,
};

fn parse(bytes: &[u8]) -> Result<Option<Head>, Refusal> {
    let mut buf = BytesMut::from(bytes);
    parse_head(&mut buf, &mut Vec::new(), LIMITS)
}

fn parsed(bytes: &[u8]) -> Head {
    match parse(bytes) {
        Ok(Some(h)) => h,
        Ok(None) => panic!("incomplete: {bytes:?}"),
        Err(e) => panic!("refused ({e:?}): {bytes:?}"),
    }
}

#[test]
fn a_head_is_parsed_into_a_request_and_consumed_whole() {
    let mut buf = BytesMut::from(
        &b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\n\r\nPOST /next HTTP/1.1\r\n"[..],
    );
    let mut fields = Vec::new();
    let head = parse_head(&mut buf, &mut fields, LIMITS)
        .expect("valid")
        .expect("complete");
    let req = &head.request;
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=c");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "x");
    let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
    assert_eq!(twos, ["1", "2"]);
    assert!(head.keep_alive && head.body.is_none() && !head.expect_continue);
    assert_eq!(
        &buf[..],
        b"POST /next HTTP/1.1\r\n",
        "the next request stays"
    );
    assert!(
        parse_head(&mut buf, &mut fields, LIMITS)
            .expect("valid so far")
            .is_none(),
        "an incomplete head waits for more"
    );
}

#[test]
fn the_body_is_framed_by_length_or_chunks() {
    let h = parsed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.body, Some(Decode::Length(5)));
    let h =
        parsed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(
        h.body,
        Some(Decode::Length(5)),
        "repeats of one length are one length"
    );
    let h = parsed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.body, None);
    let h = parsed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(h.body, Some(Decode::ChunkSize));
    let h =
        parsed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    assert!(h.expect_continue);
    let h = parsed(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n");
    assert!(!h.expect_continue, "nothing to continue without a body");
}

#[test]
fn ambiguous_framing_is_refused() {
    for bad in [
        &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: value\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    ] {
        assert!(
            matches!(parse(bad), Err(Refusal::BadRequest(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn heads_over_the_limits_are_too_large() {
    let limits = Limits {
        max_head_bytes: 1024,
        max_headers: 4,
    };
    let many = b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
    let r = parse_head(&mut BytesMut::from(&many[..]), &mut Vec::new(), limits);
    assert!(matches!(r, Err(Refusal::TooLarge)));
    let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "v".repeat(2000));
    let r = parse_head(
        &mut BytesMut::from(long.as_bytes()),
        &mut Vec::new(),
        limits,
    );
    assert!(matches!(r, Err(Refusal::TooLarge)));
    // A listener allowing more fields than the parser keeps on the stack.
    let wide = Limits {
        max_head_bytes: 64 * 1024,
        max_headers: 300,
    };
    let mut text = String::from("GET / HTTP/1.1\r\n");
    for i in 0..250 {
        text.push_str(&format!("x-{i}: {i}\r\n"));
    }
    text.push_str("\r\n");
    let head = parse_head(&mut BytesMut::from(text.as_bytes()), &mut Vec::new(), wide)
        .expect("within the limits")
        .expect("complete");
    assert_eq!(head.request.headers().len(), 250);
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    assert!(parsed(b"GET / HTTP/1.1\r\n\r\n").keep_alive);
    assert!(!parsed(b"GET / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\n").keep_alive);
    assert!(!parsed(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(parsed(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(parsed(b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n").trailers);
}

fn response(status: u16, headers: &[(&str, &str)], body: ResponseBody) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).expect("a status");
    for (n, v) in headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).expect("a name"),
            HeaderValue::from_str(v).expect("a value"),
        );
    }
    resp
}

fn encoded(resp: &Response<ResponseBody>, version: Version, head_only: bool) -> (String, Framing) {
    let mut out = Vec::new();
    let framing = encode_head(&mut out, resp, version, head_only, true, false);
    (String::from_utf8(out).expect("ASCII"), framing)
}

#[test]
fn responses_are_framed_by_length_chunks_or_the_close() {
    let sized = ResponseBody::Full(Some(Bytes::from_static(b"hello")));
    let (head, f) = encoded(
        &response(200, &[("date", "x")], sized),
        Version::HTTP_11,
        false,
    );
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 5\r\n\r\n"
    );
    assert_eq!(f.body, Some(BodyFraming::Length(5)));
    assert!(f.keep_alive);

    // A `transfer-encoding` from upstream is its hop's, not ours.
    let unknown = || ResponseBody::Full(None);
    let hop = response(
        200,
        &[("date", "x"), ("transfer-encoding", "chunked")],
        unknown(),
    );
    let (head, f) = encoded(&hop, Version::HTTP_11, false);
    assert_eq!(f.body, Some(BodyFraming::Length(0)));
    assert!(!head.contains("transfer-encoding"), "{head}");

    // Unknown length: chunked for HTTP/1.1; to the close for HTTP/1.0.
    assert_eq!(
        body_framing(None, None, Version::HTTP_11),
        BodyFraming::Chunked
    );
    assert_eq!(
        body_framing(None, None, Version::HTTP_10),
        BodyFraming::Close
    );
    assert_eq!(
        body_framing(Some(3), Some(9), Version::HTTP_10),
        BodyFraming::Length(3)
    );
    assert_eq!(
        body_framing(None, Some(9), Version::HTTP_11),
        BodyFraming::Length(9)
    );

    // The upstream's own length wins over the body's hint; HEAD and 304 carry it with no body.
    let declared = response(200, &[("content-length", "10"), ("date", "x")], unknown());
    let (head, f) = encoded(&declared, Version::HTTP_11, true);
    assert!(head.contains("content-length: 10\r\n"), "{head}");
    assert_eq!(f.body, None);
    let (_, f) = encoded(
        &response(304, &[("date", "x")], unknown()),
        Version::HTTP_11,
        false,
    );
    assert_eq!(f.body, None);
    let (_, f) = encoded(
        &response(204, &[("date", "x")], unknown()),
        Version::HTTP_11,
        false,
    );
    assert_eq!(f.body, None);
}

#[test]
fn connection_fields_are_the_servers_own() {
    let (head, _) = encoded(
        &response(
            200,
            &[("connection", "keep-alive"), ("date", "x")],
            ResponseBody::empty(),
        ),
        Version::HTTP_10,
        false,
    );
    assert_eq!(
        head,
        "HTTP/1.0 200 OK\r\ndate: x\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
    );
    let mut out = Vec::new();
    let resp = response(503, &[], ResponseBody::empty());
    let f = encode_head(&mut out, &resp, Version::HTTP_11, false, false, false);
    let head = String::from_utf8(out).expect("ASCII");
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\ndate: "),
        "a date when the answer has none: {head}"
    );
    assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
    assert!(!f.keep_alive);
}

/// Request heads are what clients send: hostile or broken ones (bytes flipped, dropped,
/// inserted, cut short) must parse or be refused cleanly, never panic, and a head that parses
/// must have been consumed whole.
#[test]
fn mangled_request_heads_are_refused_cleanly() {
    let corpus: [&[u8]; 4] = [
        b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"PUT / HTTP/1.0\r\nContent-Length: 3, 3\r\nTE: trailers\r\n\r\nabc",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ];
    let mut rng = fastrand::Rng::with_seed(11);
    let mut fields = Vec::new();
    for round in 0..20_000 {
        let bytes = crate::http::h1::mangle(corpus[round % corpus.len()].to_vec(), &mut rng);
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        if let Ok(Some(head)) = parse_head(&mut buf, &mut fields, LIMITS) {
            assert!(buf.len() < before, "a parsed head is consumed: {bytes:?}");
            if head.expect_continue {
                assert!(head.body.is_some());
            }
        }
    }
}

/// A request body reads its framing from the connection and, at its end, hands the read side
/// back clean with what follows it (a pipelined request) still buffered; one dropped before
/// its end takes the read side with it (the connection closes after its answer).
#[tokio::test]
async fn a_body_gives_the_connection_back_at_its_end() {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    let (mut client, rd, _wr) = tcp_pair().await;
    let shared = Shared::new();
    let body = |reader, state| Body {
        reader: Some(reader),
        state,
        shared: Arc::clone(&shared),
        expect_continue: true,
    };
    let reader = Box::new(Reader {
        io: rd,
        buf: BytesMut::from(&b"5\r\nhel"[..]),
        fields: Vec::new(),
    });
    let mut chunked = body(reader, Decode::ChunkSize);
    client
        .write_all(b"lo\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nGET /next")
        .await
        .expect("write");
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = chunked.frame().await {
        let frame = frame.expect("a well-framed body");
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert_eq!(data, b"hello world");
    assert_eq!(trailers.expect("trailers")["x-t"], "1");
    assert!(
        shared.want_continue.load(Ordering::Acquire),
        "the first read asked for 100 Continue"
    );
    drop(chunked);
    let reader = take_back(&shared).expect("handed back clean");
    assert_eq!(
        &reader.buf[..],
        b"GET /next",
        "the next request stays buffered"
    );

    // Dropped with bytes of its body unread: the connection cannot go on.
    let mut sized = body(reader, Decode::Length(100));
    drop(sized.frame().await);
    drop(sized);
    assert!(
        take_back(&shared).is_none(),
        "a body cut short ends its connection"
    );
}

#[test]
fn blank_lines_are_found_across_pieces() {
    let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for from in 0..head.len() {
        assert!(has_blank_line(head, from), "from {from}");
    }
    assert!(!has_blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
    assert!(has_blank_line(b"GET / HTTP/1.1\nHost: x\n\n", 20));
    assert!(!has_blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 0));
}

/// A head that arrives in pieces, split anywhere (here inside its final CRLF CRLF), is read
/// whole and parsed once its end is in.
#[tokio::test]
async fn a_head_in_pieces_is_read_whole() {
    use tokio::io::AsyncWriteExt;

    let (mut client, rd, _wr) = tcp_pair().await;
    let mut reader = Reader {
        io: rd,
        buf: BytesMut::new(),
        fields: Vec::new(),
    };
    let writer = tokio::spawn(async move {
        for piece in [
            &b"GET /p"[..],
            b"ieces HTTP/1.1\r\nHo",
            b"st: x\r",
            b"\n\r",
            b"\nGET",
        ] {
            client.write_all(piece).await.expect("write");
            // A pause so that the pieces arrive as separate reads. Not a wait for a state: if
            // two pieces coalesce, the test still holds, it only covers one split less.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        client
    });
    let head = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read_head(&mut reader, LIMITS),
    )
    .await
    .expect("in time")
    .expect("valid")
    .expect("a head");
    assert_eq!(head.request.uri(), "/pieces");
    assert_eq!(head.request.headers()["host"], "x");
    let _client = writer.await.expect("writer");
}

/// A client connection on loopback (no Nagle delay) and the server side's halves.
async fn tcp_pair() -> (tokio::net::TcpStream, OwnedReadHalf, OwnedWriteHalf) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let (server, _) = listener.accept().await.expect("accept");
    let (rd, wr) = server.into_split();
    (client, rd, wr)
}
