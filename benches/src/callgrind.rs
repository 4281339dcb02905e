//! `instructions`: user-space instructions per request under `valgrind --tool=callgrind`,
//! a figure machine noise does not move.
//!
//! Each case runs twice, fresh processes each time: once with the load (warm-up requests,
//! then N measured requests) and once with only the warm-up (0 by default: startup and
//! shutdown only). (Ir of the first − Ir of the second) ÷ N is the cost of a request. Readiness
//! is read from /proc/net/tcp, not asked over HTTP, so the process does the same work in both
//! runs apart from the requests. Tern is stopped with `POST /shutdown` on its admin port and
//! nginx with SIGQUIT, HAProxy with SIGUSR1 (graceful: callgrind writes its output at exit).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http::{HeaderName, HeaderValue, Method};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::compare::start_backend;
use crate::loadgen::{self, Budget, Endpoint, Pace, Protocol, Spec};
use crate::measure::is_listening;
use crate::targets::process::{Proc, StopBy, find_program, free_addr, wait_ready};
use crate::targets::{Programs, TargetName};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub requests: u64,
    pub warmup_requests: u64,
    pub connections: usize,
    pub protocol: Protocol,
    /// Streams per connection over HTTP/2.
    pub h2_streams: usize,
    pub response_size: usize,
    pub workers: usize,
    /// Also nginx and HAProxy.
    pub peers: bool,
    /// Only these cases, when not empty.
    pub cases: Vec<TargetName>,
    /// Also simulate the caches (`--cache-sim=yes`) and report L1 misses per request.
    pub cache_sim: bool,
    /// Sent on every request besides `Host`.
    #[serde(serialize_with = "header_lines")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The headers as `name: value` lines (values as sent, bytes past ASCII replaced).
fn header_lines<S: serde::Serializer>(
    headers: &[(HeaderName, HeaderValue)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(
        headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes()))),
    )
}

/// One process's count in one case.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub case: TargetName,
    pub process: String,
    /// Ir with warm-up + N requests.
    pub ir_loaded: u64,
    /// Ir with the warm-up only.
    pub ir_baseline: u64,
    pub requests: u64,
    pub ir_per_request: f64,
    /// With `--cache-sim`: simulated L1 instruction-cache misses per request.
    pub i1_misses_per_request: Option<f64>,
    /// With `--cache-sim`: simulated L1 data-cache read misses per request.
    pub d1_read_misses_per_request: Option<f64>,
}

/// A process's totals: instructions, and the simulated L1 misses when the caches were.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Totals {
    ir: u64,
    i1_misses: Option<u64>,
    d1_read_misses: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub settings: Settings,
    pub measurements: Vec<Measurement>,
    pub skipped: Vec<(TargetName, String)>,
}

/// A process under callgrind and where its counts go.
struct Hop {
    proc: Proc,
    out: PathBuf,
}

