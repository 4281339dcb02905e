//! Circuit breaking, per backend: [`limits`] caps how much of a backend is in use at once
//! (connections, pending requests, requests, retries: Envoy's cluster circuit breakers), and
//! [`outlier`] takes endpoints that keep failing out of rotation for a while (Envoy's outlier
//! ejection, with a single probe request before an endpoint comes back).
//!
//! Both are shared by every worker thread and sit on the request path, so both are atomics
//! only, allocate nothing per request and never read the clock (instants are arguments). The
//! one lock is taken on the rare transition of ejecting an endpoint. Both keep their state
//! across config changes: [`LimitCounters`] is one `Arc` per backend, kept as long as the
//! backend's name is; [`OutlierDetector::carry_over`] shares each surviving endpoint's state.
//!
//! How a request uses them, in order: take a request permit (none: 503
//! `tern-proxy-error: overflow`); if [`OutlierDetector::all_ejected`], answer 503
//! `no-healthy-endpoints` (or spread over all endpoints in panic mode); let the balancer
//! pick among endpoints that are not [`Availability::Ejected`]; when the pick is
//! [`Availability::Probe`], send only if [`OutlierDetector::try_probe`] wins, else pick again
//! among healthy ones; report the [`Outcome`] with [`OutlierDetector::record`] and log and
//! count the [`Transition`] it returns.

pub mod limits;
pub mod outlier;

pub use limits::{LimitCounters, Limits, LimitsView, Permit, Resource, Usage};
pub use outlier::{
    Availability, EndpointStatus, EndpointView, Outcome, OutlierConfig, OutlierDetector,
    OutlierView, Transition,
};

use serde::Serialize;

/// One backend's breakers, as `GET /breakers` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerView {
    pub backend: String,
    pub limits: LimitsView,
    pub outlier: OutlierView,
}

#[cfg(test)]
mod tests;
