//! `paired`: a few targets at one fixed rate, all running at once, measured in short windows
//! that take turns (A B C, B C A, C A B, …) for many cycles.
//!
//! At 2,000 req/s this host drifts between a faster and a slower state every few seconds (the
//! relay's CPU per request moved between 35 and 53 µs from one 3 s window to the next, in one
//! process), so `compare`'s three rounds, each target in its own minute, often order two
//! proxies by the host's state. Here every cycle measures each target within seconds of the
//! others, and the report pairs them cycle by cycle: in how many cycles Tern's figure was at
//! most the other's, and the median of the per-cycle ratios.
//!
//! At 2,000 req/s a 2 s window's p99 is its 40th-worst request, so a few stalls of a few ms
//! decide it. Every window therefore keeps what its tail is made of: the worst latency per
//! 100 ms slice, the generator's worst pacer lag, the proxy's run-queue wait and the time the
//! hypervisor stole from each CPU; the report lists the windows whose p99 is far over their
//! target's usual one, and gives the added latency over `direct` also without the cycles
//! that lost time to the hypervisor.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http::Method;
use serde::Serialize;

use crate::compare::{self, PhaseResult};
use crate::loadgen::{Budget, Pace, Protocol, Spec};
use crate::report::{median, num, signed};
use crate::targets::{self, Programs, Running, Setup, TargetName};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub targets: Vec<TargetName>,
    /// Every target runs over each of these, as a runner of its own.
    pub protocols: Vec<Protocol>,
    pub rate: f64,
    pub cycles: usize,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Load before each window (the target was idle while the others took their turn).
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    pub connections: usize,
    pub h2_streams: usize,
    pub response_size: usize,
    pub workers: usize,
    pub pinning: Option<(usize, usize)>,
    /// Open loop: the generator spins instead of sleeping between sends (`Spec::spin`).
    pub spin: bool,
}

/// A target over a protocol: what takes a turn in each cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Runner {
    pub target: TargetName,
    pub protocol: Protocol,
}

impl std::fmt::Display for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.protocol {
            Protocol::Http1 => write!(f, "{}", self.target),
            Protocol::Http2 => write!(f, "{} (h2c)", self.target),
        }
    }
}

impl Settings {
    /// Every target over the first protocol, then over the next.
    pub fn runners(&self) -> Vec<Runner> {
        self.protocols
            .iter()
            .flat_map(|&protocol| {
                self.targets
                    .iter()
                    .map(move |&target| Runner { target, protocol })
            })
            .collect()
    }
}

/// One runner's window in one cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub runner: Runner,
    pub cycle: usize,
    pub cpu_us_per_request: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub failures: u64,
    /// What the tail is made of: the window's worst latency, and the worst per 100 ms slice.
    pub max_us: f64,
    pub slice_max_us: Vec<f64>,
    /// How late the generator's pacer was at worst (its own stalls, not the target's).
    pub send_lag_max_us: f64,
    /// The proxy's threads runnable but not running (ms).
    pub proxy_wait_ms: Option<f64>,
    /// Stolen by the hypervisor, per CPU (ms).
    pub steal_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub settings: Settings,
    pub windows: Vec<Window>,
    pub seconds: f64,
}

/// Cycle `c` (from 0) visits the targets rotated by `c`, so no target always follows the same
/// one.
pub fn order(n: usize, cycle: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + cycle) % n.max(1))
}

