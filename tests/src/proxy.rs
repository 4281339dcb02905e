//! Launching the real `tern-proxy` binary: config file, logs, readiness, signals, admin calls.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

use crate::body;
use crate::client::TestResponse;
use crate::config::{self, Addresses};
use crate::metrics;
use crate::ports::free_port;
use crate::wait::POLL_INTERVAL;

/// How long a proxy may take to report ready: generous for a loaded 2-core CI machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one admin call may take before the test fails.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of the `tern-proxy` binary: `$TERN_PROXY_BIN`, or the one cargo built next to
/// this test binary (tests run from `target/<profile>/deps/`). Building it is the test
/// command's job (`cargo build -p tern-proxy` first): cargo does not build another crate's
/// binaries for an integration test.
pub fn proxy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TERN_PROXY_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TERN_PROXY_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("tern-proxy"))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "tern-proxy binary not found (looked at {candidates:?}): run `cargo build -p \
                 tern-proxy` with the same profile as the tests first, or set TERN_PROXY_BIN"
            )
        })
}

/// How to start a proxy; [`Proxy::start`] covers most tests.
#[must_use = "a builder does nothing until `.start().await` or `.spawn()`"]
pub struct ProxyBuilder {
    template: String,
    env: Vec<(String, String)>,
    ready_timeout: Duration,
    binary: Option<PathBuf>,
}

impl ProxyBuilder {
    /// Sets an environment variable for the proxy (`RUST_LOG`, say).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Replaces [`READY_TIMEOUT`].
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Runs another binary than [`proxy_binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Starts the proxy and waits until `GET /ready` answers 200. Panics with the proxy's
    /// logs if it exits or is not ready within the timeout. When it exits because an address
    /// was in use (a port taken between choosing and binding it), starts it once more with
    /// fresh ports for the [`config::ANY_PORT`]s.
    pub async fn start(self) -> Proxy {
        for attempt in 1..=2 {
            let proxy = self.spawn();
            let Some(admin) = proxy.state().addresses.admin else {
                proxy.quiet.store(true, Ordering::SeqCst);
                panic!(
                    "cannot find the admin address in the config (is it YAML?):\n{}",
                    proxy.config_text()
                );
            };
            let failure = match wait_ready(&proxy, admin, self.ready_timeout).await {
                Ok(()) => return proxy,
                Err(failure) => failure,
            };
            let logs = proxy.logs();
            proxy.quiet.store(true, Ordering::SeqCst);
            let exited = proxy.exit_status().is_some();
            drop(proxy);
            if attempt == 1 && exited && address_in_use(&logs) {
                continue;
            }
            panic!(
                "proxy did not become ready: {failure}\n--- proxy logs ---\n{logs}--- end of proxy logs ---"
            );
        }
        unreachable!("the second attempt returns or panics")
    }

    /// Starts the proxy without waiting for it: for tests of configs it must refuse, or of
    /// what happens before it is ready.
    pub fn spawn(&self) -> Proxy {
        let binary = self.binary.clone().unwrap_or_else(proxy_binary);
        let dir = tempfile::Builder::new()
            .prefix("tern-e2e-")
            .tempdir()
            .expect("creating a temp dir for the proxy");
        let config_path = dir.path().join("config.yaml");
        let log_path = dir.path().join("proxy.log");
        let resolved = config::resolve(&self.template, None, free_port);
        write_atomically(&config_path, &resolved.text);

        let log = File::create(&log_path).expect("creating the proxy's log file");
        let log_for_stdout = log.try_clone().expect("duplicating the log file handle");
        let mut command = Command::new(&binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log)
            .env("RUST_BACKTRACE", "1");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        Proxy {
            state: Mutex::new(State {
                child,
                exit: None,
                addresses: resolved.addresses,
            }),
            config_path,
            log_path,
            quiet: AtomicBool::new(false),
            _dir: dir,
        }
    }
}

/// A running `tern-proxy` process with its own config file and log file in a temp dir.
/// Dropping it kills the process; if the test is failing at that moment, the proxy's logs
/// are printed, so a failing test shows what the proxy said.
pub struct Proxy {
    /// Behind a mutex so every method takes `&self` (tests share the proxy between tasks);
    /// never held across an `.await`.
    state: Mutex<State>,
    config_path: PathBuf,
    log_path: PathBuf,
    /// Set once the logs were already shown in a panic message, to print them only once.
    quiet: AtomicBool,
    /// Removed on drop, after the process is gone.
    _dir: TempDir,
}

struct State {
    child: Child,
    /// Set once the child was reaped: its pid may be reused after that, so no more signals.
    exit: Option<ExitStatus>,
    addresses: Addresses,
}

impl State {
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .expect("checking whether the proxy exited");
        }
        self.exit
    }
}

impl Proxy {
    /// A builder for a proxy running `config_yaml` (see the crate docs for its shape and
    /// for [`config::ANY_PORT`]).
    pub fn builder(config_yaml: impl Into<String>) -> ProxyBuilder {
        ProxyBuilder {
            template: config_yaml.into(),
            env: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            binary: None,
        }
    }

    /// Starts a proxy and waits until it is ready: [`ProxyBuilder::start`].
    pub async fn start(config_yaml: impl Into<String>) -> Proxy {
        Self::builder(config_yaml).start().await
    }

    /// Starts a proxy without waiting: [`ProxyBuilder::spawn`].
    pub fn spawn(config_yaml: impl Into<String>) -> Proxy {
        Self::builder(config_yaml).spawn()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the state usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.state().child.id()
    }

    /// The address of the listener named `listener` in the current config.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        let state = self.state();
        state
            .addresses
            .listeners
            .get(listener)
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "no listener {listener:?} in the config; listeners: {:?}",
                    state.addresses.listeners.keys().collect::<Vec<_>>()
                )
            })
    }

    /// `http://<listener address><path>`.
    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.state()
            .addresses
            .admin
            .expect("the config has no readable admin address")
    }

