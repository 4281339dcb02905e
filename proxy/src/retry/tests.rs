use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.insert(*name, HeaderValue::from_static(value));
    }
    h
}

fn response(status: u16, headers: &HeaderMap) -> Outcome<'_> {
    Outcome::Response {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
    }
}

fn only(f: impl FnOnce(&mut RetryOn)) -> RetryOn {
    let mut on = RetryOn::none();
    f(&mut on);
    on
}

// ---- classification ----

#[test]
fn each_flag_retries_exactly_its_outcomes() {
    use Failure::*;
    let empty = HeaderMap::new();
    let fails = [ConnectFailed, RefusedStream, Reset, Timeout];
    // (flag, failures it covers, statuses it covers among the probes)
    let probes = [200, 404, 429, 500, 501, 502, 503, 504];
    let table: [(&str, RetryOn, &[Failure], &[u16]); 5] = [
        (
            "connect-failure",
            only(|o| o.connect_failure = true),
            &[ConnectFailed],
            &[],
        ),
        (
            "refused-stream",
            only(|o| o.refused_stream = true),
            &[RefusedStream],
            &[],
        ),
        ("reset", only(|o| o.reset = true), &[Reset, Timeout], &[]),
        (
            "5xx",
            only(|o| o.server_error = true),
            &fails,
            &[500, 501, 502, 503, 504],
        ),
        (
            "gateway-error",
            only(|o| o.gateway_error = true),
            &fails,
            &[502, 503, 504],
        ),
    ];
    for (name, on, failures, statuses) in table {
        for f in fails {
            assert_eq!(
                on.matches(&Outcome::Failed(f)),
                failures.contains(&f),
                "{name} vs {f}"
            );
        }
        for s in probes {
            assert_eq!(
                on.matches(&response(s, &empty)),
                statuses.contains(&s),
                "{name} vs {s}"
            );
        }
    }
    let none = RetryOn::none();
    assert!(fails.iter().all(|f| !none.matches(&Outcome::Failed(*f))));
    assert!(probes.iter().all(|s| !none.matches(&response(*s, &empty))));
}

#[test]
fn listed_statuses_match_responses_only() {
    let on = only(|o| o.statuses = vec![StatusCode::CONFLICT, StatusCode::TOO_MANY_REQUESTS]);
    let empty = HeaderMap::new();
    assert!(on.matches(&response(409, &empty)));
    assert!(on.matches(&response(429, &empty)));
    assert!(!on.matches(&response(503, &empty)));
    assert!(!on.matches(&Outcome::Failed(Failure::ConnectFailed)));
}

#[test]
fn grpc_codes_from_trailers_only_headers() {
    let on = only(|o| {
        o.grpc = [GrpcCode::UNAVAILABLE, GrpcCode::RESOURCE_EXHAUSTED]
            .into_iter()
            .collect()
    });
    for (value, retried) in [
        ("14", true),
        ("8", true),
        ("0", false),
        ("13", false),
        ("", false),
        ("14 ", false),
        ("+14", false),
        ("unavailable", false),
        ("99", false),
        ("1400", false),
    ] {
        let mut h = HeaderMap::new();
        h.insert(GRPC_STATUS, HeaderValue::from_str(value).unwrap());
        assert_eq!(
            on.matches(&response(200, &h)),
            retried,
            "grpc-status {value:?}"
        );
    }
    // No grpc-status at all: not a gRPC failure.
    assert!(!on.matches(&response(200, &HeaderMap::new())));
}

#[test]
fn grpc_names_parse_in_config_spellings() {
    for (name, code) in [
        ("unavailable", 14),
        ("resource-exhausted", 8),
        ("RESOURCE_EXHAUSTED", 8),
        ("cancelled", 1),
        ("deadline-exceeded", 4),
        ("Deadline_Exceeded", 4),
        ("internal", 13),
        ("ok", 0),
        ("unauthenticated", 16),
    ] {
        assert_eq!(
            GrpcCode::from_name(name).map(GrpcCode::code),
            Some(code),
            "{name}"
        );
    }
    assert_eq!(GrpcCode::from_name("resource exhausted"), None);
    assert_eq!(GrpcCode::from_name("unavailable!"), None);
    assert_eq!(GrpcCode::from_name(""), None);
    assert_eq!(GrpcCode::UNAVAILABLE.name(), "unavailable");
    assert_eq!(GrpcCode::from_u32(17), None);
}

