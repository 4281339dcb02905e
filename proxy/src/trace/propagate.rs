//! Extraction of the incoming context, the start of this hop's span, and injection of the
//! outgoing headers. See the module docs of `trace` for the model.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::b3::{self, Decision};
use super::w3c::{self, TraceState};
use super::{Sampler, SpanContext, SpanId, TraceId};

/// A propagation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    W3c,
    /// B3 multi-header: `x-b3-traceid`, `x-b3-spanid`, ... (what Envoy and Istio send).
    B3Multi,
    /// B3 single header: `b3`.
    B3Single,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::W3c, Format::B3Multi, Format::B3Single];

    const fn bit(self) -> u8 {
        match self {
            Format::W3c => 1,
            Format::B3Multi => 2,
            Format::B3Single => 4,
        }
    }

    /// Short name, as in config and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Format::W3c => "w3c",
            Format::B3Multi => "b3",
            Format::B3Single => "b3_single",
        }
    }
}

/// A set of formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FormatSet(u8);

impl FormatSet {
    pub const EMPTY: Self = Self(0);

    pub const fn of(format: Format) -> Self {
        Self(format.bit())
    }

    #[must_use]
    pub const fn with(self, format: Format) -> Self {
        Self(self.0 | format.bit())
    }

    pub const fn contains(self, format: Format) -> bool {
        self.0 & format.bit() != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Format> {
        Format::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Format> for FormatSet {
    fn from_iter<I: IntoIterator<Item = Format>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, Self::with)
    }
}

/// The sampling decision that came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// None came in: this hop decides.
    Defer,
    Deny,
    Accept,
    /// B3 debug: sampled, and kept by every collector.
    Debug,
}

/// The remote parent of this hop's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The format it was read from.
    pub format: Format,
}

/// Every trace header the proxy reads or writes, with a bit each, to remember which came in.
const HEADERS: [HeaderName; 8] = [
    w3c::TRACEPARENT,
    w3c::TRACESTATE,
    b3::B3,
    b3::TRACE_ID,
    b3::SPAN_ID,
    b3::PARENT_SPAN_ID,
    b3::SAMPLED,
    b3::FLAGS,
];
const TRACEPARENT: u8 = 1;
const TRACESTATE: u8 = 1 << 1;
const B3_SINGLE: u8 = 1 << 2;
const B3_TRACE_ID: u8 = 1 << 3;
const B3_SPAN_ID: u8 = 1 << 4;
const B3_PARENT: u8 = 1 << 5;
const B3_SAMPLED: u8 = 1 << 6;
const B3_FLAGS: u8 = 1 << 7;
const B3_MULTI_ANY: u8 = B3_TRACE_ID | B3_SPAN_ID | B3_PARENT | B3_SAMPLED | B3_FLAGS;

/// What a request's trace headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The valid context, if any, and the format it came in.
    pub parent: Option<Parent>,
    /// The sampling decision that came in (with or without ids: B3 allows a bare decision).
    pub sampling: Sampling,
    /// The formats whose headers were present, valid or not.
    pub seen: FormatSet,
    /// The incoming `tracestate`; only meaningful when the parent came in as W3C.
    pub tracestate: TraceState,
    /// Which of `HEADERS` were present.
    present: u8,
}

