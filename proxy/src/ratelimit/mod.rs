//! Rate limiting per route, optionally per client key, on `governor`'s GCRA; and the
//! `Retry-After` / `RateLimit-Policy` / `RateLimit` response headers. IO-free.
//!
//! # Model
//!
//! A route's limit is `rate` requests per second or per minute, with bursts of up to `burst`
//! requests: a token bucket of `burst` tokens refilled one token every `1/rate` of the period,
//! implemented by `governor` as GCRA (one "theoretical arrival time" per bucket).
//!
//! - **Unkeyed** (`Key::None`): one bucket for the route, `governor`'s direct limiter: a single
//!   `AtomicU64` updated by compare-and-swap. No lock, no allocation.
//! - **Keyed** (`Key::ClientIp`, `Key::Header`): one bucket per key, `governor`'s keyed limiter
//!   over a `DashMap` (sharded `RwLock`s: a lookup read-locks one shard; only a new key takes a
//!   shard's write lock). That is the one lock on this path, accepted: shards keep contention
//!   low, and no lock is held across an `.await`. The key is not stored: the header value or
//!   address is hashed once with a per-limiter random SipHash key into a `u64`, and the map
//!   uses that as its hash as-is. So there is no allocation per request and every entry has a
//!   fixed size (about 17 bytes plus table slack). Two keys colliding in 64 bits (odds about
//!   n²/2⁶⁵, and not steerable without the random key) would share a bucket.
//! - **Requests without a key** (no such header, an empty one, or no client address) share
//!   one bucket of their own, with the same quota: leaving the header out cannot buy a fresh
//!   quota, and anonymous clients cannot starve identified ones.
//! - **Bounded memory.** At most `max_keys` keys (plus the two shared buckets) are held. When
//!   the map is full, idle keys are evicted (`retain_recent`: buckets that are full again, hence
//!   no different from a fresh one; then `shrink_to_fit`), at most once a second so that a flood
//!   of new keys cannot make every request scan the map. If the map is still full, a new key is
//!   not added: it is limited in one shared *overflow* bucket (same quota) until an eviction
//!   frees room. Under a flood of distinct keys the limiter thus fails closed (newcomers share
//!   one quota) rather than open (unlimited) or unbounded (memory). Keys that already hold a
//!   bucket keep it. [`Limiter::housekeeping`] runs the eviction off the request path, and
//!   should be called periodically (e.g. every few seconds from the control runtime).
//! - **Time** comes from `governor`'s clock: `quanta` (the TSC; no system call), or a
//!   `FakeRelativeClock` in tests.
//!
//! # Response headers
//!
//! `Retry-After` (RFC 9110 §10.2.3): whole seconds until one request would be admitted,
//! rounded up, at least 1. `RateLimit-Policy` and `RateLimit` follow
//! draft-ietf-httpapi-ratelimit-headers-09 (structured fields, RFC 9651):
//!
//! - `RateLimit-Policy: "default";q=<rate>;w=<1 or 60>`: the sustained quota per window.
//! - `RateLimit: "default";r=<remaining>;t=<reset>`: `r` is the tokens left in the bucket now
//!   (requests that may be sent at once); `t` is the seconds until the bucket is full again,
//!   rounded up, which is -09's "seconds until the quota resets". When limited, `r=0` and `t`
//!   equals `Retry-After`, as -09 §6 asks. (Later revisions, -10 on, read `t` as an "effective
//!   window"; our values remain a conservative reading of that.)
//!
//! Values that can be known in advance (the policy, `RateLimit` for each small remaining count,
//! `Retry-After` for each possible wait) are built once per limiter, so answering costs a
//! reference-count increment rather than formatting and an allocation.
//!
//! The limiter's state must outlive config updates (a push must not refill buckets): keep the
//! `Limiter` (in an `Arc`) per route while the route's rate-limit settings are unchanged.

#[cfg(test)]
mod tests;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The default bound on keys held per keyed limiter: about 3 MB at worst.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09 §3).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09 §4).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The name our one policy goes by in the headers.
const POLICY_NAME: &str = "default";

/// The shortest time between two evictions started by the request path.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// `RateLimit` values precomputed for at most this many remaining counts.
const PRECOMPUTED_REMAINING: u32 = 256;

