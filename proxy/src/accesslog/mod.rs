//! Access logs: one JSON line per request, with the configured business headers (optionally
//! redacted), formatted on the request worker into a shared buffer that a writer task writes.
//!
//! # Model
//!
//! - A listener with `access_log` configured compiles an [`AccessLog`]: its [`LogFormat`]
//!   (listener name, which request and response headers to log and how to redact them, whether
//!   to keep the query string), its sampling ratio, and a [`LogSink`] into the writer of its
//!   output. Listeners logging to the same output share one writer (see [`Writers`]), so lines
//!   never interleave.
//! - **On the request path** the exchange fills an [`AccessRecord`]: times, ids, addresses, the
//!   request line, status, [`ResponseFlags`], byte counts, where it went and how many tries it
//!   took, and the configured headers' values ([`Captured`]). Every field is a copy or a
//!   reference-counted clone of what the request path already holds.
//! - **At the end of the exchange**, [`LogSink::submit`] formats the record as a JSON line
//!   ([`write_json`]: no allocation per line once the buffer is warm), redacting as configured
//!   ([`Redact`]: a keyed SHA-256 digest, or just the fact the header was there), into the
//!   calling thread's shard of the output's buffer; the record is then dropped where it was
//!   built. Never a wait: when the shard is full (the output is slower than the traffic) the
//!   line is dropped and counted.
//! - **The writer task** (on the control runtime) sweeps the shards every 20 ms while lines
//!   come (sooner when a shard fills up; it sleeps with no timer when none do) and writes each
//!   shard's lines with one write, to stdout or an append-only file. See the `writer` module.
//! - **Sampling** (`sample` below 1) is decided when the request starts, so an unsampled
//!   request costs one random number and nothing else.
//!
//! Response flags follow Envoy's short codes, so the tools people already have for Envoy logs
//! read ours: see [`ResponseFlags`].
//!
//! # Cost on the request path
//!
//! [`AccessLog::sample`]: one `fastrand` draw (none at ratio 1). [`AccessLog::record`]: one
//! reference-count increment (the format). [`AccessLog::capture_request`] /
//! [`AccessLog::capture_response`]: one header-map lookup per configured header and a
//! reference-count increment per value found, into a list reused from the worker's spares.
//! [`LogSink::submit`]: the line's formatting, HMAC redaction included (≈ 600 ns with an
//! HMAC), under an uncontended lock of this thread's shard (a compare-and-swap and a swap); a
//! notify only for the first line after a quiet spell or when a shard passes 256 KiB. The
//! record is formatted where it lies, in its box, not moved, and dropped on the worker.

#[cfg(test)]
mod tests;

mod format;
mod redact;
mod writer;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

pub use format::write_json;
pub use redact::{Hasher, Redact};
pub use writer::{LogSink, LogStats, LogWriter, Output, Writers};

use crate::error::ProxyError;
use crate::reqid::RequestId;
use crate::spares::Spares;
use crate::trace::{Host, SpanId, TraceId};

/// The most request headers (and, separately, response headers) one listener may log.
pub const MAX_CAPTURED: usize = 8;

/// Lines an output's buffer holds per worker thread (per shard) between two sweeps of its
/// writer before that thread's lines are dropped. The writer sweeps every 20 ms under load, so
/// this is headroom for a slow or stalled output (a disk that hangs, a stdout nobody reads), not
/// for normal traffic. Bounds the memory of a stalled output at about 8 shards × this × the line
/// size (a few hundred bytes, more with captured headers).
pub const QUEUE_SIZE: usize = 8192;

