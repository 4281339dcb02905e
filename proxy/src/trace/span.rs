//! One finished span, as the request path hands it over, and its conversion to
//! OpenTelemetry's `SpanData` (off the request path).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use opentelemetry::trace::{self as otel, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::{SpanId, TraceId};
use crate::error::ProxyError;

/// The role of this hop's span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SpanKind {
    /// An inbound listener (and the gateway): the proxy serves the request.
    #[default]
    Server,
    /// An outbound listener: the proxy makes the call on the application's behalf.
    Client,
}

/// The host a request was addressed to: `:authority` (HTTP/2, absolute-form) or `Host`.
/// Either is kept as the request's own bytes (a reference-count increment, no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Uri(Authority),
    Header(HeaderValue),
}

impl Host {
    /// The request's authority, preferring the URI's as hyper does.
    pub fn of(uri: &Uri, headers: &HeaderMap) -> Option<Self> {
        match uri.authority() {
            Some(a) => Some(Self::Uri(a.clone())),
            None => headers.get(http::header::HOST).cloned().map(Self::Header),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Uri(a) => a.as_str().as_bytes(),
            Self::Header(h) => h.as_bytes(),
        }
    }

    /// `host` and `port` of `host[:port]` (IPv6 literals keep their brackets off).
    pub fn split(&self) -> (&[u8], Option<u16>) {
        let all = self.as_bytes();
        let after_bracket = all.iter().rposition(|&b| b == b']').unwrap_or(0);
        match all[after_bracket..].iter().rposition(|&b| b == b':') {
            Some(i) => {
                let colon = after_bracket + i;
                let port = std::str::from_utf8(&all[colon + 1..])
                    .ok()
                    .and_then(|p| p.parse().ok());
                (strip_brackets(&all[..colon]), port)
            }
            None => (strip_brackets(all), None),
        }
    }
}

fn strip_brackets(host: &[u8]) -> &[u8] {
    match host {
        [b'[', inner @ .., b']'] => inner,
        _ => host,
    }
}

/// One finished span: everything the export needs, in a fixed-size struct whose every field
/// is a copy or a reference-counted clone of what the request path already holds. Built only
/// for sampled requests.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The incoming parent (always remote: it came over the wire).
    pub parent_span_id: Option<SpanId>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub listener: Arc<str>,
    pub method: Method,
    /// The request target; only its path is recorded (`url.path`), never the query.
    pub path: Option<PathAndQuery>,
    /// `server.address` and `server.port`.
    pub host: Option<Host>,
    /// Whether the client connection was TLS (`url.scheme`).
    pub tls: bool,
    /// `network.protocol.version`.
    pub version: Version,
    /// The status sent to the client; `None` if none was (client gone, stream reset).
    pub status: Option<StatusCode>,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    /// The endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    /// Tries after the first.
    pub retries: u32,
    /// Why the proxy answered instead of the upstream, if it did.
    pub error: Option<ProxyError>,
}

impl SpanRecord {
    /// A record with the ids and the request's basics; the rest is filled in as the
    /// exchange goes.
    pub fn new(
        trace_id: TraceId,
        span_id: SpanId,
        parent_span_id: Option<SpanId>,
        kind: SpanKind,
        listener: Arc<str>,
        start: SystemTime,
    ) -> Self {
        Self {
            trace_id,
            span_id,
            parent_span_id,
            kind,
            start,
            end: start,
            listener,
            method: Method::GET,
            path: None,
            host: None,
            tls: false,
            version: Version::HTTP_11,
            status: None,
            route: None,
            backend: None,
            endpoint: None,
            retries: 0,
            error: None,
        }
    }

