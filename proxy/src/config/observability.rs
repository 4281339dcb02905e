//! The observability part of the config: span export and sampling for the whole proxy
//! (`tracing`); request ids, trace propagation and the access log per listener. Each spec
//! converts into the IO-free core that does the work (`reqid`, `trace`, `accesslog`), and lists
//! its problems with paths relative to itself for `validate`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};

use super::HeaderValueSpec;
use crate::accesslog::{Hasher, LogFormat, LoggedHeader, MAX_CAPTURED, Output, Redact};
use crate::reqid::RequestIds;
use crate::trace::export::{ExportConfig, Protocol};
use crate::trace::{Format, FormatSet, Propagation, Sampler, SpanKind};

/// Problems of a spec: (path relative to the spec, e.g. `.otlp.endpoint`; message).
pub type Problems = Vec<(String, String)>;

/// Spans and their export, for the whole proxy. Absent: no spans are recorded and trace
/// headers pass through untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// Where spans go.
    pub otlp: OtlpSpec,
    /// The share of new traces recorded, 0 to 1 (0.01 is 1 %). Applies where a trace starts
    /// (no context came in, or B3 ids came without a decision); an incoming decision is obeyed.
    #[serde(default = "defaults::sampling_ratio")]
    pub sampling_ratio: f64,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME` overrides it, `OTEL_RESOURCE_ATTRIBUTES`
    /// adds attributes).
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// Finished spans held for export; beyond it they are dropped and counted, never waited for.
    #[serde(default = "defaults::queue_size")]
    pub queue_size: usize,
    /// Spans per export request.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    #[serde(default = "defaults::batch_delay", with = "humantime_serde")]
    pub batch_delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSpec {
    /// The collector's base URL, `http://host:port` (gRPC: usually port 4317; HTTP: 4318, and
    /// spans are posted to `<endpoint>/v1/traces`). TLS is not supported yet.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Deadline of one export, retries included.
    #[serde(default = "defaults::otlp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Sent with every export (gRPC metadata or HTTP headers), e.g. a vendor's API key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderValueSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// A listener's request ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdSpec {
    /// The header that carries the id.
    #[serde(default = "defaults::request_id_header")]
    pub header: String,
    /// Send the id back on the response.
    #[serde(default = "defaults::yes")]
    pub echo: bool,
    /// Keep a well-formed id the client sent; `false` always makes a new one (an edge that
    /// does not trust its clients).
    #[serde(default = "defaults::yes")]
    pub keep_incoming: bool,
}

impl Default for RequestIdSpec {
    fn default() -> Self {
        Self {
            header: defaults::request_id_header(),
            echo: true,
            keep_incoming: true,
        }
    }
}

/// Headers the proxy manages itself, which cannot carry the request id (the trace headers,
/// which it rewrites, too: see `trace::is_trace_header`).
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

impl RequestIdSpec {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The compiled policy.
    pub fn to_policy(&self) -> Result<RequestIds, String> {
        let header = HeaderName::from_bytes(self.header.as_bytes())
            .map_err(|_| format!("{:?} is not a header name", self.header))?;
        if RESERVED_HEADERS.contains(&header.as_str())
            || crate::trace::is_trace_header(&header)
            || header == crate::error::ERROR_HEADER
        {
            return Err(format!(
                "{header} is managed by the proxy and cannot carry the request id"
            ));
        }
        Ok(RequestIds::new(header, self.echo, self.keep_incoming))
    }

    pub fn problems(&self) -> Problems {
        match self.to_policy() {
            Ok(_) => Vec::new(),
            Err(e) => vec![(".header".to_owned(), e)],
        }
    }
}

/// A listener's part in tracing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTracingSpec {
    /// `server` for an inbound listener or a gateway, `client` for an outbound one.
    #[serde(default)]
    pub span_kind: SpanKindSpec,
    /// The formats written upstream. Absent: W3C, plus B3 in the form it came in. Incoming
    /// context is read from any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Vec<PropagationFormat>>,
    /// Overrides `tracing.sampling_ratio` for traces that start on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKindSpec {
    #[default]
    Server,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropagationFormat {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    W3c,
    /// B3 multi-header (`x-b3-*`), as Envoy, Istio and Zipkin send it.
    B3,
    /// B3 single header (`b3`), what OpenTelemetry SDKs call `b3`.
    B3Single,
}

impl PropagationFormat {
    pub fn format(self) -> Format {
        match self {
            Self::W3c => Format::W3c,
            Self::B3 => Format::B3Multi,
            Self::B3Single => Format::B3Single,
        }
    }
}

impl ListenerTracingSpec {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    pub fn span_kind(&self) -> SpanKind {
        match self.span_kind {
            SpanKindSpec::Server => SpanKind::Server,
            SpanKindSpec::Client => SpanKind::Client,
        }
    }