pub fn run(settings: &Settings, programs: &Programs, scratch: &Path) -> Result<Outcome> {
    let started = Instant::now();
    let cpu = settings.pinning.map(|(_, other)| other);
    let timeout = Duration::from_secs(20);
    let backend_bin = std::env::current_exe().context("finding this program's path")?;
    let (mut backend, backend_addr) = compare::start_backend(
        &backend_bin,
        scratch,
        cpu,
        settings.response_size,
        Protocol::Http1,
        timeout,
    )?;
    let mut running: Vec<(Runner, Running)> = Vec::new();
    let result = (|| -> Result<Vec<Window>> {
        for runner in settings.runners() {
            let name = runner.target;
            let target = targets::make(name, programs);
            target.check_installed()?;
            let dir = scratch.join(format!(
                "{name}-{}",
                match runner.protocol {
                    Protocol::Http1 => "h1",
                    Protocol::Http2 => "h2",
                }
            ));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let setup = Setup {
                dir: &dir,
                protocol: runner.protocol,
                workers: settings.workers,
                cpu,
                backend: backend_addr,
                startup_timeout: timeout,
            };
            running.push((
                runner,
                target
                    .start(&setup)
                    .with_context(|| format!("starting {name}"))?,
            ));
        }
        let spec = |runner: &Runner, r: &Running, warmup, measure| Spec {
            endpoint: r.endpoint.clone(),
            protocol: runner.protocol,
            connections: settings.connections,
            streams: match runner.protocol {
                Protocol::Http1 => 1,
                Protocol::Http2 => settings.h2_streams,
            },
            pace: Pace::Open {
                rate: settings.rate,
            },
            budget: Budget::Timed { warmup, measure },
            method: Method::GET,
            request_body: 0,
            timeout: Duration::from_secs(2),
            grace: Duration::from_millis(500),
            spin: settings.spin,
            headers: Vec::new(),
        };
        // Every target warm before the first cycle.
        for (runner, r) in &running {
            compare::measure_phase(
                &spec(runner, r, Duration::from_secs(1), settings.settle),
                None,
                r,
                &backend,
            )?;
        }
        let mut windows = Vec::new();
        for cycle in 0..settings.cycles {
            eprintln!("cycle {}/{} ...", cycle + 1, settings.cycles);
            for i in order(running.len(), cycle) {
                let Some((runner, r)) = running.get_mut(i) else {
                    continue;
                };
                let phase: PhaseResult = compare::measure_phase(
                    &spec(runner, r, settings.settle, settings.window),
                    Some(settings.rate),
                    r,
                    &backend,
                )?;
                r.check_alive().with_context(|| format!("{runner} died"))?;
                windows.push(Window {
                    runner: *runner,
                    cycle: cycle + 1,
                    cpu_us_per_request: phase.proxy_cpu_us_per_request,
                    p50_us: phase.load.latency_us.p50,
                    p99_us: phase.load.latency_us.p99,
                    failures: phase.load.failures(),
                    max_us: phase.load.latency_us.max,
                    slice_max_us: phase.load.slice_max_us.clone(),
                    send_lag_max_us: phase.load.send_lag_us.max,
                    proxy_wait_ms: phase.proxy_wait_ms,
                    steal_ms: phase.steal_ms.clone(),
                });
            }
            backend.check_alive().context("the backend died")?;
        }
        Ok(windows)
    })();
    for (runner, r) in &mut running {
        if let Err(e) = r.stop() {
            eprintln!("warning: stopping {runner}: {e:#}");
        }
    }
    let _ = backend.stop(Duration::from_secs(5));
    Ok(Outcome {
        settings: settings.clone(),
        windows: result?,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One runner's medians over its windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub runner: Runner,
    pub cpu_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub failures: u64,
}

/// `subject` against `other`, cycle by cycle (CPU per request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub other: Runner,
    /// Median of subject ÷ other over the cycles.
    pub cpu_ratio: Option<f64>,
    /// Cycles in which the subject's CPU was at most the other's, and cycles compared.
    pub at_most: (usize, usize),
    /// Median of subject − other, p50 and p99 (µs).
    pub p50_delta: Option<f64>,
    pub p99_delta: Option<f64>,
}

pub fn rows(o: &Outcome) -> Vec<Row> {
    o.settings
        .runners()
        .into_iter()
        .map(|runner| {
            let mine: Vec<&Window> = o.windows.iter().filter(|w| w.runner == runner).collect();
            Row {
                runner,
                cpu_us: median(mine.iter().filter_map(|w| w.cpu_us_per_request).collect()),
                p50_us: median(mine.iter().map(|w| w.p50_us).collect()),
                p99_us: median(mine.iter().map(|w| w.p99_us).collect()),
                failures: mine.iter().map(|w| w.failures).sum(),
            }
        })
        .collect()
}

/// The runner the others are compared with: Tern over the first protocol.
pub fn subject(settings: &Settings) -> Option<Runner> {
    settings
        .runners()
        .into_iter()
        .find(|r| r.target == TargetName::Tern)
}

/// The windows of `a` and `b` in every cycle where both ran without failures.
fn cycles_of(o: &Outcome, a: Runner, b: Runner) -> Vec<(&Window, &Window)> {
    let at = |r: Runner, cycle: usize| {
        o.windows
            .iter()
            .find(|w| w.runner == r && w.cycle == cycle && w.failures == 0)
    };
    (1..=o.settings.cycles)
        .filter_map(|c| at(a, c).zip(at(b, c)))
        .collect()
}

pub fn pairs(o: &Outcome, subject: Runner) -> Vec<Pair> {
    o.settings
        .runners()
        .into_iter()
        .filter(|&r| r != subject)
        .map(|other| {
            let both = cycles_of(o, subject, other);
            let cpu: Vec<(f64, f64)> = both
                .iter()
                .filter_map(|(a, b)| a.cpu_us_per_request.zip(b.cpu_us_per_request))
                .collect();
            Pair {
                other,
                cpu_ratio: median(cpu.iter().map(|(a, b)| a / b).collect()),
                at_most: (cpu.iter().filter(|(a, b)| a <= b).count(), cpu.len()),
                p50_delta: median(both.iter().map(|(a, b)| a.p50_us - b.p50_us).collect()),
                p99_delta: median(both.iter().map(|(a, b)| a.p99_us - b.p99_us).collect()),
            }
        })
        .collect()
}

/// `runner`'s latency over `direct`'s on the same protocol, cycle by cycle, when `direct` is
/// one of the runners.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Added {
    /// Medians of the per-cycle differences (µs).
    pub p50: f64,
    pub p99: f64,
    pub cycles: usize,
    /// The same over the cycles in which neither window lost time to the hypervisor
    /// (`None` when there was no such cycle).
    pub quiet: Option<(f64, f64, usize)>,
}

