//! Which outcomes a route retries, and which requests may be replayed at all.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::backoff::Backoff;

/// The gRPC status of a trailers-only response travels in the response headers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The largest body buffered for a replay unless the route says otherwise (Linkerd's cap).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// A gRPC status code, as numbered in gRPC's `doc/statuscodes.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcCode(u8);

/// Config names of the codes, indexed by number: the upper-case gRPC names in kebab case.
const GRPC_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

impl GrpcCode {
    pub const OK: Self = Self(0);
    pub const CANCELLED: Self = Self(1);
    pub const UNKNOWN: Self = Self(2);
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    pub const RESOURCE_EXHAUSTED: Self = Self(8);
    pub const INTERNAL: Self = Self(13);
    pub const UNAVAILABLE: Self = Self(14);

    /// The code numbered `n`, if gRPC defines one (0..=16).
    pub fn from_u32(n: u32) -> Option<Self> {
        u8::try_from(n)
            .ok()
            .filter(|&n| usize::from(n) < GRPC_NAMES.len())
            .map(Self)
    }

    /// Parses a config name: `unavailable`, `resource-exhausted`, also `RESOURCE_EXHAUSTED`.
    pub fn from_name(name: &str) -> Option<Self> {
        GRPC_NAMES
            .iter()
            .position(|known| {
                known.len() == name.len()
                    && known
                        .bytes()
                        .zip(name.bytes())
                        .all(|(k, n)| k == n.to_ascii_lowercase() || (k == b'-' && n == b'_'))
            })
            .and_then(|i| u32::try_from(i).ok())
            .and_then(Self::from_u32)
    }

    /// The `grpc-status` of a response, if it carries a well-formed one (a decimal number).
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > 3 || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = bytes.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        Self::from_u32(n)
    }

    pub fn code(self) -> u8 {
        self.0
    }

    pub fn name(self) -> &'static str {
        GRPC_NAMES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("unknown")
    }
}

/// A set of gRPC codes: one bit per code, so a lookup is a shift and a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    pub const NONE: Self = Self(0);

    pub fn with(self, code: GrpcCode) -> Self {
        Self(self.0 | 1 << code.0)
    }

    pub fn contains(self, code: GrpcCode) -> bool {
        self.0 & (1 << code.0) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<GrpcCode> for GrpcCodes {
    fn from_iter<I: IntoIterator<Item = GrpcCode>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, Self::with)
    }
}

/// What a route retries. Envoy's and Istio's `retryOn` vocabulary, so users recognise it.
///
/// A failure without a response counts as the gateway error the proxy would answer with
/// (`error::ProxyError`: 502 for connect failure, refused stream and reset, 504 for a per-try
/// timeout), so `server_error` and `gateway_error` cover every failure. `statuses` and `grpc`
/// match only responses the upstream actually sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// `connect-failure`: no connection to the endpoint. The request never left the proxy.
    pub connect_failure: bool,
    /// `refused-stream`: HTTP/2 `REFUSED_STREAM`: the server promises it did not process it.
    pub refused_stream: bool,
    /// `reset`: the upstream reset or closed the connection, or the try timed out.
    pub reset: bool,
    /// `5xx`: any 5xx response, and every failure.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504, and every failure.
    pub gateway_error: bool,
    /// `retriable-status-codes`: these response statuses (e.g. 409 or 429 where a route wants).
    pub statuses: Vec<StatusCode>,
    /// gRPC codes in the response headers (trailers-only responses).
    pub grpc: GrpcCodes,
}

impl RetryOn {
    /// Retries nothing; a starting point for building a set by hand.
    pub fn none() -> Self {
        Self {
            connect_failure: false,
            refused_stream: false,
            reset: false,
            server_error: false,
            gateway_error: false,
            statuses: Vec::new(),
            grpc: GrpcCodes::NONE,
        }
    }

    /// Whether this set retries `outcome` (the attempt count aside).
    pub fn matches(&self, outcome: &Outcome<'_>) -> bool {
        match *outcome {
            Outcome::Failed(failure) => {
                self.server_error
                    || self.gateway_error
                    || match failure {
                        Failure::ConnectFailed => self.connect_failure,
                        Failure::RefusedStream => self.refused_stream,
                        Failure::Reset | Failure::Timeout => self.reset,
                    }
            }
            Outcome::Response { status, headers } => {
                (self.server_error && status.is_server_error())
                    || (self.gateway_error && matches!(status.as_u16(), 502..=504))
                    || self.statuses.contains(&status)
                    || (!self.grpc.is_empty()
                        && headers
                            .get(GRPC_STATUS)
                            .and_then(GrpcCode::from_header)
                            .is_some_and(|code| self.grpc.contains(code)))
            }
        }
    }
}

