//! The load generator: a hyper client on one single-threaded runtime, in two modes.
//!
//! - **Closed loop** (`Pace::Closed`): every lane (an HTTP/1.1 keep-alive connection, or one
//!   stream slot of an HTTP/2 connection) sends its next request as soon as the previous
//!   response has been read. This finds the maximum throughput at a given concurrency.
//! - **Open loop** (`Pace::Open`): a pacer fixes the *intended* send time of request `i` at
//!   `start + i / rate`, whatever the target does, and hands it to lane `i mod lanes`. A lane
//!   still busy with an earlier response sends late, and the latency is measured from the
//!   intended time, not the actual one: a stalled target is charged for every request it
//!   delayed (no coordinated omission, as in wrk2).
//!
//! tokio's timer has millisecond granularity, too coarse for intended send times 100 µs
//! apart, so the pacer sleeps on a `timerfd` (an hrtimer, with the thread's timer slack set
//! to 1 ns) registered with the runtime: the thread still sleeps in `epoll_wait` and serves
//! connections, and wakes within microseconds of each intended time. How late the pacer
//! was is recorded as `send_lag`; a large lag means the generator (or a noisy machine), not
//! the target, was the limit.
//!
//! With `Spec::spin` the pacer never sleeps: it yields to the runtime in a loop until each
//! send time (the runtime polls its I/O driver on every yield). On a VM a sleeping vCPU's
//! timer interrupt now and then arrives 1.5-4 ms late; a spinning generator takes none, so
//! the tail it reports is the target's, not the generator's wake-ups.
//!
//! A run is either timed (warm-up, then a measured window; only what completes inside the
//! window counts) or a fixed number of requests (for instruction counts). Every loop is
//! bounded: by the window end plus a grace period, or by the request budget, and every
//! exchange by a timeout.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::measure::CpuSnapshot;

/// Wire protocol towards the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1, one request in flight per keep-alive connection.
    #[serde(rename = "h1")]
    #[value(name = "h1")]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c), several streams per connection.
    #[serde(rename = "h2")]
    #[value(name = "h2")]
    Http2,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2 (h2c)",
        }
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each lane sends again as soon as its response is complete.
    Closed,
    /// Requests at fixed intended times, `rate` per second over all lanes.
    Open { rate: f64 },
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// Load for `warmup`, then measure for `measure`.
    Timed { warmup: Duration, measure: Duration },
    /// Exactly this many requests (closed loop only), all of them measured.
    Requests(u64),
}

/// Where requests go: a resolved address plus what goes into `Host` / `:authority`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `http://host:port/path?query` (HTTP/2 sends it as pseudo-headers).
    pub absolute: Uri,
    /// `/path?query` (the HTTP/1.1 request target).
    pub origin: Uri,
    pub host: HeaderValue,
}

