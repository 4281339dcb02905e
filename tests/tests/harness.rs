//! The harness's own parts that need no proxy: backends, clients, bodies, the metrics parser.
//! If these fail, every end-to-end test's verdict is meaningless.

use std::time::Duration;

use http::{HeaderMap, Method, Request};
use tern_e2e::body::{self, pattern_byte};
use tern_e2e::{
    TestBackend, TestResponse, client::build_request, free_port, http1_client, http2_client,
    metrics, raw_http1, raw_status, wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn echo_backend_reports_the_request() {
    let backend = TestBackend::echo("a").await;
    let response = http1_client()
        .send(
            Method::POST,
            &backend.url("/p/q?x=1&y"),
            &[("x-one", "1"), ("x-two", "a"), ("x-two", "b")],
            "hello",
        )
        .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("a"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let echo = response.echo();
    assert_eq!(echo.backend(), "a");
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.path(), "/p/q?x=1&y");
    assert_eq!(echo.version(), "HTTP/1.1");
    assert_eq!(echo.body_len(), 5);
    assert_eq!(echo.header("x-one"), Some("1"));
    assert_eq!(echo.header_all("X-Two"), ["a", "b"]);
    assert_eq!(
        echo.header("host"),
        Some(backend.addr().to_string().as_str())
    );
    let json = response.json();
    let mut fields: Vec<&str> = json
        .as_object()
        .expect("echo is an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "authority",
            "backend",
            "body_len",
            "headers",
            "method",
            "path",
            "trailers",
            "version"
        ]
    );
    assert_eq!(backend.requests(), 1);
    assert_eq!(backend.bytes_received(), 5);
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let backend = TestBackend::echo("a").await;
    let client = http1_client();
    for _ in 0..3 {
        assert_eq!(client.get(&backend.url("/")).await.status, 200);
    }
    assert_eq!(backend.requests(), 3);
    assert_eq!(backend.connections(), 1);

    let fresh = http1_client().no_pool();
    for _ in 0..2 {
        assert_eq!(fresh.get(&backend.url("/")).await.status, 200);
    }
    assert_eq!(backend.connections(), 3);
}

#[tokio::test]
async fn h2_backend_speaks_prior_knowledge() {
    let backend = TestBackend::builder("h2").http2().start().await;
    let client = http2_client();
    let response = client.get(&backend.url("/grpc.Service/Call")).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.version, http::Version::HTTP_2);
    let echo = response.echo();
    assert_eq!(echo.version(), "HTTP/2.0");
    assert_eq!(echo.authority(), Some(backend.addr().to_string().as_str()));
    assert_eq!(echo.path(), "/grpc.Service/Call");

    // HTTP/1.1 is refused by an h2-only server.
    assert!(
        http1_client()
            .try_send("GET", &backend.url("/"), &[], "")
            .await
            .is_err()
    );
    assert!(backend.yaml().contains("protocol: http2"));
}

#[tokio::test]
async fn auto_backend_speaks_both() {
    let backend = TestBackend::builder("both").auto().start().await;
    let one = http1_client().get(&backend.url("/")).await.echo();
    let two = http2_client().get(&backend.url("/")).await.echo();
    assert_eq!(one.version(), "HTTP/1.1");
    assert_eq!(two.version(), "HTTP/2.0");
}

#[tokio::test]
async fn status_headers_and_fail_first() {
    let backend = TestBackend::builder("flaky")
        .status(201)
        .header("x-extra", "1")
        .fail_first(2, 503)
        .start()
        .await;
    let client = http1_client();
    let statuses = [
        client.get(&backend.url("/")).await.status,
        client.get(&backend.url("/")).await.status,
        client.get(&backend.url("/")).await.status,
    ];
    assert_eq!(statuses, [503, 503, 201]);
    assert_eq!(
        client.get(&backend.url("/")).await.header("x-extra"),
        Some("1")
    );
}

