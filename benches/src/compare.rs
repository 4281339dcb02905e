//! `compare`: every target through the same phases, rounds interleaved (A B C A B C …), with
//! CPU and memory read from /proc around each measured window.
//!
//! One case = one target over one protocol in one round: start a fresh backend, start the
//! target, then the phases on the same processes:
//!
//! 1. closed loop at `connections` (× `streams` for HTTP/2) after the warm-up: the maximum
//!    throughput, and CPU per request at full load;
//! 2. open loop at each fixed rate (default 2,000 and 10,000 req/s): intended-time latency,
//!    and CPU per request at that rate;
//!
//! then peak RSS, and stop both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http::Method;
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::loadgen::{self, Budget, Edge, Endpoint, Pace, Protocol, Spec};
use crate::measure::{self, CpuSnapshot};
use crate::targets::process::{Proc, StopBy, free_addr, probe_ok, wait_ready};
use crate::targets::{self, Programs, Running, Setup, Target, TargetName};

/// Everything a comparison is run with (recorded in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rounds: usize,
    /// Every target, in round order: all of them run over HTTP/1.1.
    pub targets: Vec<TargetName>,
    /// The targets that also run over HTTP/2 (a subset of `targets`).
    pub h2_targets: Vec<TargetName>,
    pub protocols: Vec<Protocol>,
    pub workers: usize,
    pub connections: usize,
    /// Streams per connection in the HTTP/2 runs.
    pub h2_streams: usize,
    /// Open-loop rates, req/s; CPU per request "at rate" is read at the first.
    pub rates: Vec<f64>,
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// Load before each later phase's window (the processes are warm already).
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    #[serde(with = "humantime_serde")]
    pub measure: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Open loop: the generator spins instead of sleeping between sends (`Spec::spin`).
    pub spin: bool,
    pub method: String,
    pub request_size: usize,
    pub response_size: usize,
    /// CPU of the load generator and CPU of everything else, or none when not pinned.
    pub pinning: Option<(usize, usize)>,
    pub quick: bool,
}

impl Settings {
    /// Whether `target` runs over `protocol` in this comparison.
    pub fn runs(&self, target: TargetName, protocol: Protocol) -> bool {
        self.targets.contains(&target)
            && (protocol == Protocol::Http1 || self.h2_targets.contains(&target))
    }
}

/// One phase of one case.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// `max` (closed loop) or `rate-N` (open loop at N req/s).
    pub name: String,
    pub rate: Option<f64>,
    pub connections: usize,
    pub streams: usize,
    pub load: loadgen::Report,
    /// CPU (schedstat run time; utime + stime when a thread left) of the proxy processes over
    /// the window ÷ responses in it.
    pub proxy_cpu_us_per_request: Option<f64>,
    pub proxy_cpu_percent: Option<f64>,
    pub backend_cpu_us_per_request: f64,
    pub backend_cpu_percent: f64,
    /// Time the proxy's threads were runnable but waiting for a CPU in the window (ms,
    /// summed over threads; schedstat's second field). `None` when a thread came or went.
    pub proxy_wait_ms: Option<f64>,
    /// Time the hypervisor stole from each CPU in the window (ms, by CPU number; ticks of
    /// 10 ms).
    pub steal_ms: Vec<f64>,
}

/// One target over one protocol in one round.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRun {
    pub target: TargetName,
    pub protocol: Protocol,
    pub round: usize,
    pub phases: Vec<PhaseResult>,
    /// VmHWM per proxy process (with its descendants), KiB.
    pub peak_rss_kib: Vec<(String, u64)>,
    /// It could not start, or died: the phases are missing or incomplete.
    pub error: Option<String>,
    /// Something went wrong that does not invalidate the figures (e.g. a slow stop).
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl CaseRun {
    pub fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// A target left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub target: TargetName,
    pub reason: String,
}

/// Everything one comparison produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub settings: Settings,
    pub skipped: Vec<Skipped>,
    pub runs: Vec<CaseRun>,
    /// target → how it was set up, per protocol.
    pub notes: Vec<(TargetName, Protocol, String)>,
    pub seconds: f64,
}

pub fn phase_name(rate: Option<f64>) -> String {
    match rate {
        None => "max".to_owned(),
        Some(r) => format!("rate-{r}"),
    }
}