    /// The listener's propagation policy under the proxy's `tracing` settings.
    pub fn to_propagation(&self, tracing: &TracingSpec) -> Propagation {
        let emit = self
            .propagation
            .as_ref()
            .map(|list| list.iter().map(|f| f.format()).collect::<FormatSet>());
        let ratio = self.sampling_ratio.unwrap_or(tracing.sampling_ratio);
        Propagation::new(emit, Sampler::ratio(ratio))
    }

    pub fn problems(&self) -> Problems {
        let mut p = Vec::new();
        if let Some(r) = self.sampling_ratio
            && let Err(e) = check_ratio(r)
        {
            p.push((".sampling_ratio".to_owned(), e));
        }
        if let Some(list) = &self.propagation {
            let mut seen = HashSet::new();
            for (i, f) in list.iter().enumerate() {
                if !seen.insert(f) {
                    p.push((
                        format!(".propagation[{i}]"),
                        format!("{} is listed twice", f.format().name()),
                    ));
                }
            }
            if seen.contains(&PropagationFormat::B3) && seen.contains(&PropagationFormat::B3Single)
            {
                p.push((
                    ".propagation".to_owned(),
                    "choose one B3 form: b3 (x-b3-* headers) or b3_single (the b3 header)"
                        .to_owned(),
                ));
            }
        }
        p
    }
}

/// A listener's access log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    /// An absolute file path, appended to. Absent: standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The share of requests logged, 0 to 1.
    #[serde(default = "defaults::one")]
    pub sampling_ratio: f64,
    /// Log the query string with the path. Off by default: queries often carry tokens.
    #[serde(default)]
    pub include_query: bool,
    /// Request headers to log (at most 8), e.g. `x-user-id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<LoggedHeaderSpec>,
    /// Response headers to log (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<LoggedHeaderSpec>,
    /// Key of the HMAC used by `redact: hash`. Without it the digest is plain SHA-256, which
    /// anyone can recompute for a guessed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggedHeaderSpec {
    pub name: String,
    /// Absent: the value is logged as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<RedactSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedactSpec {
    /// A stable digest: the same value always gives the same digest.
    Hash,
    /// Only whether the header was present.
    Drop,
}

impl AccessLogSpec {
    pub fn output(&self) -> Output {
        match &self.path {
            Some(p) => Output::File(p.clone()),
            None => Output::Stdout,
        }
    }

