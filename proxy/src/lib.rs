//! Tern's data-plane proxy.
//!
//! Layout: `config` is the typed contract (YAML or pushed by the control plane) and its
//! validation; `snapshot` compiles it into the immutable tables the request path reads;
//! `app` applies configs and runs the control thread (`admin`, `reload`); `workers` are
//! single-threaded runtimes that each accept on their own `SO_REUSEPORT` sockets
//! (`listener`), detect the protocol (`detect`), and serve HTTP (`http`: our HTTP/1.1 server
//! `http::server::h1` and hyper's HTTP/2 one, the request path in `http::proxy`, our HTTP/1.1
//! upstream client `http::client`, the framing both share in `http::h1`, the HTTP/2 upstream
//! client on the `h2` crate `http::h2client`, the write batching both HTTP/2 sides share
//! `http::h2io`, and the per-worker upstream `http::pool`) or
//! opaque TCP (`tcp`). Routing is
//! `router`, the weighted canary pick is `split`, failures map to responses in `error`.
//! Resilience: `breaker` (per-backend limits, outlier ejection), `balance` (P2C over
//! peak-EWMA, round robin, least request), `retry` (policy, backoff, budget) and `ratelimit`
//! (governor token buckets, keyed with bounded memory) are IO-free cores that `http::exchange`
//! and `http::proxy` apply per request.
//! Observability: `reqid` (keep or make `x-request-id`), `trace` (W3C and B3 propagation,
//! sampling, span records, OTLP protobuf written from them and exported in batches from a
//! bounded queue), `accesslog` (JSON lines with redacted business headers, formatted on the
//! worker into bounded per-thread buffers that a writer task empties), applied per request by
//! `http::observe`; `metrics` is the Prometheus registry.
//! `docs/request-lifecycle.md` draws a request's way through these.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod accesslog;
mod addrtext;
pub mod admin;
pub mod app;
pub mod balance;
pub mod breaker;
pub mod config;
pub mod demo;
pub mod detect;
pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod reload;
pub mod reqid;
pub mod retry;
pub mod router;
pub mod snapshot;
mod spares;
pub mod split;
pub mod tcp;
pub mod trace;
pub mod workers;
