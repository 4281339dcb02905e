//! Observability end to end (issue 5), against the contract in `docs/observability.md`: the
//! real `tern-proxy` binary exporting spans to a real OTLP receiver (gRPC and HTTP/protobuf),
//! writing its access log to a file, and passing request ids and trace headers to an echo
//! backend that reports what it received.
//!
//! Covers: one trace across two proxies (CLIENT then SERVER span, parent chain down to the
//! backend's `traceparent`, span attributes, export counters); error spans; propagation (B3
//! multi and single in → B3 on, 64-bit B3 ids; W3C in → W3C on, `tracestate` kept; nothing in
//! → a new trace; unsampled stays unsampled, W3C and B3); a down and a black-holing collector
//! (no failed request, no request waits, drops counted); the access log line (request id, the
//! trace id the receiver saw, business headers plain / hashed / dropped, field order, response
//! flags NR, UF, UT, RL, UO, lines counted); request ids (kept, generated, replaced when
//! malformed, echoed, passed upstream, per-listener header).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tern_e2e::otlp::{OtlpProtocol, SpanKind, SpanStatusCode as SpanStatus};
use tern_e2e::trace::{is_hex_id, is_uuid_v4};
use tern_e2e::{
    ANY_PORT, AccessLogFile, BlackHole, Echo, OtlpReceiver, Proxy, ReceivedSpan, TestBackend,
    TestResponse, TraceParent, down_endpoint, free_addr, http1_client, http2_client, wait_for,
    wait_for_value,
};
use tokio::task::JoinSet;

/// How long something the proxy does off the request path (a span exported with a 100 ms
/// batch delay, a log line written) may take to show up: generous for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// A caller's trace context, as an instrumented application would send it.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The top-level `tracing` block: every new trace sampled, batches sent after 100 ms.
fn tracing_yaml(otlp: &str, service: &str) -> String {
    format!(
        "tracing:\n  otlp: {otlp}\n  sampling_ratio: 1\n  batch_delay: 100ms\n  \
         service_name: {service}\n"
    )
}

/// One proxy: `top` (top-level blocks, e.g. [`tracing_yaml`]), listener `name` with the extra
/// `fields` (YAML lines indented by four spaces) and one route `route` sending everything to
/// `backend`, which is the only backend entry.
fn one_hop(top: &str, name: &str, fields: &str, route: &str, backend: &str) -> String {
    format!(
        "{top}listeners:\n  - name: {name}\n    address: {ANY_PORT}\n{fields}    routes:\n      \
         - {{name: {route}, backends: [{{name: app}}]}}\nbackends:\n  - {backend}\n"
    )
}

/// One hop (listener `web`, route `app`) to `app`, traced to `otlp` as service `shop` and
/// logged to `log`.
fn logged_and_traced(otlp: &str, log: &AccessLogFile, app: SocketAddr) -> String {
    let fields = format!(
        "    access_log: {{path: {:?}}}\n",
        log.path().display().to_string()
    );
    one_hop(
        &tracing_yaml(otlp, "shop"),
        "web",
        &fields,
        "app",
        &app_at(app),
    )
}

/// A backend entry named `app` pointing at `addr`.
fn app_at(addr: SocketAddr) -> String {
    format!("{{name: app, endpoints: [\"{addr}\"]}}")
}

/// The request as the echo backend saw it; panics with the response when it is not an echo.
fn echo(response: &TestResponse) -> Echo {
    assert_eq!(response.status, 200, "{}", response.text());
    response.echo()
}

/// The `traceparent` the backend received, parsed; panics when absent or malformed.
fn traceparent_at_backend(echo: &Echo) -> TraceParent {
    let all = echo.header_all("traceparent");
    assert_eq!(all.len(), 1, "traceparent at the backend: {all:?}");
    TraceParent::parse(all[0])
        .unwrap_or_else(|| panic!("the backend got a malformed traceparent: {:?}", all[0]))
}

/// Asserts none of the B3 headers reached the backend.
fn assert_no_b3(echo: &Echo) {
    for name in [
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        assert_eq!(
            echo.header(name),
            None,
            "{name} reached the backend: {:#}",
            echo.0["headers"]
        );
    }
}

/// The one span of `kind` among `spans`.
fn span_of_kind(spans: &[ReceivedSpan], kind: SpanKind) -> &ReceivedSpan {
    let matching: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind() == kind).collect();
    assert_eq!(
        matching.len(),
        1,
        "want one {kind:?} span, got: {:#?}",
        spans
            .iter()
            .map(|s| (s.name(), s.kind(), s.span_id()))
            .collect::<Vec<_>>()
    );
    matching[0]
}

/// What a successful hop's span must say (docs/observability.md, "Spans").
struct HopAttrs<'a> {
    listener: &'a str,
    route: &'a str,
    backend: &'a str,
    endpoint: SocketAddr,
    path: &'a str,
    host: &'a str,
    port: Option<i64>,
    protocol: &'a str,
}

fn assert_hop_attrs(span: &ReceivedSpan, want: &HopAttrs<'_>) {
    let ctx = format!(
        "span {:?} with attributes {:#?}",
        span.name(),
        span.span.attributes
    );
    assert_eq!(span.name(), format!("GET {}", want.route), "{ctx}");
    assert_eq!(span.str_attr("http.request.method"), Some("GET"), "{ctx}");
    assert_eq!(span.str_attr("url.path"), Some(want.path), "{ctx}");
    assert_eq!(span.str_attr("url.scheme"), Some("http"), "{ctx}");
    assert_eq!(
        span.int_attr("http.response.status_code"),
        Some(200),
        "{ctx}"
    );
    assert_eq!(span.str_attr("server.address"), Some(want.host), "{ctx}");
    assert_eq!(span.int_attr("server.port"), want.port, "{ctx}");
    assert_eq!(
        span.str_attr("network.protocol.version"),
        Some(want.protocol),
        "{ctx}"
    );
    assert_eq!(span.str_attr("tern.listener"), Some(want.listener), "{ctx}");
    assert_eq!(span.str_attr("tern.route"), Some(want.route), "{ctx}");
    assert_eq!(span.str_attr("tern.backend"), Some(want.backend), "{ctx}");
    let endpoint = want.endpoint.to_string();
    assert_eq!(
        span.str_attr("tern.endpoint"),
        Some(endpoint.as_str()),
        "{ctx}"
    );
    assert_eq!(span.int_attr("tern.retries"), Some(0), "{ctx}");
    assert_eq!(span.attr("tern.error"), None, "{ctx}");
    assert_eq!(span.attr("error.type"), None, "{ctx}");
    assert_eq!(span.status_code(), SpanStatus::Unset, "{ctx}");
    assert!(
        span.span.end_time_unix_nano >= span.span.start_time_unix_nano
            && span.span.start_time_unix_nano > 0,
        "{ctx}: start {} end {}",
        span.span.start_time_unix_nano,
        span.span.end_time_unix_nano
    );
}

