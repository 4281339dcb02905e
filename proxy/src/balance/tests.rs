use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::*;
use crate::breaker::{Availability, Outcome, OutlierConfig, OutlierDetector};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 0, 0, 2], 9000 + i as u16)))
        .collect()
}

fn balancer(n: usize, policy: Policy) -> (Balancer, Instant) {
    let t0 = Instant::now();
    let config = BalanceConfig {
        policy,
        ..BalanceConfig::default()
    };
    (Balancer::new(&addrs(n), config, t0), t0)
}

fn close(actual: Duration, expected_ms: f64, rel: f64) -> bool {
    let a = actual.as_secs_f64() * 1e3;
    (a - expected_ms).abs() <= expected_ms * rel
}

/// Sends `requests` requests, one every `interval` from `start`, to endpoints whose
/// response time is `latency[i]`; each finishes (with a latency sample) at its own time, so
/// slow endpoints accumulate requests in flight. Returns how many each endpoint got.
fn simulate(
    b: &Balancer,
    latency: &[Duration],
    start: Instant,
    interval: Duration,
    requests: usize,
) -> Vec<usize> {
    let mut counts = vec![0; b.len()];
    let mut pending: Vec<(Instant, InFlight)> = Vec::new();
    let mut now = start;
    for _ in 0..requests {
        finish_due(&mut pending, now);
        let i = b.pick(now, |_| true).expect("an endpoint");
        counts[i] += 1;
        pending.push((now + latency[i], b.start(i, now)));
        now += interval;
    }
    finish_due(&mut pending, Instant::now() + 3600 * SEC);
    counts
}

fn finish_due(pending: &mut Vec<(Instant, InFlight)>, now: Instant) {
    let (mut due, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(t, _)| *t <= now);
    *pending = rest;
    due.sort_by_key(|(t, _)| *t);
    for (t, guard) in due {
        guard.finish(t, true);
    }
}

fn share(counts: &[usize], i: usize) -> f64 {
    counts[i] as f64 / counts.iter().sum::<usize>() as f64
}

/// One request to `i` that took `latency`, finishing at `at`.
fn sample(b: &Balancer, i: usize, latency: Duration, at: Instant) {
    b.start(i, at - latency).finish(at, true);
}

#[test]
fn defaults_are_linkerds() {
    let c = BalanceConfig::default();
    assert_eq!(c.policy, Policy::P2cEwma);
    assert_eq!(c.decay, 10 * SEC);
    assert_eq!(c.default_rtt, 30 * MS);
    assert_eq!(Policy::default(), Policy::P2cEwma);
}

#[test]
fn policy_names_in_config() {
    let p: Policy = serde_json::from_str("\"least_request\"").unwrap();
    assert_eq!(p, Policy::LeastRequest);
    assert_eq!(
        serde_json::to_string(&Policy::P2cEwma).unwrap(),
        "\"p2c_ewma\""
    );
    assert_eq!(
        serde_json::to_string(&Policy::RoundRobin).unwrap(),
        "\"round_robin\""
    );
}

#[test]
fn p2c_sends_little_to_a_slow_endpoint_round_robin_half() {
    fastrand::seed(7);
    let latency = [MS, 50 * MS];
    let (p2c, t0) = balancer(2, Policy::P2cEwma);
    let counts = simulate(&p2c, &latency, t0, MS, 10_000);
    let slow = share(&counts, 1);
    assert!(slow < 0.10, "p2c slow share {slow}");
    let (rr, t0) = balancer(2, Policy::RoundRobin);
    let counts = simulate(&rr, &latency, t0, MS, 10_000);
    let slow = share(&counts, 1);
    assert!((slow - 0.5).abs() < 0.01, "round robin slow share {slow}");
}

#[test]
fn p2c_avoids_one_slow_endpoint_among_five() {
    fastrand::seed(11);
    let mut latency = [2 * MS; 5];
    latency[3] = 80 * MS;
    let (b, t0) = balancer(5, Policy::P2cEwma);
    let counts = simulate(&b, &latency, t0, MS, 20_000);
    let slow = share(&counts, 3);
    assert!(slow < 0.05, "slow share {slow} of {counts:?}");
    for i in [0, 1, 2, 4] {
        let s = share(&counts, i);
        assert!((0.15..0.35).contains(&s), "fast share {s} of {counts:?}");
    }
}

