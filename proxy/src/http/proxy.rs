//! The request path: route, pick a backend and an endpoint, forward, and write the response
//! back. Every failure becomes a response here; nothing reaches hyper as an error.

use std::convert::Infallible;
use std::hint::cold_path;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::{PathModifier, Redirect, UpstreamProtocol};
use crate::error::ProxyError;
use crate::http::body::{
    BodyTimers, BoxedRequest, BoxedResponse, RequestBody, ResponseBody, UpstreamBody,
};
use crate::http::client::{self, SendError};
use crate::http::exchange::{self, Prepared, Replay};
use crate::http::headers::{authority, is_upgrade, strip_hop_by_hop};
use crate::http::observe::ExchangeInfo;
use crate::http::pool::{self, Checkout};
use crate::http::server::{Activity, StreamGuard};
use crate::metrics::TargetMetrics;
use crate::ratelimit::{Decision, KeyInput};
use crate::router::{RequestParts, normalize_path};
use crate::snapshot::{BackendRt, ListenerSnapshot, RateLimitRt, RouteRt};

/// What every request on one downstream connection shares.
pub struct ConnCtx {
    pub listener: Arc<ArcSwap<ListenerSnapshot>>,
    pub client: SocketAddr,
    /// Open requests, for the connection's idle deadline (`header_read_timeout`).
    pub activity: Arc<Activity>,
}

/// The hyper-facing service function: infallible, records metrics for every answer. The
/// request counts as open from the moment hyper hands it over (not from the future's first
/// poll), until its response body ends.
pub fn handle(
    req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
    let stream = ctx.activity.begin();
    let answered = Box::pin(answer(
        Box::new(req.map(|b| RequestBody::Incoming(http_body_util::Either::Right(b)))),
        ctx,
        stream,
    ));
    async move { answered.await.map(|resp| *resp) }
}

/// Answers one request, whatever happens: every failure becomes a response.
pub(crate) async fn answer(
    mut req: BoxedRequest,
    ctx: Arc<ConnCtx>,
    stream: StreamGuard,
) -> Result<BoxedResponse, Infallible> {
    let start = Instant::now();
    // One snapshot for the whole exchange: a reload mid-request never mixes two configs.
    let snap = ctx.listener.load_full();
    let version = req.version();
    let grpc = crate::ratelimit::is_grpc(req.headers());
    let in_flight = InFlight::new(&snap.in_flight);
    // Request id and trace context first: every later step, and the upstream, sees them.
    let started = snap.observe.start(&mut req, ctx.client, start);
    let mut info = ExchangeInfo {
        count_body: started.logged(),
        arrived: Some(start),
        ..ExchangeInfo::default()
    };
    let (mut resp, metrics) = match forward(req, &snap, &ctx, start, grpc, &mut info).await {
        Ok(ok) => ok,
        Err((e, m)) => {
            cold_path();
            info.error = Some(e);
            (Box::new(e.into_response(grpc)), m)
        }
    };
    drop(in_flight);
    // The time to the response head: when the upstream's came, else (answered here) now.
    let took = match info.upstream_end {
        Some(end) => end.saturating_duration_since(start),
        None => start.elapsed(),
    };
    metrics.record(resp.status(), took);
    let status = resp.status();
    if let Some(pending) = snap
        .observe
        .respond(started, resp.headers_mut(), status, &info)
    {
        resp.body_mut().finish_with(pending);
    }
    if grpc {
        // Trailers-only (errors, and ours): the status is in the headers; else in trailers.
        match resp
            .headers()
            .get("grpc-status")
            .and_then(crate::retry::GrpcCode::from_header)
        {
            Some(code) => metrics.grpc_status(code.code()),
            None => resp.body_mut().count_grpc(Arc::clone(metrics.grpc())),
        }
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        *resp.version_mut() = version;
    }
    resp.body_mut().hold(stream);
    Ok(resp)
}

