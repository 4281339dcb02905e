//! A compiled, immutable config: what the request path reads. Built once per config change,
//! off the request path; state that must outlive a change (round-robin position, and later
//! breakers and EWMA scores) is carried over from the previous snapshot by backend name when
//! the backend's settings are unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{
    self, Backend, Config, ConfigError, HeaderModifier, HttpSettings, ListenerProtocol,
    PathModifier, Problem, UpstreamProtocol,
};
use crate::metrics::{Metrics, TargetMetrics};
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
    /// Requests that matched no route.
    pub no_route: TargetMetrics,
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
    pub timeout: Option<Duration>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite_host: Option<HeaderValue>,
    pub rewrite_path: Option<PathModifier>,
    pub redirect: Option<config::Redirect>,
    pub split: Split,
    /// Metrics of this route when no backend could be picked (all weights 0, redirects).
    pub local: TargetMetrics,
}

/// One backend: endpoints and how to reach them.
pub struct BackendRt {
    pub name: String,
    pub settings: Backend,
    pub endpoints: Vec<EndpointRt>,
    pub state: Arc<BackendState>,
}

/// Per-backend state that survives config changes.
#[derive(Default)]
pub struct BackendState {
    next: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    /// Index into each worker's connection pool.
    pub slot: usize,
}

impl BackendRt {
    /// Round robin over the endpoints; one atomic add, no lock.
    pub fn pick(&self) -> Option<&EndpointRt> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => {
                let i = self.state.next.fetch_add(1, Ordering::Relaxed) % n;
                self.endpoints.get(i)
            }
        }
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
    fn compile(m: &HeaderModifier) -> Result<Self, String> {
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

/// Validates `config` and compiles it. `previous` lends its per-backend state.
/// `workers`: how many worker threads will read it (regex route tables are cloned per worker).
pub fn compile(
    config: Config,
    previous: Option<&Snapshot>,
    shared: &Shared,
    version: u64,
    workers: usize,
) -> Result<Snapshot, ConfigError> {
    config::validate(&config)?;
    let mut problems = Vec::new();

    let old: HashMap<&str, &Arc<BackendRt>> = previous
        .map(|p| p.backends.iter().map(|b| (b.name.as_str(), b)).collect())
        .unwrap_or_default();
    let backends: Vec<Arc<BackendRt>> = config
        .backends
        .iter()
        .map(|b| {
            let state = match old.get(b.name.as_str()) {
                Some(o) if o.settings == *b => Arc::clone(&o.state),
                _ => Arc::default(),
            };
            Arc::new(BackendRt {
                name: b.name.clone(),
                endpoints: b
                    .endpoints
                    .iter()
                    .map(|&addr| EndpointRt {
                        addr,
                        slot: shared.slot(addr, b.protocol),
                    })
                    .collect(),
                settings: b.clone(),
                state,
            })
        })
        .collect();
    let index: HashMap<&str, usize> = config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.as_str(), i))
        .collect();
    let backends = Arc::new(backends);

    let mut listeners = Vec::with_capacity(config.listeners.len());
    for (li, l) in config.listeners.iter().enumerate() {
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
            routes.push(RouteRt {
                name: r.name.clone(),
                timeout: r.timeout,
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
        listeners.push(Arc::new(ListenerSnapshot {
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
            no_route: shared.metrics.target(&l.name, "", ""),
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