#[test]
fn a_slow_endpoint_is_retried_after_its_estimate_decays() {
    fastrand::seed(3);
    let (b, t0) = balancer(2, Policy::P2cEwma);
    // 200 s at 100 requests a second: the slow endpoint's 50 ms decays below the fast one's
    // 1 ms in about decay × ln 50 ≈ 39 s, then it gets one request and is avoided again.
    let counts = simulate(&b, &[MS, 50 * MS], t0, 10 * MS, 20_000);
    assert!(
        (3..100).contains(&counts[1]),
        "slow endpoint got {counts:?}: starved or flooded"
    );
}

#[test]
fn in_flight_weighting_moves_traffic_off_a_busy_endpoint() {
    fastrand::seed(5);
    let (b, t0) = balancer(3, Policy::P2cEwma);
    let t1 = t0 + SEC;
    for i in 0..3 {
        sample(&b, i, 10 * MS, t1);
    }
    let busy: Vec<_> = (0..10).map(|_| b.start(0, t1)).collect();
    assert_eq!(b.in_flight(0), 10);
    let picked_busy = (0..3000)
        .filter(|_| b.pick(t1, |_| true) == Some(0))
        .count();
    assert_eq!(picked_busy, 0);
    drop(busy);
    assert_eq!(b.in_flight(0), 0);
    let picked = (0..3000)
        .filter(|_| b.pick(t1, |_| true) == Some(0))
        .count();
    assert!((800..1200).contains(&picked), "back to a third: {picked}");
}

#[test]
fn p2c_with_two_endpoints_joins_the_shorter_queue() {
    fastrand::seed(9);
    let (b, t0) = balancer(2, Policy::P2cEwma);
    let t1 = t0 + SEC;
    sample(&b, 0, 10 * MS, t1);
    sample(&b, 1, 10 * MS, t1);
    let mut held: Vec<_> = (0..5).map(|_| b.start(0, t1)).collect();
    for _ in 0..5 {
        assert_eq!(b.pick(t1, |_| true), Some(1));
        held.push(b.start(1, t1));
    }
    for _ in 0..20 {
        let i = b.pick(t1, |_| true).expect("an endpoint");
        held.push(b.start(i, t1));
        assert!(b.in_flight(0).abs_diff(b.in_flight(1)) <= 1);
    }
    assert_eq!(b.in_flight(0) + b.in_flight(1), 30);
}

#[test]
fn latency_and_load_trade_off() {
    let (b, t0) = balancer(2, Policy::P2cEwma);
    // Long enough for the default guess to decay away: the samples set the estimates.
    let t1 = t0 + 100 * SEC;
    sample(&b, 0, MS, t1);
    sample(&b, 1, 5 * MS, t1);
    assert_eq!(b.pick(t1, |_| true), Some(0), "idle: the faster");
    let _busy: Vec<_> = (0..10).map(|_| b.start(0, t1)).collect();
    // 1 ms × 11 in flight costs more than 5 ms × 1.
    assert_eq!(b.pick(t1, |_| true), Some(1));
}

#[test]
fn equal_costs_split_evenly() {
    fastrand::seed(13);
    let (b, t0) = balancer(2, Policy::P2cEwma);
    let n = 10_000;
    let zeros = (0..n).filter(|_| b.pick(t0, |_| true) == Some(0)).count();
    let s = zeros as f64 / n as f64;
    assert!((s - 0.5).abs() < 0.03, "share {s}");
}

#[test]
fn least_request_spreads_evenly_and_ignores_latency() {
    fastrand::seed(17);
    let (b, t0) = balancer(4, Policy::LeastRequest);
    let t1 = t0 + SEC;
    sample(&b, 0, 500 * MS, t1);
    for i in 1..4 {
        sample(&b, i, MS, t1);
    }
    let mut counts = [0usize; 4];
    for _ in 0..40_000 {
        counts[b.pick(t1, |_| true).expect("an endpoint")] += 1;
    }
    for i in 0..4 {
        let s = share(&counts, i);
        assert!((0.22..0.28).contains(&s), "share {s} of {counts:?}");
    }
}

