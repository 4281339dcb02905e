//! Child processes of the harness: spawned pinned (`taskset -c CPU`, which execs, so the PID
//! is the program's own), stdout and stderr to a log file, stopped gracefully with a
//! deadline, and killed on drop so an error path never leaves one running.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::loadgen::{self, Endpoint, Protocol};

/// How a process is asked to stop.
#[derive(Debug, Clone, Copy)]
pub enum StopBy {
    Signal(Signal),
    /// Tern: `POST /shutdown` on its admin port (SIGTERM if that fails).
    AdminShutdown(SocketAddr),
}

/// A started child process.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    stop_by: StopBy,
    stopped: bool,
}

impl Proc {
    /// Starts `program args` with `env`, pinned to `cpu` when given.
    pub fn spawn(
        name: &str,
        cpu: Option<usize>,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
        stop_by: StopBy,
    ) -> Result<Proc> {
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            stop_by,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the process wrote, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 12)
    }

    /// An error if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail()
            ),
            Err(e) => bail!("{}: cannot check the process: {e}", self.name),
        }
    }

    /// Asks the process to stop and waits up to `grace`; kills it after that. An error when
    /// it had to be killed or exited unsuccessfully (the figures may still be fine).
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} had already exited ({status})", self.name);
        }
        let asked = match self.stop_by {
            StopBy::Signal(sig) => self.signal(sig),
            StopBy::AdminShutdown(admin) => {
                admin_shutdown(admin).or_else(|e| self.signal(Signal::SIGTERM).map_err(|_| e))
            }
        };
        if let Err(e) = asked {
            self.kill();
            return Err(e.context(format!("stopping {}", self.name)));
        }
        let deadline = Instant::now() + grace;
        let mut resend = Instant::now() + Duration::from_secs(1);
        loop {
            match self.child.try_wait() {
                // nginx and HAProxy leave with the signal's status on SIGTERM: still a clean
                // stop for us.
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    // A signal that lands just before a process blocks in epoll_wait can
                    // be noted and then never looked at (nginx in single-process mode):
                    // repeat it.
                    if let StopBy::Signal(sig) = self.stop_by
                        && Instant::now() >= resend
                    {
                        let _ = self.signal(sig);
                        resend = Instant::now() + Duration::from_secs(1);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    self.kill();
                    bail!("{} did not stop within {grace:?}: killed", self.name);
                }
                Err(e) => {
                    self.kill();
                    bail!("{}: waiting for it: {e}", self.name);
                }
            }
        }
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = i32::try_from(self.pid()).context("PID out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("sending {sig} to {}", self.name))
    }

    fn kill(&mut self) {
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all.get(from..).unwrap_or_default().join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

/// A loopback port nobody listens on right now. Another process may take it before we
/// bind it: starting a target is retried with fresh ports when that happens.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("reading a bound port")?.port())
}

pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Polls `check` every 20 ms until it succeeds, any of `procs` exits, or `timeout` passes.
pub fn wait_ready(
    what: &str,
    timeout: Duration,
    procs: &mut [&mut Proc],
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for p in procs.iter_mut() {
            p.check_alive()
                .with_context(|| format!("while waiting for {what}"))?;
        }
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!("{what} not ready within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request through `endpoint` answers 200.
pub fn probe_ok(endpoint: &Endpoint, protocol: Protocol) -> Result<()> {
    let status = loadgen::probe(endpoint, protocol, Duration::from_secs(1))?;
    if status.is_success() {
        Ok(())
    } else {
        bail!("answered {status}")
    }
}

/// `POST /shutdown` on a Tern admin port; any 2xx is fine.
pub fn admin_shutdown(admin: SocketAddr) -> Result<()> {
    let status = admin_request(admin, "POST", "/shutdown")?;
    if status.is_success() {
        Ok(())
    } else {
        bail!("POST /shutdown on {admin} answered {status}")
    }
}

/// A bodiless request on an admin port with a plain blocking HTTP/1.1 client (no runtime,
/// so it works from anywhere): the status.
pub fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Result<http::StatusCode> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2))
        .with_context(|| format!("connecting to {admin}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a read timeout")?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("{method} {path} on {admin}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = s
            .read(head.get_mut(n..).unwrap_or_default())
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let line = String::from_utf8_lossy(head.get(..n).unwrap_or_default()).into_owned();
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("{method} {path} on {admin}: no status in {line:?}"))?;
    http::StatusCode::from_u16(code).with_context(|| format!("bad status {code}"))
}

/// Finds an executable by name on PATH and in the sbin directories root's PATH may lack.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