/// Whether a comma-separated `flags` field holds `code`.
fn has_flag(line: &Value, code: &str) -> bool {
    line["flags"]
        .as_str()
        .is_some_and(|flags| flags.split(',').any(|f| f == code))
}

/// The sum of a metric over all its series, waiting until it appears.
async fn metric_sum(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    wait_for_value(&format!("metric {name}{labels:?}"), DEADLINE, async || {
        proxy.metric(name, labels).await
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// One trace across two proxies
// ---------------------------------------------------------------------------------------------

/// caller → client sidecar (`span_kind: client`) → server sidecar (`span_kind: server`) →
/// backend: both spans reach the receiver in one trace; the client span's parent is the
/// caller's span (or none when the caller sent nothing), the server span's parent is the
/// client span, and the backend's `traceparent` names the server span. The request id the
/// client sidecar made is the one the backend and the caller see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_proxies_is_one_trace_with_a_client_and_a_server_span() {
    let receiver = OtlpReceiver::grpc().await;
    let app = TestBackend::echo("app").await;
    let server = Proxy::start(one_hop(
        &tracing_yaml(&receiver.yaml(), "server-sidecar"),
        "inbound",
        "    tracing: {span_kind: server}\n    request_id: {header: x-request-id}\n",
        "to-app",
        &app_at(app.addr()),
    ))
    .await;
    let client = Proxy::start(one_hop(
        &tracing_yaml(&receiver.yaml(), "client-sidecar"),
        "outbound",
        "    tracing: {span_kind: client}\n    request_id: {header: x-request-id}\n",
        "to-server",
        &app_at(server.addr("inbound")),
    ))
    .await;
    let http = http1_client();
    let url = client.url("outbound", "/orders/42?token=secret");
    let host = ("host", "orders.shop.test:8080");

    for incoming in [Some(CALLER_SPAN), None] {
        let traceparent = incoming.map(|span| format!("00-{CALLER_TRACE}-{span}-01"));
        let mut headers = vec![host];
        if let Some(tp) = &traceparent {
            headers.push(("traceparent", tp.as_str()));
        }
        let response = http.send("GET", &url, &headers, "").await;
        let seen = echo(&response);
        let tp = traceparent_at_backend(&seen);
        assert!(tp.sampled(), "{tp:?}");
        if incoming.is_some() {
            assert_eq!(tp.trace_id, CALLER_TRACE, "the trace id changed on the way");
        }

        let spans = receiver.wait_for_trace(&tp.trace_id, 2, DEADLINE).await;
        assert_eq!(spans.len(), 2, "one span per hop: {spans:#?}");
        let client_span = span_of_kind(&spans, SpanKind::Client);
        let server_span = span_of_kind(&spans, SpanKind::Server);
        assert_eq!(
            client_span.parent_span_id().as_deref(),
            incoming,
            "the client span's parent is the caller's span (or none)"
        );
        assert_eq!(
            server_span.parent_span_id(),
            Some(client_span.span_id()),
            "the server span's parent is the client span"
        );
        assert_eq!(
            tp.parent_id,
            server_span.span_id(),
            "the backend's parent is the server span"
        );
        assert_ne!(client_span.span_id(), server_span.span_id());
        assert_eq!(client_span.service_name.as_deref(), Some("client-sidecar"));
        assert_eq!(server_span.service_name.as_deref(), Some("server-sidecar"));

        let common = HopAttrs {
            listener: "outbound",
            route: "to-server",
            backend: "app",
            endpoint: server.addr("inbound"),
            path: "/orders/42",
            host: "orders.shop.test",
            port: Some(8080),
            protocol: "1.1",
        };
        assert_hop_attrs(client_span, &common);
        assert_hop_attrs(
            server_span,
            &HopAttrs {
                listener: "inbound",
                route: "to-app",
                endpoint: app.addr(),
                ..common
            },
        );
        // The client span is a child of the caller's, so it began after the caller did; both
        // hops overlap in time: the server span lies within the client span.
        assert!(
            server_span.span.start_time_unix_nano >= client_span.span.start_time_unix_nano
                && server_span.span.end_time_unix_nano <= client_span.span.end_time_unix_nano,
            "the server hop lies within the client hop"
        );

        let id = response
            .header("x-request-id")
            .expect("the request id echoed to the caller");
        assert!(is_uuid_v4(id), "generated request id {id:?}");
        assert_eq!(
            seen.header_all("x-request-id"),
            vec![id],
            "the backend sees the id the caller got"
        );
    }
    assert_eq!(receiver.spans().len(), 4, "no other spans were exported");
    for (name, proxy) in [("client", &client), ("server", &server)] {
        wait_for(
            &format!("tern_spans_exported_total == 2 on the {name} sidecar"),
            DEADLINE,
            async || proxy.metric("tern_spans_exported_total", &[]).await == Some(2.0),
        )
        .await;
        assert_eq!(
            proxy
                .metric("tern_spans_dropped_total", &[])
                .await
                .unwrap_or(0.0),
            0.0,
            "{name} sidecar dropped spans"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Propagation formats and sampling (one proxy)
// ---------------------------------------------------------------------------------------------

/// A single sidecar (`span_kind: server`, default propagation) in front of an echo backend,
/// exporting to `receiver`.
async fn sidecar(receiver: &OtlpReceiver, app: &TestBackend) -> Proxy {
    Proxy::start(one_hop(
        &tracing_yaml(&receiver.yaml(), "sidecar"),
        "inbound",
        "    tracing: {span_kind: server}\n",
        "to-app",
        &app_at(app.addr()),
    ))
    .await
}

/// B3 multi in → `x-b3-*` go on with the same trace id, our span as `x-b3-spanid` and the
/// caller's as `x-b3-parentspanid`, plus `traceparent`; B3 single in → `b3` goes on (not the
/// multi form); a 64-bit B3 trace id stays 16 digits in B3 and is zero-padded in W3C and in
/// the exported span. Exported over OTLP/HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_in_b3_goes_on() {
    let receiver = OtlpReceiver::http().await;
    assert_eq!(receiver.protocol(), OtlpProtocol::Http);
    let app = TestBackend::echo("app").await;
    let proxy = sidecar(&receiver, &app).await;
    let http = http1_client();
    let url = proxy.url("inbound", "/b3");

    // Multi-header, 128-bit.
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let caller = "a2fb4a1d1a96d312";
    let seen = echo(
        &http
            .send(
                "GET",
                &url,
                &[
                    ("x-b3-traceid", trace),
                    ("x-b3-spanid", caller),
                    ("x-b3-sampled", "1"),
                ],
                "",
            )
            .await,
    );
    let span = receiver.wait_for_trace(trace, 1, DEADLINE).await.remove(0);
    assert_eq!(span.parent_span_id().as_deref(), Some(caller));
    assert_eq!(span.kind(), SpanKind::Server);
    let ours = span.span_id();
    let headers = &seen.0["headers"];
    assert_eq!(seen.header_all("x-b3-traceid"), vec![trace], "{headers:#}");
    assert_eq!(
        seen.header_all("x-b3-spanid"),
        vec![ours.as_str()],
        "{headers:#}"
    );
    assert_eq!(
        seen.header_all("x-b3-parentspanid"),
        vec![caller],
        "{headers:#}"
    );
    assert_eq!(seen.header_all("x-b3-sampled"), vec!["1"], "{headers:#}");
    assert_eq!(seen.header("b3"), None, "the single form was not asked for");
    let tp = traceparent_at_backend(&seen);
    assert_eq!(
        (tp.trace_id.as_str(), tp.parent_id.as_str()),
        (trace, ours.as_str())
    );
    assert!(tp.sampled());

    // Single header.
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let caller = "e457b5a2e4d86bd1";
    let seen = echo(
        &http
            .send("GET", &url, &[("b3", &format!("{trace}-{caller}-1"))], "")
            .await,
    );
    let span = receiver.wait_for_trace(trace, 1, DEADLINE).await.remove(0);
    assert_eq!(span.parent_span_id().as_deref(), Some(caller));
    let ours = span.span_id();
    let b3 = seen.header_all("b3");
    assert_eq!(b3.len(), 1, "{:#}", seen.0["headers"]);
    let fields: Vec<&str> = b3[0].split('-').collect();
    assert!(
        fields.len() >= 3
            && fields[..3] == [trace, ours.as_str(), "1"]
            && fields.get(3).is_none_or(|parent| *parent == caller),
        "b3 at the backend: {:?} (want {trace}-{ours}-1[-{caller}])",
        b3[0]
    );
    assert_eq!(
        seen.header("x-b3-traceid"),
        None,
        "the multi form was not asked for"
    );
    assert_eq!(traceparent_at_backend(&seen).trace_id, trace);

    // Multi-header, 64-bit trace id.
    let short = "48485a3953bb6124";
    let seen = echo(
        &http
            .send(
                "GET",
                &url,
                &[
                    ("x-b3-traceid", short),
                    ("x-b3-spanid", "1d1a96d312a2fb4a"),
                    ("x-b3-sampled", "1"),
                ],
                "",
            )
            .await,
    );
    let padded = format!("0000000000000000{short}");
    receiver.wait_for_trace(&padded, 1, DEADLINE).await;
    assert_eq!(seen.header_all("x-b3-traceid"), vec![short]);
    assert_eq!(traceparent_at_backend(&seen).trace_id, padded);
}

/// W3C in → W3C goes on: the same trace id, our span as the parent, sampled, `tracestate`
/// unchanged, and no B3 headers; the exported span's parent is the caller's span. Over
/// HTTP/1.1 and h2c (`network.protocol.version` 1.1 and 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_in_w3c_goes_on() {
    let receiver = OtlpReceiver::grpc().await;
    let app = TestBackend::echo("app").await;
    let proxy = sidecar(&receiver, &app).await;
    let url = proxy.url("inbound", "/w3c");
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

    for (client, trace, version) in [
        (http1_client(), "0af7651916cd43dd8448eb211c80319c", "1.1"),
        (http2_client(), "5c1c63257de34c67ba5d5a0e1f3a0b1c", "2"),
    ] {
        let traceparent = format!("00-{trace}-{CALLER_SPAN}-01");
        let seen = echo(
            &client
                .send(
                    "GET",
                    &url,
                    &[("traceparent", &traceparent), ("tracestate", tracestate)],
                    "",
                )
                .await,
        );
        let span = receiver.wait_for_trace(trace, 1, DEADLINE).await.remove(0);
        assert_eq!(span.parent_span_id().as_deref(), Some(CALLER_SPAN));
        assert_eq!(span.str_attr("network.protocol.version"), Some(version));
        let tp = traceparent_at_backend(&seen);
        assert_eq!(tp.trace_id, trace);
        assert_eq!(
            tp.parent_id,
            span.span_id(),
            "our span is the backend's parent"
        );
        assert_ne!(tp.parent_id, CALLER_SPAN);
        assert_eq!(tp.flags, "01");
        assert_eq!(seen.header_all("tracestate"), vec![tracestate]);
        assert_no_b3(&seen);
    }
}

/// Nothing in → each request starts its own trace: a fresh trace id, sampled at ratio 1, a
/// root span (no parent) that is the backend's parent; W3C only goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_starts_a_new_trace() {
    let receiver = OtlpReceiver::grpc().await;
    let app = TestBackend::echo("app").await;
    let proxy = sidecar(&receiver, &app).await;
    let http = http1_client();

    let mut traces = Vec::new();
    for _ in 0..2 {
        let seen = echo(&http.get(&proxy.url("inbound", "/new")).await);
        let tp = traceparent_at_backend(&seen);
        assert!(is_hex_id(&tp.trace_id, 32), "{tp:?}");
        assert_eq!(tp.flags, "01", "sampling_ratio 1 samples every new trace");
        assert_no_b3(&seen);
        assert_eq!(seen.header("tracestate"), None);
        let span = receiver
            .wait_for_trace(&tp.trace_id, 1, DEADLINE)
            .await
            .remove(0);
        assert_eq!(
            span.parent_span_id(),
            None,
            "a new trace starts with a root span"
        );
        assert_eq!(span.span_id(), tp.parent_id);
        traces.push(tp.trace_id);
    }
    assert_ne!(traces[0], traces[1], "two requests, two traces");
}

/// An unsampled incoming trace stays unsampled: the backend gets the same trace id with
/// `sampled` off (W3C flags `00`, B3 `x-b3-sampled: 0`) and a new parent id, and no span is
/// exported. Absence is shown with a marker: a sampled request sent after the unsampled ones
/// is exported, and it is the only span. Spans are queued when their exchange ends, in
/// order, so a span of the earlier requests would have been queued before the marker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_stays_unsampled() {
    let receiver = OtlpReceiver::grpc().await;
    let app = TestBackend::echo("app").await;
    let proxy = sidecar(&receiver, &app).await;
    let http = http1_client();
    let url = proxy.url("inbound", "/unsampled");

    let trace = "11111111111111111111111111111111";
    let seen = echo(
        &http
            .send(
                "GET",
                &url,
                &[("traceparent", &format!("00-{trace}-{CALLER_SPAN}-00"))],
                "",
            )
            .await,
    );
    let tp = traceparent_at_backend(&seen);
    assert_eq!(tp.trace_id, trace);
    assert_eq!(tp.flags, "00", "the unsampled decision is carried on");
    assert!(is_hex_id(&tp.parent_id, 16));
    assert_ne!(
        tp.parent_id, CALLER_SPAN,
        "this hop still has its own span id"
    );

    let b3_trace = "22222222222222222222222222222222";
    let seen = echo(
        &http
            .send(
                "GET",
                &url,
                &[
                    ("x-b3-traceid", b3_trace),
                    ("x-b3-spanid", "a2fb4a1d1a96d312"),
                    ("x-b3-sampled", "0"),
                ],
                "",
            )
            .await,
    );
    assert_eq!(seen.header_all("x-b3-sampled"), vec!["0"]);
    assert_eq!(seen.header_all("x-b3-traceid"), vec![b3_trace]);
    let tp = traceparent_at_backend(&seen);
    assert_eq!((tp.trace_id.as_str(), tp.flags.as_str()), (b3_trace, "00"));

    let marker = "33333333333333333333333333333333";
    echo(
        &http
            .send(
                "GET",
                &url,
                &[("traceparent", &format!("00-{marker}-{CALLER_SPAN}-01"))],
                "",
            )
            .await,
    );
    receiver.wait_for_trace(marker, 1, DEADLINE).await;
    let spans = receiver.spans();
    assert_eq!(
        spans.iter().map(ReceivedSpan::trace_id).collect::<Vec<_>>(),
        vec![marker.to_owned()],
        "only the sampled request has a span"
    );
}

/// The span of an answer the proxy made itself carries its error code (`tern.error`,
/// `error.type`) and an error status: a connect failure (502, with the endpoint it tried) and
/// no route (404, span named by the method alone, no `tern.route`). A 5xx from the backend
/// makes the SERVER span an error with `error.type` the status code, and no `tern.error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_failed_requests_carry_the_error() {
    let receiver = OtlpReceiver::grpc().await;
    let failing = TestBackend::builder("failing").status(503).start().await;
    let closed = free_addr();
    let config = format!(
        "{}listeners:\n  - name: inbound\n    address: {ANY_PORT}\n    \
         tracing: {{span_kind: server}}\n    routes:\n      \
         - {{name: uf, matches: [{{path: {{type: PathPrefix, value: /uf}}}}], \
         backends: [{{name: closed}}]}}\n      \
         - {{name: fail, matches: [{{path: {{type: PathPrefix, value: /fail}}}}], \
         backends: [{{name: failing}}]}}\nbackends:\n  \
         - {{name: closed, endpoints: [\"{closed}\"]}}\n  - {}\n",
        tracing_yaml(&receiver.yaml(), "sidecar"),
        failing.yaml(),
    );
    let proxy = Proxy::start(config).await;
    let http = http1_client();
    let send = async |path: &str, trace: &str| {
        let traceparent = format!("00-{trace}-{CALLER_SPAN}-01");
        let response = http
            .send(
                "GET",
                &proxy.url("inbound", path),
                &[("traceparent", &traceparent)],
                "",
            )
            .await;
        let span = receiver.wait_for_trace(trace, 1, DEADLINE).await.remove(0);
        (response.status.as_u16(), span)
    };

    let (status, span) = send("/uf", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1").await;
    let ctx = format!("{:#?}", span.span);
    assert_eq!(status, 502);
    assert_eq!(span.name(), "GET uf", "{ctx}");
    assert_eq!(span.str_attr("tern.error"), Some("connect-failed"), "{ctx}");
    assert_eq!(span.str_attr("error.type"), Some("connect-failed"), "{ctx}");
    assert_eq!(
        span.int_attr("http.response.status_code"),
        Some(502),
        "{ctx}"
    );
    assert_eq!(span.str_attr("tern.route"), Some("uf"), "{ctx}");
    assert_eq!(span.str_attr("tern.backend"), Some("closed"), "{ctx}");
    let closed = closed.to_string();
    assert_eq!(
        span.str_attr("tern.endpoint"),
        Some(closed.as_str()),
        "{ctx}"
    );
    assert_eq!(span.status_code(), SpanStatus::Error, "{ctx}");

    let (status, span) = send("/nowhere", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2").await;
    let ctx = format!("{:#?}", span.span);
    assert_eq!(status, 404);
    assert_eq!(span.name(), "GET", "no route: the method alone; {ctx}");
    assert_eq!(span.str_attr("tern.error"), Some("no-route"), "{ctx}");
    assert_eq!(span.attr("tern.route"), None, "{ctx}");
    assert_eq!(span.attr("tern.backend"), None, "{ctx}");
    assert_eq!(
        span.int_attr("http.response.status_code"),
        Some(404),
        "{ctx}"
    );
    assert_eq!(span.status_code(), SpanStatus::Error, "{ctx}");

    let (status, span) = send("/fail", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa3").await;
    let ctx = format!("{:#?}", span.span);
    assert_eq!(status, 503);
    assert_eq!(span.attr("tern.error"), None, "the backend answered; {ctx}");
    assert_eq!(span.str_attr("error.type"), Some("503"), "{ctx}");
    assert_eq!(span.str_attr("tern.backend"), Some("failing"), "{ctx}");
    assert_eq!(span.status_code(), SpanStatus::Error, "{ctx}");
}

// ---------------------------------------------------------------------------------------------
// A collector that is down or never answers
// ---------------------------------------------------------------------------------------------

/// Requests in the burst, and how many run at once.
const BURST: usize = 2_000;
const CONCURRENCY: usize = 16;

/// The export deadline in these tests: a request that waited for an export would take at
/// least this long, far above [`MAX_LATENCY`].
const EXPORT_TIMEOUT: &str = "3s";
/// The slowest any request of the burst may be, and the 99th percentile: generous bounds for
/// a debug build on a loaded 2-core machine, far below [`EXPORT_TIMEOUT`].
const MAX_LATENCY: Duration = Duration::from_secs(1);
const P99_LATENCY: Duration = Duration::from_millis(250);

/// A proxy exporting to `endpoint` with a queue of 16 spans, so a dead collector makes it
/// drop; every request sampled.
async fn proxy_with_collector(endpoint: &str, app: &TestBackend) -> Proxy {
    let top = format!(
        "tracing:\n  otlp: {{endpoint: \"{endpoint}\", protocol: grpc, timeout: {EXPORT_TIMEOUT}}}\n  \
         sampling_ratio: 1\n  queue_size: 16\n  batch_size: 8\n  batch_delay: 50ms\n"
    );
    Proxy::start(one_hop(
        &top,
        "inbound",
        "    tracing: {span_kind: server}\n",
        "to-app",
        &app_at(app.addr()),
    ))
    .await
}

/// Sends [`BURST`] requests, [`CONCURRENCY`] at a time, and checks that every one succeeded
/// and none was slow.
async fn burst_without_failures(proxy: &Proxy) {
    let http = Arc::new(http1_client().timeout(Duration::from_secs(10)));
    let url = Arc::new(proxy.url("inbound", "/burst"));
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            for _ in 0..BURST / CONCURRENCY {
                let start = Instant::now();
                match http.try_send("GET", &url, &[], "").await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.push(format!("{e:#}")),
                }
                latencies.push(start.elapsed());
            }
            (latencies, failures)
        });
    }
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (l, f) = done.expect("a burst task");
        latencies.extend(l);
        failures.extend(f);
    }
    assert_eq!(latencies.len(), BURST);
    assert!(
        failures.is_empty(),
        "{} of {BURST} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    latencies.sort();
    let p99 = latencies[BURST * 99 / 100];
    let max = latencies[BURST - 1];
    assert!(
        p99 <= P99_LATENCY && max <= MAX_LATENCY,
        "latency with a broken collector: p50 {:?}, p99 {p99:?}, max {max:?}",
        latencies[BURST / 2]
    );
}

