//! Load balancing over one backend's endpoints: which endpoint gets the next request.
//!
//! Three policies:
//! - [`Policy::P2cEwma`] (the default; Linkerd's, after Finagle): pick two distinct endpoints at
//!   random and send to the cheaper, where cost = peak-EWMA latency × (requests in flight + 1).
//!   Two random choices avoid the herd that "always the cheapest" causes when every worker
//!   sees the same costs, and still keep load off slow or busy endpoints.
//! - [`Policy::LeastRequest`] (Envoy's `LEAST_REQUEST` with two choices): the same two random
//!   choices, cost = requests in flight only.
//! - [`Policy::RoundRobin`]: in turn, skipping unavailable endpoints.
//!
//! The latency estimate (peak EWMA, as Finagle's `PeakEwma` and tower's `peak_ewma`):
//! - Between samples the estimate decays toward zero: read at `t`, it is
//!   `estimate × w` with `w = exp(-(t - last update) / decay)`. An endpoint that stopped
//!   getting traffic because it was slow thus becomes cheap again and gets another chance
//!   within a few `decay` periods, instead of being starved forever by one bad sample.
//! - A sample above the current (decayed) value replaces it at once: latency spikes are
//!   believed immediately, and forgotten slowly.
//! - A sample below it pulls the current value toward it by the weight of the time since the
//!   last update: `current × w + sample × (1 - w)`. Frequent samples move it a little each,
//!   a sample after a long silence almost replaces it.
//! - `decay` defaults to 10 s (Linkerd's).
//!
//! Choices:
//! - A new endpoint starts at the median estimate of the endpoints carried over with it (so it
//!   competes as a typical peer), or at `default_rtt` (30 ms, Linkerd's guess) when there is
//!   none. Zero would flood it until its first responses return; a high value would starve it.
//!   Either way the in-flight factor limits how much one endpoint gets before it answers, and
//!   the decay toward zero brings back any endpoint that got nothing.
//! - [`InFlight::finish`] with `latency_ok = false` records no sample: the caller passes false
//!   for failures, so an endpoint that fails fast does not look fast (outlier ejection deals
//!   with failures).
//! - With unavailable endpoints, P2C draws at random among the available ones; when a few
//!   draws all land on unavailable endpoints it scans from a random start. That scan favours
//!   the endpoint after a run of unavailable ones a little, only when most are unavailable.
//! - Round robin advances the shared position once per endpoint it skips, so the available
//!   ones keep equal shares instead of the one after a skipped endpoint getting double.
//!
//! Lock-free and allocation-free on the request path: each endpoint's stats are two atomics;
//! the estimate and its time stamp share one 64-bit word (a 24-bit float: 16 significant
//! bits; a 40-bit millisecond stamp: 34 years), updated by compare-and-swap. Random numbers
//! come from `fastrand`'s thread-local generator. Instants are arguments.
//!
//! State survives config changes: [`Balancer::carry_over`] shares each surviving endpoint's
//! stats (by address), so requests in flight from the old snapshot are counted, and finish,
//! in the new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a backend spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Power of two choices over peak-EWMA latency × (in flight + 1).
    #[default]
    P2cEwma,
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceConfig {
    pub policy: Policy,
    /// The EWMA's time constant.
    pub decay: Duration,
    /// The first estimate of a backend's endpoints, before any response.
    pub default_rtt: Duration,
}

