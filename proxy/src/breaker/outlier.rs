//! Outlier ejection: take an endpoint that keeps failing out of its backend's rotation for a
//! while, then let one probe request decide whether it comes back.
//!
//! The model is Envoy's consecutive-5xx outlier detection, with Linkerd's single-request
//! probation instead of Envoy's "return everyone when the time is up":
//!
//! - The caller reports each exchange's [`Outcome`]: a 5xx, or a gateway failure (connect
//!   failure, reset, timeout), is a `Failure`; anything else a `Success`. A success resets the
//!   endpoint's count of consecutive failures.
//! - `consecutive_failures` failures in a row (default 5) eject the endpoint for
//!   `base_ejection_time × times ejected` (30 s, 60 s, 90 s, ...), capped at
//!   `max_ejection_time` (300 s), as Envoy does. An ejection is at least `base_ejection_time`.
//! - No more than `max_ejection_percent` of the backend's endpoints (default 10, Envoy's) may
//!   be ejected at once, rounded down, **but at least one** when the percentage is above 0:
//!   10 % of 3 endpoints ejects one, not none, and a backend of one endpoint may eject it.
//!   That is Envoy's historic behaviour (its `always_eject_one_host`) and gRPC's; without it a
//!   small backend could never eject anything. 0 % disables ejection. An ejection refused by
//!   the cap is reported ([`Transition::EjectionRefused`], Envoy's `ejections_overflow`) and
//!   retried on the endpoint's next failure.
//! - When the ejection time is up the endpoint is half-open: [`OutlierDetector::is_available`]
//!   says [`Availability::Probe`], and exactly one caller wins [`OutlierDetector::try_probe`]
//!   and sends the probe. Its success restores the endpoint ([`Transition::Restored`]); its
//!   failure ejects it again at once for the next longer time. A probe whose outcome never
//!   comes (the request was cancelled) is given back with
//!   [`OutlierDetector::release_probe`]; if even that is missed, another probe may go after
//!   `base_ejection_time` (at least 1 s).
//! - The ejection multiplier ("times ejected") is forgiven one step for each
//!   `base_ejection_time` the endpoint then stays healthy, computed lazily at its next
//!   ejection. (Envoy lowers it on each detection sweep; we have no sweep.) So an endpoint that
//!   flaps right after coming back is ejected for longer each time, and one that recovered for
//!   good starts again from the base time.
//! - While an endpoint is ejected, outcomes of requests sent to it before the ejection are
//!   ignored. While it is probing, the first outcome reported decides; a request older than
//!   the whole ejection would have to finish in that window to be mistaken for the probe.
//!
//! Not modelled: Envoy's success-rate and failure-percentage detectors, and its panic
//! threshold (the caller decides what to do when [`OutlierDetector::all_ejected`]).
//!
//! Cost on the request path: `is_available` is one atomic load; `record` is one or two atomic
//! operations, plus a scan of the backend's endpoints under a mutex only when an ejection is
//! about to happen (a rare state transition; the mutex makes the percentage cap exact when
//! several endpoints fail at once). Nothing allocates, nothing reads the clock: instants are
//! arguments.
//!
//! State survives config changes: each endpoint's state is an `Arc` that
//! [`OutlierDetector::carry_over`] shares with the new detector when the endpoint (by address)
//! is still there, so even requests still running on the old snapshot report into it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Outlier-detection parameters of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint. 0 disables ejection.
    pub consecutive_failures: u32,
    /// The first ejection's length, and the step by which later ones grow.
    pub base_ejection_time: Duration,
    /// The longest ejection (never shorter than `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// At most this share of the backend's endpoints is ejected at once (0..=100; above 100
    /// counts as 100). Rounded down, but at least one endpoint when above 0.
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

impl OutlierConfig {
    /// How many of `endpoints` may be ejected at once.
    pub fn max_ejected(&self, endpoints: usize) -> usize {
        let percent = usize::from(self.max_ejection_percent.min(100));
        if percent == 0 || endpoints == 0 {
            return 0;
        }
        (endpoints.saturating_mul(percent) / 100).max(1)
    }

    /// The length of the `times`-th ejection.
    pub fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(times.max(1))
            .min(self.max_ejection_time.max(self.base_ejection_time))
    }

    /// How long a probe may stay unanswered before another one may go.
    fn probe_window(&self) -> Duration {
        self.base_ejection_time.max(Duration::from_secs(1))
    }
}

