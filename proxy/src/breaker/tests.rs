use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::*;

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i as u16)))
        .collect()
}

const SEC: Duration = Duration::from_secs(1);

mod limits {
    use super::*;

    fn small(n: u32) -> Limits {
        Limits {
            max_connections: n,
            max_pending: n,
            max_requests: n,
            max_retries: n,
        }
    }

    #[test]
    fn defaults_are_envoys() {
        assert_eq!(
            Limits::default(),
            Limits {
                max_connections: 1024,
                max_pending: 1024,
                max_requests: 1024,
                max_retries: 3,
            }
        );
    }

    #[test]
    fn refuses_at_the_limit_and_drop_gives_back() {
        let c = Arc::new(LimitCounters::new());
        let l = small(2);
        let a = c.try_acquire_request(&l);
        let b = c.try_acquire_request(&l);
        assert!(a.is_some() && b.is_some());
        assert_eq!(c.current_requests(), 2);
        assert!(c.try_acquire_request(&l).is_none());
        assert!(c.try_acquire_request(&l).is_none());
        assert_eq!(c.overflows(Resource::Requests), 2);
        drop(a);
        assert_eq!(c.current_requests(), 1);
        let again = c.try_acquire_request(&l);
        assert!(again.is_some());
        assert_eq!(
            again.as_ref().map(Permit::resource),
            Some(Resource::Requests)
        );
        drop((b, again));
        assert_eq!(c.current_requests(), 0);
        assert_eq!(c.overflows(Resource::Requests), 2);
    }

    #[test]
    fn resources_are_counted_apart() {
        let c = Arc::new(LimitCounters::new());
        let l = Limits::default();
        let retries: Vec<_> = (0..3).filter_map(|_| c.try_acquire_retry(&l)).collect();
        assert_eq!(retries.len(), 3);
        assert!(c.try_acquire_retry(&l).is_none(), "Envoy's 3 retries");
        let conn = c.try_acquire_connection(&l);
        let pending = c.try_acquire_pending(&l);
        let req = c.try_acquire_request(&l);
        assert!(conn.is_some() && pending.is_some() && req.is_some());
        assert_eq!(
            (
                c.current_connections(),
                c.current_pending(),
                c.current_requests(),
                c.current_retries()
            ),
            (1, 1, 1, 3)
        );
        assert_eq!(c.overflows(Resource::Retries), 1);
        assert_eq!(c.overflows(Resource::Requests), 0);
        drop(pending);
        assert_eq!(c.current_pending(), 0);
        assert_eq!(c.current_connections(), 1);
    }

    #[test]
    fn zero_allows_nothing() {
        let c = Arc::new(LimitCounters::new());
        let l = Limits {
            max_retries: 0,
            ..Limits::default()
        };
        assert!(c.try_acquire_retry(&l).is_none());
        assert_eq!(c.current_retries(), 0);
    }

    #[test]
    fn lowered_limit_applies_to_the_next_acquire() {
        let c = Arc::new(LimitCounters::new());
        let held: Vec<_> = (0..5)
            .filter_map(|_| c.try_acquire_request(&small(10)))
            .collect();
        assert_eq!(held.len(), 5);
        // A reload lowered the limit below what is in use: nothing new until under it.
        assert!(c.try_acquire_request(&small(3)).is_none());
        drop(held);
        assert!(c.try_acquire_request(&small(3)).is_some());
    }

