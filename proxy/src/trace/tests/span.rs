use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::error::ProxyError;
use crate::trace::otlp::Envelope;
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

/// `r` written as an export request and read back with opentelemetry-proto's types: the
/// resource's attributes, the scope, and the span.
fn encoded(r: &SpanRecord) -> (Vec<KeyValue>, InstrumentationScope, Span) {
    let mut buf = Vec::new();
    Envelope::with_env("shop-gateway", |_| None).encode([r], &mut buf);
    let mut req = ExportTraceServiceRequest::decode(&buf[..]).expect("valid protobuf");
    assert_eq!(req.resource_spans.len(), 1);
    let mut rs = req.resource_spans.remove(0);
    assert_eq!(rs.scope_spans.len(), 1);
    let mut ss = rs.scope_spans.remove(0);
    assert_eq!(ss.spans.len(), 1);
    (
        rs.resource.expect("a resource").attributes,
        ss.scope.expect("a scope"),
        ss.spans.remove(0),
    )
}

fn attr(span: &Span, key: &str) -> Option<any_value::Value> {
    let mut found = span.attributes.iter().filter(|kv| kv.key == key);
    let first = found.next()?;
    assert!(found.next().is_none(), "{key} twice");
    first.value.clone()?.value
}

fn s(v: &str) -> Option<any_value::Value> {
    Some(any_value::Value::StringValue(v.to_owned()))
}

