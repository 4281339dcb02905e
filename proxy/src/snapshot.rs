//! A compiled, immutable config: what the request path reads. Built once per config change,
//! off the request path. State that must outlive a change is carried over from the previous
//! snapshot: per backend (by name) its breaker counters, each surviving endpoint's outlier
//! and load state (by address) and its retry budget (while the budget settings are equal);
//! per route and listener (by name) the rate-limit buckets while the limit is unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::balance::Balancer;
use crate::breaker::{LimitCounters, Limits, OutlierConfig, OutlierDetector};
use crate::config::{
    self, Backend, Config, ConfigError, HeaderModifier, HttpSettings, ListenerProtocol,
    PathModifier, Problem, UpstreamProtocol,
};
use crate::metrics::{BackendMetrics, Metrics, TargetMetrics};
use crate::ratelimit::Limiter;
use crate::retry::{RetryBudget, RetryPolicy};
use crate::router::Router;
use crate::split::Split;

/// Process-wide state of one proxy instance that snapshots refer to.
pub struct Shared {
    pub metrics: Metrics,
    /// Endpoint → slot number in each worker's connection pool. Slots are stable across
    /// snapshots, so a pooled connection survives any config change that keeps its endpoint.
    /// Locked only while compiling a config.
    slots: Mutex<HashMap<(SocketAddr, UpstreamProtocol), usize>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    pub fn new() -> Self {
        Self {
            metrics: Metrics::new(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, addr: SocketAddr, proto: UpstreamProtocol) -> usize {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = slots.len();
        *slots.entry((addr, proto)).or_insert(next)
    }
}

/// The whole running config.
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    /// In the order of `config.listeners`.
    pub listeners: Vec<Arc<ListenerSnapshot>>,
    backends: Arc<Vec<Arc<BackendRt>>>,
}

impl Snapshot {
    pub fn backends(&self) -> &[Arc<BackendRt>] {
        &self.backends
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSnapshot>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// What one listener's requests read: its routes and every backend they may reach.
pub struct ListenerSnapshot {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    pub http: HttpSettings,
    /// One router per worker when the table has regexes: a `Regex` used from a thread other
    /// than its first user takes a lock inside the regex crate; a clone per worker does not.
    /// A single shared router otherwise.
    routers: Vec<Router>,
    pub routes: Vec<RouteRt>,
    pub backends: Arc<Vec<Arc<BackendRt>>>,
    pub tcp_backend: Option<usize>,
    /// The listener's own rate limit, checked before routing.
    pub rate_limit: Option<RateLimitRt>,
    /// Request id, trace context, access log.
    pub observe: crate::http::observe::Observe,
    /// Requests that matched no route (or were refused before routing).
    pub no_route: TargetMetrics,
    pub in_flight: prometheus_client::metrics::gauge::Gauge,
    /// (received from clients, sent to clients) bytes of opaque TCP connections.
    pub tcp_bytes: (
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    ),
    pub version: u64,
}

impl ListenerSnapshot {
    /// The route table for the calling worker thread.
    pub fn router(&self) -> Option<&Router> {
        self.routers
            .get(crate::workers::current())
            .or_else(|| self.routers.first())
    }
}

pub struct RouteRt {
    pub name: String,
    /// The name for spans and log lines (shared, not copied, per request).
    pub label: Arc<str>,
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub rate_limit: Option<RateLimitRt>,
    pub fault: Option<FaultRt>,
    pub mirror: Option<MirrorRt>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite_host: Option<HeaderValue>,
    pub rewrite_path: Option<PathModifier>,
    pub redirect: Option<config::Redirect>,
    pub split: Split,
    /// Metrics of this route when no backend could be picked (all weights 0, redirects).
    pub local: TargetMetrics,
}

/// A rate limit and where its refusals are counted. The limiter (its buckets) is shared with
/// the next snapshot while the limit's settings are unchanged.
pub struct RateLimitRt {
    pub spec: config::RateLimitSpec,
    pub limiter: Arc<Limiter>,
    pub limited: prometheus_client::metrics::counter::Counter,
}

/// Fault injection, percentages in parts per million.
pub struct FaultRt {
    pub delay: Option<(u32, Duration)>,
    pub abort: Option<(u32, http::StatusCode)>,
    pub delays: prometheus_client::metrics::counter::Counter,
    pub aborts: prometheus_client::metrics::counter::Counter,
}

pub struct MirrorRt {
    pub backend: usize,
    /// Parts per million of requests mirrored.
    pub ppm: u32,
    pub sent: prometheus_client::metrics::counter::Counter,
}

/// One backend: endpoints, how to reach them, and the state that protects them.
pub struct BackendRt {
    pub name: String,
    /// The name for spans and log lines (shared, not copied, per request).
    pub label: Arc<str>,
    pub settings: Backend,
    pub endpoints: Vec<EndpointRt>,
    pub limits: Limits,
    /// In-use counters of the circuit-breaker limits; the same `Arc` for as long as the
    /// backend's name lives, so requests in flight stay counted across changes.
    pub counters: Arc<LimitCounters>,
    /// Indexed like `endpoints`.
    pub outlier: OutlierDetector,
    /// Outlier detection is configured (otherwise `outlier` never ejects).
    pub outlier_enabled: bool,
    /// Spread over every endpoint when all are ejected, rather than refuse.
    pub panic: bool,
    /// Indexed like `endpoints`.
    pub balancer: Balancer,
    pub budget: Arc<RetryBudget>,
    pub metrics: BackendMetrics,
}

/// The endpoint chosen for one try.
#[derive(Debug, Clone, Copy)]
pub struct Picked<'a> {
    pub index: usize,
    pub endpoint: &'a EndpointRt,
    /// This try is the half-open probe: its outcome decides whether the endpoint returns.
    pub probe: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    /// Index into each worker's connection pool.
    pub slot: usize,
}

impl BackendRt {
    fn compile(
        b: &Backend,
        old: Option<&BackendRt>,
        shared: &Shared,
        now: Instant,
    ) -> Result<Self, String> {
        let addrs: Vec<SocketAddr> = b.endpoints.clone();
        let outlier_config = match &b.outlier_detection {
            Some(o) => o.to_config(),
            // Off: never eject.
            None => OutlierConfig {
                consecutive_failures: 0,
                ..OutlierConfig::default()
            },
        };
        let balance = b.load_balancer.to_config();
        let budget_config = b.retry_budget.to_config()?;
        let (counters, outlier, balancer, budget) = match old {
            Some(o) => (
                Arc::clone(&o.counters),
                o.outlier.carry_over(&addrs, outlier_config),
                o.balancer.carry_over(&addrs, balance, now),
                if o.settings.retry_budget == b.retry_budget {
                    Arc::clone(&o.budget)
                } else {
                    Arc::new(RetryBudget::new(
                        &budget_config,
                        tokio::time::Instant::from_std(now),
                    ))
                },
            ),
            None => (
                Arc::new(LimitCounters::new()),
                OutlierDetector::new(&addrs, outlier_config, now),
                Balancer::new(&addrs, balance, now),
                Arc::new(RetryBudget::new(
                    &budget_config,
                    tokio::time::Instant::from_std(now),
                )),
            ),
        };
        let metrics = shared.metrics.backend(&b.name);
        metrics.ejected.set(outlier.ejected() as i64);
        Ok(Self {
            name: b.name.clone(),
            label: Arc::from(b.name.as_str()),
            endpoints: addrs
                .iter()
                .map(|&addr| EndpointRt {
                    addr,
                    slot: shared.slot(addr, b.protocol),
                })
                .collect(),
            limits: b.circuit_breaker.to_limits(),
            counters,
            outlier,
            outlier_enabled: b.outlier_detection.is_some(),
            panic: b.outlier_detection.as_ref().is_some_and(|o| o.panic),
            balancer,
            budget,
            metrics,
            settings: b.clone(),
        })
    }

