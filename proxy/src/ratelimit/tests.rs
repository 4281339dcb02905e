use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

fn limiter(config: &RateLimitConfig) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (Limiter::with_clock(config, clock.clone()).unwrap(), clock)
}

fn keyed(rate: u32, burst: u32, max_keys: usize) -> RateLimitConfig {
    RateLimitConfig {
        key: Key::Header(API_KEY),
        max_keys,
        ..RateLimitConfig::new(rate, Per::Second, burst)
    }
}

fn with_key(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(API_KEY, HeaderValue::from_str(value).unwrap());
    h
}

fn input(headers: &HeaderMap) -> KeyInput<'_> {
    KeyInput {
        client_ip: None,
        headers,
    }
}

fn allowed(d: Decision) -> bool {
    matches!(d, Decision::Allowed { .. })
}

#[test]
fn admits_rate_times_time_plus_burst() {
    let (lim, clock) = limiter(&RateLimitConfig::new(100, Per::Second, 10));
    let none = HeaderMap::new();
    // 500 requests a second for 5 s, one every 2 ms.
    let mut accepted = 0u32;
    for _ in 0..2500 {
        if allowed(lim.check(input(&none))) {
            accepted += 1;
        }
        clock.advance(Duration::from_millis(2));
    }
    let expected = 100.0 * 5.0 + 10.0;
    let err = (f64::from(accepted) - expected).abs() / expected;
    assert!(
        err <= 0.02,
        "accepted {accepted}, expected about {expected}"
    );
    assert_eq!(lim.len(), 0, "unkeyed holds no keys");
}

#[test]
fn burst_then_limited_with_exact_retry_after() {
    let (lim, clock) = limiter(&RateLimitConfig::new(10, Per::Second, 3));
    let none = HeaderMap::new();
    let check = || lim.check(input(&none));
    assert_eq!(check(), Decision::Allowed { remaining: 2 });
    assert_eq!(check(), Decision::Allowed { remaining: 1 });
    assert_eq!(check(), Decision::Allowed { remaining: 0 });
    assert_eq!(
        check(),
        Decision::Limited {
            retry_after: Duration::from_millis(100)
        }
    );
    clock.advance(Duration::from_millis(40));
    assert_eq!(
        check(),
        Decision::Limited {
            retry_after: Duration::from_millis(60)
        }
    );
    clock.advance(Duration::from_millis(60));
    assert_eq!(check(), Decision::Allowed { remaining: 0 });
    // After a quiet spell the bucket is full again, and no fuller.
    clock.advance(Duration::from_secs(60));
    assert_eq!(check(), Decision::Allowed { remaining: 2 });
}

#[test]
fn per_minute_quota_and_its_headers() {
    let (lim, clock) = limiter(&RateLimitConfig::new(6, Per::Minute, 2));
    let none = HeaderMap::new();
    assert_eq!(
        lim.policy_header(),
        HeaderValue::from_static("\"default\";q=6;w=60")
    );
    let first = lim.check(input(&none));
    assert_eq!(first, Decision::Allowed { remaining: 1 });
    // One token of two missing, 10 s each.
    assert_eq!(
        lim.ratelimit_header(&first),
        HeaderValue::from_static("\"default\";r=1;t=10")
    );
    assert_eq!(lim.retry_after_header(&first), None);
    let second = lim.check(input(&none));
    assert_eq!(
        lim.ratelimit_header(&second),
        HeaderValue::from_static("\"default\";r=0;t=20")
    );
    let limited = lim.check(input(&none));
    assert_eq!(
        limited,
        Decision::Limited {
            retry_after: Duration::from_secs(10)
        }
    );
    assert_eq!(
        lim.retry_after_header(&limited),
        Some(HeaderValue::from_static("10"))
    );
    assert_eq!(
        lim.ratelimit_header(&limited),
        HeaderValue::from_static("\"default\";r=0;t=10"),
        "t agrees with Retry-After when limited"
    );
    clock.advance(Duration::from_millis(9_500));
    let still = lim.check(input(&none));
    assert_eq!(
        still,
        Decision::Limited {
            retry_after: Duration::from_millis(500)
        }
    );
    assert_eq!(
        lim.retry_after_header(&still),
        Some(HeaderValue::from_static("1")),
        "rounded up"
    );
}

