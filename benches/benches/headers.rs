//! Header hygiene at the proxy boundary (`strip_hop_by_hop`, twice per exchange on the request
//! path) and a route's header rewriting (`HeaderOps::apply`: set, add, remove). Run: `cargo
//! bench -p tern-benches --bench headers`.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use tern_proxy::config::{HeaderModifier, HeaderValueSpec};
use tern_proxy::http::headers::strip_hop_by_hop;
use tern_proxy::snapshot::HeaderOps;

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for &(k, v) in pairs {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

const TYPICAL: [(&str, &str); 6] = [
    ("host", "shop.example.com"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
    ("accept", "text/html,application/xhtml+xml"),
    ("accept-encoding", "gzip, deflate, br"),
    ("cookie", "session=4bf92f3577b34da6a3ce929d0e0e4736"),
    ("x-request-id", "4bf92f3577b34da6"),
];

fn bench_strip(c: &mut Criterion) {
    let mut group = c.benchmark_group("strip_hop_by_hop");
    let none = map(&TYPICAL);
    let mut keep_alive = TYPICAL.to_vec();
    keep_alive.push(("connection", "keep-alive"));
    let keep_alive = map(&keep_alive);
    let mut many = TYPICAL.to_vec();
    many.extend([
        ("connection", "close, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers, deflate"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("transfer-encoding", "chunked"),
    ]);
    let many = map(&many);
    for (label, headers) in [
        ("none", &none),
        ("connection_keep_alive", &keep_alive),
        ("all_kinds", &many),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(label), headers, |b, h| {
            b.iter_batched(
                || h.clone(),
                |mut h| {
                    strip_hop_by_hop(&mut h, false);
                    black_box(h)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A route that sets one header, adds one and removes one: what a canary route typically does.
fn bench_rewrite(c: &mut Criterion) {
    let spec = |name: &str, value: &str| HeaderValueSpec {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let ops = HeaderOps::compile(&HeaderModifier {
        set: vec![spec("x-canary", "true")],
        add: vec![spec("x-served-by", "tern")],
        remove: vec!["cookie".to_owned()],
    })
    .expect("the bench's header edits are valid");
    let headers = map(&TYPICAL);
    c.bench_function("header_rewrite_set_add_remove", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                ops.apply(&mut h);
                black_box(h)
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_strip, bench_rewrite);
criterion_main!(benches);