/// Counts a request in flight until dropped (answered, or abandoned by its client).
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn new(g: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type Failed<'a> = (ProxyError, &'a TargetMetrics);
type Answer<'a> = Result<(BoxedResponse, &'a TargetMetrics), Failed<'a>>;

/// Counts `req` against `limit`: `Ok` with the decision when admitted (for the `RateLimit`
/// headers of its response), `Err` with it when over the limit.
fn check_limit(
    limit: &RateLimitRt,
    req: &Request<RequestBody>,
    client: SocketAddr,
) -> Result<Decision, Decision> {
    let decision = limit.limiter.check(KeyInput {
        client_ip: Some(client.ip()),
        headers: req.headers(),
    });
    match decision {
        Decision::Allowed { .. } => Ok(decision),
        Decision::Limited { .. } => {
            limit.limited.inc();
            Err(decision)
        }
    }
}

/// The 429 (gRPC: RESOURCE_EXHAUSTED) answer with the limit's headers.
fn limited(limit: &RateLimitRt, decision: Decision, grpc: bool) -> BoxedResponse {
    let mut resp = Box::new(ProxyError::RateLimited.into_response(grpc));
    limit.limiter.insert_headers(&decision, resp.headers_mut());
    resp
}

async fn forward<'s>(
    mut req: BoxedRequest,
    snap: &'s ListenerSnapshot,
    ctx: &ConnCtx,
    start: Instant,
    grpc: bool,
    info: &mut ExchangeInfo,
) -> Answer<'s> {
    if req.method() == http::Method::CONNECT {
        cold_path();
        return Err((
            ProxyError::BadRequest("CONNECT tunnels are not supported\n"),
            &snap.no_route,
        ));
    }
    // The limit whose headers the response carries: the route's if it has one (the more
    // specific), else the listener's.
    let mut admitted: Option<(&RateLimitRt, Decision)> = None;
    if let Some(limit) = &snap.rate_limit {
        match check_limit(limit, &req, ctx.client) {
            Ok(d) => admitted = Some((limit, d)),
            Err(d) => {
                cold_path();
                info.error = Some(ProxyError::RateLimited);
                return Ok((limited(limit, d, grpc), &snap.no_route));
            }
        }
    }
    let host = match authority(&req) {
        Ok(h) => h,
        Err(e) => {
            cold_path();
            return Err((e, &snap.no_route));
        }
    };
    let raw_path = req.uri().path();
    let path = normalize_path(raw_path);
    let Some(router) = snap.router() else {
        cold_path();
        return Err((ProxyError::NoRoute, &snap.no_route));
    };
    let found = router.find(&RequestParts {
        host,
        method: req.method(),
        path: &path,
        query: req.uri().query(),
        headers: req.headers(),
    });
    let Some(found) = found else {
        cold_path();
        return Err((ProxyError::NoRoute, &snap.no_route));
    };
    let Some(route) = snap.routes.get(found.route) else {
        cold_path();
        return Err((ProxyError::NoRoute, &snap.no_route));
    };
    info.route = Some(Arc::clone(&route.label));

    if let Some(redirect) = &route.redirect {
        let resp = redirect_response(redirect, host, &path, found.prefix_len, req.uri().query());
        return Ok((Box::new(resp), &route.local));
    }
    if let Some(limit) = &route.rate_limit {
        match check_limit(limit, &req, ctx.client) {
            Ok(d) => admitted = Some((limit, d)),
            Err(d) => {
                cold_path();
                info.error = Some(ProxyError::RateLimited);
                return Ok((limited(limit, d, grpc), &route.local));
            }
        }
    }
    if let Some(fault) = &route.fault {
        if let Some((ppm, status)) = fault.abort
            && roll(ppm)
        {
            fault.aborts.inc();
            return Err((ProxyError::FaultInjected(status), &route.local));
        }
        if let Some((ppm, delay)) = fault.delay
            && roll(ppm)
        {
            fault.delays.inc();
            info.fault_delayed = true;
            tokio::time::sleep(delay).await;
        }
    }

    let Some(target) = route.split.pick() else {
        cold_path();
        return Err((ProxyError::NoEndpoints, &route.local));
    };
    let m = &target.metrics;
    let Some(backend) = snap.backends.get(target.backend) else {
        cold_path();
        return Err((ProxyError::NoEndpoints, m));
    };
    info.backend = Some(Arc::clone(&backend.label));
    let permit = match exchange::request_permit(backend) {
        Ok(p) => p,
        Err(e) => {
            cold_path();
            return Err((e, m));
        }
    };

    // Rewrite the target: normalized path (what we routed on is what the upstream sees),
    // route rewrites, and the URI form the upstream protocol wants.
    let proto = backend.settings.protocol;
    let new_path = rewritten_path(route, &path, found.prefix_len);
    // The authority the upstream sees, when it is not already in the request: HTTP/1 keeps
    // the client's Host header, HTTP/2 the URI's authority (which `authority` checked
    // against any Host header).
    let host_value = match &route.rewrite_host {
        Some(h) => Some(h.clone()),
        None if proto == UpstreamProtocol::Http1 && req.headers().contains_key(HOST) => None,
        None if proto == UpstreamProtocol::Http2 && req.uri().authority().is_some() => None,
        None => HeaderValue::from_str(host).ok(),
    };
    let changed_path = new_path.as_deref().or(match &path {
        std::borrow::Cow::Owned(p) => Some(p.as_str()),
        std::borrow::Cow::Borrowed(_) => None,
    });
    match upstream_uri(req.uri(), changed_path, proto, host_value.as_ref()) {
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Ok(None) => {}
        Err(e) => {
            cold_path();
            return Err((e, m));
        }
    }

    let upgrade = proto == UpstreamProtocol::Http1 && is_upgrade(&req);
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    match proto {
        UpstreamProtocol::Http1 => {
            if let Some(h) = host_value {
                headers.insert(HOST, h);
            }
            if req.version() == Version::HTTP_2 {
                join_cookies(req.headers_mut());
            }
            *req.version_mut() = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            headers.remove(HOST);
            *req.version_mut() = Version::HTTP_2;
        }
    }
    route.request_headers.apply(req.headers_mut());

    let deadline = route
        .timeout
        .map(|t| tokio::time::Instant::from_std(start) + t);
    let (req, replay) = match &route.retry {
        Some(policy) if !upgrade => match Replay::prepare(req, policy) {
            Prepared::Ready(req, replay) => (req, replay),
            Prepared::ReadBody(f) => match f.await {
                Ok(ready) => ready,
                Err(e) => return Err((e, m)),
            },
        },
        _ => (req, None),
    };
    // A logged request's body bytes: counted as they stream (tunnels are counted as TCP).
    let mut req = req;
    if info.count_body && !upgrade {
        let body = std::mem::replace(req.body_mut(), RequestBody::Empty);
        let (body, bytes_in) = body.counted();
        info.bytes_in = bytes_in;
        *req.body_mut() = body;
    }
    if let Some(mirror) = &route.mirror
        && roll(mirror.ppm)
        && let Some(copy) = Replay::mirror_copy(&req)
        && let Some(b) = snap.backends.get(mirror.backend)
    {
        mirror.sent.inc();
        spawn_mirror(Arc::clone(b), copy, route.timeout);
    }
    // The exchange stays where it is pinned: the timeouts wrap a reference to it, not a
    // copy of it (futures this deep are large; moving them is most of their cost).
    let exchange = std::pin::pin!(exchange::exchange(
        backend,
        Some(m),
        &mut *info,
        req,
        upgrade,
        route.retry.as_ref(),
        replay
    ));
    // One timer for the route's deadline: it bounds the wait for the headers here, then the
    // body (handed to it below).
    let mut deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
    let result = match (&mut deadline, route.idle_timeout) {
        (None, None) => exchange.await,
        (Some(d), None) => {
            tokio::select! {
                biased;
                r = exchange => r,
                () = d.as_mut() => Err(ProxyError::Timeout),
            }
        }
        (d, Some(idle)) => {
            // Until the response headers, silence is bounded by the idle limit as well.
            let idle = tokio::time::sleep(idle);
            let deadline = async {
                match d {
                    Some(d) => d.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = exchange => r,
                () = idle => Err(ProxyError::Timeout),
                () = deadline => Err(ProxyError::Timeout),
            }
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            cold_path();
            return Err((e, m));
        }
    };
    resp.body_mut()
        .guard(Some(permit), BodyTimers::new(deadline, route.idle_timeout));

    // A `101`'s upstream connection stays in its body: the HTTP/1 server takes it for the
    // tunnel once the head is written.
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), switching);
    route.response_headers.apply(resp.headers_mut());
    if let Some((limit, decision)) = admitted {
        limit.limiter.insert_headers(&decision, resp.headers_mut());
    }
    Ok((resp, m))
}

