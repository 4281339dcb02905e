//! Per-backend limits on concurrent use: connections, requests waiting for a connection,
//! requests in flight, retries in flight.
//!
//! The model is Envoy's cluster circuit breakers (`max_connections`, `max_pending_requests`,
//! `max_requests`, `max_retries`, with Envoy's defaults 1024 / 1024 / 1024 / 3). Each limit is
//! a plain counter of things in use, shared by every worker thread. A request takes a
//! [`Permit`] before it uses the resource and gives it back by dropping it; when the counter is
//! at its limit there is no permit and the caller answers at once (503 with
//! `tern-proxy-error: overflow`) instead of queueing, so an overloaded backend sheds load
//! rather than building a queue that times out anyway.
//!
//! What we chose:
//! - A counter never goes over its limit, even under races: the increment is a
//!   compare-and-swap that refuses at the limit (`fetch_update`), not an add-then-check.
//! - The limits are an argument, not part of the counters, so the counters can be kept across
//!   a config change that changes the limits: requests in flight stay counted, and a lowered
//!   limit applies to the next acquire (the ones already over it finish normally).
//! - A permit owns an `Arc` of the counters (one reference-count increment, no allocation), so
//!   it can live in a response future or a pooled connection for as long as needed.
//! - Refusals are counted per resource (Envoy's `upstream_rq_pending_overflow` and friends).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::Serialize;

/// The four limits of one backend. Plain parameters, compiled from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Upstream connections open at once, over all workers' pools.
    pub max_connections: u32,
    /// Requests waiting for a connection from the pool.
    pub max_pending: u32,
    /// Requests in flight to the backend.
    pub max_requests: u32,
    /// Retries in flight to the backend: what stops a retry storm from doubling the load
    /// of a backend that is already failing.
    pub max_retries: u32,
}

impl Default for Limits {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

impl Limits {
    /// The limit on `resource`.
    pub fn max(&self, resource: Resource) -> u32 {
        match resource {
            Resource::Connections => self.max_connections,
            Resource::Pending => self.max_pending,
            Resource::Requests => self.max_requests,
            Resource::Retries => self.max_retries,
        }
    }
}

/// What a permit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Connections,
    Pending,
    Requests,
    Retries,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::Pending,
        Resource::Requests,
        Resource::Retries,
    ];

    /// The name used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Pending => "pending",
            Resource::Requests => "requests",
            Resource::Retries => "retries",
        }
    }
}

/// One backend's usage counters, shared by all workers. Keep it in an `Arc` (permits hold a
/// reference) and carry the same `Arc` across config changes for as long as the backend exists.
///
/// Every operation is a single atomic read-modify-write with `Relaxed` ordering: the counters
/// guard no other memory, and read-modify-writes of one atomic are totally ordered whatever
/// the ordering, which is all the "never over the limit" guarantee needs.
#[derive(Debug, Default)]
pub struct LimitCounters {
    connections: Counter,
    pending: Counter,
    requests: Counter,
    retries: Counter,
}

#[derive(Debug, Default)]
struct Counter {
    current: AtomicU32,
    /// Acquisitions refused because `current` was at the limit.
    overflows: AtomicU64,
}

impl LimitCounters {
    pub fn new() -> Self {
        Self::default()
    }

    fn counter(&self, resource: Resource) -> &Counter {
        match resource {
            Resource::Connections => &self.connections,
            Resource::Pending => &self.pending,
            Resource::Requests => &self.requests,
            Resource::Retries => &self.retries,
        }
    }

    /// A permit for one unit of `resource`, or `None` when the backend is at its limit
    /// (the refusal is counted).
    #[must_use = "the permit is given back as soon as it is dropped"]
    pub fn try_acquire(self: &Arc<Self>, resource: Resource, limits: &Limits) -> Option<Permit> {
        let max = limits.max(resource);
        let counter = self.counter(resource);
        // `c < max` before the increment: the counter can reach `max` but never pass it,
        // and `c + 1` cannot overflow.
        let taken = counter
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < max).then_some(c + 1)
            })
            .is_ok();
        if taken {
            Some(Permit {
                counters: Arc::clone(self),
                resource,
            })
        } else {
            counter.overflows.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// A request in flight: hold it until the response (body included) is finished.
    #[must_use = "the permit is given back as soon as it is dropped"]
    pub fn try_acquire_request(self: &Arc<Self>, limits: &Limits) -> Option<Permit> {
        self.try_acquire(Resource::Requests, limits)
    }

    /// An upstream connection: hold it for the connection's lifetime (pooled or not).
    #[must_use = "the permit is given back as soon as it is dropped"]
    pub fn try_acquire_connection(self: &Arc<Self>, limits: &Limits) -> Option<Permit> {
        self.try_acquire(Resource::Connections, limits)
    }

    /// A request waiting for a connection: hold it while waiting, drop it once connected.
    #[must_use = "the permit is given back as soon as it is dropped"]
    pub fn try_acquire_pending(self: &Arc<Self>, limits: &Limits) -> Option<Permit> {
        self.try_acquire(Resource::Pending, limits)
    }

    /// A retry in flight: hold it for the retried attempt, on top of its request permit.
    #[must_use = "the permit is given back as soon as it is dropped"]
    pub fn try_acquire_retry(self: &Arc<Self>, limits: &Limits) -> Option<Permit> {
        self.try_acquire(Resource::Retries, limits)
    }

    /// Units of `resource` in use now.
    pub fn current(&self, resource: Resource) -> u32 {
        self.counter(resource).current.load(Ordering::Relaxed)
    }

    pub fn current_connections(&self) -> u32 {
        self.current(Resource::Connections)
    }

    pub fn current_pending(&self) -> u32 {
        self.current(Resource::Pending)
    }

    pub fn current_requests(&self) -> u32 {
        self.current(Resource::Requests)
    }

    pub fn current_retries(&self) -> u32 {
        self.current(Resource::Retries)
    }

    /// Acquisitions of `resource` refused since these counters were created (a Prometheus
    /// counter: it only grows).
    pub fn overflows(&self, resource: Resource) -> u64 {
        self.counter(resource).overflows.load(Ordering::Relaxed)
    }

    /// Usage against `limits`, for the admin port.
    pub fn view(&self, limits: &Limits) -> LimitsView {
        let usage = |r| Usage {
            current: self.current(r),
            max: limits.max(r),
            overflows: self.overflows(r),
        };
        LimitsView {
            connections: usage(Resource::Connections),
            pending: usage(Resource::Pending),
            requests: usage(Resource::Requests),
            retries: usage(Resource::Retries),
        }
    }
}

/// One unit of a resource, given back when dropped.
#[derive(Debug)]
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct Permit {
    counters: Arc<LimitCounters>,
    resource: Resource,
}

impl Permit {
    pub fn resource(&self) -> Resource {
        self.resource
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Cannot underflow: this permit's increment is still counted.
        self.counters
            .counter(self.resource)
            .current
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's limits and usage, as `GET /breakers` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitsView {
    pub connections: Usage,
    pub pending: Usage,
    pub requests: Usage,
    pub retries: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub current: u32,
    pub max: u32,
    pub overflows: u64,
}