#[test]
fn retry_on_parses_a_list_and_reports_every_bad_entry() {
    let on: RetryOn =
        "5xx, reset,connect-failure,refused-stream,gateway-error,409,429,unavailable,cancelled"
            .parse()
            .unwrap();
    assert!(on.server_error && on.reset && on.connect_failure && on.refused_stream);
    assert!(on.gateway_error);
    assert_eq!(
        on.statuses,
        [StatusCode::CONFLICT, StatusCode::TOO_MANY_REQUESTS]
    );
    assert!(on.grpc.contains(GrpcCode::UNAVAILABLE) && on.grpc.contains(GrpcCode::CANCELLED));
    assert!(!on.grpc.contains(GrpcCode::INTERNAL));

    let err = "5xx,bogus,200,also-bad".parse::<RetryOn>().unwrap_err();
    assert!(
        err.contains("`bogus`") && err.contains("`200`") && err.contains("`also-bad`"),
        "{err}"
    );
    assert_eq!("".parse::<RetryOn>().unwrap(), RetryOn::none());
}

#[test]
fn default_retries_what_did_no_work_upstream() {
    let on = RetryOn::default();
    let empty = HeaderMap::new();
    assert!(on.matches(&Outcome::Failed(Failure::ConnectFailed)));
    assert!(on.matches(&Outcome::Failed(Failure::RefusedStream)));
    assert!(!on.matches(&Outcome::Failed(Failure::Reset)));
    assert!(!on.matches(&Outcome::Failed(Failure::Timeout)));
    assert!(on.matches(&response(503, &empty)));
    assert!(!on.matches(&response(500, &empty)));
    assert!(on.matches(&response(200, &headers(&[("grpc-status", "14")]))));
    assert!(!on.matches(&response(200, &headers(&[("grpc-status", "13")]))));
}

#[test]
fn should_retry_counts_attempts_including_the_first() {
    let policy = RetryPolicy {
        max_attempts: 3,
        on: only(|o| o.connect_failure = true),
        ..RetryPolicy::default()
    };
    let failed = Outcome::Failed(Failure::ConnectFailed);
    assert!(policy.should_retry(1, &failed));
    assert!(policy.should_retry(2, &failed));
    assert!(!policy.should_retry(3, &failed));
    assert!(!policy.should_retry(1, &response(200, &HeaderMap::new())));
    let once = RetryPolicy {
        max_attempts: 1,
        ..policy
    };
    assert!(!once.should_retry(1, &failed));
}

#[test]
fn idempotent_methods_per_rfc_9110() {
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ] {
        assert!(is_idempotent(&m), "{m}");
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT] {
        assert!(!is_idempotent(&m), "{m}");
    }
    assert!(!is_idempotent(&Method::from_bytes(b"PURGE").unwrap()));
}

#[test]
fn retriable_request_needs_idempotence_or_opt_in_and_a_small_known_body() {
    let policy = RetryPolicy::default();
    let limit = policy.max_body_bytes as u64;
    assert!(policy.retriable_request(&Method::GET, None, true));
    assert!(policy.retriable_request(&Method::PUT, Some(limit), false));
    assert!(!policy.retriable_request(&Method::PUT, Some(limit + 1), false));
    assert!(
        !policy.retriable_request(&Method::PUT, None, false),
        "unknown length"
    );
    assert!(
        !policy.retriable_request(&Method::POST, None, true),
        "non-idempotent"
    );
    assert!(!policy.retriable_request(&Method::POST, Some(10), false));

    let opted_in = RetryPolicy {
        allow_non_idempotent: true,
        ..RetryPolicy::default()
    };
    assert!(opted_in.retriable_request(&Method::POST, Some(10), false));
    assert!(opted_in.retriable_request(&Method::PATCH, None, true));
    assert!(!opted_in.retriable_request(&Method::POST, Some(limit + 1), false));

    let single = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    assert!(
        !single.retriable_request(&Method::GET, None, true),
        "nothing to retry"
    );
}

#[test]
fn unprocessed_failures_are_the_safe_ones() {
    assert!(Failure::ConnectFailed.unprocessed());
    assert!(Failure::RefusedStream.unprocessed());
    assert!(!Failure::Reset.unprocessed());
    assert!(!Failure::Timeout.unprocessed());
}

#[test]
fn policy_validation_reports_every_problem() {
    assert_eq!(RetryPolicy::default().validate(), Ok(()));
    let bad = RetryPolicy {
        max_attempts: 0,
        per_try_timeout: Some(Duration::ZERO),
        backoff: Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(1),
            ..Backoff::default()
        },
        ..RetryPolicy::default()
    };
    let err = bad.validate().unwrap_err();
    assert!(err.contains("max_attempts"), "{err}");
    assert!(err.contains("per_try_timeout"), "{err}");
    assert!(err.contains("backoff base"), "{err}");
    let many = RetryPolicy {
        max_attempts: 11,
        ..RetryPolicy::default()
    };
    assert!(many.validate().is_err());
}