/// The time unit `rate` counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
}

impl Per {
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
        }
    }
}

/// What requests are counted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// All the route's requests share one bucket.
    None,
    /// One bucket per client address (the peer, or the address a trusted front proxy gave).
    ClientIp,
    /// One bucket per value of this request header (an API key, a tenant id).
    Header(HeaderName),
}

/// A route's rate limit, as compiled from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests admitted per `per`, sustained.
    pub rate: u32,
    pub per: Per,
    /// Requests admitted at once after a quiet spell (the bucket's size).
    pub burst: u32,
    pub key: Key,
    /// The most keys held at once; see the module docs for what happens beyond.
    pub max_keys: usize,
}

impl RateLimitConfig {
    /// An unkeyed limit.
    pub fn new(rate: u32, per: Per, burst: u32) -> Self {
        Self {
            rate,
            per,
            burst,
            key: Key::None,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// Checks a config once, when it is compiled; reports every problem.
pub fn validate(config: &RateLimitConfig) -> Result<(), String> {
    let mut errors = Vec::new();
    if config.rate == 0 {
        errors.push("rate must be at least 1 (to block a route, remove its backends)");
    }
    if config.burst == 0 {
        errors.push("burst must be at least 1 (or no request is ever admitted)");
    }
    if config.key != Key::None && config.max_keys == 0 {
        errors.push("max_keys must be at least 1 for a keyed limit");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// What a request offers to be keyed by; the limiter picks what its config names.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    pub client_ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
}

/// A limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `remaining` more could be admitted right now.
    Allowed { remaining: u32 },
    /// Refused (429, or gRPC `RESOURCE_EXHAUSTED`); one request would be admitted after
    /// `retry_after`.
    Limited { retry_after: Duration },
}

/// One route's rate limiter. `Sync`: share one (in an `Arc`) across all workers.
pub struct Limiter<C: Clock = DefaultClock> {
    buckets: Buckets<C>,
    headers: Headers,
}

enum Buckets<C: Clock> {
    One(RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>),
    PerKey(Box<PerKey<C>>),
}

struct PerKey<C: Clock> {
    limiter: RateLimiter<u64, BoundedStore, C, StateInformationMiddleware>,
    source: Source,
    /// Keys the hash of a key's value, so clients cannot aim collisions.
    hasher: RandomState,
    counts: Arc<Counts>,
    max_keys: usize,
    start: C::Instant,
    /// Nanoseconds since `start` before which the request path starts no eviction.
    next_sweep: AtomicU64,
}

enum Source {
    ClientIp,
    Header(HeaderName),
}

/// Shared between the limiter and its store: the store counts, the limiter reads.
#[derive(Default)]
struct Counts {
    /// Keys in the map; exact after an eviction, between them an over-estimate.
    keys: AtomicUsize,
    /// Requests of new keys refused a bucket of their own (counted in the overflow bucket).
    overflowed: AtomicU64,
}

/// The two shared buckets. Hashed keys are moved off these values.
const MISSING: u64 = 0;
const OVERFLOW: u64 = 1;
const FIRST_HASHED: u64 = 2;

impl Limiter {
    /// A limiter on the default clock (`quanta`; the first one made in a process calibrates
    /// the TSC, a few milliseconds: build limiters when config is compiled).
    pub fn new(config: &RateLimitConfig) -> Result<Self, String> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    /// A limiter on `clock`; tests pass a `governor::clock::FakeRelativeClock`.
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Result<Self, String> {
        validate(config)?;
        let (Some(rate), Some(burst)) =
            (NonZeroU32::new(config.rate), NonZeroU32::new(config.burst))
        else {
            return Err("rate and burst must be at least 1".to_owned());
        };
        let quota = match config.per {
            Per::Second => Quota::per_second(rate),
            Per::Minute => Quota::per_minute(rate),
        }
        .allow_burst(burst);
        let headers = Headers::new(config, quota.replenish_interval())?;
        let source = match &config.key {
            Key::None => None,
            Key::ClientIp => Some(Source::ClientIp),
            Key::Header(name) => Some(Source::Header(name.clone())),
        };
        let buckets = match source {
            None => Buckets::One(
                RateLimiter::direct_with_clock(quota, clock)
                    .with_middleware::<StateInformationMiddleware>(),
            ),
            Some(source) => {
                let counts = Arc::new(Counts::default());
                let store = BoundedStore {
                    map: DashMapStateStore::with_hasher(PassThrough),
                    max_keys: config.max_keys,
                    counts: Arc::clone(&counts),
                };
                let start = clock.now();
                Buckets::PerKey(Box::new(PerKey {
                    limiter: RateLimiter::new(quota, store, clock),
                    source,
                    hasher: RandomState::new(),
                    counts,
                    max_keys: config.max_keys,
                    start,
                    next_sweep: AtomicU64::new(0),
                }))
            }
        };
        Ok(Self { buckets, headers })
    }

    /// Counts one request against its bucket.
    pub fn check(&self, input: KeyInput<'_>) -> Decision {
        match &self.buckets {
            Buckets::One(limiter) => decide(limiter.check(), limiter.clock()),
            Buckets::PerKey(per_key) => {
                let key = per_key.key_of(input);
                if per_key.counts.keys.load(Relaxed) >= per_key.max_keys {
                    per_key.maybe_sweep();
                }
                decide(per_key.limiter.check_key(&key), per_key.limiter.clock())
            }
        }
    }

    /// Evicts idle keys and returns their memory. Off the request path: it visits every key.
    pub fn housekeeping(&self) {
        if let Buckets::PerKey(per_key) = &self.buckets {
            per_key.sweep();
        }
    }

    /// Buckets held (0 when unkeyed). Read-locks each shard of the map in turn: for tests and
    /// the admin page, not the request path.
    pub fn len(&self) -> usize {
        match &self.buckets {
            Buckets::One(_) => 0,
            Buckets::PerKey(per_key) => per_key.limiter.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests of new keys that found the map full and were counted in the shared overflow
    /// bucket: a metric, and the sign that `max_keys` is too small or a key flood is on.
    pub fn overflowed(&self) -> u64 {
        match &self.buckets {
            Buckets::One(_) => 0,
            Buckets::PerKey(per_key) => per_key.counts.overflowed.load(Relaxed),
        }
    }

    /// `RateLimit-Policy`, the same for every response.
    pub fn policy_header(&self) -> HeaderValue {
        self.headers.policy.clone()
    }

    /// `RateLimit` for `decision`.
    pub fn ratelimit_header(&self, decision: &Decision) -> HeaderValue {
        self.headers.ratelimit(decision)
    }

    /// `Retry-After` for a limited request; `None` when it was allowed.
    pub fn retry_after_header(&self, decision: &Decision) -> Option<HeaderValue> {
        match *decision {
            Decision::Allowed { .. } => None,
            Decision::Limited { retry_after } => Some(self.headers.retry_after(retry_after)),
        }
    }

    /// Adds the rate-limit headers for `decision` to a response's headers.
    pub fn insert_headers(&self, decision: &Decision, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy_header());
        headers.insert(RATELIMIT, self.ratelimit_header(decision));
        if let Some(retry_after) = self.retry_after_header(decision) {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
    }
}

impl<C: Clock> std::fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("policy", &self.headers.policy)
            .field("keyed", &matches!(self.buckets, Buckets::PerKey(_)))
            .field("overflowed", &self.overflowed())
            .finish_non_exhaustive()
    }
}

fn decide<C: Clock>(outcome: Result<StateSnapshot, NotUntil<C::Instant>>, clock: &C) -> Decision {
    match outcome {
        Ok(state) => Decision::Allowed {
            remaining: state.remaining_burst_capacity(),
        },
        Err(not_until) => Decision::Limited {
            retry_after: not_until.wait_time_from(clock.now()),
        },
    }
}

impl<C: Clock> PerKey<C> {
    fn key_of(&self, input: KeyInput<'_>) -> u64 {
        let hash = match &self.source {
            // One client, one bucket, whether it came over IPv4 or as an IPv4-mapped IPv6.
            Source::ClientIp => input
                .client_ip
                .map(|ip| self.hasher.hash_one(ip.to_canonical())),
            Source::Header(name) => input
                .headers
                .get(name)
                .map(HeaderValue::as_bytes)
                .filter(|value| !value.is_empty())
                .map(|value| self.hasher.hash_one(value)),
        };
        hash.map_or(MISSING, |h| h.max(FIRST_HASHED))
    }

    /// Evicts idle keys if no eviction ran in the last `SWEEP_INTERVAL`; one thread wins.
    fn maybe_sweep(&self) {
        let now = self.elapsed_nanos();
        let due = self.next_sweep.load(Relaxed);
        let next = now.saturating_add(u64::try_from(SWEEP_INTERVAL.as_nanos()).unwrap_or(u64::MAX));
        if now >= due
            && self
                .next_sweep
                .compare_exchange(due, next, Relaxed, Relaxed)
                .is_ok()
        {
            self.sweep();
        }
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn elapsed_nanos(&self) -> u64 {
        self.limiter
            .clock()
            .now()
            .duration_since(self.start)
            .as_u64()
    }
}

/// `governor`'s `DashMap` store, holding at most `max_keys` keys: a new key that finds it
/// full is counted in the `OVERFLOW` bucket instead.
struct BoundedStore {
    map: DashMapStateStore<u64, PassThrough>,
    max_keys: usize,
    counts: Arc<Counts>,
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let admitted = *key < FIRST_HASHED
            || self.map.contains_key(key)
            || self
                .counts
                .keys
                .fetch_update(Relaxed, Relaxed, |n| (n < self.max_keys).then_some(n + 1))
                .is_ok();
        if admitted {
            self.map.measure_and_replace(key, f)
        } else {
            self.counts.overflowed.fetch_add(1, Relaxed);
            self.map.measure_and_replace(&OVERFLOW, f)
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
        // Re-synchronise the count: racing inserts may have over-counted.
        self.counts.keys.store(self.map.len(), Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The map's keys are already random-keyed SipHash values: hashing them again is waste.
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;

    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; this keeps any other input well defined.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The header values of one limiter, built once.
struct Headers {
    policy: HeaderValue,
    /// `RateLimit` when allowed, indexed by the remaining count.
    allowed: Box<[HeaderValue]>,
    /// (`Retry-After`, `RateLimit`) when limited, indexed by the wait in seconds less one.
    limited: Box<[(HeaderValue, HeaderValue)]>,
    burst: u32,
    /// Time to earn one token.
    interval: Duration,
}

impl Headers {
    fn new(config: &RateLimitConfig, interval: Duration) -> Result<Self, String> {
        let policy = policy_value(POLICY_NAME, config.rate, config.per.seconds())?;
        let allowed = (0..config.burst.min(PRECOMPUTED_REMAINING))
            .map(|r| ratelimit_value(POLICY_NAME, r, refill_secs(config.burst, r, interval)))
            .collect::<Result<_, _>>()?;
        // A limited request waits at most one interval: at most 60 s for a valid config.
        let longest_wait = retry_after_secs(interval).min(3600);
        let limited = (1..=longest_wait)
            .map(|s| Ok((HeaderValue::from(s), ratelimit_value(POLICY_NAME, 0, s)?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            policy,
            allowed,
            limited,
            burst: config.burst,
            interval,
        })
    }

    fn ratelimit(&self, decision: &Decision) -> HeaderValue {
        match *decision {
            Decision::Allowed { remaining } => usize::try_from(remaining)
                .ok()
                .and_then(|i| self.allowed.get(i))
                .cloned()
                .unwrap_or_else(|| {
                    let reset = refill_secs(self.burst, remaining, self.interval);
                    sf_item(POLICY_NAME, 'r', u64::from(remaining), 't', reset)
                }),
            Decision::Limited { retry_after } => {
                let secs = retry_after_secs(retry_after);
                self.limited_entry(secs).map_or_else(
                    || sf_item(POLICY_NAME, 'r', 0, 't', secs),
                    |(_, ratelimit)| ratelimit.clone(),
                )
            }
        }
    }

    fn retry_after(&self, wait: Duration) -> HeaderValue {
        let secs = retry_after_secs(wait);
        self.limited_entry(secs)
            .map_or_else(|| HeaderValue::from(secs), |(value, _)| value.clone())
    }

    fn limited_entry(&self, secs: u64) -> Option<&(HeaderValue, HeaderValue)> {
        usize::try_from(secs.checked_sub(1)?)
            .ok()
            .and_then(|i| self.limited.get(i))
    }
}

/// Seconds until a bucket with `remaining` of `burst` tokens is full again, rounded up: an
/// upper bound, since the token being earned may be partly earned already.
fn refill_secs(burst: u32, remaining: u32, interval: Duration) -> u64 {
    let missing = burst.saturating_sub(remaining);
    ceil_secs(interval.checked_mul(missing).unwrap_or(Duration::MAX))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// `Retry-After` seconds for a wait: rounded up (a client that comes back early is refused
/// again), and at least 1 (0 would invite an immediate retry in a tight loop).
pub fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

/// A `Retry-After` value for a wait; `Limiter::retry_after_header` serves precomputed ones.
pub fn retry_after_value(wait: Duration) -> HeaderValue {
    HeaderValue::from(retry_after_secs(wait))
}

/// `RateLimit-Policy: "<name>";q=<quota>;w=<window>`. `name` must be printable ASCII.
pub fn policy_value(name: &str, quota: u32, window_secs: u64) -> Result<HeaderValue, String> {
    check_sf_string(name)?;
    Ok(sf_item(name, 'q', u64::from(quota), 'w', window_secs))
}

/// `RateLimit: "<name>";r=<remaining>;t=<reset>`. `name` must be printable ASCII.
pub fn ratelimit_value(name: &str, remaining: u32, reset_secs: u64) -> Result<HeaderValue, String> {
    check_sf_string(name)?;
    Ok(sf_item(name, 'r', u64::from(remaining), 't', reset_secs))
}

/// A structured-field string (RFC 9651 §3.3.3) holds printable ASCII only.
fn check_sf_string(name: &str) -> Result<(), String> {
    if name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(format!(
            "policy name {name:?} must be printable ASCII to go in a header"
        ))
    }
}

/// `"<name>";<k1>=<v1>;<k2>=<v2>`, quoting `"` and `\` in the name. Integers in structured
/// fields have at most 15 digits; larger values are clamped.
fn sf_item(name: &str, k1: char, v1: u64, k2: char, v2: u64) -> HeaderValue {
    const SF_INTEGER_MAX: u64 = 999_999_999_999_999;
    // On every response of a limited route (`RateLimit`): integers through itoa, not
    // `core::fmt`, and the name copied whole unless it needs escaping.
    let mut s = String::with_capacity(name.len() + 40);
    s.push('"');
    if name.contains(['"', '\\']) {
        for c in name.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
    } else {
        s.push_str(name);
    }
    s.push('"');
    let mut digits = itoa::Buffer::new();
    for (k, v) in [(k1, v1), (k2, v2)] {
        s.push(';');
        s.push(k);
        s.push('=');
        s.push_str(digits.format(v.min(SF_INTEGER_MAX)));
    }
    // Printable ASCII only (checked by the callers, or our own constant name).
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
}

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, ...): such a client
/// should be answered with gRPC status 8, `RESOURCE_EXHAUSTED`, not HTTP 429.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .and_then(|ct| ct.split_at_checked(16))
        .is_some_and(|(prefix, rest)| {
            prefix.eq_ignore_ascii_case(b"application/grpc")
                && matches!(rest.first(), None | Some(b'+' | b';'))
        })
}

/// `grpc-status` for a limited gRPC request: 8, `RESOURCE_EXHAUSTED`.
pub const GRPC_RESOURCE_EXHAUSTED: HeaderValue = HeaderValue::from_static("8");

/// Turns a response's headers into a trailers-only gRPC `RESOURCE_EXHAUSTED` answer (the
/// response itself must have HTTP status 200 and an empty body).
pub fn insert_grpc_limited(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        HeaderName::from_static("grpc-status"),
        GRPC_RESOURCE_EXHAUSTED,
    );
    headers.insert(
        HeaderName::from_static("grpc-message"),
        HeaderValue::from_static("rate%20limited"),
    );
}