#[test]
fn least_request_avoids_busy_endpoints() {
    fastrand::seed(19);
    let (b, t0) = balancer(4, Policy::LeastRequest);
    let _busy = b.start(2, t0);
    assert!((0..5000).all(|_| b.pick(t0, |_| true) != Some(2)));
    // Under load the queues stay level.
    let mut held = Vec::new();
    for _ in 0..99 {
        let i = b.pick(t0, |_| true).expect("an endpoint");
        held.push(b.start(i, t0));
    }
    let loads: Vec<u32> = (0..4).map(|i| b.in_flight(i)).collect();
    let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
    assert!(spread <= 3, "in flight {loads:?}");
    // And a slow endpoint, which keeps requests longer, gets fewer.
    fastrand::seed(23);
    drop(held);
    let (b, t0) = balancer(2, Policy::LeastRequest);
    let counts = simulate(&b, &[MS, 50 * MS], t0, MS, 10_000);
    let slow = share(&counts, 1);
    assert!(slow < 0.10, "least request slow share {slow}");
}

#[test]
fn round_robin_rotates_and_skips_evenly() {
    let (b, t0) = balancer(3, Policy::RoundRobin);
    let order: Vec<_> = (0..6).filter_map(|_| b.pick(t0, |_| true)).collect();
    assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    let (b, t0) = balancer(4, Policy::RoundRobin);
    let mut counts = [0usize; 4];
    for _ in 0..3000 {
        counts[b.pick(t0, |i| i != 1).expect("an endpoint")] += 1;
    }
    assert_eq!(
        counts,
        [1000, 0, 1000, 1000],
        "no double share after a skip"
    );
}

#[test]
fn unavailable_endpoints_are_never_picked() {
    for policy in [Policy::P2cEwma, Policy::RoundRobin, Policy::LeastRequest] {
        fastrand::seed(29);
        let (b, t0) = balancer(6, policy);
        let mut counts = [0usize; 6];
        for _ in 0..6000 {
            counts[b.pick(t0, |i| i % 2 == 0).expect("an endpoint")] += 1;
        }
        assert_eq!([counts[1], counts[3], counts[5]], [0, 0, 0], "{policy:?}");
        assert!(
            [counts[0], counts[2], counts[4]].iter().all(|&c| c > 1000),
            "{policy:?}: {counts:?}"
        );
        // Only one available, among many.
        assert!(
            (0..500).all(|_| b.pick(t0, |i| i == 4) == Some(4)),
            "{policy:?}"
        );
        // None available.
        assert_eq!(b.pick(t0, |_| false), None, "{policy:?}");
        let (one, t0) = balancer(1, policy);
        assert_eq!(one.pick(t0, |_| false), None);
        assert_eq!(one.pick(t0, |_| true), Some(0));
        let (empty, t0) = balancer(0, policy);
        assert_eq!(empty.pick(t0, |_| true), None);
        assert!(empty.is_empty());
    }
}

#[test]
fn mostly_unavailable_still_finds_the_available_fairly() {
    fastrand::seed(31);
    let (b, t0) = balancer(50, Policy::LeastRequest);
    let up = [7, 33];
    let mut counts = [0usize; 2];
    for _ in 0..4000 {
        match b.pick(t0, |i| up.contains(&i)) {
            Some(7) => counts[0] += 1,
            Some(33) => counts[1] += 1,
            other => panic!("picked {other:?}"),
        }
    }
    let s = counts[0] as f64 / 4000.0;
    assert!((0.35..0.65).contains(&s), "{counts:?}");
}

#[test]
fn ewma_is_peak_sensitive_and_decays() {
    let (b, t0) = balancer(1, Policy::P2cEwma);
    assert!(
        close(b.rtt_estimate(0, t0).unwrap(), 30.0, 1e-4),
        "default guess"
    );
    // Decays toward zero while no sample comes: 30 ms × e^-1 after one decay period.
    let t1 = t0 + 10 * SEC;
    let e = b.rtt_estimate(0, t1).unwrap();
    assert!(close(e, 30.0 / std::f64::consts::E, 1e-3), "{e:?}");
    // A sample above the current value replaces it at once.
    sample(&b, 0, 100 * MS, t1);
    let e = b.rtt_estimate(0, t1).unwrap();
    assert!(close(e, 100.0, 1e-3), "{e:?}");
    // A lower one pulls it by the weight of the time since the last update:
    // current = 100 e^-1, next = current e^-1 + 10 (1 - e^-1).
    let t2 = t1 + 10 * SEC;
    sample(&b, 0, 10 * MS, t2);
    let w = (-1.0f64).exp();
    let expected = 100.0 * w * w + 10.0 * (1.0 - w);
    let e = b.rtt_estimate(0, t2).unwrap();
    assert!(close(e, expected, 1e-3), "{e:?} vs {expected}");
    // Frequent samples below it move it a little each.
    let before = b.rtt_estimate(0, t2).unwrap();
    sample(&b, 0, MS, t2 + MS);
    let after = b.rtt_estimate(0, t2 + MS).unwrap();
    assert!(
        after < before && after > before.mul_f64(0.99),
        "{before:?} {after:?}"
    );
}

