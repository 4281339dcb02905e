//! One request's exchange with a backend: the circuit breaker's request permit, then tries
//! until one is final: pick an endpoint (outlier detection + load balancer), send it (with the
//! per-try timeout), report the outcome (EWMA latency, outlier detection), and retry when the
//! route's policy, the attempts left, the breaker's retry limit and the backend's budget all
//! allow.
//!
//! Cost when nothing fires: one atomic compare-and-swap for the request permit, two for the
//! balancer's in-flight count, one load for the endpoint's availability (only with outlier
//! detection), two clock reads. A route with retries also deposits in the budget (one atomic)
//! and keeps a copy of the request head for a replay.

use std::hint::cold_path;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::breaker::{Outcome as BreakerOutcome, Permit, Resource};
use crate::error::ProxyError;
use crate::http::body::{BoxedRequest, BoxedResponse, RequestBody};
use crate::http::observe::ExchangeInfo;
use crate::metrics::TargetMetrics;
use crate::retry::{self, Failure, GiveUp, Outcome, RetryPolicy};
use crate::snapshot::BackendRt;
use crate::spares::Spares;

/// What a request needs to be sent again: its head and its whole body.
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Option<Bytes>,
}

thread_local! {
    /// Header maps kept for replays: a request on a retrying route copies its headers into a
    /// map that already has room, rather than allocating a new one (the copy is the one cost a
    /// retry policy adds to a request that succeeds at once).
    static MAPS: Spares<HeaderMap, 64> = const { Spares::new() };
}

/// A copy of `src` in a pooled map. Names and values are reference-counted or static, so
/// copying them is a counter increment each.
fn copy_headers(src: &HeaderMap) -> HeaderMap {
    let mut dst = Spares::take(&MAPS).unwrap_or_else(|| HeaderMap::with_capacity(src.len()));
    let mut last = None;
    for (name, value) in src {
        // `iter` yields every value; a repeated name comes right after its first value.
        if last == Some(name) {
            dst.append(name, value.clone());
        } else {
            dst.insert(name, value.clone());
            last = Some(name);
        }
    }
    dst
}

impl Drop for Replay {
    fn drop(&mut self) {
        let mut map = std::mem::take(&mut self.headers);
        if map.capacity() == 0 {
            return;
        }
        map.clear();
        Spares::give(&MAPS, map);
    }
}

/// A request with a copy of this head and `body` (whole, so it can be sent again).
fn rebuild(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Request<RequestBody> {
    let mut req = Request::new(body.map_or(RequestBody::Empty, RequestBody::full));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.version_mut() = version;
    *req.headers_mut() = copy_headers(headers);
    req
}

impl Replay {
    fn request(&self) -> BoxedRequest {
        Box::new(rebuild(
            &self.method,
            &self.uri,
            self.version,
            &self.headers,
            self.body.clone(),
        ))
    }

    /// Keeps `req` for replays when `policy` may retry it. A request without a body is ready
    /// at once; a small one of known length must first be read whole (`ReadBody`).
    pub fn prepare(mut req: BoxedRequest, policy: &RetryPolicy) -> Prepared {
        let body_is_empty = req.body().is_end_stream();
        let length = req.body().size_hint().exact();
        if !policy.retriable_request(req.method(), length, body_is_empty) {
            return Prepared::Ready(req, None);
        }
        if body_is_empty {
            let replay = Replay {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: copy_headers(req.headers()),
                body: None,
            };
            *req.body_mut() = RequestBody::Empty;
            return Prepared::Ready(req, Some(replay));
        }
        let (parts, body) = (*req).into_parts();
        Prepared::ReadBody(Box::pin(async move {
            let bytes = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    tracing::debug!(error = %e, "request body ended early");
                    return Err(ProxyError::BadRequest("the request body ended early\n"));
                }
            };
            let replay = Replay::from_parts(&parts, Some(bytes.clone()));
            Ok((
                Box::new(Request::from_parts(parts, RequestBody::full(bytes))),
                Some(replay),
            ))
        }))
    }

    fn from_parts(parts: &Parts, body: Option<Bytes>) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: copy_headers(&parts.headers),
            body,
        }
    }

    /// A copy for a mirror, when the body is already whole (or there is none).
    pub fn mirror_copy(req: &Request<RequestBody>) -> Option<BoxedRequest> {
        let body = match req.body() {
            RequestBody::Empty => None,
            RequestBody::Full(b) => b.clone(),
            RequestBody::Incoming(b) | RequestBody::Counted(b, _) if b.is_end_stream() => None,
            RequestBody::Incoming(_) | RequestBody::Counted(..) => return None,
        };
        Some(Box::new(rebuild(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            body,
        )))
    }
}

type ReadBody = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<(BoxedRequest, Option<Replay>), ProxyError>> + Send,
    >,
>;

/// A request made ready for retries.
// `Ready` is the common case and lives on the stack; boxing it would allocate per request.
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    Ready(BoxedRequest, Option<Replay>),
    /// The body must be read whole first (boxed: only requests with a body on a retrying
    /// route pay for it, and the common path's future stays small).
    ReadBody(ReadBody),
}

/// The request's permit on `backend` (circuit breaker `max_requests`).
pub fn request_permit(backend: &BackendRt) -> Result<Permit, ProxyError> {
    match backend.counters.try_acquire_request(&backend.limits) {
        Some(p) => Ok(p),
        None => {
            backend.metrics.overflow(Resource::Requests);
            Err(ProxyError::Overflow)
        }
    }
}

