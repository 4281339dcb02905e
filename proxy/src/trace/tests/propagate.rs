use http::HeaderMap;

use super::{get, headers};
use crate::trace::w3c::{self, TraceState};
use crate::trace::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";

fn tid(s: &str) -> TraceId {
    TraceId::from_hex(s.as_bytes()).unwrap()
}

fn sid(s: &str) -> SpanId {
    SpanId::from_hex(s.as_bytes()).unwrap()
}

fn rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(42)
}

/// Runs one hop: start from `h`, inject into it, return the context.
fn hop(p: &Propagation, h: &mut HeaderMap) -> TraceContext {
    let ctx = p.start_with(h, &mut rng());
    p.inject(&ctx, h);
    ctx
}

fn auto(sampler: Sampler) -> Propagation {
    Propagation::new(None, sampler)
}

fn emit(formats: &[Format]) -> Propagation {
    Propagation::new(Some(formats.iter().copied().collect()), Sampler::always())
}

const ALL_TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fn trace_headers(h: &HeaderMap) -> Vec<&str> {
    ALL_TRACE_HEADERS
        .into_iter()
        .filter(|n| h.contains_key(*n))
        .collect()
}

#[test]
fn nothing_in_starts_a_sampled_trace_and_sends_w3c_only() {
    let mut h = headers(&[("x-other", "kept")]);
    let ctx = hop(&auto(Sampler::always()), &mut h);
    assert!(ctx.parent.is_none());
    assert!(ctx.trace_id().is_valid() && ctx.span_id().is_valid());
    assert!(ctx.sampled());
    assert_eq!(trace_headers(&h), vec!["traceparent"]);
    let sent = w3c::parse_traceparent(h["traceparent"].as_bytes()).unwrap();
    assert_eq!(
        (sent.trace_id, sent.parent_id, sent.sampled),
        (ctx.trace_id(), ctx.span_id(), true)
    );
    assert_eq!(get(&h, "x-other"), Some("kept"));
}

#[test]
fn a_new_trace_is_sampled_by_ratio() {
    let mut h = HeaderMap::new();
    let ctx = hop(&auto(Sampler::never()), &mut h);
    assert!(!ctx.sampled());
    assert!(get(&h, "traceparent").unwrap().ends_with("-00"));
}

