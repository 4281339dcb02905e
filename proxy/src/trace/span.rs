//! One finished span, as the request path hands it over, and what the OTLP encoder reads from
//! it (name, status, attributes), off the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::{SpanId, TraceId};
use crate::error::ProxyError;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};

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
    /// method outside RFC 9110's set (OpenTelemetry's HTTP conventions). In parts, so the
    /// encoder writes it without building a string.
    pub fn name(&self) -> (&'static str, Option<&str>) {
        (
            known_method(&self.method).unwrap_or("HTTP"),
            self.route.as_deref(),
        )
    }

    /// The span's status: an error when the proxy answered with a failure, or the status is
    /// 5xx (`SERVER`) or 4xx/5xx (`CLIENT`), per OpenTelemetry's HTTP conventions.
    pub fn status(&self) -> SpanStatus {
        if let Some(e) = self.error {
            return SpanStatus::Error(Some(e));
        }
        match self.status.map(|s| s.as_u16()) {
            Some(s) if s >= 500 => SpanStatus::Error(None),
            Some(s) if s >= 400 && self.kind == SpanKind::Client => SpanStatus::Error(None),
            _ => SpanStatus::Unset,
        }
    }

    /// The attributes, by OpenTelemetry's HTTP semantic conventions plus `tern.*`, handed to
    /// `f` one by one (nothing is allocated: values borrow from the record or the stack).
    pub fn attributes(&self, mut f: impl FnMut(&'static str, Attr<'_>)) {
        match known_method(&self.method) {
            Some(m) => f("http.request.method", Attr::Str(m)),
            None => {
                f("http.request.method", Attr::Str("_OTHER"));
                f(
                    "http.request.method_original",
                    Attr::Str(self.method.as_str()),
                );
            }
        }
        if let Some(p) = &self.path {
            f("url.path", Attr::Str(p.path()));
        }
        f(
            "url.scheme",
            Attr::Str(if self.tls { "https" } else { "http" }),
        );
        if let Some(status) = self.status {
            f(
                "http.response.status_code",
                Attr::Int(i64::from(status.as_u16())),
            );
        }
        if let Some(host) = &self.host {
            let (name, port) = host.split();
            f("server.address", Attr::Str(&String::from_utf8_lossy(name)));
            if let Some(port) = port {
                f("server.port", Attr::Int(i64::from(port)));
            }
        }
        if let Some(v) = protocol_version(self.version) {
            f("network.protocol.version", Attr::Str(v));
        }
        f("tern.listener", Attr::Str(&self.listener));
        if let Some(r) = &self.route {
            f("tern.route", Attr::Str(r));
        }
        if let Some(b) = &self.backend {
            f("tern.backend", Attr::Str(b));
        }
        if let Some(e) = self.endpoint {
            let mut buf = crate::addrtext::AddrText::new();
            f("tern.endpoint", Attr::Str(buf.format(e)));
        }
        f("tern.retries", Attr::Int(i64::from(self.retries)));
        if let Some(e) = self.error {
            f("tern.error", Attr::Str(e.code()));
            f("error.type", Attr::Str(e.code()));
        } else if let Some(status) = self.status
            && (status.is_server_error()
                || (status.is_client_error() && self.kind == SpanKind::Client))
        {
            f("error.type", Attr::Str(status.as_str()));
        }
    }
}

/// One attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr<'a> {
    Str(&'a str),
    Int(i64),
}

/// The span's status (OTLP `Status`): unset, or an error with the proxy's reason if it had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error(Option<ProxyError>),
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