// ---- backoff ----

fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(25),
        max: Duration::from_millis(1000),
        max_retry_after: Duration::from_secs(5),
    }
}

#[test]
fn ceiling_doubles_then_caps() {
    let b = backoff();
    let ms: Vec<u128> = (0..8).map(|n| b.ceiling(n).as_millis()).collect();
    assert_eq!(ms, [25, 50, 100, 200, 400, 800, 1000, 1000]);
    // Shifts past the width of u32, and products past Duration's range, cap too.
    assert_eq!(b.ceiling(31), b.max);
    assert_eq!(b.ceiling(32), b.max);
    assert_eq!(b.ceiling(u32::MAX), b.max);
    let huge = Backoff {
        base: Duration::from_secs(u64::MAX / 2),
        max: Duration::MAX,
        ..b
    };
    assert_eq!(huge.ceiling(4), Duration::MAX);
}

#[test]
fn jitter_spans_zero_to_the_ceiling() {
    let b = backoff();
    for n in 0..10 {
        assert_eq!(b.jittered(n, 0), Duration::ZERO);
        assert_eq!(b.jittered(n, u64::MAX), b.ceiling(n), "retry {n}");
        let mid = b.jittered(n, u64::MAX / 2);
        let half = b.ceiling(n) / 2;
        assert!(
            mid.abs_diff(half) <= Duration::from_nanos(1),
            "{mid:?} vs {half:?}"
        );
    }
}

