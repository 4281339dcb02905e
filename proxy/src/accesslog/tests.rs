use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::runtime::Handle;

use super::*;
use crate::reqid::RequestIds;
use crate::trace::{Host, SpanId, TraceId};

fn logged(name: &'static str, redact: Redact) -> LoggedHeader {
    LoggedHeader {
        name: HeaderName::from_static(name),
        redact,
    }
}

fn format(include_query: bool) -> LogFormat {
    LogFormat::new(
        Arc::from("inbound"),
        vec![
            logged("x-user-id", Redact::None),
            logged("x-shop-id", Redact::Hash),
            logged("authorization", Redact::Drop),
            logged("x-absent", Redact::None),
        ],
        vec![logged("x-cache", Redact::None)],
        include_query,
        Hasher::keyed(b"k3y"),
    )
    .unwrap()
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, HeaderValue::from_static(v));
    }
    h
}

/// A log for formatting tests: its writer's runtime is gone, so nothing is ever written.
fn log(format: LogFormat, sample: f64) -> AccessLog {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let writer = LogWriter::start_with(tokio::io::sink(), 4, rt.handle());
    AccessLog::new(format, sample, writer.sink())
}

fn full_record(log: &AccessLog) -> AccessRecord {
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let mut r = log.record(start);
    r.duration = Duration::from_micros(12_345);
    r.upstream = Some(Duration::from_micros(10_001));
    let mut req = headers(&[
        ("x-request-id", "req-1"),
        ("x-user-id", "42"),
        ("x-user-id", "second value is not logged"),
        ("x-shop-id", "42"),
        ("authorization", "Bearer secret"),
    ]);
    r.request_id = Some(RequestIds::default().ensure(&mut req));
    r.request_headers = log.capture_request(&req);
    r.response_headers = log.capture_response(&headers(&[("x-cache", "HIT")]));
    r.trace_id = Some(TraceId::from_u128(0xabc));
    r.span_id = Some(SpanId::from_u64(0xdef));
    r.client = Some("192.0.2.7:51000".parse().unwrap());
    r.method = Method::POST;
    r.authority = Some(Host::Header(HeaderValue::from_static("shop.example.com")));
    r.path = Some("/orders/42?token=secret".parse().unwrap());
    r.version = Version::HTTP_2;
    r.status = Some(StatusCode::SERVICE_UNAVAILABLE);
    r.flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE.union(ResponseFlags::RETRIES_EXHAUSTED);
    r.bytes_in = 17;
    r.bytes_out = 1234;
    r.route = Some(Arc::from("orders"));
    r.backend = Some(Arc::from("orders-v2"));
    r.endpoint = Some("10.0.0.7:9000".parse().unwrap());
    r.attempts = 3;
    r
}

fn line(r: &AccessRecord) -> (String, Value) {
    let mut out = Vec::new();
    write_json(r, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "{text}"
    );
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (text, value)
}

#[test]
fn a_full_line_has_every_field() {
    let log = log(format(false), 1.0);
    let (_, v) = line(&full_record(&log));
    assert_eq!(
        v,
        json!({
            "start_time": "2023-11-14T22:13:20.123Z",
            "duration_ms": 12.345,
            "upstream_ms": 10.001,
            "listener": "inbound",
            "request_id": "req-1",
            "trace_id": "00000000000000000000000000000abc",
            "span_id": "0000000000000def",
            "client": "192.0.2.7:51000",
            "method": "POST",
            "authority": "shop.example.com",
            "path": "/orders/42",
            "protocol": "HTTP/2",
            "status": 503,
            "flags": "UF,URX",
            "bytes_in": 17,
            "bytes_out": 1234,
            "route": "orders",
            "backend": "orders-v2",
            "endpoint": "10.0.0.7:9000",
            "attempts": 3,
            "request_headers": {
                "x-user-id": "42",
                "x-shop-id": "hmac-sha256:ce2d7caed289663313ba19a67f407a63",
                "authorization": "redacted",
                "x-absent": null
            },
            "response_headers": {"x-cache": "HIT"}
        })
    );
}