/// The collector's port is closed: every request succeeds quickly, and the spans that could
/// not go anywhere are counted as dropped; none as exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_collector_fails_no_request_and_counts_drops() {
    let app = TestBackend::echo("app").await;
    let proxy = proxy_with_collector(&down_endpoint(), &app).await;
    burst_without_failures(&proxy).await;
    assert_eq!(app.requests(), BURST);
    wait_for("tern_spans_dropped_total > 0", DEADLINE, async || {
        proxy
            .metric("tern_spans_dropped_total", &[])
            .await
            .is_some_and(|dropped| dropped > 0.0)
    })
    .await;
    assert_eq!(
        proxy.metric("tern_spans_exported_total", &[]).await,
        Some(0.0),
        "nothing can be exported to a closed port"
    );
}

/// The collector accepts connections and never answers: every export hangs until its
/// timeout, yet every request succeeds quickly, and the full queue drops (and counts) spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_collector_fails_no_request_and_counts_drops() {
    let hole = BlackHole::start().await;
    let app = TestBackend::echo("app").await;
    let proxy = proxy_with_collector(&hole.endpoint(), &app).await;
    burst_without_failures(&proxy).await;
    assert_eq!(app.requests(), BURST);
    wait_for(
        "the exporter connects to the black hole",
        DEADLINE,
        async || hole.connections() > 0,
    )
    .await;
    let queue_full = metric_sum(
        &proxy,
        "tern_spans_dropped_total",
        &[("reason", "queue_full")],
    )
    .await;
    assert!(
        queue_full > 0.0,
        "a hung export backs spans up into the queue of 16, which must drop: {queue_full}"
    );
    assert_eq!(
        proxy.metric("tern_spans_exported_total", &[]).await,
        Some(0.0),
        "nothing can be exported to a collector that never answers"
    );
}