/// True for `ppm` parts per million of calls.
fn roll(ppm: u32) -> bool {
    ppm >= 1_000_000 || (ppm > 0 && fastrand::u32(..1_000_000) < ppm)
}

/// Sends a mirror copy in the background: fire and forget, bounded by the mirror backend's
/// own circuit breaker and by `timeout` (the route's, else 15 s), its response read and
/// discarded.
fn spawn_mirror(backend: Arc<BackendRt>, req: BoxedRequest, timeout: Option<Duration>) {
    tokio::spawn(async move {
        let Ok(_permit) = exchange::request_permit(&backend) else {
            return;
        };
        let run = async {
            let mut info = ExchangeInfo::default();
            let resp =
                exchange::exchange(&backend, None, &mut info, req, false, None, None).await?;
            // Read to the end so an HTTP/1 connection goes back to the pool.
            let _ = (*resp).into_body().collect().await;
            Ok::<(), ProxyError>(())
        };
        let limit = timeout.unwrap_or(Duration::from_secs(15));
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(limit, run)
            .await
            .map_err(|_| ProxyError::Timeout)
        {
            tracing::debug!(backend = %backend.name, error = %e, "mirror request failed");
        }
    });
}

/// Sends on a pooled connection (`now`: the try's start, for the pool's idle deadlines); a
/// reused HTTP/1 connection that turns out dead before the upstream could have acted on the
/// request (it closed it while idle) is replaced once, transparently.
pub(super) async fn send(
    backend: &BackendRt,
    ep: &crate::snapshot::EndpointRt,
    req: BoxedRequest,
    upgrade: bool,
    now: Instant,
) -> Result<BoxedResponse, ProxyError> {
    match pool::checkout(backend, ep, now).await? {
        Checkout::H1(conn, returner) => {
            let resp = match client::send(conn, req, upgrade, returner).await {
                Ok(a) => a,
                Err(SendError {
                    retry: Some(req),
                    error,
                }) => {
                    cold_path();
                    tracing::debug!(%error, "pooled upstream connection was closed; sending on a new one");
                    let fresh = Box::pin(pool::connect_fresh_h1(backend, ep)).await?;
                    Box::pin(client::send(fresh, req, upgrade, returner))
                        .await
                        .map_err(|e| upstream_failed(&e.error))?
                }
                Err(e) => {
                    cold_path();
                    return Err(upstream_failed(&e.error));
                }
            };
            Ok(Box::new(
                resp.map(|b| ResponseBody::upstream(UpstreamBody::Left(b))),
            ))
        }
        Checkout::H2(conn) => {
            use crate::http::h2client::{self, SendError};
            let resp = match h2client::send(&conn, req, upgrade).await {
                Ok(r) => r,
                Err(SendError::NotSent(req)) => {
                    cold_path();
                    // The pool has marked that connection closed: this opens a new one.
                    let fresh = Box::pin(pool::h2(backend, ep)).await?;
                    match Box::pin(h2client::send(&fresh, req, upgrade)).await {
                        Ok(r) => r,
                        Err(SendError::NotSent(_)) => return Err(ProxyError::UpstreamReset),
                        Err(SendError::Failed(e)) => return Err(e),
                    }
                }
                Err(SendError::Failed(e)) => return Err(e),
            };
            Ok(Box::new(resp.map(|body| {
                ResponseBody::upstream(UpstreamBody::Right(body))
            })))
        }
    }
}