#[test]
fn a_bare_line_has_nulls_and_no_header_objects() {
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    let log = log(bare, 1.0);
    let (text, v) = line(&log.record(SystemTime::UNIX_EPOCH));
    for field in [
        "upstream_ms",
        "request_id",
        "trace_id",
        "span_id",
        "client",
        "authority",
        "path",
        "status",
        "route",
        "backend",
        "endpoint",
    ] {
        assert_eq!(v[field], Value::Null, "{field} in {text}");
    }
    assert_eq!(v["flags"], "-");
    assert_eq!(v["duration_ms"], json!(0.0));
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["attempts"], 0);
    assert!(v.get("request_headers").is_none() && v.get("response_headers").is_none());
}

#[test]
fn addresses_of_both_families() {
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    let log = log(bare, 1.0);
    let mut r = log.record(SystemTime::UNIX_EPOCH);
    r.client = Some("[2001:db8::1%7]:443".parse().unwrap());
    r.endpoint = Some("255.255.255.255:65535".parse().unwrap());
    let (text, v) = line(&r);
    assert_eq!(v["client"], "[2001:db8::1%7]:443", "{text}");
    assert_eq!(v["endpoint"], "255.255.255.255:65535", "{text}");
    r.endpoint = Some("0.0.0.0:0".parse().unwrap());
    assert_eq!(line(&r).1["endpoint"], "0.0.0.0:0");
}

/// IPv4 text is built from a table of octets: every octet in every position, and ports of
/// every length, read as `Display` writes them.
#[test]
fn every_ipv4_octet_and_port_length_is_written_as_display_writes_it() {
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    let log = log(bare, 1.0);
    let mut r = log.record(SystemTime::UNIX_EPOCH);
    let ports = [0u16, 7, 10, 99, 100, 999, 1000, 9999, 10000, 65535];
    for octet in 0..=255u8 {
        for position in 0..4 {
            let mut ip = [1u8, 22, 133, 4];
            ip[position] = octet;
            let addr = std::net::SocketAddr::from((ip, ports[usize::from(octet) % ports.len()]));
            r.client = Some(addr);
            let (text, v) = line(&r);
            assert_eq!(v["client"], addr.to_string(), "{text}");
        }
    }
}

#[test]
fn the_query_is_logged_only_when_asked() {
    let log = log(format(true), 1.0);
    let (_, v) = line(&full_record(&log));
    assert_eq!(v["path"], "/orders/42?token=secret");
}