    /// The endpoint for one try: ejected endpoints are skipped, a half-open one is taken only
    /// by the one caller that wins its probe (`probe` is then true: report its outcome).
    /// Every endpoint ejected: `NoHealthyEndpoints`, or in panic mode any endpoint.
    pub fn pick(&self, now: Instant) -> Result<Picked<'_>, crate::error::ProxyError> {
        use crate::breaker::Availability;
        use crate::error::ProxyError;
        let at = |index: usize| -> Result<Picked<'_>, ProxyError> {
            match self.endpoints.get(index) {
                Some(endpoint) => Ok(Picked {
                    index,
                    endpoint,
                    probe: false,
                }),
                None => Err(ProxyError::NoEndpoints),
            }
        };
        if self.endpoints.is_empty() {
            return Err(ProxyError::NoEndpoints);
        }
        if !self.outlier_enabled {
            let i = self.balancer.pick(now, |_| true);
            return i.map_or(Err(ProxyError::NoEndpoints), at);
        }
        let available = |i| self.outlier.is_available(i, now) != Availability::Ejected;
        let Some(i) = self.balancer.pick(now, available) else {
            if self.panic {
                let i = self.balancer.pick(now, |_| true);
                return i.map_or(Err(ProxyError::NoEndpoints), at);
            }
            return Err(ProxyError::NoHealthyEndpoints);
        };
        if self.outlier.is_available(i, now) != Availability::Probe {
            return at(i);
        }
        if self.outlier.try_probe(i, now).is_some() {
            tracing::info!(backend = %self.name, endpoint = %self.endpoints[i].addr, "endpoint half-open: sending one probe request");
            return at(i).map(|p| Picked { probe: true, ..p });
        }
        // Someone else took the probe: pick among the healthy ones only.
        let healthy = |i| self.outlier.is_available(i, now) == Availability::Healthy;
        match self.balancer.pick(now, healthy) {
            Some(i) => at(i),
            None if self.panic => at(i),
            None => Err(ProxyError::NoHealthyEndpoints),
        }
    }