impl Endpoint {
    /// Parses `http://HOST:PORT/PATH`. Only `http` (cleartext) is supported.
    pub fn parse(url: &str) -> Result<Endpoint> {
        let absolute: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        if absolute.scheme_str() != Some("http") {
            bail!("URL {url:?}: only http:// is supported");
        }
        let authority = absolute
            .authority()
            .with_context(|| format!("URL {url:?} has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = (authority.host(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        let origin: Uri = absolute
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .with_context(|| format!("URL {url:?}: bad path"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .with_context(|| format!("URL {url:?}: bad host"))?;
        Ok(Endpoint {
            addr,
            absolute,
            origin,
            host,
        })
    }

    pub fn for_addr(addr: SocketAddr, path: &str) -> Result<Endpoint> {
        Endpoint::parse(&format!("http://{addr}{path}"))
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub endpoint: Endpoint,
    pub protocol: Protocol,
    pub connections: usize,
    /// Concurrent streams per HTTP/2 connection (1 for HTTP/1.1).
    pub streams: usize,
    pub pace: Pace,
    pub budget: Budget,
    pub method: Method,
    /// Bytes of request body (0: none).
    pub request_body: usize,
    /// Deadline of one exchange (connect, send, whole response).
    pub timeout: Duration,
    /// Open loop: how long after the window lanes may still work off a backlog before the
    /// rest is counted as `unsent`.
    pub grace: Duration,
    /// Open loop: wait for each send time by yielding to the runtime in a loop (the
    /// generator's CPU stays busy) instead of sleeping on a timer. On a VM a sleeping vCPU's
    /// timer interrupt now and then arrives milliseconds late (see benches/README.md, "Host
    /// stalls"), and every request behind the late one is charged for it; a spinning
    /// generator takes no timer interrupts and reads responses without waking.
    pub spin: bool,
    /// Headers sent on every request besides `Host` (a mix like real clients', whose
    /// `x-request-id`, `traceparent` or business headers the proxy must parse).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A `name: value` request header from the command line.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected `name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{s:?}: {:?} is not a header name", name.trim()))?;
    if name == HOST {
        return Err(format!("{s:?}: Host comes from the URL"));
    }
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{s:?}: {:?} is not a header value", value.trim()))?;
    Ok((name, value))
}

impl Spec {
    fn lanes(&self) -> usize {
        match self.protocol {
            Protocol::Http1 => self.connections,
            Protocol::Http2 => self.connections * self.streams.max(1),
        }
    }
}

/// Start and end of the measured window: the caller reads its /proc figures there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Start,
    End,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            count: h.len(),
        }
    }
}

/// What a run measured (inside the window for timed runs).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub window_secs: f64,
    /// 2xx responses completed in the window.
    pub ok: u64,
    /// Other statuses completed in the window.
    pub non_2xx: u64,
    /// Connect failures, resets, protocol errors: anywhere in the run, warm-up included.
    pub transport_errors: u64,
    /// Exchanges that exceeded the timeout, anywhere in the run.
    pub timeouts: u64,
    /// Open loop: requests scheduled in the window that could not even be sent before the
    /// grace period ran out (the target fell behind the rate).
    pub unsent: u64,
    /// 2xx per second of window.
    pub throughput: f64,
    /// Closed loop: from the actual send. Open loop: from the intended send time.
    pub latency_us: Percentiles,
    /// Open loop: how late the pacer released requests (generator health).
    pub send_lag_us: Percentiles,
    /// Open loop: the worst latency of the requests scheduled in each `SLICE` of the window,
    /// in order (µs; 0 where none completed). Tells one stall from a tail spread over the
    /// window.
    pub slice_max_us: Vec<f64>,
    /// Response body bytes per completed response (sanity: the configured size).
    pub response_bytes_per_request: f64,
    /// CPU the generator's process used during the window, in % of one core.
    pub generator_cpu_percent: f64,
    pub first_error: Option<String>,
}

impl Report {
    /// Every response in the window, whatever its status.
    pub fn completed(&self) -> u64 {
        self.ok + self.non_2xx
    }

    /// Anything that makes the latency figures untrustworthy.
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.transport_errors + self.timeouts + self.unsent
    }
}

/// Counters shared by the lanes of one run (single thread: `RefCell`, no atomics).
struct Stats {
    ok: u64,
    non_2xx: u64,
    transport_errors: u64,
    timeouts: u64,
    unsent: u64,
    body_bytes: u64,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    /// Worst latency (ns) per `SLICE` of the window, open loop.
    slice_max_ns: Vec<u64>,
    first_error: Option<String>,
}

/// The width of `Report::slice_max_us`'s slices.
pub const SLICE: Duration = Duration::from_millis(100);

impl Stats {
    fn new() -> Result<Stats> {
        // 1 ns .. 100 s at 3 significant digits.
        let h = || Histogram::new_with_bounds(1, 100_000_000_000, 3).context("histogram bounds");
        Ok(Stats {
            ok: 0,
            non_2xx: 0,
            transport_errors: 0,
            timeouts: 0,
            unsent: 0,
            body_bytes: 0,
            latency: h()?,
            send_lag: h()?,
            slice_max_ns: Vec::new(),
            first_error: None,
        })
    }