#[test]
fn odd_bytes_are_escaped_into_valid_json() {
    let f = LogFormat::new(
        Arc::from("l\"x"),
        vec![logged("x-odd", Redact::None)],
        vec![],
        false,
        Hasher::default(),
    )
    .unwrap();
    let log = log(f, 1.0);
    let mut r = log.record(SystemTime::UNIX_EPOCH);
    let mut h = HeaderMap::new();
    h.insert(
        "x-odd",
        HeaderValue::from_bytes(b"a\"b\\c\tde\xc3\xa9").unwrap(),
    );
    r.request_headers = log.capture_request(&h);
    r.method = Method::from_bytes(b"PURGE").unwrap();
    let (text, v) = line(&r);
    assert!(
        text.contains(r#""x-odd":"a\"b\\c\tde\u00c3\u00a9""#),
        "{text}"
    );
    assert_eq!(v["request_headers"]["x-odd"], "a\"b\\c\tde\u{c3}\u{a9}");
    assert_eq!(v["listener"], "l\"x");
    assert_eq!(v["method"], "PURGE");
}

#[test]
fn redaction() {
    let mut buf = [0; redact::MAX_DIGEST_LEN];
    assert_eq!(
        Hasher::unkeyed().digest(b"42", &mut buf),
        b"sha256:73475cb40a568e8da8a045ced110137e"
    );
    assert_eq!(
        Hasher::unkeyed().digest(b"", &mut buf),
        b"sha256:e3b0c44298fc1c149afbf4c8996fb924"
    );
    assert_eq!(
        Hasher::keyed(b"k3y").digest(b"42", &mut buf),
        b"hmac-sha256:ce2d7caed289663313ba19a67f407a63"
    );
    assert_eq!(
        Hasher::keyed(b"k3y").digest(b"42", &mut buf).len(),
        redact::MAX_DIGEST_LEN
    );
    assert!(!format!("{:?}", Hasher::keyed(b"k3y")).contains("k3y"));

    // A dropped header keeps no copy of its value, only its presence.
    let log = log(format(false), 1.0);
    let c = log.capture_request(&headers(&[("authorization", "Bearer secret")]));
    assert_eq!(c.get(2), Some(&HeaderValue::from_static("")));
    assert_eq!(c.get(0), None);
}

#[test]
fn captures_follow_the_configured_order_and_bound() {
    let log = log(format(false), 1.0);
    let c = log.capture_request(&headers(&[("x-shop-id", "s"), ("x-user-id", "u")]));
    assert_eq!(c.get(0).unwrap(), "u");
    assert_eq!(c.get(1).unwrap(), "s");
    assert_eq!(c.get(3), None);
    assert_eq!(c.get(MAX_CAPTURED + 5), None);
    let nine = (0..9).map(|_| logged("x-a", Redact::None)).collect();
    assert!(LogFormat::new(Arc::from("l"), nine, vec![], false, Hasher::default()).is_err());
}

/// A dropped capture's list serves the next capture on the thread, with no value of the old
/// request left in it.
#[test]
fn a_dropped_captures_list_is_reused_empty() {
    let log = log(format(false), 1.0);
    let first = log.capture_request(&headers(&[("x-shop-id", "s"), ("x-user-id", "u")]));
    let addr = first.0.as_ptr();
    drop(first);
    let second = log.capture_request(&headers(&[("x-user-id", "v")]));
    assert_eq!(second.0.as_ptr(), addr, "the list was not reused");
    assert_eq!(second.get(0).unwrap(), "v");
    assert_eq!(second.get(1), None);
    assert_eq!(second.0.len(), 4);
}

#[test]
fn flags_map_from_errors_and_print_like_envoy() {
    use crate::error::ProxyError::*;
    let cases = [
        (BadRequest("x"), "DPE"),
        (NoRoute, "NR"),
        (NoEndpoints, "UH"),
        (NoHealthyEndpoints, "UH"),
        (Overflow, "UO"),
        (RateLimited, "RL"),
        (FaultInjected(StatusCode::IM_A_TEAPOT), "FI"),
        (ConnectFailed, "UF"),
        (UpstreamReset, "UC"),
        (BadUpstreamResponse, "UPE"),
        (RefusedStream, "UR"),
        (Timeout, "UT"),
    ];
    for (error, code) in cases {
        assert_eq!(ResponseFlags::from_error(error).to_string(), code);
    }
    let mut f = ResponseFlags::empty();
    assert_eq!(f.to_string(), "-");
    f.insert(ResponseFlags::DOWNSTREAM_DISCONNECT);
    f.insert(ResponseFlags::UPSTREAM_TIMEOUT);
    f.insert(ResponseFlags::DELAY_INJECTED);
    assert_eq!(f.to_string(), "UT,DI,DC");
    assert!(f.contains(ResponseFlags::UPSTREAM_TIMEOUT));
    assert!(!f.contains(ResponseFlags::NO_ROUTE));
    assert_eq!(
        ResponseFlags::CODES.len(),
        ResponseFlags::CODES
            .iter()
            .map(|(f, _)| f.0)
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
}

#[test]
fn sampling_ratio() {
    let mut rng = fastrand::Rng::with_seed(5);
    let never = log(format(false), 0.0);
    let always = log(format(false), 1.0);
    let quarter = log(format(false), 0.25);
    assert!((0..1000).all(|_| !never.sample_with(&mut rng)));
    assert!((0..1000).all(|_| always.sample_with(&mut rng)));
    let n = (0..100_000)
        .filter(|_| quarter.sample_with(&mut rng))
        .count();
    assert!((24_000..=26_000).contains(&n), "{n}");
    assert!(always.sample());
}

fn small_record(log: &AccessLog, n: u32) -> AccessRecord {
    let mut r = log.record(SystemTime::now());
    r.attempts = n;
    r
}

async fn read_lines(reader: &mut tokio::io::DuplexStream, want: usize) -> Vec<Value> {
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text.iter().filter(|&&b| b == b'\n').count() < want {
        assert!(
            Instant::now() < deadline,
            "only got {:?}",
            String::from_utf8_lossy(&text)
        );
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        text.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_writer_writes_each_record_as_a_line() {
    let (writer_end, mut reader) = tokio::io::duplex(1 << 20);
    let writer = LogWriter::start_with(writer_end, 16, &Handle::current());
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    let log = AccessLog::new(bare, 1.0, writer.sink());
    for n in 0..5 {
        assert!(log.submit(&small_record(&log, n)));
    }
    let lines = read_lines(&mut reader, 5).await;
    let attempts: Vec<u64> = lines
        .iter()
        .map(|v| v["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![0, 1, 2, 3, 4]);
    assert_eq!(writer.stats().written(), 5);
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stuck_output_drops_and_counts_and_never_blocks_the_caller() {
    // A pipe with a tiny buffer nobody reads: the writer blocks on its first write.
    let (writer_end, mut reader) = tokio::io::duplex(64);
    let writer = LogWriter::start_with(writer_end, 8, &Handle::current());
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    let log = AccessLog::new(bare, 1.0, writer.sink());
    let stats = Arc::clone(writer.stats());
    let mut accepted = 0u64;
    let t = Instant::now();
    for n in 0..1000 {
        if log.submit(&small_record(&log, n)) {
            accepted += 1;
        }
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // This thread's shard (8 lines) plus the sweep the writer is stuck writing (at most 8).
    assert!((8..=16).contains(&accepted), "accepted {accepted}");
    assert_eq!(stats.dropped(), 1000 - accepted);

    // The reader catches up: every accepted line arrives, whole and in order.
    let lines = read_lines(&mut reader, accepted as usize).await;
    assert_eq!(lines.len() as u64, accepted);
    let attempts: Vec<u64> = lines
        .iter()
        .map(|v| v["attempts"].as_u64().unwrap())
        .collect();
    assert!(attempts.is_sorted(), "{attempts:?}");
    assert_eq!(stats.written(), accepted);
    writer.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.written() + stats.dropped(), 1000);
}

/// An output whose every write fails.
struct Broken;

impl AsyncWrite for Broken {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::Error::other("disk full")))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn failed_writes_are_counted_and_the_writer_goes_on() {
    lines_to_a_failing_output_are_counted(LogWriter::start_with(Broken, 16, &Handle::current()))
        .await;
}

/// The same through a real file whose writes fail: `/dev/full` answers every write with ENOSPC,
/// as a full disk does. Written by the blocking path files take.
#[tokio::test]
async fn a_full_disk_is_counted_and_the_writer_goes_on() {
    let writer = LogWriter::start(&Output::File("/dev/full".into()), 16, &Handle::current())
        .expect("/dev/full opens for appending");
    lines_to_a_failing_output_are_counted(writer).await;
}

/// Three lines to `writer`, whose every write fails, are counted as failed; a fourth after that
/// is too (the writer goes on), and nothing is counted as written or dropped.
async fn lines_to_a_failing_output_are_counted(writer: LogWriter) {
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    let log = AccessLog::new(bare, 1.0, writer.sink());
    for n in 0..3 {
        log.submit(&small_record(&log, n));
    }
    let stats = Arc::clone(writer.stats());
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.write_failed() < 3 {
        assert!(
            Instant::now() < deadline,
            "the failed write was not counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log.submit(&small_record(&log, 9));
    writer.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        (stats.write_failed(), stats.written(), stats.dropped()),
        (4, 0, 0)
    );
}

fn temp_log() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "tern-accesslog-{}-{}.log",
        std::process::id(),
        fastrand::u64(..)
    ))
}

#[tokio::test]
async fn files_are_appended_and_shutdown_flushes() {
    let path = temp_log();
    std::fs::write(&path, "an earlier line\n").unwrap();
    let mut writers = Writers::new(Handle::current(), QUEUE_SIZE);
    let output = Output::File(path.clone());
    let a = writers.sink(&output).unwrap();
    let b = writers.sink(&output).unwrap();
    assert!(Arc::ptr_eq(a.stats(), b.stats()), "one writer per output");
    let bare = |name: &str| {
        LogFormat::new(Arc::from(name), vec![], vec![], false, Hasher::default()).unwrap()
    };
    let first = AccessLog::new(bare("first"), 1.0, a);
    let second = AccessLog::new(bare("second"), 1.0, b);
    first.submit(&small_record(&first, 1));
    second.submit(&small_record(&second, 2));
    writers.shutdown(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "an earlier line");
    let listeners: Vec<String> = lines[1..]
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["listener"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(listeners, vec!["first", "second"]);
}

#[tokio::test]
async fn writers_follow_config_changes() {
    let (p1, p2) = (temp_log(), temp_log());
    let (o1, o2) = (Output::File(p1.clone()), Output::File(p2.clone()));
    let mut writers = Writers::new(Handle::current(), 16);
    let s1 = writers.sink(&o1).unwrap();
    writers.sink(&o2).unwrap();
    assert_eq!(writers.iter().count(), 2);
    writers
        .retain(std::slice::from_ref(&o2), Duration::from_secs(5))
        .await;
    assert_eq!(
        writers.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>(),
        vec![o2]
    );
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    let log = AccessLog::new(bare, 1.0, s1);
    assert!(
        !log.submit(&small_record(&log, 1)),
        "a stopped writer takes nothing"
    );
    assert_eq!(log.sink().stats().dropped(), 1);
    writers.shutdown(Duration::from_secs(5)).await;
    let bad = Writers::new(Handle::current(), 16)
        .sink(&Output::File("/nonexistent-dir/x/access.log".into()));
    assert!(bad.is_err());
    for p in [p1, p2] {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(Output::Stdout.to_string(), "stdout");
}

/// An output that keeps each write apart (one entry per `poll_write`), so a test sees how lines
/// were batched, and lets it wait for them.
struct Recorder(tokio::sync::watch::Sender<Vec<Vec<u8>>>);

type Writes = tokio::sync::watch::Receiver<Vec<Vec<u8>>>;

fn recorder() -> (Recorder, Writes) {
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    (Recorder(tx), rx)
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.send_modify(|writes| writes.push(buf.to_vec()));
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn lines_in(writes: &[Vec<u8>]) -> usize {
    writes.iter().flatten().filter(|&&b| b == b'\n').count()
}

/// Lines per write.
fn batches(writes: &[Vec<u8>]) -> Vec<usize> {
    writes
        .iter()
        .map(|w| w.iter().filter(|&&b| b == b'\n').count())
        .collect()
}

/// The `attempts` of every line written, in order.
fn attempts_written(writes: &[Vec<u8>]) -> Vec<u64> {
    String::from_utf8(writes.concat())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["attempts"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Waits (10 s at most) until `want` lines have been written; returns the writes so far.
async fn wait_lines(writes: &mut Writes, want: usize) -> Vec<Vec<u8>> {
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        writes.wait_for(|w| lines_in(w) >= want),
    )
    .await
    .map(|w| w.unwrap().clone());
    waited.unwrap_or_else(|_| {
        panic!(
            "waited for {want} lines, got batches {:?}",
            batches(&writes.borrow())
        )
    })
}

fn bare_log(writer: &LogWriter) -> AccessLog {
    let bare = LogFormat::new(Arc::from("l"), vec![], vec![], false, Hasher::default()).unwrap();
    AccessLog::new(bare, 1.0, writer.sink())
}

// The linger tests run on paused time: the clock moves only when every task waits on a timer,
// so "written without waiting out a linger" is an exact check, not a race with the machine.

#[tokio::test(start_paused = true)]
async fn lines_formatted_while_the_writer_lingers_share_a_write() {
    let (out, mut writes) = recorder();
    let writer = LogWriter::start_with(out, QUEUE_SIZE, &Handle::current());
    let log = bare_log(&writer);

    // Idle: a lone line is written at once, not after a linger.
    let t = tokio::time::Instant::now();
    assert!(log.submit(&small_record(&log, 0)));
    wait_lines(&mut writes, 1).await;
    assert!(t.elapsed() < LogWriter::LINGER, "{:?}", t.elapsed());

    // The writer now lingers. Lines come one by one and the writer's thread is free between
    // them: a writer woken per line would write each apart.
    let t = tokio::time::Instant::now();
    for n in 1..=100 {
        assert!(log.submit(&small_record(&log, n)));
        tokio::task::yield_now().await;
    }
    let all = wait_lines(&mut writes, 101).await;
    let later = batches(&all[1..]);
    assert!(
        later.len() <= 3,
        "100 lines took {} writes: {later:?}",
        later.len()
    );
    // And they did not wait much longer than the linger.
    assert!(
        t.elapsed() <= LogWriter::LINGER * 2,
        "written after {:?}",
        t.elapsed()
    );
    assert_eq!(attempts_written(&all), (0..=100).collect::<Vec<_>>());
    assert_eq!(writer.stats().written(), 101);
    assert_eq!(writer.stats().dropped(), 0);
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_cuts_the_linger_short_and_writes_what_was_taken() {
    // A linger no shutdown timeout would sit out: only cutting it short writes the lines.
    let linger = Duration::from_secs(3600);
    let (out, mut writes) = recorder();
    let writer = LogWriter::start_with_linger(out, 1024, linger, &Handle::current());
    let log = bare_log(&writer);
    assert!(log.submit(&small_record(&log, 0)));
    wait_lines(&mut writes, 1).await;
    for n in 1..=50 {
        assert!(log.submit(&small_record(&log, n)));
        tokio::task::yield_now().await;
    }
    assert_eq!(lines_in(&writes.borrow()), 1, "the writer is lingering");

    let stats = Arc::clone(writer.stats());
    let t = tokio::time::Instant::now();
    writer.shutdown(Duration::from_secs(5)).await;
    // Under paused time a writer still asleep would have let the clock run to the timeout.
    assert!(t.elapsed() < Duration::from_millis(1), "{:?}", t.elapsed());
    let all = writes.borrow().clone();
    assert_eq!(attempts_written(&all), (0..=50).collect::<Vec<_>>());
    assert_eq!((stats.written(), stats.dropped()), (51, 0));
    assert!(
        !log.submit(&small_record(&log, 99)),
        "a stopped writer takes nothing"
    );
    assert_eq!((stats.written(), stats.dropped()), (51, 1));
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_written_while_it_comes_not_after_the_linger() {
    // A linger the test never sits out: only kicks (a shard past KICK_BYTES) write the burst.
    let linger = Duration::from_secs(3600);
    let (out, mut writes) = recorder();
    let writer = LogWriter::start_with_linger(out, QUEUE_SIZE, linger, &Handle::current());
    let log = bare_log(&writer);
    assert!(log.submit(&small_record(&log, 0)));
    wait_lines(&mut writes, 1).await;

    // The writer lingers now. A burst of about four kicks' worth, the worker yielding now and
    // then (as it does between requests).
    let mut one = Vec::new();
    write_json(&small_record(&log, 1), &mut one);
    let per_kick = (writer::KICK_BYTES / one.len() + 1) as u32;
    let burst = 4 * per_kick;
    let t = tokio::time::Instant::now();
    for n in 1..=burst {
        assert!(log.submit(&small_record(&log, n)));
        if n % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // All but the last kick's worth is out, and the clock has not moved: no linger waited.
    let all = wait_lines(&mut writes, 1 + 3 * per_kick as usize).await;
    assert_eq!(t.elapsed(), Duration::ZERO);
    let sizes = batches(&all[1..]);
    assert!((3..=4).contains(&sizes.len()), "{sizes:?}");
    assert!(
        sizes.iter().all(|&n| n <= (per_kick + 50) as usize),
        "a shard grew past its kick: {sizes:?} (kick every {per_kick} lines)"
    );

    let stats = Arc::clone(writer.stats());
    writer.shutdown(Duration::from_secs(5)).await;
    let all = writes.borrow().clone();
    assert_eq!(
        attempts_written(&all),
        (0..=burst as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        (stats.written(), stats.dropped()),
        (u64::from(burst) + 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_writer_parks_and_the_next_line_wakes_it() {
    let (out, mut writes) = recorder();
    let writer = LogWriter::start_with(out, QUEUE_SIZE, &Handle::current());
    let log = bare_log(&writer);
    assert!(writer.parked(), "a new writer waits for its first line");
    assert!(log.submit(&small_record(&log, 0)));
    wait_lines(&mut writes, 1).await;

    // After its linger the writer finds nothing and parks.
    tokio::time::sleep(LogWriter::LINGER * 3).await;
    assert!(writer.parked());
    let wakes = writer.wakes();

    // Seconds pass with nothing to write: no timer wakes it (one on the linger would have
    // woken it 500 times), and nothing is written.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(writer.wakes(), wakes);
    assert_eq!(writes.borrow().len(), 1);

    // The next line wakes it and is written at once.
    let t = tokio::time::Instant::now();
    assert!(log.submit(&small_record(&log, 1)));
    let all = wait_lines(&mut writes, 2).await;
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(writer.wakes(), wakes + 1);
    assert!(!writer.parked(), "it lingers after a write");
    assert_eq!(attempts_written(&all), vec![0, 1]);
    assert_eq!((writer.stats().written(), writer.stats().dropped()), (2, 0));
    writer.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn two_threads_submitting_at_once_lose_no_line() {
    const PER_THREAD: u32 = 10_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (out, mut writes) = recorder();
    // Room for both threads' lines even if they happen to share a shard (other tests' threads
    // take shard numbers too).
    let writer = LogWriter::start_with(out, 2 * PER_THREAD as usize, rt.handle());
    let log = bare_log(&writer);
    std::thread::scope(|s| {
        for thread in 0..2 {
            let log = &log;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    assert!(log.submit(&small_record(log, thread * 100_000 + i)));
                }
            });
        }
    });
    let all = rt.block_on(wait_lines(&mut writes, 2 * PER_THREAD as usize));
    let stats = Arc::clone(writer.stats());
    rt.block_on(writer.shutdown(Duration::from_secs(5)));

    // Every line whole (valid JSON), each thread's lines all there and in their order.
    let attempts = attempts_written(&all);
    assert_eq!(attempts.len(), 2 * PER_THREAD as usize);
    for thread in 0..2u64 {
        let mine: Vec<u64> = attempts
            .iter()
            .filter(|&&a| a / 100_000 == thread)
            .map(|&a| a % 100_000)
            .collect();
        assert_eq!(mine, (0..u64::from(PER_THREAD)).collect::<Vec<_>>());
    }
    assert_eq!(
        (stats.written(), stats.dropped(), stats.write_failed()),
        (2 * u64::from(PER_THREAD), 0, 0)
    );
}

#[tokio::test]
async fn a_shard_poisoned_halfway_through_a_line_keeps_its_whole_lines() {
    let (out, mut writes) = recorder();
    let writer = LogWriter::start_with_linger(
        out,
        QUEUE_SIZE,
        Duration::from_secs(3600),
        &Handle::current(),
    );
    let log = bare_log(&writer);
    // The first line wakes the writer, which then lingers: the second stays in the shard.
    assert!(log.submit(&small_record(&log, 0)));
    wait_lines(&mut writes, 1).await;
    assert!(log.submit(&small_record(&log, 1)));
    writer.poison_own_shard(b"{\"start_time\":\"20");
    assert!(log.submit(&small_record(&log, 2)));
    let stats = Arc::clone(writer.stats());
    writer.shutdown(Duration::from_secs(5)).await;
    assert_eq!(attempts_written(&writes.borrow()), vec![0, 1, 2]);
    assert_eq!((stats.written(), stats.dropped()), (3, 0));
}

#[test]
fn lines_racing_the_writer_into_its_park_are_not_stranded() {
    // No linger: after each write the writer sweeps again at once, finds nothing and parks,
    // while this thread, which spins until it sees the write, submits its next line after a
    // varying delay: sometimes before the writer's sweep, sometimes during its park. A line
    // added just before the writer announced its park must be found by its second look; one
    // added after must wake it. A stranded line shows as a wait that times out. (The window is
    // a few instructions wide: without the second look this fails about every other run on a
    // 2-CPU machine, so it guards the protocol without proving it; `run` has the argument.)
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (out, writes) = recorder();
    let writer = LogWriter::start_with_linger(out, 16, Duration::ZERO, rt.handle());
    let log = bare_log(&writer);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut seen = 0;
    for n in 0..20_000 {
        assert!(log.submit(&small_record(&log, n)));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let w = writes.borrow();
            if lines_in(&w[seen..]) > 0 {
                seen = w.len();
                break;
            }
            drop(w);
            assert!(Instant::now() < deadline, "line {n} was stranded");
            std::thread::yield_now();
        }
        for _ in 0..rng.u32(..2000) {
            std::hint::spin_loop();
        }
    }
    let stats = Arc::clone(writer.stats());
    rt.block_on(writer.shutdown(Duration::from_secs(5)));
    assert_eq!(
        attempts_written(&writes.borrow()),
        (0..20_000).collect::<Vec<_>>()
    );
    assert_eq!((stats.written(), stats.dropped()), (20_000, 0));
}

#[test]
fn the_word_at_a_time_plain_check_agrees_with_the_table() {
    let by_table = |b: &[u8]| {
        b.iter()
            .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    };
    // Every byte value at every position of a 16-byte plain string (both words and the tail).
    let base = *b"abcdefghijklmnopq";
    for pos in 0..base.len() {
        for value in 0..=255u8 {
            let mut s = base;
            s[pos] = value;
            assert_eq!(
                super::format::plain(&s),
                by_table(&s),
                "byte {value:#04x} at {pos}"
            );
        }
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let len = rng.usize(0..40);
        // Mostly printable, sometimes anything.
        let s: Vec<u8> = (0..len)
            .map(|_| {
                if rng.u8(..) < 8 {
                    rng.u8(..)
                } else {
                    rng.u8(0x20..0x7f)
                }
            })
            .collect();
        assert_eq!(super::format::plain(&s), by_table(&s), "{s:?}");
    }
}