/// Reads the incoming context; see the module docs of `trace` for the precedence.
///
/// One pass over the request's header fields, matching each name against the eight trace
/// header names (a length switch and a short compare), instead of eight hash lookups: cheaper
/// for the usual 5 to 30 headers, and about even beyond.
pub fn extract(headers: &HeaderMap) -> Incoming {
    let mut first: [Option<&HeaderValue>; 8] = [None; 8];
    let mut present = 0u8;
    let mut repeated = 0u8;
    for (name, value) in headers {
        let Some(i) = trace_header(name) else {
            continue;
        };
        let bit = 1 << i;
        if present & bit == 0 {
            present |= bit;
            first[i] = Some(value);
        } else {
            repeated |= bit;
        }
    }
    let mut seen = FormatSet::EMPTY;
    if present & (TRACEPARENT | TRACESTATE) != 0 {
        seen = seen.with(Format::W3c);
    }
    if present & B3_SINGLE != 0 {
        seen = seen.with(Format::B3Single);
    }
    if present & B3_MULTI_ANY != 0 {
        seen = seen.with(Format::B3Multi);
    }
    let mut incoming = Incoming {
        parent: None,
        sampling: Sampling::Defer,
        seen,
        tracestate: TraceState::Absent,
        present,
    };
    if present == 0 {
        return incoming;
    }
    let value = |bit: u8| first[bit.trailing_zeros() as usize].map(HeaderValue::as_bytes);
    // A header that must appear once: `None` if it came twice.
    let single = |bit: u8| {
        if repeated & bit == 0 {
            value(bit)
        } else {
            None
        }
    };

    if let Some(tp) = single(TRACEPARENT).and_then(w3c::parse_traceparent) {
        incoming.parent = Some(Parent {
            trace_id: tp.trace_id,
            span_id: tp.parent_id,
            format: Format::W3c,
        });
        incoming.sampling = if tp.sampled {
            Sampling::Accept
        } else {
            Sampling::Deny
        };
        if repeated & TRACESTATE != 0 {
            incoming.tracestate = w3c::check_tracestate(headers.get_all(w3c::TRACESTATE));
        } else if let Some(line) = first[1] {
            incoming.tracestate = w3c::check_tracestate([line]);
        }
        return incoming;
    }

    let (b3, format) = match single(B3_SINGLE).and_then(b3::parse_single) {
        Some(ctx) => (ctx, Format::B3Single),
        None => (
            b3::parse_multi_values(
                value(B3_TRACE_ID),
                value(B3_SPAN_ID),
                value(B3_SAMPLED),
                value(B3_FLAGS),
            ),
            Format::B3Multi,
        ),
    };
    incoming.parent = b3.ids.map(|(trace_id, span_id)| Parent {
        trace_id,
        span_id,
        format,
    });
    incoming.sampling = match b3.decision {
        None => Sampling::Defer,
        Some(Decision::Deny) => Sampling::Deny,
        Some(Decision::Accept) => Sampling::Accept,
        Some(Decision::Debug) => Sampling::Debug,
    };
    incoming
}

/// Whether `name` is one of the trace headers the proxy reads and rewrites.
pub(crate) fn is_trace_header(name: &HeaderName) -> bool {
    trace_header(name).is_some()
}

/// The index in `HEADERS` of a trace header's name.
pub(super) fn trace_header(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "traceparent" => 0,
        "tracestate" => 1,
        "b3" => 2,
        "x-b3-traceid" => 3,
        "x-b3-spanid" => 4,
        "x-b3-parentspanid" => 5,
        "x-b3-sampled" => 6,
        "x-b3-flags" => 7,
        _ => return None,
    })
}

/// This hop's span context, its parent, and what is needed to write the outgoing headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// Our span: the parent's trace id (or a new one), a new span id, the decision.
    pub span: SpanContext,
    /// The incoming parent, if a valid one came in.
    pub parent: Option<Parent>,
    seen: FormatSet,
    present: u8,
    tracestate: TraceState,
}

impl TraceContext {
    pub fn trace_id(&self) -> TraceId {
        self.span.trace_id
    }

    pub fn span_id(&self) -> SpanId {
        self.span.span_id
    }

    pub fn sampled(&self) -> bool {
        self.span.sampled
    }

    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.parent.map(|p| p.span_id)
    }

    /// The formats whose headers came in (valid or not).
    pub fn seen(&self) -> FormatSet {
        self.seen
    }
}

/// A listener's propagation policy, compiled from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    /// `None`: W3C, plus the B3 form(s) that came in.
    emit: Option<FormatSet>,
    sampler: Sampler,
}

impl Default for Propagation {
    /// Auto emission; sample every new trace.
    fn default() -> Self {
        Self {
            emit: None,
            sampler: Sampler::always(),
        }
    }
}

impl Propagation {
    /// `emit`: the formats written upstream, or `None` for W3C plus the B3 form(s) that came in.
    /// `sampler`: decides for traces that come in without a decision.
    pub fn new(emit: Option<FormatSet>, sampler: Sampler) -> Self {
        Self { emit, sampler }
    }

    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// Extracts the incoming context and starts this hop's span. Draws from the calling
    /// thread's `fastrand` generator.
    pub fn start(&self, headers: &HeaderMap) -> TraceContext {
        self.start_from(extract(headers), || fastrand::u64(..))
    }