// ---------------------------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------------------------

/// The HMAC the access log writes for `redact: hash` with `hash_key: key`: HMAC-SHA-256, its
/// first 128 bits in hex, prefixed `hmac-sha256:`.
fn keyed_digest(key: &str, value: &str) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(value.as_bytes());
    let full = mac.finalize().into_bytes();
    let hex: String = full[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac-sha256:{hex}")
}

/// The access log's fields, in the order docs/observability.md gives them.
const FIELD_ORDER: [&str; 22] = [
    "start_time",
    "duration_ms",
    "upstream_ms",
    "listener",
    "request_id",
    "trace_id",
    "span_id",
    "client",
    "method",
    "authority",
    "path",
    "protocol",
    "status",
    "flags",
    "bytes_in",
    "bytes_out",
    "route",
    "backend",
    "endpoint",
    "attempts",
    "request_headers",
    "response_headers",
];

/// Asserts a raw line has every documented field, once, in the documented order (a parsed
/// `Value` cannot tell: its keys are sorted).
fn assert_fields_in_order(raw: &str) {
    let mut last = 0;
    for field in FIELD_ORDER {
        let key = format!("\"{field}\":");
        let found: Vec<usize> = raw.match_indices(&key).map(|(at, _)| at).collect();
        assert_eq!(found.len(), 1, "field {field} in: {raw}");
        assert!(found[0] >= last, "field {field} out of order in: {raw}");
        last = found[0];
    }
}

