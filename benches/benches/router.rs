//! Route matching (`Router::find`) against 10 and 1,000 routes, and path normalization.
//! Run: `cargo bench -p tern-benches --bench router`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::json;
use tern_proxy::config::Route;
use tern_proxy::router::{RequestParts, Router, normalize_path};

fn route(value: serde_json::Value) -> Route {
    match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => panic!("bad route in the benchmark: {e}"),
    }
}

fn router(routes: &[Route]) -> Router {
    match Router::new(routes) {
        Ok(r) => r,
        Err(e) => panic!("routes do not compile: {e}"),
    }
}

/// `n` routes, each with its own hostname (the lookup is a hash of the host, then a short
/// list), plus a catch-all.
fn by_host(n: usize) -> Vec<Route> {
    let mut routes: Vec<Route> = (0..n)
        .map(|i| {
            route(json!({
                "name": format!("svc{i}"),
                "hostnames": [format!("svc{i}.example.com")],
                "matches": [
                    { "path": { "type": "PathPrefix", "value": "/api" }, "method": "GET" },
                    { "path": { "type": "Exact", "value": "/healthz" } }
                ],
                "backends": [{ "name": "b" }]
            }))
        })
        .collect();
    routes.push(route(
        json!({ "name": "default", "backends": [{ "name": "b" }] }),
    ));
    routes
}

/// `n` routes without hostnames that differ by path, some with header conditions, as an
/// ingress with many services on one host has.
fn by_path(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| {
            let mut m =
                json!({ "path": { "type": "PathPrefix", "value": format!("/svc{i}/api") } });
            if i % 4 == 0 {
                m["headers"] = json!([{ "name": "x-tenant", "value": format!("t{i}") }]);
            }
            route(json!({
                "name": format!("svc{i}"),
                "matches": [m],
                "backends": [{ "name": "b" }]
            }))
        })
        .collect()
}

/// The routes of `by_path`, all naming one hostname, plus that host's default
/// (`PathPrefix /`) and a regex route, so a lookup has both path-anchored candidates and
/// candidates that may match any path to interleave.
fn by_path_one_host(n: usize) -> Vec<Route> {
    let mut routes = by_path(n);
    for r in &mut routes {
        r.hostnames = vec!["shop.example.com".into()];
    }
    routes.push(route(json!({
        "name": "assets",
        "hostnames": ["shop.example.com"],
        "matches": [{ "path": { "type": "RegularExpression", "value": "/.*\\.(css|js)" } }],
        "backends": [{ "name": "b" }]
    })));
    routes.push(route(json!({
        "name": "shop-default",
        "hostnames": ["shop.example.com"],
        "backends": [{ "name": "b" }]
    })));
    routes
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("x-tenant", "t4"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench_find(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_find");
    let hdrs = headers();
    let get = Method::GET;
    for n in [10usize, 1000] {
        let r = router(&by_host(n));
        let cases = [
            ("host_first", "svc0.example.com", "/api/users/42"),
            (
                "host_last",
                &*format!("svc{}.example.com", n - 1),
                "/api/users/42",
            ),
            ("host_unknown", "other.example.com", "/api/users/42"),
        ];
        for (label, host, path) in cases {
            let req = RequestParts {
                host,
                method: &get,
                path,
                query: Some("page=2"),
                headers: &hdrs,
            };
            group.bench_with_input(BenchmarkId::new(label, n), &req, |b, req| {
                b.iter(|| black_box(r.find(black_box(req))))
            });
        }

        let r = router(&by_path(n));
        let last = format!("/svc{}/api/users/42", n - 1);
        // Longer prefixes rank first, so `/svc0/api` (declared first) is near the end of
        // the walk and the last-declared `/svc{n-1}/api` near its start.
        let cases = [
            ("path_declared_first", "/svc0/api/users/42"),
            ("path_declared_last", last.as_str()),
            ("path_no_match", "/nothing/here"),
        ];
        for (label, path) in cases {
            let req = RequestParts {
                host: "shop.example.com",
                method: &get,
                path,
                query: None,
                headers: &hdrs,
            };
            group.bench_with_input(BenchmarkId::new(label, n), &req, |b, req| {
                b.iter(|| black_box(r.find(black_box(req))))
            });
        }

        let r = router(&by_path_one_host(n));
        let cases = [
            ("one_host_path_declared_first", "/svc0/api/users/42"),
            ("one_host_path_declared_last", last.as_str()),
            ("one_host_path_regex", "/static/app.js"),
            ("one_host_path_default", "/nothing/here"),
        ];
        for (label, path) in cases {
            let req = RequestParts {
                host: "shop.example.com",
                method: &get,
                path,
                query: None,
                headers: &hdrs,
            };
            group.bench_with_input(BenchmarkId::new(label, n), &req, |b, req| {
                b.iter(|| black_box(r.find(black_box(req))))
            });
        }
    }
    group.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    for (label, path) in [
        ("normal", "/api/v1/users/42/orders"),
        ("dot_segments", "/api/v1/./users/../users/42//orders"),
        ("encoded", "/api/v1/users%2F..%2F42/%2e%2e/orders"),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(label), path, |b, p| {
            b.iter(|| black_box(normalize_path(black_box(p))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_find, bench_normalize);
criterion_main!(benches);