fn upstream_failed(e: &client::ClientError) -> ProxyError {
    tracing::debug!(error = %e, "upstream exchange failed");
    match e {
        client::ClientError::Invalid(_) => ProxyError::BadUpstreamResponse,
        _ => ProxyError::UpstreamReset,
    }
}

/// Copies bytes both ways between the client's upgraded connection and the upstream's: first
/// what the client sent past its request head, and what the upstream sent right after its
/// `101`.
pub(crate) async fn tunnel(
    mut down: tokio::net::TcpStream,
    sent_ahead: Bytes,
    up: client::Upgraded,
) {
    use tokio::io::AsyncWriteExt;
    let mut u = up.io;
    let ahead = async {
        if !sent_ahead.is_empty() {
            u.write_all(&sent_ahead).await?;
        }
        if !up.read_ahead.is_empty() {
            down.write_all(&up.read_ahead).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    if let Err(e) = ahead.await {
        tracing::debug!(error = %e, "upgraded connection failed");
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut down, &mut u).await;
}

/// The URI to send upstream: origin-form for HTTP/1, absolute with scheme `http` for HTTP/2
/// (`:scheme` and `:authority` come from it; `host`, if given, is the authority). `None` when
/// the client's URI already is that, as it is for a request that arrived over the upstream's
/// protocol with no rewrite: it is sent untouched, with nothing copied or parsed again.
fn upstream_uri(
    uri: &Uri,
    new_path: Option<&str>,
    proto: UpstreamProtocol,
    host: Option<&HeaderValue>,
) -> Result<Option<Uri>, ProxyError> {
    let unchanged = new_path.is_none()
        && uri.path_and_query().is_some()
        && match proto {
            UpstreamProtocol::Http1 => uri.scheme().is_none() && uri.authority().is_none(),
            UpstreamProtocol::Http2 => {
                host.is_none() && uri.scheme() == Some(&Scheme::HTTP) && uri.authority().is_some()
            }
        };
    if unchanged {
        return Ok(None);
    }
    let bad = || ProxyError::BadRequest("cannot build the upstream request target\n");
    let pq: PathAndQuery = match new_path {
        Some(p) => {
            let s = match uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p.to_owned(),
            };
            PathAndQuery::try_from(s).map_err(|_| bad())?
        }
        None => match uri.path_and_query() {
            Some(pq) => pq.clone(),
            None => PathAndQuery::from_static("/"),
        },
    };
    match proto {
        UpstreamProtocol::Http1 => Ok(Some(Uri::from(pq))),
        UpstreamProtocol::Http2 => {
            let authority = match (host, uri.authority()) {
                (Some(h), _) => Authority::try_from(h.as_bytes()).map_err(|_| bad())?,
                (None, Some(a)) => a.clone(),
                (None, None) => Authority::from_static("localhost"),
            };
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(pq)
                .build()
                .map(Some)
                .map_err(|_| bad())
        }
    }
}

/// The path after the route's URL rewrite, if it has one.
fn rewritten_path(route: &RouteRt, path: &str, prefix_len: usize) -> Option<String> {
    route
        .rewrite_path
        .as_ref()
        .map(|m| apply_path_modifier(m, path, prefix_len))
}

fn apply_path_modifier(m: &PathModifier, path: &str, prefix_len: usize) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let rest = path.get(prefix_len..).unwrap_or("");
            let base = replacement.trim_end_matches('/');
            match (base.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{base}{rest}"),
            }
        }
    }
}

