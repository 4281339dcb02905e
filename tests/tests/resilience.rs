//! Resilience end to end (issue 4): the real `tern-proxy` binary in front of misbehaving
//! backends on loopback, judged by what a client sees (statuses, headers, latency) and what
//! the backends count.
//!
//! Covers: outlier ejection, the half-open probe and the ejection cap (`GET /breakers`), all
//! endpoints ejected with and without panic mode; the `max_requests` and `max_retries`
//! circuit breakers (503 `overflow`); retries (transient failures hidden, bodies replayed, POST
//! never retried by default, resets only when asked, a started response never retried, the
//! retry budget); rate limits (accuracy under a paced open-loop load, keys, the listener's own
//! limit, the response headers); route, per-try and idle timeouts (504 `timeout`, within 10 %);
//! P2C-EWMA against round robin with a slow endpoint; request mirroring (share, and a slow or
//! dead mirror costing nothing); fault injection; the gRPC forms of 429 and 504; state kept
//! across reloads (an ejection, a drained bucket); `tern-proxy validate` on bad values.
//!
//! Timing assertions use the tolerance the issue sets (10 % of a timeout); statistical ones
//! are at four standard deviations, so a correct proxy fails them about once in 16,000 runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tern_e2e::{
    ANY_PORT, BACKEND_HEADER, Proxy, TestBackend, TestClient, TestResponse, free_addr,
    http1_client, http2_client, validate, wait_for,
};
use tokio::task::JoinSet;

/// The header the proxy sets on every response it writes itself.
const PROXY_ERROR: &str = "tern-proxy-error";

/// How long a condition that should hold at once (a metric, a state in `/breakers`) may take.
const DEADLINE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A config with listener `web` on a free port, the given route lines (see [`route`]) and
/// backend entries (see [`backend`]).
fn config(routes: &[String], backends: &[String]) -> String {
    format!(
        "listeners:\n  - name: web\n    address: {ANY_PORT}\n    routes:\n{}backends:\n{}",
        routes.concat(),
        backends.concat()
    )
}

/// One line under `routes:`: route `name` with its other fields in YAML flow style (`retry:
/// {...}, matches: [...]`), sending everything to backend `to`.
fn route(name: &str, fields: &str, to: &str) -> String {
    let separator = if fields.is_empty() { "" } else { ", " };
    format!("      - {{name: {name}{separator}{fields}, backends: [{{name: {to}}}]}}\n")
}

/// A route matching the path prefix `/{name}`.
fn prefix_route(name: &str, fields: &str, to: &str) -> String {
    let separator = if fields.is_empty() { "" } else { ", " };
    route(
        name,
        &format!("matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]{separator}{fields}"),
        to,
    )
}

/// One entry under `backends:`: backend `name` whose endpoints are `members`, with its other
/// fields in YAML flow style (`outlier_detection: {...}`).
fn backend(name: &str, members: &[&TestBackend], fields: &str) -> String {
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr()).collect();
    backend_at(name, &addrs, fields)
}

/// Like [`backend`], with bare addresses (a closed port, say).
fn backend_at(name: &str, addrs: &[SocketAddr], fields: &str) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let separator = if fields.is_empty() { "" } else { ", " };
    format!(
        "  - {{name: {name}, endpoints: [{}]{separator}{fields}}}\n",
        list.join(", ")
    )
}

/// `GET /breakers` as JSON.
async fn breakers(proxy: &Proxy) -> Value {
    let response = proxy.admin_get("/breakers").await;
    assert_eq!(response.status, 200, "GET /breakers: {}", response.text());
    response.json()
}

/// The `/breakers` entry of `backend`.
fn breaker(all: &Value, backend: &str) -> Value {
    all.as_array()
        .and_then(|list| list.iter().find(|b| b["backend"] == backend))
        .cloned()
        .unwrap_or_else(|| panic!("no backend {backend:?} in /breakers: {all:#}"))
}

/// The outlier view of endpoint `addr` in a backend's `/breakers` entry.
fn endpoint(breaker: &Value, addr: SocketAddr) -> Value {
    breaker["outlier"]["endpoints"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["addr"] == addr.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {addr} in: {breaker:#}"))
}

/// The outlier state (`healthy`, `ejected`, `half_open`, `probing`) of one endpoint now.
async fn state(proxy: &Proxy, backend: &str, addr: SocketAddr) -> String {
    let all = breakers(proxy).await;
    endpoint(&breaker(&all, backend), addr)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until endpoint `addr` of `backend` is in `wanted` state.
async fn wait_state(proxy: &Proxy, backend: &str, addr: SocketAddr, wanted: &str) {
    wait_for(
        &format!("{backend} endpoint {addr} {wanted} in /breakers"),
        DEADLINE,
        async || state(proxy, backend, addr).await == wanted,
    )
    .await;
}

/// Waits until metric `name` with `labels` equals `expected`; panics with the last value.
async fn expect_metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)], expected: f64) {
    let what = format!("{name}{labels:?} == {expected}");
    // The inner wait never reaches its own (later) deadline: the outer one reports instead,
    // with the value the proxy last showed.
    let settled = tokio::time::timeout(
        DEADLINE,
        wait_for(&what, DEADLINE * 2, async || {
            proxy.metric(name, labels).await == Some(expected)
        }),
    )
    .await;
    if settled.is_err() {
        let now = proxy.metric(name, labels).await;
        panic!("{name}{labels:?}: expected {expected}, got {now:?}");
    }
}

/// The proxy's config version (`GET /config`).
async fn version(proxy: &Proxy) -> u64 {
    proxy.config().await["version"].as_u64().unwrap_or(0)
}

/// A response's status, the proxy's error code if any, and who answered, for messages.
fn describe(r: &TestResponse) -> String {
    format!(
        "{} {PROXY_ERROR}={:?} {BACKEND_HEADER}={:?}",
        r.status,
        r.header(PROXY_ERROR),
        r.backend()
    )
}

/// Asserts a proxy-written error: `status` with `tern-proxy-error: code`.
fn assert_proxy_error(r: &TestResponse, status: u16, code: &str) {
    assert_eq!(
        (r.status.as_u16(), r.header(PROXY_ERROR)),
        (status, Some(code)),
        "expected {status} {code}, got {}: {}",
        describe(r),
        r.text()
    );
}

/// `request` and how long it took.
async fn timed<T>(request: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = request.await;
    (out, start.elapsed())
}

/// Asserts `elapsed` is at least `setting` and at most 10 % over it (plus `slack` for what
/// the test itself adds on top of the setting, such as a retry's backoff).
fn assert_fires_on_time(what: &str, elapsed: Duration, setting: Duration, slack: Duration) {
    let latest = setting + setting / 10 + slack;
    assert!(
        elapsed >= setting && elapsed <= latest,
        "{what}: fired after {elapsed:?}; expected between {setting:?} and {latest:?}"
    );
}

/// A unary gRPC call's request: POST, `application/grpc`, one empty message.
async fn grpc_call(client: &TestClient, url: &str) -> TestResponse {
    client
        .send(
            "POST",
            url,
            &[("content-type", "application/grpc"), ("te", "trailers")],
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        )
        .await
}