    /// `http://<admin address><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config file as the proxy sees it (ports filled in).
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("reading the proxy's config file")
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let bytes = std::fs::read(&self.log_path).expect("reading the proxy's log file");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Replaces the config file the way editors and `kubectl` do: a new file renamed over
    /// the old one (a new inode; watchers of the old one see it removed). Listeners that keep
    /// their name keep their port; see [`config::resolve`]. Does not wait for the proxy to
    /// apply it: follow with [`crate::wait_for`] on what should change.
    pub fn write_config(&self, config_yaml: &str) {
        let text = self.resolve_reload(config_yaml);
        write_atomically(&self.config_path, &text);
    }

    /// Rewrites the config file in place (truncate, then write: same inode), the way `echo >`
    /// and some tools do. A watcher may see the empty file in between: the proxy must cope.
    pub fn write_config_in_place(&self, config_yaml: &str) {
        let text = self.resolve_reload(config_yaml);
        std::fs::write(&self.config_path, text).expect("rewriting the proxy's config file");
    }

    fn resolve_reload(&self, template: &str) -> String {
        let mut state = self.state();
        let resolved = config::resolve(template, Some(&state.addresses), free_port);
        if resolved.addresses.admin.is_some() {
            state.addresses = resolved.addresses;
        }
        resolved.text
    }

