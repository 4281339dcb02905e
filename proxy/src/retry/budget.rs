//! A retry budget per backend (Finagle's and Linkerd's model): retries may add at most
//! `ratio` of the recent original requests, plus a small floor, so that retries cannot turn a
//! struggling backend's failures into a retry storm.
//!
//! Over a sliding window of `window` seconds: `retries ≤ ratio × requests + min_per_second ×
//! window`. The window is a ring of one-second slots. Each slot is two `AtomicU64`s, deposits
//! and withdrawals, each holding the second it counts (high 32 bits) and its count (low 32
//! bits), so moving a slot on to a new second and counting in it is one compare-and-swap: no
//! lock, no allocation, no clock read (the caller passes `now`). Shared by all workers.
//!
//! Concurrent retries may each see the last unit of budget and overshoot by at most one per
//! thread racing; a budget is a guard rail, not an exact quota.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// Budget parameters for one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per original request over the window (0.2 = 20 %).
    pub ratio: f64,
    /// Retries allowed per second even without traffic, so a quiet backend can still retry.
    pub min_per_second: u32,
    /// How far back requests and retries count, in whole seconds (1 s to 60 s).
    pub window: Duration,
}

/// Linkerd's defaults: 20 % extra load, 10 retries a second, over 10 s.
impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if !self.ratio.is_finite() || !(0.0..=1000.0).contains(&self.ratio) {
            errors.push(format!(
                "retry budget ratio {} must be between 0 and 1000",
                self.ratio
            ));
        }
        if !(1..=60).contains(&self.window.as_secs()) || self.window.subsec_nanos() != 0 {
            errors.push(format!(
                "retry budget window {:?} must be whole seconds, 1 s to 60 s",
                self.window
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Totals since the budget was made, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetStats {
    /// Original requests (deposits).
    pub requests: u64,
    /// Retries the budget allowed.
    pub retries: u64,
    /// Retries refused because the budget was spent.
    pub exhausted: u64,
}

impl BudgetStats {
    /// Tries sent upstream: each request once, plus its retries.
    pub fn attempts(&self) -> u64 {
        self.requests + self.retries
    }
}

/// One backend's retry budget. Share it (`Arc`) across workers and across config snapshots
/// while the backend and its budget settings are unchanged.
#[derive(Debug)]
pub struct RetryBudget {
    /// Parts per million: integer arithmetic on the request path.
    ratio_ppm: u64,
    /// `min_per_second × window`: retries the window allows without any traffic.
    reserve: u64,
    window_secs: u32,
    /// Second 0 of the ring's clock.
    epoch: Instant,
    deposits: Box<[AtomicU64]>,
    withdrawals: Box<[AtomicU64]>,
    requests: AtomicU64,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

impl RetryBudget {
    /// A budget whose clock starts at `now`. The config should have passed `validate`; out of
    /// range values are clamped rather than refused here.
    pub fn new(config: &BudgetConfig, now: Instant) -> Self {
        let window_secs = u32::try_from(config.window.as_secs().clamp(1, 60)).unwrap_or(60);
        let ratio = if config.ratio.is_finite() {
            config.ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let slots = || (0..window_secs).map(|_| AtomicU64::new(0)).collect();
        Self {
            // In range by the clamp above: at most 1e9.
            ratio_ppm: (ratio * 1e6).round() as u64,
            reserve: u64::from(config.min_per_second) * u64::from(window_secs),
            window_secs,
            epoch: now,
            deposits: slots(),
            withdrawals: slots(),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }
    }

    /// Counts one original request (not a retry): it earns `ratio` of a retry.
    pub fn deposit(&self, now: Instant) {
        let second = self.second(now);
        self.requests.fetch_add(1, Relaxed);
        bump(self.slot(&self.deposits, second), second);
    }

    /// Spends one retry if the window allows it; `false` means do not retry.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let requests = self.sum(&self.deposits, second);
        let retries = self.sum(&self.withdrawals, second);
        let allowed = requests.saturating_mul(self.ratio_ppm) / 1_000_000 + self.reserve;
        if retries < allowed {
            bump(self.slot(&self.withdrawals, second), second);
            self.retries.fetch_add(1, Relaxed);
            true
        } else {
            self.exhausted.fetch_add(1, Relaxed);
            false
        }
    }

    /// Retries the window would allow at `now`, for the admin page and tests.
    pub fn remaining(&self, now: Instant) -> u64 {
        let second = self.second(now);
        let allowed = self
            .sum(&self.deposits, second)
            .saturating_mul(self.ratio_ppm)
            / 1_000_000
            + self.reserve;
        allowed.saturating_sub(self.sum(&self.withdrawals, second))
    }

    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            requests: self.requests.load(Relaxed),
            retries: self.retries.load(Relaxed),
            exhausted: self.exhausted.load(Relaxed),
        }
    }

    /// Whole seconds since the epoch; wraps after 136 years, and only differences matter.
    fn second(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    fn slot<'a>(&self, ring: &'a [AtomicU64], second: u32) -> &'a AtomicU64 {
        // The ring is never empty (window_secs ≥ 1), so the index is in bounds.
        &ring[(second % self.window_secs) as usize]
    }

    /// The counts of the slots whose second lies within the window ending at `second`.
    fn sum(&self, ring: &[AtomicU64], second: u32) -> u64 {
        ring.iter()
            .map(|slot| {
                let (at, count) = unpack(slot.load(Relaxed));
                if second.wrapping_sub(at) < self.window_secs {
                    u64::from(count)
                } else {
                    0
                }
            })
            .sum()
    }
}

fn pack(second: u32, count: u32) -> u64 {
    u64::from(second) << 32 | u64::from(count)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// Adds one to `slot` for `second`, first moving the slot on from an older second. A caller
/// whose `now` is older than the slot's second (it read the clock just before another thread
/// moved the slot on) drops its count rather than corrupt the newer second's.
fn bump(slot: &AtomicU64, second: u32) {
    let mut current = slot.load(Relaxed);
    loop {
        let (at, count) = unpack(current);
        let next = if at == second {
            pack(second, count.saturating_add(1))
        } else if (second.wrapping_sub(at) as i32) > 0 {
            pack(second, 1)
        } else {
            return;
        };
        match slot.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}