/// How one exchange with an endpoint went, as the caller classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx response, or a gateway failure: connect failure, reset, timeout.
    Failure,
}

impl Outcome {
    /// A response's status: 5xx is a failure. (Gateway failures have no status; the caller
    /// reports them as `Failure` directly.)
    pub fn from_status(status: u16) -> Self {
        if (500..=599).contains(&status) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// A state change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The endpoint was ejected for `for_`; this is its `times`-th ejection (after
    /// forgiveness, see the module docs).
    Ejected { for_: Duration, times: u32 },
    /// The ejection time was up and this caller won the probe: send it one request and
    /// report its outcome.
    HalfOpen,
    /// The probe succeeded: the endpoint is back in rotation.
    Restored,
    /// The endpoint reached its failure threshold but the backend already has its maximum of
    /// ejected endpoints. Worth a counter (it repeats on each further failure), not a log line.
    EjectionRefused,
}

/// Whether the balancer may pick an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// Out of rotation (ejected, or its one probe is in flight).
    Ejected,
    /// Half-open: one request may go, to whoever wins [`OutlierDetector::try_probe`].
    Probe,
}

// One endpoint's phase and the instant that goes with it share one atomic word, so a reader
// never sees a phase with another phase's instant: the top 2 bits are the phase, the low 62
// bits nanoseconds since the detector's epoch (146 years).
const PHASE_SHIFT: u32 = 62;
const TIME_MASK: u64 = (1 << PHASE_SHIFT) - 1;
/// In rotation. The instant is when it was last restored (0: never ejected).
const HEALTHY: u64 = 0;
/// Out of rotation until the instant; half-open after it.
const EJECTED: u64 = 1;
/// Its probe is in flight; a new probe may go after the instant (the probe was lost).
const PROBING: u64 = 2;

fn pack(phase: u64, nanos: u64) -> u64 {
    (phase << PHASE_SHIFT) | nanos.min(TIME_MASK)
}

fn phase(word: u64) -> u64 {
    word >> PHASE_SHIFT
}

fn instant(word: u64) -> u64 {
    word & TIME_MASK
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One endpoint's state; shared by every detector that has the endpoint.
#[derive(Debug, Default)]
struct EndpointState {
    word: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejections so far, before forgiveness (see `OutlierDetector::effective_times`).
    times_ejected: AtomicU32,
}

#[derive(Debug)]
struct Endpoint {
    addr: SocketAddr,
    state: Arc<EndpointState>,
}

/// Outlier state of one backend's endpoints, indexed like the backend's endpoint list.
/// Shared by all workers (keep it in the backend's `Arc`ed state).
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    /// Instants are stored as nanoseconds since this; kept across `carry_over` because
    /// endpoint states are.
    epoch: Instant,
    endpoints: Vec<Endpoint>,
    /// Taken only to eject a healthy endpoint, so that two endpoints ejected at once cannot
    /// both pass the percentage cap. Shared across `carry_over` like the endpoint states.
    eject: Arc<Mutex<()>>,
}

impl OutlierDetector {
    /// Every endpoint healthy. `now` becomes the epoch: instants passed later should not be
    /// earlier (an earlier one counts as the epoch).
    pub fn new(addrs: &[SocketAddr], config: OutlierConfig, now: Instant) -> Self {
        Self {
            config,
            epoch: now,
            endpoints: addrs
                .iter()
                .map(|&addr| Endpoint {
                    addr,
                    state: Arc::default(),
                })
                .collect(),
            eject: Arc::default(),
        }
    }