pub fn added_over_direct(o: &Outcome, runner: Runner) -> Option<Added> {
    let direct = Runner {
        target: TargetName::Direct,
        protocol: runner.protocol,
    };
    let both = cycles_of(o, runner, direct);
    let medians = |cycles: &[&(&Window, &Window)]| {
        median(cycles.iter().map(|(a, d)| a.p50_us - d.p50_us).collect()).zip(median(
            cycles.iter().map(|(a, d)| a.p99_us - d.p99_us).collect(),
        ))
    };
    let all: Vec<_> = both.iter().collect();
    let quiet: Vec<_> = both
        .iter()
        .filter(|(a, d)| !stolen(a) && !stolen(d))
        .collect();
    let (p50, p99) = medians(&all)?;
    Some(Added {
        p50,
        p99,
        cycles: all.len(),
        quiet: medians(&quiet).map(|(p50, p99)| (p50, p99, quiet.len())),
    })
}

/// The hypervisor took time from a CPU during the window.
fn stolen(w: &Window) -> bool {
    w.steal_ms.iter().any(|&ms| ms > 0.0)
}

/// Windows whose p99 is far over their runner's usual one: over twice its median p99 and
/// over it by 100 µs or more. These make a median of p99s move between runs.
pub fn tail_windows(o: &Outcome) -> Vec<&Window> {
    let typical: Vec<(Runner, f64)> = rows(o)
        .into_iter()
        .filter_map(|r| r.p99_us.map(|p99| (r.runner, p99)))
        .collect();
    o.windows
        .iter()
        .filter(|w| {
            typical
                .iter()
                .any(|&(r, p99)| r == w.runner && w.p99_us > 2.0 * p99 && w.p99_us >= p99 + 100.0)
        })
        .collect()
}

/// Where a window's worst slices were: how many 100 ms slices had a request over 1 ms, and
/// the worst of them ("3 × > 1 ms, worst 23.1 ms at 0.7 s").
fn stalls(w: &Window) -> String {
    let over = w.slice_max_us.iter().filter(|&&us| us > 1_000.0).count();
    let worst = w
        .slice_max_us
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1));
    match worst {
        Some((i, &us)) if over > 0 => {
            let at = (i as f64 + 0.5) * crate::loadgen::SLICE.as_secs_f64();
            format!("{over} × > 1 ms, worst {:.1} ms at {at:.2} s", us / 1e3)
        }
        _ => "none".to_owned(),
    }
}

/// `runner`'s median p99 over its windows with and without time stolen from a CPU, and how
/// many windows each: does the hypervisor explain the tail?
pub fn by_steal(o: &Outcome, runner: Runner) -> [(Option<f64>, usize); 2] {
    let p99s = |with_steal: bool| -> Vec<f64> {
        o.windows
            .iter()
            .filter(|w| w.runner == runner && stolen(w) == with_steal)
            .map(|w| w.p99_us)
            .collect()
    };
    [true, false].map(|with_steal| {
        let v = p99s(with_steal);
        let n = v.len();
        (median(v), n)
    })
}