#[tokio::test]
async fn delay_holds_the_answer() {
    let backend = TestBackend::builder("slow")
        .delay(Duration::from_millis(300))
        .start()
        .await;
    let started = tokio::time::Instant::now();
    let response = http1_client().get(&backend.url("/")).await;
    assert_eq!(response.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let impatient = http1_client().timeout(Duration::from_millis(50));
    assert!(
        impatient
            .try_send("GET", &backend.url("/"), &[], "")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn h2_response_trailers() {
    let backend = TestBackend::builder("grpc")
        .http2()
        .response_trailers(&[("grpc-status", "0"), ("grpc-message", "ok")])
        .start()
        .await;
    let response = http2_client().get(&backend.url("/")).await;
    assert_eq!(response.trailer("grpc-status"), Some("0"));
    assert_eq!(response.trailer("grpc-message"), Some("ok"));
    assert_eq!(response.echo().backend(), "grpc");
}

#[tokio::test]
async fn request_trailers_reach_the_echo() {
    let backend = TestBackend::builder("grpc").http2().start().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().expect("header value"));
    let request = build_request(
        "POST",
        &backend.url("/"),
        &[],
        body::pattern_with_trailers(10, trailers),
    )
    .expect("request");
    let response = http2_client().request(request).await.expect("response");
    let response = TestResponse::collect(response).await.expect("body");
    let echo = response.echo();
    assert_eq!(echo.body_len(), 10);
    assert_eq!(echo.trailer("x-checksum"), Some("abc"));
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const SIZE: u64 = 16 * 1024 * 1024 + 7;
    let backend = TestBackend::builder("big")
        .auto()
        .streaming_body(SIZE)
        .start()
        .await;
    for client in [http1_client(), http2_client()] {
        let response = client
            .request(
                Request::get(backend.url("/"))
                    .body(body::empty())
                    .expect("request"),
            )
            .await
            .expect("response head");
        assert_eq!(response.status(), 200);
        let drained = body::drain(response.into_body()).await.expect("body");
        assert_eq!(drained.bytes, SIZE);
        assert!(drained.matches_pattern);
    }

    let sink = TestBackend::echo("sink").await;
    let upload = Request::post(sink.url("/upload"))
        .body(body::pattern(SIZE))
        .expect("request");
    let response = http1_client().request(upload).await.expect("response");
    let response = TestResponse::collect(response).await.expect("body");
    assert_eq!(response.echo().body_len(), SIZE);
    assert_eq!(sink.bytes_received(), SIZE);
}

#[tokio::test]
async fn hand_fed_upload_is_seen_as_it_arrives() {
    let sink = TestBackend::echo("sink").await;
    let (sender, upload) = body::channel();
    let request = Request::post(sink.url("/")).body(upload).expect("request");
    let client = http1_client();
    let in_flight = tokio::spawn(async move {
        let response = client.request(request).await.expect("response");
        TestResponse::collect(response).await.expect("body")
    });
    assert!(sender.send(vec![0u8; 1000]).await);
    wait_for("the first chunk at the sink", 5 * SECOND, async || {
        sink.bytes_received() == 1000
    })
    .await;
    assert!(sender.send(vec![0u8; 24]).await);
    drop(sender);
    let response = in_flight.await.expect("request task");
    assert_eq!(response.echo().body_len(), 1024);
}

#[tokio::test]
async fn websocket_upgrade_echoes_raw_bytes() {
    let backend = TestBackend::builder("ws").websocket_echo().start().await;
    let mut stream = TcpStream::connect(backend.addr()).await.expect("connect");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("read 101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-backend: ws"), "{head}");

    stream.write_all(b"ping\x00\xff").await.expect("write");
    let mut echoed = [0u8; 6];
    stream.read_exact(&mut echoed).await.expect("read echo");
    assert_eq!(&echoed, b"ping\x00\xff");
}

#[tokio::test]
async fn raw_http1_returns_one_whole_response() {
    let backend = TestBackend::echo("raw").await;
    let response = raw_http1(
        backend.addr(),
        "GET /raw HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), Some(200));
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    let echo: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(echo["path"], "/raw");
    assert_eq!(echo["headers"]["x-dup"], serde_json::json!(["1", "2"]));

    // hyper rejects this framing itself: the response is the server's 400, then close.
    let bad = raw_http1(
        backend.addr(),
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&bad), Some(400), "{bad}");
}

#[tokio::test]
async fn connect_to_sends_the_urls_host() {
    let backend = TestBackend::builder("vhost").auto().start().await;
    let one = http1_client()
        .connect_to(backend.addr())
        .get("http://api.example.com/x")
        .await
        .echo();
    assert_eq!(one.header("host"), Some("api.example.com"));
    assert_eq!(one.path(), "/x");

    let h2 = http2_client().connect_to(backend.addr());
    for _ in 0..3 {
        let echo = h2.get("http://api.example.com:8080/y").await.echo();
        assert_eq!(echo.authority(), Some("api.example.com:8080"));
        assert_eq!(echo.version(), "HTTP/2.0");
    }
    // One for HTTP/1.1, one shared by the three HTTP/2 requests.
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn dropped_backend_refuses_connections() {
    let backend = TestBackend::echo("gone").await;
    let addr = backend.addr();
    let client = http1_client();
    assert_eq!(client.get(&backend.url("/")).await.status, 200);
    backend.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());

    // A new backend on the same port takes over.
    let again = TestBackend::builder("back").bind(addr).start().await;
    let response = http1_client().get(&again.url("/")).await;
    assert_eq!(response.backend(), Some("back"));
}

#[test]
fn free_ports_are_not_handed_out_twice() {
    let ports: std::collections::HashSet<u16> = (0..200).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 200);
}

