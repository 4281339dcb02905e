//! B3 propagation (openzipkin/b3-propagation), multi-header and single-header.
//!
//! - **Multi**: `x-b3-traceid` (16 or 32 lower-case hex: a 64- or 128-bit id; a 64-bit one is
//!   the low half of ours), `x-b3-spanid` (16 hex), `x-b3-parentspanid` (16 hex, the parent of
//!   the span in `x-b3-spanid`; we read nothing from it), `x-b3-sampled` (`1` or `0`; the legacy
//!   `true` / `false` are accepted, never sent), `x-b3-flags: 1` (debug, which implies sampled;
//!   `x-b3-sampled` is then not sent).
//! - **Single**: `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]` with sampling `1`, `0`
//!   or `d` (debug); or just `b3: 0`, `b3: 1`, `b3: d`, a sampling decision without ids.
//!   The single header wins over the multi headers when both are valid.
//! - Ids must be lower-case hex and not all zeros. Invalid ids are ignored, but a valid
//!   sampling decision next to them is still honoured (B3 lets the decision travel alone).
//! - Ids without a decision *defer* it: the receiving hop decides (by ratio, here).
//!
//! When we send B3, a 64-bit trace id (upper half zero) is sent as 16 digits, as it came.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{SpanContext, SpanId, TraceId};

pub const B3: HeaderName = HeaderName::from_static("b3");
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Longest single `b3` value: 32 + 1 + 16 + 1 + 1 + 1 + 16.
pub const SINGLE_MAX_LEN: usize = 68;

/// A B3 sampling state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not sampled (`0`).
    Deny,
    /// Sampled (`1`).
    Accept,
    /// Sampled, and to be kept by every collector (`d`, `x-b3-flags: 1`).
    Debug,
}

/// What a request's B3 headers say: ids (optional) and a decision (optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct B3Context {
    pub ids: Option<(TraceId, SpanId)>,
    pub decision: Option<Decision>,
}

impl B3Context {
    pub fn is_empty(&self) -> bool {
        self.ids.is_none() && self.decision.is_none()
    }
}

/// Parses a single `b3` value. `None` if it is malformed.
pub fn parse_single(value: &[u8]) -> Option<B3Context> {
    if value.len() == 1 {
        return Some(B3Context {
            ids: None,
            decision: Some(single_decision(value[0])?),
        });
    }
    let mut parts = value.split(|&b| b == b'-');
    let trace_id = valid_trace_id(parts.next()?)?;
    let span_id = valid_span_id(parts.next()?)?;
    let decision = match parts.next() {
        None => None,
        Some([d]) => Some(single_decision(*d)?),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        valid_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Context {
        ids: Some((trace_id, span_id)),
        decision,
    })
}

fn single_decision(b: u8) -> Option<Decision> {
    match b {
        b'0' => Some(Decision::Deny),
        b'1' => Some(Decision::Accept),
        b'd' => Some(Decision::Debug),
        _ => None,
    }
}

fn valid_trace_id(text: &[u8]) -> Option<TraceId> {
    TraceId::from_hex(text).filter(TraceId::is_valid)
}

fn valid_span_id(text: &[u8]) -> Option<SpanId> {
    SpanId::from_hex(text).filter(SpanId::is_valid)
}

/// Reads the `x-b3-*` headers. Empty when none of them says anything usable.
pub fn parse_multi(headers: &HeaderMap) -> B3Context {
    let one = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
    parse_multi_values(one(&TRACE_ID), one(&SPAN_ID), one(&SAMPLED), one(&FLAGS))
}

/// [`parse_multi`] from the (first) values of `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`
/// and `x-b3-flags`.
pub fn parse_multi_values(
    trace_id: Option<&[u8]>,
    span_id: Option<&[u8]>,
    sampled: Option<&[u8]>,
    flags: Option<&[u8]>,
) -> B3Context {
    let ids = match (trace_id, span_id) {
        (Some(t), Some(s)) => valid_trace_id(t).zip(valid_span_id(s)),
        _ => None,
    };
    let decision = if flags == Some(b"1") {
        Some(Decision::Debug)
    } else {
        match sampled {
            Some(b"1" | b"true") => Some(Decision::Accept),
            Some(b"0" | b"false") => Some(Decision::Deny),
            _ => None,
        }
    };
    B3Context { ids, decision }
}

/// The `x-b3-sampled` / `x-b3-flags` pair for a span: static values, no allocation.
pub fn multi_sampling(span: &SpanContext) -> (HeaderName, HeaderValue) {
    if span.debug {
        (FLAGS, HeaderValue::from_static("1"))
    } else if span.sampled {
        (SAMPLED, HeaderValue::from_static("1"))
    } else {
        (SAMPLED, HeaderValue::from_static("0"))
    }
}

/// A trace id as B3 sends it: 16 digits if it is a 64-bit id, else 32.
pub fn trace_id_value(id: &TraceId) -> HeaderValue {
    let hex = id.to_hex();
    let digits = if id.is_64_bit() { &hex[16..] } else { &hex[..] };
    crate::http::headers::never_indexed(
        HeaderValue::from_bytes(digits).unwrap_or(HeaderValue::from_static("")),
    )
}

/// A span id header value: one allocation.
pub fn span_id_value(id: &SpanId) -> HeaderValue {
    crate::http::headers::never_indexed(
        HeaderValue::from_bytes(&id.to_hex()).unwrap_or(HeaderValue::from_static("")),
    )
}

/// The single `b3` value for `span`, whose parent is `parent`, formatted into `buf`.
pub fn format_single<'a>(
    span: &SpanContext,
    parent: Option<SpanId>,
    buf: &'a mut [u8; SINGLE_MAX_LEN],
) -> &'a [u8] {
    let hex = span.trace_id.to_hex();
    let trace = if span.trace_id.is_64_bit() {
        &hex[16..]
    } else {
        &hex[..]
    };
    let mut len = trace.len();
    buf[..len].copy_from_slice(trace);
    let mut push = |bytes: &[u8]| {
        buf[len] = b'-';
        buf[len + 1..len + 1 + bytes.len()].copy_from_slice(bytes);
        len += 1 + bytes.len();
    };
    push(&span.span_id.to_hex());
    push(match (span.debug, span.sampled) {
        (true, _) => b"d",
        (false, true) => b"1",
        (false, false) => b"0",
    });
    if let Some(parent) = parent {
        push(&parent.to_hex());
    }
    &buf[..len]
}

/// The single `b3` header value: one allocation.
pub fn single_value(span: &SpanContext, parent: Option<SpanId>) -> HeaderValue {
    let mut buf = [0; SINGLE_MAX_LEN];
    crate::http::headers::never_indexed(
        HeaderValue::from_bytes(format_single(span, parent, &mut buf))
            .unwrap_or(HeaderValue::from_static("0")),
    )
}
