//! Parsing and validation of the resilience settings: every field reachable from YAML, every
//! bad value reported with its path.

use super::*;

pub(super) fn parse(yaml: &str) -> Config {
    match Config::from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("parse failed: {e}"),
    }
}

pub(super) fn problems(yaml: &str) -> Vec<String> {
    match validate(&parse(yaml)) {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

const FULL: &str = r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    rate_limit: {rate: 1000, burst: 100, key: client_ip}
    routes:
      - name: api
        timeout: 2s
        idle_timeout: 1s
        retry:
          max_attempts: 3
          on: gateway-error,reset,409,unavailable
          per_try_timeout: 500ms
          backoff: {base: 10ms, max: 100ms, max_retry_after: 2s}
          max_body_bytes: 1024
        rate_limit: {rate: 600, per: minute, burst: 10, key: {header: x-api-key}, max_keys: 50}
        fault:
          delay: {percent: 0.5, duration: 100ms}
          abort: {percent: 1, status: 500}
        filters:
          request_mirror: {backend: shadow, percent: 10}
        backends: [{name: app}]
backends:
  - name: app
    endpoints: [127.0.0.1:9000, 127.0.0.1:9001]
    load_balancer: {policy: round_robin}
    circuit_breaker: {max_requests: 10}
    outlier_detection: {consecutive_failures: 3, base_ejection_time: 5s, max_ejection_percent: 50, panic: true}
    retry_budget: {ratio: 0.5, min_per_second: 1}
  - name: shadow
    endpoints: [127.0.0.1:9002]
"#;

#[test]
fn every_resilience_field_parses_and_converts() {
    let c = parse(FULL);
    assert_eq!(problems(FULL), Vec::<String>::new());
    let l = &c.listeners[0];
    let lrl = l.rate_limit.as_ref().map(|r| r.to_config());
    assert!(
        matches!(lrl, Some(Ok(ref r)) if r.key == crate::ratelimit::Key::ClientIp && r.burst == 100)
    );
    let r = &l.routes[0];
    let Some(Ok(policy)) = r.retry.as_ref().map(|r| r.to_policy()) else {
        panic!("retry did not convert")
    };
    assert_eq!(policy.max_attempts, 3);
    assert!(policy.on.gateway_error && policy.on.reset && !policy.on.connect_failure);
    assert_eq!(policy.on.statuses, vec![http::StatusCode::CONFLICT]);
    assert_eq!(policy.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(policy.backoff.max_retry_after, Duration::from_secs(2));
    let Some(Ok(rl)) = r.rate_limit.as_ref().map(|r| r.to_config()) else {
        panic!("rate limit did not convert")
    };
    assert_eq!(rl.per, crate::ratelimit::Per::Minute);
    assert_eq!(
        rl.key,
        crate::ratelimit::Key::Header(http::HeaderName::from_static("x-api-key"))
    );
    assert_eq!(rl.max_keys, 50);
    assert_eq!(
        r.fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .map(|a| a.status),
        Some(500)
    );
    assert_eq!(percent_to_ppm(0.5), 5_000);
    let b = &c.backends[0];
    assert_eq!(b.load_balancer.policy, crate::balance::Policy::RoundRobin);
    assert_eq!(b.circuit_breaker.to_limits().max_requests, 10);
    assert_eq!(b.circuit_breaker.to_limits().max_connections, 1024);
    let o = b
        .outlier_detection
        .as_ref()
        .map(|o| (o.to_config(), o.panic));
    assert!(matches!(o, Some((ref oc, true)) if oc.consecutive_failures == 3));
    assert_eq!(c.backends[1].circuit_breaker, CircuitBreakerSpec::default());
    assert!(c.backends[1].outlier_detection.is_none());
}

#[test]
fn defaults_round_trip_without_noise() {
    // A backend with default resilience settings serializes without them (the /config page
    // and the control plane's output stay short), and parses back equal.
    let c = parse("backends: [{name: a, endpoints: [127.0.0.1:1]}]");
    let yaml = match serde_saphyr::to_string(&c) {
        Ok(y) => y,
        Err(e) => panic!("{e}"),
    };
    assert!(!yaml.contains("circuit_breaker"), "{yaml}");
    assert!(!yaml.contains("retry_budget"), "{yaml}");
    assert_eq!(parse(&yaml), c);
}

#[test]
fn bad_values_are_reported_with_their_paths() {
    let yaml = r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    rate_limit: {rate: 0}
    routes:
      - name: api
        idle_timeout: 0s
        retry: {max_attempts: 0, on: "5xx,sometimes", per_try_timeout: 0s}
        rate_limit: {rate: 10, burst: 0, key: {header: "bad header"}}
        fault:
          delay: {percent: 101, duration: 0s}
          abort: {percent: -1, status: 99}
        filters:
          request_mirror: {backend: nowhere, percent: 200}
        backends: [{name: app}]
      - name: empty-fault
        fault: {}
        backends: [{name: app}]
backends:
  - name: app
    endpoints: [127.0.0.1:9000]
    load_balancer: {decay: 0s}
    circuit_breaker: {max_requests: 0}
    outlier_detection: {base_ejection_time: 0s, max_ejection_percent: 120}
    retry_budget: {ratio: -1}
"#;
    let p = problems(yaml);
    let has = |path: &str, text: &str| {
        assert!(
            p.iter().any(|l| l.starts_with(path) && l.contains(text)),
            "no problem at {path} mentioning {text:?} in:\n{}",
            p.join("\n")
        );
    };
    has("listeners[0].rate_limit:", "rate must be at least 1");
    has("listeners[0].routes[0].idle_timeout:", "greater than 0");
    has(
        "listeners[0].routes[0].retry:",
        "max_attempts must be at least 1",
    );
    has("listeners[0].routes[0].retry:", "`sometimes`");
    has("listeners[0].routes[0].retry:", "per_try_timeout");
    has("listeners[0].routes[0].rate_limit:", "key.header");
    has(
        "listeners[0].routes[0].rate_limit:",
        "burst must be at least 1",
    );
    has("listeners[0].routes[0].fault.delay.percent:", "101");
    has(
        "listeners[0].routes[0].fault.delay.duration:",
        "greater than 0",
    );
    has("listeners[0].routes[0].fault.abort.percent:", "-1");
    has("listeners[0].routes[0].fault.abort.status:", "99");
    has(
        "listeners[0].routes[0].filters.request_mirror.backend:",
        "nowhere",
    );
    has(
        "listeners[0].routes[0].filters.request_mirror.percent:",
        "200",
    );
    has("listeners[0].routes[1].fault:", "needs a delay");
    has("backends[0].load_balancer.decay:", "greater than 0");
    has("backends[0].circuit_breaker.max_requests:", "at least 1");
    has(
        "backends[0].outlier_detection.base_ejection_time:",
        "greater than 0",
    );
    has(
        "backends[0].outlier_detection.max_ejection_percent:",
        "over 100",
    );
    has("backends[0].retry_budget:", "ratio");
}

#[test]
fn burst_zero_is_an_error() {
    let p = problems(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    routes: [{name: r, rate_limit: {rate: 100, burst: 0}, backends: [{name: a}]}]
backends: [{name: a, endpoints: [127.0.0.1:1]}]
"#,
    );
    assert!(
        p.iter().any(|l| l.contains("burst must be at least 1")),
        "{p:?}"
    );
}

#[test]
fn retrying_a_post_only_route_warns() {
    let c = parse(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    routes:
      - name: orders
        timeout: 1s
        matches: [{method: POST}]
        retry: {max_attempts: 3, per_try_timeout: 2s}
        backends: [{name: a}]
      - name: opted-in
        matches: [{method: POST}]
        retry: {allow_non_idempotent: true}
        backends: [{name: a}]
backends: [{name: a, endpoints: [127.0.0.1:1]}]
"#,
    );
    assert!(validate(&c).is_ok(), "warnings never refuse a config");
    let w: Vec<String> = warnings(&c).iter().map(|p| p.to_string()).collect();
    assert!(
        w.iter()
            .any(|l| l.starts_with("listeners[0].routes[0].retry:") && l.contains("POST")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|l| l.starts_with("listeners[0].routes[0].retry.per_try_timeout:")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|l| l.starts_with("listeners[0].routes[0].retry.on:")
                && l.contains("per_try_timeout")),
        "{w:?}"
    );
    assert!(!w.iter().any(|l| l.contains("routes[1]")), "{w:?}");
}

#[test]
fn unknown_fields_are_refused() {
    let e = Config::from_yaml("backends: [{name: a, circuit_breaker: {max_request: 1}}]");
    assert!(
        matches!(e, Err(ConfigError::Parse(ref m)) if m.contains("max_request")),
        "{e:?}"
    );
}