/// Envoy-style response flags: why the exchange went the way it did, beyond its status.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// `NR`: no route matched the request.
    pub const NO_ROUTE: Self = Self(1);
    /// `UH`: the backend had no endpoint to send to (none configured, or all ejected). Envoy's
    /// "no healthy upstream".
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 1);
    /// `UF`: connecting to the upstream failed.
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self(1 << 2);
    /// `UT`: the route's timeout (or a try's) expired.
    pub const UPSTREAM_TIMEOUT: Self = Self(1 << 3);
    /// `UC`: the upstream closed or reset the connection.
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 4);
    /// `UR`: the upstream reset the stream (HTTP/2 `REFUSED_STREAM` and other resets).
    pub const UPSTREAM_RESET: Self = Self(1 << 5);
    /// `UO`: a circuit-breaker limit (connections, pending, requests) was reached.
    pub const UPSTREAM_OVERFLOW: Self = Self(1 << 6);
    /// `URX`: retries were exhausted (attempts or budget) and the last try failed.
    pub const RETRIES_EXHAUSTED: Self = Self(1 << 7);
    /// `RL`: a rate limit refused the request.
    pub const RATE_LIMITED: Self = Self(1 << 8);
    /// `FI`: fault injection aborted the request.
    pub const FAULT_INJECTED: Self = Self(1 << 9);
    /// `DI`: fault injection delayed the request.
    pub const DELAY_INJECTED: Self = Self(1 << 10);
    /// `DC`: the client went away before the response was complete.
    pub const DOWNSTREAM_DISCONNECT: Self = Self(1 << 11);
    /// `DPE`: the request was malformed (400 from the proxy).
    pub const DOWNSTREAM_PROTOCOL_ERROR: Self = Self(1 << 12);
    /// `SI`: the response went idle longer than the route's `idle_timeout`.
    pub const STREAM_IDLE_TIMEOUT: Self = Self(1 << 13);
    /// `UPE`: the upstream's response was malformed (502 from the proxy).
    pub const UPSTREAM_PROTOCOL_ERROR: Self = Self(1 << 14);

    /// Every flag with its code, in the order they are written.
    const CODES: [(Self, &'static str); 15] = [
        (Self::NO_ROUTE, "NR"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::UPSTREAM_TIMEOUT, "UT"),
        (Self::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Self::UPSTREAM_RESET, "UR"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::RETRIES_EXHAUSTED, "URX"),
        (Self::RATE_LIMITED, "RL"),
        (Self::FAULT_INJECTED, "FI"),
        (Self::DELAY_INJECTED, "DI"),
        (Self::DOWNSTREAM_DISCONNECT, "DC"),
        (Self::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
        (Self::STREAM_IDLE_TIMEOUT, "SI"),
        (Self::UPSTREAM_PROTOCOL_ERROR, "UPE"),
    ];

    pub const fn empty() -> Self {
        Self(0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// The flag of a proxy-made answer: the one place errors map to flags.
    pub fn from_error(error: ProxyError) -> Self {
        match error {
            ProxyError::BadRequest(_) => Self::DOWNSTREAM_PROTOCOL_ERROR,
            ProxyError::NoRoute => Self::NO_ROUTE,
            ProxyError::NoEndpoints | ProxyError::NoHealthyEndpoints => Self::NO_HEALTHY_UPSTREAM,
            ProxyError::Overflow => Self::UPSTREAM_OVERFLOW,
            ProxyError::RateLimited => Self::RATE_LIMITED,
            ProxyError::FaultInjected(_) => Self::FAULT_INJECTED,
            ProxyError::ConnectFailed => Self::UPSTREAM_CONNECT_FAILURE,
            ProxyError::UpstreamReset => Self::UPSTREAM_CONNECTION_TERMINATION,
            ProxyError::BadUpstreamResponse => Self::UPSTREAM_PROTOCOL_ERROR,
            ProxyError::RefusedStream => Self::UPSTREAM_RESET,
            ProxyError::Timeout => Self::UPSTREAM_TIMEOUT,
        }
    }

    /// The short codes that are set, in a fixed order.
    pub fn codes(self) -> impl Iterator<Item = &'static str> {
        Self::CODES
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, code)| code)
    }
}

impl fmt::Display for ResponseFlags {
    /// Comma-separated codes, or `-` when none is set (as Envoy prints them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, code) in self.codes().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(code)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

/// One header to log, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedHeader {
    pub name: HeaderName,
    pub redact: Redact,
}

/// What a listener's log lines contain beyond the fixed fields; shared by its records.
#[derive(Debug)]
pub struct LogFormat {
    pub listener: Arc<str>,
    /// `,"listener":"<name>"`, rendered once: every line of the listener starts with it.
    listener_field: Box<[u8]>,
    pub request_headers: Vec<LoggedHeader>,
    pub response_headers: Vec<LoggedHeader>,
    /// Log the query string with the path (off by default: queries often carry tokens).
    pub include_query: bool,
    pub hasher: Hasher,
}

impl LogFormat {
    /// A format; refuses more than [`MAX_CAPTURED`] headers per direction.
    pub fn new(
        listener: Arc<str>,
        request_headers: Vec<LoggedHeader>,
        response_headers: Vec<LoggedHeader>,
        include_query: bool,
        hasher: Hasher,
    ) -> Result<Self, String> {
        if request_headers.len() > MAX_CAPTURED || response_headers.len() > MAX_CAPTURED {
            return Err(format!(
                "at most {MAX_CAPTURED} request and {MAX_CAPTURED} response headers can be logged"
            ));
        }
        let mut listener_field = b",\"listener\":".to_vec();
        format::string(&mut listener_field, listener.as_bytes());
        Ok(Self {
            listener,
            listener_field: listener_field.into_boxed_slice(),
            request_headers,
            response_headers,
            include_query,
            hasher,
        })
    }
}

/// The values of a listener's logged headers, in the order configured. A header logged with
/// `redact: drop` keeps no value, only the fact that it was there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
/// Sized to the headers configured (none: no allocation), so a record stays small: it is
/// boxed per logged request, and under about a kilobyte the allocator serves it from its
/// per-thread cache.
pub struct Captured(Vec<Option<HeaderValue>>);

