use super::headers;
use crate::trace::b3::*;
use crate::trace::{SpanContext, SpanId, TraceId};

const T128: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const T64: &str = "463ac35c9f6413ad";
const SPAN: &str = "e457b5a2e4d86bd1";
const PARENT: &str = "05e3ac9a4f6e3b90";

fn tid(s: &str) -> TraceId {
    TraceId::from_hex(s.as_bytes()).unwrap()
}

fn sid(s: &str) -> SpanId {
    SpanId::from_hex(s.as_bytes()).unwrap()
}

fn single(s: &str) -> Option<B3Context> {
    parse_single(s.as_bytes())
}

#[test]
fn single_header_forms() {
    let full = single(&format!("{T128}-{SPAN}-1-{PARENT}")).unwrap();
    assert_eq!(full.ids, Some((tid(T128), sid(SPAN))));
    assert_eq!(full.decision, Some(Decision::Accept));

    let no_parent = single(&format!("{T128}-{SPAN}-d")).unwrap();
    assert_eq!(no_parent.decision, Some(Decision::Debug));

    let deferred = single(&format!("{T64}-{SPAN}")).unwrap();
    assert_eq!(deferred.decision, None);
    let (trace, _) = deferred.ids.unwrap();
    assert!(trace.is_64_bit());
    assert_eq!(trace.to_string(), format!("0000000000000000{T64}"));

    for (only, d) in [
        ("0", Decision::Deny),
        ("1", Decision::Accept),
        ("d", Decision::Debug),
    ] {
        assert_eq!(
            single(only),
            Some(B3Context {
                ids: None,
                decision: Some(d)
            })
        );
    }
}

#[test]
fn malformed_single_headers_are_refused() {
    let upper = T128.to_uppercase();
    for bad in [
        "2".to_owned(),
        "true".to_owned(),
        String::new(),
        format!("{upper}-{SPAN}-1"),
        format!("{}-{SPAN}-1", "0".repeat(32)),
        format!("{T128}-0000000000000000-1"),
        format!("{T128}-{SPAN}-x"),
        format!("{T128}-{SPAN}-11"),
        format!("{T128}-{SPAN}-1-nothex0nothex00"),
        format!("{T128}-{SPAN}-1-{PARENT}-more"),
        T128.to_owned(),
        format!("{}-{SPAN}", &T128[..20]),
    ] {
        assert_eq!(single(&bad), None, "{bad:?}");
    }
}

#[test]
fn multi_headers() {
    let h = headers(&[
        ("x-b3-traceid", T128),
        ("x-b3-spanid", SPAN),
        ("x-b3-parentspanid", PARENT),
        ("x-b3-sampled", "1"),
    ]);
    assert_eq!(
        parse_multi(&h),
        B3Context {
            ids: Some((tid(T128), sid(SPAN))),
            decision: Some(Decision::Accept)
        }
    );

    let legacy = headers(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "false"),
    ]);
    assert_eq!(parse_multi(&legacy).decision, Some(Decision::Deny));
    let legacy = headers(&[("x-b3-sampled", "true")]);
    assert_eq!(parse_multi(&legacy).decision, Some(Decision::Accept));

    let debug = headers(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
    ]);
    assert_eq!(
        parse_multi(&debug).decision,
        Some(Decision::Debug),
        "debug wins"
    );

    let deferred = headers(&[("x-b3-traceid", T64), ("x-b3-spanid", SPAN)]);
    assert_eq!(parse_multi(&deferred).decision, None);
    assert!(parse_multi(&deferred).ids.is_some());

    // Bad ids are ignored, a good decision beside them is kept.
    let bad_ids = headers(&[
        ("x-b3-traceid", "xyz"),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
    ]);
    assert_eq!(
        parse_multi(&bad_ids),
        B3Context {
            ids: None,
            decision: Some(Decision::Deny)
        }
    );
    let no_span = headers(&[("x-b3-traceid", T128)]);
    assert!(parse_multi(&no_span).is_empty());
    let odd_sampled = headers(&[("x-b3-sampled", "yes")]);
    assert!(parse_multi(&odd_sampled).is_empty());
}

#[test]
fn formatting() {
    let span = SpanContext {
        trace_id: tid(T128),
        span_id: sid(SPAN),
        sampled: true,
        debug: false,
    };
    let mut buf = [0; SINGLE_MAX_LEN];
    assert_eq!(
        format_single(&span, Some(sid(PARENT)), &mut buf),
        format!("{T128}-{SPAN}-1-{PARENT}").as_bytes()
    );
    let debug = SpanContext {
        debug: true,
        ..span
    };
    assert_eq!(
        single_value(&debug, None),
        format!("{T128}-{SPAN}-d").as_str()
    );
    let short = SpanContext {
        trace_id: tid(T64),
        sampled: false,
        ..span
    };
    assert_eq!(
        single_value(&short, None),
        format!("{T64}-{SPAN}-0").as_str(),
        "a 64-bit id stays 64-bit"
    );
    assert_eq!(trace_id_value(&short.trace_id), T64);
    assert_eq!(trace_id_value(&span.trace_id), T128);
    assert_eq!(span_id_value(&span.span_id), SPAN);
    assert_eq!(multi_sampling(&span), (SAMPLED, "1".parse().unwrap()));
    assert_eq!(multi_sampling(&short), (SAMPLED, "0".parse().unwrap()));
    assert_eq!(multi_sampling(&debug), (FLAGS, "1".parse().unwrap()));
    // What we format, we parse back.
    let longest = single_value(&span, Some(sid(PARENT)));
    assert_eq!(longest.len(), SINGLE_MAX_LEN);
    assert_eq!(
        parse_single(longest.as_bytes()).unwrap().ids,
        Some((span.trace_id, span.span_id))
    );
}