    fn headers(list: &[LoggedHeaderSpec]) -> Result<Vec<LoggedHeader>, String> {
        list.iter()
            .map(|h| {
                Ok(LoggedHeader {
                    name: HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| format!("{:?} is not a header name", h.name))?,
                    redact: match h.redact {
                        None => Redact::None,
                        Some(RedactSpec::Hash) => Redact::Hash,
                        Some(RedactSpec::Drop) => Redact::Drop,
                    },
                })
            })
            .collect()
    }

    /// The compiled format of `listener`'s lines.
    pub fn to_format(&self, listener: &str) -> Result<LogFormat, String> {
        let hasher = match &self.hash_key {
            Some(key) => Hasher::keyed(key.as_bytes()),
            None => Hasher::unkeyed(),
        };
        LogFormat::new(
            Arc::from(listener),
            Self::headers(&self.request_headers)?,
            Self::headers(&self.response_headers)?,
            self.include_query,
            hasher,
        )
    }

    /// Whether some header is logged as a digest.
    pub fn hashes(&self) -> bool {
        self.request_headers
            .iter()
            .chain(&self.response_headers)
            .any(|h| h.redact == Some(RedactSpec::Hash))
    }

    pub fn problems(&self) -> Problems {
        let mut p = Vec::new();
        if let Some(path) = &self.path
            && !path.is_absolute()
        {
            p.push((
                ".path".to_owned(),
                format!("{} is not an absolute path", path.display()),
            ));
        }
        if let Err(e) = check_ratio(self.sampling_ratio) {
            p.push((".sampling_ratio".to_owned(), e));
        }
        for (field, list) in [
            ("request_headers", &self.request_headers),
            ("response_headers", &self.response_headers),
        ] {
            if list.len() > MAX_CAPTURED {
                p.push((
                    format!(".{field}"),
                    format!(
                        "{} headers: at most {MAX_CAPTURED} can be logged",
                        list.len()
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for (i, h) in list.iter().enumerate() {
                match HeaderName::from_bytes(h.name.as_bytes()) {
                    Err(_) => p.push((
                        format!(".{field}[{i}].name"),
                        format!("{:?} is not a header name", h.name),
                    )),
                    Ok(name) => {
                        if !seen.insert(name) {
                            p.push((
                                format!(".{field}[{i}].name"),
                                format!("{:?} is listed twice", h.name),
                            ));
                        }
                    }
                }
            }
        }
        if self.hash_key.as_deref() == Some("") {
            p.push((
                ".hash_key".to_owned(),
                "must not be empty (omit it for an unkeyed digest)".to_owned(),
            ));
        }
        p
    }
}

impl TracingSpec {
    pub fn sampler(&self) -> Sampler {
        Sampler::ratio(self.sampling_ratio)
    }

    /// The exporter's settings.
    pub fn to_export_config(&self) -> ExportConfig {
        ExportConfig {
            endpoint: self.otlp.endpoint.trim_end_matches('/').to_owned(),
            protocol: match self.otlp.protocol {
                OtlpProtocol::Grpc => Protocol::Grpc,
                OtlpProtocol::Http => Protocol::HttpProtobuf,
            },
            timeout: self.otlp.timeout,
            headers: self
                .otlp
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            service_name: self.service_name.clone(),
            queue_size: self.queue_size,
            batch_size: self.batch_size,
            batch_delay: self.batch_delay,
        }
    }

    pub fn problems(&self) -> Problems {
        let mut p = Vec::new();
        if let Err(e) = check_ratio(self.sampling_ratio) {
            p.push((".sampling_ratio".to_owned(), e));
        }
        if self.service_name.trim().is_empty() {
            p.push((".service_name".to_owned(), "must not be empty".to_owned()));
        }
        if !(1..=MAX_QUEUE).contains(&self.queue_size) {
            p.push((
                ".queue_size".to_owned(),
                format!("must be between 1 and {MAX_QUEUE}"),
            ));
        }
        if self.batch_size == 0 || self.batch_size > self.queue_size {
            p.push((
                ".batch_size".to_owned(),
                "must be at least 1 and at most queue_size".to_owned(),
            ));
        }
        if self.batch_delay.is_zero() {
            p.push((
                ".batch_delay".to_owned(),
                "must be greater than 0".to_owned(),
            ));
        }
        if self.otlp.timeout.is_zero() {
            p.push((
                ".otlp.timeout".to_owned(),
                "must be greater than 0".to_owned(),
            ));
        }
        if let Err(e) = check_endpoint(&self.otlp.endpoint, self.otlp.protocol) {
            p.push((".otlp.endpoint".to_owned(), e));
        }
        for (i, h) in self.otlp.headers.iter().enumerate() {
            match HeaderName::from_bytes(h.name.as_bytes()) {
                Err(_) => p.push((
                    format!(".otlp.headers[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                )),
                Ok(name)
                    if name.as_str().starts_with("grpc-")
                        || name == http::header::CONTENT_TYPE
                        || name == http::header::TE =>
                {
                    p.push((
                        format!(".otlp.headers[{i}].name"),
                        format!("{name} is set by the exporter itself"),
                    ));
                }
                Ok(_) => {}
            }
            if HeaderValue::from_str(&h.value).is_err() {
                p.push((
                    format!(".otlp.headers[{i}].value"),
                    "not a valid header value (visible ASCII, spaces and tabs only)".to_owned(),
                ));
            }
        }
        p
    }
}

/// The largest span queue accepted (each held span is under 320 bytes: a few hundred MB).
const MAX_QUEUE: usize = 1_000_000;

fn check_ratio(r: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&r) {
        Ok(())
    } else {
        Err(format!(
            "{r} is not a ratio between 0 and 1 (0.01 records 1 %, 1 records everything)"
        ))
    }
}

fn check_endpoint(endpoint: &str, protocol: OtlpProtocol) -> Result<(), String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "TLS to the collector is not supported yet: use http:// to a collector or agent \
                 on the node or in the cluster"
                    .to_owned(),
            );
        }
        _ => {
            return Err(format!(
                "{endpoint:?} needs a scheme and host, e.g. http://otel-collector:4317"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{endpoint:?} has no host"));
    }
    if protocol == OtlpProtocol::Grpc && !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "{endpoint:?}: an OTLP/gRPC endpoint has no path (the service name is the path)"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("{endpoint:?}: no query string allowed"));
    }
    Ok(())
}

mod defaults {
    use std::time::Duration;

    pub fn sampling_ratio() -> f64 {
        0.01
    }
    pub fn service_name() -> String {
        "tern-proxy".to_owned()
    }
    pub fn queue_size() -> usize {
        2048
    }
    pub fn batch_size() -> usize {
        512
    }
    pub fn batch_delay() -> Duration {
        Duration::from_secs(5)
    }
    pub fn otlp_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn request_id_header() -> String {
        "x-request-id".to_owned()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn one() -> f64 {
        1.0
    }
}

#[cfg(test)]
mod tests;