#[test]
fn jitter_is_uniform_and_grows_with_retries() {
    let b = backoff();
    let mut rng = fastrand::Rng::with_seed(7);
    for n in 0..6 {
        let ceiling = b.ceiling(n);
        let samples: Vec<Duration> = (0..20_000).map(|_| b.jittered(n, rng.u64(..))).collect();
        assert!(samples.iter().all(|d| *d <= ceiling));
        let mean = samples.iter().sum::<Duration>() / 20_000;
        let expected = ceiling / 2;
        let err = mean.abs_diff(expected).as_secs_f64() / expected.as_secs_f64();
        assert!(err < 0.03, "retry {n}: mean {mean:?} vs {expected:?}");
        // A quarter of the samples below a quarter of the ceiling, near enough.
        let low = samples.iter().filter(|d| **d < ceiling / 4).count();
        assert!((4500..5500).contains(&low), "retry {n}: {low}");
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn retry_after_delta_seconds() {
    let now = at(1_000_000_000);
    let parse = |v: &'static str| parse_retry_after(&HeaderValue::from_static(v), now);
    assert_eq!(parse("0"), Some(Duration::ZERO));
    assert_eq!(parse("120"), Some(Duration::from_secs(120)));
    assert_eq!(parse(" 7 "), Some(Duration::from_secs(7)));
    assert_eq!(
        parse("99999999999999999999999999"),
        Some(Duration::from_secs(u64::MAX)),
        "saturates"
    );
    for garbage in ["", "-1", "+5", "1.5", "5s", "soon", "0x10", "1 2"] {
        assert_eq!(parse(garbage), None, "{garbage:?}");
    }
}

#[test]
fn retry_after_imf_fixdate() {
    // RFC 9110's example date.
    let example = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    let parse = |v: &'static str, now| parse_retry_after(&HeaderValue::from_static(v), now);
    assert_eq!(
        parse("Sun, 06 Nov 1994 08:49:37 GMT", at(example - 30)),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse("Sun, 06 Nov 1994 08:49:37 GMT", at(example + 5)),
        Some(Duration::ZERO),
        "a past date means now"
    );
    // Leap day, end of year, the epoch, and far future dates.
    for (date, secs) in [
        ("Thu, 29 Feb 2024 12:00:00 GMT", 1_709_208_000),
        ("Fri, 31 Dec 1999 23:59:59 GMT", 946_684_799),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
        ("Tue, 01 Mar 2100 00:00:00 GMT", 4_107_542_400),
        ("Sat, 01 Jan 2000 00:00:00 GMT", 946_684_800),
    ] {
        assert_eq!(
            parse(date, at(0)),
            Some(Duration::from_secs(secs)),
            "{date}"
        );
    }
    // Sub-second wall clocks: the wait is measured exactly.
    let now = at(example - 2) + Duration::from_millis(250);
    assert_eq!(
        parse("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::from_millis(1750))
    );
}

#[test]
fn retry_after_garbage_dates_are_ignored() {
    for garbage in [
        "Sunday, 06-Nov-94 08:49:37 GMT", // RFC 850: obsolete, not supported
        "Sun Nov  6 08:49:37 1994",       // asctime: obsolete, not supported
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 2023 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1969 08:49:37 GMT",
        "Sun, 06 Nov 19a4 08:49:37 GMT",
        "Sun; 06 Nov 1994 08:49:37 GMT",
    ] {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static(garbage), at(0)),
            None,
            "{garbage:?}"
        );
    }
    let not_utf8 = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    assert_eq!(parse_retry_after(&not_utf8, at(0)), None);
}

#[test]
fn delay_prefers_retry_after_and_caps_it() {
    let b = backoff();
    assert_eq!(
        b.delay(0, u64::MAX, Some(Duration::from_secs(2))),
        Duration::from_secs(2)
    );
    assert_eq!(
        b.delay(0, 0, Some(Duration::from_secs(u64::MAX))),
        b.max_retry_after,
        "a server cannot park us"
    );
    assert_eq!(b.delay(0, 0, Some(Duration::ZERO)), Duration::ZERO);
    assert_eq!(b.delay(3, u64::MAX, None), b.ceiling(3));
}

// ---- budget ----

fn secs(start: Instant, s: f64) -> Instant {
    start + Duration::from_secs_f64(s)
}

#[test]
fn budget_allows_ratio_plus_floor_over_the_window() {
    let start = Instant::now();
    let budget = RetryBudget::new(&BudgetConfig::default(), start);
    // 100 requests a second for 10 s, and every one of them would like 5 retries.
    let mut granted = 0u64;
    for i in 0..1000u32 {
        let now = secs(start, f64::from(i) / 100.0);
        budget.deposit(now);
        for _ in 0..5 {
            if budget.try_withdraw(now) {
                granted += 1;
            }
        }
    }
    // 20 % of 1000 requests plus 10/s × 10 s.
    assert_eq!(granted, 300);
    let stats = budget.stats();
    assert_eq!(stats.requests, 1000);
    assert_eq!(stats.retries, 300);
    assert_eq!(stats.exhausted, 5000 - 300);
    assert_eq!(stats.attempts(), 1300);
}

#[test]
fn budget_caps_retries_when_everything_fails() {
    let start = Instant::now();
    let budget = RetryBudget::new(&BudgetConfig::default(), start);
    let policy = RetryPolicy {
        max_attempts: 4,
        on: only(|o| o.server_error = true),
        ..RetryPolicy::default()
    };
    let failed = Outcome::Failed(Failure::Reset);
    // 60 s at 100 requests a second; every try fails.
    let mut tries = 0u64;
    let mut per_second = [0u64; 60];
    for i in 0..6000u32 {
        let now = secs(start, f64::from(i) / 100.0);
        budget.deposit(now);
        tries += 1;
        let mut attempt = 1;
        while next_retry(
            &policy,
            &budget,
            attempt,
            &failed,
            now,
            SystemTime::UNIX_EPOCH,
            0,
        )
        .is_ok()
        {
            attempt += 1;
            tries += 1;
            per_second[(i / 100) as usize] += 1;
        }
    }
    let retries = tries - 6000;
    // Without a budget: 3 retries per request, 18,000. With it: 30 a second in steady state.
    assert!(retries <= 60 * 30 + 100, "{retries}");
    assert!(retries >= 60 * 30 - 100, "{retries}");
    // No 10 s window ever held more than the budget.
    for w in per_second.windows(10) {
        assert!(w.iter().sum::<u64>() <= 300, "{w:?}");
    }
    assert!(
        tries as f64 / 6000.0 < 1.35,
        "extra load {}",
        tries as f64 / 6000.0
    );
}

#[test]
fn budget_window_slides() {
    let start = Instant::now();
    let budget = RetryBudget::new(&BudgetConfig::default(), start);
    for i in 0..1000u32 {
        budget.deposit(secs(start, f64::from(i) / 100.0));
    }
    let t = secs(start, 9.99);
    assert_eq!(budget.remaining(t), 300);
    while budget.try_withdraw(t) {}
    assert_eq!(budget.remaining(t), 0);
    // Five seconds on, the first half of the requests and none of the retries (all made at
    // second 9) have left the window: 500 requests → 100 + 100 floor, 300 spent.
    assert_eq!(budget.remaining(secs(start, 14.5)), 0);
    // At second 19 the retries spent at second 9 have left the window; so have the requests.
    let later = secs(start, 19.0);
    assert_eq!(budget.remaining(later), 100, "only the floor");
    let mut granted = 0;
    while budget.try_withdraw(later) {
        granted += 1;
    }
    assert_eq!(granted, 100);
    // And long after, the floor is back in full.
    assert_eq!(budget.remaining(secs(start, 3600.0)), 100);
}

#[test]
fn budget_floor_alone_allows_min_per_second_times_window() {
    let start = Instant::now();
    let config = BudgetConfig {
        ratio: 0.0,
        min_per_second: 3,
        window: Duration::from_secs(5),
    };
    let budget = RetryBudget::new(&config, start);
    let granted = (0..100).filter(|_| budget.try_withdraw(start)).count();
    assert_eq!(granted, 15);
}

#[test]
fn budget_ignores_stale_times_and_counts_concurrently() {
    let start = Instant::now();
    let budget = std::sync::Arc::new(RetryBudget::new(&BudgetConfig::default(), start));
    let now = secs(start, 20.0);
    // A caller with a time before the epoch counts in second 0: harmless, and no panic.
    budget.deposit(start.checked_sub(Duration::from_secs(1)).unwrap_or(start));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let budget = &budget;
            s.spawn(move || {
                for _ in 0..10_000 {
                    budget.deposit(now);
                }
            });
        }
    });
    // 40,000 requests in the window: 8,000 + 100 retries allowed.
    assert_eq!(budget.remaining(now), 8100);
    // A straggler whose clock read is from 10 s ago must not wipe the current second.
    budget.deposit(secs(start, 10.0));
    assert_eq!(budget.remaining(now), 8100);
}

