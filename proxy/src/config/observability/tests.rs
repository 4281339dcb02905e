//! Parsing, conversion and validation of the observability settings.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderMap;

use crate::accesslog::{Output, Redact};
use crate::config::{Config, ConfigError, validate, warnings};
use crate::trace::export::Protocol;
use crate::trace::{Format, SpanKind};

use crate::config::tests::{parse, problems};

const FULL: &str = r#"
tracing:
  otlp:
    endpoint: http://otel-collector.observability:4318/
    protocol: http
    timeout: 3s
    headers: [{name: x-api-key, value: sesame}]
  sampling_ratio: 0.05
  service_name: shop-gateway
  queue_size: 4096
  batch_size: 256
  batch_delay: 2s
listeners:
  - name: inbound
    address: 127.0.0.1:8080
    request_id: {header: x-correlation-id, echo: false, keep_incoming: false}
    tracing:
      span_kind: server
      propagation: [w3c, b3]
      sampling_ratio: 1
    access_log:
      path: /var/log/tern/access.log
      sampling_ratio: 0.5
      include_query: true
      hash_key: pepper
      request_headers:
        - {name: x-user-id, redact: hash}
        - {name: x-shop-id}
        - {name: authorization, redact: drop}
      response_headers: [{name: x-cache}]
    routes: [{name: r, backends: [{name: app}]}]
  - name: outbound
    address: 127.0.0.1:8081
    tracing: {span_kind: client, propagation: [b3_single]}
    access_log: {}
    routes: [{name: r, backends: [{name: app}]}]
backends: [{name: app, endpoints: [127.0.0.1:9000]}]
"#;

#[test]
fn every_observability_field_parses_and_converts() {
    let c = parse(FULL);
    assert_eq!(problems(FULL), Vec::<String>::new());
    assert_eq!(warnings(&c), vec![]);

    let t = c.tracing.as_ref().unwrap();
    let e = t.to_export_config();
    assert_eq!(e.endpoint, "http://otel-collector.observability:4318");
    assert_eq!(e.protocol, Protocol::HttpProtobuf);
    assert_eq!(e.timeout, Duration::from_secs(3));
    assert_eq!(
        e.headers,
        vec![("x-api-key".to_owned(), "sesame".to_owned())]
    );
    assert_eq!(e.service_name, "shop-gateway");
    assert_eq!((e.queue_size, e.batch_size), (4096, 256));
    assert_eq!(e.batch_delay, Duration::from_secs(2));

    let inbound = &c.listeners[0];
    let ids = inbound.request_id.to_policy().unwrap();
    assert_eq!(ids.header(), "x-correlation-id");
    assert!(!ids.echo() && !ids.keep_incoming());
    assert_eq!(inbound.tracing.span_kind(), SpanKind::Server);
    let p = inbound.tracing.to_propagation(t);
    let ctx = p.start(&HeaderMap::new());
    assert!(ctx.sampled(), "the listener's ratio 1 overrides 0.05");
    let emitted = p.emitted(&ctx);
    assert!(emitted.contains(Format::W3c) && emitted.contains(Format::B3Multi));
    assert!(!emitted.contains(Format::B3Single));

    let log = inbound.access_log.as_ref().unwrap();
    assert_eq!(
        log.output(),
        Output::File(PathBuf::from("/var/log/tern/access.log"))
    );
    let f = log.to_format("inbound").unwrap();
    assert_eq!(&*f.listener, "inbound");
    assert!(f.include_query);
    let redactions: Vec<(&str, Redact)> = f
        .request_headers
        .iter()
        .map(|h| (h.name.as_str(), h.redact))
        .collect();
    assert_eq!(
        redactions,
        vec![
            ("x-user-id", Redact::Hash),
            ("x-shop-id", Redact::None),
            ("authorization", Redact::Drop)
        ]
    );
    assert_eq!(f.response_headers[0].name, "x-cache");

    let outbound = &c.listeners[1];
    assert_eq!(outbound.tracing.span_kind(), SpanKind::Client);
    let p = outbound.tracing.to_propagation(t);
    let ctx = p.start(&HeaderMap::new());
    let emitted = p.emitted(&ctx);
    assert!(emitted.contains(Format::B3Single) && !emitted.contains(Format::W3c));
    let log = outbound.access_log.as_ref().unwrap();
    assert_eq!(log.output(), Output::Stdout);
    assert_eq!(log.sampling_ratio, 1.0);
    assert!(outbound.request_id.is_default());
}

