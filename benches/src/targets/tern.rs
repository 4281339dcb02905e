//! `tern`, `tern-auto`, `tern-mesh`, `tern-resilient`, `tern-traced`, `tern-traced-1pct`,
//! `tern-sampled-1pct`: the proxy under test, one or two in a row, plain or with the
//! resilience or observability layers configured.

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
    /// `One`, from the other build of an A/B.
    Base,
    /// One proxy, listener `auto` (detects the protocol per connection).
    Auto,
    /// One proxy, listener protocol fixed, upstream always `http1`.
    H1Upstream,
    /// Client sidecar → server sidecar → backend, both with fixed listener protocols.
    Mesh,
    /// One proxy, the route with retries, a timeout and a rate limit that never limits, the
    /// backend with outlier detection.
    Resilient,
    /// One proxy with tracing and an access log, each sampled as given.
    Traced(Sampling),
}

/// What a traced set-up records: the share of new traces sampled and the share of requests
/// given an access-log line, each 0 to 1 (the two are drawn independently by the proxy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub tracing: f64,
    pub access_log: f64,
}

impl Sampling {
    /// The sampling of a traced target; `None` for the others.
    pub fn of(name: TargetName) -> Option<Sampling> {
        let (tracing, access_log) = match name {
            // Everything recorded.
            TargetName::TernTraced => (1.0, 1.0),
            // Tracing sampled, every request logged.
            TargetName::TernTraced1 => (0.01, 1.0),
            // Both sampled at 1 %.
            TargetName::TernSampled1 => (0.01, 0.01),
            _ => return None,
        };
        Some(Sampling {
            tracing,
            access_log,
        })
    }

    /// The target this sampling is (the inverse of [`Sampling::of`]).
    fn target(self) -> TargetName {
        if self.tracing >= 1.0 {
            TargetName::TernTraced
        } else if self.access_log >= 1.0 {
            TargetName::TernTraced1
        } else {
            TargetName::TernSampled1
        }
    }
}

/// A ratio as a percentage for notes: `100 %`, `1 %`, `0.5 %`.
fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0} %")
    } else {
        format!("{p} %")
    }
}

pub struct Tern {
    /// The build it runs ([`super::Programs::tern_for`]), or why there is none.
    bin: Result<PathBuf, String>,
    shape: Shape,
}

impl Tern {
    pub fn new(bin: Result<&Path>, shape: Shape) -> Tern {
        Tern {
            bin: bin.map(Path::to_path_buf).map_err(|e| format!("{e:#}")),
            shape,
        }
    }