    /// The span's name: `{method} {route}`, or `{method}` when no route matched; `HTTP` for a
    /// method outside RFC 9110's set (OpenTelemetry's HTTP conventions).
    pub fn name(&self) -> Cow<'static, str> {
        let method = known_method(&self.method).unwrap_or("HTTP");
        match &self.route {
            Some(route) => Cow::Owned(format!("{method} {route}")),
            None => Cow::Borrowed(method),
        }
    }

    /// The span's status: an error when the proxy answered with a failure, or the status is
    /// 5xx (`SERVER`) or 4xx/5xx (`CLIENT`), per OpenTelemetry's HTTP conventions.
    pub fn otel_status(&self) -> otel::Status {
        if let Some(e) = self.error {
            return otel::Status::error(e.to_string());
        }
        match self.status.map(|s| s.as_u16()) {
            Some(s) if s >= 500 => otel::Status::error(""),
            Some(s) if s >= 400 && self.kind == SpanKind::Client => otel::Status::error(""),
            _ => otel::Status::Unset,
        }
    }

    /// The attributes, by OpenTelemetry's HTTP semantic conventions plus `tern.*`.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut attrs = Vec::with_capacity(16);
        match known_method(&self.method) {
            Some(m) => attrs.push(KeyValue::new("http.request.method", m)),
            None => {
                attrs.push(KeyValue::new("http.request.method", "_OTHER"));
                attrs.push(KeyValue::new(
                    "http.request.method_original",
                    self.method.as_str().to_owned(),
                ));
            }
        }
        if let Some(p) = &self.path {
            attrs.push(KeyValue::new("url.path", p.path().to_owned()));
        }
        attrs.push(KeyValue::new(
            "url.scheme",
            if self.tls { "https" } else { "http" },
        ));
        if let Some(status) = self.status {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
        }
        if let Some(host) = &self.host {
            let (name, port) = host.split();
            attrs.push(KeyValue::new(
                "server.address",
                String::from_utf8_lossy(name).into_owned(),
            ));
            if let Some(port) = port {
                attrs.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(v) = protocol_version(self.version) {
            attrs.push(KeyValue::new("network.protocol.version", v));
        }
        attrs.push(KeyValue::new("tern.listener", Arc::clone(&self.listener)));
        if let Some(r) = &self.route {
            attrs.push(KeyValue::new("tern.route", Arc::clone(r)));
        }
        if let Some(b) = &self.backend {
            attrs.push(KeyValue::new("tern.backend", Arc::clone(b)));
        }
        if let Some(e) = self.endpoint {
            attrs.push(KeyValue::new("tern.endpoint", e.to_string()));
        }
        attrs.push(KeyValue::new("tern.retries", i64::from(self.retries)));
        if let Some(e) = self.error {
            attrs.push(KeyValue::new("tern.error", e.code()));
            attrs.push(KeyValue::new("error.type", e.code()));
        } else if let Some(status) = self.status
            && (status.is_server_error()
                || (status.is_client_error() && self.kind == SpanKind::Client))
        {
            attrs.push(KeyValue::new(
                "error.type",
                Value::from(status.as_str().to_owned()),
            ));
        }
        attrs
    }
}

/// Converts a record for the SDK; implemented for [`SpanRecord`], a trait so the exporter can
/// be tested with other inputs.
pub trait ToSpanData {
    fn to_span_data(&self, scope: &InstrumentationScope) -> SpanData;
}

impl ToSpanData for SpanRecord {
    fn to_span_data(&self, scope: &InstrumentationScope) -> SpanData {
        let context = otel::SpanContext::new(
            otel::TraceId::from_bytes(self.trace_id.to_bytes()),
            otel::SpanId::from_bytes(self.span_id.to_bytes()),
            TraceFlags::SAMPLED,
            false,
            otel::TraceState::NONE,
        );
        SpanData {
            span_context: context,
            parent_span_id: otel::SpanId::from_bytes(
                self.parent_span_id.unwrap_or(SpanId::INVALID).to_bytes(),
            ),
            parent_span_is_remote: self.parent_span_id.is_some(),
            span_kind: match self.kind {
                SpanKind::Server => otel::SpanKind::Server,
                SpanKind::Client => otel::SpanKind::Client,
            },
            name: self.name(),
            start_time: self.start,
            end_time: self.end.max(self.start),
            attributes: self.attributes(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: self.otel_status(),
            instrumentation_scope: scope.clone(),
        }
    }
}

/// RFC 9110's methods (and PATCH) by name; `None` for extension methods.
fn known_method(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

/// `network.protocol.version` (and the access log's protocol, with `HTTP/` before it).
pub(crate) fn protocol_version(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}
