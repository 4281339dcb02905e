//! OTLP protobuf, written straight from our span records.
//!
//! An export request is `ExportTraceServiceRequest { resource_spans: [ResourceSpans {
//! resource, scope_spans: [ScopeSpans { scope, spans }] }] }` (opentelemetry-proto's
//! `trace.proto`, `common.proto`, `resource.proto`); the tests decode what this writes with
//! the `opentelemetry-proto` crate's generated types.
//!
//! Why not build those generated structs (or the SDK's `SpanData`) and let prost encode them:
//! every key and string value would become its own `String`, and the OTLP exporter's
//! `SpanData` → protobuf transform costs about 33k instructions per span here (it groups
//! spans by resource and scope in hash maps and formats every key and value through
//! `core::fmt`): at 100 % sampling that alone was a third of a proxy's CPU per request.
//! Writing fields with prost's encoding primitives from the record costs about a tenth of
//! that and allocates nothing per span.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::span::{Attr, SpanStatus};
use super::{SpanKind, SpanRecord};

/// `SpanFlags`: the trace flags in the low byte, then "we know whether the parent is remote"
/// and "it is".
const SAMPLED: u32 = 0x01;
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// `Span.SpanKind`.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;

/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

/// The parts of every request that never change: the resource and the instrumentation
/// scope, encoded once when the exporter starts.
#[derive(Debug, Clone)]
pub struct Envelope {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Envelope {
    /// A resource with `service.name` and the `telemetry.sdk.*` attributes, and the scope
    /// `tern-proxy` at this crate's version. The environment has its say as in OpenTelemetry's
    /// SDKs: `OTEL_SERVICE_NAME` overrides `service_name`, `OTEL_RESOURCE_ATTRIBUTES` adds
    /// `key=value` pairs (values percent-encoded) but cannot replace the four set here.
    pub fn new(service_name: &str) -> Self {
        Self::with_env(service_name, |name| std::env::var(name).ok())
    }

    /// [`new`](Self::new) with the environment read through `env` (tests).
    pub fn with_env(service_name: &str, env: impl Fn(&str) -> Option<String>) -> Self {
        let service_name = env("OTEL_SERVICE_NAME")
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| service_name.to_owned());
        let ours = [
            ("service.name", service_name.as_str()),
            ("telemetry.sdk.name", "tern-proxy"),
            ("telemetry.sdk.language", "rust"),
            ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ];
        let mut resource = Vec::new();
        for (key, value) in ours {
            string_attribute(&mut resource, 1, key, value);
        }
        let extra = env("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
        for (key, value) in extra.split(',').filter_map(|pair| pair.split_once('=')) {
            let key = key.trim();
            if key.is_empty() || ours.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
            string_attribute(&mut resource, 1, key, &value);
        }
        let mut scope = Vec::new();
        string(&mut scope, 1, "tern-proxy");
        string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
        Self { resource, scope }
    }

    /// Appends one export request holding `spans` to `out`.
    pub fn encode<'a>(&self, spans: impl IntoIterator<Item = &'a SpanRecord>, out: &mut Vec<u8>) {
        // ExportTraceServiceRequest.resource_spans
        message(out, 1, |out| {
            // ResourceSpans.resource
            bytes(out, 1, &self.resource);
            // ResourceSpans.scope_spans
            message(out, 2, |out| {
                // ScopeSpans.scope
                bytes(out, 1, &self.scope);
                for span in spans {
                    // ScopeSpans.spans
                    message(out, 2, |out| encode_span(span, out));
                }
            });
        });
    }
}

/// The fields of one `Span`.
fn encode_span(s: &SpanRecord, out: &mut Vec<u8>) {
    bytes(out, 1, &s.trace_id.to_bytes());
    bytes(out, 2, &s.span_id.to_bytes());
    if let Some(parent) = s.parent_span_id {
        bytes(out, 4, &parent.to_bytes());
    }
    let (method, route) = s.name();
    encode_key(5, WireType::LengthDelimited, out);
    let name_len = method.len() + route.map_or(0, |r| 1 + r.len());
    encode_varint(name_len as u64, out);
    out.extend_from_slice(method.as_bytes());
    if let Some(route) = route {
        out.push(b' ');
        out.extend_from_slice(route.as_bytes());
    }
    let kind = match s.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    };
    varint(out, 6, kind);
    fixed64(out, 7, unix_nanos(s.start));
    fixed64(out, 8, unix_nanos(s.end.max(s.start)));
    s.attributes(|key, value| attribute(out, 9, key, value));
    if let SpanStatus::Error(reason) = s.status() {
        // Span.status
        message(out, 15, |out| {
            if let Some(e) = reason {
                string(out, 2, &e.to_string());
            }
            varint(out, 3, STATUS_ERROR);
        });
    }
    // The parent came over the wire when there is one; a root span has none.
    let mut flags = SAMPLED | CONTEXT_HAS_IS_REMOTE;
    if s.parent_span_id.is_some() {
        flags |= CONTEXT_IS_REMOTE;
    }
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&flags.to_le_bytes());
}

fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A `KeyValue` as field `tag`.
fn attribute(out: &mut Vec<u8>, tag: u32, key: &str, value: Attr<'_>) {
    message(out, tag, |out| {
        string(out, 1, key);
        // KeyValue.value: AnyValue
        message(out, 2, |out| match value {
            Attr::Str(s) => string(out, 1, s),
            // int64 is the two's complement as a varint.
            Attr::Int(n) => varint(out, 3, n as u64),
        });
    });
}

fn string_attribute(out: &mut Vec<u8>, tag: u32, key: &str, value: &str) {
    attribute(out, tag, key, Attr::Str(value));
}

fn string(out: &mut Vec<u8>, tag: u32, value: &str) {
    bytes(out, tag, value.as_bytes());
}

fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(value, out);
}

fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::SixtyFourBit, out);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A length-delimited field whose body `body` writes in place: one byte is kept for the
/// length, and the body moved over when its length needs more (a body of 128 bytes or more:
/// once per span and per request wrapper).
fn message(out: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, out);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    let width = encoded_len_varint(len as u64);
    if width == 1 {
        out[at] = len as u8;
    } else {
        let mut prefix = [0u8; 10];
        let mut rest = &mut prefix[..];
        encode_varint(len as u64, &mut rest);
        out.splice(at..=at, prefix[..width].iter().copied());
    }
}