    /// Reports how a try to endpoint `index` went to outlier detection; logs and counts any
    /// transition.
    pub fn record(&self, index: usize, outcome: crate::breaker::Outcome, now: Instant) {
        use crate::breaker::Transition;
        if !self.outlier_enabled {
            return;
        }
        let Some(t) = self.outlier.record(index, outcome, now) else {
            return;
        };
        let addr = self.endpoints.get(index).map(|e| e.addr);
        match t {
            Transition::Ejected { for_, times } => {
                self.metrics.ejections.inc();
                tracing::warn!(backend = %self.name, endpoint = ?addr, ejected_for = ?for_, times, "endpoint ejected");
            }
            Transition::Restored => {
                tracing::info!(backend = %self.name, endpoint = ?addr, "endpoint restored");
            }
            Transition::HalfOpen | Transition::EjectionRefused => {}
        }
        self.metrics.ejected.set(self.outlier.ejected() as i64);
    }

    /// The circuit-breaker view for `GET /breakers`.
    pub fn breaker_view(&self, now: Instant) -> crate::breaker::BreakerView {
        crate::breaker::BreakerView {
            backend: self.name.clone(),
            limits: self.counters.view(&self.limits),
            outlier: self.outlier.view(now),
        }
    }
}

impl RateLimitRt {
    /// Compiles `spec`, reusing `old`'s buckets when its settings are the same.
    fn compile(
        spec: &config::RateLimitSpec,
        old: Option<&RateLimitRt>,
        limited: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self, String> {
        let limiter = match old {
            Some(o) if o.spec == *spec => Arc::clone(&o.limiter),
            _ => Arc::new(Limiter::new(&spec.to_config()?)?),
        };
        Ok(Self {
            spec: spec.clone(),
            limiter,
            limited,
        })
    }
}

/// Precompiled header edits (names and values parsed once).
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// A route's header edits; an invalid name or value is refused.
    pub fn compile(m: &HeaderModifier) -> Result<Self, String> {
        let pair = |h: &config::HeaderValueSpec| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(&h.value).map_err(|e| e.to_string())?,
            ))
        };
        Ok(Self {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Gateway API order: set, then add, then remove.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// Waits, up to `grace`, until `held` says nothing holds a handle any more: a sink an old
/// config compiled in lives on in the requests begun under that config (each holds its
/// snapshot) and in connections still draining. Checked every 50 ms: retiring is rare.
pub async fn until_released(held: impl Fn() -> bool, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while held() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Compiles `config`, which must have passed `config::validate` (`app::Proxy::apply` checks it
/// once, before starting the exporters and log writers it needs). `previous` lends its
/// per-backend state. Problems only compiling can find (e.g. header values) are reported.
/// `workers`: how many worker threads will read it (regex route tables are cloned per worker).
/// `sinks`: the span exporter's and access-log writers' queues the listeners hand records to.
pub fn compile(
    config: Config,
    previous: Option<&Snapshot>,
    shared: &Shared,
    version: u64,
    workers: usize,
    sinks: &crate::http::observe::Sinks,
) -> Result<Snapshot, ConfigError> {
    let mut problems = Vec::new();

    let now = Instant::now();
    let old: HashMap<&str, &Arc<BackendRt>> = previous
        .map(|p| p.backends.iter().map(|b| (b.name.as_str(), b)).collect())
        .unwrap_or_default();
    let mut backends: Vec<Arc<BackendRt>> = Vec::with_capacity(config.backends.len());
    for (i, b) in config.backends.iter().enumerate() {
        let prev = old.get(b.name.as_str()).map(|o| o.as_ref());
        match BackendRt::compile(b, prev, shared, now) {
            Ok(rt) => backends.push(Arc::new(rt)),
            Err(message) => problems.push(Problem {
                path: format!("backends[{i}]"),
                message,
            }),
        }
    }
    let index: HashMap<&str, usize> = config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.as_str(), i))
        .collect();
    let backends = Arc::new(backends);

    let mut listeners = Vec::with_capacity(config.listeners.len());
    for (li, l) in config.listeners.iter().enumerate() {
        let prev_listener = previous.and_then(|p| p.listener(&l.name));
        let prev_route =
            |name: &str| prev_listener.and_then(|pl| pl.routes.iter().find(|r| r.name == name));
        let limit = |spec: Option<&config::RateLimitSpec>,
                     old: Option<&RateLimitRt>,
                     route: &str,
                     at: String,
                     problems: &mut Vec<Problem>| {
            let spec = spec?;
            let counter = shared.metrics.rate_limited(&l.name, route);
            match RateLimitRt::compile(spec, old, counter) {
                Ok(rt) => Some(rt),
                Err(message) => {
                    problems.push(Problem { path: at, message });
                    None
                }
            }
        };
        let listener_limit = limit(
            l.rate_limit.as_ref(),
            prev_listener.and_then(|pl| pl.rate_limit.as_ref()),
            "",
            format!("listeners[{li}].rate_limit"),
            &mut problems,
        );
        let router = match Router::new(&l.routes) {
            Ok(r) => r,
            Err(e) => {
                problems.push(Problem {
                    path: format!("listeners[{li}].routes"),
                    message: e,
                });
                continue;
            }
        };
        let mut routes = Vec::with_capacity(l.routes.len());
        for (ri, r) in l.routes.iter().enumerate() {
            let at = format!("listeners[{li}].routes[{ri}]");
            let ops = |m: &HeaderModifier, what: &str, problems: &mut Vec<Problem>| {
                HeaderOps::compile(m).unwrap_or_else(|e| {
                    problems.push(Problem {
                        path: format!("{at}.filters.{what}"),
                        message: e,
                    });
                    HeaderOps::default()
                })
            };
            let request_headers = ops(&r.filters.request_headers, "request_headers", &mut problems);
            let response_headers = ops(
                &r.filters.response_headers,
                "response_headers",
                &mut problems,
            );
            let targets = r
                .backends
                .iter()
                .filter_map(|wb| {
                    let i = *index.get(wb.name.as_str())?;
                    Some((
                        i,
                        wb.weight,
                        shared.metrics.target(&l.name, &r.name, &wb.name),
                    ))
                })
                .collect();
            let rewrite = r.filters.url_rewrite.as_ref();
            let rate_limit = limit(
                r.rate_limit.as_ref(),
                prev_route(&r.name).and_then(|pr| pr.rate_limit.as_ref()),
                &r.name,
                format!("{at}.rate_limit"),
                &mut problems,
            );
            let retry = match r.retry.as_ref().map(config::RetrySpec::to_policy) {
                Some(Ok(p)) => Some(p),
                Some(Err(message)) => {
                    problems.push(Problem {
                        path: format!("{at}.retry"),
                        message,
                    });
                    None
                }
                None => None,
            };
            let fault = r.fault.as_ref().map(|f| {
                let (delays, aborts) = shared.metrics.faults(&l.name, &r.name);
                FaultRt {
                    delay: f
                        .delay
                        .as_ref()
                        .map(|d| (config::percent_to_ppm(d.percent), d.duration)),
                    abort: f.abort.as_ref().map(|a| {
                        (
                            config::percent_to_ppm(a.percent),
                            http::StatusCode::from_u16(a.status)
                                .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                        )
                    }),
                    delays,
                    aborts,
                }
            });
            let mirror = r.filters.request_mirror.as_ref().and_then(|m| {
                Some(MirrorRt {
                    backend: *index.get(m.backend.as_str())?,
                    ppm: config::percent_to_ppm(m.percent),
                    sent: shared.metrics.mirror(&l.name, &r.name, &m.backend),
                })
            });
            routes.push(RouteRt {
                name: r.name.clone(),
                label: Arc::from(r.name.as_str()),
                timeout: r.timeout,
                idle_timeout: r.idle_timeout,
                retry,
                rate_limit,
                fault,
                mirror,
                request_headers,
                response_headers,
                rewrite_host: rewrite
                    .and_then(|rw| rw.hostname.as_deref())
                    .and_then(|h| HeaderValue::from_str(h).ok()),
                rewrite_path: rewrite.and_then(|rw| rw.path.clone()),
                redirect: r.filters.redirect.clone(),
                split: Split::new(targets),
                local: shared.metrics.target(&l.name, &r.name, ""),
            });
        }
        let observe =
            match crate::http::observe::Observe::compile(l, config.tracing.as_ref(), sinks) {
                Ok(o) => o,
                Err(message) => {
                    problems.push(Problem {
                        path: format!("listeners[{li}]"),
                        message,
                    });
                    continue;
                }
            };
        listeners.push(Arc::new(ListenerSnapshot {
            observe,
            name: l.name.clone(),
            address: l.address,
            protocol: l.protocol,
            http: l.http.clone(),
            routers: if uses_regex(&l.routes) {
                vec![router; workers.max(1)]
            } else {
                vec![router]
            },
            routes,
            backends: Arc::clone(&backends),
            tcp_backend: l.tcp_backend.as_deref().and_then(|n| index.get(n).copied()),
            rate_limit: listener_limit,
            no_route: shared.metrics.target(&l.name, "", ""),
            in_flight: shared.metrics.in_flight(&l.name),
            tcp_bytes: shared.metrics.tcp_bytes(&l.name),
            version,
        }));
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Snapshot {
        version,
        config: Arc::new(config),
        listeners,
        backends,
    })
}

fn uses_regex(routes: &[config::Route]) -> bool {
    use config::{PathMatchType, ValueMatchType};
    routes.iter().flat_map(|r| &r.matches).any(|m| {
        m.path
            .as_ref()
            .is_some_and(|p| p.kind == PathMatchType::RegularExpression)
            || m.headers
                .iter()
                .any(|h| h.kind == ValueMatchType::RegularExpression)
            || m.query_params
                .iter()
                .any(|q| q.kind == ValueMatchType::RegularExpression)
    })
}
