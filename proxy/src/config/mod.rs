//! The proxy's config: the typed contract between a YAML file (or the control plane) and the
//! data plane. Parsing is strict (unknown fields are errors); `compile` turns it into a runtime
//! snapshot and reports every semantic problem with its path in the document.

mod observability;
mod resilience;
mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use observability::{
    AccessLogSpec, ListenerTracingSpec, LoggedHeaderSpec, OtlpProtocol, OtlpSpec,
    PropagationFormat, RedactSpec, RequestIdSpec, SpanKindSpec, TracingSpec,
};
pub use resilience::{
    BackoffSpec, CircuitBreakerSpec, FaultAbort, FaultDelay, FaultSpec, KeySpec, LoadBalancerSpec,
    MirrorSpec, OutlierSpec, PerSpec, RateLimitSpec, RetryBudgetSpec, RetrySpec, percent_to_ppm,
};
pub use validate::{ConfigError, Problem, validate, warnings};

/// The whole proxy config. One document; the same structure the control plane pushes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin listener (health, metrics, config, shutdown). Loopback by default.
    #[serde(default)]
    pub admin: Admin,
    /// Worker threads, each a single-threaded runtime with its own `SO_REUSEPORT` listeners.
    /// Absent: the CPUs this process may use (cgroup quota and affinity aware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How long in-flight requests may run after a shutdown signal before the proxy exits.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Span export and sampling. Absent: no spans, and trace headers pass through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "defaults::admin_address")]
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            address: defaults::admin_address(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique among listeners; names metrics and survives reloads.
    pub name: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    #[serde(default)]
    pub http: HttpSettings,
    /// Where opaque TCP goes: all traffic on a `tcp` listener, non-HTTP traffic on `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_backend: Option<String>,
    /// Inbound protection: a limit on every HTTP request this listener accepts, checked
    /// before routing. 429 `rate-limited` beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// The route table. Order matters only to break ties (Gateway API precedence).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Request ids: kept or made, passed upstream, echoed.
    #[serde(default, skip_serializing_if = "RequestIdSpec::is_default")]
    pub request_id: RequestIdSpec,
    /// This listener's spans (kind) and trace headers (formats); needs the top-level `tracing`.
    #[serde(default, skip_serializing_if = "ListenerTracingSpec::is_default")]
    pub tracing: ListenerTracingSpec,
    /// One JSON line per request. Absent: no access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// Peek at the first bytes: HTTP/2 preface, HTTP/1 request line, or else opaque TCP.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    Tcp,
}

/// Limits and timeouts of the downstream HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// A client must send a whole request head within this time (slowloris protection).
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list), in bytes.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1 request.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Most concurrent streams per HTTP/2 connection.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// How long `auto` detection waits for a client's first bytes before treating the
    /// connection as opaque TCP. Server-speaks-first protocols belong on a `tcp` listener.
    #[serde(default = "defaults::detect_timeout", with = "humantime_serde")]
    pub detect_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: defaults::header_read_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
            detect_timeout: defaults::detect_timeout(),
        }
    }
}

/// One routing rule: where it applies (hostnames, matches), what it does (filters) and where
/// it sends (weighted backends). A Gateway API HTTPRoute rule compiles to one of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique within the listener; names metrics.
    pub name: String,
    /// Exact (`api.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Any one of these must match (OR). Empty: every request (like `PathPrefix: /`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
    /// Deadline for the whole exchange, from the request's arrival to the response body's
    /// end, retries included. Expiry before the headers: 504 `tern-proxy-error: timeout`;
    /// after: the response is cut (HTTP/1 connection closed, HTTP/2 stream reset).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// A request whose response sends nothing (no headers, no body bytes) for this long is
    /// ended: 504 `timeout` before the headers, a reset stream after.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Retries of failed tries, within the backend's retry budget. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Outbound protection: a limit on this route's requests. 429 `rate-limited` beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Injected delays and aborts, for testing how callers cope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSpec>,
    /// Weighted split: each backend gets weight/sum of the requests; weight 0 disables one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
}

/// All conditions in one match must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// An HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    /// Matches whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Case-insensitive header name.
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    /// Required for `Exact` and `RegularExpression`; absent for `Present`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParamMatch {
    /// Case-sensitive parameter name.
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
    Present,
}

/// What a route does to the request and response (Gateway API filters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub response_headers: HeaderModifier,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Copy a share of the requests to another backend, fire and forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<MirrorSpec>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValueSpec>,
    /// Append these headers, keeping existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValueSpec>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueSpec {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    /// Replaces the `Host` / `:authority` sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path the route's `PathPrefix` matched.
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "defaults::redirect_status")]
    pub status_code: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    pub name: String,
    /// 0 ..= 1,000,000 (the Gateway API range). Default 1.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

/// A named set of endpoints and how to talk to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Pooled upstream connections idle longer than this are closed.
    #[serde(default = "defaults::upstream_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept per endpoint and worker.
    #[serde(default = "defaults::max_idle_per_endpoint")]
    pub max_idle_per_endpoint: usize,
    /// How requests are spread over the endpoints.
    #[serde(default, skip_serializing_if = "LoadBalancerSpec::is_default")]
    pub load_balancer: LoadBalancerSpec,
    /// Limits on concurrent use; beyond one, 503 `overflow` at once.
    #[serde(default, skip_serializing_if = "CircuitBreakerSpec::is_default")]
    pub circuit_breaker: CircuitBreakerSpec,
    /// Ejection of endpoints that keep failing. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierSpec>,
    /// How many retries the routes to this backend may add, together.
    #[serde(default, skip_serializing_if = "RetryBudgetSpec::is_default")]
    pub retry_budget: RetryBudgetSpec,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); required for gRPC backends.
    Http2,
}

mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    pub fn admin_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9901))
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_concurrent_streams() -> u32 {
        256
    }
    pub fn detect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn redirect_status() -> u16 {
        302
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn upstream_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn max_idle_per_endpoint() -> usize {
        256
    }
}

impl Config {
    /// Parses a YAML document strictly (unknown fields, duplicate keys and alias bombs are
    /// refused). Semantic checks are `validate`'s job.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