/// One request's access-log line: the request id echoed to the client, the trace and span
/// ids the receiver got, where it went, and the business headers (plain, hashed with the key,
/// dropped, absent) of the request and the response; no secret value appears anywhere in
/// the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_line_carries_the_request_id_the_trace_id_and_business_headers() {
    let receiver = OtlpReceiver::grpc().await;
    let app = TestBackend::builder("app")
        .header("x-cache", "HIT")
        .header("set-cookie", "session=s3ss10n")
        .start()
        .await;
    let log = AccessLogFile::new();
    let key = "e2e-hash-key-0123456789";
    let fields = format!(
        "    tracing: {{span_kind: server}}\n    request_id: {{header: x-request-id}}\n    \
         access_log:\n      path: \"{}\"\n      hash_key: \"{key}\"\n      request_headers:\n        \
         - {{name: x-user-id}}\n        - {{name: x-account-id, redact: hash}}\n        \
         - {{name: authorization, redact: drop}}\n        - {{name: x-shop-id}}\n      \
         response_headers:\n        - {{name: x-cache}}\n        \
         - {{name: set-cookie, redact: drop}}\n",
        log.path().display()
    );
    let proxy = Proxy::start(one_hop(
        &tracing_yaml(&receiver.yaml(), "shop"),
        "web",
        &fields,
        "shop",
        &app_at(app.addr()),
    ))
    .await;

    let response = http1_client()
        .send(
            "GET",
            &proxy.url("web", "/checkout?card=4111111111111111"),
            &[
                ("x-user-id", "u-123"),
                ("x-account-id", "acct-9876"),
                ("authorization", "Bearer t0p-s3cret"),
            ],
            "",
        )
        .await;
    let seen = echo(&response);
    let id = response
        .header("x-request-id")
        .expect("echoed request id")
        .to_owned();
    assert!(is_uuid_v4(&id), "{id:?}");

    let line = log.wait_for_request(&id, DEADLINE).await;
    let ctx = format!("access log line: {line:#}");
    let trace_id = line["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id; {ctx}"));
    let span = receiver
        .wait_for_trace(trace_id, 1, DEADLINE)
        .await
        .remove(0);
    assert_eq!(line["span_id"], span.span_id(), "{ctx}");
    assert_eq!(traceparent_at_backend(&seen).trace_id, trace_id, "{ctx}");

    assert_eq!(line["listener"], "web", "{ctx}");
    assert_eq!(line["method"], "GET", "{ctx}");
    assert_eq!(
        line["path"], "/checkout",
        "the query is left out by default; {ctx}"
    );
    assert_eq!(line["protocol"], "HTTP/1.1", "{ctx}");
    assert_eq!(line["status"], 200, "{ctx}");
    assert_eq!(line["flags"], "-", "{ctx}");
    assert_eq!(line["route"], "shop", "{ctx}");
    assert_eq!(line["backend"], "app", "{ctx}");
    assert_eq!(line["endpoint"], app.addr().to_string(), "{ctx}");
    assert_eq!(line["attempts"], 1, "{ctx}");
    assert!(
        line["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{ctx}"
    );
    assert!(line["bytes_out"].as_u64().is_some_and(|n| n > 0), "{ctx}");
    assert!(
        line["start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{ctx}"
    );
    assert!(line["duration_ms"].is_number(), "{ctx}");
    assert!(line["upstream_ms"].is_number(), "{ctx}");

    let request_headers = &line["request_headers"];
    assert_eq!(request_headers["x-user-id"], "u-123", "{ctx}");
    assert_eq!(
        request_headers["x-account-id"],
        keyed_digest(key, "acct-9876"),
        "redact: hash writes the keyed digest; {ctx}"
    );
    assert_eq!(request_headers["authorization"], "redacted", "{ctx}");
    assert_eq!(
        request_headers["x-shop-id"],
        Value::Null,
        "absent: null; {ctx}"
    );
    let response_headers = &line["response_headers"];
    assert_eq!(response_headers["x-cache"], "HIT", "{ctx}");
    assert_eq!(response_headers["set-cookie"], "redacted", "{ctx}");

    let text = log.text();
    let raw = text
        .lines()
        .find(|l| l.contains(&id))
        .expect("the raw line of the request");
    assert_fields_in_order(raw);
    for secret in ["acct-9876", "t0p-s3cret", "s3ss10n", "4111111111111111"] {
        assert!(
            !text.contains(secret),
            "{secret:?} leaked into the access log: {text}"
        );
    }
}

/// The response flag of each way the proxy answers by itself, with the status it sent, the
/// request id it echoed, and the attempts it made: no route (NR, 404), upstream connect
/// failure (UF, 502), upstream timeout (UT, 504), rate limited (RL, 429), overflow (UO, 503).
/// `tern_access_log_lines_total` counts every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_flags_each_failure() {
    let ok = TestBackend::echo("ok").await;
    let hang = TestBackend::builder("hang").hang().start().await;
    let held = TestBackend::builder("held").hang().start().await;
    let closed = free_addr();
    let log = AccessLogFile::new();
    let route = |name: &str, fields: &str, to: &str| {
        format!(
            "      - {{name: {name}, matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]{fields}, \
             backends: [{{name: {to}}}]}}\n"
        )
    };
    let config = format!(
        "listeners:\n  - name: web\n    address: {ANY_PORT}\n    request_id: {{header: x-request-id}}\n    \
         access_log: {{path: \"{}\"}}\n    routes:\n{}{}{}{}{}backends:\n  \
         - {{name: ok, endpoints: [\"{}\"]}}\n  - {{name: closed, endpoints: [\"{closed}\"]}}\n  \
         - {{name: hang, endpoints: [\"{}\"]}}\n  \
         - {{name: held, endpoints: [\"{}\"], circuit_breaker: {{max_requests: 1}}}}\n",
        log.path().display(),
        route("ok", "", "ok"),
        route("uf", "", "closed"),
        route("ut", ", timeout: 200ms", "hang"),
        route("rl", ", rate_limit: {rate: 1, per: minute, burst: 1}", "ok"),
        route("uo", "", "held"),
        ok.addr(),
        hang.addr(),
        held.addr(),
    );
    let proxy = Proxy::start(config).await;
    let http = http1_client();

    // Holds the one request `held` may have, so the next one overflows.
    let holder = {
        let http = http1_client();
        let url = proxy.url("web", "/uo/holder");
        tokio::spawn(async move { http.try_send("GET", &url, &[], "").await })
    };
    wait_for("the holder request at backend held", DEADLINE, async || {
        held.in_flight() == 1
    })
    .await;

    let rl_first = http
        .send(
            "GET",
            &proxy.url("web", "/rl"),
            &[("x-request-id", "rl-first")],
            "",
        )
        .await;
    assert_eq!(rl_first.status, 200, "the burst of 1 admits the first");

    let cases = [
        ("/nowhere", "flags-nr", 404, "NR", Some(0)),
        ("/uf", "flags-uf", 502, "UF", None),
        ("/ut", "flags-ut", 504, "UT", Some(1)),
        ("/rl", "flags-rl", 429, "RL", Some(0)),
        ("/uo", "flags-uo", 503, "UO", Some(0)),
    ];
    for (path, id, status, flag, attempts) in cases {
        let response = http
            .send("GET", &proxy.url("web", path), &[("x-request-id", id)], "")
            .await;
        assert_eq!(response.status, status, "{path}: {}", response.text());
        assert_eq!(
            response.header_all("x-request-id"),
            vec![id],
            "{path}: the id is echoed on the proxy's own answers too"
        );
        let line = log.wait_for_request(id, DEADLINE).await;
        assert!(
            has_flag(&line, flag),
            "{path}: want flag {flag}; line: {line:#}"
        );
        assert_eq!(line["status"], status, "{path}: {line:#}");
        assert_eq!(line["path"], path, "{path}: {line:#}");
        assert_eq!(
            (&line["trace_id"], &line["span_id"]),
            (&Value::Null, &Value::Null),
            "tracing is off: {line:#}"
        );
        if let Some(attempts) = attempts {
            assert_eq!(line["attempts"], attempts, "{path}: {line:#}");
        }
        if flag == "NR" {
            assert_eq!(
                (&line["route"], &line["backend"], &line["endpoint"]),
                (&Value::Null, &Value::Null, &Value::Null),
                "no route: it got nowhere; {line:#}"
            );
        }
    }
    let first = log.wait_for_request("rl-first", DEADLINE).await;
    assert_eq!(first["flags"], "-", "{first:#}");

    // The holder is still in flight: 6 lines so far, each counted once.
    let lines = log.wait_for_lines(6, DEADLINE).await;
    assert_eq!(lines.len(), 6, "{lines:#?}");
    wait_for("tern_access_log_lines_total == 6", DEADLINE, async || {
        proxy.metric("tern_access_log_lines_total", &[]).await == Some(6.0)
    })
    .await;
    holder.abort();
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

/// A well-formed incoming id is kept; an absent, malformed (space, over 128 bytes) or
/// repeated one is replaced by a fresh UUID v4. Either way the backend gets exactly the id
/// the client gets back, replacing an id the upstream set on its response. A listener with
/// its own header, `keep_incoming: false` and `echo: false` makes a new id in that header,
/// passes it upstream, and does not echo it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_echoed_and_passed_upstream() {
    let app = TestBackend::builder("app")
        .header("x-request-id", "set-by-upstream")
        .start()
        .await;
    let config = format!(
        "listeners:\n  - name: web\n    address: {ANY_PORT}\n    \
         request_id: {{header: x-request-id, echo: true, keep_incoming: true}}\n    routes:\n      \
         - {{name: all, backends: [{{name: app}}]}}\n  - name: edge\n    address: {ANY_PORT}\n    \
         request_id: {{header: x-correlation-id, echo: false, keep_incoming: false}}\n    \
         routes:\n      - {{name: all, backends: [{{name: app}}]}}\nbackends:\n  - {}\n",
        app_at(app.addr())
    );
    let proxy = Proxy::start(config).await;
    let http = http1_client();
    let url = proxy.url("web", "/id");

    // Kept.
    let kept = "req-7f3a_2024/ok:1";
    let response = http.send("GET", &url, &[("x-request-id", kept)], "").await;
    let seen = echo(&response);
    assert_eq!(
        seen.header_all("x-request-id"),
        vec![kept],
        "passed upstream as sent"
    );
    assert_eq!(
        response.header_all("x-request-id"),
        vec![kept],
        "echoed, not the upstream's"
    );

    // 128 bytes is still well-formed.
    let longest = "a".repeat(128);
    let response = http
        .send("GET", &url, &[("x-request-id", &longest)], "")
        .await;
    assert_eq!(response.header_all("x-request-id"), vec![longest.as_str()]);

    // Made: absent, malformed, too long, repeated.
    let too_long = "b".repeat(129);
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        ("absent", vec![]),
        ("with a space", vec![("x-request-id", "bad id")]),
        ("129 bytes", vec![("x-request-id", &too_long)]),
        (
            "sent twice",
            vec![("x-request-id", "one"), ("x-request-id", "two")],
        ),
    ];
    let mut made = Vec::new();
    for (case, headers) in &cases {
        let response = http.send("GET", &url, headers, "").await;
        let seen = echo(&response);
        let echoed = response.header_all("x-request-id");
        assert_eq!(echoed.len(), 1, "{case}: echoed {echoed:?}");
        let id = echoed[0].to_owned();
        assert!(is_uuid_v4(&id), "{case}: a new UUID v4, got {id:?}");
        assert_eq!(
            seen.header_all("x-request-id"),
            vec![id.as_str()],
            "{case}: upstream"
        );
        made.push(id);
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), cases.len(), "every made id is new: {made:?}");

    // A listener with its own header, no echo, and ids always made.
    let response = http
        .send(
            "GET",
            &proxy.url("edge", "/id"),
            &[("x-correlation-id", "chosen-by-client")],
            "",
        )
        .await;
    let seen = echo(&response);
    let upstream = seen.header_all("x-correlation-id");
    assert_eq!(upstream.len(), 1, "{:#}", seen.0["headers"]);
    assert!(
        is_uuid_v4(upstream[0]),
        "keep_incoming: false replaces the client's id: {upstream:?}"
    );
    assert_eq!(response.header("x-correlation-id"), None, "echo: false");
}

