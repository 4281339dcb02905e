//! W3C Trace Context (Level 1): `traceparent` and `tracestate`.
//!
//! `traceparent` is `version-traceid-parentid-flags`, all lower-case hex:
//!
//! - Version `00` is exactly 55 bytes: `00-<32 hex>-<16 hex>-<2 hex>`. Anything else (upper
//!   case, other lengths, missing dashes) is invalid, and so is an all-zero trace id or parent
//!   id.
//! - Version `ff` is invalid. A higher version is parsed as the spec's section 4.3 says: at
//!   least 55 bytes, the version-00 fields in the same places, then either the end or a `-`
//!   (what follows belongs to the future version and is ignored). Only the `sampled` bit of the
//!   flags is read, and we send version `00` on.
//! - More than one `traceparent` header is invalid.
//!
//! An invalid `traceparent` means "no incoming context": the hop starts a new trace, and
//! `tracestate` is not used (the spec forbids parsing it without a valid parent).
//!
//! `tracestate` is passed through, not edited: this proxy adds no entry of its own. It is
//! checked against the spec's grammar (keys, values, at most 32 members, no duplicate keys); an
//! invalid one is dropped rather than propagated. Its size is bounded at [`MAX_TRACESTATE_LEN`]
//! bytes (the length the spec asks every vendor to propagate at least): a longer one is cut the
//! way the spec says, dropping members longer than 128 bytes first, then members from the end.
//! Several `tracestate` header lines are one list (RFC 9110 field combination).

use http::{HeaderName, HeaderValue};

use super::{SpanContext, SpanId, TraceId};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// The longest `tracestate` passed on, commas included (optional whitespace is not counted).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// The most list members a `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Members longer than this are the first dropped when a `tracestate` is cut.
const LONG_MEMBER: usize = 128;

const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: the remote parent's ids and its sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

/// Parses one `traceparent` value (see the module docs for the rules).
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = super::hex::decode::<1>(&value[..2])?[0];
    match version {
        0xff => return None,
        0x00 if value.len() != TRACEPARENT_LEN => return None,
        // A future version: the version-00 fields, then the end or a dash.
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(super::hex::decode::<16>(&value[3..35])?);
    let parent_id = SpanId::from_hex(&value[36..52])?;
    let flags = super::hex::decode::<1>(&value[53..55])?[0];
    if !trace_id.is_valid() || !parent_id.is_valid() {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & SAMPLED != 0,
    })
}

/// The `traceparent` of `span` (version 00), formatted into `buf`.
pub fn format_traceparent<'a>(span: &SpanContext, buf: &'a mut [u8; TRACEPARENT_LEN]) -> &'a [u8] {
    buf[..3].copy_from_slice(b"00-");
    super::hex::encode(&span.trace_id.to_bytes(), &mut buf[3..35]);
    buf[35] = b'-';
    super::hex::encode(&span.span_id.to_bytes(), &mut buf[36..52]);
    buf[52] = b'-';
    buf[53] = b'0';
    buf[54] = if span.sampled { b'1' } else { b'0' };
    buf
}

/// The `traceparent` header value of `span`: one allocation.
pub fn traceparent_value(span: &SpanContext) -> HeaderValue {
    let mut buf = [0; TRACEPARENT_LEN];
    crate::http::headers::never_indexed(
        HeaderValue::from_bytes(format_traceparent(span, &mut buf))
            .unwrap_or(HeaderValue::from_static("")),
    )
}

/// What to do with the incoming `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TraceState {
    /// None came in (or an empty one): nothing to pass on.
    #[default]
    Absent,
    /// Valid and within bounds: leave the header lines as they are.
    Keep,
    /// Valid but too long: send this cut-down value instead.
    Replace(HeaderValue),
    /// Invalid: remove it.
    Drop,
}

/// Checks the `tracestate` lines of a request (see the module docs).
pub fn check_tracestate<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>) -> TraceState {
    // Members already checked; a duplicate key is found by comparing keys only (each member
    // is validated once).
    let mut members: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut count = 0;
    let mut any_line = false;
    for line in lines {
        any_line = true;
        for member in line.as_bytes().split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            if count == MAX_TRACESTATE_MEMBERS {
                return TraceState::Drop;
            }
            let Some(key) = member_key(member) else {
                return TraceState::Drop;
            };
            if members[..count]
                .iter()
                .any(|m| m.split(|&b| b == b'=').next() == Some(key))
            {
                return TraceState::Drop;
            }
            members[count] = member;
            count += 1;
        }
    }
    if count == 0 {
        // Only empty members: the spec asks us to accept it, and to avoid sending it on.
        return if any_line {
            TraceState::Drop
        } else {
            TraceState::Absent
        };
    }
    let members = &mut members[..count];
    let length = |ms: &[&[u8]]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len() - 1;
    if length(members) <= MAX_TRACESTATE_LEN {
        return TraceState::Keep;
    }
    let mut kept = [true; MAX_TRACESTATE_MEMBERS];
    let mut total = length(members);
    for (i, m) in members.iter().enumerate() {
        if total > MAX_TRACESTATE_LEN && m.len() > LONG_MEMBER {
            kept[i] = false;
            total = total.saturating_sub(m.len() + 1);
        }
    }
    for i in (0..count).rev() {
        if total <= MAX_TRACESTATE_LEN {
            break;
        }
        if kept[i] {
            kept[i] = false;
            total = total.saturating_sub(members[i].len() + 1);
        }
    }
    let mut buf = [0u8; MAX_TRACESTATE_LEN];
    let mut len = 0;
    for (m, _) in members.iter().zip(kept).filter(|(_, k)| *k) {
        if len > 0 {
            buf[len] = b',';
            len += 1;
        }
        buf[len..len + m.len()].copy_from_slice(m);
        len += m.len();
    }
    if len == 0 {
        return TraceState::Drop;
    }
    HeaderValue::from_bytes(&buf[..len]).map_or(TraceState::Drop, TraceState::Replace)
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(b)) => &s[a..=b],
        _ => &[],
    }
}

/// The key of a valid `key=value` list member; `None` if the member is invalid.
fn member_key(member: &[u8]) -> Option<&[u8]> {
    let eq = member.iter().position(|&b| b == b'=')?;
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    (valid_key(key) && valid_value(value)).then_some(key)
}

fn key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            key.len() <= 256
                && key.first().is_some_and(u8::is_ascii_lowercase)
                && key.iter().all(|&b| key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system.iter().all(|&b| key_char(b))
        }
    }
}

/// 1 to 256 printable characters other than `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    let nblk = |b: u8| matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    (1..=256).contains(&value.len())
        && value.last().is_some_and(|&b| nblk(b))
        && value.iter().all(|&b| b == b' ' || nblk(b))
}