impl Default for BalanceConfig {
    /// Linkerd's values.
    fn default() -> Self {
        Self {
            policy: Policy::P2cEwma,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

/// Random draws among all endpoints before P2C falls back to a scan for an available one.
const RANDOM_TRIES: usize = 4;

// The estimate word: high 24 bits are the top of an f32 (sign, exponent, 15 bits of
// mantissa: ample for a latency), low 40 bits the update time in ms since the epoch.
const STAMP_BITS: u32 = 40;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

fn pack(estimate_ns: f64, stamp_ms: u64) -> u64 {
    // `finite` keeps it within f32's range. Rounded to nearest: a carry out of the mantissa
    // correctly bumps the exponent (f32::MAX rounds to infinity's bits at worst, which
    // `rtt_estimate` and the cost comparison tolerate).
    let bits = u64::from((finite(estimate_ns) as f32).to_bits().saturating_add(0x80) >> 8);
    (bits << STAMP_BITS) | stamp_ms.min(STAMP_MASK)
}

fn unpack(word: u64) -> (f64, u64) {
    let bits = u32::try_from(word >> STAMP_BITS).unwrap_or(0) << 8;
    (f64::from(f32::from_bits(bits)), word & STAMP_MASK)
}

/// Clamped to what the packed f32 holds: never negative, NaN or infinite.
fn finite(x: f64) -> f64 {
    if x > 0.0 {
        x.min(f64::from(f32::MAX))
    } else {
        0.0 // also NaN
    }
}

fn nanos_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// One endpoint's load; shared by every balancer that has the endpoint.
#[derive(Debug)]
struct EndpointStats {
    in_flight: AtomicU32,
    /// Peak-EWMA latency and when it was last updated (see `pack`).
    rtt: AtomicU64,
    /// What the stamp counts from; the same for every balancer sharing these stats.
    epoch: Instant,
}

impl EndpointStats {
    fn new(estimate_ns: f64, epoch: Instant, now: Instant) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            rtt: AtomicU64::new(pack(estimate_ns, stamp(epoch, now))),
            epoch,
        }
    }

    /// The estimate at `now`, decayed toward zero since its last update.
    fn estimate_ns(&self, now: Instant, decay_ns: f64) -> f64 {
        let (estimate, at) = unpack(self.rtt.load(Ordering::Relaxed));
        estimate * weight(stamp(self.epoch, now).saturating_sub(at), decay_ns)
    }

    fn observe(&self, sample_ns: f64, now: Instant, decay_ns: f64) {
        let now = stamp(self.epoch, now);
        let sample = finite(sample_ns);
        // A CAS loop: concurrent samples each apply to the latest value.
        let _ = self
            .rtt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (estimate, at) = unpack(word);
                let w = weight(now.saturating_sub(at), decay_ns);
                let current = estimate * w;
                let next = if sample > current {
                    sample
                } else {
                    current * w + sample * (1.0 - w)
                };
                Some(pack(next, now.max(at)))
            });
    }
}

fn stamp(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis())
        .unwrap_or(u64::MAX)
        .min(STAMP_MASK)
}

/// `exp(-elapsed / decay)`, elapsed in ms.
fn weight(elapsed_ms: u64, decay_ns: f64) -> f64 {
    // u64 → f64 loses precision only beyond 2^53 ms.
    (-(elapsed_ms as f64) * 1e6 / decay_ns).exp()
}

#[derive(Debug)]
struct Endpoint {
    addr: SocketAddr,
    stats: Arc<EndpointStats>,
}

/// The balancer of one backend, indexed like its endpoint list. Shared by all workers.
#[derive(Debug)]
pub struct Balancer {
    config: BalanceConfig,
    /// `config.decay` in ns, at least 1.
    decay_ns: f64,
    epoch: Instant,
    endpoints: Vec<Endpoint>,
    /// Round robin's position.
    next: AtomicUsize,
}

