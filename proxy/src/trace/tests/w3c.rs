use http::HeaderMap;

use super::headers;
use crate::trace::w3c::*;
use crate::trace::{SpanContext, SpanId, TraceId};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn tp(s: &str) -> Option<TraceParent> {
    parse_traceparent(s.as_bytes())
}

#[test]
fn version_00_parses_with_its_sampled_flag() {
    let p = tp(&format!("00-{TRACE}-{PARENT}-01")).unwrap();
    assert_eq!(p.trace_id, TraceId::from_hex(TRACE.as_bytes()).unwrap());
    assert_eq!(p.parent_id, SpanId::from_hex(PARENT.as_bytes()).unwrap());
    assert!(p.sampled);
    assert!(!tp(&format!("00-{TRACE}-{PARENT}-00")).unwrap().sampled);
    // Only bit 0 means sampled; other bits (Level 2's `random`) are ignored.
    assert!(!tp(&format!("00-{TRACE}-{PARENT}-02")).unwrap().sampled);
    assert!(tp(&format!("00-{TRACE}-{PARENT}-03")).unwrap().sampled);
}

#[test]
fn version_00_is_strict() {
    let upper = TRACE.to_uppercase();
    for (bad, why) in [
        (format!("00-{upper}-{PARENT}-01"), "upper-case trace id"),
        (
            format!("00-{TRACE}-00F067AA0BA902B7-01"),
            "upper-case parent id",
        ),
        (format!("00-{TRACE}-{PARENT}-0A"), "upper-case flags"),
        (
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            "all-zero trace id",
        ),
        (
            format!("00-{TRACE}-0000000000000000-01"),
            "all-zero parent id",
        ),
        (
            format!("00-{TRACE}-{PARENT}-01-extra"),
            "00 with extra fields",
        ),
        (format!("00-{TRACE}-{PARENT}-01 "), "00 longer than 55"),
        (format!("00-{TRACE}-{PARENT}-1"), "short flags"),
        (format!("00_{TRACE}-{PARENT}-01"), "wrong separator"),
        (format!("00-{TRACE}{PARENT}--01"), "misplaced dash"),
        (format!("0g-{TRACE}-{PARENT}-01"), "version not hex"),
        (format!("00-{TRACE}-{PARENT}-zz"), "flags not hex"),
        (format!("00-{}-{PARENT}-01", &TRACE[..31]), "short trace id"),
        (String::new(), "empty"),
    ] {
        assert_eq!(tp(&bad), None, "{why}: {bad:?}");
    }
}

#[test]
fn version_ff_is_invalid() {
    assert_eq!(tp(&format!("ff-{TRACE}-{PARENT}-01")), None);
}

#[test]
fn future_versions_parse_the_known_fields() {
    // Section 4.3: a higher version is read like 00, and may carry more after a dash.
    let p = tp(&format!("01-{TRACE}-{PARENT}-01")).unwrap();
    assert!(p.sampled);
    let p = tp(&format!(
        "cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"
    ))
    .unwrap();
    assert_eq!(p.trace_id, TraceId::from_hex(TRACE.as_bytes()).unwrap());
    // ... but not without the dash, nor shorter than 55, nor with zero ids.
    assert_eq!(tp(&format!("cc-{TRACE}-{PARENT}-01.what")), None);
    assert_eq!(tp(&format!("cc-{TRACE}-{PARENT}-1")), None);
    assert_eq!(tp(&format!("cc-{}-{PARENT}-01-x", "0".repeat(32))), None);
    assert_eq!(tp(&format!("cc-{TRACE}-{PARENT}-XX-x")), None);
}

#[test]
fn format_round_trips_and_only_sets_the_sampled_bit() {
    let span = SpanContext {
        trace_id: TraceId::from_hex(TRACE.as_bytes()).unwrap(),
        span_id: SpanId::from_hex(PARENT.as_bytes()).unwrap(),
        sampled: true,
        debug: true,
    };
    let v = traceparent_value(&span);
    assert_eq!(v, format!("00-{TRACE}-{PARENT}-01").as_str());
    let parsed = tp(v.to_str().unwrap()).unwrap();
    assert_eq!(
        (parsed.trace_id, parsed.parent_id, parsed.sampled),
        (span.trace_id, span.span_id, true)
    );
    let unsampled = SpanContext {
        sampled: false,
        debug: false,
        ..span
    };
    assert_eq!(
        traceparent_value(&unsampled),
        format!("00-{TRACE}-{PARENT}-00").as_str()
    );
}

