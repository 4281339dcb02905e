//! The proxy's metrics: one prometheus-client registry; handles are resolved when a config is
//! compiled, so the request path only touches atomics (no label hashing, no locks).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric family the proxy exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
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
        let mut registry = Registry::with_prefix("tern");
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
        let mirrors = Family::<RouteLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Copies of requests sent to a mirror backend",
            mirrors.clone(),
        );
        Self {
            registry,
            requests,
            duration,
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
        let duration = self.duration.get_or_create_owned(&RouteLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            backend: backend.to_owned(),
        });
        TargetMetrics { by_class, duration }
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
}

impl TargetMetrics {
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed);
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