#[test]
fn steady_latency_converges_to_it() {
    let (b, t0) = balancer(1, Policy::P2cEwma);
    let mut t = t0;
    for _ in 0..60_000 {
        t += MS;
        sample(&b, 0, 4 * MS, t);
    }
    let e = b.rtt_estimate(0, t).unwrap();
    assert!(close(e, 4.0, 0.01), "{e:?}");
}

#[test]
fn finish_without_latency_and_drop_only_count_out() {
    let (b, t0) = balancer(2, Policy::P2cEwma);
    let g = b.start(1, t0);
    let h = b.start(1, t0);
    assert_eq!(b.in_flight(1), 2);
    g.finish(t0 + 5 * SEC, false);
    assert_eq!(b.in_flight(1), 1);
    let e = b.rtt_estimate(1, t0).unwrap();
    assert!(close(e, 30.0, 1e-4), "no sample from a failure: {e:?}");
    drop(h);
    assert_eq!(b.in_flight(1), 0);
    assert_eq!(b.rtt_estimate(1, t0), Some(e));
    // Outside the list: a guard that counts nothing.
    let stray = b.start(9, t0);
    stray.finish(t0, true);
    assert_eq!((b.in_flight(0), b.in_flight(9)), (0, 0));
}

#[test]
fn concurrent_use_keeps_counts_exact() {
    let (b, t0) = balancer(4, Policy::P2cEwma);
    let barrier = Barrier::new(8);
    std::thread::scope(|s| {
        for k in 0..8u64 {
            let (b, barrier) = (&b, &barrier);
            s.spawn(move || {
                fastrand::seed(k);
                barrier.wait();
                let mut t = t0;
                let mut held = Vec::new();
                for n in 0..5000u32 {
                    t += MS;
                    let i = b.pick(t, |_| true).expect("an endpoint");
                    held.push(b.start(i, t));
                    if n % 3 == 0 {
                        drop(held.pop());
                    }
                    if held.len() > 4 {
                        held.remove(0).finish(t + MS * (n % 40), true);
                    }
                }
            });
        }
    });
    assert!((0..4).all(|i| b.in_flight(i) == 0));
    for i in 0..4 {
        let e = b.rtt_estimate(i, t0 + 5 * SEC).unwrap();
        assert!(e <= 100 * MS, "{e:?}");
    }
}

#[test]
fn carry_over_shares_surviving_endpoints() {
    let a = addrs(4);
    let t0 = Instant::now();
    let config = BalanceConfig {
        policy: Policy::RoundRobin,
        ..BalanceConfig::default()
    };
    let old = Balancer::new(&a[..3], config, t0);
    let t1 = t0 + SEC;
    sample(&old, 1, 80 * MS, t1);
    let running = old.start(1, t1);
    assert_eq!(old.pick(t1, |_| true), Some(0));
    // a[0] removed, a[3] added, order changed; the policy changed too.
    let new = old.carry_over(&[a[3], a[1], a[2]], BalanceConfig::default(), t1);
    assert_eq!(new.policy(), Policy::P2cEwma);
    assert_eq!(new.addr(1), Some(a[1]));
    assert_eq!(new.in_flight(1), 1, "the old snapshot's request counts");
    assert!(close(new.rtt_estimate(1, t1).unwrap(), 80.0, 1e-3));
    running.finish(t1 + 200 * MS, true);
    assert_eq!(new.in_flight(1), 0);
    assert!(close(
        new.rtt_estimate(1, t1 + 200 * MS).unwrap(),
        200.0,
        1e-3
    ));
    // The round-robin position is carried.
    let rr = old.carry_over(&a[..3], config, t1);
    assert_eq!(rr.pick(t1, |_| true), Some(1));
}

