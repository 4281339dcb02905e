//! `pgo`: tern-proxy's release build, optimized with the profile of a training run
//! (profile-guided optimization, through `cargo-pgo`).
//!
//! 1. `cargo pgo build -- -p tern-proxy`: a build that counts, per branch and call, how often
//!    it ran, and writes the counts when it exits;
//! 2. training: that build runs every Tern shape `compare` knows (one hop, `auto` listener,
//!    mesh, resilience layers, tracing and access logs at 100 % and 1 %) over HTTP/1.1 and
//!    h2c, closed loop then open loop, twice: GETs with 1 KiB answers, then POSTs of 4 KiB
//!    with 16 KiB answers. Each proxy writes its profile when it shuts down;
//! 3. `cargo pgo optimize build -- -p tern-proxy`: the release build again, with the merged
//!    profile: the hot path laid out densely and inlined, the rest moved out of its way.
//!
//! The result is `target/<host triple>/release/tern-proxy`. The plain build
//! (`target/release/tern-proxy`) is unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::compare;
use crate::loadgen::Protocol;
use crate::targets::{Programs, TargetName};

/// The cargo-pgo release the pipeline installs when it is missing.
const CARGO_PGO_VERSION: &str = "0.3.0";

/// The Tern shapes the training runs: every one `compare` measures (`tern-base` is not in
/// `TargetName::ALL`: it is another build, not a shape).
pub fn trained() -> Vec<TargetName> {
    TargetName::ALL
        .into_iter()
        .filter(|t| t.as_str().starts_with("tern"))
        .collect()
}

/// Where the pipeline's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The profiles the instrumented build writes (`--profiles-dir`).
    pub profiles: PathBuf,
    /// The instrumented build, then (same path) the optimized one.
    pub binary: PathBuf,
}

impl Layout {
    /// `target_dir`: the workspace's cargo target directory; `host`: rustc's host triple
    /// (cargo-pgo builds for it explicitly, so that the profile flags skip build scripts).
    pub fn new(target_dir: &Path, host: &str) -> Layout {
        Layout {
            profiles: target_dir.join("pgo-profiles"),
            binary: target_dir.join(host).join("release").join("tern-proxy"),
        }
    }
}

/// The host triple from `rustc -vV`'s output.
pub fn parse_host(rustc_vv: &str) -> Option<&str> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("host:"))
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_host(&text)
        .map(str::to_owned)
        .with_context(|| format!("no `host:` line in rustc -vV's output: {text:?}"))
}