/// Asserts the proxy's gRPC answer: trailers-only (HTTP 200, `grpc-status` in the header
/// block, no body), still naming the cause in `tern-proxy-error`.
fn assert_grpc_status(r: &TestResponse, code: &str, cause: &str) {
    assert_eq!(
        (
            r.status.as_u16(),
            r.header("grpc-status"),
            r.header(PROXY_ERROR),
            r.body.len()
        ),
        (200, Some(code), Some(cause), 0),
        "expected a trailers-only 200 with grpc-status {code} ({cause}); got {} with trailers \
         {:?}, body {:?}",
        describe(r),
        r.trailers,
        r.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Outlier ejection
// ---------------------------------------------------------------------------------------------

/// An endpoint answering 500 is ejected after `consecutive_failures`, its traffic goes to the
/// healthy ones, and once it recovers the one probe after the ejection time restores it.
#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_a_probe_restores_it() {
    let bad = TestBackend::builder("bad").status(500).start().await;
    let good1 = TestBackend::echo("good1").await;
    let good2 = TestBackend::echo("good2").await;
    let proxy = Proxy::start(config(
        &[route("r", "", "pool")],
        &[backend(
            "pool",
            &[&bad, &good1, &good2],
            "load_balancer: {policy: round_robin}, outlier_detection: \
             {consecutive_failures: 3, base_ejection_time: 1s, max_ejection_percent: 50}",
        )],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");

    // Round robin: the bad endpoint gets every third request. Its third 500 ejects it.
    for _ in 0..30 {
        let r = client.get(&url).await;
        let expected = if r.backend() == Some("bad") { 500 } else { 200 };
        assert_eq!(r.status, expected, "{}", describe(&r));
        if bad.requests() == 3 {
            break;
        }
    }
    assert_eq!(
        bad.requests(),
        3,
        "the bad endpoint never got its 3 requests"
    );
    wait_state(&proxy, "pool", bad.addr(), "ejected").await;
    let view = breaker(&breakers(&proxy).await, "pool");
    assert_eq!(view["outlier"]["ejected"], 1, "{view:#}");
    assert_eq!(view["outlier"]["max_ejected"], 1, "50 % of 3: {view:#}");
    let ep = endpoint(&view, bad.addr());
    assert_eq!(ep["times_ejected"], 1, "{ep:#}");
    let remaining = ep["ejection_remaining_ms"].as_u64().unwrap_or(0);
    assert!(
        remaining > 0 && remaining <= 1000,
        "1 s ejection, {remaining} ms left"
    );

    // Ejected: everything goes to the healthy two.
    for _ in 0..20 {
        let r = client.get(&url).await;
        assert_eq!(r.status, 200, "{}", describe(&r));
        assert_ne!(r.backend(), Some("bad"));
    }
    assert_eq!(bad.requests(), 3);
    assert_eq!(
        state(&proxy, "pool", bad.addr()).await,
        "ejected",
        "the 20 requests took longer than the 1 s ejection: the test proves nothing"
    );
    expect_metric(
        &proxy,
        "tern_outlier_ejections_total",
        &[("backend", "pool")],
        1.0,
    )
    .await;

    // It recovers; after the ejection time one request probes it and brings it back.
    bad.set_status(200);
    wait_state(&proxy, "pool", bad.addr(), "half_open").await;
    for _ in 0..20 {
        let r = client.get(&url).await;
        assert_eq!(r.status, 200, "{}", describe(&r));
        if bad.requests() == 4 {
            break;
        }
    }
    assert_eq!(bad.requests(), 4, "no probe reached the half-open endpoint");
    wait_state(&proxy, "pool", bad.addr(), "healthy").await;
    let view = breaker(&breakers(&proxy).await, "pool");
    assert_eq!(view["outlier"]["ejected"], 0, "{view:#}");
    assert_eq!(
        endpoint(&view, bad.addr())["consecutive_failures"],
        0,
        "{view:#}"
    );

    // Back in rotation: its third of the traffic again.
    for _ in 0..30 {
        assert_eq!(client.get(&url).await.status, 200);
    }
    let share = bad.requests() - 4;
    assert!(
        (8..=12).contains(&share),
        "round robin over 3 gave the restored endpoint {share} of 30"
    );
}

/// A probe that fails ejects the endpoint again at once, for `base_ejection_time × times
/// ejected`: the second ejection is twice as long as the first.
#[tokio::test]
async fn a_failed_probe_ejects_again_for_twice_as_long() {
    let bad = TestBackend::builder("bad").status(500).start().await;
    let good = TestBackend::echo("good").await;
    let proxy = Proxy::start(config(
        &[route("r", "", "pool")],
        &[backend(
            "pool",
            &[&bad, &good],
            "load_balancer: {policy: round_robin}, outlier_detection: \
             {consecutive_failures: 2, base_ejection_time: 500ms, max_ejection_percent: 50}",
        )],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    for _ in 0..10 {
        client.get(&url).await;
        if bad.requests() == 2 {
            break;
        }
    }
    wait_state(&proxy, "pool", bad.addr(), "ejected").await;
    wait_state(&proxy, "pool", bad.addr(), "half_open").await;

    // The probe: exactly one request reaches the still-failing endpoint.
    for _ in 0..10 {
        client.get(&url).await;
        if bad.requests() == 3 {
            break;
        }
    }
    assert_eq!(bad.requests(), 3, "no probe reached the half-open endpoint");
    let view = breaker(&breakers(&proxy).await, "pool");
    let ep = endpoint(&view, bad.addr());
    assert_eq!(ep["state"], "ejected", "{view:#}");
    assert_eq!(ep["times_ejected"], 2, "{view:#}");
    let remaining = ep["ejection_remaining_ms"].as_u64().unwrap_or(0);
    assert!(
        remaining > 500 && remaining <= 1000,
        "the 2nd ejection should last 2 × 500 ms; {remaining} ms left right after it"
    );
    for _ in 0..10 {
        assert_eq!(client.get(&url).await.backend(), Some("good"));
    }
    assert_eq!(
        bad.requests(),
        3,
        "a re-ejected endpoint got more than its probe"
    );
}

/// With every endpoint failing, no more than `max_ejection_percent` of them is ever ejected:
/// the rest keep serving (their 500s), nobody gets `no-healthy-endpoints`.
#[tokio::test]
async fn no_more_than_max_ejection_percent_is_ever_ejected() {
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(
            TestBackend::builder(&format!("e{i}"))
                .status(500)
                .start()
                .await,
        );
    }
    let refs: Vec<&TestBackend> = members.iter().collect();
    let proxy = Proxy::start(config(
        &[route("r", "", "pool")],
        &[backend(
            "pool",
            &refs,
            "load_balancer: {policy: round_robin}, outlier_detection: \
             {consecutive_failures: 2, base_ejection_time: 10s, max_ejection_percent: 50}",
        )],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");

    for i in 0..30 {
        let r = client.get(&url).await;
        assert_eq!(r.status, 500, "request {i}: {}", describe(&r));
        assert!(r.backend().is_some(), "request {i}: {}", describe(&r));
        let view = breaker(&breakers(&proxy).await, "pool");
        let out_of_rotation = view["outlier"]["endpoints"].as_array().map_or(0, |eps| {
            eps.iter().filter(|e| e["state"] != "healthy").count()
        });
        assert!(
            out_of_rotation <= 2 && view["outlier"]["ejected"].as_u64() <= Some(2),
            "after request {i}, more than 50 % of 4 endpoints ejected: {view:#}"
        );
    }
    let view = breaker(&breakers(&proxy).await, "pool");
    assert_eq!(view["outlier"]["ejected"], 2, "{view:#}");
    assert_eq!(view["outlier"]["max_ejected"], 2, "{view:#}");

    // The two left in rotation take all the traffic; the ejected ones get none.
    let before: Vec<usize> = members.iter().map(TestBackend::requests).collect();
    for _ in 0..10 {
        assert_eq!(client.get(&url).await.status, 500);
    }
    for (m, before) in members.iter().zip(before) {
        let ejected = endpoint(&view, m.addr())["state"] == "ejected";
        let got = m.requests() - before;
        if ejected {
            assert_eq!(got, 0, "ejected endpoint {} got traffic", m.name());
        } else {
            assert!(got > 0, "endpoint {} in rotation got nothing", m.name());
        }
    }
    expect_metric(
        &proxy,
        "tern_outlier_ejections_total",
        &[("backend", "pool")],
        2.0,
    )
    .await;
}

/// With every endpoint ejected a backend answers 503 `no-healthy-endpoints`; in panic mode it
/// spreads requests over all of them anyway.
#[tokio::test]
async fn all_ejected_is_503_unless_panic_mode_spreads_over_all() {
    let s1 = TestBackend::builder("s1").status(500).start().await;
    let s2 = TestBackend::builder("s2").status(500).start().await;
    let p1 = TestBackend::builder("p1").status(500).start().await;
    let p2 = TestBackend::builder("p2").status(500).start().await;
    let outlier = "consecutive_failures: 2, base_ejection_time: 10s, max_ejection_percent: 100";
    let proxy = Proxy::start(config(
        &[
            prefix_route("strict", "", "strict"),
            prefix_route("panicky", "", "panicky"),
        ],
        &[
            backend(
                "strict",
                &[&s1, &s2],
                &format!(
                    "load_balancer: {{policy: round_robin}}, outlier_detection: {{{outlier}}}"
                ),
            ),
            backend(
                "panicky",
                &[&p1, &p2],
                &format!(
                    "load_balancer: {{policy: round_robin}}, outlier_detection: \
                     {{{outlier}, panic: true}}"
                ),
            ),
        ],
    ))
    .await;
    let client = http1_client();

    for (name, a, b) in [("strict", &s1, &s2), ("panicky", &p1, &p2)] {
        let url = proxy.url("web", &format!("/{name}"));
        for _ in 0..20 {
            if breaker(&breakers(&proxy).await, name)["outlier"]["ejected"] == 2 {
                break;
            }
            assert_eq!(client.get(&url).await.status, 500);
        }
        let view = breaker(&breakers(&proxy).await, name);
        assert_eq!(view["outlier"]["ejected"], 2, "{name}: {view:#}");

        let before = (a.requests(), b.requests());
        for _ in 0..10 {
            let r = client.get(&url).await;
            if name == "strict" {
                assert_proxy_error(&r, 503, "no-healthy-endpoints");
            } else {
                assert_eq!(r.status, 500, "panic mode: {}", describe(&r));
                assert!(r.backend().is_some(), "panic mode: {}", describe(&r));
            }
        }
        let got = (a.requests() - before.0, b.requests() - before.1);
        if name == "strict" {
            assert_eq!(got, (0, 0), "strict: requests reached ejected endpoints");
        } else {
            assert!(
                got.0 >= 2 && got.1 >= 2 && got.0 + got.1 == 10,
                "panic mode should spread 10 requests over both endpoints, got {got:?}"
            );
        }
    }
}

/// Resets and connect failures count as failures for outlier detection, like 5xx. Both
/// backends keep the default `max_ejection_percent` (10 % of 2 endpoints rounds down to 0),
/// so this also shows the cap ejects at least one.
#[tokio::test]
async fn resets_and_connect_failures_eject_an_endpoint_too() {
    let broken = TestBackend::builder("broken").reset().start().await;
    let good = TestBackend::echo("good").await;
    let other = TestBackend::echo("other").await;
    let closed = free_addr();
    let outlier = "load_balancer: {policy: round_robin}, outlier_detection: \
                   {consecutive_failures: 2, base_ejection_time: 10s}";
    let proxy = Proxy::start(config(
        &[
            prefix_route("resets", "", "resets"),
            prefix_route("refused", "", "refused"),
        ],
        &[
            backend("resets", &[&broken, &good], outlier),
            backend_at("refused", &[closed, other.addr()], outlier),
        ],
    ))
    .await;
    let client = http1_client();

    for (name, bad, code) in [
        ("resets", broken.addr(), "upstream-reset"),
        ("refused", closed, "connect-failed"),
    ] {
        let url = proxy.url("web", &format!("/{name}"));
        let mut failures = 0;
        for _ in 0..20 {
            let r = client.get(&url).await;
            if r.status != 200 {
                assert_proxy_error(&r, 502, code);
                failures += 1;
            }
        }
        assert_eq!(
            failures, 2,
            "{name}: the failing endpoint should be ejected after its 2nd failure"
        );
        wait_state(&proxy, name, bad, "ejected").await;
        let view = breaker(&breakers(&proxy).await, name);
        assert_eq!(view["outlier"]["max_ejected"], 1, "{view:#}");
    }
    assert_eq!(broken.requests(), 2);
    assert_eq!(other.requests(), 18);
}

// ---------------------------------------------------------------------------------------------
// Circuit breakers
// ---------------------------------------------------------------------------------------------

/// `max_requests: 10` with 50 concurrent slow requests: 10 go through and complete, 40 get an
/// immediate 503 `overflow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_requests_the_rest_get_an_immediate_503_overflow() {
    let delay = Duration::from_secs(1);
    let slow = TestBackend::builder("slow").delay(delay).start().await;
    let proxy = Proxy::start(config(
        &[route("r", "", "slow")],
        &[backend(
            "slow",
            &[&slow],
            "circuit_breaker: {max_requests: 10}",
        )],
    ))
    .await;
    let client = Arc::new(http1_client());
    let url = proxy.url("web", "/");

    let mut calls = JoinSet::new();
    for _ in 0..50 {
        let (client, url) = (client.clone(), url.clone());
        calls.spawn(async move { timed(client.get(&url)).await });
    }
    let (mut completed, mut overflowed) = (0, 0);
    while let Some(call) = calls.join_next().await {
        let (r, took) = call.expect("request task");
        match r.status.as_u16() {
            200 => {
                assert!(
                    took >= delay,
                    "a 200 in {took:?}, before the backend's delay"
                );
                completed += 1;
            }
            _ => {
                assert_proxy_error(&r, 503, "overflow");
                assert!(
                    took < Duration::from_millis(500),
                    "an overflow answer took {took:?}: it waited instead of failing fast"
                );
                overflowed += 1;
            }
        }
    }
    assert_eq!((completed, overflowed), (10, 40));
    assert_eq!(slow.requests(), 10);
    assert_eq!(slow.max_in_flight(), 10);

    expect_metric(
        &proxy,
        "tern_breaker_overflows_total",
        &[("backend", "slow"), ("resource", "requests")],
        40.0,
    )
    .await;
    let view = breaker(&breakers(&proxy).await, "slow");
    let requests = &view["limits"]["requests"];
    assert_eq!(
        (
            &requests["max"],
            &requests["overflows"],
            &requests["current"]
        ),
        (&Value::from(10), &Value::from(40), &Value::from(0)),
        "{view:#}"
    );
}

/// `max_connections: 3` against an HTTP/1 backend (one connection per request in flight):
/// of 10 concurrent slow requests, 3 get connections and complete, 7 get an immediate 503
/// `overflow` instead of waiting for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_the_rest_get_an_immediate_503_overflow() {
    let delay = Duration::from_millis(500);
    let slow = TestBackend::builder("slow").delay(delay).start().await;
    let proxy = Proxy::start(config(
        &[route("r", "", "slow")],
        &[backend(
            "slow",
            &[&slow],
            "circuit_breaker: {max_connections: 3}",
        )],
    ))
    .await;
    let client = Arc::new(http1_client());
    let url = proxy.url("web", "/");
    let mut calls = JoinSet::new();
    for _ in 0..10 {
        let (client, url) = (client.clone(), url.clone());
        calls.spawn(async move { timed(client.get(&url)).await });
    }
    let (mut completed, mut overflowed) = (0, 0);
    while let Some(call) = calls.join_next().await {
        let (r, took) = call.expect("request task");
        if r.status == 200 {
            completed += 1;
        } else {
            assert_proxy_error(&r, 503, "overflow");
            assert!(took < delay / 2, "an overflow answer took {took:?}");
            overflowed += 1;
        }
    }
    assert_eq!((completed, overflowed), (3, 7));
    assert_eq!(slow.connections(), 3);
    expect_metric(
        &proxy,
        "tern_breaker_overflows_total",
        &[("backend", "slow"), ("resource", "connections")],
        7.0,
    )
    .await;
    let view = breaker(&breakers(&proxy).await, "slow");
    assert_eq!(view["limits"]["connections"]["max"], 3, "{view:#}");
    assert_eq!(view["limits"]["connections"]["overflows"], 7, "{view:#}");
}

/// `max_retries: 1`: of five requests failing together, one is retried; the other four
/// retries overflow (counted), and their clients get the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_caps_concurrent_retries() {
    let busy = TestBackend::builder("busy")
        .status(503)
        .delay(Duration::from_millis(300))
        .start()
        .await;
    let proxy = Proxy::start(config(
        &[route(
            "r",
            "retry: {max_attempts: 2, backoff: {base: 1ms, max: 1ms}}",
            "busy",
        )],
        &[backend(
            "busy",
            &[&busy],
            "circuit_breaker: {max_retries: 1}",
        )],
    ))
    .await;
    let client = Arc::new(http1_client());
    let url = proxy.url("web", "/");
    let mut calls = JoinSet::new();
    for _ in 0..5 {
        let (client, url) = (client.clone(), url.clone());
        calls.spawn(async move { client.get(&url).await });
    }
    while let Some(call) = calls.join_next().await {
        let r = call.expect("request task");
        assert_eq!(r.status, 503, "{}", describe(&r));
    }
    assert_eq!(busy.requests(), 6, "5 first tries and 1 retry");
    expect_metric(
        &proxy,
        "tern_breaker_overflows_total",
        &[("backend", "busy"), ("resource", "retries")],
        4.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

/// A backend failing every other request with 503: with the default retry conditions every
/// GET succeeds, each failure costing exactly one retry; a PUT's body is replayed whole, unless
/// it is over `max_body_bytes`.
#[tokio::test]
async fn retries_hide_a_backend_failing_every_other_request() {
    let flaky = TestBackend::builder("flaky")
        .fail_every(2, 503)
        .start()
        .await;
    let proxy = Proxy::start(config(
        &[
            prefix_route(
                "small",
                "retry: {max_attempts: 2, max_body_bytes: 1000, backoff: {base: 1ms, max: 1ms}}",
                "flaky",
            ),
            route(
                "r",
                "retry: {max_attempts: 2, backoff: {base: 1ms, max: 1ms}}",
                "flaky",
            ),
        ],
        &[backend("flaky", &[&flaky], "")],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");

    for i in 0..100 {
        let r = client.get(&url).await;
        assert_eq!(r.status, 200, "GET {i}: {}", describe(&r));
    }
    // Request 1 succeeds at once; each later one meets a failure first (the backend's 2nd,
    // 4th, ... request) and its retry succeeds.
    assert_eq!(flaky.requests(), 1 + 2 * 99);
    expect_metric(&proxy, "tern_retries_total", &[("backend", "flaky")], 99.0).await;
    expect_metric(
        &proxy,
        "tern_upstream_attempts_total",
        &[("backend", "flaky")],
        199.0,
    )
    .await;

    // PUT is idempotent: retried, with its body sent again in full.
    let body = Bytes::from(vec![b'x'; 10_000]);
    let bytes_before = flaky.bytes_received();
    for i in 0..20 {
        let r = client.send("PUT", &url, &[], body.clone()).await;
        assert_eq!(r.status, 200, "PUT {i}: {}", describe(&r));
        let echo = r.echo();
        assert_eq!((echo.method(), echo.body_len()), ("PUT", 10_000));
    }
    assert_eq!(flaky.requests_with_method("PUT"), 40);
    assert_eq!(flaky.bytes_received() - bytes_before, 40 * 10_000);

    // A body over `max_body_bytes` is not kept for a replay: that PUT meets the failure
    // (the backend's next request is an even one) and gets it.
    let r = client
        .send("PUT", &proxy.url("web", "/small"), &[], body.clone())
        .await;
    assert_eq!(r.status, 503, "{}", describe(&r));
    assert_eq!(
        flaky.requests_with_method("PUT"),
        41,
        "a 10 kB body was retried"
    );
}

/// POST is not idempotent: never retried unless the route allows it, while GETs on the same
/// route are (so retries are on, and the test can fail).
#[tokio::test]
async fn a_post_is_never_retried_by_default() {
    let down = TestBackend::builder("down").status(503).start().await;
    let retry = "retry: {max_attempts: 3, backoff: {base: 1ms, max: 1ms}}";
    let opt_in =
        "retry: {max_attempts: 3, allow_non_idempotent: true, backoff: {base: 1ms, max: 1ms}}";
    let proxy = Proxy::start(config(
        &[
            prefix_route("default", retry, "down"),
            prefix_route("opt-in", opt_in, "down"),
        ],
        &[backend("down", &[&down], "")],
    ))
    .await;
    let client = http1_client();

    for _ in 0..10 {
        let r = client
            .send("POST", &proxy.url("web", "/default"), &[], "order")
            .await;
        assert_eq!(r.status, 503, "{}", describe(&r));
    }
    assert_eq!(
        down.requests_with_method("POST"),
        10,
        "POSTs were retried on a route that does not allow it"
    );

    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("web", "/default")).await.status, 503);
    }
    assert_eq!(down.requests_with_method("GET"), 30, "GETs: 3 tries each");

    for _ in 0..10 {
        let r = client
            .send("POST", &proxy.url("web", "/opt-in"), &[], "order")
            .await;
        assert_eq!(r.status, 503, "{}", describe(&r));
    }
    assert_eq!(
        down.requests_with_method("POST"),
        10 + 30,
        "allow_non_idempotent: 3 tries per POST"
    );
}

/// A reset is retried only when `on` names it (the default does not: the request may have
/// been processed); a response that has started is never retried.
#[tokio::test]
async fn resets_are_retried_only_when_asked_and_started_responses_never() {
    let resetting = TestBackend::builder("resetting").reset().start().await;
    let dying = TestBackend::builder("dying").close_mid_body().start().await;
    let backoff = "backoff: {base: 1ms, max: 1ms}";
    let proxy = Proxy::start(config(
        &[
            prefix_route(
                "default",
                &format!("retry: {{max_attempts: 3, {backoff}}}"),
                "resetting",
            ),
            prefix_route(
                "reset",
                &format!("retry: {{max_attempts: 3, on: \"reset,5xx\", {backoff}}}"),
                "resetting",
            ),
            prefix_route(
                "started",
                &format!("retry: {{max_attempts: 3, on: \"reset,5xx\", {backoff}}}"),
                "dying",
            ),
        ],
        &[
            backend("resetting", &[&resetting], ""),
            backend("dying", &[&dying], ""),
        ],
    ))
    .await;
    let client = http1_client();

    let r = client.get(&proxy.url("web", "/default")).await;
    assert_proxy_error(&r, 502, "upstream-reset");
    assert_eq!(resetting.requests(), 1, "default `on` retried a reset");

    let r = client.get(&proxy.url("web", "/reset")).await;
    assert_proxy_error(&r, 502, "upstream-reset");
    assert_eq!(
        resetting.requests(),
        1 + 3,
        "on: reset retries up to 3 tries"
    );

    let outcome = client
        .try_send("GET", &proxy.url("web", "/started"), &[], Bytes::new())
        .await;
    assert!(
        outcome.is_err(),
        "a body cut short must reach the client as an error, got {:?}",
        outcome.map(|r| describe(&r))
    );
    assert_eq!(
        dying.requests(),
        1,
        "a response already started was retried"
    );
}

/// The retry budget caps retries when everything fails. With `ratio: 0.2, min_per_second: 1,
/// window: 10s`, the window allows `floor(0.2 × requests) + 1 × 10` retries; 48 requests
/// sent well within one window may add `9 + 10 = 19` retries (also 19 if the budget counts a
/// request only after its first try), so the backend sees 48 + 19 tries instead of 96.
#[tokio::test]
async fn the_retry_budget_caps_retries_when_everything_fails() {
    let down = TestBackend::builder("down").status(503).start().await;
    let proxy = Proxy::start(config(
        &[route(
            "r",
            "retry: {max_attempts: 2, backoff: {base: 1ms, max: 1ms}}",
            "down",
        )],
        &[backend(
            "down",
            &[&down],
            "retry_budget: {ratio: 0.2, min_per_second: 1, window: 10s}",
        )],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    let start = Instant::now();
    for _ in 0..48 {
        assert_eq!(client.get(&url).await.status, 503);
    }
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "48 requests took {:?}: no longer within one 10 s window",
        start.elapsed()
    );
    assert_eq!(down.requests(), 48 + 19, "tries at the backend");
    expect_metric(&proxy, "tern_retries_total", &[("backend", "down")], 19.0).await;
    expect_metric(
        &proxy,
        "tern_upstream_attempts_total",
        &[("backend", "down")],
        67.0,
    )
    .await;
    expect_metric(
        &proxy,
        "tern_retry_budget_exhausted_total",
        &[("backend", "down")],
        29.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

/// Asserts `RateLimit-Policy` states the quota `q` per window `w` seconds, the way
/// docs/config.md shows it (draft-ietf-httpapi-ratelimit-headers-09), and `RateLimit` is there.
fn assert_policy(r: &TestResponse, q: u32, w: u32) {
    let policy = r.header("ratelimit-policy").unwrap_or_default();
    assert!(
        policy.contains(&format!("q={q}")) && policy.contains(&format!("w={w}")),
        "RateLimit-Policy {policy:?}, expected q={q} and w={w}; {}",
        describe(r)
    );
    assert!(
        r.header("ratelimit").is_some(),
        "no RateLimit: {:?}",
        r.headers
    );
}

/// Asserts a 429 of the rate limiter with its headers; returns `Retry-After` in seconds.
fn assert_rate_limited(r: &TestResponse) -> u64 {
    assert_proxy_error(r, 429, "rate-limited");
    let retry_after = r
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("429 without whole-seconds Retry-After: {:?}", r.headers));
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    assert!(
        r.header("ratelimit-policy").is_some() && r.header("ratelimit").is_some(),
        "429 without RateLimit-Policy / RateLimit: {:?}",
        r.headers
    );
    retry_after
}

/// 100 req/s with a burst of 10, offered 500 req/s for 5 s by a paced open-loop sender: the
/// requests admitted are `burst + rate × elapsed` within 2 %, `elapsed` being the time from
/// the first send to the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_admits_burst_plus_rate_times_elapsed() {
    let b = TestBackend::echo("b").await;
    let proxy = Proxy::start(config(
        &[route("r", "rate_limit: {rate: 100, burst: 10}", "b")],
        &[backend("b", &[&b], "")],
    ))
    .await;
    let client = Arc::new(http1_client());
    let url = proxy.url("web", "/");

    const SENDS: u32 = 2_500;
    let interval = Duration::from_millis(2);
    let start = tokio::time::Instant::now();
    let mut calls = JoinSet::new();
    let mut first = None;
    let mut last = Instant::now();
    for i in 0..SENDS {
        tokio::time::sleep_until(start + interval * i).await;
        last = Instant::now();
        first.get_or_insert(last);
        let (client, url) = (client.clone(), url.clone());
        calls.spawn(async move { client.get(&url).await });
    }
    let elapsed = last - first.unwrap_or(last);

    let (mut admitted, mut limited) = (0u64, 0u64);
    while let Some(call) = calls.join_next().await {
        let r = call.expect("request task");
        if r.status == 200 {
            admitted += 1;
        } else {
            assert_rate_limited(&r);
            assert_policy(&r, 100, 1);
            limited += 1;
        }
    }
    let expected = 10.0 + 100.0 * elapsed.as_secs_f64();
    let error = (admitted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.02,
        "admitted {admitted} of {SENDS} over {elapsed:?}; expected {expected:.1} ± 2 % \
         (off by {:.1} %)",
        error * 100.0
    );
    assert_eq!(b.requests() as u64, admitted);
    expect_metric(
        &proxy,
        "tern_rate_limited_total",
        &[("listener", "web"), ("route", "r")],
        limited as f64,
    )
    .await;
}

/// Keyed by a header: each key has its own bucket, and requests without the header share one
/// more; a 429 says when to come back.
#[tokio::test]
async fn keyed_rate_limits_are_independent_per_key() {
    let b = TestBackend::echo("b").await;
    let proxy = Proxy::start(config(
        &[route(
            "r",
            "rate_limit: {rate: 1, per: minute, burst: 3, key: {header: x-api-key}}",
            "b",
        )],
        &[backend("b", &[&b], "")],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");

    for key in [Some("alice"), Some("bob"), None] {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let r = client.send("GET", &url, &headers, Bytes::new()).await;
            if r.status == 429 {
                assert_policy(&r, 1, 60);
                let retry_after = assert_rate_limited(&r);
                assert!(
                    retry_after <= 60,
                    "1 per minute: Retry-After {retry_after} s"
                );
            }
            statuses.push(r.status.as_u16());
        }
        assert_eq!(
            statuses,
            [200, 200, 200, 429, 429],
            "key {key:?}: a burst of 3, then limited"
        );
    }
    assert_eq!(b.requests(), 9);
}

/// docs/config.md: "Every response under a limit carries `RateLimit-Policy` and `RateLimit`,
/// a 429 also `Retry-After`": admitted answers tell the client its quota too, with `r` counting
/// down the requests left.
#[tokio::test]
async fn admitted_responses_under_a_limit_carry_the_ratelimit_headers() {
    let b = TestBackend::echo("b").await;
    let proxy = Proxy::start(config(
        &[route(
            "r",
            "rate_limit: {rate: 10, per: minute, burst: 3}",
            "b",
        )],
        &[backend("b", &[&b], "")],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = client.get(&url).await;
        assert_eq!(r.status, 200, "{}", describe(&r));
        assert_policy(&r, 10, 60);
        assert!(r.header("retry-after").is_none(), "Retry-After on a 200");
        remaining.push(r.header("ratelimit").unwrap_or_default().to_owned());
    }
    for (left, header) in [2, 1, 0].iter().zip(&remaining) {
        assert!(
            header.contains(&format!("r={left}")),
            "RateLimit {header:?} should say r={left}; all: {remaining:?}"
        );
    }
}

/// A listener's own limit is checked before routing: its routes share it, and it counts under
/// `route=""`.
#[tokio::test]
async fn a_listener_rate_limit_covers_all_its_routes() {
    let a = TestBackend::echo("a").await;
    let b = TestBackend::echo("b").await;
    let yaml = config(
        &[prefix_route("a", "", "a"), prefix_route("b", "", "b")],
        &[backend("a", &[&a], ""), backend("b", &[&b], "")],
    )
    .replace(
        "    routes:\n",
        "    rate_limit: {rate: 1, per: minute, burst: 2}\n    routes:\n",
    );
    let proxy = Proxy::start(yaml).await;
    let client = http1_client();
    assert_eq!(client.get(&proxy.url("web", "/a")).await.status, 200);
    assert_eq!(client.get(&proxy.url("web", "/b")).await.status, 200);
    assert_rate_limited(&client.get(&proxy.url("web", "/a")).await);
    assert_rate_limited(&client.get(&proxy.url("web", "/b")).await);
    assert_eq!((a.requests(), b.requests()), (1, 1));
    expect_metric(
        &proxy,
        "tern_rate_limited_total",
        &[("listener", "web"), ("route", "")],
        2.0,
    )
    .await;
}

/// gRPC callers get gRPC's answer: HTTP 200, trailers-only, `grpc-status: 8`
/// (RESOURCE_EXHAUSTED) when rate limited, `grpc-status: 4` (DEADLINE_EXCEEDED) on a
/// timeout, and an injected 503 as 14 (UNAVAILABLE), over h2c.
#[tokio::test]
async fn grpc_requests_get_trailers_only_status_8_when_limited_4_on_timeout() {
    let echo = TestBackend::builder("echo").http2().start().await;
    let stuck = TestBackend::builder("stuck").http2().hang().start().await;
    let proxy = Proxy::start(config(
        &[
            prefix_route(
                "limited",
                "rate_limit: {rate: 1, per: minute, burst: 1}",
                "echo",
            ),
            prefix_route("slow", "timeout: 300ms", "stuck"),
            prefix_route(
                "abort",
                "fault: {abort: {percent: 100, status: 503}}",
                "echo",
            ),
        ],
        &[backend_h2("echo", &echo), backend_h2("stuck", &stuck)],
    ))
    .await;
    let client = http2_client();

    let first = grpc_call(&client, &proxy.url("web", "/limited/Svc/Call")).await;
    assert_eq!(first.status, 200, "{}", describe(&first));
    assert_eq!(first.backend(), Some("echo"));
    let second = grpc_call(&client, &proxy.url("web", "/limited/Svc/Call")).await;
    assert_grpc_status(&second, "8", "rate-limited");
    assert_eq!(echo.requests(), 1);

    let (r, took) = timed(grpc_call(&client, &proxy.url("web", "/slow/Svc/Call"))).await;
    assert_grpc_status(&r, "4", "timeout");
    assert_fires_on_time(
        "gRPC route timeout",
        took,
        Duration::from_millis(300),
        Duration::ZERO,
    );

    // An injected 503 maps to UNAVAILABLE (14), gRPC's reading of HTTP 503.
    let r = grpc_call(&client, &proxy.url("web", "/abort/Svc/Call")).await;
    assert_grpc_status(&r, "14", "fault-injected");
    assert_eq!(echo.requests(), 1);
}

/// A backend entry for an h2c test backend.
fn backend_h2(name: &str, member: &TestBackend) -> String {
    backend(name, &[member], "protocol: http2")
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

/// A route timeout of 500 ms against a backend that never answers: 504 `timeout` between 500
/// and 550 ms, for each of several concurrent clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_answers_504_within_ten_percent() {
    let stuck = TestBackend::builder("stuck").hang().start().await;
    let proxy = Proxy::start(config(
        &[route("r", "timeout: 500ms", "stuck")],
        &[backend("stuck", &[&stuck], "")],
    ))
    .await;
    let client = Arc::new(http1_client());
    let url = proxy.url("web", "/");
    let mut calls = JoinSet::new();
    for _ in 0..5 {
        let (client, url) = (client.clone(), url.clone());
        calls.spawn(async move { timed(client.get(&url)).await });
    }
    while let Some(call) = calls.join_next().await {
        let (r, took) = call.expect("request task");
        assert_proxy_error(&r, 504, "timeout");
        assert_fires_on_time(
            "route timeout",
            took,
            Duration::from_millis(500),
            Duration::ZERO,
        );
    }
    assert_eq!(stuck.requests(), 5, "every request reached the backend");
}

/// The route timeout bounds the whole exchange: a backend that sends its head and then
/// stalls mid-body does not hold the client past it (the body ends in an error).
#[tokio::test]
async fn a_route_timeout_also_bounds_a_stalled_body() {
    let stalling = TestBackend::builder("stalling")
        .stall_mid_body()
        .start()
        .await;
    let proxy = Proxy::start(config(
        &[route("r", "timeout: 400ms", "stalling")],
        &[backend("stalling", &[&stalling], "")],
    ))
    .await;
    let client = http1_client();
    let (outcome, took) =
        timed(client.try_send("GET", &proxy.url("web", "/"), &[], Bytes::new())).await;
    assert!(
        outcome.is_err(),
        "a stalled body must end in an error, got {:?}",
        outcome.map(|r| describe(&r))
    );
    assert_fires_on_time(
        "route timeout on a stalled body",
        took,
        Duration::from_millis(400),
        Duration::ZERO,
    );
}

/// Per-try timeouts: every try against a hanging backend expires (504 `timeout` after two
/// tries of 250 ms); and a try that expires moves on to a fresh one that succeeds.
#[tokio::test]
async fn a_per_try_timeout_ends_each_try_and_the_last_one_answers_504() {
    let stuck = TestBackend::builder("stuck").hang().start().await;
    let slow_once = TestBackend::builder("slow-once")
        .delay(Duration::from_secs(10))
        .start()
        .await;
    let retry = "retry: {max_attempts: 2, on: reset, per_try_timeout: 250ms, \
                 backoff: {base: 1ms, max: 1ms}}, timeout: 5s";
    let proxy = Proxy::start(config(
        &[
            prefix_route("stuck", retry, "stuck"),
            prefix_route("slow-once", retry, "slow-once"),
        ],
        &[
            backend("stuck", &[&stuck], ""),
            backend("slow-once", &[&slow_once], ""),
        ],
    ))
    .await;
    let client = Arc::new(http1_client());

    let (r, took) = timed(client.get(&proxy.url("web", "/stuck"))).await;
    assert_proxy_error(&r, 504, "timeout");
    assert_fires_on_time(
        "two per-try timeouts of 250 ms",
        took,
        Duration::from_millis(500),
        Duration::from_millis(1),
    );
    assert_eq!(stuck.requests(), 2, "both tries reached the backend");

    // The first try hangs (10 s delay); once it is in, the backend turns fast, so the retry
    // after the per-try timeout answers at once.
    let url = proxy.url("web", "/slow-once");
    let call = {
        let client = client.clone();
        tokio::spawn(async move { timed(client.get(&url)).await })
    };
    wait_for("the first try at the backend", DEADLINE, async || {
        slow_once.requests() == 1
    })
    .await;
    slow_once.set_delay(Duration::ZERO);
    let (r, took) = call.await.expect("request task");
    assert_eq!(r.status, 200, "{}", describe(&r));
    assert_eq!(slow_once.requests(), 2);
    assert_fires_on_time(
        "a per-try timeout of 250 ms",
        took,
        Duration::from_millis(250),
        Duration::from_millis(1),
    );
}

/// `idle_timeout`: nothing at all from the upstream for 300 ms is a 504 `timeout` before the
/// response head, and a cut body after it.
#[tokio::test]
async fn an_idle_timeout_ends_silent_exchanges_before_and_after_the_head() {
    let stuck = TestBackend::builder("stuck").hang().start().await;
    let stalling = TestBackend::builder("stalling")
        .stall_mid_body()
        .start()
        .await;
    let proxy = Proxy::start(config(
        &[
            prefix_route("stuck", "idle_timeout: 300ms", "stuck"),
            prefix_route("stalling", "idle_timeout: 300ms", "stalling"),
        ],
        &[
            backend("stuck", &[&stuck], ""),
            backend("stalling", &[&stalling], ""),
        ],
    ))
    .await;
    let client = http1_client();
    let idle = Duration::from_millis(300);

    let (r, took) = timed(client.get(&proxy.url("web", "/stuck"))).await;
    assert_proxy_error(&r, 504, "timeout");
    assert_fires_on_time("idle timeout before the head", took, idle, Duration::ZERO);

    let (outcome, took) =
        timed(client.try_send("GET", &proxy.url("web", "/stalling"), &[], Bytes::new())).await;
    assert!(
        outcome.is_err(),
        "a stalled body must end in an error, got {:?}",
        outcome.map(|r| describe(&r))
    );
    assert_fires_on_time("idle timeout mid-body", took, idle, Duration::ZERO);
}

// ---------------------------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------------------------

/// The same workload (8 concurrent clients, 320 requests) against a slow (50 ms) and a fast
/// (1 ms) endpoint: round robin gives the slow one half, P2C-EWMA much less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_sends_less_to_a_slow_endpoint_than_round_robin() {
    let slow = Duration::from_millis(50);
    let fast = Duration::from_millis(1);
    let rr_slow = TestBackend::builder("rr-slow").delay(slow).start().await;
    let rr_fast = TestBackend::builder("rr-fast").delay(fast).start().await;
    let p2c_slow = TestBackend::builder("p2c-slow").delay(slow).start().await;
    let p2c_fast = TestBackend::builder("p2c-fast").delay(fast).start().await;
    let proxy = Proxy::start(config(
        &[prefix_route("rr", "", "rr"), prefix_route("p2c", "", "p2c")],
        &[
            backend(
                "rr",
                &[&rr_slow, &rr_fast],
                "load_balancer: {policy: round_robin}",
            ),
            backend(
                "p2c",
                &[&p2c_slow, &p2c_fast],
                "load_balancer: {policy: p2c_ewma}",
            ),
        ],
    ))
    .await;

    let rr = slow_share(&proxy, "/rr", &rr_slow, &rr_fast).await;
    let p2c = slow_share(&proxy, "/p2c", &p2c_slow, &p2c_fast).await;
    assert!(
        (0.4..=0.6).contains(&rr),
        "round robin gave the slow endpoint {:.1} %, not about half",
        rr * 100.0
    );
    assert!(
        p2c < 0.2 && p2c < rr / 2.0,
        "P2C-EWMA gave the slow endpoint {:.1} % (round robin: {:.1} %)",
        p2c * 100.0,
        rr * 100.0
    );
}

/// The share of 320 requests (8 clients × 40) that went to `slow`.
async fn slow_share(proxy: &Proxy, path: &str, slow: &TestBackend, fast: &TestBackend) -> f64 {
    const CLIENTS: usize = 8;
    const EACH: usize = 40;
    let client = Arc::new(http1_client());
    let url = proxy.url("web", path);
    let mut calls = JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        calls.spawn(async move {
            for _ in 0..EACH {
                let r = client.get(&url).await;
                assert_eq!(r.status, 200, "{}", describe(&r));
            }
        });
    }
    while let Some(call) = calls.join_next().await {
        call.expect("client task");
    }
    let total = slow.requests() + fast.requests();
    assert_eq!(total, CLIENTS * EACH);
    slow.requests() as f64 / total as f64
}

// ---------------------------------------------------------------------------------------------
// Mirroring
// ---------------------------------------------------------------------------------------------

/// A 50 % mirror copies about half of 400 requests: Binomial(400, 0.5) has a standard
/// deviation of 10, so 200 ± 40 (four of them).
#[tokio::test]
async fn a_mirror_receives_about_its_percentage() {
    let main = TestBackend::echo("main").await;
    let shadow = TestBackend::echo("shadow").await;
    let proxy = Proxy::start(config(
        &[route(
            "r",
            "filters: {request_mirror: {backend: shadow, percent: 50}}",
            "main",
        )],
        &[
            backend("main", &[&main], ""),
            backend("shadow", &[&shadow], ""),
        ],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    for _ in 0..400 {
        let r = client.get(&url).await;
        assert_eq!(r.backend(), Some("main"), "{}", describe(&r));
    }
    assert_eq!(main.requests(), 400);
    let labels = [("listener", "web"), ("route", "r"), ("backend", "shadow")];
    wait_for("every mirrored copy arrived", DEADLINE, async || {
        proxy.metric("tern_mirror_requests_total", &labels).await == Some(shadow.requests() as f64)
    })
    .await;
    let copies = shadow.requests();
    assert!(
        (160..=240).contains(&copies),
        "a 50 % mirror got {copies} of 400"
    );
}

/// A mirror that takes 2 s to answer, or whose port is closed, adds no latency and no errors
/// to the real requests.
#[tokio::test]
async fn a_slow_or_dead_mirror_costs_the_real_request_nothing() {
    let main = TestBackend::echo("main").await;
    let slow = TestBackend::builder("slow")
        .delay(Duration::from_secs(2))
        .start()
        .await;
    let proxy = Proxy::start(config(
        &[
            prefix_route("slow", "filters: {request_mirror: {backend: slow}}", "main"),
            prefix_route("dead", "filters: {request_mirror: {backend: dead}}", "main"),
        ],
        &[
            backend("main", &[&main], ""),
            backend("slow", &[&slow], ""),
            backend_at("dead", &[free_addr()], ""),
        ],
    ))
    .await;
    let client = http1_client();
    for path in ["/slow", "/dead"] {
        let start = Instant::now();
        for i in 0..20 {
            let (r, took) = timed(client.get(&proxy.url("web", path))).await;
            assert_eq!(r.status, 200, "{path} {i}: {}", describe(&r));
            assert_eq!(r.backend(), Some("main"));
            assert!(
                took < Duration::from_millis(250),
                "{path} {i}: the real request took {took:?}"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{path}: 20 requests took {:?}, as long as one mirrored answer",
            start.elapsed()
        );
    }
    // The slow mirror did get its copies (while the real requests had long been answered).
    wait_for("20 copies at the slow mirror", DEADLINE, async || {
        slow.requests() == 20
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------

/// Aborts at 100 % and 50 %, and a 100 % delay: the configured status with
/// `fault-injected`, about half of the requests, and the delay added.
#[tokio::test]
async fn fault_injection_aborts_and_delays_as_configured() {
    let b = TestBackend::echo("b").await;
    let proxy = Proxy::start(config(
        &[
            prefix_route("abort", "fault: {abort: {percent: 100, status: 418}}", "b"),
            prefix_route("half", "fault: {abort: {percent: 50, status: 503}}", "b"),
            prefix_route(
                "delay",
                "fault: {delay: {percent: 100, duration: 200ms}}",
                "b",
            ),
        ],
        &[backend("b", &[&b], "")],
    ))
    .await;
    let client = http1_client();

    for _ in 0..20 {
        let r = client.get(&proxy.url("web", "/abort")).await;
        assert_proxy_error(&r, 418, "fault-injected");
    }
    assert_eq!(b.requests(), 0, "an aborted request reached the backend");
    expect_metric(
        &proxy,
        "tern_fault_injected_total",
        &[("listener", "web"), ("route", "abort"), ("kind", "abort")],
        20.0,
    )
    .await;

    // Binomial(400, 0.5): 200 ± 40 at four standard deviations.
    let mut aborted = 0;
    for _ in 0..400 {
        let r = client.get(&proxy.url("web", "/half")).await;
        if r.status == 200 {
            assert_eq!(r.backend(), Some("b"));
        } else {
            assert_proxy_error(&r, 503, "fault-injected");
            aborted += 1;
        }
    }
    assert!(
        (160..=240).contains(&aborted),
        "a 50 % abort hit {aborted} of 400"
    );
    assert_eq!(b.requests(), 400 - aborted);

    let delay = Duration::from_millis(200);
    for _ in 0..5 {
        let (r, took) = timed(client.get(&proxy.url("web", "/delay"))).await;
        assert_eq!(r.status, 200, "{}", describe(&r));
        // The delay must be there; its upper bound allows for a loaded CI machine (the 10 %
        // rule is the timeouts'; here 20 ms of it would be scheduling noise).
        assert_fires_on_time("fault delay", took, delay, Duration::from_millis(50));
    }
    expect_metric(
        &proxy,
        "tern_fault_injected_total",
        &[("listener", "web"), ("route", "delay"), ("kind", "delay")],
        5.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Reloads keep state
// ---------------------------------------------------------------------------------------------

/// An endpoint ejected before a reload that leaves its backend alone is still ejected after
/// it, for the rest of its ejection time.
#[tokio::test]
async fn a_reload_keeps_an_ejected_endpoint_ejected() {
    let bad = TestBackend::builder("bad").status(500).start().await;
    let good = TestBackend::echo("good").await;
    let other = TestBackend::echo("other").await;
    let pool = backend(
        "pool",
        &[&bad, &good],
        "load_balancer: {policy: round_robin}, outlier_detection: \
         {consecutive_failures: 2, base_ejection_time: 30s, max_ejection_percent: 50}",
    );
    let before = config(
        &[route("r", "", "pool")],
        &[pool.clone(), backend("other", &[&other], "")],
    );
    let proxy = Proxy::start(&before).await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    for _ in 0..10 {
        if bad.requests() == 2 {
            break;
        }
        client.get(&url).await;
    }
    wait_state(&proxy, "pool", bad.addr(), "ejected").await;

    // Change another part of the config: a new route to another backend.
    let v = version(&proxy).await;
    proxy.write_config(&config(
        &[prefix_route("other", "", "other"), route("r", "", "pool")],
        &[pool, backend("other", &[&other], "")],
    ));
    wait_for("the reload", DEADLINE, async || version(&proxy).await > v).await;
    assert_eq!(
        client.get(&proxy.url("web", "/other")).await.backend(),
        Some("other"),
        "the new config is not in effect"
    );

    let view = breaker(&breakers(&proxy).await, "pool");
    let ep = endpoint(&view, bad.addr());
    assert_eq!(
        ep["state"], "ejected",
        "the reload reset the ejection: {view:#}"
    );
    assert_eq!(ep["times_ejected"], 1, "{view:#}");
    for _ in 0..10 {
        assert_eq!(client.get(&url).await.backend(), Some("good"));
    }
    assert_eq!(
        bad.requests(),
        2,
        "the ejected endpoint got traffic after the reload"
    );
    expect_metric(
        &proxy,
        "tern_outlier_ejections_total",
        &[("backend", "pool")],
        1.0,
    )
    .await;
}

/// A reload that leaves a route's rate limit alone does not refill its drained bucket.
#[tokio::test]
async fn a_reload_does_not_refill_a_drained_bucket() {
    let b = TestBackend::echo("b").await;
    let limited = route("r", "rate_limit: {rate: 1, per: minute, burst: 3}", "b");
    let proxy = Proxy::start(config(
        std::slice::from_ref(&limited),
        &[backend("b", &[&b], "")],
    ))
    .await;
    let client = http1_client();
    let url = proxy.url("web", "/");
    for _ in 0..3 {
        assert_eq!(client.get(&url).await.status, 200);
    }
    assert_rate_limited(&client.get(&url).await);

    let v = version(&proxy).await;
    proxy.write_config(&config(
        &[prefix_route("other", "", "b"), limited],
        &[backend("b", &[&b], "")],
    ));
    wait_for("the reload", DEADLINE, async || version(&proxy).await > v).await;
    assert_eq!(
        client.get(&proxy.url("web", "/other")).await.status,
        200,
        "the new config is not in effect"
    );
    assert_rate_limited(&client.get(&url).await);
    assert_eq!(b.requests(), 3 + 1);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// `tern-proxy validate` names the field of each bad resilience value.
#[test]
fn validate_names_the_field_of_a_bad_resilience_value() {
    let (code, out) = validate(
        "listeners:
  - name: web
    address: 127.0.0.1:1
    routes:
      - name: r
        retry: {max_attempts: 0}
        fault: {abort: {percent: 150}}
        filters: {request_mirror: {backend: nowhere}}
        backends: [{name: b}]
backends:
  - name: b
    endpoints: [\"127.0.0.1:2\"]
    outlier_detection: {max_ejection_percent: 150}
    retry_budget: {window: 90s}
",
    );
    assert_eq!(code, 1, "{out}");
    for path in [
        "listeners[0].routes[0].retry",
        "listeners[0].routes[0].fault.abort.percent",
        "listeners[0].routes[0].filters.request_mirror.backend",
        "backends[0].outlier_detection.max_ejection_percent",
        "backends[0].retry_budget",
    ] {
        assert!(out.contains(path), "no {path} in:\n{out}");
    }
}

/// An HTTP/2 upstream that refuses the first `refuse` streams with `REFUSED_STREAM` and
/// answers the others `200 served`. Returns its address and the number of streams it has seen.
async fn refusing_h2_upstream(refuse: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let addr = tern_e2e::h2_upstream(move |_request, mut respond| {
        let refused = count.fetch_add(1, Ordering::SeqCst) < refuse;
        async move {
            if refused {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return;
            }
            let response = http::Response::builder()
                .status(200)
                .body(())
                .expect("a response head");
            if let Ok(mut body) = respond.send_response(response, false) {
                let _ = body.send_data(Bytes::from_static(b"served"), true);
            }
        }
    })
    .await;
    (addr, seen)
}

/// RFC 9113 §8.7: a stream refused with `REFUSED_STREAM` was not processed, so the proxy
/// retries it (the default retry conditions include `refused-stream`, as Istio's do) and the
/// client sees the second try's answer; with retries off it sees a 502.
#[tokio::test]
async fn a_refused_h2_stream_is_retried() {
    let (retried, retried_seen) = refusing_h2_upstream(1).await;
    let (plain, plain_seen) = refusing_h2_upstream(1).await;
    let proxy = Proxy::start(config(
        &[
            prefix_route(
                "retried",
                "retry: {max_attempts: 2, backoff: {base: 1ms, max: 1ms}}",
                "retried",
            ),
            prefix_route("plain", "", "plain"),
        ],
        &[
            backend_at("retried", &[retried], "protocol: http2"),
            backend_at("plain", &[plain], "protocol: http2"),
        ],
    ))
    .await;
    let client = http1_client();

    let r = client.get(&proxy.url("web", "/retried")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "served");
    assert_eq!(
        retried_seen.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one refused stream, one retry"
    );

    let r = client.get(&proxy.url("web", "/plain")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(plain_seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The connection stays usable: the next request on it is answered.
    let r = client.get(&proxy.url("web", "/plain")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "served");
}

/// An HTTP/2 upstream that never answers: it reads each request body and counts the streams
/// the proxy resets while it reads.
async fn silent_h2_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let resets = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&resets);
    let addr = tern_e2e::h2_upstream(move |request, respond| {
        let count = Arc::clone(&count);
        async move {
            let _respond = respond;
            let mut body = request.into_body();
            loop {
                match body.data().await {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                    }
                    Some(Err(_)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    None => return,
                }
            }
        }
    })
    .await;
    (addr, resets)
}

/// A request that times out while its client is still sending the body: the client gets its
/// 504 and the upstream sees its stream reset at once, rather than working on for as long as
/// the client keeps the body open (cancellation reaches the upstream, as it does for a client
/// that leaves).
#[tokio::test]
async fn a_timed_out_request_resets_its_h2_upstream_stream_while_its_body_still_streams() {
    use std::sync::atomic::Ordering;
    let (upstream, resets) = silent_h2_upstream().await;
    let proxy = Proxy::start(config(
        &[route("slow", "timeout: 300ms", "silent")],
        &[backend_at("silent", &[upstream], "protocol: http2")],
    ))
    .await;

    let mut client = tern_e2e::h2_connect(proxy.addr("web"))
        .await
        .expect("an HTTP/2 connection to the proxy");
    let request = http::Request::post(proxy.url("web", "/upload"))
        .body(())
        .expect("a request head");
    let (response, mut body) = client
        .send_request(request, false)
        .expect("the request goes out");
    body.send_data(Bytes::from_static(b"the first chunk"), false)
        .expect("the first chunk goes out");
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("an answer within the deadline")
        .expect("a response");
    assert_eq!(response.status(), 504);
    wait_for(
        "the upstream stream reset after the timeout",
        DEADLINE,
        async || resets.load(Ordering::SeqCst) == 1,
    )
    .await;
    // The client's body was never ended: it is still open here.
    drop(body);
}
