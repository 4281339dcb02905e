//! Observability on the request path: trace-context parse, start and inject (every request of
//! a traced listener, sampled or not), the request id, and one access-log line's formatting.
//! Run: `cargo bench -p tern-benches --bench observe`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tern_proxy::accesslog::{
    AccessRecord, Captured, Hasher, LogFormat, LoggedHeader, Redact, write_json,
};
use tern_proxy::reqid::RequestIds;
use tern_proxy::trace::{Propagation, Sampler, SpanContext, SpanId, TraceId, w3c};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn typical(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for &(k, v) in [
        ("host", "shop.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        ("x-user-id", "u-1029384756"),
    ]
    .iter()
    .chain(extra)
    {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

/// `h` as hyper hands a parsed request over: a map sized for the fields it holds (a clone would
/// have no room left, and the bench would measure the map growing).
fn as_parsed(h: &HeaderMap) -> HeaderMap {
    let mut m = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        m.append(k.clone(), v.clone());
    }
    m
}

fn bench_traceparent(c: &mut Criterion) {
    let mut group = c.benchmark_group("traceparent");
    group.bench_function("parse", |b| {
        b.iter(|| black_box(w3c::parse_traceparent(black_box(TRACEPARENT.as_bytes()))))
    });
    let span = SpanContext {
        trace_id: TraceId::from_u128(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        span_id: SpanId::from_u64(0x00f0_67aa_0ba9_02b7),
        sampled: true,
        debug: false,
    };
    group.bench_function("format", |b| {
        b.iter(|| {
            let mut buf = [0; w3c::TRACEPARENT_LEN];
            black_box(w3c::format_traceparent(black_box(&span), &mut buf).len())
        })
    });
    group.finish();
}

/// What a traced listener does to every request: extract, start this hop's span (sampling a
/// new trace at 1 %), inject the upstream headers.
fn bench_start_and_inject(c: &mut Criterion) {
    let mut group = c.benchmark_group("trace_start_and_inject");
    let propagation = Propagation::new(None, Sampler::ratio(0.01));
    for (label, headers) in [
        ("nothing_in", typical(&[])),
        ("w3c_in", typical(&[("traceparent", TRACEPARENT)])),
        (
            "b3_multi_in",
            typical(&[
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
                ("x-b3-sampled", "1"),
            ]),
        ),
    ] {
        let mut rng = fastrand::Rng::with_seed(7);
        group.bench_with_input(BenchmarkId::from_parameter(label), &headers, |b, h| {
            b.iter_batched(
                || as_parsed(h),
                |mut h| {
                    let ctx = propagation.start_with(&h, &mut rng);
                    propagation.inject(&ctx, &mut h);
                    black_box((ctx.sampled(), h))
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_request_id(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_id");
    let ids = RequestIds::default();
    for (label, headers) in [
        ("generated", typical(&[])),
        (
            "kept",
            typical(&[("x-request-id", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736")]),
        ),
    ] {
        let mut rng = fastrand::Rng::with_seed(7);
        group.bench_with_input(BenchmarkId::from_parameter(label), &headers, |b, h| {
            b.iter_batched(
                || as_parsed(h),
                |mut h| black_box(ids.ensure_with(&mut h, &mut rng)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// One access-log line as the benchmark harness's `tern-traced` case logs it (one business
/// header), and with a hashed one (the HMAC is most of a redacting line's cost).
fn bench_access_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("access_log_line");
    let headers = typical(&[]);
    for (label, redact) in [
        ("plain_header", Redact::None),
        ("hashed_header", Redact::Hash),
    ] {
        let format = LogFormat::new(
            Arc::from("ingress"),
            vec![LoggedHeader {
                name: HeaderName::from_static("x-user-id"),
                redact,
            }],
            vec![],
            false,
            Hasher::keyed(b"bench-key"),
        )
        .expect("the bench's log format is valid");
        let format = Arc::new(format);
        let mut r = AccessRecord::new(Arc::clone(&format), SystemTime::now());
        r.duration = Duration::from_micros(1234);
        r.upstream = Some(Duration::from_micros(1100));
        r.trace_id = Some(TraceId::from_u128(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        ));
        r.span_id = Some(SpanId::from_u64(0x00f0_67aa_0ba9_02b7));
        r.client = Some(([10, 1, 2, 3], 54321).into());
        r.method = Method::GET;
        r.path = Some(PathAndQuery::from_static("/api/v1/cart/items"));
        r.version = Version::HTTP_11;
        r.status = Some(StatusCode::OK);
        r.bytes_out = 1024;
        r.route = Some(Arc::from("cart"));
        r.backend = Some(Arc::from("cart-v2"));
        r.endpoint = Some(([10, 1, 7, 9], 8080).into());
        r.attempts = 1;
        r.request_headers = Captured::capture(&format.request_headers, &headers);
        let mut out = Vec::with_capacity(64 * 1024);
        group.bench_with_input(BenchmarkId::from_parameter(label), &r, |b, r| {
            b.iter(|| {
                if out.len() > 60 * 1024 {
                    out.clear();
                }
                write_json(black_box(r), &mut out);
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_traceparent,
    bench_start_and_inject,
    bench_request_id,
    bench_access_line
);
criterion_main!(benches);