    /// Sends SIGHUP (reload the config file).
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Sends SIGTERM (drain, then exit).
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` to the proxy; panics if it has already exited (its pid may belong to
    /// another process by now).
    #[allow(unsafe_code)]
    pub fn signal(&self, signal: libc::c_int) {
        let mut state = self.state();
        if let Some(status) = state.poll_exit() {
            panic!("cannot signal the proxy: it already exited ({status})");
        }
        let pid = libc::pid_t::try_from(state.child.id()).expect("a pid fits in pid_t");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The child has
        // not been reaped (checked above, under the lock that reaping also takes), so `pid`
        // still names our child and not a recycled process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The exit status if the proxy has exited; never waits.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.state().poll_exit()
    }

    /// Waits for the proxy to exit; panics with its logs after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if Instant::now() >= deadline {
                self.quiet.store(true, Ordering::SeqCst);
                panic!(
                    "proxy still running after {timeout:?}\n--- proxy logs ---\n{}--- end of proxy logs ---",
                    self.logs()
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// A request to the admin endpoint on a fresh connection (so a request never rides a
    /// connection to an earlier process). Panics on transport errors.
    pub async fn admin(&self, method: &str, path: &str) -> TestResponse {
        let addr = self.admin_addr();
        admin_request(addr, method, path)
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path} at {addr}: {e:#}"))
    }

    pub async fn admin_get(&self, path: &str) -> TestResponse {
        self.admin("GET", path).await
    }

    pub async fn admin_post(&self, path: &str) -> TestResponse {
        self.admin("POST", path).await
    }

    /// Whether `GET /ready` answers 200 now (false if it cannot be reached).
    pub async fn is_ready(&self) -> bool {
        let addr = self.admin_addr();
        matches!(admin_request(addr, "GET", "/ready").await, Ok(r) if r.status == StatusCode::OK)
    }

    /// `POST /shutdown`.
    pub async fn shutdown(&self) -> TestResponse {
        self.admin_post("/shutdown").await
    }

    /// The `/metrics` text; panics unless it answers 200.
    pub async fn metrics(&self) -> String {
        let response = self.admin_get("/metrics").await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "GET /metrics: {}",
            response.text()
        );
        response.text()
    }

    /// The sum of the samples named `name` carrying `labels` (a subset): [`metrics::find`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metrics::find(&self.metrics().await, name, labels)
    }

    /// Waits until `n` config reloads in all have been refused (`tern_config_reloads_total`
    /// with `result="failed"`); panics after `timeout`.
    pub async fn wait_for_refused_reloads(&self, n: u32, timeout: Duration) {
        crate::wait::wait_for(&format!("{n} refused reload(s)"), timeout, async || {
            self.metric("tern_config_reloads_total", &[("result", "failed")])
                .await
                == Some(f64::from(n))
        })
        .await;
    }

    /// `GET /config` as JSON; panics unless it answers 200 with JSON.
    pub async fn config(&self) -> Value {
        let response = self.admin_get("/config").await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "GET /config: {}",
            response.text()
        );
        response.json()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.poll_exit().is_none() {
            // Already gone between the check and the kill is fine: nothing left to stop.
            let _ = state.child.kill();
            let _ = state.child.wait();
        }
        if std::thread::panicking() && !self.quiet.load(Ordering::SeqCst) {
            let logs = std::fs::read(&self.log_path).unwrap_or_default();
            eprintln!(
                "--- logs of tern-proxy {} ---\n{}--- end of proxy logs ---",
                state.child.id(),
                String::from_utf8_lossy(&logs)
            );
        }
    }
}

/// Why a proxy did not become ready.
enum NotReady {
    Exited(ExitStatus),
    Timeout(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "it exited ({status})"),
            NotReady::Timeout(last) => {
                write!(f, "still not ready at the deadline; last /ready: {last}")
            }
        }
    }
}

async fn wait_ready(proxy: &Proxy, admin: SocketAddr, limit: Duration) -> Result<(), NotReady> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = proxy.exit_status() {
            return Err(NotReady::Exited(status));
        }
        let last = match admin_request(admin, "GET", "/ready").await {
            Ok(response) if response.status == StatusCode::OK => return Ok(()),
            Ok(response) => format!("{} {}", response.status, response.text()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            return Err(NotReady::Timeout(last));
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Whether logs say a bind failed because the address was taken (Rust's io::Error texts).
fn address_in_use(logs: &str) -> bool {
    let logs = logs.to_ascii_lowercase();
    logs.contains("address already in use")
        || logs.contains("os error 98")
        || logs.contains("addrinuse")
}

/// One admin call on its own HTTP/1.1 connection.
async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<TestResponse> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.context("connecting")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).context("method")?)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .body(body::full(Bytes::new()))
            .context("request")?;
        let response = sender.send_request(request).await.context("request")?;
        TestResponse::collect(response).await
    };
    timeout(ADMIN_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {ADMIN_TIMEOUT:?}"))?
}

/// Writes `text` to a sibling temp file and renames it over `path`, so a reader never sees
/// a half-written file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("writing the new config file");
    std::fs::rename(&tmp, path).expect("renaming the new config file into place");
}

/// Runs `tern-proxy validate` on `config_yaml` exactly as given (no port filling) and returns
/// its exit code (0 valid, 1 problems) and its stdout followed by its stderr. Blocking: it
/// needs no backends, so plain `#[test]`s can use it.
pub fn validate(config_yaml: &str) -> (i32, String) {
    let dir = tempfile::Builder::new()
        .prefix("tern-e2e-validate-")
        .tempdir()
        .expect("creating a temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config_yaml).expect("writing the config to validate");
    let binary = proxy_binary();
    let output = Command::new(&binary)
        .arg("validate")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} validate: {e}", binary.display()));
    let code = output
        .status
        .code()
        .unwrap_or_else(|| panic!("tern-proxy validate was killed: {}", output.status));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (code, text)
}
