//! The resilience layers' per-request bookkeeping: a rate limiter's check (unkeyed, keyed by
//! client address, keyed by a header), the circuit breaker's request permit, and outlier
//! detection's record and availability check. Run: `cargo bench -p tern-benches --bench
//! resilience`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use tern_proxy::breaker::limits::{LimitCounters, Limits};
use tern_proxy::breaker::outlier::{Outcome, OutlierConfig, OutlierDetector};
use tern_proxy::ratelimit::{Key, KeyInput, Limiter, Per, RateLimitConfig};

/// Limits that never refuse in the bench: the cost measured is the check, not the refusal.
fn config(key: Key) -> RateLimitConfig {
    RateLimitConfig {
        key,
        max_keys: 10_000,
        ..RateLimitConfig::new(1_000_000_000, Per::Second, 1_000_000)
    }
}

fn bench_rate_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_check");
    let headers = {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("k-1029384756"),
        );
        h
    };
    let ip = |i: u32| Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
    for (label, key) in [
        ("unkeyed", Key::None),
        ("client_ip_1000_clients", Key::ClientIp),
        ("header", Key::Header(HeaderName::from_static("x-api-key"))),
    ] {
        let limiter = Limiter::new(&config(key)).expect("the bench's limit is valid");
        let mut i = 0u32;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                i = (i + 1) % 1000;
                black_box(limiter.check(KeyInput {
                    client_ip: ip(i),
                    headers: &headers,
                }))
            })
        });
    }
    group.finish();
}

/// A request's permit against the backend's `max_requests`: taken and given back.
fn bench_breaker_permit(c: &mut Criterion) {
    let counters = Arc::new(LimitCounters::new());
    let limits = Limits::default();
    c.bench_function("breaker_request_permit", |b| {
        b.iter(|| black_box(counters.try_acquire_request(&limits)))
    });
}

/// Outlier detection per exchange: is the picked endpoint available, then how it went.
fn bench_outlier(c: &mut Criterion) {
    let addrs: Vec<SocketAddr> = (0..10u16)
        .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
        .collect();
    let detector = OutlierDetector::new(&addrs, OutlierConfig::default(), Instant::now());
    let now = Instant::now();
    let mut group = c.benchmark_group("outlier");
    group.bench_function("available_then_success", |b| {
        b.iter(|| {
            black_box(detector.is_available(3, now));
            black_box(detector.record(3, Outcome::Success, now))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_rate_limit,
    bench_breaker_permit,
    bench_outlier
);
criterion_main!(benches);
