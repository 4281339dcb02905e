//! `tern`, `tern-auto`, `tern-mesh`, `tern-resilient`: the proxy under test, one or two in a
//! row, plain or with the resilience layers configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::process::{Proc, StopBy, admin_request, free_addr, probe_ok, wait_ready};
use super::{Running, Setup, Target, TargetName};
use crate::loadgen::{Endpoint, Protocol};

/// Which Tern set-up.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// One proxy, listener protocol fixed (`http1` or `http2`).
    One,
    /// One proxy, listener `auto` (detects the protocol per connection).
    Auto,
    /// Client sidecar → server sidecar → backend, both with fixed listener protocols.
    Mesh,
    /// One proxy, the route with retries, a timeout and a rate limit that never limits, the
    /// backend with outlier detection.
    Resilient,
    /// One proxy with tracing at this sampling ratio and an access log.
    Traced(f64),
}

pub struct Tern {
    bin: PathBuf,
    shape: Shape,
}

impl Tern {
    pub fn new(bin: PathBuf, shape: Shape) -> Tern {
        Tern { bin, shape }
    }
}

/// What `resilient` adds to the route: every layer configured, none firing.
const RESILIENT_ROUTE: &str = "
        timeout: 5s
        retry: { max_attempts: 3, on: gateway-error }
        rate_limit: { rate: 100000000, burst: 100000000 }";

/// What `resilient` adds to the backend.
const RESILIENT_BACKEND: &str = "
    outlier_detection: { consecutive_failures: 5 }
    circuit_breaker: { max_requests: 100000 }";

/// Where a traced hop's access log goes: not next to its config, whose directory the proxy
/// watches (every appended line would wake the watcher).
pub fn log_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    Ok(logs.join(format!("{name}-access.log")))
}

/// Which optional layers a hop has configured.
#[derive(Debug, Clone)]
pub enum Layers {
    Plain,
    /// Retry, timeout, rate-limit, breaker and outlier layers, none of which fire.
    Resilient,
    /// Tracing at `ratio` (spans exported to a collector that is down: built, queued, then
    /// dropped and counted) and an access-log line per request into `log`.
    Traced {
        ratio: f64,
        log: std::path::PathBuf,
    },
}

/// One hop's config: everything on `listen` goes to `upstream`, with `layers` configured.
pub fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    listener_protocol: &str,
    upstream: SocketAddr,
    upstream_protocol: &str,
    workers: usize,
    layers: &Layers,
) -> String {
    let (route, backend) = match layers {
        Layers::Resilient => (RESILIENT_ROUTE, RESILIENT_BACKEND),
        _ => ("", ""),
    };
    let (top, listener) = match layers {
        Layers::Traced { ratio, log } => (
            format!(
                "tracing: {{ otlp: {{ endpoint: \"http://127.0.0.1:9\" }}, sampling_ratio: {ratio} }}\n"
            ),
            format!(
                "\n    access_log: {{ path: {:?}, request_headers: [{{ name: x-user-id }}] }}",
                log.display().to_string()
            ),
        ),
        _ => (String::new(), String::new()),
    };
    format!(
        "# Written by tern-benches: a plain reverse proxy to one backend.
admin:
  address: {admin}
workers: {workers}
shutdown_grace: 2s
{top}listeners:
  - name: bench
    address: {listen}
    protocol: {listener_protocol}{listener}
    routes:
      - name: all
        backends: [{{ name: upstream }}]{route}
backends:
  - name: upstream
    protocol: {upstream_protocol}
    endpoints: [{upstream}]{backend}
"
    )
}

/// Listener and upstream protocol names in Tern's config for a run over `protocol`.
pub fn protocols(protocol: Protocol, auto: bool) -> (&'static str, &'static str) {
    match (protocol, auto) {
        (_, true) => (
            "auto",
            match protocol {
                Protocol::Http1 => "http1",
                Protocol::Http2 => "http2",
            },
        ),
        (Protocol::Http1, false) => ("http1", "http1"),
        (Protocol::Http2, false) => ("http2", "http2"),
    }
}