    fn error(&mut self, outcome: &Failure) {
        match outcome {
            Failure::Timeout => self.timeouts += 1,
            Failure::Transport(_) => self.transport_errors += 1,
        }
        if self.first_error.is_none() {
            self.first_error = Some(outcome.to_string());
        }
    }
}

/// The timing frame every lane sees.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
    /// Open loop: no request is sent after this.
    hard_stop: Instant,
    /// `Budget::Requests`: every completion counts.
    all: bool,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        self.all || (t >= self.start && t < self.end)
    }
}

#[derive(Debug)]
enum Failure {
    Timeout,
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Transport(e) => f.write_str(e),
        }
    }
}

/// What a lane needs to build a request.
struct RequestTemplate {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl RequestTemplate {
    fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        if let Some(host) = &self.host {
            req.headers_mut().insert(HOST, host.clone());
        }
        for (name, value) in &self.headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        req
    }
}

async fn connect_tcp(addr: SocketAddr) -> Result<TokioIo<TcpStream>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(TokioIo::new(stream))
}

/// A connection within `timeout`, or `None` with the failure counted (a lane without a
/// connection retries later; the run's errors show why).
async fn connect_or_count<T>(
    timeout: Duration,
    connect: impl std::future::Future<Output = Result<T, String>>,
    stats: &RefCell<Stats>,
) -> Option<T> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            stats.borrow_mut().error(&Failure::Transport(e));
            None
        }
        Err(_) => {
            stats.borrow_mut().error(&Failure::Timeout);
            None
        }
    }
}

async fn connect_h1(addr: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let io = connect_tcp(addr).await?;
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP/1 handshake: {e}"))?;
    tokio::task::spawn_local(async move {
        // Ends when the connection closes; its errors surface on the next send.
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connect_h2(addr: SocketAddr) -> Result<http2::SendRequest<Full<Bytes>>, String> {
    let io = connect_tcp(addr).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One HTTP/2 connection shared by several lanes; the first lane that finds it broken
/// replaces it (the generation tells the others it already happened).
struct SharedH2 {
    addr: SocketAddr,
    slot: tokio::sync::Mutex<Option<(u64, http2::SendRequest<Full<Bytes>>)>>,
}

impl SharedH2 {
    async fn get(
        &self,
        stale: Option<u64>,
    ) -> Result<(u64, http2::SendRequest<Full<Bytes>>), String> {
        let mut slot = self.slot.lock().await;
        if let Some((generation, sender)) = &*slot
            && Some(*generation) != stale
            && !sender.is_closed()
        {
            return Ok((*generation, sender.clone()));
        }
        let generation = slot.as_ref().map_or(0, |(g, _)| g + 1);
        let sender = connect_h2(self.addr).await?;
        *slot = Some((generation, sender.clone()));
        Ok((generation, sender))
    }
}

/// A lane's way to the target.
enum Client {
    H1 {
        addr: SocketAddr,
        sender: Option<http1::SendRequest<Full<Bytes>>>,
    },
    H2 {
        conn: Rc<SharedH2>,
        sender: Option<(u64, http2::SendRequest<Full<Bytes>>)>,
        stale: Option<u64>,
    },
}

impl Client {
    /// One request and its whole response body, reconnecting first when needed.
    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, u64), String> {
        let resp = match self {
            Client::H1 { addr, sender } => {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    *sender = Some(connect_h1(*addr).await?);
                }
                let s = sender.as_mut().ok_or("no HTTP/1 connection")?;
                s.ready().await.map_err(|e| format!("HTTP/1: {e}"))?;
                s.send_request(req)
                    .await
                    .map_err(|e| format!("HTTP/1: {e}"))?
            }
            Client::H2 {
                conn,
                sender,
                stale,
            } => {
                if sender.as_ref().is_none_or(|(_, s)| s.is_closed()) {
                    *sender = Some(conn.get(*stale).await?);
                }
                let (_, s) = sender.as_mut().ok_or("no HTTP/2 connection")?;
                s.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
                s.send_request(req)
                    .await
                    .map_err(|e| format!("HTTP/2: {e}"))?
            }
        };
        let status = resp.status();
        let mut body = resp.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("response body: {e}"))?;
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
            }
        }
        Ok((status, bytes))
    }

    /// After a failure. HTTP/1: the connection's state is unknown, start over. HTTP/2: a
    /// failed stream leaves the connection usable; only a closed one is replaced (once, for
    /// all the lanes sharing it).
    fn reset(&mut self) {
        match self {
            Client::H1 { sender, .. } => *sender = None,
            Client::H2 { sender, stale, .. } => {
                if sender.as_ref().is_some_and(|(_, s)| s.is_closed()) {
                    *stale = sender.take().map(|(g, _)| g);
                }
            }
        }
    }
}