fn i(v: i64) -> Option<any_value::Value> {
    Some(any_value::Value::IntValue(v))
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;

#[test]
fn a_record_encodes_to_otlp_with_the_issues_attributes() {
    let (resource, scope, d) = encoded(&record(SpanKind::Server));
    assert_eq!(
        d.trace_id,
        hex("0102030405060708090a0b0c0d0e0f10"),
        "16-byte trace id"
    );
    assert_eq!(d.span_id, hex("00000000000000aa"));
    assert_eq!(d.parent_span_id, hex("00000000000000bb"));
    assert_eq!(d.flags, 0x301, "sampled, parent known to be remote");
    assert_eq!(d.kind, SERVER);
    assert_eq!(d.name, "POST orders");
    assert_eq!(d.end_time_unix_nano - d.start_time_unix_nano, 12_000_000);
    assert_eq!(d.start_time_unix_nano, 1_700_000_000 * 1_000_000_000);
    assert_eq!(d.status, None, "unset");
    assert_eq!(attr(&d, "http.request.method"), s("POST"));
    assert_eq!(attr(&d, "url.path"), s("/orders/42"), "never the query");
    assert_eq!(attr(&d, "url.scheme"), s("http"));
    assert_eq!(attr(&d, "http.response.status_code"), i(201));
    assert_eq!(attr(&d, "server.address"), s("shop.example.com"));
    assert_eq!(attr(&d, "server.port"), i(8080));
    assert_eq!(attr(&d, "network.protocol.version"), s("2"));
    assert_eq!(attr(&d, "tern.listener"), s("inbound"));
    assert_eq!(attr(&d, "tern.route"), s("orders"));
    assert_eq!(attr(&d, "tern.backend"), s("orders-v2"));
    assert_eq!(attr(&d, "tern.endpoint"), s("10.0.0.7:9000"));
    assert_eq!(attr(&d, "tern.retries"), i(2));
    assert_eq!(attr(&d, "tern.error"), None);
    assert_eq!(attr(&d, "error.type"), None);
    assert_eq!(d.attributes.len(), 12);
    assert_eq!(scope.name, "tern-proxy");
    assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    let service = resource.iter().find(|kv| kv.key == "service.name");
    assert_eq!(
        service.and_then(|kv| kv.value.clone()?.value),
        s("shop-gateway")
    );
}

#[test]
fn the_environment_names_the_service_and_adds_resource_attributes() {
    let env = |name: &str| match name {
        "OTEL_SERVICE_NAME" => Some("checkout".to_owned()),
        "OTEL_RESOURCE_ATTRIBUTES" => Some(
            "deployment.environment=prod, team = shop%20core,service.name=ignored,=x,junk"
                .to_owned(),
        ),
        _ => None,
    };
    let mut buf = Vec::new();
    Envelope::with_env("from-config", env).encode([&record(SpanKind::Server)], &mut buf);
    let req = ExportTraceServiceRequest::decode(&buf[..]).unwrap();
    let resource = req.resource_spans[0].resource.clone().unwrap().attributes;
    let value = |key: &str| {
        let mut found = resource.iter().filter(|kv| kv.key == key);
        let v = found.next().and_then(|kv| kv.value.clone()?.value);
        assert!(found.next().is_none(), "{key} twice");
        v
    };
    assert_eq!(value("service.name"), s("checkout"));
    assert_eq!(value("deployment.environment"), s("prod"));
    assert_eq!(value("team"), s("shop core"));
    assert_eq!(value("telemetry.sdk.language"), s("rust"));
    assert_eq!(resource.len(), 6);

    let (resource, _, _) = encoded(&record(SpanKind::Server));
    let service = resource.iter().find(|kv| kv.key == "service.name");
    assert_eq!(
        service.and_then(|kv| kv.value.clone()?.value),
        s("shop-gateway"),
        "no environment: the configured name"
    );
}

fn hex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_root_span_has_no_parent() {
    let mut r = record(SpanKind::Client);
    r.parent_span_id = None;
    r.route = None;
    let (_, _, d) = encoded(&r);
    assert!(d.parent_span_id.is_empty());
    assert_eq!(d.flags, 0x101, "sampled, parent known not to be remote");
    assert_eq!(d.kind, CLIENT);
    assert_eq!(d.name, "POST", "no route: just the method");
}

#[test]
fn status_follows_the_http_conventions() {
    let with = |kind, status: u16| {
        let mut r = record(kind);
        r.status = Some(StatusCode::from_u16(status).unwrap());
        encoded(&r).2
    };
    let code = |d: &Span| d.status.as_ref().map(|s| (s.code, s.message.clone()));
    assert_eq!(code(&with(SpanKind::Server, 404)), None);
    assert_eq!(attr(&with(SpanKind::Server, 404), "error.type"), None);
    assert_eq!(
        code(&with(SpanKind::Client, 404)),
        Some((ERROR, String::new()))
    );
    assert_eq!(attr(&with(SpanKind::Client, 404), "error.type"), s("404"));
    assert_eq!(
        code(&with(SpanKind::Server, 503)),
        Some((ERROR, String::new()))
    );
    assert_eq!(attr(&with(SpanKind::Server, 503), "error.type"), s("503"));

    let mut r = record(SpanKind::Server);
    r.status = Some(StatusCode::GATEWAY_TIMEOUT);
    r.error = Some(ProxyError::Timeout);
    let d = encoded(&r).2;
    assert_eq!(
        code(&d),
        Some((ERROR, ProxyError::Timeout.to_string())),
        "the proxy's reason is the message"
    );
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
    r.endpoint = Some("[2001:db8::7]:9000".parse().unwrap());
    let d = encoded(&r).2;
    assert_eq!(d.name, "HTTP orders");
    assert_eq!(attr(&d, "http.request.method"), s("_OTHER"));
    assert_eq!(attr(&d, "http.request.method_original"), s("PURGE"));
    assert_eq!(attr(&d, "server.address"), s("::1"));
    assert_eq!(attr(&d, "server.port"), i(8443));
    assert_eq!(attr(&d, "http.response.status_code"), None);
    assert_eq!(attr(&d, "network.protocol.version"), s("1.1"));
    assert_eq!(attr(&d, "url.scheme"), s("https"));
    assert_eq!(attr(&d, "tern.endpoint"), s("[2001:db8::7]:9000"));
}

#[test]
fn long_values_and_many_spans_keep_their_lengths() {
    // Lengths of 128 bytes and more take two-byte varints: the encoder moves bodies over.
    let long = "r".repeat(300);
    let mut r = record(SpanKind::Server);
    r.route = Some(Arc::from(long.as_str()));
    let mut buf = Vec::new();
    let records = vec![r; 200];
    Envelope::with_env("svc", |_| None).encode(&records, &mut buf);
    let req = ExportTraceServiceRequest::decode(&buf[..]).expect("valid protobuf");
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 200);
    assert!(spans.iter().all(|d| d.name == format!("POST {long}")));
    assert_eq!(attr(&spans[199], "tern.route"), s(&long));
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

#[test]
fn a_span_record_stays_small() {
    // The queue holds `queue_size` of them (up to a million): see `MAX_QUEUE`.
    let size = std::mem::size_of::<SpanRecord>();
    assert!(size <= 320, "SpanRecord is {size} bytes");
}