    #[test]
    fn never_over_the_limit_under_a_race() {
        const LIMIT: u32 = 3;
        const THREADS: usize = 8;
        const ATTEMPTS: usize = 20_000;
        let c = Arc::new(LimitCounters::new());
        let l = small(LIMIT);
        let inside = AtomicU32::new(0);
        let max_inside = AtomicU32::new(0);
        let max_counter = AtomicU32::new(0);
        let granted = AtomicUsize::new(0);
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    barrier.wait();
                    for i in 0..ATTEMPTS {
                        let Some(permit) = c.try_acquire_request(&l) else {
                            continue;
                        };
                        granted.fetch_add(1, Ordering::Relaxed);
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max_inside.fetch_max(now, Ordering::SeqCst);
                        max_counter.fetch_max(c.current_requests(), Ordering::SeqCst);
                        if i % 8 == 0 {
                            std::thread::yield_now();
                        }
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                });
            }
        });
        let max_inside = max_inside.load(Ordering::SeqCst);
        assert!(max_inside <= LIMIT, "{max_inside} holders at once");
        assert!(max_counter.load(Ordering::SeqCst) <= LIMIT);
        assert!(max_inside >= 1);
        assert_eq!(c.current_requests(), 0, "every permit given back");
        let granted = granted.load(Ordering::Relaxed) as u64;
        assert_eq!(
            granted + c.overflows(Resource::Requests),
            (THREADS * ATTEMPTS) as u64
        );
    }

    #[test]
    fn permits_outlive_the_borrow_and_cross_threads() {
        let c = Arc::new(LimitCounters::new());
        let permit = c.try_acquire_connection(&Limits::default());
        let h = std::thread::spawn(move || drop(permit));
        assert!(h.join().is_ok());
        assert_eq!(c.current_connections(), 0);
    }

    #[test]
    fn view_shows_usage_and_limits() {
        let c = Arc::new(LimitCounters::new());
        let l = small(1);
        let _p = c.try_acquire_pending(&l);
        let _ = c.try_acquire_pending(&l);
        let v = c.view(&l);
        assert_eq!(
            v.pending,
            Usage {
                current: 1,
                max: 1,
                overflows: 1
            }
        );
        assert_eq!(v.requests.current, 0);
        let json = serde_json::to_value(v).unwrap();
        assert_eq!(json["pending"]["overflows"], 1);
        assert_eq!(Resource::Pending.as_str(), "pending");
        assert_eq!(Resource::ALL.len(), 4);
    }
}

mod outlier {
    use super::*;

    fn detector(n: usize, config: OutlierConfig) -> (OutlierDetector, Instant) {
        let t0 = Instant::now();
        (OutlierDetector::new(&addrs(n), config, t0), t0)
    }

    fn fail(d: &OutlierDetector, i: usize, times: u32, now: Instant) -> Option<Transition> {
        (0..times)
            .map(|_| d.record(i, Outcome::Failure, now))
            .fold(None, |last, t| t.or(last))
    }

    fn ejected(for_secs: u64, times: u32) -> Option<Transition> {
        Some(Transition::Ejected {
            for_: Duration::from_secs(for_secs),
            times,
        })
    }

    /// Ejected at `now` for `times`: waits it out, probes, and fails the probe.
    fn fail_probe(d: &OutlierDetector, i: usize, at: Instant) -> Option<Transition> {
        assert_eq!(d.try_probe(i, at), Some(Transition::HalfOpen));
        d.record(i, Outcome::Failure, at)
    }

    #[test]
    fn defaults_are_envoys() {
        let c = OutlierConfig::default();
        assert_eq!(c.consecutive_failures, 5);
        assert_eq!(c.base_ejection_time, 30 * SEC);
        assert_eq!(c.max_ejection_time, 300 * SEC);
        assert_eq!(c.max_ejection_percent, 10);
    }