    /// [`Self::start`] drawing from `rng` (tests pass a seeded one).
    pub fn start_with(&self, headers: &HeaderMap, rng: &mut fastrand::Rng) -> TraceContext {
        self.start_from(extract(headers), || rng.u64(..))
    }

    /// Starts this hop's span from an extracted context.
    pub fn continue_from(&self, incoming: Incoming, rng: &mut fastrand::Rng) -> TraceContext {
        self.start_from(incoming, || rng.u64(..))
    }

    fn start_from(&self, incoming: Incoming, mut random: impl FnMut() -> u64) -> TraceContext {
        let trace_id = match incoming.parent {
            Some(p) => p.trace_id,
            None => loop {
                let id = TraceId::from_u128((u128::from(random()) << 64) | u128::from(random()));
                if id.is_valid() {
                    break id;
                }
            },
        };
        let span_id = loop {
            // Never zero, and never the parent's span id.
            let id = SpanId::from_u64(random());
            if id.is_valid() && incoming.parent.is_none_or(|p| p.span_id != id) {
                break id;
            }
        };
        let (sampled, debug) = match incoming.sampling {
            Sampling::Accept => (true, false),
            Sampling::Debug => (true, true),
            Sampling::Deny => (false, false),
            Sampling::Defer => (self.sampler.should_sample(&trace_id), false),
        };
        TraceContext {
            span: SpanContext {
                trace_id,
                span_id,
                sampled,
                debug,
            },
            parent: incoming.parent,
            seen: incoming.seen,
            present: incoming.present,
            tracestate: incoming.tracestate,
        }
    }

    /// The formats written upstream for this request.
    pub fn emitted(&self, ctx: &TraceContext) -> FormatSet {
        self.emit.unwrap_or_else(|| {
            let mut set = FormatSet::of(Format::W3c);
            for b3 in [Format::B3Multi, Format::B3Single] {
                if ctx.seen.contains(b3) {
                    set = set.with(b3);
                }
            }
            set
        })
    }

    /// Replaces the request's trace headers with this hop's context, in the formats this
    /// listener emits; trace headers of other formats that came in are removed, so nothing
    /// upstream sees a context that skips this hop.
    pub fn inject(&self, ctx: &TraceContext, headers: &mut HeaderMap) {
        let emit = self.emitted(ctx);
        let span = &ctx.span;
        let mut remove = ctx.present;

        if emit.contains(Format::W3c) {
            headers.insert(w3c::TRACEPARENT, w3c::traceparent_value(span));
            remove &= !TRACEPARENT;
            let from_w3c = ctx.parent.is_some_and(|p| p.format == Format::W3c);
            match &ctx.tracestate {
                TraceState::Keep if from_w3c => remove &= !TRACESTATE,
                TraceState::Replace(value) if from_w3c => {
                    headers.insert(w3c::TRACESTATE, value.clone());
                    remove &= !TRACESTATE;
                }
                _ => {}
            }
        }
        if emit.contains(Format::B3Single) {
            headers.insert(b3::B3, b3::single_value(span, ctx.parent_span_id()));
            remove &= !B3_SINGLE;
        }
        if emit.contains(Format::B3Multi) {
            headers.insert(b3::TRACE_ID, b3::trace_id_value(&span.trace_id));
            headers.insert(b3::SPAN_ID, b3::span_id_value(&span.span_id));
            remove &= !(B3_TRACE_ID | B3_SPAN_ID);
            if let Some(parent) = ctx.parent_span_id() {
                headers.insert(b3::PARENT_SPAN_ID, b3::span_id_value(&parent));
                remove &= !B3_PARENT;
            }
            let (name, value) = b3::multi_sampling(span);
            remove &= !(if name == b3::FLAGS {
                B3_FLAGS
            } else {
                B3_SAMPLED
            });
            headers.insert(name, value);
        }
        for (i, name) in HEADERS.iter().enumerate() {
            if remove & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }

    /// [`Self::start`] then [`Self::inject`] into the same headers (a request edited in place).
    pub fn start_and_inject(&self, headers: &mut HeaderMap) -> TraceContext {
        let ctx = self.start(headers);
        self.inject(&ctx, headers);
        ctx
    }
}
