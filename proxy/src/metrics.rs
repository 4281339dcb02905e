//! The proxy's metrics: one prometheus-client registry; handles are resolved when a config is
//! compiled, so the request path only touches atomics (no label hashing, no locks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub route: String,
    pub backend: String,
    pub status_class: &'static str,
}

/// Status classes as label values, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub backend: String,
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitedLabels {
    pub listener: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub listener: String,
    pub route: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub listener: String,
    pub route: String,
    pub backend: String,
    /// The gRPC status code's name, e.g. `OK`, `UNAVAILABLE`.
    pub grpc_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub listener: String,
    /// `received` (from clients) or `sent` (to clients).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric family the proxy exports.
pub struct Metrics {
    registry: Registry,
    observe: Arc<ObserveCollector>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    upstream_duration: Family<RouteLabels, Histogram>,
    grpc: Family<GrpcLabels, Counter>,
    in_flight: Family<ListenerLabels, Gauge>,
    tcp_bytes: Family<DirectionLabels, Counter>,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections_total: Family<ListenerLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_version: Gauge,
    attempts: Family<BackendLabels, Counter>,
    retries: Family<BackendLabels, Counter>,
    budget_exhausted: Family<BackendLabels, Counter>,
    overflows: Family<OverflowLabels, Counter>,
    ejections: Family<BackendLabels, Counter>,
    ejected: Family<BackendLabels, Gauge>,
    rate_limited: Family<LimitedLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
    mirrors: Family<RouteLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // Standard `process_*` metrics, unprefixed as every Prometheus client exports them.
        root.register_collector(Box::new(ProcessCollector));
        let observe = Arc::new(ObserveCollector::default());
        root.register_collector(Box::new(Arc::clone(&observe)));
        let registry = root.sub_registry_with_prefix("tern");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by listener, route, backend and status class (route and backend are empty when none was chosen)",
            requests.clone(),
        );
        let duration = Family::<RouteLabels, Histogram>::default();
        registry.register(
            "request_duration_seconds",
            "Time from the request's arrival to its response headers",
            duration.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Downstream connections open now",
            connections_open.clone(),
        );
        let connections_total = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections",
            "Downstream connections accepted",
            connections_total.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config loads by result (ok: applied, failed: refused, the last good config kept serving)",
            config_reloads.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Version of the running config (1 for the first, +1 per applied change)",
            config_version.clone(),
        );
        let attempts = Family::<BackendLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Tries sent to a backend: each request once, plus its retries",
            attempts.clone(),
        );
        let retries = Family::<BackendLabels, Counter>::default();
        registry.register("retries", "Retries sent to a backend", retries.clone());
        let budget_exhausted = Family::<BackendLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries not sent because the backend's retry budget was spent",
            budget_exhausted.clone(),
        );
        let overflows = Family::<OverflowLabels, Counter>::default();
        registry.register(
            "breaker_overflows",
            "Requests refused (503 overflow) because a backend was at a circuit-breaker limit",
            overflows.clone(),
        );
        let ejections = Family::<BackendLabels, Counter>::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        let ejected = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "endpoints_ejected",
            "Endpoints of a backend out of rotation now (ejected or probing)",
            ejected.clone(),
        );
        let rate_limited = Family::<LimitedLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by a rate limit (route empty: the listener's own limit)",
            rate_limited.clone(),
        );
        let faults = Family::<FaultLabels, Counter>::default();
        registry.register(
            "fault_injected",
            "Requests delayed or aborted by fault injection",
            faults.clone(),
        );
        let upstream_duration = Family::<RouteLabels, Histogram>::default();
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a try upstream to its response headers, per try",
            upstream_duration.clone(),
        );
        let grpc = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_responses",
            "gRPC responses by grpc-status (from trailers, or the headers of a trailers-only response)",
            grpc.clone(),
        );
        let in_flight = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "requests_in_flight",
            "Requests received and not yet answered (response headers not yet sent)",
            in_flight.clone(),
        );
        let tcp_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tcp_bytes",
            "Bytes of opaque TCP connections, received from and sent to clients",
            tcp_bytes.clone(),
        );
        let mirrors = Family::<RouteLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Copies of requests sent to a mirror backend",
            mirrors.clone(),
        );
        Self {
            registry: root,
            observe,
            requests,
            duration,
            upstream_duration,
            grpc,
            in_flight,
            tcp_bytes,
            connections_open,
            connections_total,
            config_reloads,
            config_version,
            attempts,
            retries,
            budget_exhausted,
            overflows,
            ejections,
            ejected,
            rate_limited,
            faults,
            mirrors,
        }
    }

    /// The handles one backend's resilience layers record into.
    pub fn backend(&self, backend: &str) -> BackendMetrics {
        let l = BackendLabels {
            backend: backend.to_owned(),
        };
        BackendMetrics {
            attempts: self.attempts.get_or_create_owned(&l),
            retries: self.retries.get_or_create_owned(&l),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&l),
            overflows: crate::breaker::Resource::ALL.map(|r| {
                self.overflows.get_or_create_owned(&OverflowLabels {
                    backend: backend.to_owned(),
                    resource: r.as_str(),
                })
            }),
            ejections: self.ejections.get_or_create_owned(&l),
            ejected: self.ejected.get_or_create_owned(&l),
        }
    }

    /// Requests refused by a rate limit; `route` empty for a listener's own limit.
    pub fn rate_limited(&self, listener: &str, route: &str) -> Counter {
        self.rate_limited.get_or_create_owned(&LimitedLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
        })
    }

    /// (delays, aborts) injected on a route.
    pub fn faults(&self, listener: &str, route: &str) -> (Counter, Counter) {
        let f = |kind| {
            self.faults.get_or_create_owned(&FaultLabels {
                listener: listener.to_owned(),
                route: route.to_owned(),
                kind,
            })
        };
        (f("delay"), f("abort"))
    }

    pub fn mirror(&self, listener: &str, route: &str, backend: &str) -> Counter {
        self.mirrors.get_or_create_owned(&RouteLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            backend: backend.to_owned(),
        })
    }

    /// Resolves the handles one (listener, route, backend) target records into.
    pub fn target(&self, listener: &str, route: &str, backend: &str) -> TargetMetrics {
        let by_class = CLASSES.map(|status_class| {
            self.requests.get_or_create_owned(&RequestLabels {
                listener: listener.to_owned(),
                route: route.to_owned(),
                backend: backend.to_owned(),
                status_class,
            })
        });
        let labels = RouteLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            backend: backend.to_owned(),
        };
        let duration = self.duration.get_or_create_owned(&labels);
        let upstream = self.upstream_duration.get_or_create_owned(&labels);
        TargetMetrics {
            by_class,
            duration,
            upstream,
            grpc: Arc::new(GrpcCounters {
                family: self.grpc.clone(),
                labels,
                codes: Default::default(),
            }),
        }
    }

    pub fn in_flight(&self, listener: &str) -> Gauge {
        self.in_flight.get_or_create_owned(&ListenerLabels {
            listener: listener.to_owned(),
        })
    }

    /// (received from clients, sent to clients) bytes of a listener's opaque TCP connections.
    pub fn tcp_bytes(&self, listener: &str) -> (Counter, Counter) {
        let c = |direction| {
            self.tcp_bytes.get_or_create_owned(&DirectionLabels {
                listener: listener.to_owned(),
                direction,
            })
        };
        (c("received"), c("sent"))
    }

    pub fn listener_connections(&self, listener: &str) -> (Gauge, Counter) {
        let l = ListenerLabels {
            listener: listener.to_owned(),
        };
        (
            self.connections_open.get_or_create_owned(&l),
            self.connections_total.get_or_create_owned(&l),
        )
    }

    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// The span exporter's and access-log writers' counters, exported at each scrape. (A new
    /// exporter, after a change of the `tracing` block, starts its counters at 0: Prometheus
    /// reads that as a counter reset.)
    pub fn observe_stats(
        &self,
        spans: Option<Arc<crate::trace::export::ExportStats>>,
        logs: Vec<(String, Arc<crate::accesslog::LogStats>)>,
    ) {
        let mut s = match self.observe.stats.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        *s = (spans, logs);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The counters of one backend's retries and breakers.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    pub attempts: Counter,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    /// Indexed like `breaker::Resource::ALL`.
    pub overflows: [Counter; 4],
    pub ejections: Counter,
    pub ejected: Gauge,
}