    #[test]
    fn threshold_minus_one_failures_do_not_eject_threshold_do() {
        let (d, t0) = detector(2, OutlierConfig::default());
        assert_eq!(fail(&d, 0, 4, t0), None);
        assert_eq!(d.is_available(0, t0), Availability::Healthy);
        assert_eq!(d.record(0, Outcome::Failure, t0), ejected(30, 1));
        assert_eq!(d.is_available(0, t0), Availability::Ejected);
        assert_eq!(d.is_available(0, t0 + 29 * SEC), Availability::Ejected);
        assert_eq!(d.is_available(0, t0 + 30 * SEC), Availability::Probe);
        assert_eq!(
            d.is_available(1, t0),
            Availability::Healthy,
            "others untouched"
        );
        assert_eq!(d.ejected(), 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let (d, t0) = detector(2, OutlierConfig::default());
        assert_eq!(fail(&d, 0, 4, t0), None);
        assert_eq!(d.record(0, Outcome::Success, t0), None);
        assert_eq!(fail(&d, 0, 4, t0), None);
        assert_eq!(d.is_available(0, t0), Availability::Healthy);
        assert_eq!(d.view(t0).endpoints[0].consecutive_failures, 4);
        assert_eq!(d.record(0, Outcome::Failure, t0), ejected(30, 1));
    }

    #[test]
    fn outcomes_while_ejected_are_ignored() {
        let (d, t0) = detector(2, OutlierConfig::default());
        assert_eq!(fail(&d, 0, 5, t0), ejected(30, 1));
        // Late answers to requests sent before the ejection.
        assert_eq!(fail(&d, 0, 20, t0 + SEC), None);
        assert_eq!(d.record(0, Outcome::Success, t0 + SEC), None);
        assert_eq!(d.is_available(0, t0 + SEC), Availability::Ejected);
        // Not even once half-open: only the probe's outcome counts.
        assert_eq!(d.record(0, Outcome::Success, t0 + 31 * SEC), None);
        assert_eq!(d.is_available(0, t0 + 31 * SEC), Availability::Probe);
        let v = d.view(t0 + SEC);
        assert_eq!(v.endpoints[0].consecutive_failures, 0);
        assert_eq!(v.endpoints[0].ejection_remaining_ms, 29_000);
    }

    #[test]
    fn ejection_time_grows_with_times_and_is_capped() {
        let (d, t0) = detector(1, OutlierConfig::default());
        assert_eq!(fail(&d, 0, 5, t0), ejected(30, 1));
        let mut at = t0;
        let mut got = Vec::new();
        for _ in 2..=13 {
            // Wait out the current ejection, then fail the probe.
            at += Duration::from_millis(d.view(at).endpoints[0].ejection_remaining_ms);
            match fail_probe(&d, 0, at) {
                Some(Transition::Ejected { for_, times }) => got.push((for_.as_secs(), times)),
                other => panic!("probe failure gave {other:?}"),
            }
        }
        let expected: Vec<(u64, u32)> = (2..=13u32)
            .map(|times| ((30 * u64::from(times)).min(300), times))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(got.last(), Some(&(300, 13)), "capped at max_ejection_time");
        assert_eq!(d.view(at).endpoints[0].times_ejected, 13);
    }

    #[test]
    fn ejection_time_config_edges() {
        let c = OutlierConfig {
            base_ejection_time: 30 * SEC,
            max_ejection_time: 10 * SEC,
            ..OutlierConfig::default()
        };
        assert_eq!(c.ejection_time(1), 30 * SEC, "never shorter than base");
        assert_eq!(c.ejection_time(5), 30 * SEC);
        assert_eq!(OutlierConfig::default().ejection_time(0), 30 * SEC);
        assert_eq!(OutlierConfig::default().ejection_time(u32::MAX), 300 * SEC);
    }

    #[test]
    fn max_ejected_rounds_down_but_allows_one() {
        let pct = |p: u8| OutlierConfig {
            max_ejection_percent: p,
            ..OutlierConfig::default()
        };
        assert_eq!(pct(50).max_ejected(10), 5);
        assert_eq!(pct(25).max_ejected(10), 2, "2.5 rounds down");
        assert_eq!(pct(10).max_ejected(10), 1);
        assert_eq!(pct(10).max_ejected(3), 1, "at least one");
        assert_eq!(pct(10).max_ejected(1), 1, "even the only endpoint");
        assert_eq!(pct(10).max_ejected(25), 2);
        assert_eq!(pct(0).max_ejected(10), 0, "0% disables");
        assert_eq!(pct(100).max_ejected(7), 7);
        assert_eq!(pct(200).max_ejected(7), 7, "above 100 counts as 100");
        assert_eq!(pct(50).max_ejected(0), 0);
    }

    #[test]
    fn max_ejection_percent_is_respected() {
        let config = OutlierConfig {
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        };
        let (d, t0) = detector(10, config);
        let results: Vec<_> = (0..10).map(|i| fail(&d, i, 5, t0)).collect();
        let ejections = results
            .iter()
            .filter(|t| matches!(t, Some(Transition::Ejected { .. })))
            .count();
        assert_eq!(ejections, 5);
        assert_eq!(
            results[5..],
            [Some(Transition::EjectionRefused); 5],
            "the rest are refused"
        );
        assert_eq!(d.ejected(), 5);
        // Refused endpoints keep trying on each failure.
        assert_eq!(
            d.record(9, Outcome::Failure, t0),
            Some(Transition::EjectionRefused)
        );
        // One comes back: room for one more.
        let t1 = t0 + 30 * SEC;
        assert_eq!(d.try_probe(0, t1), Some(Transition::HalfOpen));
        assert_eq!(
            d.record(0, Outcome::Success, t1),
            Some(Transition::Restored)
        );
        assert_eq!(d.record(9, Outcome::Failure, t1), ejected(30, 1));
        assert_eq!(
            d.record(8, Outcome::Failure, t1),
            Some(Transition::EjectionRefused)
        );
        assert_eq!(d.ejected(), 5);
        let v = d.view(t1);
        assert_eq!((v.ejected, v.max_ejected), (5, 5));
    }

    #[test]
    fn zero_percent_or_zero_threshold_never_eject() {
        let (d, t0) = detector(
            4,
            OutlierConfig {
                max_ejection_percent: 0,
                ..OutlierConfig::default()
            },
        );
        assert_eq!(fail(&d, 0, 50, t0), Some(Transition::EjectionRefused));
        assert_eq!(d.ejected(), 0);
        let (d, t0) = detector(
            4,
            OutlierConfig {
                consecutive_failures: 0,
                ..OutlierConfig::default()
            },
        );
        assert_eq!(fail(&d, 0, 50, t0), None);
        assert_eq!(d.is_available(0, t0), Availability::Healthy);
    }

    #[test]
    fn concurrent_ejections_respect_the_cap() {
        for _ in 0..20 {
            let config = OutlierConfig {
                max_ejection_percent: 50,
                consecutive_failures: 3,
                ..OutlierConfig::default()
            };
            let (d, t0) = detector(10, config);
            let barrier = Barrier::new(10);
            let ejections = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for i in 0..10 {
                    let (d, barrier, ejections) = (&d, &barrier, &ejections);
                    s.spawn(move || {
                        barrier.wait();
                        for _ in 0..50 {
                            if let Some(Transition::Ejected { .. }) =
                                d.record(i, Outcome::Failure, t0)
                            {
                                ejections.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(d.ejected(), 5);
            assert_eq!(ejections.load(Ordering::Relaxed), 5);
        }
    }

    #[test]
    fn concurrent_failures_eject_once() {
        let (d, t0) = detector(1, OutlierConfig::default());
        let ejections = AtomicUsize::new(0);
        let barrier = Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..100 {
                        if let Some(Transition::Ejected { times, .. }) =
                            d.record(0, Outcome::Failure, t0)
                        {
                            assert_eq!(times, 1);
                            ejections.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ejections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn half_open_allows_exactly_one_probe() {
        let (d, t0) = detector(3, OutlierConfig::default());
        assert_eq!(fail(&d, 1, 5, t0), ejected(30, 1));
        assert_eq!(d.try_probe(1, t0 + 29 * SEC), None, "not yet");
        assert_eq!(d.try_probe(0, t0), None, "healthy: nothing to probe");
        let t1 = t0 + 30 * SEC;
        assert_eq!(d.try_probe(1, t1), Some(Transition::HalfOpen));
        assert_eq!(d.try_probe(1, t1), None);
        assert_eq!(
            d.is_available(1, t1),
            Availability::Ejected,
            "probe in flight"
        );
        assert_eq!(d.view(t1).endpoints[1].state, EndpointStatus::Probing);
    }

    #[test]
    fn concurrent_probes_one_wins() {
        for _ in 0..20 {
            let (d, t0) = detector(3, OutlierConfig::default());
            assert_eq!(fail(&d, 2, 5, t0), ejected(30, 1));
            let half_open = t0 + 30 * SEC;
            let wins = AtomicUsize::new(0);
            let barrier = Barrier::new(16);
            std::thread::scope(|s| {
                for _ in 0..16 {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..100 {
                            if d.try_probe(2, half_open).is_some() {
                                wins.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(wins.load(Ordering::Relaxed), 1);
            assert_eq!(d.is_available(2, half_open), Availability::Ejected);
        }
    }

    #[test]
    fn probe_success_restores() {
        let (d, t0) = detector(2, OutlierConfig::default());
        fail(&d, 0, 5, t0);
        let t1 = t0 + 30 * SEC;
        assert_eq!(d.view(t1).endpoints[0].state, EndpointStatus::HalfOpen);
        assert_eq!(d.try_probe(0, t1), Some(Transition::HalfOpen));
        assert_eq!(
            d.record(0, Outcome::Success, t1),
            Some(Transition::Restored)
        );
        assert_eq!(d.is_available(0, t1), Availability::Healthy);
        assert_eq!(d.ejected(), 0);
        let v = d.view(t1);
        assert_eq!(v.endpoints[0].state, EndpointStatus::Healthy);
        assert_eq!(v.endpoints[0].consecutive_failures, 0);
        assert_eq!(v.endpoints[0].times_ejected, 1, "not forgiven yet");
        // Counting starts again from zero.
        assert_eq!(fail(&d, 0, 4, t1), None);
        assert_eq!(d.is_available(0, t1), Availability::Healthy);
    }

    #[test]
    fn probe_failure_re_ejects_longer() {
        let (d, t0) = detector(2, OutlierConfig::default());
        assert_eq!(fail(&d, 0, 5, t0), ejected(30, 1));
        let t1 = t0 + 30 * SEC;
        assert_eq!(fail_probe(&d, 0, t1), ejected(60, 2));
        assert_eq!(d.is_available(0, t1 + 59 * SEC), Availability::Ejected);
        assert_eq!(d.is_available(0, t1 + 60 * SEC), Availability::Probe);
        assert_eq!(fail_probe(&d, 0, t1 + 60 * SEC), ejected(90, 3));
    }

    #[test]
    fn flapping_after_restore_ejects_longer_and_recovery_is_forgiven() {
        let (d, t0) = detector(2, OutlierConfig::default());
        assert_eq!(fail(&d, 0, 5, t0), ejected(30, 1));
        let t1 = t0 + 30 * SEC;
        d.try_probe(0, t1);
        assert_eq!(
            d.record(0, Outcome::Success, t1),
            Some(Transition::Restored)
        );
        // Fails again soon after: longer.
        let t2 = t1 + 10 * SEC;
        assert_eq!(fail(&d, 0, 5, t2), ejected(60, 2));
        let t3 = t2 + 60 * SEC;
        d.try_probe(0, t3);
        assert_eq!(
            d.record(0, Outcome::Success, t3),
            Some(Transition::Restored)
        );
        // One base period healthy forgives one of the two ejections: the next is the 2nd.
        assert_eq!(d.view(t3 + 29 * SEC).endpoints[0].times_ejected, 2);
        assert_eq!(d.view(t3 + 30 * SEC).endpoints[0].times_ejected, 1);
        assert_eq!(fail(&d, 0, 5, t3 + 35 * SEC), ejected(60, 2));
        let t4 = t3 + 35 * SEC + 60 * SEC;
        d.try_probe(0, t4);
        assert_eq!(
            d.record(0, Outcome::Success, t4),
            Some(Transition::Restored)
        );
        // Healthy for long: back to the base time.
        assert_eq!(d.view(t4 + 3600 * SEC).endpoints[0].times_ejected, 0);
        assert_eq!(fail(&d, 0, 5, t4 + 3600 * SEC), ejected(30, 1));
    }

    #[test]
    fn a_lost_probe_is_retried_after_the_window_or_on_release() {
        let (d, t0) = detector(2, OutlierConfig::default());
        fail(&d, 0, 5, t0);
        let t1 = t0 + 30 * SEC;
        assert!(d.try_probe(0, t1).is_some());
        // Nobody reports: after base_ejection_time another probe may go.
        assert_eq!(d.try_probe(0, t1 + 29 * SEC), None);
        assert_eq!(d.is_available(0, t1 + 30 * SEC), Availability::Probe);
        assert!(d.try_probe(0, t1 + 30 * SEC).is_some());
        // Released (cancelled): half-open at once.
        d.release_probe(0);
        assert_eq!(d.is_available(0, t1 + 30 * SEC), Availability::Probe);
        assert!(d.try_probe(0, t1 + 30 * SEC).is_some());
        assert_eq!(
            d.record(0, Outcome::Success, t1 + 31 * SEC),
            Some(Transition::Restored)
        );
        // Releasing a healthy endpoint changes nothing.
        d.release_probe(0);
        d.release_probe(99);
        assert_eq!(d.is_available(0, t1 + 31 * SEC), Availability::Healthy);
    }

    #[test]
    fn all_ejected() {
        let config = OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        let (d, t0) = detector(2, config);
        assert!(!d.all_ejected(t0));
        fail(&d, 0, 5, t0);
        assert!(!d.all_ejected(t0));
        fail(&d, 1, 5, t0 + SEC);
        assert!(d.all_ejected(t0 + SEC));
        // Endpoint 0 turns half-open: a probe may go, so not all are out.
        assert!(!d.all_ejected(t0 + 30 * SEC));
        assert!(d.try_probe(0, t0 + 30 * SEC).is_some());
        assert!(d.all_ejected(t0 + 30 * SEC), "its probe is in flight");
        assert!(!d.all_ejected(t0 + 31 * SEC), "endpoint 1 half-open");
        let (empty, t0) = detector(0, config);
        assert!(!empty.all_ejected(t0));
    }

    #[test]
    fn one_endpoint_backend_can_eject_its_only_endpoint() {
        let (d, t0) = detector(1, OutlierConfig::default());
        assert_eq!(fail(&d, 0, 5, t0), ejected(30, 1));
        assert!(d.all_ejected(t0));
    }

    #[test]
    fn unknown_index_is_healthy_and_ignored() {
        let (d, t0) = detector(2, OutlierConfig::default());
        assert_eq!(d.is_available(7, t0), Availability::Healthy);
        assert_eq!(fail(&d, 7, 10, t0), None);
        assert_eq!(d.try_probe(7, t0), None);
    }

    #[test]
    fn carry_over_keeps_surviving_endpoints() {
        let a = addrs(4);
        let t0 = Instant::now();
        let config = OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        let d = OutlierDetector::new(&a[..3], config, t0);
        assert_eq!(fail(&d, 1, 5, t0), ejected(30, 1));
        assert_eq!(fail(&d, 2, 3, t0), None);
        // a[0] removed, a[3] added, order changed.
        let new = d.carry_over(&[a[2], a[3], a[1]], config);
        let t1 = t0 + 10 * SEC;
        assert_eq!(new.len(), 3);
        assert_eq!(
            new.is_available(2, t1),
            Availability::Ejected,
            "a[1] still out"
        );
        assert_eq!(new.is_available(1, t1), Availability::Healthy, "a[3] new");
        let v = new.view(t1);
        assert_eq!(v.endpoints[0].addr, a[2]);
        assert_eq!(v.endpoints[0].consecutive_failures, 3);
        assert_eq!(v.endpoints[2].ejection_remaining_ms, 20_000);
        assert_eq!(v.endpoints[2].times_ejected, 1);
        // Shared, not copied: outcomes reported through the old detector (requests still
        // running on the old snapshot) count in the new one.
        assert_eq!(fail(&d, 2, 2, t1), ejected(30, 1));
        assert_eq!(new.is_available(0, t1), Availability::Ejected);
        // The probe can be won once, through either.
        let t2 = t0 + 30 * SEC;
        assert!(new.try_probe(2, t2).is_some());
        assert!(d.try_probe(1, t2).is_none());
        assert_eq!(
            d.record(1, Outcome::Success, t2),
            Some(Transition::Restored)
        );
        assert_eq!(new.is_available(2, t2), Availability::Healthy);
    }

    #[test]
    fn carry_over_shares_the_cap_lock_and_applies_new_config() {
        let a = addrs(4);
        let t0 = Instant::now();
        let d = OutlierDetector::new(&a, OutlierConfig::default(), t0);
        let stricter = OutlierConfig {
            consecutive_failures: 2,
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        };
        let new = d.carry_over(&a, stricter);
        assert_eq!(new.config(), &stricter);
        assert_eq!(fail(&new, 0, 2, t0), ejected(30, 1));
        assert_eq!(fail(&new, 1, 2, t0), ejected(30, 1));
        assert_eq!(fail(&new, 2, 2, t0), Some(Transition::EjectionRefused));
        // The old detector sees the same endpoints ejected, against its own cap (1 of 4).
        assert_eq!(d.ejected(), 2);
        assert_eq!(fail(&d, 3, 5, t0), Some(Transition::EjectionRefused));
    }

    #[test]
    fn view_serializes() {
        let (d, t0) = detector(2, OutlierConfig::default());
        fail(&d, 0, 5, t0);
        let json = serde_json::to_value(d.view(t0 + 10 * SEC)).unwrap();
        assert_eq!(json["ejected"], 1);
        assert_eq!(json["max_ejected"], 1);
        assert_eq!(json["endpoints"][0]["state"], "ejected");
        assert_eq!(json["endpoints"][0]["addr"], "10.0.0.1:8000");
        assert_eq!(json["endpoints"][0]["ejection_remaining_ms"], 20_000);
        assert_eq!(json["endpoints"][1]["state"], "healthy");
        let view = BreakerView {
            backend: "web".into(),
            limits: Arc::new(LimitCounters::new()).view(&Limits::default()),
            outlier: d.view(t0),
        };
        let json = serde_json::to_value(view).unwrap();
        assert_eq!(json["limits"]["retries"]["max"], 3);
    }

    #[test]
    fn outcome_from_status() {
        assert_eq!(Outcome::from_status(200), Outcome::Success);
        assert_eq!(Outcome::from_status(404), Outcome::Success);
        assert_eq!(Outcome::from_status(429), Outcome::Success);
        assert_eq!(Outcome::from_status(500), Outcome::Failure);
        assert_eq!(Outcome::from_status(503), Outcome::Failure);
        assert_eq!(Outcome::from_status(599), Outcome::Failure);
    }

    #[test]
    fn instants_before_the_epoch_count_as_the_epoch() {
        let t0 = Instant::now();
        let d = OutlierDetector::new(&addrs(1), OutlierConfig::default(), t0 + SEC);
        assert_eq!(fail(&d, 0, 5, t0), ejected(30, 1));
        assert_eq!(d.is_available(0, t0 + 30 * SEC), Availability::Ejected);
        assert_eq!(d.is_available(0, t0 + 31 * SEC), Availability::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn works_with_the_paused_clock() {
        let now = || tokio::time::Instant::now().into_std();
        let d = OutlierDetector::new(&addrs(2), OutlierConfig::default(), now());
        assert_eq!(fail(&d, 0, 5, now()), ejected(30, 1));
        tokio::time::advance(29 * SEC).await;
        assert_eq!(d.is_available(0, now()), Availability::Ejected);
        tokio::time::advance(SEC).await;
        assert_eq!(d.is_available(0, now()), Availability::Probe);
        assert_eq!(d.try_probe(0, now()), Some(Transition::HalfOpen));
        assert_eq!(d.record(0, Outcome::Failure, now()), ejected(60, 2));
        tokio::time::advance(60 * SEC).await;
        assert_eq!(d.try_probe(0, now()), Some(Transition::HalfOpen));
        assert_eq!(
            d.record(0, Outcome::Success, now()),
            Some(Transition::Restored)
        );
    }
}