#[test]
fn w3c_in_is_continued_and_its_flag_obeyed() {
    for (flags, sampled) in [("01", true), ("00", false)] {
        // The sampler would say the opposite: the incoming flag wins.
        let sampler = if sampled {
            Sampler::never()
        } else {
            Sampler::always()
        };
        let mut h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-{flags}")),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ]);
        let ctx = hop(&auto(sampler), &mut h);
        assert_eq!(
            ctx.parent,
            Some(Parent {
                trace_id: tid(TRACE),
                span_id: sid(PARENT),
                format: Format::W3c
            })
        );
        assert_eq!(ctx.trace_id(), tid(TRACE));
        assert_ne!(ctx.span_id(), sid(PARENT));
        assert_eq!(ctx.sampled(), sampled);
        assert_eq!(trace_headers(&h), vec!["traceparent", "tracestate"]);
        assert_eq!(
            get(&h, "traceparent").unwrap(),
            format!("00-{TRACE}-{}-{flags}", ctx.span_id())
        );
        assert_eq!(
            get(&h, "tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }
}

#[test]
fn b3_multi_in_goes_out_as_w3c_and_b3_multi() {
    let mut h = headers(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ]);
    let ctx = hop(&auto(Sampler::never()), &mut h);
    assert_eq!(ctx.parent.map(|p| p.format), Some(Format::B3Multi));
    assert_eq!(ctx.trace_id(), tid(B3_TRACE));
    assert!(ctx.sampled());
    assert_eq!(
        trace_headers(&h),
        vec![
            "traceparent",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled"
        ]
    );
    assert_eq!(get(&h, "x-b3-traceid"), Some(B3_TRACE));
    assert_eq!(get(&h, "x-b3-spanid").unwrap(), ctx.span_id().to_string());
    assert_eq!(
        get(&h, "x-b3-parentspanid"),
        Some(B3_SPAN),
        "our parent is the incoming span"
    );
    assert_eq!(get(&h, "x-b3-sampled"), Some("1"));
    assert_eq!(
        get(&h, "traceparent").unwrap(),
        format!("00-{B3_TRACE}-{}-01", ctx.span_id())
    );
}

#[test]
fn b3_single_in_goes_out_as_w3c_and_b3_single() {
    let mut h = headers(&[("b3", &format!("{B3_TRACE}-{B3_SPAN}-0"))]);
    let ctx = hop(&auto(Sampler::always()), &mut h);
    assert_eq!(ctx.parent.map(|p| p.format), Some(Format::B3Single));
    assert!(!ctx.sampled(), "b3 0 obeyed");
    assert_eq!(trace_headers(&h), vec!["traceparent", "b3"]);
    assert_eq!(
        get(&h, "b3").unwrap(),
        format!("{B3_TRACE}-{}-0-{B3_SPAN}", ctx.span_id())
    );
}

#[test]
fn b3_debug_is_sampled_and_carried_as_flags() {
    let mut h = headers(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-flags", "1"),
        ("x-b3-sampled", "1"),
    ]);
    let ctx = hop(&auto(Sampler::never()), &mut h);
    assert!(ctx.sampled() && ctx.span.debug);
    assert_eq!(get(&h, "x-b3-flags"), Some("1"));
    assert_eq!(
        get(&h, "x-b3-sampled"),
        None,
        "debug implies sampled; not sent twice"
    );
    assert!(get(&h, "traceparent").unwrap().ends_with("-01"));
}

#[test]
fn a_bare_b3_decision_starts_a_trace_with_that_decision() {
    let mut h = headers(&[("b3", "0")]);
    let ctx = hop(&auto(Sampler::always()), &mut h);
    assert!(ctx.parent.is_none());
    assert!(!ctx.sampled());
    assert!(get(&h, "b3").unwrap().ends_with("-0"));

    let mut h = headers(&[("x-b3-sampled", "1")]);
    let ctx = hop(&auto(Sampler::never()), &mut h);
    assert!(ctx.parent.is_none() && ctx.sampled());
    assert_eq!(get(&h, "x-b3-sampled"), Some("1"));
    assert!(!h.contains_key("x-b3-parentspanid"), "a root has no parent");
}

#[test]
fn b3_ids_without_a_decision_defer_to_the_ratio() {
    let pairs = [("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN)];
    let ctx = hop(&auto(Sampler::never()), &mut headers(&pairs));
    assert!(!ctx.sampled());
    let ctx = hop(&auto(Sampler::always()), &mut headers(&pairs));
    assert!(ctx.sampled());
}

#[test]
fn an_explicit_list_emits_exactly_those_and_removes_the_rest() {
    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
        ("tracestate", "congo=1"),
    ]);
    let ctx = hop(&emit(&[Format::B3Multi]), &mut h);
    assert_eq!(ctx.trace_id(), tid(TRACE));
    assert_eq!(
        trace_headers(&h),
        vec![
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled"
        ],
        "W3C in, B3 only out: traceparent and tracestate removed"
    );

    let mut h = headers(&[
        ("b3", &format!("{B3_TRACE}-{B3_SPAN}-1")),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-sampled", "1"),
    ]);
    hop(&emit(&[Format::W3c]), &mut h);
    assert_eq!(trace_headers(&h), vec!["traceparent"]);

    let mut h = headers(&[("b3", "1")]);
    hop(&emit(&[]), &mut h);
    assert!(trace_headers(&h).is_empty(), "an empty list sends nothing");

    let mut h = HeaderMap::new();
    hop(
        &emit(&[Format::W3c, Format::B3Multi, Format::B3Single]),
        &mut h,
    );
    assert_eq!(
        trace_headers(&h),
        vec![
            "traceparent",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled"
        ]
    );
}

#[test]
fn w3c_wins_over_b3_and_b3_goes_out_consistent_with_it() {
    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-sampled", "0"),
    ]);
    let ctx = hop(&auto(Sampler::always()), &mut h);
    assert_eq!(ctx.parent.map(|p| p.format), Some(Format::W3c));
    assert!(ctx.sampled());
    assert_eq!(get(&h, "x-b3-traceid"), Some(TRACE));
    assert_eq!(get(&h, "x-b3-parentspanid"), Some(PARENT));
    assert_eq!(get(&h, "x-b3-sampled"), Some("1"));
}

#[test]
fn an_invalid_traceparent_falls_back_to_b3_and_drops_tracestate() {
    let mut h = headers(&[
        (
            "traceparent",
            &format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
        ),
        ("tracestate", "congo=1"),
        ("b3", &format!("{B3_TRACE}-{B3_SPAN}-1")),
    ]);
    let ctx = hop(&auto(Sampler::never()), &mut h);
    assert_eq!(ctx.parent.map(|p| p.format), Some(Format::B3Single));
    assert_eq!(ctx.trace_id(), tid(B3_TRACE));
    assert_eq!(trace_headers(&h), vec!["traceparent", "b3"]);

    // Nothing valid at all: a new trace, and the foreign tracestate does not follow it.
    let mut h = headers(&[("traceparent", "garbage"), ("tracestate", "congo=1")]);
    let ctx = hop(&auto(Sampler::always()), &mut h);
    assert!(ctx.parent.is_none());
    assert_eq!(trace_headers(&h), vec!["traceparent"]);
    // Two traceparent headers are ambiguous: invalid.
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let mut h = headers(&[("traceparent", &tp), ("traceparent", &tp)]);
    assert!(hop(&auto(Sampler::always()), &mut h).parent.is_none());
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
}