/// Sends `req` to `backend`, retrying per `policy` when a `replay` was kept.
/// `metrics`: where each try's time to headers is recorded (`None` for mirrors).
pub async fn exchange(
    backend: &BackendRt,
    metrics: Option<&TargetMetrics>,
    info: &mut ExchangeInfo,
    req: BoxedRequest,
    upgrade: bool,
    policy: Option<&RetryPolicy>,
    replay: Option<Replay>,
) -> Result<BoxedResponse, ProxyError> {
    // One call site of `one_try` for first tries and retries alike: each call site would add
    // the try's whole future to this one's size.
    let per_try = policy.and_then(|p| p.per_try_timeout);
    let retries = match (policy, &replay) {
        (Some(p), Some(_)) => {
            backend.budget.deposit(tokio::time::Instant::now());
            Some(p)
        }
        _ => None,
    };
    let mut req = Some(req);
    let mut attempt = 1u32;
    let mut _retry_permit: Option<Permit> = None;
    loop {
        let this = match (req.take(), &replay) {
            (Some(r), _) => r,
            (None, Some(replay)) => replay.request(),
            // Unreachable: without a replay the first result is returned below.
            (None, None) => {
                cold_path();
                return Err(ProxyError::UpstreamReset);
            }
        };
        let result = one_try(
            backend,
            metrics,
            info,
            this,
            upgrade && attempt == 1,
            per_try,
        )
        .await;
        let Some(policy) = retries else {
            return result;
        };
        let outcome = match &result {
            Ok(resp) => {
                if resp.status().as_u16() < 400 && policy.on.grpc.is_empty() {
                    return result;
                }
                Outcome::Response {
                    status: resp.status(),
                    headers: resp.headers(),
                }
            }
            Err(e) => match failure(*e) {
                Some(f) => Outcome::Failed(f),
                None => return result,
            },
        };
        let decision = retry::next_retry(
            policy,
            &backend.budget,
            attempt,
            &outcome,
            tokio::time::Instant::now(),
            SystemTime::now(),
            fastrand::u64(..),
        );
        let delay = match decision {
            Ok(d) => d,
            Err(GiveUp::BudgetExhausted) => {
                backend.metrics.budget_exhausted.inc();
                info.retries_exhausted = true;
                return result;
            }
            Err(GiveUp::AttemptsExhausted) => {
                info.retries_exhausted = attempt > 1;
                return result;
            }
            Err(GiveUp::NotRetriable) => return result,
        };
        // The retry limit of the circuit breaker: retries in flight to this backend.
        _retry_permit = None;
        let Some(permit) = backend.counters.try_acquire_retry(&backend.limits) else {
            backend.metrics.overflow(Resource::Retries);
            return result;
        };
        _retry_permit = Some(permit);
        // The failed response's body is not read: dropping it closes its connection.
        drop(result);
        backend.metrics.retries.inc();
        attempt += 1;
        tracing::debug!(backend = %backend.name, attempt, ?delay, "retrying");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The retry policy's name for a failure without a response; `None` for failures that are
/// not the upstream's (overflow, no endpoint): never retried.
fn failure(e: ProxyError) -> Option<Failure> {
    match e {
        ProxyError::ConnectFailed => Some(Failure::ConnectFailed),
        ProxyError::UpstreamReset | ProxyError::BadUpstreamResponse => Some(Failure::Reset),
        ProxyError::RefusedStream => Some(Failure::RefusedStream),
        ProxyError::Timeout => Some(Failure::Timeout),
        _ => None,
    }
}

/// One try: pick an endpoint, send, report the outcome to the balancer and outlier detection.
async fn one_try(
    backend: &BackendRt,
    metrics: Option<&TargetMetrics>,
    info: &mut ExchangeInfo,
    req: BoxedRequest,
    upgrade: bool,
    per_try: Option<std::time::Duration>,
) -> Result<BoxedResponse, ProxyError> {
    let now = match info.arrived {
        Some(arrived) if info.attempts == 0 && !info.fault_delayed => arrived,
        _ => Instant::now(),
    };
    let picked = backend.pick(now)?;
    backend.metrics.attempts.inc();
    info.attempts += 1;
    info.endpoint = Some(picked.endpoint.addr);
    info.upstream_start.get_or_insert(now);
    let mut probe = ProbeGuard {
        backend,
        index: picked.probe.then_some(picked.index),
    };
    let in_flight = backend.balancer.start(picked.index, now);
    let send = std::pin::pin!(super::proxy::send(
        backend,
        picked.endpoint,
        req,
        upgrade,
        now
    ));
    let result = match per_try {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::Timeout),
        },
        None => send.await,
    };
    let done = Instant::now();
    info.upstream_end = Some(done);
    let verdict = match &result {
        Ok(resp) => Some(BreakerOutcome::from_status(resp.status().as_u16())),
        Err(
            ProxyError::ConnectFailed
            | ProxyError::UpstreamReset
            | ProxyError::BadUpstreamResponse
            | ProxyError::RefusedStream
            | ProxyError::Timeout,
        ) => Some(BreakerOutcome::Failure),
        // Refused before reaching the endpoint (overflow): says nothing about it.
        Err(_) => None,
    };
    if let (Ok(_), Some(m)) = (&result, metrics) {
        m.upstream(done.saturating_duration_since(now));
    }
    in_flight.finish(
        done,
        matches!(&result, Ok(r) if r.status() < StatusCode::INTERNAL_SERVER_ERROR),
    );
    if let Some(v) = verdict {
        probe.index = None;
        backend.record(picked.index, v, done);
    }
    result
}

/// Gives a half-open endpoint's probe back if the try ends without an outcome (cancelled by
/// the route timeout or a client that went away), so the next request can probe at once.
struct ProbeGuard<'a> {
    backend: &'a BackendRt,
    index: Option<usize>,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            self.backend.outlier.release_probe(i);
        }
    }
}