    fn bin(&self) -> Result<&Path> {
        self.bin.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
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
    /// Tracing at `sampling.tracing` (spans exported to a collector that is down: built,
    /// queued, then dropped and counted) and an access log into `log` with a line for the
    /// `sampling.access_log` share of requests.
    Traced {
        sampling: Sampling,
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
        Layers::Traced { sampling, log } => (
            format!(
                "tracing: {{ otlp: {{ endpoint: \"http://127.0.0.1:9\" }}, sampling_ratio: {} }}\n",
                sampling.tracing
            ),
            format!(
                "\n    access_log: {{ path: {:?}, sampling_ratio: {}, request_headers: [{{ name: x-user-id }}] }}",
                log.display().to_string(),
                sampling.access_log
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

/// Listener and upstream protocol names in Tern's config for a run of `shape` over
/// `protocol`.
pub fn protocols(protocol: Protocol, shape: Shape) -> (&'static str, &'static str) {
    let fixed = match protocol {
        Protocol::Http1 => "http1",
        Protocol::Http2 => "http2",
    };
    match shape {
        Shape::Auto => ("auto", fixed),
        Shape::H1Upstream => (fixed, "http1"),
        _ => (fixed, fixed),
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
            Shape::Base => TargetName::TernBase,
            Shape::Auto => TargetName::TernAuto,
            Shape::H1Upstream => TargetName::TernH1Upstream,
            Shape::Mesh => TargetName::TernMesh,
            Shape::Resilient => TargetName::TernResilient,
            Shape::Traced(s) => s.target(),
        }
    }

    fn check_installed(&self) -> Result<()> {
        let bin = self.bin()?;
        if bin.is_file() {
            Ok(())
        } else {
            bail!(
                "{} does not exist (`cargo build --release -p tern-proxy`)",
                bin.display()
            )
        }
    }

    fn note(&self, protocol: Protocol) -> Option<String> {
        let (listener, upstream) = protocols(protocol, self.shape);
        Some(match self.shape {
            Shape::Mesh => format!(
                "two proxies (client sidecar → server sidecar), each listener `{listener}`, upstream `{upstream}`; CPU and RSS are the sum of both"
            ),
            Shape::Resilient => format!(
                "listener `{listener}`, upstream `{upstream}`; route with timeout, retries and a rate limit that never limits, backend with outlier detection"
            ),
            Shape::Traced(s) => format!(
                "listener `{listener}`, upstream `{upstream}`; tracing at {} sampling (collector down: spans built, queued, dropped and counted) and an access log to a file, {}",
                percent(s.tracing),
                if s.access_log >= 1.0 {
                    "a line per request".to_owned()
                } else {
                    format!("{} of requests logged", percent(s.access_log))
                }
            ),
            _ => format!("listener `{listener}`, upstream `{upstream}`"),
        })
    }

    fn start(&self, setup: &Setup<'_>) -> Result<Running> {
        let (listener, upstream) = protocols(setup.protocol, self.shape);
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
                Shape::Traced(sampling) => Layers::Traced {
                    sampling,
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
                self.bin()?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proxy::config::{Config, validate};

    /// Each traced target's config is one the proxy accepts, with the sampling it is named for.
    #[test]
    fn traced_configs_parse_with_their_sampling() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        for name in TargetName::ALL {
            let Some(sampling) = Sampling::of(name) else {
                continue;
            };
            assert_eq!(sampling.target(), name);
            let layers = Layers::Traced {
                sampling,
                log: PathBuf::from("/tmp/tern-benches-test/access.log"),
            };
            let text = config(addr(1), addr(2), "http1", addr(3), "http1", 1, &layers);
            let parsed = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            validate(&parsed).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            let tracing = parsed.tracing.as_ref().expect("tracing configured");
            assert_eq!(tracing.sampling_ratio, sampling.tracing, "{name}");
            let log = parsed.listeners[0]
                .access_log
                .as_ref()
                .expect("access log configured");
            assert_eq!(log.sampling_ratio, sampling.access_log, "{name}");
        }
        let of = |n| Sampling::of(n).map(|s| (s.tracing, s.access_log));
        assert_eq!(of(TargetName::TernTraced), Some((1.0, 1.0)));
        assert_eq!(of(TargetName::TernTraced1), Some((0.01, 1.0)));
        assert_eq!(of(TargetName::TernSampled1), Some((0.01, 0.01)));
        assert_eq!(of(TargetName::Tern), None);
    }

    /// Over h2c, `tern-h1-upstream` speaks HTTP/2 to the client and HTTP/1.1 to the backend,
    /// as nginx does; every other shape keeps one protocol, or detects it (`auto`).
    #[test]
    fn listener_and_upstream_protocols_per_shape() {
        use Protocol::{Http1, Http2};
        assert_eq!(protocols(Http2, Shape::H1Upstream), ("http2", "http1"));
        assert_eq!(protocols(Http1, Shape::H1Upstream), ("http1", "http1"));
        assert_eq!(protocols(Http2, Shape::One), ("http2", "http2"));
        assert_eq!(protocols(Http2, Shape::Mesh), ("http2", "http2"));
        assert_eq!(protocols(Http2, Shape::Auto), ("auto", "http2"));
        assert_eq!(protocols(Http1, Shape::Auto), ("auto", "http1"));
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (listener, upstream) = protocols(Http2, Shape::H1Upstream);
        let text = config(
            addr(1),
            addr(2),
            listener,
            addr(3),
            upstream,
            1,
            &Layers::Plain,
        );
        let parsed = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        validate(&parsed).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            (parsed.listeners[0].protocol, parsed.backends[0].protocol),
            (
                tern_proxy::config::ListenerProtocol::Http2,
                tern_proxy::config::UpstreamProtocol::Http1
            ),
            "{text}"
        );
        let target = Tern::new(Err(anyhow::anyhow!("unused")), Shape::H1Upstream);
        assert_eq!(target.name(), TargetName::TernH1Upstream);
        assert_eq!(
            target.note(Http2).as_deref(),
            Some("listener `http2`, upstream `http1`")
        );
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(1.0), "100 %");
        assert_eq!(percent(0.01), "1 %");
        assert_eq!(percent(0.005), "0.5 %");
    }
}