/// A reload that drops a listener's access log closes the file (its writer writes what it holds
/// first): the log can be moved away or deleted without the proxy holding it open.
#[tokio::test]
async fn a_reload_without_the_access_log_closes_its_file() {
    let b = TestBackend::echo("b").await;
    let log = AccessLogFile::new();
    let config = |access_log: &str| {
        format!(
            "listeners:\n  - name: web\n    address: {ANY_PORT}\n{access_log}    routes: [{{name: all, backends: [{{name: b}}]}}]\nbackends:\n  - {}\n",
            b.yaml()
        )
    };
    let with_log = format!(
        "    access_log: {{path: {:?}}}\n",
        log.path().display().to_string()
    );
    let proxy = Proxy::start(config(&with_log)).await;
    assert_eq!(http1_client().get(&proxy.url("web", "/")).await.status, 200);
    log.wait_for_lines(1, Duration::from_secs(10)).await;
    let holds_log = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                    .any(|target| target == log.path())
            })
            .unwrap_or(false)
    };
    assert!(holds_log(proxy.pid()), "the proxy should have the log open");

    proxy.write_config(&config(""));
    wait_for(
        "the log file closed after the reload",
        Duration::from_secs(10),
        async || !holds_log(proxy.pid()),
    )
    .await;
    // The proxy still serves, and writes nothing more there.
    assert_eq!(http1_client().get(&proxy.url("web", "/")).await.status, 200);
    assert_eq!(log.lines().len(), 1);
}