#[test]
fn defaults_keep_old_configs_valid_and_quiet() {
    let yaml = r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    routes: [{name: r, backends: [{name: a}]}]
backends: [{name: a, endpoints: [127.0.0.1:1]}]
"#;
    let c = parse(yaml);
    assert_eq!(problems(yaml), Vec::<String>::new());
    assert!(c.tracing.is_none());
    let l = &c.listeners[0];
    assert!(l.access_log.is_none());
    let ids = l.request_id.to_policy().unwrap();
    assert_eq!(ids.header(), "x-request-id");
    assert!(ids.echo() && ids.keep_incoming());
    assert_eq!(l.tracing.span_kind(), SpanKind::Server);
    assert!(l.tracing.propagation.is_none());
    let out = serde_saphyr::to_string(&c).unwrap();
    for field in ["tracing", "request_id", "access_log"] {
        assert!(!out.contains(field), "{field} in {out}");
    }
    assert_eq!(parse(&out), c);

    // The tracing defaults.
    let c = parse("tracing: {otlp: {endpoint: 'http://collector:4317'}}");
    let t = c.tracing.unwrap();
    assert_eq!(t.sampling_ratio, 0.01);
    assert_eq!(t.service_name, "tern-proxy");
    let e = t.to_export_config();
    assert_eq!(e.protocol, Protocol::Grpc);
    assert_eq!((e.queue_size, e.batch_size), (2048, 512));
    assert_eq!(e.timeout, Duration::from_secs(10));
    assert_eq!(e.batch_delay, Duration::from_secs(5));
}

#[test]
fn full_config_round_trips() {
    let c = parse(FULL);
    let out = serde_saphyr::to_string(&c).unwrap();
    assert_eq!(parse(&out), c);
}

#[test]
fn bad_values_are_reported_with_their_paths() {
    let yaml = r#"
tracing:
  otlp:
    endpoint: https://collector:4317
    timeout: 0s
    headers: [{name: grpc-timeout, value: "1S"}, {name: "bad name", value: "x\u0001"}]
  sampling_ratio: 1.5
  service_name: " "
  queue_size: 0
  batch_size: 10
  batch_delay: 0s
listeners:
  - name: web
    address: 127.0.0.1:8080
    request_id: {header: traceparent}
    tracing: {propagation: [w3c, b3, w3c, b3_single], sampling_ratio: -0.1}
    access_log:
      path: relative/access.log
      sampling_ratio: 2
      hash_key: ""
      request_headers:
        - {name: x-a}
        - {name: X-A}
        - {name: "no good"}
      response_headers: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}, {name: f}, {name: g}, {name: h}, {name: i}]
    routes: [{name: r, backends: [{name: a}]}]
  - name: other
    address: 127.0.0.1:8081
    request_id: {header: "x request"}
    routes: [{name: r, backends: [{name: a}]}]