struct Lane {
    client: Client,
    template: Rc<RequestTemplate>,
    stats: Rc<RefCell<Stats>>,
    window: Window,
    timeout: Duration,
}

impl Lane {
    /// Sends one request; records it if it belongs to the window. `intended` is when it
    /// should have been sent (open loop) or `None` (closed loop: now).
    async fn one(&mut self, intended: Option<Instant>) -> bool {
        let sent = Instant::now();
        let from = intended.unwrap_or(sent);
        let req = self.template.build();
        let result = tokio::time::timeout(self.timeout, self.client.exchange(req)).await;
        let done = Instant::now();
        let mut stats = self.stats.borrow_mut();
        match result {
            Ok(Ok((status, bytes))) => {
                if self.window.contains(done) {
                    if status.is_success() {
                        stats.ok += 1;
                    } else {
                        stats.non_2xx += 1;
                        if stats.first_error.is_none() {
                            stats.first_error = Some(format!("status {status}"));
                        }
                    }
                    stats.body_bytes += bytes;
                }
                // Closed loop: latencies of responses completing in the window. Open loop:
                // of requests *scheduled* in the window, whenever they complete.
                let in_window = match intended {
                    Some(t) => self.window.contains(t),
                    None => self.window.contains(done),
                };
                if in_window {
                    let ns =
                        u64::try_from(done.duration_since(from).as_nanos()).unwrap_or(u64::MAX);
                    stats.latency.saturating_record(ns.max(1));
                    if let Some(t) = intended {
                        let slice = t.saturating_duration_since(self.window.start).as_nanos()
                            / SLICE.as_nanos();
                        if let Some(worst) = usize::try_from(slice)
                            .ok()
                            .and_then(|i| stats.slice_max_ns.get_mut(i))
                        {
                            *worst = (*worst).max(ns);
                        }
                    }
                }
                true
            }
            Ok(Err(e)) => {
                stats.error(&Failure::Transport(e));
                drop(stats);
                self.client.reset();
                false
            }
            Err(_) => {
                stats.error(&Failure::Timeout);
                drop(stats);
                self.client.reset();
                false
            }
        }
    }