/// The training passes: what each asks for, and how (method, request and response bytes).
pub fn passes() -> [(&'static str, usize, usize); 2] {
    [("GET", 0, 1024), ("POST", 4096, 16 * 1024)]
}

/// One pass of the training: every trained shape over both protocols, one short round.
pub fn training_settings(
    method: &str,
    request_size: usize,
    response_size: usize,
) -> compare::Settings {
    compare::Settings {
        rounds: 1,
        targets: trained(),
        h2_targets: trained(),
        protocols: vec![Protocol::Http1, Protocol::Http2],
        workers: 1,
        connections: 32,
        h2_streams: 10,
        rates: vec![2000.0, 10000.0],
        warmup: Duration::from_millis(500),
        settle: Duration::from_millis(200),
        measure: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        // The instrumented build writes its profile on the way out: give it time.
        grace: Duration::from_secs(5),
        method: method.to_owned(),
        request_size,
        response_size,
        pinning: None,
        quick: true,
        spin: false,
    }
}

/// Runs the whole pipeline from the workspace `root` into `target_dir`; returns the optimized
/// binary.
pub fn build(root: &Path, target_dir: &Path, scratch: &Path) -> Result<PathBuf> {
    ensure_tools(root)?;
    let layout = Layout::new(target_dir, &host_triple()?);
    let profiles = layout.profiles.to_string_lossy().into_owned();

    eprintln!("pgo 1/3: the instrumented build (cargo pgo build) ...");
    cargo_pgo(root, &["build"], &profiles)?;
    if !layout.binary.is_file() {
        bail!("cargo pgo build left no {}", layout.binary.display());
    }

    eprintln!("pgo 2/3: training ...");
    // An instrumented binary left where the optimized one goes would be measured by the next
    // `--pgo --no-build`: if the training fails, it goes.
    let trained = train(&layout, scratch);
    if trained.is_err() {
        let _ = std::fs::remove_file(&layout.binary);
    }
    let written = trained?;
    eprintln!("pgo: {written} profile file(s) written");

    eprintln!("pgo 3/3: the optimized build (cargo pgo optimize build) ...");
    cargo_pgo(root, &["optimize", "build"], &profiles)?;
    if is_instrumented(&layout.binary)? {
        bail!(
            "{} is still the instrumented build",
            layout.binary.display()
        );
    }
    Ok(layout.binary)
}

/// Runs the training against the instrumented build; returns how many profile files it left.
fn train(layout: &Layout, scratch: &Path) -> Result<usize> {
    let programs = Programs::find(layout.binary.clone(), None);
    for (method, request_size, response_size) in passes() {
        let settings = training_settings(method, request_size, response_size);
        let outcome = compare::run(&settings, &programs, scratch)?;
        let failed: Vec<String> = outcome
            .runs
            .iter()
            .filter_map(|r| {
                r.error
                    .as_ref()
                    .map(|e| format!("{} over {}: {e}", r.target, r.protocol.label()))
            })
            .collect();
        if !failed.is_empty() {
            bail!(
                "training failed, the profile would miss that path:\n  {}",
                failed.join("\n  ")
            );
        }
    }
    let written = profiles_in(&layout.profiles)?;
    if written == 0 {
        bail!(
            "training wrote no profile to {} (did the proxies exit cleanly?)",
            layout.profiles.display()
        );
    }
    Ok(written)
}

/// Whether `bin` carries LLVM's profile counters (an instrumented build).
pub fn is_instrumented(bin: &Path) -> Result<bool> {
    let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    Ok(contains(&bytes, b"__llvm_prf_cnts"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The optimized binary of an earlier `pgo` run, if there is one.
pub fn built(target_dir: &Path) -> Result<PathBuf> {
    let layout = Layout::new(target_dir, &host_triple()?);
    if !layout.binary.is_file() {
        bail!(
            "{} does not exist: build it with `cargo run --release -p tern-benches -- pgo`",
            layout.binary.display()
        );
    }
    if is_instrumented(&layout.binary)? {
        bail!(
            "{} is the instrumented build of an unfinished `pgo` run: run `cargo run --release -p tern-benches -- pgo` again",
            layout.binary.display()
        );
    }
    Ok(layout.binary)
}

fn profiles_in(dir: &Path) -> Result<usize> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut n = 0;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "profraw") {
            n += 1;
        }
    }
    Ok(n)
}

/// llvm-profdata (rustup's `llvm-tools`, matching rustc's LLVM) and cargo-pgo, installed when
/// missing.
fn ensure_tools(root: &Path) -> Result<()> {
    let has_profdata = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("llvm-tools"))
        });
    if !has_profdata {
        eprintln!("installing llvm-tools (rustup component add llvm-tools) ...");
        let ok = Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .current_dir(root)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "rustup component add llvm-tools failed: PGO needs llvm-profdata of rustc's own LLVM"
            );
        }
    }
    let has_cargo_pgo = cargo_command()
        .args(["pgo", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_pgo {
        eprintln!("installing cargo-pgo {CARGO_PGO_VERSION} (cargo install) ...");
        cargo(
            root,
            &[
                "install",
                "--locked",
                "--version",
                CARGO_PGO_VERSION,
                "cargo-pgo",
            ],
        )?;
    }
    Ok(())
}

/// `cargo pgo <step> --profiles-dir <profiles> -- -p tern-proxy`.
fn cargo_pgo(root: &Path, step: &[&str], profiles: &str) -> Result<()> {
    let mut args = vec!["pgo"];
    args.extend_from_slice(step);
    args.extend(["--profiles-dir", profiles, "--", "-p", "tern-proxy"]);
    cargo(root, &args)
}

fn cargo_command() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = cargo_command()
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instrumented_build_is_told_apart() {
        assert!(contains(b"..\0__llvm_prf_cnts\0..", b"__llvm_prf_cnts"));
        assert!(!contains(b"__llvm_prf_data", b"__llvm_prf_cnts"));
        assert!(!contains(b"", b"__llvm_prf_cnts"));
    }

    #[test]
    fn the_host_triple_comes_from_rustcs_verbose_version() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\ncommit-hash: 59807616e\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 21.1.2\n";
        assert_eq!(parse_host(vv), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(parse_host("rustc 1.95.0\nhost: \n"), None);
        assert_eq!(parse_host(""), None);
    }

    #[test]
    fn the_optimized_binary_is_cargo_pgos_target_build() {
        let l = Layout::new(Path::new("/w/target"), "aarch64-unknown-linux-gnu");
        assert_eq!(l.profiles, Path::new("/w/target/pgo-profiles"));
        assert_eq!(
            l.binary,
            Path::new("/w/target/aarch64-unknown-linux-gnu/release/tern-proxy")
        );
    }

    #[test]
    fn training_covers_every_tern_shape_on_both_protocols_and_no_peer() {
        for (method, req, resp) in passes() {
            let s = training_settings(method, req, resp);
            for t in TargetName::ALL
                .into_iter()
                .filter(|t| t.as_str().starts_with("tern"))
            {
                assert!(s.runs(t, Protocol::Http1), "{t} over HTTP/1.1");
                assert!(s.runs(t, Protocol::Http2), "{t} over h2c");
            }
            assert!(
                !s.targets
                    .iter()
                    .any(|t| t.is_peer() || *t == TargetName::TernBase)
            );
            assert!(!s.targets.contains(&TargetName::Direct));
        }
        // Bodies both ways, and more than one answer size.
        assert!(passes().iter().any(|(m, req, _)| *m == "POST" && *req > 0));
        assert!(
            passes()
                .iter()
                .map(|p| p.2)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1
        );
    }
}