#[tokio::test]
#[should_panic(expected = "timed out after")]
async fn wait_for_fails_at_the_deadline() {
    wait_for("never", Duration::from_millis(50), async || false).await;
}

#[test]
fn parses_prometheus_text() {
    let text = r#"
# HELP tern_requests_total Requests.
# TYPE tern_requests_total counter
tern_requests_total{route="all",backend="a",code="200"} 3
tern_requests_total{route="all",backend="a",code="503"} 2 1700000000000
tern_requests_total{route="all",backend="b",code="200"} 1.5e1
tern_up 1
tern_latency_bucket{le="+Inf"} 7
tern_weird{path="a \"quoted\" } # value\\ and\nnewline"} NaN
"#;
    assert_eq!(
        metrics::find(text, "tern_requests_total", &[("backend", "a")]),
        Some(5.0)
    );
    assert_eq!(
        metrics::find(
            text,
            "tern_requests_total",
            &[("backend", "a"), ("code", "503")]
        ),
        Some(2.0)
    );
    assert_eq!(metrics::find(text, "tern_requests_total", &[]), Some(20.0));
    assert_eq!(
        metrics::find(text, "tern_requests_total", &[("backend", "c")]),
        None
    );
    assert_eq!(metrics::find(text, "tern_up", &[]), Some(1.0));
    assert_eq!(
        metrics::find(text, "tern_latency_bucket", &[("le", "+Inf")]),
        Some(7.0)
    );
    let samples = metrics::parse(text);
    let weird = samples
        .iter()
        .find(|s| s.name == "tern_weird")
        .expect("weird sample");
    assert_eq!(
        weird.label("path"),
        Some("a \"quoted\" } # value\\ and\nnewline")
    );
    assert!(weird.value.is_nan());
}

#[test]
fn parses_openmetrics_text() {
    let text = "\
# TYPE tern_requests counter
# HELP tern_requests Requests.
tern_requests_total{backend=\"a\"} 4 # {trace_id=\"abc\"} 1.0 1700000000.1
tern_requests_created{backend=\"a\"} 1.7e9
# TYPE tern_inflight gauge
tern_inflight 0
# EOF
";
    assert_eq!(
        metrics::find(text, "tern_requests_total", &[("backend", "a")]),
        Some(4.0)
    );
    assert_eq!(metrics::find(text, "tern_inflight", &[]), Some(0.0));
    assert_eq!(metrics::find(text, "tern_requests", &[]), None);
}

#[test]
fn pattern_is_not_trivially_periodic() {
    assert_ne!(pattern_byte(0), pattern_byte(256));
    assert_eq!(pattern_byte(0), pattern_byte(251));
}