pub fn run(settings: &Settings, programs: &Programs, scratch: &Path) -> Result<Outcome> {
    let valgrind = find_program("valgrind")
        .context("valgrind is not installed (`apt-get install -y valgrind`)")?;
    if settings.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let backend_bin = std::env::current_exe().context("finding this program's path")?;
    let mut cases = vec![
        TargetName::Relay,
        TargetName::Tern,
        TargetName::TernResilient,
        TargetName::TernTraced,
        TargetName::TernTraced1,
        TargetName::TernSampled1,
        TargetName::TernMesh,
    ];
    if settings.peers {
        cases.extend([TargetName::Nginx, TargetName::Haproxy]);
    }
    if !settings.cases.is_empty() {
        cases = settings.cases.clone();
    }
    let cases = TargetName::with_base(cases, programs.tern_base.is_some());
    let mut measurements = Vec::new();
    let mut skipped = Vec::new();
    for case in cases {
        eprintln!("callgrind: {case} ...");
        let counts = |n: u64, label: &str| -> Result<Vec<(String, Totals)>> {
            let dir = scratch.join(format!("{case}-{label}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            one_run(case, n, settings, programs, &valgrind, &backend_bin, &dir)
        };
        let result = counts(settings.warmup_requests, "baseline").and_then(|base| {
            let loaded = counts(settings.warmup_requests + settings.requests, "loaded")?;
            Ok((base, loaded))
        });
        match result {
            Ok((base, loaded)) => {
                let per_request = |loaded: u64, base: u64| {
                    (loaded as f64 - base as f64) / settings.requests as f64
                };
                let misses = |l: Option<u64>, b: Option<u64>| Some(per_request(l?, b?));
                for ((process, b), (_, l)) in base.into_iter().zip(loaded) {
                    measurements.push(Measurement {
                        case,
                        process,
                        ir_loaded: l.ir,
                        ir_baseline: b.ir,
                        requests: settings.requests,
                        ir_per_request: per_request(l.ir, b.ir),
                        i1_misses_per_request: misses(l.i1_misses, b.i1_misses),
                        d1_read_misses_per_request: misses(l.d1_read_misses, b.d1_read_misses),
                    });
                }
            }
            Err(e) if case.is_peer() => {
                eprintln!("  skipping {case}: {e:#}");
                skipped.push((case, format!("{e:#}")));
            }
            Err(e) => return Err(e.context(format!("measuring {case}"))),
        }
    }
    Ok(Outcome {
        settings: settings.clone(),
        measurements,
        skipped,
    })
}

/// Starts the case's proxies under callgrind, sends `requests` (warm-up included), stops
/// them gracefully and reads each one's total Ir.
fn one_run(
    case: TargetName,
    requests: u64,
    settings: &Settings,
    programs: &Programs,
    valgrind: &Path,
    backend_bin: &Path,
    dir: &Path,
) -> Result<Vec<(String, Totals)>> {
    let timeout = Duration::from_secs(120);
    let (mut backend, backend_addr) = start_backend(
        backend_bin,
        dir,
        None,
        settings.response_size,
        settings.protocol,
        Duration::from_secs(20),
    )?;
    let (mut hops, front) = start_hops(case, settings, programs, valgrind, backend_addr, dir)?;

    if requests > 0 {
        let spec = Spec {
            endpoint: Endpoint::for_addr(front, "/")?,
            protocol: settings.protocol,
            connections: settings.connections,
            streams: match settings.protocol {
                Protocol::Http1 => 1,
                Protocol::Http2 => settings.h2_streams,
            },
            pace: Pace::Closed,
            budget: Budget::Requests(requests),
            method: Method::GET,
            request_body: 0,
            timeout: Duration::from_secs(60),
            grace: Duration::ZERO,
            spin: false,
            headers: settings.headers.clone(),
        };
        let report = loadgen::run(&spec, |_| {})?;
        if report.failures() > 0 || report.ok != requests {
            bail!(
                "{case} under callgrind: {} of {requests} requests succeeded ({} non-2xx, {} transport errors, {} timeouts; {})",
                report.ok,
                report.non_2xx,
                report.transport_errors,
                report.timeouts,
                report.first_error.as_deref().unwrap_or("no error recorded")
            );
        }
    }
    // The load generator's connections are closed now (its runtime is gone), so graceful
    // shutdowns do not wait for them.
    let mut counts = Vec::new();
    for hop in &mut hops {
        hop.proc.stop(timeout)?;
        counts.push((hop.proc.name.clone(), totals(&hop.out)?));
    }
    let _ = backend.stop(Duration::from_secs(5));
    Ok(counts)
}

fn callgrind_args(settings: &Settings, out: &Path, bin: &Path, args: &[String]) -> Vec<String> {
    let mut v = vec![
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    if settings.cache_sim {
        v.push("--cache-sim=yes".to_owned());
    }
    v.push(bin.display().to_string());
    v.extend_from_slice(args);
    v
}

/// Waits until every address listens and, when given, `written` exists and is not empty.
fn wait_listening(
    proc: &mut Proc,
    addrs: &[SocketAddr],
    written: Option<&Path>,
    timeout: Duration,
) -> Result<()> {
    let what = format!("{} listening under callgrind", proc.name);
    wait_ready(&what, timeout, &mut [proc], || {
        for &a in addrs {
            if !is_listening(a)? {
                bail!("nothing listens on {a} yet");
            }
        }
        if let Some(path) = written
            && std::fs::metadata(path).map_or(0, |m| m.len()) == 0
        {
            bail!("{} not written yet", path.display());
        }
        Ok(())
    })
}

/// Where a case's processes run: under `valgrind`, their files in `dir`.
struct Under<'a> {
    settings: &'a Settings,
    valgrind: &'a Path,
    dir: &'a Path,
}

impl Under<'_> {
    /// Starts `bin args` under callgrind as `name` (counts to `callgrind.NAME.out`, output to
    /// `NAME.log`) and waits until it listens on `addrs` and has written `written`, if given.
    fn hop(
        &self,
        name: &str,
        bin: &Path,
        args: &[String],
        stop: StopBy,
        addrs: &[SocketAddr],
        written: Option<&Path>,
    ) -> Result<Hop> {
        let out = self.dir.join(format!("callgrind.{name}.out"));
        let args = callgrind_args(self.settings, &out, bin, args);
        let mut proc = Proc::spawn(
            name,
            None,
            self.valgrind,
            &args,
            &[("RUST_LOG", "warn")],
            self.dir.join(format!("{name}.log")),
            stop,
        )?;
        wait_listening(&mut proc, addrs, written, Duration::from_secs(120))?;
        Ok(Hop { proc, out })
    }
}

/// Starts the case's processes (the hop the client talks to first in the list) and returns
/// them with the front address.
fn start_hops(
    case: TargetName,
    settings: &Settings,
    programs: &Programs,
    valgrind: &Path,
    backend: SocketAddr,
    dir: &Path,
) -> Result<(Vec<Hop>, SocketAddr)> {
    let under = Under {
        settings,
        valgrind,
        dir,
    };
    let mut hops: Vec<Hop> = Vec::new();
    match case {
        TargetName::Tern
        | TargetName::TernBase
        | TargetName::TernMesh
        | TargetName::TernH1Upstream
        | TargetName::TernResilient
        | TargetName::TernTraced
        | TargetName::TernTraced1
        | TargetName::TernSampled1 => {
            let names: &[&str] = if case == TargetName::TernMesh {
                &["tern-server-sidecar", "tern-client-sidecar"]
            } else {
                &["tern"]
            };
            let shape = if case == TargetName::TernH1Upstream {
                crate::targets::TernShape::H1Upstream
            } else {
                crate::targets::TernShape::One
            };
            let (listener, upstream) = crate::targets::tern_protocols(settings.protocol, shape);
            let mut next = backend;
            for name in names {
                let (admin, listen) = (free_addr()?, free_addr()?);
                let cfg = dir.join(format!("{name}.yaml"));
                let text = crate::targets::tern_config(
                    admin,
                    listen,
                    listener,
                    next,
                    upstream,
                    settings.workers,
                    &match (case, crate::targets::TernSampling::of(case)) {
                        (TargetName::TernResilient, _) => crate::targets::TernLayers::Resilient,
                        (_, Some(sampling)) => crate::targets::TernLayers::Traced {
                            sampling,
                            log: crate::targets::tern_log_path(dir, name)?,
                        },
                        _ => crate::targets::TernLayers::Plain,
                    },
                );
                std::fs::write(&cfg, text).with_context(|| format!("writing {}", cfg.display()))?;
                let hop = under.hop(
                    name,
                    programs.tern_for(case)?,
                    &[
                        "run".to_owned(),
                        "--config".to_owned(),
                        cfg.display().to_string(),
                    ],
                    StopBy::AdminShutdown(admin),
                    &[admin, listen],
                    None,
                )?;
                hops.insert(0, hop);
                next = listen;
            }
            Ok((hops, next))
        }
        TargetName::Nginx => {
            let bin = programs
                .nginx
                .clone()
                .context("nginx is not installed (`apt-get install -y nginx-light`)")?;
            let listen = free_addr()?;
            let cfg = dir.join("nginx.conf");
            let text = crate::targets::nginx_config(
                dir,
                listen,
                backend,
                settings.protocol,
                settings.workers,
                false,
            );
            std::fs::write(&cfg, text).with_context(|| format!("writing {}", cfg.display()))?;
            // nginx binds its sockets before it installs its signal handlers, and a SIGQUIT
            // in between is lost when the harness was started with it ignored (as background
            // jobs of a non-interactive shell are): the pid file comes after the handlers.
            hops.push(under.hop(
                "nginx",
                &bin,
                &crate::targets::nginx_args(dir, &cfg),
                StopBy::Signal(Signal::SIGQUIT),
                &[listen],
                Some(&dir.join("nginx.pid")),
            )?);
            Ok((hops, listen))
        }
        TargetName::Haproxy => {
            let bin = programs
                .haproxy
                .clone()
                .context("HAProxy is not installed (`apt-get install -y haproxy`)")?;
            let listen = free_addr()?;
            let cfg = dir.join("haproxy.cfg");
            let text = crate::targets::haproxy_config(
                listen,
                backend,
                settings.protocol,
                settings.workers,
            );
            std::fs::write(&cfg, text).with_context(|| format!("writing {}", cfg.display()))?;
            hops.push(under.hop(
                "haproxy",
                &bin,
                &["-db".to_owned(), "-f".to_owned(), cfg.display().to_string()],
                StopBy::Signal(Signal::SIGUSR1),
                &[listen],
                None,
            )?);
            Ok((hops, listen))
        }
        TargetName::Relay => {
            let bin = std::env::current_exe().context("finding this program's path")?;
            let listen = free_addr()?;
            hops.push(under.hop(
                "relay",
                &bin,
                &crate::targets::relay_args(listen, backend, settings.workers),
                StopBy::Signal(Signal::SIGTERM),
                &[listen],
                None,
            )?);
            Ok((hops, listen))
        }
        other => bail!("{other} is not measured under callgrind"),
    }
}

/// The totals in a callgrind output file (`totals:` or `summary:` line, named by `events:`).
fn totals(path: &Path) -> Result<Totals> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (did the process exit cleanly?)", path.display()))?;
    parse_totals(&text).with_context(|| format!("no totals in {}", path.display()))
}