impl BackendMetrics {
    pub fn overflow(&self, resource: crate::breaker::Resource) {
        // `Resource::ALL` lists the variants in declaration order.
        if let Some(c) = self.overflows.get(resource as usize) {
            c.inc();
        }
    }
}

/// The counters one route target records into.
#[derive(Clone, Debug)]
pub struct TargetMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    upstream: Histogram,
    grpc: Arc<GrpcCounters>,
}

impl TargetMetrics {
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed);
    }

    /// One try's time to its response headers.
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream.observe(elapsed);
    }

    /// A gRPC response's status, by number (unknown numbers are ignored).
    pub fn grpc_status(&self, code: u8) {
        self.grpc.inc(code);
    }

    /// Shared with response bodies, which see the trailers.
    pub fn grpc(&self) -> &Arc<GrpcCounters> {
        &self.grpc
    }
}

/// The gRPC status names, by code (gRPC's `doc/statuscodes.md`).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// One target's gRPC status counters, each created on its first use (so a route that never
/// sees gRPC exports none): after that, one atomic load and one increment.
#[derive(Debug)]
pub struct GrpcCounters {
    family: Family<GrpcLabels, Counter>,
    labels: RouteLabels,
    codes: [OnceLock<Counter>; 17],
}

impl GrpcCounters {
    pub fn inc(&self, code: u8) {
        let (Some(slot), Some(name)) = (
            self.codes.get(usize::from(code)),
            GRPC_CODES.get(usize::from(code)),
        ) else {
            return;
        };
        slot.get_or_init(|| {
            self.family.get_or_create_owned(&GrpcLabels {
                listener: self.labels.listener.clone(),
                route: self.labels.route.clone(),
                backend: self.labels.backend.clone(),
                grpc_status: name,
            })
        })
        .inc();
    }
}

