use std::collections::HashSet;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

fn with(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(DEFAULT_HEADER, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

#[test]
fn a_well_formed_incoming_id_is_kept_untouched() {
    let ids = RequestIds::default();
    let mut h = with(&["edge-2f1c9c1e-6a7e-4d0a-9b0e-3c1f0a2b4c5d"]);
    let id = ids.ensure(&mut h);
    assert!(!id.generated());
    assert_eq!(id.as_str(), "edge-2f1c9c1e-6a7e-4d0a-9b0e-3c1f0a2b4c5d");
    assert_eq!(h.get_all(DEFAULT_HEADER).iter().count(), 1);
    assert_eq!(h[DEFAULT_HEADER], *id.header_value());
}

#[test]
fn an_absent_id_is_generated_as_a_uuid_v4_and_inserted() {
    let ids = RequestIds::default();
    let mut h = HeaderMap::new();
    let id = ids.ensure(&mut h);
    assert!(id.generated());
    assert!(is_uuid_v4(id.as_str()), "{}", id.as_str());
    assert_eq!(h[DEFAULT_HEADER], *id.header_value());
}

#[test]
fn malformed_ids_are_replaced() {
    let ids = RequestIds::default();
    let too_long = "a".repeat(MAX_LEN + 1);
    let just_right = "a".repeat(MAX_LEN);
    for (bad, why) in [
        ("", "empty"),
        ("has space", "space"),
        ("tab\there", "tab"),
        (too_long.as_str(), "too long"),
    ] {
        let mut h = with(&[bad]);
        let id = ids.ensure(&mut h);
        assert!(id.generated(), "{why}: kept {bad:?}");
        assert_eq!(h.get_all(DEFAULT_HEADER).iter().count(), 1, "{why}");
        assert!(is_uuid_v4(h[DEFAULT_HEADER].to_str().unwrap()), "{why}");
    }
    let mut h = with(&[&just_right]);
    assert!(!ids.ensure(&mut h).generated(), "128 bytes are allowed");

    // Bytes above 0x7e are valid in a header value (obs-text) but not in an id.
    let mut h = HeaderMap::new();
    h.insert(
        DEFAULT_HEADER,
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    );
    assert!(ids.ensure(&mut h).generated());
}

#[test]
fn two_incoming_ids_are_ambiguous_and_both_replaced() {
    let ids = RequestIds::default();
    let mut h = with(&["one", "two"]);
    let id = ids.ensure(&mut h);
    assert!(id.generated());
    let all: Vec<_> = h.get_all(DEFAULT_HEADER).iter().collect();
    assert_eq!(all, vec![id.header_value()]);
}

#[test]
fn keep_incoming_false_always_generates() {
    let ids = RequestIds::new(DEFAULT_HEADER, true, false);
    let mut h = with(&["client-chose-this"]);
    let id = ids.ensure(&mut h);
    assert!(id.generated());
    assert_ne!(h[DEFAULT_HEADER], "client-chose-this");
}

#[test]
fn a_configured_header_name_is_used_for_reading_writing_and_echo() {
    let name = HeaderName::from_static("x-correlation-id");
    let ids = RequestIds::new(name.clone(), true, true);
    let mut h = with(&["ignored-because-wrong-header"]);
    let id = ids.ensure(&mut h);
    assert!(id.generated());
    assert_eq!(h[&name], *id.header_value());
    assert_eq!(
        h[DEFAULT_HEADER], "ignored-because-wrong-header",
        "other headers are left alone"
    );
    let mut resp = HeaderMap::new();
    ids.echo_into(&id, &mut resp);
    assert_eq!(resp[&name], *id.header_value());
}

#[test]
fn echo_replaces_an_upstream_value_and_can_be_turned_off() {
    let ids = RequestIds::default();
    let mut h = with(&["abc"]);
    let id = ids.ensure(&mut h);
    let mut resp = with(&["upstream-made-this-up"]);
    ids.echo_into(&id, &mut resp);
    assert_eq!(
        resp.get_all(DEFAULT_HEADER).iter().collect::<Vec<_>>(),
        vec!["abc"]
    );

    let quiet = RequestIds::new(DEFAULT_HEADER, false, true);
    let mut resp = HeaderMap::new();
    quiet.echo_into(&id, &mut resp);
    assert!(resp.is_empty());
}

#[test]
fn seeded_generation_is_deterministic_and_ids_differ() {
    let a = generate_with(&mut fastrand::Rng::with_seed(7));
    let b = generate_with(&mut fastrand::Rng::with_seed(7));
    assert_eq!(a, b);
    let mut rng = fastrand::Rng::with_seed(7);
    let ids = RequestIds::default();
    let mut h = HeaderMap::new();
    assert_eq!(*ids.ensure_with(&mut h, &mut rng).header_value(), a);

    let many: HashSet<HeaderValue> = (0..10_000).map(|_| generate()).collect();
    assert_eq!(many.len(), 10_000);
    assert!(many.iter().all(|v| is_uuid_v4(v.to_str().unwrap())));
}

#[test]
fn uuid_bits_are_set_whatever_the_random_bytes() {
    let mut buf = [0u8; UUID_LEN];
    assert_eq!(
        format_uuid_v4([0; 16], &mut buf),
        b"00000000-0000-4000-8000-000000000000"
    );
    assert_eq!(
        format_uuid_v4([0xff; 16], &mut buf),
        b"ffffffff-ffff-4fff-bfff-ffffffffffff"
    );
}

#[test]
fn well_formed_bounds() {
    assert!(is_well_formed(b"!"));
    assert!(is_well_formed(b"~"));
    assert!(!is_well_formed(b" "));
    assert!(!is_well_formed(b"\x7f"));
    assert!(!is_well_formed(&[b'x'; MAX_LEN + 1]));
}

/// Request ids are unique per request: HPACK must not put them in an HTTP/2 connection's
/// dynamic table, where they would cost an insert and evict fields that repeat.
#[test]
fn ids_kept_or_generated_are_never_indexed() {
    let ids = RequestIds::default();
    let mut absent = HeaderMap::new();
    let generated = ids.ensure(&mut absent);
    assert!(generated.header_value().is_sensitive());
    assert!(absent[DEFAULT_HEADER].is_sensitive());

    let mut present = with(&["edge-1234"]);
    let kept = ids.ensure(&mut present);
    assert!(!kept.generated());
    assert!(kept.header_value().is_sensitive());
    assert!(present[DEFAULT_HEADER].is_sensitive());
    assert_eq!(present[DEFAULT_HEADER], "edge-1234");
}