fn redirect_response(
    r: &Redirect,
    host: &str,
    path: &str,
    prefix_len: usize,
    query: Option<&str>,
) -> Response<ResponseBody> {
    let (req_host, req_port) = split_host_port(host);
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let hostname = r.hostname.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req_port,
    };
    let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let new_path = match &r.path {
        Some(m) => apply_path_modifier(m, path, prefix_len),
        None => path.to_owned(),
    };
    let mut location = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&new_path);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// HTTP/2 clients may split `cookie` into several fields; an HTTP/1 upstream must get them
/// as one, joined with "; " (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let values = headers.get_all(http::header::COOKIE);
    if values.iter().nth(1).is_none() {
        return;
    }
    let joined = values
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, v);
    }
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    // IPv6 literals keep their brackets; the port follows the closing one.
    let colon = match host.rfind(']') {
        Some(end) => host[end..].find(':').map(|i| end + i),
        None => host.rfind(':'),
    };
    match colon {
        Some(i) => match host[i + 1..].parse() {
            Ok(p) => (&host[..i], Some(p)),
            Err(_) => (host, None),
        },
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites() {
        let m = PathModifier::ReplacePrefixMatch("/v2".into());
        assert_eq!(apply_path_modifier(&m, "/api/users", 4), "/v2/users");
        assert_eq!(apply_path_modifier(&m, "/api", 4), "/v2");
        let root = PathModifier::ReplacePrefixMatch("/".into());
        assert_eq!(apply_path_modifier(&root, "/api/users", 4), "/users");
        assert_eq!(apply_path_modifier(&root, "/api", 4), "/");
        let slash = PathModifier::ReplacePrefixMatch("/v2/".into());
        assert_eq!(apply_path_modifier(&slash, "/api/x", 4), "/v2/x");
    }

    #[test]
    fn upstream_uri_is_rebuilt_only_when_it_must_change() -> Result<(), ProxyError> {
        use UpstreamProtocol::{Http1, Http2};
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_else(|e| panic!("{s}: {e}"));
        let host = HeaderValue::from_static("shop.example");
        // Already in the upstream's form: kept as is.
        assert_eq!(upstream_uri(&uri("/a?b=1"), None, Http1, None)?, None);
        assert_eq!(upstream_uri(&uri("http://x:8/a"), None, Http2, None)?, None);
        // HTTP/1: absolute-form becomes origin-form; a new path keeps the query.
        assert_eq!(
            upstream_uri(&uri("http://x:8/a?q"), None, Http1, None)?,
            Some(uri("/a?q"))
        );
        assert_eq!(
            upstream_uri(&uri("/a?q"), Some("/v2/a"), Http1, None)?,
            Some(uri("/v2/a?q"))
        );
        // HTTP/2: the scheme is always `http`, the authority comes from `host` if given, else
        // from the URI, else `localhost`.
        assert_eq!(
            upstream_uri(&uri("https://x:8/a"), None, Http2, None)?,
            Some(uri("http://x:8/a"))
        );
        assert_eq!(
            upstream_uri(&uri("http://x:8/a"), None, Http2, Some(&host))?,
            Some(uri("http://shop.example/a"))
        );
        assert_eq!(
            upstream_uri(&uri("/a"), None, Http2, Some(&host))?,
            Some(uri("http://shop.example/a"))
        );
        assert_eq!(
            upstream_uri(&uri("/a"), None, Http2, None)?,
            Some(uri("http://localhost/a"))
        );
        assert_eq!(
            upstream_uri(&uri("http://x:8/a?q"), Some("/b"), Http2, None)?,
            Some(uri("http://x:8/b?q"))
        );
        // An authority that cannot be one is the client's error.
        let bad = HeaderValue::from_static("a b");
        assert!(upstream_uri(&uri("/a"), None, Http2, Some(&bad)).is_err());
        Ok(())
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.b:8080"), ("a.b", Some(8080)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
    }

    #[test]
    fn redirect_location() {
        let r = Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: None,
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
            status_code: 301,
        };
        let resp = redirect_response(&r, "shop.example:8080", "/old/x", 4, Some("a=1"));
        assert_eq!(resp.status(), 301);
        assert_eq!(resp.headers()[LOCATION], "https://shop.example/new/x?a=1");
    }
}