backends: [{name: a, endpoints: [127.0.0.1:1]}]
"#;
    let p = problems(yaml);
    let has = |path: &str, text: &str| {
        assert!(
            p.iter().any(|l| l.starts_with(path) && l.contains(text)),
            "no problem at {path} mentioning {text:?} in:\n{}",
            p.join("\n")
        );
    };
    has("tracing.otlp.endpoint:", "TLS");
    has("tracing.otlp.timeout:", "greater than 0");
    has("tracing.otlp.headers[0].name:", "set by the exporter");
    has("tracing.otlp.headers[1].name:", "not a header name");
    has("tracing.otlp.headers[1].value:", "not a valid header value");
    has("tracing.sampling_ratio:", "1.5 is not a ratio");
    has("tracing.service_name:", "empty");
    has("tracing.queue_size:", "between 1");
    has("tracing.batch_size:", "at most queue_size");
    has("tracing.batch_delay:", "greater than 0");
    has("listeners[0].request_id.header:", "managed by the proxy");
    has(
        "listeners[0].tracing.propagation[2]:",
        "w3c is listed twice",
    );
    has("listeners[0].tracing.propagation:", "choose one B3 form");
    has("listeners[0].tracing.sampling_ratio:", "-0.1");
    has("listeners[0].access_log.path:", "not an absolute path");
    has(
        "listeners[0].access_log.sampling_ratio:",
        "2 is not a ratio",
    );
    has("listeners[0].access_log.hash_key:", "must not be empty");
    has(
        "listeners[0].access_log.request_headers[1].name:",
        "listed twice",
    );
    has(
        "listeners[0].access_log.request_headers[2].name:",
        "not a header name",
    );
    has("listeners[0].access_log.response_headers:", "at most 8");
    has("listeners[1].request_id.header:", "not a header name");
}

#[test]
fn endpoints() {
    let check = |endpoint: &str, protocol: &str| {
        problems(&format!(
            "tracing: {{otlp: {{endpoint: '{endpoint}', protocol: {protocol}}}}}"
        ))
    };
    assert!(check("http://collector:4317", "grpc").is_empty());
    assert!(check("http://10.0.0.1:4317/", "grpc").is_empty());
    assert!(check("http://collector:4318/otlp", "http").is_empty());
    assert!(check("http://collector:4317/otlp", "grpc")[0].contains("has no path"));
    assert!(check("collector:4317", "grpc")[0].contains("needs a scheme"));
    assert!(check("not a url", "grpc")[0].contains("not a URL"));
    assert!(check("http://c:4318/?x=1", "http")[0].contains("query"));
}

#[test]
fn unknown_fields_and_values_are_refused() {
    for yaml in [
        "tracing: {otlp: {endpoint: 'http://c:4317', protocl: grpc}}",
        "tracing: {otlp: {endpoint: 'http://c:4317', protocol: thrift}}",
        "tracing: {otlp: {endpoint: 'http://c:4317'}, sampling: 0.1}",
        "listeners: [{name: l, address: '127.0.0.1:1', request_id: {name: x}}]",
        "listeners: [{name: l, address: '127.0.0.1:1', tracing: {propagation: [jaeger]}}]",
        "listeners: [{name: l, address: '127.0.0.1:1', tracing: {span_kind: producer}}]",
        "listeners: [{name: l, address: '127.0.0.1:1', access_log: {stdout: true}}]",
        "listeners: [{name: l, address: '127.0.0.1:1', access_log: {request_headers: [{name: a, redact: mask}]}}]",
    ] {
        let e = Config::from_yaml(yaml);
        assert!(matches!(e, Err(ConfigError::Parse(_))), "{yaml}: {e:?}");
    }
}

#[test]
fn warnings_for_settings_that_do_nothing_or_leak() {
    let c = parse(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    tracing: {span_kind: client}
    access_log:
      hash_key: pepper
      request_headers: [{name: x-user-id}]
    routes: [{name: r, backends: [{name: a}]}]
  - name: api
    address: 127.0.0.1:8081
    access_log:
      request_headers: [{name: x-user-id, redact: hash}]
    routes: [{name: r, backends: [{name: a}]}]
backends: [{name: a, endpoints: [127.0.0.1:1]}]
"#,
    );
    assert!(validate(&c).is_ok(), "warnings never refuse a config");
    let w: Vec<String> = warnings(&c).iter().map(|p| p.to_string()).collect();
    let has = |prefix: &str, text: &str| {
        assert!(
            w.iter().any(|l| l.starts_with(prefix) && l.contains(text)),
            "{prefix} {text:?} not in {w:?}"
        );
    };
    has("listeners[0].tracing:", "no effect");
    has("listeners[0].access_log.hash_key:", "no header");
    has("listeners[1].access_log:", "plain SHA-256");
}