/// `bytes_in` is the request body bytes the proxy received: counted as a streamed upload
/// passes (no Content-Length to trust), the length of a sized one, 0 for a request the proxy
/// answered without reading its body.
#[tokio::test]
async fn the_access_log_counts_request_body_bytes_as_they_stream() {
    let app = TestBackend::echo("app").await;
    let log = AccessLogFile::new();
    let fields = format!(
        "    access_log: {{path: {:?}}}\n",
        log.path().display().to_string()
    );
    let proxy = Proxy::start(one_hop("", "web", &fields, "app", &app_at(app.addr()))).await;
    let client = http1_client();

    // Chunked: three chunks, no Content-Length.
    let (sender, upload) = tern_e2e::body::channel();
    let request = http::Request::post(proxy.url("web", "/upload"))
        .header("x-request-id", "streamed-upload")
        .body(upload)
        .expect("request");
    let uploading = tokio::spawn(async move {
        let response = http1_client().request(request).await.expect("response");
        TestResponse::collect(response).await.expect("body")
    });
    for chunk in [1000usize, 24, 3000] {
        assert!(sender.send(vec![b'x'; chunk]).await);
    }
    drop(sender);
    let response = uploading.await.expect("upload task");
    assert_eq!(response.status, 200);
    assert_eq!(response.echo().body_len(), 4024);
    let line = log.wait_for_request("streamed-upload", DEADLINE).await;
    assert_eq!(line["bytes_in"], 4024, "{line}");

    // Sized.
    let response = client
        .send(
            "PUT",
            &proxy.url("web", "/sized"),
            &[("x-request-id", "sized-upload")],
            vec![b'y'; 777],
        )
        .await;
    assert_eq!(response.status, 200);
    let line = log.wait_for_request("sized-upload", DEADLINE).await;
    assert_eq!(line["bytes_in"], 777, "{line}");
    assert!(line["bytes_out"].as_u64().is_some_and(|n| n > 0), "{line}");
}