fn parse_totals(text: &str) -> Option<Totals> {
    let find = |key: &str| text.lines().rev().find_map(|l| l.strip_prefix(key));
    let events: Vec<&str> = find("events:")?.split_whitespace().collect();
    let values: Vec<u64> = find("totals:")
        .or_else(|| find("summary:"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // A count callgrind leaves off at the end of a line is zero.
    let event = |name: &str| {
        let i = events.iter().position(|e| *e == name)?;
        Some(values.get(i).copied().unwrap_or(0))
    };
    Some(Totals {
        ir: event("Ir")?,
        i1_misses: event("I1mr"),
        d1_read_misses: event("D1mr"),
    })
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

pub fn markdown(o: &Outcome) -> String {
    let s = &o.settings;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Tern benchmark: instructions per request (callgrind)\n\n{} requests after {} warm-up, {}, GET{}, {} B responses, {} worker(s). Ir/request = (Ir with the requests − Ir without) ÷ {}; user-space instructions of the proxy process, libraries included.{}\n",
        s.requests,
        s.warmup_requests,
        match s.protocol {
            Protocol::Http1 => format!("{} HTTP/1.1 keep-alive connections", s.connections),
            Protocol::Http2 => format!(
                "{} h2c connections × {} streams (HTTP/2 to the backend too; nginx's upstream is HTTP/1.1)",
                s.connections, s.h2_streams
            ),
        },
        if s.headers.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
            format!(" with {}", names.join(", "))
        },
        s.response_size,
        s.workers,
        s.requests,
        if s.cache_sim {
            " Misses are valgrind's simulated first-level caches (`--cache-sim=yes`: 32 KiB, 8-way, 64 B lines unless the host says otherwise), per request the same way: they tell how densely the hot path sits in the instruction cache, which decides its cost when it runs cold (at low rates)."
        } else {
            ""
        }
    );
    let sim = s.cache_sim;
    let _ = writeln!(
        md,
        "| case | process | Ir with requests | Ir without | Ir/request |{}\n|---|---|--:|--:|--:|{}",
        if sim {
            " I1 misses/request | D1 read misses/request |"
        } else {
            ""
        },
        if sim { "--:|--:|" } else { "" }
    );
    // The miss columns of a row, when the caches were simulated.
    let misses = |i1: Option<f64>, d1: Option<f64>| {
        let cell = |x: Option<f64>| x.map_or_else(|| "–".to_owned(), thousands);
        if sim {
            format!(" {} | {} |", cell(i1), cell(d1))
        } else {
            String::new()
        }
    };
    for (i, m) in o.measurements.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |{}",
            m.case,
            m.process,
            thousands(m.ir_loaded as f64),
            thousands(m.ir_baseline as f64),
            thousands(m.ir_per_request),
            misses(m.i1_misses_per_request, m.d1_read_misses_per_request)
        );
        // After a case with several processes, their sum.
        let last_of_case = o.measurements.get(i + 1).is_none_or(|n| n.case != m.case);
        let of_case: Vec<&Measurement> =
            o.measurements.iter().filter(|x| x.case == m.case).collect();
        if last_of_case && of_case.len() > 1 {
            let sum = |f: fn(&Measurement) -> Option<f64>| -> Option<f64> {
                of_case.iter().map(|x| f(x)).sum()
            };
            let _ = writeln!(
                md,
                "| {} | all {} proxies | | | {} |{}",
                m.case,
                of_case.len(),
                thousands(sum(|x| Some(x.ir_per_request)).unwrap_or(0.0)),
                misses(
                    sum(|x| x.i1_misses_per_request),
                    sum(|x| x.d1_read_misses_per_request)
                )
            );
        }
    }
    md.push('\n');
    for (t, why) in &o.skipped {
        let _ = writeln!(md, "- skipped {t}: {why}");
    }
    let _ = writeln!(
        md,
        "Reference (measured on this kind of machine before Tern): a minimal hyper proxy ≈ 31k with hyper-util's legacy client, ≈ 24k with a hand-driven pool; nginx ≈ 21.5k."
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_totals() {
        let text = "version: 1\nevents: Ir\nfl=x\n0 5\ntotals: 123456\n";
        let plain = Totals {
            ir: 123_456,
            i1_misses: None,
            d1_read_misses: None,
        };
        assert_eq!(parse_totals(text), Some(plain));
        assert_eq!(
            parse_totals("events: Ir\nsummary: 42\n").map(|t| t.ir),
            Some(42)
        );
        assert_eq!(parse_totals("totals: 42\n"), None, "no events line");
        assert_eq!(parse_totals("nothing"), None);
    }

    #[test]
    fn parses_cache_simulation_totals() {
        let text =
            "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\nfl=x\ntotals: 1000 400 300 25 7 3\n";
        assert_eq!(
            parse_totals(text),
            Some(Totals {
                ir: 1000,
                i1_misses: Some(25),
                d1_read_misses: Some(7),
            })
        );
    }

    #[test]
    fn miss_columns_show_with_the_simulation_and_sum_over_a_case() -> anyhow::Result<()> {
        let m = |process: &str, ir: f64, i1: f64| Measurement {
            case: TargetName::TernMesh,
            process: process.to_owned(),
            ir_loaded: 2_000,
            ir_baseline: 1_000,
            requests: 10,
            ir_per_request: ir,
            i1_misses_per_request: Some(i1),
            d1_read_misses_per_request: Some(i1 / 10.0),
        };
        let mut o = Outcome {
            settings: Settings {
                requests: 10,
                warmup_requests: 0,
                connections: 1,
                protocol: Protocol::Http1,
                h2_streams: 1,
                response_size: 1024,
                workers: 1,
                peers: false,
                cases: Vec::new(),
                cache_sim: true,
                headers: Vec::new(),
            },
            measurements: vec![m("client", 1_000.0, 600.0), m("server", 900.0, 500.0)],
            skipped: Vec::new(),
        };
        let md = markdown(&o);
        assert!(
            md.contains("| tern-mesh | client | 2,000 | 1,000 | 1,000 | 600 | 60 |"),
            "{md}"
        );
        assert!(
            md.contains("| tern-mesh | all 2 proxies | | | 1,900 | 1,100 | 110 |"),
            "{md}"
        );
        o.settings.cache_sim = false;
        let md = markdown(&o);
        assert!(
            md.contains("| tern-mesh | client | 2,000 | 1,000 | 1,000 |\n"),
            "{md}"
        );
        assert!(!md.contains("I1 misses"), "{md}");
        // Extra request headers are named in the set-up line and kept in the JSON.
        assert!(md.contains("GET, 1024 B responses"), "{md}");
        o.settings.headers = ["x-request-id: 1", "traceparent: 00-ab"]
            .into_iter()
            .map(loadgen::parse_header)
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let md = markdown(&o);
        assert!(
            md.contains("GET with x-request-id, traceparent, 1024 B responses"),
            "{md}"
        );
        let json = serde_json::to_value(&o.settings)?;
        assert_eq!(
            json["headers"],
            serde_json::json!(["x-request-id: 1", "traceparent: 00-ab"])
        );
        Ok(())
    }

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(30123.4), "30,123");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(-1234.0), "-1,234");
    }
}
