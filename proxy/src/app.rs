//! One running proxy: applies configs (compile, bind new listeners, swap snapshots), and runs
//! the control side (admin port, config watching, signals, graceful shutdown) on the thread
//! that calls `run`, apart from the workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accesslog::QUEUE_SIZE;
use crate::config::{self, Config, ConfigError};
use crate::http::observe::Sinks;
use crate::listener::{self, Accept};
use crate::snapshot::{self, ListenerSnapshot, Shared, Snapshot};
use crate::workers::Workers;

/// A listener as the workers run it; identity is (name, address).
struct LiveListener {
    handle: Arc<ArcSwap<ListenerSnapshot>>,
    stop: CancellationToken,
}

pub struct Proxy {
    pub shared: Arc<Shared>,
    current: ArcSwapOption<Snapshot>,
    /// Serializes config changes; never touched by the request path.
    listeners: Mutex<HashMap<(String, SocketAddr), LiveListener>>,
    workers: Workers,
    /// Cancelled when shutdown begins: listeners stop accepting, connections drain.
    pub drain: CancellationToken,
    /// Cancelled to ask for a shutdown (SIGTERM, `POST /shutdown`).
    pub shutdown: CancellationToken,
    /// Every downstream connection, so shutdown can wait for them.
    pub connections: TaskTracker,
    version: AtomicU64,
    /// The span exporter and access-log writers the snapshots hand records to.
    observe: Mutex<ObserveRuntime>,
}

/// A listener the new config adds, with its sockets (one per worker), bound but not serving.
type FreshListener = (Arc<ListenerSnapshot>, Vec<std::net::TcpListener>);

/// What [`Proxy::prepare_sinks`] did for a config not yet in place.
#[derive(Default)]
struct SinkChange {
    /// `Some`: the config replaces the exporter with this one (or with none).
    export: Option<Option<(crate::config::TracingSpec, crate::trace::export::SpanExport)>>,
    /// The outputs whose writers ran before (kept if the config is refused).
    running: Vec<crate::accesslog::Output>,
    /// The outputs the config logs to (the others stop when it is in place).
    in_use: Vec<crate::accesslog::Output>,
}

#[derive(Default)]
struct ObserveRuntime {
    export: Option<(crate::config::TracingSpec, crate::trace::export::SpanExport)>,
    writers: Option<crate::accesslog::Writers>,
}