/// Runs the comparison. The calling thread must already be pinned (it runs the generator).
pub fn run(settings: &Settings, programs: &Programs, scratch: &Path) -> Result<Outcome> {
    let started = Instant::now();
    let mut skipped = Vec::new();
    let mut active: Vec<Box<dyn Target>> = Vec::new();
    for &name in &settings.targets {
        let target = targets::make(name, programs);
        match target.check_installed() {
            Ok(()) => active.push(target),
            Err(e) => {
                eprintln!("skipping {name}: {e:#}");
                skipped.push(Skipped {
                    target: name,
                    reason: format!("{e:#}"),
                });
            }
        }
    }
    let notes = active
        .iter()
        .flat_map(|t| {
            settings
                .protocols
                .iter()
                .filter(|&&p| settings.runs(t.name(), p))
                .filter_map(|&p| t.note(p).map(|n| (t.name(), p, n)))
        })
        .collect();

    let backend_bin = std::env::current_exe().context("finding this program's path")?;
    let per_round: usize = settings
        .protocols
        .iter()
        .map(|&p| active.iter().filter(|t| settings.runs(t.name(), p)).count())
        .sum();
    let total = settings.rounds * per_round;
    let mut runs = Vec::with_capacity(total);
    for round in 1..=settings.rounds {
        for &protocol in &settings.protocols {
            for target in active.iter().filter(|t| settings.runs(t.name(), protocol)) {
                eprintln!(
                    "[{}/{total}] round {round}: {} over {} ...",
                    runs.len() + 1,
                    target.name(),
                    protocol.label()
                );
                let run = run_case(
                    target.as_ref(),
                    protocol,
                    round,
                    settings,
                    &backend_bin,
                    scratch,
                );
                if let Some(e) = &run.error {
                    eprintln!("  !! {}: {e}", target.name());
                }
                for w in &run.warnings {
                    eprintln!("  warning: {w}");
                }
                runs.push(run);
            }
        }
    }
    // A target that never started is a skip, with its reason, rather than a row of blanks.
    for target in &active {
        let name = target.name();
        let mine: Vec<&CaseRun> = runs.iter().filter(|r| r.target == name).collect();
        if !mine.is_empty() && mine.iter().all(|r| r.phases.is_empty()) {
            let reason = mine
                .iter()
                .find_map(|r| r.error.clone())
                .unwrap_or_else(|| "no phase completed".to_owned());
            skipped.push(Skipped {
                target: name,
                reason: format!("could not be started: {reason}"),
            });
        }
    }
    Ok(Outcome {
        settings: settings.clone(),
        skipped,
        runs,
        notes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_case(
    target: &dyn Target,
    protocol: Protocol,
    round: usize,
    settings: &Settings,
    backend_bin: &Path,
    scratch: &Path,
) -> CaseRun {
    let started = Instant::now();
    let mut run = CaseRun {
        target: target.name(),
        protocol,
        round,
        phases: Vec::new(),
        peak_rss_kib: Vec::new(),
        error: None,
        warnings: Vec::new(),
        seconds: 0.0,
    };
    if let Err(e) = try_case(target, protocol, settings, backend_bin, scratch, &mut run) {
        run.error = Some(format!("{e:#}"));
    }
    run.seconds = started.elapsed().as_secs_f64();
    run
}

fn try_case(
    target: &dyn Target,
    protocol: Protocol,
    settings: &Settings,
    backend_bin: &Path,
    scratch: &Path,
    run: &mut CaseRun,
) -> Result<()> {
    let dir = scratch.join(format!(
        "round{}-{}-{}",
        run.round,
        match protocol {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
        },
        target.name()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cpu = settings.pinning.map(|(_, other)| other);
    let startup_timeout = Duration::from_secs(20);

    let (mut backend, backend_addr) = start_backend(
        backend_bin,
        &dir,
        cpu,
        settings.response_size,
        protocol,
        startup_timeout,
    )?;
    let setup = Setup {
        dir: &dir,
        protocol,
        workers: settings.workers,
        cpu,
        backend: backend_addr,
        startup_timeout,
    };
    // Ports are picked free but bound later: another process may take one in between, so a
    // failed start is tried once more with new ports.
    let mut running = match target.start(&setup) {
        Ok(r) => r,
        Err(first) => {
            run.warnings
                .push(format!("first start failed, retrying: {first:#}"));
            target.start(&setup)?
        }
    };

    let result = phases(settings, protocol, &mut running, &mut backend, run);
    run.peak_rss_kib = running.peak_rss_kib();
    if let Err(e) = running.stop() {
        run.warnings.push(format!("{e:#}"));
    }
    if let Err(e) = backend.stop(Duration::from_secs(5)) {
        run.warnings.push(format!("backend: {e:#}"));
    }
    // A traced run's access log (about 250 MB at full load) goes now, not with the scratch
    // directory at the end: a full compare would hold several GB of them on disk, and each
    // traced run would fill the page cache from memory never touched before (on a fresh VM
    // each such page costs the host a fault inside the proxy's write; with dd, 3-6× the sys
    // time of pages used and freed before). Freed, the next traced run reuses those pages, as
    // a node that rotates its logs does.
    let logs = dir.join("logs");
    if logs.exists()
        && let Err(e) = std::fs::remove_dir_all(&logs)
    {
        run.warnings
            .push(format!("removing {}: {e}", logs.display()));
    }
    result
}

/// Starts the backend (this same program, `backend` subcommand) and waits until it answers.
pub fn start_backend(
    bin: &Path,
    dir: &Path,
    cpu: Option<usize>,
    response_size: usize,
    protocol: Protocol,
    timeout: Duration,
) -> Result<(Proc, std::net::SocketAddr)> {
    let mut last = None;
    for _ in 0..2 {
        let addr = free_addr()?;
        let args = vec![
            "backend".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
            "--response-size".to_owned(),
            response_size.to_string(),
        ];
        let mut proc = Proc::spawn(
            "backend",
            cpu,
            bin,
            &args,
            &[],
            dir.join("backend.log"),
            StopBy::Signal(Signal::SIGTERM),
        )?;
        let endpoint = Endpoint::for_addr(addr, "/")?;
        match wait_ready("the backend", timeout, &mut [&mut proc], || {
            probe_ok(&endpoint, protocol)
        }) {
            Ok(()) => return Ok((proc, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("the backend did not start")))
}

fn phases(
    settings: &Settings,
    protocol: Protocol,
    running: &mut Running,
    backend: &mut Proc,
    run: &mut CaseRun,
) -> Result<()> {
    let streams = match protocol {
        Protocol::Http1 => 1,
        Protocol::Http2 => settings.h2_streams,
    };
    let method = Method::from_bytes(settings.method.as_bytes())
        .with_context(|| format!("bad method {:?}", settings.method))?;
    let mut plan = vec![(None, settings.warmup)];
    plan.extend(settings.rates.iter().map(|&r| (Some(r), settings.settle)));
    for (rate, warmup) in plan {
        let spec = Spec {
            endpoint: running.endpoint.clone(),
            protocol,
            connections: settings.connections,
            streams,
            pace: match rate {
                None => Pace::Closed,
                Some(rate) => Pace::Open { rate },
            },
            budget: Budget::Timed {
                warmup,
                measure: settings.measure,
            },
            method: method.clone(),
            request_body: settings.request_size,
            timeout: settings.timeout,
            grace: settings.grace,
            spin: settings.spin,
            headers: Vec::new(),
        };
        let phase = measure_phase(&spec, rate, running, backend)?;
        let l = &phase.load;
        if l.failures() > 0 {
            eprintln!(
                "  !! {}: {} non-2xx, {} transport errors, {} timeouts, {} unsent{}",
                phase.name,
                l.non_2xx,
                l.transport_errors,
                l.timeouts,
                l.unsent,
                l.first_error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(" (first: {e})"))
            );
        }
        run.phases.push(phase);
        running
            .check_alive()
            .context("the target died during the run")?;
        backend
            .check_alive()
            .context("the backend died during the run")?;
    }
    Ok(())
}

pub fn measure_phase(
    spec: &Spec,
    rate: Option<f64>,
    running: &Running,
    backend: &Proc,
) -> Result<PhaseResult> {
    let proxy_pids = running.pids();
    let backend_pids = [backend.pid()];
    let mut proxy = (None, None);
    let mut back = (None, None);
    let mut steal = (Vec::new(), Vec::new());
    let load = loadgen::run(spec, |edge| match edge {
        Edge::Start => {
            proxy.0 = Some(CpuSnapshot::take(&proxy_pids));
            back.0 = Some(CpuSnapshot::take(&backend_pids));
            steal.0 = measure::steal_ticks().unwrap_or_default();
        }
        Edge::End => {
            proxy.1 = Some(CpuSnapshot::take(&proxy_pids));
            back.1 = Some(CpuSnapshot::take(&backend_pids));
            steal.1 = measure::steal_ticks().unwrap_or_default();
        }
    })?;
    let tick_ms = 1e3 / measure::clock_ticks_per_sec() as f64;
    let steal_ms = steal
        .1
        .iter()
        .zip(&steal.0)
        .map(|(end, start)| end.saturating_sub(*start) as f64 * tick_ms)
        .collect();
    let secs = |pair: &(Option<CpuSnapshot>, Option<CpuSnapshot>)| match pair {
        (Some(a), Some(b)) => a.cpu_secs_until(b),
        _ => 0.0,
    };
    let completed = load.completed().max(1) as f64;
    let window = load.window_secs.max(1e-9);
    let (proxy_secs, backend_secs) = (secs(&proxy), secs(&back));
    let has_proxy = !proxy_pids.is_empty();
    Ok(PhaseResult {
        name: phase_name(rate),
        rate,
        connections: spec.connections,
        streams: spec.streams,
        proxy_cpu_us_per_request: has_proxy.then(|| proxy_secs * 1e6 / completed),
        proxy_cpu_percent: has_proxy.then(|| 100.0 * proxy_secs / window),
        backend_cpu_us_per_request: backend_secs * 1e6 / completed,
        backend_cpu_percent: 100.0 * backend_secs / window,
        proxy_wait_ms: match &proxy {
            (Some(a), Some(b)) if has_proxy => a.wait_secs_until(b).map(|s| s * 1e3),
            _ => None,
        },
        steal_ms,
        load,
    })
}

/// `benches/results/` in the source tree.
pub fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}
