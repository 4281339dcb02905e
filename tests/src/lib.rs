//! Tern's end-to-end test harness: every test in `tests/tests/` starts the real `tern-proxy`
//! binary against real HTTP servers on loopback and talks to it with real clients, through
//! this one library, so tests read as what they check rather than how to set it up.
//!
//! # Layout
//!
//! - [`backend`]: test backends (echo, slow, failing, h2c, trailers, large bodies, upgrade
//!   echo) that report what the proxy sent them, and misbehaving ones for resilience tests:
//!   failing every n-th request, status and delay switchable while running, hanging,
//!   resetting, dying or stalling mid-body; counts per method and of requests in flight; a
//!   bare `h2` upstream for stream-level behaviour (`h2_upstream`).
//! - [`proxy`]: launching the proxy binary with a config file; readiness, logs, signals,
//!   reloads, admin calls, `validate`.
//! - [`config`]: filling ports into config text (`127.0.0.1:0` → a free port), small config
//!   builders.
//! - [`client`]: HTTP/1.1 and h2c clients, collected responses, raw HTTP/1 bytes, bare `h2`.
//! - [`body`]: bodies both sides use: whole, generated and verifiable, hand-fed.
//! - [`metrics`]: a Prometheus / OpenMetrics text parser.
//! - [`otlp`]: test collectors for span export: an OTLP receiver (gRPC or HTTP/protobuf) that
//!   keeps the spans it gets and waits for them, a black hole that never answers, a down one.
//! - [`accesslog`]: an access-log file in a temp dir, read back as JSON lines.
//! - [`trace`]: `traceparent` parsing and id shape checks (UUID v4, hex ids).
//! - [`ports`], [`wait`]: free loopback ports; waiting on conditions with deadlines.
//!
//! # Running
//!
//! Cargo does not build another crate's binaries for integration tests, so build the proxy
//! first, with the same profile: `cargo build -p tern-proxy && cargo test -p tern-e2e`. The
//! harness finds `target/<profile>/tern-proxy`, or `$TERN_PROXY_BIN`.
//!
//! # Writing a test
//!
//! ```no_run
//! use std::time::Duration;
//! use tern_e2e::{Proxy, TestBackend, config, http1_client, wait_for};
//!
//! #[tokio::test]
//! async fn splits_by_weight() {
//!     let a = TestBackend::echo("a").await;
//!     let b = TestBackend::builder("b").status(503).start().await;
//!     let proxy = Proxy::start(config::split(&[(&a, 1), (&b, 0)])).await;
//!
//!     let response = http1_client().get(&proxy.url("web", "/hello?x=1")).await;
//!     assert_eq!(response.status, 200);
//!     assert_eq!(response.echo().path(), "/hello?x=1");
//!     assert_eq!(b.requests(), 0);
//!     wait_for("the request in metrics", Duration::from_secs(5), async || {
//!         proxy.metric("tern_requests_total", &[("backend", "a")]).await == Some(1.0)
//!     })
//!     .await;
//! }
//! ```
//!
//! # Config shape
//!
//! Tests write the proxy's YAML (the contract in `proxy/src/config/mod.rs`: snake_case
//! fields, humantime durations) and may use two conveniences of the harness:
//! `127.0.0.1:0` for "a free port" ([`config::ANY_PORT`]; read it back with
//! [`Proxy::addr`]), and leaving out `admin` (the harness adds one on a free port). A test
//! that needs more than [`config::simple`] writes it out; `{{`/`}}` escape braces in
//! `format!`, and [`TestBackend::yaml`] gives a backend entry that fits any indentation:
//!
//! ```yaml
//! shutdown_grace: 2s
//! listeners:
//!   - name: web                  # Proxy::addr("web"), Proxy::url("web", "/path")
//!     address: 127.0.0.1:0
//!     protocol: auto             # auto | http1 | http2 | tcp
//!     routes:
//!       - name: api
//!         hostnames: ["api.example.com"]
//!         matches:
//!           - path: {type: PathPrefix, value: /api}
//!             headers: [{name: x-canary, value: "yes"}]
//!         filters:
//!           request_headers: {set: [{name: x-env, value: test}]}
//!           url_rewrite: {path: {type: ReplacePrefixMatch, value: /v2}}
//!         timeout: 500ms
//!         backends: [{name: a, weight: 90}, {name: b, weight: 10}]
//! backends:
//!   - {name: "a", endpoints: ["127.0.0.1:40001"]}                     # a.yaml()
//!   - {name: "b", endpoints: ["127.0.0.1:40002"], protocol: http2}    # b.yaml(), an h2c backend
//! ```
//!
//! # Rules
//!
//! - Every address is loopback with a port the harness or the kernel chose: tests run in
//!   parallel.
//! - Never sleep for luck: wait for the condition with [`wait_for`] and a deadline.
//! - Backends and clients run on the test's tokio runtime (`#[tokio::test]`); the proxy is a
//!   separate process, killed when the [`Proxy`] is dropped.

pub mod accesslog;
pub mod backend;
pub mod body;
pub mod client;
pub mod config;
pub mod metrics;
pub mod otlp;
pub mod ports;
pub mod proxy;
pub mod trace;
pub mod wait;

pub use accesslog::AccessLogFile;
pub use backend::{BACKEND_HEADER, BackendBuilder, ServerProtocol, TestBackend, h2_upstream};
pub use body::Body;
pub use client::{
    Echo, TestClient, TestResponse, h2_connect, http1_client, http2_client, raw_http1,
    raw_http1_until_close, raw_status,
};
pub use config::ANY_PORT;
pub use otlp::{BlackHole, OtlpProtocol, OtlpReceiver, ReceivedSpan, down_endpoint};
pub use ports::{free_addr, free_port};
pub use proxy::{Proxy, ProxyBuilder, proxy_binary, validate};
pub use trace::TraceParent;
pub use wait::{wait_for, wait_for_value, wait_for_value_explained};