impl Proxy {
    pub fn new(workers: usize) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            shared: Arc::new(Shared::new()),
            current: ArcSwapOption::empty(),
            listeners: Mutex::new(HashMap::new()),
            workers: Workers::spawn(workers.max(1))?,
            drain: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            version: AtomicU64::new(0),
            observe: Mutex::new(ObserveRuntime::default()),
        }))
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Ready: a config is serving and shutdown has not begun.
    pub fn ready(&self) -> bool {
        self.current.load().is_some() && !self.drain.is_cancelled()
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Validates, compiles and swaps in `config`. On any error nothing changes and the running
    /// config keeps serving. In-flight requests finish on the snapshot they started with.
    pub fn apply(&self, config: Config) -> Result<u64, ConfigError> {
        let mut live = match self.listeners.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let previous = self.current.load_full();
        let version = self.version.load(Ordering::Relaxed) + 1;
        if let Some(prev) = &previous
            && prev.config.workers != config.workers
        {
            tracing::warn!("a change of `workers` takes effect at the next restart");
        }
        for w in crate::config::warnings(&config) {
            tracing::warn!(at = %w.path, "config warning: {}", w.message);
        }
        config::validate(&config)?;
        let (sinks, change) = self.prepare_sinks(&config)?;
        // From here to the commit, a refusal must leave the running exporter and log writers
        // as they were: the serving snapshot still hands its records to them.
        let (snap, fresh) =
            match self.compile_and_bind(config, previous.as_deref(), version, &sinks, &live) {
                Ok(ok) => ok,
                Err(e) => {
                    self.abort_sinks(change);
                    return Err(e);
                }
            };

        // Commit: update kept listeners, start new ones, stop removed ones.
        let keep: HashMap<(String, SocketAddr), &Arc<ListenerSnapshot>> = snap
            .listeners
            .iter()
            .map(|l| ((l.name.clone(), l.address), l))
            .collect();
        live.retain(|key, l| match keep.get(key) {
            Some(s) => {
                l.handle.store(Arc::clone(s));
                true
            }
            None => {
                tracing::info!(listener = %key.0, address = %key.1, "listener removed");
                l.stop.cancel();
                false
            }
        });
        for (l, sockets) in fresh {
            let handle = Arc::new(ArcSwap::new(Arc::clone(&l)));
            let stop = self.drain.child_token();
            let (open, accepted) = self.shared.metrics.listener_connections(&l.name);
            for (i, socket) in sockets.into_iter().enumerate() {
                self.workers.listen(
                    i,
                    Accept {
                        socket,
                        handle: Arc::clone(&handle),
                        stop: stop.clone(),
                        drain: self.drain.clone(),
                        tracker: self.connections.clone(),
                        open: open.clone(),
                        accepted: accepted.clone(),
                    },
                );
            }
            tracing::info!(listener = %l.name, address = %l.address, protocol = ?l.protocol, "listening");
            live.insert((l.name.clone(), l.address), LiveListener { handle, stop });
        }
        self.version.store(version, Ordering::Relaxed);
        self.shared.metrics.config_version.set(version as i64);
        let grace = snap.config.shutdown_grace;
        self.current.store(Some(Arc::new(snap)));
        self.commit_sinks(change, grace);
        Ok(version)
    }

    /// The fallible half of `apply` after the sinks: the snapshot, and sockets for every new
    /// listener (a busy port refuses the config before anything changes).
    fn compile_and_bind(
        &self,
        config: Config,
        previous: Option<&Snapshot>,
        version: u64,
        sinks: &Sinks,
        live: &HashMap<(String, SocketAddr), LiveListener>,
    ) -> Result<(Snapshot, Vec<FreshListener>), ConfigError> {
        let snap = snapshot::compile(
            config,
            previous,
            &self.shared,
            version,
            self.workers.len(),
            sinks,
        )?;
        let mut fresh = Vec::new();
        for l in &snap.listeners {
            if live.contains_key(&(l.name.clone(), l.address)) {
                continue;
            }
            let sockets = (0..self.workers.len())
                .map(|_| listener::bind(l.address))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| ConfigError::Bind {
                    name: l.name.clone(),
                    address: l.address,
                    source,
                })?;
            fresh.push((Arc::clone(l), sockets));
        }
        Ok((snap, fresh))
    }

    /// Applies `text` (a YAML document), counting the outcome in metrics and the log.
    pub fn apply_yaml(&self, text: &str, source: &str) -> Result<u64, ConfigError> {
        let result = Config::from_yaml(text).and_then(|c| self.apply(c));
        match &result {
            Ok(v) => {
                self.shared.metrics.reload(true);
                tracing::info!(version = v, %source, "config applied");
            }
            Err(e) => {
                self.shared.metrics.reload(false);
                let running = self.version.load(Ordering::Relaxed);
                tracing::error!(%source, running_version = running, "config refused, the running config keeps serving: {e}");
            }
        }
        result
    }

    fn observe_state(&self) -> std::sync::MutexGuard<'_, ObserveRuntime> {
        match self.observe.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The span exporter and access-log writers `config` needs, and their queues: a running
    /// exporter whose settings are unchanged and running writers are reused; a new exporter
    /// or writer is started, but nothing running is stopped yet ([`Self::commit_sinks`] does,
    /// once the config is in place; [`Self::abort_sinks`] undoes a refused one). Without a
    /// tokio runtime (never the case in `run`) there are none, and tracing and logging are off.
    fn prepare_sinks(&self, config: &Config) -> Result<(Sinks, SinkChange), ConfigError> {
        let mut change = SinkChange::default();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok((Sinks::default(), change));
        };
        let mut obs = self.observe_state();
        let mut sinks = Sinks::default();
        let same = match (&obs.export, &config.tracing) {
            (Some((running, _)), Some(wanted)) => running == wanted,
            (None, None) => true,
            _ => false,
        };
        if same {
            sinks.spans = obs.export.as_ref().map(|(_, e)| e.sink());
        } else {
            let export = match &config.tracing {
                Some(spec) => match crate::trace::export::start(&spec.to_export_config(), &runtime)
                {
                    Ok(export) => Some((spec.clone(), export)),
                    Err(e) => {
                        return Err(ConfigError::Invalid(vec![crate::config::Problem {
                            path: "tracing.otlp".into(),
                            message: format!("cannot start the span exporter: {e}"),
                        }]));
                    }
                },
                None => None,
            };
            sinks.spans = export.as_ref().map(|(_, e)| e.sink());
            change.export = Some(export);
        }
        let writers = obs
            .writers
            .get_or_insert_with(|| crate::accesslog::Writers::new(runtime.clone(), QUEUE_SIZE));
        change.running = writers.iter().map(|(o, _)| o.clone()).collect();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(a) = &l.access_log else { continue };
            let output = a.output();
            match writers.sink(&output) {
                Ok(sink) => {
                    sinks.logs.insert(output, sink);
                }
                Err(e) => {
                    drop(obs);
                    self.abort_sinks(change);
                    return Err(ConfigError::Invalid(vec![crate::config::Problem {
                        path: format!("listeners[{i}].access_log.path"),
                        message: format!("cannot open {output}: {e}"),
                    }]));
                }
            }
        }
        change.in_use = sinks.logs.keys().cloned().collect();
        Ok((sinks, change))
    }

    /// The config is in place: the exporter it replaced and the writers it no longer names
    /// finish their queues and stop, once the requests begun under older configs are done
    /// with them (up to `grace`); the metrics page follows the new ones.
    fn commit_sinks(&self, change: SinkChange, grace: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut obs = self.observe_state();
        if let Some(export) = change.export
            && let Some((_, old)) = std::mem::replace(&mut obs.export, export)
        {
            runtime.spawn(async move {
                let _ = old.retire(grace, Duration::from_secs(5)).await;
            });
        }
        let span_stats = obs.export.as_ref().map(|(_, e)| Arc::clone(e.stats()));
        let Some(writers) = obs.writers.as_mut() else {
            return;
        };
        for w in writers.take_unused(&change.in_use) {
            runtime.spawn(w.retire(grace, Duration::from_secs(5)));
        }
        self.shared.metrics.observe_stats(
            span_stats,
            writers
                .iter()
                .map(|(o, w)| (o.to_string(), Arc::clone(w.stats())))
                .collect(),
        );
    }

    /// The config was refused: stop what [`Self::prepare_sinks`] started for it; the running
    /// exporter and writers go on as if nothing happened.
    fn abort_sinks(&self, change: SinkChange) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(Some((_, new))) = change.export {
            runtime.spawn(async move {
                let _ = new.shutdown(Duration::from_secs(1)).await;
            });
        }
        let mut obs = self.observe_state();
        if let Some(writers) = obs.writers.as_mut() {
            for w in writers.take_unused(&change.running) {
                runtime.spawn(w.discard(Duration::from_secs(1)));
            }
        }
    }

    /// Stops accepting, drains connections (HTTP/2 clients get GOAWAY), and waits for them up
    /// to the config's grace period.
    pub async fn drain_and_wait(&self) {
        let grace = self
            .snapshot()
            .map_or(Duration::from_secs(30), |s| s.config.shutdown_grace);
        tracing::info!(?grace, "draining");
        self.drain.cancel();
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.len(),
                "grace period over; closing remaining connections"
            );
        } else {
            tracing::info!("drained");
        }
        // Flush what the last requests recorded.
        let (export, writers) = {
            let mut obs = self.observe_state();
            (obs.export.take(), obs.writers.take())
        };
        if let Some((_, e)) = export {
            let _ = e.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(w) = writers {
            w.shutdown(Duration::from_secs(5)).await;
        }
    }
}

pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Options of `tern-proxy run`.
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides the config's `workers`.
    pub workers: Option<usize>,
}

/// Runs the proxy until SIGTERM/SIGINT or `POST /shutdown`, then drains. Call on a
/// current-thread runtime: this is the control thread.
pub async fn run(opts: RunOptions) -> Result<(), ConfigError> {
    let text = read_config(&opts.config)?;
    let config = Config::from_yaml(&text)?;
    crate::config::validate(&config)?;
    let workers = opts
        .workers
        .or(config.workers)
        .unwrap_or_else(crate::workers::available_cpus);
    let admin_addr = config.admin.address;
    let proxy = Proxy::new(workers).map_err(|source| ConfigError::Bind {
        name: "workers".into(),
        address: admin_addr,
        source,
    })?;
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|source| ConfigError::Bind {
            name: "admin".into(),
            address: admin_addr,
            source,
        })?;
    tokio::spawn(crate::admin::serve(Arc::clone(&proxy), admin));
    let source = opts.config.display().to_string();
    proxy.apply_yaml(&text, &source)?;
    tracing::info!(workers, admin = %admin_addr, "tern-proxy running");
    crate::reload::spawn(Arc::clone(&proxy), opts.config.clone(), text);
    tokio::spawn(housekeeping(Arc::clone(&proxy)));

    wait_for_shutdown(&proxy).await;
    proxy.drain_and_wait().await;
    Ok(())
}

/// Periodic work kept off the request path: evicting idle keys of keyed rate limiters.
async fn housekeeping(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(snap) = proxy.snapshot() {
            for l in &snap.listeners {
                let routes = l.routes.iter().filter_map(|r| r.rate_limit.as_ref());
                for limit in l.rate_limit.iter().chain(routes) {
                    limit.limiter.housekeeping();
                }
            }
        }
    }
}

async fn wait_for_shutdown(proxy: &Proxy) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::warn!("cannot install signal handlers; only POST /shutdown stops the proxy");
            proxy.shutdown.cancelled().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        () = proxy.shutdown.cancelled() => tracing::info!("shutdown requested on the admin port"),
    }
}