#[test]
fn new_endpoints_start_at_the_median_of_their_peers() {
    let a = addrs(5);
    let t0 = Instant::now();
    let old = Balancer::new(&a[..3], BalanceConfig::default(), t0);
    let t1 = t0 + SEC;
    sample(&old, 0, 100 * MS, t1);
    sample(&old, 1, 40 * MS, t1);
    sample(&old, 2, 50 * MS, t1);
    let new = old.carry_over(&a, BalanceConfig::default(), t1);
    let e = new.rtt_estimate(3, t1).unwrap();
    assert!(close(e, 50.0, 1e-3), "median, not mean or default: {e:?}");
    assert!(close(new.rtt_estimate(4, t1).unwrap(), 50.0, 1e-3));
    // It decays like the others from then on.
    let later = new.rtt_estimate(3, t1 + 10 * SEC).unwrap();
    assert!(close(later, 50.0 / std::f64::consts::E, 1e-3), "{later:?}");
    // No survivors: the default guess.
    let fresh = old.carry_over(&addrs(9)[6..], BalanceConfig::default(), t1);
    assert!(close(fresh.rtt_estimate(0, t1).unwrap(), 30.0, 1e-4));
}

#[test]
fn a_new_endpoint_is_neither_starved_nor_flooded() {
    fastrand::seed(37);
    let a = addrs(4);
    let t0 = Instant::now();
    let old = Balancer::new(&a[..3], BalanceConfig::default(), t0);
    let latency = [10 * MS; 4];
    simulate(&old, &latency[..3], t0, MS, 10_000);
    let t1 = t0 + 10 * SEC;
    let new = old.carry_over(&a, BalanceConfig::default(), t1);
    let counts = simulate(&new, &latency, t1, MS, 8000);
    let s = share(&counts, 3);
    assert!(
        (0.15..0.35).contains(&s),
        "new endpoint share {s} of {counts:?}"
    );
    // Not flooded at the start either: of the first 400 requests (40 in flight at a time),
    // about a quarter.
    let t2 = t1 + 60 * SEC;
    let newer = new.carry_over(&addrs(5), BalanceConfig::default(), t2);
    let counts = simulate(&newer, &[10 * MS; 5], t2, MS / 4, 400);
    let s = share(&counts, 4);
    assert!((0.05..0.40).contains(&s), "newest share {s} of {counts:?}");
}

#[test]
fn picks_honour_outlier_ejection() {
    fastrand::seed(41);
    let a = addrs(4);
    let t0 = Instant::now();
    let b = Balancer::new(&a, BalanceConfig::default(), t0);
    let outliers = OutlierDetector::new(
        &a,
        OutlierConfig {
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        },
        t0,
    );
    for _ in 0..5 {
        outliers.record(2, Outcome::Failure, t0);
    }
    let outliers = &outliers;
    let usable =
        |now: Instant| move |i: usize| outliers.is_available(i, now) != Availability::Ejected;
    assert!((0..2000).all(|_| b.pick(t0, usable(t0)) != Some(2)));
    // Half-open: it may be picked, and the probe goes to one caller only.
    let t1 = t0 + 30 * SEC;
    let mut probes = 0;
    for _ in 0..2000 {
        let Some(i) = b.pick(t1, usable(t1)) else {
            panic!("no endpoint");
        };
        if outliers.is_available(i, t1) == Availability::Probe
            && outliers.try_probe(i, t1).is_some()
        {
            probes += 1;
        }
    }
    assert_eq!(probes, 1);
    assert!(
        (0..2000).all(|_| b.pick(t1, usable(t1)) != Some(2)),
        "probe in flight"
    );
}

#[test]
fn view_shows_load() {
    let (b, t0) = balancer(2, Policy::P2cEwma);
    let _g = b.start(1, t0);
    let v = b.view(t0);
    assert_eq!(v[1].in_flight, 1);
    assert!((v[0].rtt_ms - 30.0).abs() < 0.01);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json[1]["addr"], "10.0.0.2:9001");
    assert_eq!(json[1]["in_flight"], 1);
}

#[test]
fn absurd_latencies_do_not_break_anything() {
    let (b, t0) = balancer(2, Policy::P2cEwma);
    // A request "started" long before: a huge sample.
    b.start(0, t0)
        .finish(t0 + Duration::from_secs(u64::from(u32::MAX)), true);
    let e = b.rtt_estimate(0, t0 + SEC);
    assert!(e.is_some_and(|e| e > 3600 * SEC), "{e:?}");
    assert_eq!(
        b.pick(t0 + SEC, |_| true),
        Some(1),
        "the sane one is cheaper"
    );
    assert!(b.view(t0).iter().all(|l| !l.rtt_ms.is_nan()));
    // A finish before the start: a zero sample, not a negative one.
    b.start(1, t0 + SEC).finish(t0, true);
    assert!(b.rtt_estimate(1, t0).is_some());
}
