use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use opentelemetry::trace::{SpanKind as OtelKind, Status};
use opentelemetry::{InstrumentationScope, Value};

use crate::error::ProxyError;
use crate::trace::*;

fn record(kind: SpanKind) -> SpanRecord {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut r = SpanRecord::new(
        TraceId::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
        SpanId::from_u64(0xaa),
        Some(SpanId::from_u64(0xbb)),
        kind,
        Arc::from("inbound"),
        start,
    );
    r.end = start + Duration::from_millis(12);
    r.method = Method::POST;
    r.path = Some("/orders/42?token=secret".parse().unwrap());
    r.host = Some(Host::Header(HeaderValue::from_static(
        "shop.example.com:8080",
    )));
    r.version = Version::HTTP_2;
    r.status = Some(StatusCode::CREATED);
    r.route = Some(Arc::from("orders"));
    r.backend = Some(Arc::from("orders-v2"));
    r.endpoint = Some("10.0.0.7:9000".parse().unwrap());
    r.retries = 2;
    r
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("tern-proxy").build()
}

fn attr(data: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<Value> {
    data.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn s(v: &str) -> Option<Value> {
    Some(Value::from(v.to_owned()))
}

#[test]
fn a_record_converts_to_span_data_with_the_issues_attributes() {
    let d = record(SpanKind::Server).to_span_data(&scope());
    assert_eq!(
        d.span_context.trace_id().to_string(),
        "0102030405060708090a0b0c0d0e0f10"
    );
    assert_eq!(d.span_context.span_id().to_string(), "00000000000000aa");
    assert!(d.span_context.is_sampled());
    assert_eq!(d.parent_span_id.to_string(), "00000000000000bb");
    assert!(d.parent_span_is_remote);
    assert_eq!(d.span_kind, OtelKind::Server);
    assert_eq!(d.name, "POST orders");
    assert_eq!(
        d.end_time.duration_since(d.start_time).unwrap(),
        Duration::from_millis(12)
    );
    assert_eq!(d.status, Status::Unset);
    assert_eq!(attr(&d, "http.request.method"), s("POST"));
    assert_eq!(attr(&d, "url.path"), s("/orders/42"), "never the query");
    assert_eq!(attr(&d, "url.scheme"), s("http"));
    assert_eq!(attr(&d, "http.response.status_code"), Some(Value::I64(201)));
    assert_eq!(attr(&d, "server.address"), s("shop.example.com"));
    assert_eq!(attr(&d, "server.port"), Some(Value::I64(8080)));
    assert_eq!(attr(&d, "network.protocol.version"), s("2"));
    assert_eq!(attr(&d, "tern.listener"), s("inbound"));
    assert_eq!(attr(&d, "tern.route"), s("orders"));
    assert_eq!(attr(&d, "tern.backend"), s("orders-v2"));
    assert_eq!(attr(&d, "tern.endpoint"), s("10.0.0.7:9000"));
    assert_eq!(attr(&d, "tern.retries"), Some(Value::I64(2)));
    assert_eq!(attr(&d, "tern.error"), None);
    assert_eq!(attr(&d, "error.type"), None);
    assert_eq!(d.instrumentation_scope.name(), "tern-proxy");
}

#[test]
fn a_root_span_has_no_parent() {
    let mut r = record(SpanKind::Client);
    r.parent_span_id = None;
    r.route = None;
    let d = r.to_span_data(&scope());
    assert_eq!(d.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    assert!(!d.parent_span_is_remote);
    assert_eq!(d.span_kind, OtelKind::Client);
    assert_eq!(d.name, "POST", "no route: just the method");
}

#[test]
fn status_follows_the_http_conventions() {
    let with = |kind, status: u16| {
        let mut r = record(kind);
        r.status = Some(StatusCode::from_u16(status).unwrap());
        r.to_span_data(&scope())
    };
    assert_eq!(with(SpanKind::Server, 404).status, Status::Unset);
    assert_eq!(attr(&with(SpanKind::Server, 404), "error.type"), None);
    assert!(matches!(
        with(SpanKind::Client, 404).status,
        Status::Error { .. }
    ));
    assert_eq!(attr(&with(SpanKind::Client, 404), "error.type"), s("404"));
    assert!(matches!(
        with(SpanKind::Server, 503).status,
        Status::Error { .. }
    ));
    assert_eq!(attr(&with(SpanKind::Server, 503), "error.type"), s("503"));

    let mut r = record(SpanKind::Server);
    r.status = Some(StatusCode::GATEWAY_TIMEOUT);
    r.error = Some(ProxyError::Timeout);
    let d = r.to_span_data(&scope());
    assert_eq!(d.status, Status::error(ProxyError::Timeout.to_string()));
    assert_eq!(attr(&d, "tern.error"), s("timeout"));
    assert_eq!(attr(&d, "error.type"), s("timeout"));
}

#[test]
fn unusual_methods_hosts_and_no_response() {
    let mut r = record(SpanKind::Server);
    r.method = Method::from_bytes(b"PURGE").unwrap();
    r.host = Some(Host::Uri("[::1]:8443".parse().unwrap()));
    r.status = None;
    r.version = Version::HTTP_11;
    r.tls = true;
    let d = r.to_span_data(&scope());
    assert_eq!(d.name, "HTTP orders");
    assert_eq!(attr(&d, "http.request.method"), s("_OTHER"));
    assert_eq!(attr(&d, "http.request.method_original"), s("PURGE"));
    assert_eq!(attr(&d, "server.address"), s("::1"));
    assert_eq!(attr(&d, "server.port"), Some(Value::I64(8443)));
    assert_eq!(attr(&d, "http.response.status_code"), None);
    assert_eq!(attr(&d, "network.protocol.version"), s("1.1"));
    assert_eq!(attr(&d, "url.scheme"), s("https"));
}

#[test]
fn host_of_a_request() {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("a.example"));
    let origin_form: Uri = "/x".parse().unwrap();
    let absolute: Uri = "http://b.example:81/x".parse().unwrap();
    assert_eq!(
        Host::of(&origin_form, &h),
        Some(Host::Header(HeaderValue::from_static("a.example")))
    );
    let from_uri = Host::of(&absolute, &h).unwrap();
    assert_eq!(from_uri.split(), (&b"b.example"[..], Some(81)));
    assert_eq!(Host::of(&origin_form, &HeaderMap::new()), None);
    let bare = Host::Header(HeaderValue::from_static("[2001:db8::1]"));
    assert_eq!(bare.split(), (&b"2001:db8::1"[..], None));
    let bad_port = Host::Header(HeaderValue::from_static("x:notaport"));
    assert_eq!(bad_port.split(), (&b"x"[..], None));
}

#[test]
fn ids_format_and_parse() {
    let t = TraceId::from_u128(1);
    assert_eq!(t.to_string(), "00000000000000000000000000000001");
    assert_eq!(
        format!("{t:?}"),
        "TraceId(00000000000000000000000000000001)"
    );
    assert_eq!(TraceId::from_hex(&t.to_hex()), Some(t));
    assert!(t.is_64_bit() && t.is_valid());
    assert!(!TraceId::INVALID.is_valid());
    assert_eq!(TraceId::from_hex(b"1"), None);
    let s = SpanId::from_u64(0xabc);
    assert_eq!(s.to_string(), "0000000000000abc");
    assert_eq!(SpanId::from_hex(&s.to_hex()), Some(s));
    assert_eq!(SpanId::from_hex(b"0000000000000ABC"), None, "upper case");
    let mut rng = fastrand::Rng::with_seed(3);
    assert!(TraceId::random(&mut rng).is_valid() && SpanId::random(&mut rng).is_valid());
}
