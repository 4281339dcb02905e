//! The resilience part of the config: retries, rate limits, fault injection and mirroring per
//! route; circuit breakers, outlier detection, load balancing and retry budgets per backend.
//! Each spec converts into the IO-free core type that enforces it (`retry`, `ratelimit`,
//! `breaker`, `balance`); the conversion reports a problem as a message for `validate`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::{BalanceConfig, Policy};
use crate::breaker::{Limits, OutlierConfig};
use crate::ratelimit::{self, Key, Per, RateLimitConfig};
use crate::retry::{Backoff, BudgetConfig, RetryOn, RetryPolicy};

/// A route's retry policy. Absent: no retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Tries in all, the first included: 3 means up to two retries.
    #[serde(default = "defaults::attempts")]
    pub max_attempts: u32,
    /// What is retried, comma separated (Envoy's `retry_on` vocabulary): `connect-failure`,
    /// `refused-stream`, `reset`, `5xx`, `gateway-error`, a status code (`409`), a gRPC code
    /// name (`unavailable`). Default: `connect-failure,refused-stream,503,unavailable,cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// Each try's own deadline (504 `timeout` if the last one expires). The route's `timeout`
    /// still bounds all tries together.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// Retry methods RFC 9110 does not call idempotent (POST, PATCH): the route's owner vouches
    /// that doing the work twice is harmless.
    #[serde(default)]
    pub allow_non_idempotent: bool,
    /// Request bodies up to this size are kept for a replay; larger ones are not retried.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    /// The ceiling of the first retry's wait (full jitter below it); doubles per retry.
    #[serde(default = "defaults::backoff_base", with = "humantime_serde")]
    pub base: Duration,
    #[serde(default = "defaults::backoff_max", with = "humantime_serde")]
    pub max: Duration,
    /// An upstream's `Retry-After` is obeyed up to this long.
    #[serde(default = "defaults::max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            base: defaults::backoff_base(),
            max: defaults::backoff_max(),
            max_retry_after: defaults::max_retry_after(),
        }
    }
}

impl RetrySpec {
    /// The policy, or every problem with it in one message.
    pub fn to_policy(&self) -> Result<RetryPolicy, String> {
        let mut errors = Vec::new();
        let on = match self.on.as_deref().map(str::parse::<RetryOn>) {
            Some(Ok(on)) => on,
            Some(Err(e)) => {
                errors.push(e);
                RetryOn::none()
            }
            None => RetryOn::default(),
        };
        let policy = RetryPolicy {
            max_attempts: self.max_attempts,
            on,
            per_try_timeout: self.per_try_timeout,
            backoff: Backoff {
                base: self.backoff.base,
                max: self.backoff.max,
                max_retry_after: self.backoff.max_retry_after,
            },
            allow_non_idempotent: self.allow_non_idempotent,
            max_body_bytes: self.max_body_bytes,
        };
        if let Err(e) = policy.validate() {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// A token-bucket rate limit (on a listener: every request it accepts; on a route: that
/// route's requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests admitted per `per`, sustained.
    pub rate: u32,
    #[serde(default)]
    pub per: PerSpec,
    /// Requests admitted at once after a quiet spell. Default: `rate` per second, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What is counted together: `all` (one bucket), `client_ip`, or `{header: x-api-key}`.
    #[serde(default)]
    pub key: KeySpec,
    /// Keyed limits hold at most this many keys; idle ones are evicted.
    #[serde(default = "defaults::max_keys")]
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerSpec {
    #[default]
    Second,
    Minute,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySpec {
    #[default]
    All,
    ClientIp,
    Header(String),
}

impl RateLimitSpec {
    pub fn to_config(&self) -> Result<RateLimitConfig, String> {
        let per = match self.per {
            PerSpec::Second => Per::Second,
            PerSpec::Minute => Per::Minute,
        };
        let burst = self.burst.unwrap_or(match per {
            Per::Second => self.rate.max(1),
            Per::Minute => self.rate.div_ceil(60).max(1),
        });
        let mut errors = Vec::new();
        let key = match &self.key {
            KeySpec::All => Key::None,
            KeySpec::ClientIp => Key::ClientIp,
            KeySpec::Header(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Key::Header(name),
                Err(_) => {
                    errors.push(format!("key.header: {h:?} is not a valid header name"));
                    Key::None
                }
            },
        };
        let config = RateLimitConfig {
            rate: self.rate,
            per,
            burst,
            key,
            max_keys: self.max_keys,
        };
        if let Err(e) = ratelimit::validate(&config) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Fault injection: delay or abort a share of a route's requests, to test how callers cope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Share of requests delayed, 0 to 100 (fractions allowed: 0.5).
    pub percent: f64,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Share of requests answered by the proxy instead of the backend, 0 to 100.
    pub percent: f64,
    /// The status sent (gRPC requests get the matching gRPC status). Default 503.
    #[serde(default = "defaults::abort_status")]
    pub status: u16,
}

/// Gateway API `RequestMirror`: a copy of a share of the requests goes to another backend,
/// fire and forget; its response is discarded and never delays the real one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub backend: String,
    /// Share of requests mirrored, 0 to 100. Default 100.
    #[serde(default = "defaults::percent_all")]
    pub percent: f64,
}

/// Envoy's cluster circuit breakers: over a limit, an immediate 503 `overflow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Upstream connections open at once, all workers together.
    #[serde(default = "defaults::limit")]
    pub max_connections: u32,
    /// Requests waiting for a connection.
    #[serde(default = "defaults::limit")]
    pub max_pending: u32,
    /// Requests in flight.
    #[serde(default = "defaults::limit")]
    pub max_requests: u32,
    /// Retries in flight.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_connections: l.max_connections,
            max_pending: l.max_pending,
            max_requests: l.max_requests,
            max_retries: l.max_retries,
        }
    }
}

impl CircuitBreakerSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn to_limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_pending: self.max_pending,
            max_requests: self.max_requests,
            max_retries: self.max_retries,
        }
    }
}