#[test]
fn insert_headers_sets_all_three_when_limited() {
    let (lim, _clock) = limiter(&RateLimitConfig::new(100, Per::Second, 1));
    let none = HeaderMap::new();
    let ok = lim.check(input(&none));
    let mut h = HeaderMap::new();
    lim.insert_headers(&ok, &mut h);
    assert_eq!(h[RATELIMIT_POLICY], "\"default\";q=100;w=1");
    assert_eq!(h[RATELIMIT], "\"default\";r=0;t=1");
    assert!(!h.contains_key(http::header::RETRY_AFTER));

    let limited = lim.check(input(&none));
    assert!(!allowed(limited));
    let mut h = HeaderMap::new();
    lim.insert_headers(&limited, &mut h);
    assert_eq!(h[http::header::RETRY_AFTER], "1");
    assert_eq!(h[RATELIMIT], "\"default\";r=0;t=1");
}

#[test]
fn header_values_beyond_the_precomputed_tables() {
    let (lim, _clock) = limiter(&RateLimitConfig::new(1000, Per::Second, 1000));
    // 1000 tokens: the table stops at 256, larger counts are formatted on demand.
    assert_eq!(
        lim.ratelimit_header(&Decision::Allowed { remaining: 999 }),
        HeaderValue::from_static("\"default\";r=999;t=1")
    );
    assert_eq!(
        lim.ratelimit_header(&Decision::Allowed { remaining: 0 }),
        HeaderValue::from_static("\"default\";r=0;t=1")
    );
    let long = Decision::Limited {
        retry_after: Duration::from_secs(7200),
    };
    assert_eq!(
        lim.retry_after_header(&long),
        Some(HeaderValue::from_static("7200"))
    );
    assert_eq!(
        lim.ratelimit_header(&long),
        HeaderValue::from_static("\"default\";r=0;t=7200")
    );
}

#[test]
fn two_keys_are_limited_independently() {
    let (lim, _clock) = limiter(&keyed(1, 2, 100));
    let (a, b) = (with_key("tenant-a"), with_key("tenant-b"));
    assert!(allowed(lim.check(input(&a))));
    assert!(allowed(lim.check(input(&a))));
    assert!(!allowed(lim.check(input(&a))));
    assert_eq!(
        lim.check(input(&b)),
        Decision::Allowed { remaining: 1 },
        "b has its own full bucket"
    );
    assert!(allowed(lim.check(input(&b))));
    assert!(!allowed(lim.check(input(&b))));
    assert_eq!(lim.len(), 2);
}

#[test]
fn client_ip_keys_and_mapped_addresses() {
    let config = RateLimitConfig {
        key: Key::ClientIp,
        ..RateLimitConfig::new(1, Per::Second, 1)
    };
    let (lim, _clock) = limiter(&config);
    let none = HeaderMap::new();
    let from = |ip: IpAddr| {
        lim.check(KeyInput {
            client_ip: Some(ip),
            headers: &none,
        })
    };
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
    let other = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert!(allowed(from(v4)));
    assert!(!allowed(from(mapped)), "the same client over IPv6");
    assert!(allowed(from(other)));
    assert_eq!(lim.len(), 2);
}

#[test]
fn requests_without_a_key_share_one_bucket() {
    let (lim, _clock) = limiter(&keyed(1, 2, 100));
    let none = HeaderMap::new();
    let empty = with_key("");
    assert!(allowed(lim.check(input(&none))));
    assert!(allowed(lim.check(input(&empty))), "empty counts as missing");
    assert!(!allowed(lim.check(input(&none))));
    assert!(!allowed(lim.check(input(&empty))));
    // Identified clients are not affected.
    assert!(allowed(lim.check(input(&with_key("k")))));
    // No address, with a client-ip key: the same rule.
    let by_ip = RateLimitConfig {
        key: Key::ClientIp,
        ..RateLimitConfig::new(1, Per::Second, 1)
    };
    let (lim, _clock) = limiter(&by_ip);
    assert!(allowed(lim.check(input(&none))));
    assert!(!allowed(lim.check(input(&none))));
}