impl Balancer {
    /// Every endpoint at `default_rtt`, nothing in flight. `now` becomes the epoch: instants
    /// passed later should not be earlier (an earlier one counts as the epoch).
    pub fn new(addrs: &[SocketAddr], config: BalanceConfig, now: Instant) -> Self {
        let decay_ns = nanos_f64(config.decay).max(1.0);
        let initial = nanos_f64(config.default_rtt);
        Self {
            config,
            decay_ns,
            epoch: now,
            endpoints: addrs
                .iter()
                .map(|&addr| Endpoint {
                    addr,
                    stats: Arc::new(EndpointStats::new(initial, now, now)),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A balancer for a new endpoint list (and possibly a new config) that shares the stats of
    /// every endpoint still present, matched by address. New endpoints start at the median
    /// estimate of the surviving ones at `now`, or `default_rtt` when none survive.
    pub fn carry_over(&self, addrs: &[SocketAddr], config: BalanceConfig, now: Instant) -> Self {
        let decay_ns = nanos_f64(config.decay).max(1.0);
        let old: HashMap<SocketAddr, &Arc<EndpointStats>> =
            self.endpoints.iter().map(|e| (e.addr, &e.stats)).collect();
        let mut surviving: Vec<f64> = addrs
            .iter()
            .filter_map(|a| old.get(a))
            .map(|s| s.estimate_ns(now, decay_ns))
            .collect();
        surviving.sort_by(f64::total_cmp);
        let initial = surviving
            .get(surviving.len() / 2)
            .copied()
            .unwrap_or_else(|| nanos_f64(config.default_rtt));
        Self {
            config,
            decay_ns,
            epoch: self.epoch,
            endpoints: addrs
                .iter()
                .map(|&addr| Endpoint {
                    addr,
                    stats: old.get(&addr).map_or_else(
                        || Arc::new(EndpointStats::new(initial, self.epoch, now)),
                        |s| Arc::clone(s),
                    ),
                })
                .collect(),
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
        }
    }

    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn addr(&self, index: usize) -> Option<SocketAddr> {
        self.endpoints.get(index).map(|e| e.addr)
    }

    /// Requests in flight to endpoint `index` (0 outside the list).
    pub fn in_flight(&self, index: usize) -> u32 {
        self.endpoints
            .get(index)
            .map_or(0, |e| e.stats.in_flight.load(Ordering::Relaxed))
    }

    /// Endpoint `index`'s latency estimate at `now`.
    pub fn rtt_estimate(&self, index: usize, now: Instant) -> Option<Duration> {
        let e = self.endpoints.get(index)?;
        let ns = e.stats.estimate_ns(now, self.decay_ns);
        Some(Duration::try_from_secs_f64(ns / 1e9).unwrap_or(Duration::MAX))
    }

    /// The endpoint for the next request among those `available` says may take it, or `None`
    /// when there is none.
    pub fn pick(&self, now: Instant, available: impl Fn(usize) -> bool) -> Option<usize> {
        match self.endpoints.len() {
            0 => None,
            1 => available(0).then_some(0),
            _ => match self.config.policy {
                Policy::RoundRobin => self.round_robin(&available),
                Policy::P2cEwma => self.p2c(&available, |s| {
                    s.estimate_ns(now, self.decay_ns)
                        * f64::from(s.in_flight.load(Ordering::Relaxed).saturating_add(1))
                }),
                Policy::LeastRequest => self.p2c(&available, |s| {
                    f64::from(s.in_flight.load(Ordering::Relaxed))
                }),
            },
        }
    }

    fn round_robin(&self, available: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        (0..n)
            .map(|_| self.next.fetch_add(1, Ordering::Relaxed) % n)
            .find(|&i| available(i))
    }

    /// Two distinct random available endpoints; the one of lower `cost` (the first drawn on a
    /// tie, which is random too).
    fn p2c(
        &self,
        available: &impl Fn(usize) -> bool,
        cost: impl Fn(&EndpointStats) -> f64,
    ) -> Option<usize> {
        let a = self.random_available(None, available)?;
        let Some(b) = self.random_available(Some(a), available) else {
            return Some(a);
        };
        let cost_of = |i: usize| {
            self.endpoints
                .get(i)
                .map_or(f64::INFINITY, |e| cost(&e.stats))
        };
        if cost_of(b) < cost_of(a) {
            Some(b)
        } else {
            Some(a)
        }
    }

    /// A uniformly random available endpoint other than `except`, or, after a few unlucky
    /// draws, the first available one from a random start.
    fn random_available(
        &self,
        except: Option<usize>,
        available: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.endpoints.len();
        // Draw among the other n - 1 and shift past `except`: distinct without retrying.
        let m = if except.is_some() { n - 1 } else { n };
        if m == 0 {
            return None;
        }
        let index = |j: usize| match except {
            Some(x) if j >= x => j + 1,
            _ => j,
        };
        (0..RANDOM_TRIES)
            .map(|_| index(fastrand::usize(..m)))
            .find(|&i| available(i))
            .or_else(|| {
                let start = fastrand::usize(..m);
                (0..m)
                    .map(|k| index((start + k) % m))
                    .find(|&i| available(i))
            })
    }

    /// Counts a request to endpoint `index` in flight until the guard is finished or dropped.
    /// An index outside the list gives a guard that counts nothing.
    pub fn start(&self, index: usize, now: Instant) -> InFlight {
        let stats = self.endpoints.get(index).map(|e| {
            e.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            Arc::clone(&e.stats)
        });
        InFlight {
            stats,
            started: now,
            decay_ns: self.decay_ns,
        }
    }

    /// Every endpoint's load at `now`, for the admin port.
    pub fn view(&self, now: Instant) -> Vec<EndpointLoad> {
        self.endpoints
            .iter()
            .map(|e| EndpointLoad {
                addr: e.addr,
                in_flight: e.stats.in_flight.load(Ordering::Relaxed),
                rtt_ms: e.stats.estimate_ns(now, self.decay_ns) / 1e6,
            })
            .collect()
    }
}

/// A request in flight to one endpoint. [`InFlight::finish`] records its latency; dropping it
/// without finishing (cancelled) only stops counting it.
#[derive(Debug)]
#[must_use = "the request stops counting as in flight when this is dropped"]
pub struct InFlight {
    stats: Option<Arc<EndpointStats>>,
    started: Instant,
    decay_ns: f64,
}

impl InFlight {
    /// The request is done at `now`: a latency sample when `latency_ok` (a response that
    /// reflects the endpoint's speed), none otherwise (a failure).
    pub fn finish(self, now: Instant, latency_ok: bool) {
        if let (true, Some(stats)) = (latency_ok, &self.stats) {
            let latency = now.saturating_duration_since(self.started);
            stats.observe(nanos_f64(latency), now, self.decay_ns);
        }
        // Dropping `self` counts it out.
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One endpoint's load, as the admin port shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointLoad {
    pub addr: SocketAddr,
    pub in_flight: u32,
    /// The peak-EWMA latency estimate, decayed to now.
    pub rtt_ms: f64,
}

#[cfg(test)]
mod tests;