/// Outlier ejection of endpoints that keep failing. Absent: off (as in Envoy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    /// 5xx responses or gateway failures in a row that eject an endpoint.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long.
    #[serde(default = "defaults::base_ejection_time", with = "humantime_serde")]
    pub base_ejection_time: Duration,
    #[serde(default = "defaults::max_ejection_time", with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once (at least one).
    #[serde(default = "defaults::max_ejection_percent")]
    pub max_ejection_percent: u8,
    /// When every endpoint is ejected: `false` answers 503 `no-healthy-endpoints`, `true`
    /// spreads requests over all endpoints anyway.
    #[serde(default)]
    pub panic: bool,
}

impl OutlierSpec {
    pub fn to_config(&self) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: self.consecutive_failures,
            base_ejection_time: self.base_ejection_time,
            max_ejection_time: self.max_ejection_time,
            max_ejection_percent: self.max_ejection_percent,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// `p2c_ewma` (default), `least_request` or `round_robin`.
    #[serde(default)]
    pub policy: Policy,
    /// The latency average's time constant (p2c_ewma).
    #[serde(default = "defaults::ewma_decay", with = "humantime_serde")]
    pub decay: Duration,
    /// The latency a new endpoint is assumed to have before its first response.
    #[serde(default = "defaults::default_rtt", with = "humantime_serde")]
    pub default_rtt: Duration,
}

impl Default for LoadBalancerSpec {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            decay: defaults::ewma_decay(),
            default_rtt: defaults::default_rtt(),
        }
    }
}

impl LoadBalancerSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn to_config(&self) -> BalanceConfig {
        BalanceConfig {
            policy: self.policy,
            decay: self.decay,
            default_rtt: self.default_rtt,
        }
    }
}

/// Retries may add at most `ratio` of recent requests, plus `min_per_second`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    #[serde(default = "defaults::budget_ratio")]
    pub ratio: f64,
    #[serde(default = "defaults::budget_min_per_second")]
    pub min_per_second: u32,
    #[serde(default = "defaults::budget_window", with = "humantime_serde")]
    pub window: Duration,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        let b = BudgetConfig::default();
        Self {
            ratio: b.ratio,
            min_per_second: b.min_per_second,
            window: b.window,
        }
    }
}

impl RetryBudgetSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn to_config(&self) -> Result<BudgetConfig, String> {
        let c = BudgetConfig {
            ratio: self.ratio,
            min_per_second: self.min_per_second,
            window: self.window,
        };
        c.validate()?;
        Ok(c)
    }
}

/// A percentage as the request path uses it: parts per million, compared with a random
/// number below 1,000,000.
pub fn percent_to_ppm(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32
}

pub(super) fn check_percent(p: f64) -> Result<(), String> {
    if p.is_finite() && (0.0..=100.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("{p} is not a percentage between 0 and 100"))
    }
}

mod defaults {
    use std::time::Duration;

    pub fn attempts() -> u32 {
        2
    }
    pub fn max_body_bytes() -> usize {
        crate::retry::DEFAULT_MAX_BODY_BYTES
    }
    pub fn backoff_base() -> Duration {
        Duration::from_millis(25)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_millis(250)
    }
    pub fn max_retry_after() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_keys() -> usize {
        crate::ratelimit::DEFAULT_MAX_KEYS
    }
    pub fn abort_status() -> u16 {
        503
    }
    pub fn percent_all() -> f64 {
        100.0
    }
    pub fn limit() -> u32 {
        1024
    }
    pub fn max_retries() -> u32 {
        3
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn base_ejection_time() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_ejection_time() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_ejection_percent() -> u8 {
        10
    }
    pub fn ewma_decay() -> Duration {
        Duration::from_secs(10)
    }
    pub fn default_rtt() -> Duration {
        Duration::from_millis(30)
    }
    pub fn budget_ratio() -> f64 {
        0.2
    }
    pub fn budget_min_per_second() -> u32 {
        10
    }
    pub fn budget_window() -> Duration {
        Duration::from_secs(10)
    }
}