#[test]
fn a_flood_of_distinct_keys_keeps_memory_bounded() {
    let max_keys = 10_000;
    let (lim, clock) = limiter(&keyed(100, 10, max_keys));
    let mut most = 0;
    let mut accepted = 0u64;
    // 1,000,000 distinct keys at 100,000 a second: 10 s of a key flood.
    let mut headers = HeaderMap::new();
    for i in 0..1_000_000u32 {
        headers.insert(API_KEY, HeaderValue::from(i));
        if allowed(lim.check(input(&headers))) {
            accepted += 1;
        }
        clock.advance(Duration::from_micros(10));
        if i % 1000 == 0 {
            most = most.max(lim.len());
        }
    }
    most = most.max(lim.len());
    // The bound, plus the shared overflow and no-key buckets.
    assert!(most <= max_keys + 2, "held {most} keys");
    assert!(most >= max_keys, "the map did fill: {most}");
    assert!(lim.overflowed() > 0);
    // Newcomers beyond the bound shared one bucket: they got few admissions. Each sweep (at
    // most one a second) made room for at most max_keys new keys with buckets of their own,
    // and the overflow bucket admitted its 100 a second.
    assert!(
        accepted <= 11 * (max_keys as u64 + 110),
        "accepted {accepted}"
    );
    // Once the flood is over, housekeeping returns the memory.
    clock.advance(Duration::from_secs(1));
    lim.housekeeping();
    assert_eq!(lim.len(), 0);
}

#[test]
fn eviction_makes_room_for_new_keys() {
    let (lim, clock) = limiter(&keyed(10, 1, 100));
    for i in 0..100 {
        assert!(allowed(lim.check(input(&with_key(&format!("k{i}"))))));
    }
    assert_eq!(lim.len(), 100);
    // Full, and nothing idle yet (sweeps are at most once a second, and the first ran now).
    assert!(
        allowed(lim.check(input(&with_key("late-1")))),
        "overflow bucket"
    );
    assert!(
        !allowed(lim.check(input(&with_key("late-2")))),
        "a second newcomer shares the overflow bucket"
    );
    assert_eq!(lim.overflowed(), 2);
    // An existing key still has its own bucket.
    clock.advance(Duration::from_millis(100));
    assert!(allowed(lim.check(input(&with_key("k0")))));
    // Two seconds on, every bucket is full again: the next newcomer's check evicts them all.
    clock.advance(Duration::from_secs(2));
    assert!(allowed(lim.check(input(&with_key("late-3")))));
    assert_eq!(lim.overflowed(), 2, "late-3 got a bucket of its own");
    assert!(lim.len() <= 3, "{}", lim.len());
    assert!(allowed(lim.check(input(&with_key("late-4")))));
    assert_eq!(lim.overflowed(), 2);
}

#[test]
fn busy_keys_survive_eviction() {
    let (lim, clock) = limiter(&keyed(1, 5, 3));
    let busy = with_key("busy");
    for _ in 0..5 {
        assert!(allowed(lim.check(input(&busy))));
    }
    assert!(!allowed(lim.check(input(&busy))));
    lim.check(input(&with_key("idle-1")));
    lim.check(input(&with_key("idle-2")));
    clock.advance(Duration::from_secs(2));
    lim.housekeeping();
    // The idle keys' buckets refilled and went; the busy one is still owed tokens and stays,
    // so evicting it does not hand it a fresh burst.
    assert_eq!(lim.len(), 1);
    // Two tokens earned in two seconds, one spent: had it been evicted it would have 4 left.
    assert_eq!(lim.check(input(&busy)), Decision::Allowed { remaining: 1 });
}

#[test]
fn concurrent_checks_admit_exactly_the_burst() {
    let (lim, _clock) = limiter(&RateLimitConfig::new(1, Per::Minute, 50));
    let (keyed_lim, _clock2) = limiter(&keyed(1, 50, 10));
    let none = HeaderMap::new();
    let shared = with_key("shared");
    let admitted = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    if allowed(lim.check(input(&none))) {
                        admitted.fetch_add(1, Relaxed);
                    }
                    if allowed(keyed_lim.check(input(&shared))) {
                        admitted.fetch_add(1000, Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Relaxed), 50 + 50 * 1000);
}

