//! `/metrics` as a monitoring system reads it: the exposition passes a strict OpenMetrics
//! parser that is not ours (Python `prometheus_client.openmetrics.parser`,
//! `tests/openmetrics_check.py`), and its counters equal what the test sent, exactly.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tern_e2e::{Proxy, TestBackend, http1_client, http2_client, wait_for};

const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openmetrics_check.py");

/// One sample: name and labels (sorted) → value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses `text` with the strict parser; panics with the parser's message if it refuses it.
fn parse_strictly(text: &str) -> Samples {
    let mut child = Command::new("python3")
        .arg(CHECK)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs prometheus_client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing the exposition");
    let out = child.wait_with_output().expect("the checker finishes");
    assert!(
        out.status.success(),
        "the strict OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON sample");
            let mut labels: Vec<(String, String)> = v["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            labels.sort();
            let name = v["name"].as_str().expect("name").to_owned();
            ((name, labels), v["value"].as_f64().expect("a number"))
        })
        .collect()
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    samples.get(&(name.to_owned(), want)).copied()
}

#[tokio::test]
async fn metrics_pass_a_strict_parser_and_count_exactly_what_was_sent() {
    let app = TestBackend::echo("app").await;
    let failing = TestBackend::builder("failing").status(503).start().await;
    let proxy = Proxy::start(format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: app
        matches: [{{path: {{value: /app}}}}]
        backends: [{{name: app}}]
      - name: failing
        matches: [{{path: {{value: /failing}}}}]
        backends: [{{name: failing}}]
backends:
  - {app}
  - {failing}
"#,
        app = app.yaml(),
        failing = failing.yaml()
    ))
    .await;
    let send = |path: &'static str, h2: bool| {
        let url = proxy.url("web", path);
        async move {
            let client = if h2 { http2_client() } else { http1_client() };
            client.send("GET", &url, &[], "").await.status
        }
    };
    for i in 0..7 {
        assert_eq!(send("/app/x", i % 2 == 0).await, 200);
    }
    for _ in 0..3 {
        assert_eq!(send("/failing", false).await, 503);
    }
    for _ in 0..2 {
        assert_eq!(send("/nowhere", false).await, 404);
    }

    // Counters are updated as each response is sent; read until the last one shows.
    let mut samples = Samples::new();
    wait_for(
        "all 12 requests in /metrics",
        Duration::from_secs(5),
        async || {
            samples = parse_strictly(&proxy.metrics().await);
            get(
                &samples,
                "tern_requests_total",
                &[
                    ("listener", "web"),
                    ("route", ""),
                    ("backend", ""),
                    ("status_class", "4xx"),
                ],
            ) == Some(2.0)
        },
    )
    .await;
    let l = ("listener", "web");
    let requests = |route, backend, class| {
        get(
            &samples,
            "tern_requests_total",
            &[
                l,
                ("route", route),
                ("backend", backend),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(requests("app", "app", "2xx"), Some(7.0));
    assert_eq!(requests("app", "app", "5xx"), Some(0.0));
    assert_eq!(requests("failing", "failing", "5xx"), Some(3.0));
    assert_eq!(requests("", "", "4xx"), Some(2.0));
    // Latency histograms: one observation per answered request; per try upstream.
    let count =
        |name, route, backend| get(&samples, name, &[l, ("route", route), ("backend", backend)]);
    assert_eq!(
        count("tern_request_duration_seconds_count", "app", "app"),
        Some(7.0)
    );
    assert_eq!(
        count("tern_upstream_duration_seconds_count", "app", "app"),
        Some(7.0)
    );
    assert_eq!(
        count("tern_upstream_duration_seconds_count", "failing", "failing"),
        Some(3.0)
    );
    assert_eq!(
        count("tern_request_duration_seconds_count", "", ""),
        Some(2.0)
    );
    assert_eq!(
        get(
            &samples,
            "tern_upstream_attempts_total",
            &[("backend", "app")]
        ),
        Some(7.0)
    );
    assert_eq!(
        get(
            &samples,
            "tern_upstream_attempts_total",
            &[("backend", "failing")]
        ),
        Some(3.0)
    );
    assert_eq!(get(&samples, "tern_requests_in_flight", &[l]), Some(0.0));
    assert_eq!(get(&samples, "tern_config_version", &[]), Some(1.0));
    assert_eq!(
        get(&samples, "tern_config_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    // Process metrics, unprefixed as every Prometheus client exports them.
    let rss = get(&samples, "process_resident_memory_bytes", &[]).expect("process RSS");
    assert!(rss > 1e6 && rss < 1e9, "RSS {rss}");
    assert!(get(&samples, "process_open_fds", &[]).is_some_and(|n| n >= 3.0));
    assert!(get(&samples, "process_cpu_seconds_total", &[]).is_some());
    assert!(get(&samples, "process_start_time_seconds", &[]).is_some_and(|t| t > 1.7e9));
    // Bounded cardinality: no path or host values became labels.
    assert!(
        samples.keys().all(|(_, labels)| labels
            .iter()
            .all(|(_, v)| !v.contains("nowhere") && !v.starts_with('/'))),
        "a request value leaked into a label"
    );
}

/// gRPC responses are counted by `grpc-status`: from the trailers of a streamed response, and
/// from the headers of a trailers-only one (here the proxy's own, for an injected abort).
#[tokio::test]
async fn grpc_responses_are_counted_by_status() {
    let grpc = TestBackend::builder("grpc")
        .http2()
        .header("content-type", "application/grpc")
        .response_trailers(&[("grpc-status", "0")])
        .start()
        .await;
    let proxy = Proxy::start(format!(
        r#"
listeners:
  - name: rpc
    address: 127.0.0.1:0
    protocol: http2
    routes:
      - name: down
        matches: [{{path: {{value: /down}}}}]
        fault: {{abort: {{percent: 100, status: 503}}}}
        backends: [{{name: grpc}}]
      - name: svc
        backends: [{{name: grpc}}]
backends:
  - {}
"#,
        grpc.yaml()
    ))
    .await;
    let grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let client = http2_client();
    for _ in 0..3 {
        let r = client
            .send(
                "POST",
                &proxy.url("rpc", "/pkg.Svc/Call"),
                &grpc_headers,
                "x",
            )
            .await;
        assert_eq!(r.trailer("grpc-status"), Some("0"));
    }
    for _ in 0..2 {
        let r = client
            .send(
                "POST",
                &proxy.url("rpc", "/down/pkg.Svc/Call"),
                &grpc_headers,
                "x",
            )
            .await;
        assert_eq!(r.header("grpc-status"), Some("14"));
    }
    let mut samples = Samples::new();
    wait_for(
        "the gRPC statuses in /metrics",
        Duration::from_secs(5),
        async || {
            samples = parse_strictly(&proxy.metrics().await);
            let ok = [
                ("listener", "rpc"),
                ("route", "svc"),
                ("backend", "grpc"),
                ("grpc_status", "OK"),
            ];
            get(&samples, "tern_grpc_responses_total", &ok) == Some(3.0)
        },
    )
    .await;
    let unavailable = [
        ("listener", "rpc"),
        ("route", "down"),
        ("backend", ""),
        ("grpc_status", "UNAVAILABLE"),
    ];
    assert_eq!(
        get(&samples, "tern_grpc_responses_total", &unavailable),
        Some(2.0)
    );
    // Only statuses that occurred are exported.
    let series = samples
        .keys()
        .filter(|(n, _)| n == "tern_grpc_responses_total")
        .count();
    assert_eq!(series, 2, "{samples:?}");
}

/// Opaque TCP is counted in bytes each way.
#[tokio::test]
async fn tcp_bytes_are_counted_each_way() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers every byte it reads with two.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = upstream.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let doubled: Vec<u8> = buf[..n].iter().flat_map(|b| [*b, *b]).collect();
                    if s.write_all(&doubled).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(format!(
        "listeners:\n  - name: raw\n    address: 127.0.0.1:0\n    protocol: tcp\n    tcp_backend: up\nbackends:\n  - {{name: up, endpoints: [\"{addr}\"]}}\n"
    ))
    .await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr("raw"))
        .await
        .expect("connect");
    conn.write_all(&[7u8; 1000]).await.expect("write");
    let mut back = vec![0u8; 2000];
    conn.read_exact(&mut back).await.expect("2000 bytes back");
    drop(conn);
    let mut samples = Samples::new();
    wait_for(
        "the connection's bytes in /metrics",
        Duration::from_secs(5),
        async || {
            samples = parse_strictly(&proxy.metrics().await);
            get(
                &samples,
                "tern_tcp_bytes_total",
                &[("listener", "raw"), ("direction", "sent")],
            ) == Some(2000.0)
        },
    )
    .await;
    let received = [("listener", "raw"), ("direction", "received")];
    assert_eq!(
        get(&samples, "tern_tcp_bytes_total", &received),
        Some(1000.0)
    );
}