/// Istio's default: `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
/// with 503: failures where the request most likely did no work upstream.
impl Default for RetryOn {
    fn default() -> Self {
        Self {
            connect_failure: true,
            refused_stream: true,
            statuses: vec![StatusCode::SERVICE_UNAVAILABLE],
            grpc: GrpcCodes::NONE
                .with(GrpcCode::UNAVAILABLE)
                .with(GrpcCode::CANCELLED),
            ..Self::none()
        }
    }
}

/// Parses a comma-separated list: `connect-failure`, `refused-stream`, `reset`, `5xx`,
/// `gateway-error`, a status code (`503`), or a gRPC code name (`unavailable`). Reports every
/// unknown entry, not just the first.
impl FromStr for RetryOn {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        let mut on = Self::none();
        let mut bad = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "reset" => on.reset = true,
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                _ => {
                    if let Some(status) = item
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (400..600).contains(s))
                        .and_then(|s| StatusCode::from_u16(s).ok())
                    {
                        if !on.statuses.contains(&status) {
                            on.statuses.push(status);
                        }
                    } else if let Some(code) = GrpcCode::from_name(item) {
                        on.grpc = on.grpc.with(code);
                    } else {
                        bad.push(format!("`{item}`"));
                    }
                }
            }
        }
        if bad.is_empty() {
            Ok(on)
        } else {
            Err(format!(
                "unknown retry condition {}: expected connect-failure, refused-stream, reset, \
                 5xx, gateway-error, a 4xx/5xx status code or a gRPC code name",
                bad.join(", ")
            ))
        }
    }
}

/// A failure that produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: the request was not sent.
    ConnectFailed,
    /// HTTP/2 `REFUSED_STREAM` (or GOAWAY above the stream id): the request was not processed.
    RefusedStream,
    /// The connection or stream was reset or closed before a response arrived.
    Reset,
    /// The per-try timeout expired.
    Timeout,
}

impl Failure {
    /// True when the upstream provably did not process the request, so even a non-idempotent
    /// one could be replayed without doing its work twice (RFC 9113 §8.7).
    pub fn unprocessed(self) -> bool {
        matches!(self, Self::ConnectFailed | Self::RefusedStream)
    }
}

/// How one try ended. Borrows the response headers: classifying costs no copy.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Failed(Failure),
    Response {
        status: StatusCode,
        headers: &'a HeaderMap,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ConnectFailed => "connect-failure",
            Self::RefusedStream => "refused-stream",
            Self::Reset => "reset",
            Self::Timeout => "per-try-timeout",
        })
    }
}

/// A route's retry policy: compiled once from config, read by every request of the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included: 2 means at most one retry. 1 disables retries.
    pub max_attempts: u32,
    /// Which outcomes are retried.
    pub on: RetryOn,
    /// Each try's own deadline; the request's overall timeout still bounds them all.
    pub per_try_timeout: Option<Duration>,
    /// The wait between tries.
    pub backoff: Backoff,
    /// Retry methods RFC 9110 does not call idempotent (POST, PATCH, gRPC's POSTs). Opt-in: the
    /// route owner vouches that doing the work twice is harmless.
    pub allow_non_idempotent: bool,
    /// The largest request body kept for a replay; bigger bodies stream and are not retried.
    pub max_body_bytes: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            on: RetryOn::default(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            allow_non_idempotent: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Whether RFC 9110 §9.2.2 calls `method` idempotent: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl RetryPolicy {
    /// Whether a request may be retried at all, decided before its first try so that only
    /// those requests pay for buffering their body.
    ///
    /// `content_length` is the body's length if known: from `Content-Length`, an exact size
    /// hint, or after the caller has buffered a streaming body up to `max_body_bytes`. A body
    /// of unknown length is not retried: it cannot be replayed without being kept whole.
    pub fn retriable_request(
        &self,
        method: &Method,
        content_length: Option<u64>,
        body_is_empty: bool,
    ) -> bool {
        if self.max_attempts < 2 || !(self.allow_non_idempotent || is_idempotent(method)) {
            return false;
        }
        body_is_empty
            || content_length
                .is_some_and(|n| usize::try_from(n).is_ok_and(|n| n <= self.max_body_bytes))
    }

    /// Whether to try again after `attempt` tries (1 after the first) ended in `outcome`.
    /// The budget is asked separately, and last, so that only real retries draw on it.
    pub fn should_retry(&self, attempt: u32, outcome: &Outcome<'_>) -> bool {
        attempt < self.max_attempts && self.on.matches(outcome)
    }

    /// Checks the policy once, when config is compiled; reports every problem.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if self.max_attempts == 0 {
            errors.push("max_attempts must be at least 1 (the first try)".to_owned());
        }
        if self.max_attempts > 10 {
            errors.push(format!(
                "max_attempts {} is more than 10: retries multiply load on a failing backend",
                self.max_attempts
            ));
        }
        if self.per_try_timeout == Some(Duration::ZERO) {
            errors.push("per_try_timeout must be more than 0".to_owned());
        }
        if let Err(e) = self.backoff.validate() {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}