#[test]
fn the_real_clock_works_too() {
    let lim = Limiter::new(&RateLimitConfig::new(1, Per::Minute, 5)).unwrap();
    let none = HeaderMap::new();
    let admitted = (0..20).filter(|_| allowed(lim.check(input(&none)))).count();
    assert_eq!(admitted, 5);
    match lim.check(input(&none)) {
        Decision::Limited { retry_after } => {
            assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
            assert!(retry_after <= Duration::from_secs(60), "{retry_after:?}");
        }
        other => panic!("expected limited, got {other:?}"),
    }
}

#[test]
fn validation_reports_every_problem() {
    assert_eq!(validate(&RateLimitConfig::new(1, Per::Second, 1)), Ok(()));
    let err = validate(&RateLimitConfig::new(0, Per::Second, 0)).unwrap_err();
    assert!(err.contains("rate") && err.contains("burst"), "{err}");
    let no_room = RateLimitConfig {
        max_keys: 0,
        ..keyed(1, 1, 0)
    };
    assert!(validate(&no_room).unwrap_err().contains("max_keys"));
    assert!(Limiter::new(&RateLimitConfig::new(0, Per::Minute, 1)).is_err());
    // max_keys does not matter when unkeyed.
    let unkeyed = RateLimitConfig {
        max_keys: 0,
        ..RateLimitConfig::new(1, Per::Second, 1)
    };
    assert_eq!(validate(&unkeyed), Ok(()));
}

#[test]
fn retry_after_rounds_up_to_whole_seconds_at_least_one() {
    for (wait, secs) in [
        (Duration::ZERO, 1),
        (Duration::from_nanos(1), 1),
        (Duration::from_secs(1), 1),
        (Duration::from_millis(1001), 2),
        (Duration::from_secs(60), 60),
        (Duration::MAX, u64::MAX),
    ] {
        assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
    }
    assert_eq!(
        retry_after_value(Duration::from_millis(2500)),
        HeaderValue::from_static("3")
    );
}

#[test]
fn structured_field_values() {
    assert_eq!(
        policy_value("default", 100, 1).unwrap(),
        HeaderValue::from_static("\"default\";q=100;w=1")
    );
    assert_eq!(
        ratelimit_value("default", 0, 1).unwrap(),
        HeaderValue::from_static("\"default\";r=0;t=1")
    );
    assert_eq!(
        policy_value(r#"say "hi" \o/"#, 5, 60).unwrap(),
        HeaderValue::from_static(r#""say \"hi\" \\o/";q=5;w=60"#)
    );
    assert!(policy_value("café", 1, 1).is_err());
    assert!(ratelimit_value("tab\there", 1, 1).is_err());
    // Integers beyond the structured-field range are clamped, not emitted malformed.
    assert_eq!(
        ratelimit_value("p", 1, u64::MAX).unwrap(),
        HeaderValue::from_static("\"p\";r=1;t=999999999999999")
    );
}

#[test]
fn grpc_requests_are_recognised() {
    let ct = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(v));
        h
    };
    for yes in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc+json",
        "Application/GRPC",
        "application/grpc;charset=utf-8",
    ] {
        assert!(is_grpc(&ct(yes)), "{yes}");
    }
    for no in [
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/json",
        "application/grp",
        "text/plain",
    ] {
        assert!(!is_grpc(&ct(no)), "{no}");
    }
    assert!(!is_grpc(&HeaderMap::new()));

    let mut h = HeaderMap::new();
    insert_grpc_limited(&mut h);
    assert_eq!(h["grpc-status"], "8");
    assert_eq!(h[http::header::CONTENT_TYPE], "application/grpc");
    assert!(is_grpc(&h));
}

#[test]
fn limiters_are_shared_across_workers() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Limiter>();
    send_sync::<Limiter<FakeRelativeClock>>();
    let (lim, _clock) = limiter(&keyed(5, 1, 10));
    let shown = format!("{lim:?}");
    assert!(
        shown.contains("q=5;w=1") && shown.contains("keyed: true"),
        "{shown}"
    );
}