    async fn closed(mut self, tickets: Option<Rc<Cell<u64>>>) {
        loop {
            match &tickets {
                Some(t) => {
                    if t.get() == 0 {
                        break;
                    }
                    t.set(t.get() - 1);
                }
                None => {
                    if Instant::now() >= self.window.end {
                        break;
                    }
                }
            }
            if !self.one(None).await {
                // Don't spin on a refusing target; the loop stays bounded by the window
                // or the ticket count.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    async fn open(mut self, mut schedule: mpsc::UnboundedReceiver<Instant>) {
        while let Some(intended) = schedule.recv().await {
            if Instant::now() >= self.window.hard_stop {
                let left = 1 + schedule.len() as u64;
                self.stats.borrow_mut().unsent += left;
                break;
            }
            self.one(Some(intended)).await;
        }
    }
}

/// A `timerfd` as tokio sees it (`AsyncFd` wants `AsRawFd`).
struct TimerFdIo(TimerFd);

impl AsRawFd for TimerFdIo {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers the timerfd with the runtime's reactor.
///
/// The one `unsafe` of this crate: tokio 1.54 deprecated its safe constructors in favour of
/// `AsyncFd::register`, whose contract is that the raw fd stays open and the same while
/// registered. `TimerFdIo` owns its descriptor (an `OwnedFd` inside `TimerFd`), never
/// replaces it, and moves into the `AsyncFd`, so nothing can close it earlier.
#[allow(unsafe_code)]
fn register(timer: TimerFdIo) -> Option<AsyncFd<TimerFdIo>> {
    // SAFETY: see above; the descriptor lives exactly as long as the `AsyncFd`.
    unsafe { AsyncFd::register(timer) }.ok()
}

/// Sleeps until an `Instant` with microsecond precision without blocking the runtime.
struct PreciseTimer {
    fd: Option<AsyncFd<TimerFdIo>>,
}

impl PreciseTimer {
    /// `spin`: never sleep (`Spec::spin`). Otherwise a timerfd, falling back to spinning where
    /// a timerfd cannot be had.
    fn new(spin: bool) -> PreciseTimer {
        if spin {
            return PreciseTimer { fd: None };
        }
        // Per thread: the generator's runtime runs on this one.
        let _ = nix::sys::prctl::set_timerslack(1);
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .ok()
        .and_then(|t| register(TimerFdIo(t)));
        PreciseTimer { fd }
    }

    async fn sleep_until(&self, t: Instant) {
        const SPIN_BELOW: Duration = Duration::from_micros(3);
        loop {
            let now = Instant::now();
            if now >= t {
                return;
            }
            let left = t - now;
            let Some(fd) = &self.fd else {
                return spin_until(t).await;
            };
            if left < SPIN_BELOW {
                return spin_until(t).await;
            }
            let armed = fd.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from(left)),
                TimerSetTimeFlags::empty(),
            );
            if armed.is_err() {
                return spin_until(t).await;
            }
            let Ok(mut guard) = fd.readable().await else {
                return spin_until(t).await;
            };
            // Consume the expiration; tokio's cached readiness is cleared either way.
            let _ = guard.get_inner().0.wait();
            guard.clear_ready();
        }
    }
}

/// Yields until `t`. Each yield lets the runtime poll its I/O driver without blocking, so
/// connections keep being served.
async fn spin_until(t: Instant) {
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

/// Releases request `i` at `start + i / rate` to lane `i mod lanes` until the window ends.
async fn pace(
    rate: f64,
    start: Instant,
    end: Instant,
    lanes: Vec<mpsc::UnboundedSender<Instant>>,
    stats: Rc<RefCell<Stats>>,
    spin: bool,
) {
    let lane_count = lanes.len() as u64;
    let timer = PreciseTimer::new(spin);
    let mut i = 0u64;
    loop {
        let t = start + Duration::from_secs_f64(i as f64 / rate);
        if t >= end {
            break;
        }
        timer.sleep_until(t).await;
        let lag = Instant::now().saturating_duration_since(t);
        let ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
        stats.borrow_mut().send_lag.saturating_record(ns.max(1));
        let lane = usize::try_from(i % lane_count).unwrap_or(0);
        if let Some(tx) = lanes.get(lane) {
            // A lane only stops receiving once past its hard stop.
            let _ = tx.send(t);
        }
        i += 1;
    }
}

fn self_cpu() -> CpuSnapshot {
    CpuSnapshot::take(&[std::process::id()])
}

/// Runs `spec` to the end on a fresh single-threaded runtime in the calling thread (pin the
/// thread first). `on_edge` is called at the start and the end of the measured window.
pub fn run(spec: &Spec, mut on_edge: impl FnMut(Edge)) -> Result<Report> {
    if spec.connections == 0 {
        bail!("at least one connection is needed");
    }
    if let Pace::Open { rate } = spec.pace
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("the request rate must be positive, not {rate}");
    }
    if matches!(
        (spec.pace, spec.budget),
        (Pace::Open { .. }, Budget::Requests(_))
    ) {
        bail!("a fixed request count needs the closed loop");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the load generator's runtime")?;
    let local = tokio::task::LocalSet::new();
    rt.block_on(local.run_until(run_inner(spec, &mut on_edge)))
}

async fn run_inner(spec: &Spec, on_edge: &mut impl FnMut(Edge)) -> Result<Report> {
    let stats = Rc::new(RefCell::new(Stats::new()?));
    let template = Rc::new(RequestTemplate {
        method: spec.method.clone(),
        uri: match spec.protocol {
            Protocol::Http1 => spec.endpoint.origin.clone(),
            Protocol::Http2 => spec.endpoint.absolute.clone(),
        },
        host: (spec.protocol == Protocol::Http1).then(|| spec.endpoint.host.clone()),
        headers: spec.headers.clone(),
        body: Bytes::from(vec![b'x'; spec.request_body]),
    });

    // Connect everything before the clock starts, so connection setup is not measured.
    let mut clients = Vec::with_capacity(spec.lanes());
    match spec.protocol {
        Protocol::Http1 => {
            for _ in 0..spec.connections {
                let sender =
                    connect_or_count(spec.timeout, connect_h1(spec.endpoint.addr), &stats).await;
                clients.push(Client::H1 {
                    addr: spec.endpoint.addr,
                    sender,
                });
            }
        }
        Protocol::Http2 => {
            for _ in 0..spec.connections {
                let conn = Rc::new(SharedH2 {
                    addr: spec.endpoint.addr,
                    slot: tokio::sync::Mutex::new(None),
                });
                let first = connect_or_count(spec.timeout, conn.get(None), &stats).await;
                for _ in 0..spec.streams.max(1) {
                    clients.push(Client::H2 {
                        conn: Rc::clone(&conn),
                        sender: first.clone(),
                        stale: None,
                    });
                }
            }
        }
    }

    let t0 = Instant::now();
    let window = match spec.budget {
        Budget::Timed { warmup, measure } => Window {
            start: t0 + warmup,
            end: t0 + warmup + measure,
            hard_stop: t0 + warmup + measure + spec.grace,
            all: false,
        },
        Budget::Requests(_) => Window {
            start: t0,
            end: t0,
            hard_stop: t0,
            all: true,
        },
    };
    let tickets = match spec.budget {
        Budget::Requests(n) => Some(Rc::new(Cell::new(n))),
        Budget::Timed { .. } => None,
    };
    if let (Pace::Open { .. }, Budget::Timed { measure, .. }) = (spec.pace, spec.budget) {
        let slices = measure.as_nanos().div_ceil(SLICE.as_nanos());
        stats.borrow_mut().slice_max_ns = vec![0; usize::try_from(slices).unwrap_or(0)];
    }

    let mut lanes = Vec::with_capacity(clients.len());
    let mut schedules = Vec::new();
    for client in clients {
        let lane = Lane {
            client,
            template: Rc::clone(&template),
            stats: Rc::clone(&stats),
            window,
            timeout: spec.timeout,
        };
        lanes.push(match spec.pace {
            Pace::Closed => tokio::task::spawn_local(lane.closed(tickets.clone())),
            Pace::Open { .. } => {
                let (tx, rx) = mpsc::unbounded_channel();
                schedules.push(tx);
                tokio::task::spawn_local(lane.open(rx))
            }
        });
    }
    let pacer = match spec.pace {
        Pace::Open { rate } => Some(tokio::task::spawn_local(pace(
            rate,
            t0,
            window.end,
            schedules,
            Rc::clone(&stats),
            spec.spin,
        ))),
        Pace::Closed => None,
    };

    let (cpu_start, cpu_end) = if window.all {
        on_edge(Edge::Start);
        let start = self_cpu();
        for lane in lanes {
            lane.await.context("a load lane panicked")?;
        }
        on_edge(Edge::End);
        (start, self_cpu())
    } else {
        // A closed loop's lanes need the whole CPU: only an open loop spins.
        let timer = PreciseTimer::new(spec.spin && matches!(spec.pace, Pace::Open { .. }));
        timer.sleep_until(window.start).await;
        on_edge(Edge::Start);
        let start = self_cpu();
        timer.sleep_until(window.end).await;
        on_edge(Edge::End);
        let end = self_cpu();
        if let Some(p) = pacer {
            p.await.context("the pacer panicked")?;
        }
        for lane in lanes {
            lane.await.context("a load lane panicked")?;
        }
        (start, end)
    };

    let window_secs = cpu_end.at.duration_since(cpu_start.at).as_secs_f64();
    let stats = stats.borrow();
    let completed = stats.ok + stats.non_2xx;
    Ok(Report {
        window_secs,
        ok: stats.ok,
        non_2xx: stats.non_2xx,
        transport_errors: stats.transport_errors,
        timeouts: stats.timeouts,
        unsent: stats.unsent,
        throughput: if window_secs > 0.0 {
            stats.ok as f64 / window_secs
        } else {
            0.0
        },
        latency_us: Percentiles::of(&stats.latency),
        send_lag_us: Percentiles::of(&stats.send_lag),
        slice_max_us: stats
            .slice_max_ns
            .iter()
            .map(|&ns| ns as f64 / 1e3)
            .collect(),
        response_bytes_per_request: if completed > 0 {
            stats.body_bytes as f64 / completed as f64
        } else {
            0.0
        },
        generator_cpu_percent: if window_secs > 0.0 {
            100.0 * cpu_start.cpu_secs_until(&cpu_end) / window_secs
        } else {
            0.0
        },
        first_error: stats.first_error.clone(),
    })
}

/// One request, for readiness checks: the status, or why there was none.
pub fn probe(endpoint: &Endpoint, protocol: Protocol, timeout: Duration) -> Result<StatusCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the probe's runtime")?;
    let local = tokio::task::LocalSet::new();
    let template = RequestTemplate {
        method: Method::GET,
        uri: match protocol {
            Protocol::Http1 => endpoint.origin.clone(),
            Protocol::Http2 => endpoint.absolute.clone(),
        },
        host: (protocol == Protocol::Http1).then(|| endpoint.host.clone()),
        headers: Vec::new(),
        body: Bytes::new(),
    };
    let addr = endpoint.addr;
    rt.block_on(local.run_until(async move {
        let mut client = match protocol {
            Protocol::Http1 => Client::H1 { addr, sender: None },
            Protocol::Http2 => Client::H2 {
                conn: Rc::new(SharedH2 {
                    addr,
                    slot: tokio::sync::Mutex::new(None),
                }),
                sender: None,
                stale: None,
            },
        };
        match tokio::time::timeout(timeout, client.exchange(template.build())).await {
            Ok(Ok((status, _))) => Ok(status),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("no answer within {timeout:?}"),
        }
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn backend() -> Result<Endpoint> {
        Endpoint::for_addr(crate::backend::for_tests()?, "/x?y=1")
    }

    pub(crate) fn spec(endpoint: Endpoint, protocol: Protocol, pace: Pace, budget: Budget) -> Spec {
        Spec {
            endpoint,
            protocol,
            connections: 4,
            streams: 3,
            pace,
            budget,
            method: Method::POST,
            request_body: 100,
            timeout: Duration::from_secs(5),
            grace: Duration::from_millis(500),
            spin: false,
            headers: Vec::new(),
        }
    }

    #[test]
    fn fixed_count_over_both_protocols() -> Result<()> {
        let endpoint = backend()?;
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let s = spec(
                endpoint.clone(),
                protocol,
                Pace::Closed,
                Budget::Requests(300),
            );
            let mut edges = Vec::new();
            let r = run(&s, |e| edges.push(e))?;
            assert_eq!(edges, [Edge::Start, Edge::End]);
            assert_eq!((r.ok, r.failures()), (300, 0), "{protocol:?}: {r:?}");
            assert_eq!(r.latency_us.count, 300);
            assert!((r.response_bytes_per_request - 1024.0).abs() < 1e-9);
            assert!(r.slice_max_us.is_empty(), "no time slices in a closed loop");
        }
        Ok(())
    }

    #[test]
    fn open_loop_holds_the_rate() -> Result<()> {
        let endpoint = backend()?;
        let budget = Budget::Timed {
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(500),
        };
        let mut blocked = Vec::new();
        for spin in [false, true] {
            let s = Spec {
                spin,
                ..spec(
                    endpoint.clone(),
                    Protocol::Http1,
                    Pace::Open { rate: 1000.0 },
                    budget,
                )
            };
            let before = voluntary_switches()?;
            let r = run(&s, |_| {})?;
            blocked.push(voluntary_switches()? - before);
            assert_eq!(r.failures(), 0, "{r:?}");
            // 500 requests are scheduled in the window; allow for the edges.
            assert!((480..=520).contains(&r.latency_us.count), "{r:?}");
            assert!(r.send_lag_us.count > 0);
            // Five 100 ms slices, each with requests, the worst of them the window's worst.
            assert_eq!(r.slice_max_us.len(), 5, "{r:?}");
            assert!(r.slice_max_us.iter().all(|&us| us > 0.0), "{r:?}");
            let worst = r.slice_max_us.iter().copied().fold(0.0, f64::max);
            assert!(
                (worst - r.latency_us.max).abs() <= r.latency_us.max * 0.002,
                "{r:?}"
            );
        }
        // The run is on this thread. Sleeping, it blocks before most of its 600 sends (≈ 1,170
        // times in all here); spinning, it never blocks while the pacer runs (0 times here; at
        // most while connecting and waiting for the last responses). The kernel counts these,
        // so other tests sharing the CPUs do not move them (they moved the CPU share).
        assert!(
            blocked[0] > 300 && blocked[1] < 100,
            "voluntary context switches, sleeping then spinning: {blocked:?}"
        );
        Ok(())
    }

    /// This thread's voluntary context switches so far (times it blocked).
    fn voluntary_switches() -> Result<i64> {
        let status = std::fs::read_to_string("/proc/thread-self/status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .context("no voluntary_ctxt_switches in /proc/thread-self/status")?
            .trim()
            .parse()
            .context("voluntary_ctxt_switches is not a number")
    }

    #[test]
    fn refused_connections_are_counted_not_fatal() -> Result<()> {
        let addr = crate::targets::process::free_addr()?;
        let s = spec(
            Endpoint::for_addr(addr, "/")?,
            Protocol::Http1,
            Pace::Closed,
            Budget::Requests(5),
        );
        let r = run(&s, |_| {})?;
        assert_eq!(r.ok, 0);
        assert!(r.transport_errors >= 5, "{r:?}");
        Ok(())
    }

    #[test]
    fn parses_urls() -> Result<()> {
        let e = Endpoint::parse("http://127.0.0.1:8080/a/b?c=d")?;
        assert_eq!(e.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(e.origin, "/a/b?c=d");
        assert_eq!(e.host, "127.0.0.1:8080");
        assert!(Endpoint::parse("https://127.0.0.1/").is_err());
        Ok(())
    }

    #[test]
    fn extra_headers_are_parsed_and_sent_on_every_request() -> Result<()> {
        let parse = |s: &str| parse_header(s).map_err(anyhow::Error::msg);
        let (name, value) = parse(" X-User-Id :  42 ")?;
        assert_eq!((name.as_str(), value.as_bytes()), ("x-user-id", &b"42"[..]));
        let (_, value) = parse("traceparent: 00-4bf9-00f0-01")?;
        assert_eq!(value.as_bytes(), b"00-4bf9-00f0-01");
        for bad in [
            "no colon",
            ": no name",
            "bad name: 1",
            "x-a: \u{7f}",
            "Host: other",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
        let template = RequestTemplate {
            method: Method::GET,
            uri: Uri::from_static("/"),
            host: Some(HeaderValue::from_static("h")),
            headers: vec![parse("x-user-id: 42")?, parse("x-user-id: 43")?],
            body: Bytes::new(),
        };
        for _ in 0..2 {
            let req = template.build();
            let ids: Vec<_> = req.headers().get_all("x-user-id").iter().collect();
            assert_eq!(ids, ["42", "43"]);
            assert_eq!(req.headers()[HOST], "h");
        }
        Ok(())
    }
}