thread_local! {
    /// Value lists for the next logged request (see `spares`), emptied.
    static SPARE_LISTS: Spares<Vec<Option<HeaderValue>>, 64> = const { Spares::new() };
}

impl Captured {
    /// The values of the headers `specs` name, in their order.
    pub fn capture(specs: &[LoggedHeader], headers: &HeaderMap) -> Self {
        if specs.is_empty() {
            return Self::default();
        }
        let mut values = Spares::take(&SPARE_LISTS).unwrap_or_default();
        values.extend(specs.iter().map(|spec| {
            headers.get(&spec.name).map(|v| match spec.redact {
                Redact::Drop => HeaderValue::from_static(""),
                Redact::None | Redact::Hash => v.clone(),
            })
        }));
        Self(values)
    }

    pub fn get(&self, i: usize) -> Option<&HeaderValue> {
        self.0.get(i)?.as_ref()
    }
}

impl Drop for Captured {
    /// Gives the list back to this thread's spares, emptied.
    fn drop(&mut self) {
        if self.0.capacity() == 0 {
            return;
        }
        let mut values = std::mem::take(&mut self.0);
        values.clear();
        Spares::give(&SPARE_LISTS, values);
    }
}

/// One request's log line, before formatting.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub format: Arc<LogFormat>,
    pub start: SystemTime,
    /// From the request's arrival to the end of the response (or of the exchange).
    pub duration: Duration,
    /// From sending the first try upstream to the last try's response headers; `None` if no
    /// try was sent.
    pub upstream: Option<Duration>,
    pub request_id: Option<RequestId>,
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    pub client: Option<SocketAddr>,
    pub method: Method,
    pub authority: Option<Host>,
    pub path: Option<PathAndQuery>,
    pub version: Version,
    /// The status sent to the client; `None` if none was.
    pub status: Option<StatusCode>,
    pub flags: ResponseFlags,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    /// Tries sent upstream (0 when the proxy answered by itself).
    pub attempts: u32,
    pub request_headers: Captured,
    pub response_headers: Captured,
}

impl AccessRecord {
    pub fn new(format: Arc<LogFormat>, start: SystemTime) -> Self {
        Self {
            format,
            start,
            duration: Duration::ZERO,
            upstream: None,
            request_id: None,
            trace_id: None,
            span_id: None,
            client: None,
            method: Method::GET,
            authority: None,
            path: None,
            version: Version::HTTP_11,
            status: None,
            flags: ResponseFlags::empty(),
            bytes_in: 0,
            bytes_out: 0,
            route: None,
            backend: None,
            endpoint: None,
            attempts: 0,
            request_headers: Captured::default(),
            response_headers: Captured::default(),
        }
    }
}

/// A listener's access log, compiled from config.
#[derive(Debug, Clone)]
pub struct AccessLog {
    format: Arc<LogFormat>,
    /// `None`: every request. Otherwise a request is logged when a draw is below it.
    threshold: Option<u64>,
    sink: LogSink,
}

impl AccessLog {
    /// `sample` is the share of requests logged, 0..=1.
    pub fn new(format: LogFormat, sample: f64, sink: LogSink) -> Self {
        let threshold = if sample >= 1.0 {
            None
        } else {
            // 2^64 × ratio; `as` saturates and maps NaN to 0.
            Some((sample.max(0.0) * 18_446_744_073_709_551_616.0) as u64)
        };
        Self {
            format: Arc::new(format),
            threshold,
            sink,
        }
    }

    pub fn format(&self) -> &Arc<LogFormat> {
        &self.format
    }

    pub fn sink(&self) -> &LogSink {
        &self.sink
    }

    /// Whether this request is logged; draws from the calling thread's `fastrand` generator.
    pub fn sample(&self) -> bool {
        self.threshold.is_none_or(|t| fastrand::u64(..) < t)
    }

    /// [`Self::sample`] drawing from `rng`.
    pub fn sample_with(&self, rng: &mut fastrand::Rng) -> bool {
        self.threshold.is_none_or(|t| rng.u64(..) < t)
    }

    /// A new record for a request that arrived at `start`.
    pub fn record(&self, start: SystemTime) -> AccessRecord {
        AccessRecord::new(Arc::clone(&self.format), start)
    }

    /// The configured request headers' values (take them before the request goes upstream).
    pub fn capture_request(&self, headers: &HeaderMap) -> Captured {
        Captured::capture(&self.format.request_headers, headers)
    }

    /// The configured response headers' values.
    pub fn capture_response(&self, headers: &HeaderMap) -> Captured {
        Captured::capture(&self.format.response_headers, headers)
    }

    /// Formats the line into the output's buffer; never waits. Returns whether it was taken
    /// (else it was dropped and counted). The caller drops the record.
    pub fn submit(&self, record: &AccessRecord) -> bool {
        self.sink.submit(record)
    }
}