    /// A detector for a new endpoint list (and possibly new parameters) that shares the
    /// state of every endpoint still present, matched by address; new endpoints start
    /// healthy. Endpoints ejected beyond a lowered cap stay ejected until their probe: the
    /// cap applies to new ejections.
    pub fn carry_over(&self, addrs: &[SocketAddr], config: OutlierConfig) -> Self {
        let old: HashMap<SocketAddr, &Arc<EndpointState>> =
            self.endpoints.iter().map(|e| (e.addr, &e.state)).collect();
        Self {
            config,
            epoch: self.epoch,
            endpoints: addrs
                .iter()
                .map(|&addr| Endpoint {
                    addr,
                    state: old.get(&addr).map_or_else(Arc::default, |s| Arc::clone(s)),
                })
                .collect(),
            eject: Arc::clone(&self.eject),
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch)).min(TIME_MASK)
    }

    /// Reports how a request to endpoint `index` went; returns the transition it caused.
    /// An index outside the list is ignored.
    pub fn record(&self, index: usize, outcome: Outcome, now: Instant) -> Option<Transition> {
        let state = &self.endpoints.get(index)?.state;
        let word = state.word.load(Ordering::Acquire);
        match (phase(word), outcome) {
            (HEALTHY, Outcome::Success) => {
                // Read first: most successes find 0, and a load keeps the cache line shared.
                if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    state.consecutive_failures.store(0, Ordering::Relaxed);
                }
                None
            }
            (HEALTHY, Outcome::Failure) => {
                let failures = state
                    .consecutive_failures
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                        Some(c.saturating_add(1))
                    })
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let threshold = self.config.consecutive_failures;
                if threshold == 0 || failures < threshold {
                    return None;
                }
                self.try_eject(state, now)
            }
            (PROBING, Outcome::Success) => {
                let restored = pack(HEALTHY, self.since_epoch(now));
                state
                    .word
                    .compare_exchange(word, restored, Ordering::AcqRel, Ordering::Acquire)
                    .ok()?;
                state.consecutive_failures.store(0, Ordering::Relaxed);
                Some(Transition::Restored)
            }
            (PROBING, Outcome::Failure) => {
                // No forgiveness: it never got back into rotation.
                let times = state
                    .times_ejected
                    .load(Ordering::Relaxed)
                    .saturating_add(1);
                self.eject_word(state, word, times, now)
            }
            // Ejected: the outcome of a request sent before the ejection.
            _ => None,
        }
    }

    /// Ejects a healthy endpoint that reached its failure threshold, if the cap allows.
    fn try_eject(&self, state: &EndpointState, now: Instant) -> Option<Transition> {
        let max = self.config.max_ejected(self.endpoints.len());
        // A look without the lock first: when the cap is reached, every further failure of
        // every endpoint over its threshold comes here, and should not queue on the mutex.
        if self.ejected() >= max {
            return self.refused(state);
        }
        let _guard = self.eject.lock().unwrap_or_else(PoisonError::into_inner);
        if self.ejected() >= max {
            return self.refused(state);
        }
        let word = state.word.load(Ordering::Acquire);
        if phase(word) != HEALTHY {
            return None; // another thread ejected it first
        }
        let forgiven = self.effective_times(
            state.times_ejected.load(Ordering::Relaxed),
            instant(word),
            self.since_epoch(now),
        );
        self.eject_word(state, word, forgiven.saturating_add(1), now)
    }

    fn refused(&self, state: &EndpointState) -> Option<Transition> {
        // Already ejected by another thread: not a refusal.
        (phase(state.word.load(Ordering::Acquire)) == HEALTHY)
            .then_some(Transition::EjectionRefused)
    }

    /// Moves `state` from `word` to ejected for its `times`-th ejection.
    fn eject_word(
        &self,
        state: &EndpointState,
        word: u64,
        times: u32,
        now: Instant,
    ) -> Option<Transition> {
        let for_ = self.config.ejection_time(times);
        let until = self.since_epoch(now).saturating_add(nanos(for_));
        state
            .word
            .compare_exchange(
                word,
                pack(EJECTED, until),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()?;
        state.times_ejected.store(times, Ordering::Relaxed);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        Some(Transition::Ejected { for_, times })
    }

    /// `times` ejections, less one for each `base_ejection_time` healthy since `restored_at`.
    fn effective_times(&self, times: u32, restored_at: u64, now: u64) -> u32 {
        let step = nanos(self.config.base_ejection_time);
        if times == 0 || step == 0 {
            return 0;
        }
        let steps = now.saturating_sub(restored_at) / step;
        times.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }

    /// Whether endpoint `index` may be picked now. An index outside the list is healthy (no
    /// evidence against it).
    pub fn is_available(&self, index: usize, now: Instant) -> Availability {
        let Some(e) = self.endpoints.get(index) else {
            return Availability::Healthy;
        };
        let word = e.state.word.load(Ordering::Acquire);
        if phase(word) == HEALTHY {
            Availability::Healthy
        } else if self.since_epoch(now) >= instant(word) {
            Availability::Probe
        } else {
            Availability::Ejected
        }
    }

    /// Claims the probe of a half-open endpoint: `Some(HalfOpen)` for exactly one caller,
    /// which must send one request there and `record` its outcome (or `release_probe`).
    pub fn try_probe(&self, index: usize, now: Instant) -> Option<Transition> {
        let state = &self.endpoints.get(index)?.state;
        let word = state.word.load(Ordering::Acquire);
        let now = self.since_epoch(now);
        if phase(word) == HEALTHY || now < instant(word) {
            return None;
        }
        let deadline = now.saturating_add(nanos(self.config.probe_window()));
        state
            .word
            .compare_exchange(
                word,
                pack(PROBING, deadline),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()
            .map(|_| Transition::HalfOpen)
    }

    /// Gives back a probe that ended without an outcome (cancelled): the endpoint is
    /// half-open again at once.
    pub fn release_probe(&self, index: usize) {
        if let Some(e) = self.endpoints.get(index) {
            let word = e.state.word.load(Ordering::Acquire);
            if phase(word) == PROBING {
                // Lost race: someone recorded the outcome meanwhile, which is what we want.
                let _ = e.state.word.compare_exchange(
                    word,
                    pack(EJECTED, 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }

    /// True when no endpoint may take a request now: every one is ejected or probing, none
    /// half-open. The caller then answers 503 (no healthy endpoints) or, in panic mode,
    /// spreads over all endpoints. False for an empty list (that is the balancer's `None`).
    /// Stops at the first available endpoint, so it is cheap when most are healthy.
    pub fn all_ejected(&self, now: Instant) -> bool {
        !self.endpoints.is_empty()
            && (0..self.endpoints.len()).all(|i| self.is_available(i, now) == Availability::Ejected)
    }

    /// Endpoints out of rotation (ejected, half-open or probing): what the cap counts.
    pub fn ejected(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| phase(e.state.word.load(Ordering::Acquire)) != HEALTHY)
            .count()
    }

    /// Every endpoint's state, for `GET /breakers`.
    pub fn view(&self, now: Instant) -> OutlierView {
        let now = self.since_epoch(now);
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| {
                let word = e.state.word.load(Ordering::Acquire);
                let times = e.state.times_ejected.load(Ordering::Relaxed);
                let at = instant(word);
                let (state, times_ejected) = match phase(word) {
                    HEALTHY => (
                        EndpointStatus::Healthy,
                        self.effective_times(times, at, now),
                    ),
                    EJECTED if now < at => (EndpointStatus::Ejected, times),
                    PROBING if now < at => (EndpointStatus::Probing, times),
                    _ => (EndpointStatus::HalfOpen, times),
                };
                let remaining = if state == EndpointStatus::Ejected {
                    Duration::from_nanos(at.saturating_sub(now))
                } else {
                    Duration::ZERO
                };
                EndpointView {
                    addr: e.addr,
                    state,
                    consecutive_failures: e.state.consecutive_failures.load(Ordering::Relaxed),
                    times_ejected,
                    ejection_remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                }
            })
            .collect::<Vec<_>>();
        OutlierView {
            ejected: endpoints
                .iter()
                .filter(|e| e.state != EndpointStatus::Healthy)
                .count(),
            max_ejected: self.config.max_ejected(self.endpoints.len()),
            endpoints,
        }
    }
}

/// A backend's outlier state, as `GET /breakers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierView {
    /// Endpoints out of rotation now.
    pub ejected: usize,
    /// The cap from `max_ejection_percent`.
    pub max_ejected: usize,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    pub addr: SocketAddr,
    pub state: EndpointStatus,
    pub consecutive_failures: u32,
    /// The ejection multiplier: ejections not yet forgiven.
    pub times_ejected: u32,
    /// Until half-open; 0 unless `state` is `ejected`.
    pub ejection_remaining_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    Healthy,
    Ejected,
    /// The ejection time is up; waiting for a request to probe it.
    HalfOpen,
    /// Its probe is in flight.
    Probing,
}