#[test]
fn tracestate_follows_only_w3c_parents_and_is_bounded() {
    let long = (0..14)
        .map(|i| format!("k{i:02}={}", "v".repeat(40)))
        .collect::<Vec<_>>()
        .join(",");
    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
        ("tracestate", &long),
    ]);
    let incoming = extract(&h);
    assert!(matches!(incoming.tracestate, TraceState::Replace(_)));
    hop(&auto(Sampler::always()), &mut h);
    let sent = get(&h, "tracestate").unwrap();
    assert!(sent.len() <= w3c::MAX_TRACESTATE_LEN && sent.starts_with("k00="));

    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
        ("tracestate", "Bad=1"),
    ]);
    hop(&auto(Sampler::always()), &mut h);
    assert_eq!(trace_headers(&h), vec!["traceparent"], "invalid: removed");

    // Several lines, valid: kept as they are.
    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
        ("tracestate", "a=1"),
        ("tracestate", "b=2"),
    ]);
    hop(&auto(Sampler::always()), &mut h);
    assert_eq!(h.get_all("tracestate").iter().count(), 2);
}

#[test]
fn two_hops_chain_parent_to_child() {
    let p = auto(Sampler::always());
    let mut h = headers(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN)]);
    let first = p.start(&h);
    p.inject(&first, &mut h);
    let second = p.start(&h);
    p.inject(&second, &mut h);
    assert_eq!(first.trace_id(), second.trace_id());
    assert_eq!(first.parent_span_id(), Some(sid(B3_SPAN)));
    assert_eq!(second.parent_span_id(), Some(first.span_id()));
    assert_ne!(first.span_id(), second.span_id());
    assert_eq!(
        second.parent.map(|p| p.format),
        Some(Format::W3c),
        "W3C is preferred once both are present"
    );
    assert_eq!(
        get(&h, "x-b3-parentspanid").unwrap(),
        first.span_id().to_string()
    );
}

#[test]
fn extract_reports_what_came_in() {
    let h = headers(&[("b3", "not valid"), ("x-b3-sampled", "0")]);
    let incoming = extract(&h);
    assert_eq!(
        incoming.seen,
        FormatSet::of(Format::B3Single).with(Format::B3Multi)
    );
    assert_eq!(
        incoming.sampling,
        Sampling::Deny,
        "multi used when single is bad"
    );
    assert!(incoming.parent.is_none());
    assert_eq!(extract(&HeaderMap::new()).seen, FormatSet::EMPTY);

    let ctx = auto(Sampler::always()).continue_from(extract(&h), &mut rng());
    assert!(!ctx.sampled());
    assert_eq!(ctx.seen(), incoming.seen);
}

#[test]
fn seeded_starts_are_deterministic_and_start_uses_fresh_ids() {
    let p = auto(Sampler::always());
    let h = HeaderMap::new();
    assert_eq!(p.start_with(&h, &mut rng()), p.start_with(&h, &mut rng()));
    let a = p.start(&h);
    let b = p.start(&h);
    assert_ne!(a.trace_id(), b.trace_id());
    let mut h = HeaderMap::new();
    let c = p.start_and_inject(&mut h);
    assert!(
        get(&h, "traceparent")
            .unwrap()
            .contains(&c.span_id().to_string())
    );
}

#[test]
fn format_sets() {
    let s: FormatSet = [Format::W3c, Format::B3Single].into_iter().collect();
    assert!(s.contains(Format::W3c) && !s.contains(Format::B3Multi));
    assert_eq!(
        s.iter().collect::<Vec<_>>(),
        vec![Format::W3c, Format::B3Single]
    );
    assert!(FormatSet::EMPTY.is_empty());
    assert_eq!(Format::B3Multi.name(), "b3");
}

#[test]
fn the_name_match_agrees_with_the_header_table() {
    for (i, name) in ALL_TRACE_HEADERS.iter().enumerate() {
        let name = http::HeaderName::from_static(name);
        assert_eq!(crate::trace::propagate::trace_header(&name), Some(i));
    }
    assert_eq!(
        crate::trace::propagate::trace_header(&http::header::HOST),
        None
    );
    // Repeated single-valued headers are ambiguous and ignored; others in the set still count.
    let mut h = headers(&[
        ("b3", &format!("{B3_TRACE}-{B3_SPAN}-1")),
        ("b3", &format!("{B3_TRACE}-{B3_SPAN}-0")),
        ("x-b3-sampled", "0"),
    ]);
    let ctx = hop(&auto(Sampler::always()), &mut h);
    assert!(
        ctx.parent.is_none() && !ctx.sampled(),
        "fell back to x-b3-sampled"
    );
    assert_eq!(h.get_all("b3").iter().count(), 1);
}

/// Every injected id is this hop's own: HPACK must not index them (see `never_indexed`).
#[test]
fn injected_trace_headers_are_never_indexed() {
    let p = emit(&[Format::W3c, Format::B3Single, Format::B3Multi]);
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    hop(&p, &mut h);
    for name in [
        "traceparent",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
    ] {
        let value = h.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(value.is_sensitive(), "{name} may be indexed");
    }
}