/// Starts one Tern process from `config_text` and waits for its admin `/ready`.
pub fn start_one(
    bin: &Path,
    name: &str,
    dir: &Path,
    config_text: &str,
    admin: SocketAddr,
    cpu: Option<usize>,
    startup: std::time::Duration,
) -> Result<Proc> {
    let config_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config_text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        config_path.display().to_string(),
    ];
    let mut proc = Proc::spawn(
        name,
        cpu,
        bin,
        &args,
        &[("RUST_LOG", "warn")],
        dir.join(format!("{name}.log")),
        StopBy::AdminShutdown(admin),
    )?;
    wait_ready(&format!("{name} /ready"), startup, &mut [&mut proc], || {
        let status = admin_request(admin, "GET", "/ready")?;
        if status.is_success() {
            Ok(())
        } else {
            bail!("/ready answered {status}")
        }
    })?;
    Ok(proc)
}

impl Target for Tern {
    fn name(&self) -> TargetName {
        match self.shape {
            Shape::One => TargetName::Tern,
            Shape::Auto => TargetName::TernAuto,
            Shape::Mesh => TargetName::TernMesh,
            Shape::Resilient => TargetName::TernResilient,
            Shape::Traced(r) if r >= 1.0 => TargetName::TernTraced,
            Shape::Traced(_) => TargetName::TernTraced1,
        }
    }

    fn check_installed(&self) -> Result<()> {
        if self.bin.is_file() {
            Ok(())
        } else {
            bail!(
                "{} does not exist (`cargo build --release -p tern-proxy`)",
                self.bin.display()
            )
        }
    }

    fn note(&self, protocol: Protocol) -> Option<String> {
        let (listener, upstream) = protocols(protocol, matches!(self.shape, Shape::Auto));
        Some(match self.shape {
            Shape::Mesh => format!(
                "two proxies (client sidecar → server sidecar), each listener `{listener}`, upstream `{upstream}`; CPU and RSS are the sum of both"
            ),
            Shape::Resilient => format!(
                "listener `{listener}`, upstream `{upstream}`; route with timeout, retries and a rate limit that never limits, backend with outlier detection"
            ),
            Shape::Traced(r) => format!(
                "listener `{listener}`, upstream `{upstream}`; tracing at {:.0} % sampling (collector down: spans built, queued, dropped and counted) and an access-log line per request to a file",
                r * 100.0
            ),
            _ => format!("listener `{listener}`, upstream `{upstream}`"),
        })
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Running> {
        let (listener, upstream) = protocols(setup.protocol, matches!(self.shape, Shape::Auto));
        let mut procs = Vec::new();
        // Server sidecar first (it is what the client sidecar forwards to).
        let mut next = setup.backend;
        let hops: &[&str] = match self.shape {
            Shape::Mesh => &["tern-server-sidecar", "tern-client-sidecar"],
            _ => &["tern"],
        };
        for name in hops {
            let (admin, listen) = (free_addr()?, free_addr()?);
            let layers = match self.shape {
                Shape::Resilient => Layers::Resilient,
                Shape::Traced(ratio) => Layers::Traced {
                    ratio,
                    log: log_path(setup.dir, name)?,
                },
                _ => Layers::Plain,
            };
            let text = config(
                admin,
                listen,
                listener,
                next,
                upstream,
                setup.workers,
                &layers,
            );
            let p = start_one(
                &self.bin,
                name,
                setup.dir,
                &text,
                admin,
                setup.cpu,
                setup.startup_timeout,
            )?;
            procs.insert(0, p);
            next = listen;
        }
        let endpoint = Endpoint::for_addr(next, "/")?;
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        wait_ready(
            &format!("a request through {}", self.name()),
            setup.startup_timeout,
            &mut refs,
            || probe_ok(&endpoint, setup.protocol),
        )?;
        Ok(Running { endpoint, procs })
    }
}