#[test]
fn budget_config_validation() {
    assert_eq!(BudgetConfig::default().validate(), Ok(()));
    for bad in [
        BudgetConfig {
            ratio: -0.1,
            ..BudgetConfig::default()
        },
        BudgetConfig {
            ratio: f64::NAN,
            ..BudgetConfig::default()
        },
        BudgetConfig {
            window: Duration::ZERO,
            ..BudgetConfig::default()
        },
        BudgetConfig {
            window: Duration::from_millis(1500),
            ..BudgetConfig::default()
        },
        BudgetConfig {
            window: Duration::from_secs(61),
            ..BudgetConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

// ---- next_retry ----

#[test]
fn next_retry_reports_why_not_and_uses_retry_after() {
    let start = Instant::now();
    let budget = RetryBudget::new(
        &BudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
            window: Duration::from_secs(1),
        },
        start,
    );
    let policy = RetryPolicy {
        max_attempts: 3,
        on: only(|o| o.gateway_error = true),
        backoff: backoff(),
        ..RetryPolicy::default()
    };
    let wall = at(1_000);
    let ok = HeaderMap::new();
    assert_eq!(
        next_retry(&policy, &budget, 1, &response(200, &ok), start, wall, 0),
        Err(GiveUp::NotRetriable)
    );
    let busy = headers(&[("retry-after", "3")]);
    assert_eq!(
        next_retry(&policy, &budget, 3, &response(503, &busy), start, wall, 0),
        Err(GiveUp::AttemptsExhausted)
    );
    // Neither refusal above spent the budget.
    assert_eq!(
        next_retry(&policy, &budget, 1, &response(503, &busy), start, wall, 0),
        Ok(Duration::from_secs(3))
    );
    assert_eq!(
        next_retry(&policy, &budget, 2, &response(503, &busy), start, wall, 0),
        Err(GiveUp::BudgetExhausted)
    );
    assert_eq!(GiveUp::BudgetExhausted.as_str(), "budget-exhausted");
    // Without Retry-After, the jittered backoff of the retry's index (attempt 2 → retry 1).
    let later = start + Duration::from_secs(5);
    assert_eq!(
        next_retry(
            &policy,
            &budget,
            2,
            &Outcome::Failed(Failure::Timeout),
            later,
            wall,
            u64::MAX
        ),
        Ok(policy.backoff.ceiling(1))
    );
}

#[tokio::test(start_paused = true)]
async fn budget_follows_tokios_paused_clock() {
    let budget = RetryBudget::new(&BudgetConfig::default(), Instant::now());
    for _ in 0..100 {
        budget.deposit(Instant::now());
    }
    assert_eq!(budget.remaining(Instant::now()), 120);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(budget.remaining(Instant::now()), 100);
}

#[test]
fn budgets_are_shared_across_workers() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RetryBudget>();
    send_sync::<RetryPolicy>();
}