pub fn markdown(o: &Outcome) -> String {
    use std::fmt::Write as _;
    let s = &o.settings;
    let mut md = String::new();
    let _ = writeln!(md, "# Tern benchmark: paired windows at one rate\n");
    let _ = writeln!(
        md,
        "{} at {} req/s, open loop, {} connections ({} streams each over HTTP/2); {} cycles, each runner's window {:?} after {:?} of load, in turns rotated every cycle; all running throughout, on one backend. Took {:.0} s.\n",
        s.protocols
            .iter()
            .map(|p| p.label())
            .collect::<Vec<_>>()
            .join(" and "),
        s.rate,
        s.connections,
        s.h2_streams,
        s.cycles,
        s.window,
        s.settle,
        o.seconds
    );
    let _ = writeln!(md, "{}\n", crate::report::generator_waits(s.spin));
    let _ = writeln!(
        md,
        "| target | CPU µs/req | p50 µs | p99 µs | failed requests |\n|---|--:|--:|--:|--:|"
    );
    for r in rows(o) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}{} |",
            r.runner,
            num(r.cpu_us, 1),
            num(r.p50_us, 0),
            num(r.p99_us, 0),
            if r.failures > 0 { "!! " } else { "" },
            r.failures
        );
    }
    md.push_str("\n(medians over the cycles)\n\n");
    if let Some(subject) = subject(s) {
        let _ = writeln!(
            md,
            "{subject} against each, cycle by cycle (windows with failures left out):\n\n| other | CPU ratio (median of cycles) | cycles with {subject}'s CPU ≤ the other's | Δ p50 µs | Δ p99 µs |\n|---|--:|--:|--:|--:|"
        );
        for p in pairs(o, subject) {
            let _ = writeln!(
                md,
                "| {} | {} | {} of {} | {} | {} |",
                p.other,
                p.cpu_ratio
                    .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×")),
                p.at_most.0,
                p.at_most.1,
                signed(p.p50_delta),
                signed(p.p99_delta),
            );
        }
        md.push('\n');
    }
    let added: Vec<(Runner, Added)> = s
        .runners()
        .into_iter()
        .filter(|r| r.target != TargetName::Direct)
        .filter_map(|r| added_over_direct(o, r).map(|a| (r, a)))
        .collect();
    if !added.is_empty() {
        let _ = writeln!(
            md,
            "Added latency over `direct` on the same protocol, cycle by cycle (medians of the per-cycle differences, µs), over all cycles and over the cycles in which the hypervisor stole no time during either window:\n\n| target | added p50 | added p99 | without steal: added p50 | added p99 | cycles |\n|---|--:|--:|--:|--:|--:|"
        );
        for (r, a) in added {
            let (q50, q99, n) = match a.quiet {
                Some((p50, p99, n)) => (format!("{p50:+.0}"), format!("{p99:+.0}"), n),
                None => ("–".to_owned(), "–".to_owned(), 0),
            };
            let _ = writeln!(
                md,
                "| {r} | {:+.0} | {:+.0} | {q50} | {q99} | {n} of {} |",
                a.p50, a.p99, a.cycles
            );
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "p99 of the windows in which the hypervisor stole time from a CPU, against the others (medians, µs):\n\n| target | with steal | without |\n|---|--:|--:|"
    );
    for r in s.runners() {
        let [(with, n_with), (without, n_without)] = by_steal(o, r);
        let _ = writeln!(
            md,
            "| {r} | {} ({n_with}) | {} ({n_without}) |",
            num(with, 0),
            num(without, 0)
        );
    }
    md.push('\n');
    let tails = tail_windows(o);
    if tails.is_empty() {
        md.push_str("No window's p99 was over twice its target's median p99.\n");
    } else {
        let _ = writeln!(
            md,
            "Windows whose p99 was over twice their target's median p99 (and 100 µs over it):\n\n| target | cycle | p99 µs | max µs | 100 ms slices with a request over 1 ms | generator's worst lag µs | proxy's run-queue wait ms | stolen ms per CPU |\n|---|--:|--:|--:|---|--:|--:|---|"
        );
        for w in tails {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {} |",
                w.runner,
                w.cycle,
                w.p99_us,
                w.max_us,
                stalls(w),
                w.send_lag_max_us,
                num(w.proxy_wait_ms, 1),
                w.steal_ms
                    .iter()
                    .map(|ms| format!("{ms:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
    }
    md
}

/// Checks the settings a user gave.
pub fn check(settings: &Settings) -> Result<()> {
    if settings.runners().len() < 2 {
        bail!(
            "paired needs two runners or more: two targets (--targets tern,nginx), or one over two protocols (--protocols h1,h2)"
        );
    }
    if !(settings.rate.is_finite() && settings.rate > 0.0) {
        bail!("--rate must be a positive number of requests per second");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(target: TargetName, cycle: usize, cpu: f64, p50: f64) -> Window {
        Window {
            runner: Runner {
                target,
                protocol: Protocol::Http1,
            },
            cycle,
            cpu_us_per_request: Some(cpu),
            p50_us: p50,
            p99_us: 2.0 * p50,
            failures: 0,
            max_us: 4.0 * p50,
            slice_max_us: vec![4.0 * p50; 20],
            send_lag_max_us: 5.0,
            proxy_wait_ms: Some(1.0),
            steal_ms: vec![0.0, 0.0],
        }
    }

    fn settings(targets: Vec<TargetName>, cycles: usize) -> Settings {
        Settings {
            targets,
            protocols: vec![Protocol::Http1],
            rate: 2000.0,
            cycles,
            window: Duration::from_secs(2),
            settle: Duration::from_millis(300),
            connections: 32,
            h2_streams: 10,
            response_size: 1024,
            workers: 1,
            pinning: Some((0, 1)),
            spin: false,
        }
    }

    fn outcome(targets: Vec<TargetName>, cycles: usize, windows: Vec<Window>) -> Outcome {
        Outcome {
            settings: settings(targets, cycles),
            windows,
            seconds: 1.0,
        }
    }

    #[test]
    fn turns_rotate_every_cycle() {
        let of = |c| order(3, c).collect::<Vec<_>>();
        assert_eq!(of(0), [0, 1, 2]);
        assert_eq!(of(1), [1, 2, 0]);
        assert_eq!(of(2), [2, 0, 1]);
        assert_eq!(of(3), [0, 1, 2]);
        assert_eq!(order(0, 5).count(), 0);
    }

    #[test]
    fn cycles_pair_like_with_like() {
        use TargetName::{Nginx, Tern};
        // The host drifts: cycle 2 is slow for both. Tern is lower in cycles 1 and 2.
        let mut windows = vec![
            w(Tern, 1, 40.0, 120.0),
            w(Nginx, 1, 44.0, 125.0),
            w(Tern, 2, 55.0, 170.0),
            w(Nginx, 2, 60.0, 160.0),
            w(Tern, 3, 42.0, 118.0),
            w(Nginx, 3, 41.0, 121.0),
        ];
        // A window with failures is not compared.
        windows.push(Window {
            failures: 3,
            ..w(Tern, 4, 10.0, 100.0)
        });
        windows.push(w(Nginx, 4, 50.0, 100.0));
        let o = outcome(vec![Tern, Nginx], 4, windows);
        let tern = subject(&o.settings).unwrap_or_else(|| panic!("no subject"));
        assert_eq!(tern.target, Tern);
        let p = pairs(&o, tern);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].other.target, Nginx);
        assert_eq!(p[0].at_most, (2, 3));
        // Ratios 0.909, 0.917, 1.024: the median is cycle 2's.
        let ratio = p[0].cpu_ratio.unwrap_or(f64::NAN);
        assert!((ratio - 55.0 / 60.0).abs() < 1e-9, "{ratio}");
        assert_eq!(p[0].p50_delta, Some(-3.0));
        let rows = rows(&o);
        assert_eq!(rows[0].failures, 3);
        assert_eq!(rows[1].cpu_us, Some(47.0));
        let md = markdown(&o);
        assert!(md.contains("| nginx | 0.92× | 2 of 3 | -3 | -6 |"), "{md}");
        assert!(!md.contains("Added latency over `direct`"), "{md}");
        assert!(md.contains("| tern | 41.0 | 119 | 238 | !! 3 |"), "{md}");
    }

    #[test]
    fn added_latency_is_paired_with_direct_in_the_same_cycle() {
        use TargetName::{Direct, Tern};
        // direct drifts 100 → 150 → 105 → 110; Tern sits 20-30 µs over it in each cycle.
        let mut windows = vec![
            w(Direct, 1, 0.0, 100.0),
            w(Tern, 1, 40.0, 120.0),
            w(Direct, 2, 0.0, 150.0),
            w(Tern, 2, 45.0, 180.0),
            w(Direct, 3, 0.0, 105.0),
            w(Tern, 3, 41.0, 131.0),
            w(Direct, 4, 0.0, 110.0),
            w(Tern, 4, 41.0, 132.0),
        ];
        for d in windows.iter_mut().filter(|w| w.runner.target == Direct) {
            d.cpu_us_per_request = None;
        }
        // The hypervisor stole 20 ms from CPU 1 in direct's window of cycle 2.
        windows[2].steal_ms = vec![0.0, 20.0];
        let o = outcome(vec![Direct, Tern], 4, windows);
        let tern = Runner {
            target: Tern,
            protocol: Protocol::Http1,
        };
        // p50 differences 20, 30, 26, 22; p99 (2 × p50) 40, 60, 52, 44. Without cycle 2:
        // 20, 26, 22 and 40, 52, 44.
        assert_eq!(
            added_over_direct(&o, tern),
            Some(Added {
                p50: 24.0,
                p99: 48.0,
                cycles: 4,
                quiet: Some((22.0, 44.0, 3)),
            })
        );
        let md = markdown(&o);
        assert!(
            md.contains("| tern | +24 | +48 | +22 | +44 | 3 of 4 |"),
            "{md}"
        );
        // direct has no proxy CPU: no ratio against it.
        assert!(md.contains("| direct | – | 0 of 0 |"), "{md}");
    }

    #[test]
    fn tail_windows_are_shown_with_what_the_host_did() {
        use TargetName::{Nginx, Tern};
        let mut bad = w(Tern, 3, 40.0, 120.0);
        bad.p99_us = 900.0;
        bad.max_us = 23_100.0;
        bad.slice_max_us[7] = 23_100.0;
        bad.slice_max_us[8] = 4_000.0;
        bad.steal_ms = vec![0.0, 20.0];
        let windows = vec![
            w(Tern, 1, 40.0, 120.0),
            w(Nginx, 1, 44.0, 125.0),
            w(Tern, 2, 41.0, 118.0),
            w(Nginx, 2, 45.0, 126.0),
            bad,
            // Not over twice nginx's median p99 (252 µs): not a tail.
            Window {
                p99_us: 340.0,
                ..w(Nginx, 3, 44.0, 125.0)
            },
        ];
        let o = outcome(vec![Tern, Nginx], 3, windows);
        let tails = tail_windows(&o);
        assert_eq!(tails.len(), 1);
        assert_eq!((tails[0].runner.target, tails[0].cycle), (Tern, 3));
        assert_eq!(stalls(tails[0]), "2 × > 1 ms, worst 23.1 ms at 0.75 s");
        let tern = Runner {
            target: Tern,
            protocol: Protocol::Http1,
        };
        assert_eq!(by_steal(&o, tern), [(Some(900.0), 1), (Some(238.0), 2)]);
        let md = markdown(&o);
        assert!(
            md.contains("| tern | 3 | 900 | 23100 | 2 × > 1 ms, worst 23.1 ms at 0.75 s | 5 | 1.0 | 0 / 20 |"),
            "{md}"
        );
        assert!(md.contains("| tern | 900 (1) | 238 (2) |"), "{md}");
        assert!(md.contains("| nginx | – (0) | 252 (3) |"), "{md}");
    }

    #[test]
    fn bad_settings_are_refused() {
        use TargetName::{Direct, Nginx, Tern};
        assert!(check(&settings(vec![Tern], 5)).is_err());
        // One target over two protocols is a pair too.
        let mut both = settings(vec![Tern], 5);
        both.protocols = vec![Protocol::Http1, Protocol::Http2];
        assert!(check(&both).is_ok());
        assert_eq!(
            both.runners()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["tern", "tern (h2c)"]
        );
        // `direct` is a runner (for the added latency), with no CPU of a proxy.
        assert!(check(&settings(vec![Tern, Direct], 5)).is_ok());
        let mut s = settings(vec![Tern, Nginx], 5);
        assert!(check(&s).is_ok());
        s.rate = 0.0;
        assert!(check(&s).is_err());
    }
}
