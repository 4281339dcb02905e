//! Unit tests of the trace cores; `export` runs the pipeline against recording exporters and
//! real in-process OTLP receivers (gRPC and HTTP) on 127.0.0.1:0.

mod b3;
mod export;
mod propagate;
mod sampler;
mod span;
mod w3c;

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `(name, value)` pairs (repeated names append).
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}
