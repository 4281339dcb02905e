//! Distributed tracing: trace context in and out (W3C, B3), the sampling decision, the span
//! each proxy hop records, and its export over OTLP.
//!
//! # Model
//!
//! Each proxy hop is one span: `SERVER` on an inbound listener, `CLIENT` on an outbound one
//! (the listener's `span_kind`). Its parent is the context the request came in with, and it is
//! the parent of the request sent upstream, so a request that crosses two proxies to a backend
//! is one trace of `client span -> proxy span -> proxy span -> backend span`.
//!
//! - **In** ([`Propagation::start`]): the context is read from any format the request carries,
//!   W3C `traceparent` first (the standard), then B3 (single `b3` header, then the `x-b3-*`
//!   headers). Malformed headers are ignored, as the W3C spec requires: the hop then starts a
//!   new trace. See [`w3c`] and [`b3`] for the exact rules.
//! - **Our span** keeps the incoming trace id and gets a new random span id; with no incoming
//!   context, a new trace id too. Ids come from `fastrand` (per-thread, no system call).
//! - **Sampling** is decided once per trace, where it starts, and then carried: an incoming
//!   sampled or not-sampled flag is obeyed (W3C `sampled`, B3 `1`/`0`/`d`). Where no decision
//!   came in (a new trace, or B3 ids without `x-b3-sampled`), the [`Sampler`] decides by a
//!   ratio, from the trace id alone, exactly as OpenTelemetry's `TraceIdRatioBased` does: every
//!   hop with the same ratio reaches the same decision for the same trace. An unsampled request
//!   still carries context (new span id, `sampled=0`), so downstream hops agree; it just records
//!   no span.
//! - **Out** ([`Propagation::inject`]): the trace headers that came in are replaced by ours,
//!   in the formats the listener emits: by default W3C, plus B3 in the form(s) it came in
//!   (so B3-only systems keep working); or an explicit list. `tracestate` is passed through
//!   when W3C is emitted and the parent came in as W3C (bounded, see [`w3c`]).
//! - **Record** ([`SpanRecord`]): a compact, fixed-size summary of the finished exchange,
//!   handed to a bounded queue ([`export::SpanSink`]) that never blocks; the OTLP encoding
//!   (written straight from the record, see `otlp`) and the export happen on the control
//!   runtime, in batches.
//!
//! With tracing not configured, none of this runs and trace headers pass through untouched:
//! rewriting the parent to a span nobody exports would cut the trace in two.
//!
//! # Cost on the request path (tracing on)
//!
//! `start`: one pass over the request's header fields (a short name compare each, no hashing),
//! parsing of at most a few hundred bytes, one or three random `u64`s; no allocation (an over-long `tracestate` is the exception:
//! one allocation to truncate it). `inject`: one `HeaderValue` per header written, formatted
//! on the stack (`traceparent`: one allocation; B3 multi: two or three, the sampling headers
//! are static), plus a removal per stale trace header that came in. The span record is built
//! only for sampled requests, and `SpanSink::submit` is a `try_send` (a few atomics).

#[cfg(test)]
mod tests;

pub mod b3;
pub mod export;
mod otlp;
mod propagate;
mod sampler;
mod span;
pub mod w3c;

use std::fmt;

pub(crate) use propagate::is_trace_header;
pub use propagate::{
    Format, FormatSet, Incoming, Parent, Propagation, Sampling, TraceContext, extract,
};
pub use sampler::Sampler;
pub(crate) use span::protocol_version;
pub use span::{Attr, Host, SpanKind, SpanRecord, SpanStatus};

/// A 16-byte trace id. All zeros is invalid.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id. All zeros is invalid.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

impl TraceId {
    pub const INVALID: Self = Self([0; 16]);

    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    pub const fn from_u128(n: u128) -> Self {
        Self(n.to_be_bytes())
    }

    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }

    /// A random, valid trace id.
    pub fn random(rng: &mut fastrand::Rng) -> Self {
        loop {
            let id = Self::from_u128(rng.u128(..));
            if id.is_valid() {
                return id;
            }
        }
    }

    /// Whether the upper half is zero: a 64-bit B3 trace id, padded.
    pub fn is_64_bit(&self) -> bool {
        self.0[..8] == [0; 8]
    }

    /// Lower-case hex, 32 bytes.
    pub fn to_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex::encode(&self.0, &mut out);
        out
    }

    /// Parses 32 (or, for B3, 16) lower-case hex digits; zeros are parsed, not refused.
    pub fn from_hex(text: &[u8]) -> Option<Self> {
        match text.len() {
            32 => hex::decode::<16>(text).map(Self),
            16 => hex::decode::<8>(text).map(|low| {
                let mut id = [0; 16];
                id[8..].copy_from_slice(&low);
                Self(id)
            }),
            _ => None,
        }
    }
}

impl SpanId {
    pub const INVALID: Self = Self([0; 8]);

    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    pub const fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    pub const fn from_u64(n: u64) -> Self {
        Self(n.to_be_bytes())
    }

    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }

    /// A random, valid span id.
    pub fn random(rng: &mut fastrand::Rng) -> Self {
        loop {
            let id = Self::from_u64(rng.u64(..));
            if id.is_valid() {
                return id;
            }
        }
    }

    /// Lower-case hex, 16 bytes.
    pub fn to_hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        hex::encode(&self.0, &mut out);
        out
    }

    /// Parses exactly 16 lower-case hex digits; zeros are parsed, not refused.
    pub fn from_hex(text: &[u8]) -> Option<Self> {
        hex::decode::<8>(text).map(Self)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex::as_str(&self.to_hex()))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex::as_str(&self.to_hex()))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The context of one span, as propagated: ids and the sampling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Whether the trace is recorded (W3C `sampled`, B3 `1`).
    pub sampled: bool,
    /// B3 debug (`x-b3-flags: 1`, `b3: ...-d`): sampled, and asked to be kept by every
    /// collector. W3C has no such flag; it is carried through B3 only.
    pub debug: bool,
}

/// Lower-case hex without allocation.
pub(crate) mod hex {
    /// Every byte's two digits: one load and one two-byte store per byte, where splitting
    /// nibbles took two of each (a traced request writes 24 bytes of ids as hex, a logged one
    /// 24 more).
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut table = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        table
    };

    /// Writes `2 * bytes.len()` digits to the front of `out`.
    pub fn encode(bytes: &[u8], out: &mut [u8]) {
        for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&PAIRS[usize::from(b)]);
        }
    }

    /// Exactly `2 * N` lower-case hex digits (upper case is refused, as W3C and B3 require).
    pub fn decode<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
        if text.len() != 2 * N {
            return None;
        }
        let mut out = [0u8; N];
        for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(out)
    }

    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }

    /// Hex digits as text (they are ASCII; never fails in practice).
    pub fn as_str(digits: &[u8]) -> &str {
        std::str::from_utf8(digits).unwrap_or("")
    }
}