type ObserveStats = (
    Option<Arc<crate::trace::export::ExportStats>>,
    Vec<(String, Arc<crate::accesslog::LogStats>)>,
);

/// `tern_spans_*` and `tern_access_log_*`, read from the exporter's and writers' own atomics at
/// each scrape (the lock is the scrape's, never the request path's).
#[derive(Debug, Default)]
struct ObserveCollector {
    stats: std::sync::Mutex<ObserveStats>,
}

impl prometheus_client::collector::Collector for ObserveCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        let s = match self.stats.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (spans, logs) = &*s;
        if let Some(st) = spans {
            let m = encoder.encode_descriptor(
                "tern_spans_exported",
                "Spans the collector accepted",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(st.exported()).encode(m)?;
            let mut m = encoder.encode_descriptor(
                "tern_spans_dropped",
                "Spans dropped: the queue was full (collector slow or down), or an export failed",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("queue_full", st.dropped_queue_full()),
                ("export_failed", st.export_failed()),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        if !logs.is_empty() {
            let mut m = encoder.encode_descriptor(
                "tern_access_log_lines",
                "Access-log lines written",
                None,
                MetricType::Counter,
            )?;
            for (output, st) in logs {
                let labels = [("output", output.as_str())];
                ConstCounter::new(st.written()).encode(m.encode_family(&labels)?)?;
            }
            let mut m = encoder.encode_descriptor(
                "tern_access_log_dropped",
                "Access-log lines dropped: the queue was full, or a write failed",
                None,
                MetricType::Counter,
            )?;
            for (output, st) in logs {
                for (reason, n) in [
                    ("queue_full", st.dropped()),
                    ("write_failed", st.write_failed()),
                ] {
                    let labels = [("output", output.as_str()), ("reason", reason)];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// `process_*`: CPU time, resident memory, open and maximum file descriptors, start time,
/// read from /proc at each scrape (Linux; elsewhere, nothing).
#[derive(Debug)]
struct ProcessCollector;

impl ProcessCollector {
    fn stat() -> Option<(f64, f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may contain spaces, in parentheses.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = 100.0; // USER_HZ on every Linux architecture we build for
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        // utime, stime are fields 14 and 15 of stat (11, 12 after the name); starttime 22 (19);
        // rss 24 (21), in pages.
        let cpu = (num(11)? + num(12)?) / ticks;
        let page = 4096.0;
        let rss = num(21)? * page;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let start = boot + num(19)? / ticks;
        Some((cpu, rss, start))
    }

    fn fds() -> Option<(i64, i64)> {
        let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let max = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()?;
        Some((open, max))
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        if let Some((cpu, rss, start)) = Self::stat() {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(rss).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(start).encode(m)?;
        }
        if let Some((open, max)) = Self::fds() {
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(open).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(max).encode(m)?;
        }
        Ok(())
    }
}

/// Upper bounds of the latency buckets, in microseconds (50 µs .. 30 s).
const BOUNDS_US: [u64; 20] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 15_000_000, 20_000_000, 30_000_000,
];

/// A latency histogram of atomics: prometheus-client's own takes a mutex per observation,
/// which workers on several cores would contend on.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// One more than the bounds: the last is +Inf.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); BOUNDS_US.len() + 1];
        for (i, b) in buckets.iter_mut().enumerate() {
            let bound = BOUNDS_US
                .get(i)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            *b = (bound, self.inner.buckets[i].load(Ordering::Relaxed));
        }
        // Count as the sum of the buckets read, so the exposition is self-consistent even
        // while observations race with the scrape.
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_render() {
        let m = Metrics::new();
        let t = m.target("in", "r", "b");
        t.record(http::StatusCode::OK, Duration::from_micros(40));
        t.record(http::StatusCode::OK, Duration::from_micros(300));
        t.record(http::StatusCode::BAD_GATEWAY, Duration::from_secs(60));
        let text = m.render();
        assert!(text.contains(
            r#"tern_requests_total{listener="in",route="r",backend="b",status_class="2xx"} 2"#
        ));
        assert!(text.contains(
            r#"tern_requests_total{listener="in",route="r",backend="b",status_class="5xx"} 1"#
        ));
        assert!(text.contains(
            r#"tern_request_duration_seconds_bucket{le="0.00005",listener="in",route="r",backend="b"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"tern_request_duration_seconds_bucket{le="0.0005",listener="in",route="r",backend="b"} 2"#
        ));
        assert!(text.contains(
            r#"tern_request_duration_seconds_bucket{le="+Inf",listener="in",route="r",backend="b"} 3"#
        ));
        assert!(text.contains(
            r#"tern_request_duration_seconds_count{listener="in",route="r",backend="b"} 3"#
        ));
    }
}
