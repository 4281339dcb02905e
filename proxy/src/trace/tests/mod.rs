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

/// Every byte value comes out as `{:02x}` writes it, and decodes back.
#[test]
fn hex_encodes_every_byte_as_two_lower_case_digits() {
    let bytes: Vec<u8> = (0..=255).collect();
    let mut out = vec![0; 512];
    super::hex::encode(&bytes, &mut out);
    let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(super::hex::as_str(&out), expected);
    for (i, pair) in out.chunks_exact(2).enumerate() {
        assert_eq!(super::hex::decode::<1>(pair), Some([i as u8]));
    }
}