fn ts(lines: &[&str]) -> TraceState {
    let pairs: Vec<(&str, &str)> = lines.iter().map(|l| ("tracestate", *l)).collect();
    let h = headers(&pairs);
    check_tracestate(h.get_all("tracestate"))
}

#[test]
fn valid_tracestate_is_kept_as_is() {
    assert_eq!(ts(&["congo=t61rcWkgMzE"]), TraceState::Keep);
    assert_eq!(
        ts(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]),
        TraceState::Keep
    );
    assert_eq!(
        ts(&["rojo=1 ,\t congo=2"]),
        TraceState::Keep,
        "OWS around members"
    );
    assert_eq!(
        ts(&["rojo=1,,congo=2"]),
        TraceState::Keep,
        "empty members are skipped"
    );
    assert_eq!(
        ts(&["tenant1@vendor=x", "a_b-c*d/e=v a l"]),
        TraceState::Keep
    );
    assert_eq!(
        ts(&["9tenant@sys=x"]),
        TraceState::Keep,
        "tenant ids may start with a digit"
    );
    assert_eq!(
        check_tracestate(HeaderMap::new().get_all("tracestate")),
        TraceState::Absent
    );
}

#[test]
fn invalid_tracestate_is_dropped() {
    for (bad, why) in [
        ("Rojo=1", "upper-case key"),
        ("9rojo=1", "simple key starting with a digit"),
        ("rojo", "no ="),
        ("rojo=", "empty value"),
        ("rojo=a=b", "= in value"),
        ("rojo=1,rojo=2", "duplicate key"),
        ("t@=1", "empty system id"),
        ("t@Sys=1", "upper-case system id"),
        ("t@abcdefghijklmno=1", "system id over 14"),
        (",", "only empty members"),
    ] {
        assert_eq!(ts(&[bad]), TraceState::Drop, "{why}: {bad:?}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert_eq!(ts(&[&many.join(",")]), TraceState::Drop, "33 members");
    let ok: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
    assert_eq!(ts(&[&ok.join(",")]), TraceState::Keep, "32 members");
    assert_eq!(
        ts(&["a=1", "a=2"]),
        TraceState::Drop,
        "duplicates across lines"
    );
}

#[test]
fn long_tracestate_is_cut_long_members_first_then_from_the_end() {
    let long = format!("big={}", "x".repeat(200));
    let members: Vec<String> = (0..10)
        .map(|i| format!("k{i}={}", "v".repeat(40)))
        .collect();
    // 10 members of 43 bytes + long member + commas: well over 512.
    let value = format!(
        "{},{long},{}",
        members[..5].join(","),
        members[5..].join(",")
    );
    let TraceState::Replace(cut) = ts(&[&value]) else {
        panic!("not cut: {:?}", ts(&[&value]));
    };
    let cut = cut.to_str().unwrap().to_owned();
    assert!(!cut.contains("big="), "the >128-byte member goes first");
    assert_eq!(cut, members.join(","), "then nothing else needed to go");
    assert!(cut.len() <= MAX_TRACESTATE_LEN);

    // Without a long member, members go from the end.
    let members: Vec<String> = (0..14)
        .map(|i| format!("k{i:02}={}", "v".repeat(40)))
        .collect();
    let TraceState::Replace(cut) = ts(&[&members.join(",")]) else {
        panic!("not cut");
    };
    let cut = cut.to_str().unwrap();
    assert!(cut.len() <= MAX_TRACESTATE_LEN);
    assert!(cut.starts_with("k00="));
    assert!(!cut.contains("k13="));
    assert_eq!(cut, members[..cut.split(',').count()].join(","));
}