/// A reload that moves the access log to another file and the spans to another collector
/// must not lose the request in flight across it: that request began under the old config, and
/// its line and span go where that config said, once it ends. The old writer and exporter stop
/// only when nothing can submit to them any more (or after `shutdown_grace`).
#[tokio::test]
async fn a_request_in_flight_across_a_reload_keeps_its_log_line_and_span() {
    let receiver = OtlpReceiver::grpc().await;
    let other_receiver = OtlpReceiver::grpc().await;
    let app = TestBackend::builder("app")
        .delay(Duration::from_millis(1500))
        .start()
        .await;
    let log = AccessLogFile::new();
    let other_log = AccessLogFile::new();
    let config = |otlp: &str, log: &AccessLogFile| logged_and_traced(otlp, log, app.addr());
    let proxy = Proxy::start(config(&receiver.yaml(), &log)).await;
    let url = proxy.url("web", "/");
    let slow = tokio::spawn(async move {
        http1_client()
            .send("GET", &url, &[("x-request-id", "across")], "")
            .await
    });
    wait_for("the request to reach the backend", DEADLINE, async || {
        app.in_flight() == 1
    })
    .await;

    proxy.write_config(&config(&other_receiver.yaml(), &other_log));
    wait_for("the reload applied", DEADLINE, async || {
        proxy.metric("tern_config_version", &[]).await == Some(2.0)
    })
    .await;
    assert_eq!(app.in_flight(), 1, "the request ended before the reload");

    let response = slow.await.expect("the request task");
    assert_eq!(response.status, 200);
    let line = log.wait_for_request("across", DEADLINE).await;
    assert_eq!(line["status"], 200, "{line}");
    let spans = receiver.wait_for_spans(1, DEADLINE).await;
    assert!(
        spans.iter().any(|s| line["trace_id"] == s.trace_id()),
        "no span of the logged trace {}: {spans:?}",
        line["trace_id"]
    );
    assert!(other_log.lines().is_empty(), "{:?}", other_log.lines());
    assert_eq!(other_receiver.spans().len(), 0);
}

/// A reload refused late (a new listener's port is busy) after naming another collector and
/// another access-log file changes nothing: spans still reach the running collector and lines
/// the running file, because the exporter and writers are only swapped once a config is in
/// place.
#[tokio::test]
async fn a_refused_reload_keeps_the_running_exporter_and_access_log() {
    let receiver = OtlpReceiver::grpc().await;
    let other_receiver = OtlpReceiver::grpc().await;
    let app = TestBackend::echo("app").await;
    let log = AccessLogFile::new();
    let other_log = AccessLogFile::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr");
    let config = |otlp: &str, log: &AccessLogFile, extra_listener: &str| {
        logged_and_traced(otlp, log, app.addr())
            .replace("listeners:\n", &format!("listeners:\n{extra_listener}"))
    };
    let proxy = Proxy::start(config(&receiver.yaml(), &log, "")).await;
    let get = async |id: &str| {
        let response = http1_client()
            .send("GET", &proxy.url("web", "/"), &[("x-request-id", id)], "")
            .await;
        assert_eq!(response.status, 200);
    };
    get("before").await;
    log.wait_for_request("before", DEADLINE).await;
    receiver.wait_for_spans(1, DEADLINE).await;

    let refused = config(
        &other_receiver.yaml(),
        &other_log,
        &format!(
            "  - name: busy\n    address: {busy_addr}\n    routes: [{{name: b, backends: [{{name: app}}]}}]\n"
        ),
    );
    proxy.write_config(&refused);
    proxy.wait_for_refused_reloads(1, DEADLINE).await;
    assert!(proxy.logs().contains("busy"), "{}", proxy.logs());

    get("after").await;
    log.wait_for_request("after", DEADLINE).await;
    receiver.wait_for_spans(2, DEADLINE).await;
    assert!(other_log.lines().is_empty(), "{:?}", other_log.lines());
    assert_eq!(other_receiver.spans().len(), 0);
    // Opening the file is how its path was checked; the refused config leaves no file behind.
    wait_for(
        "the refused config's log file removed",
        DEADLINE,
        async || !other_log.path().exists(),
    )
    .await;
    drop(busy);
}
