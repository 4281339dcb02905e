//! The first layer of the request path: request id, trace context, and the records (span,
//! access-log line) that are finished when the response ends. IO-free cores live in `reqid`,
//! `trace` and `accesslog`; this module only applies them per request.
//!
//! Cost when tracing and logging are off: the request id (a header lookup; a UUID formatted on
//! the stack and one shared allocation when the client sent none). Tracing on: one pass over
//! the header fields and one header value per trace header written; a sampled request also
//! boxes its records (a box reused from the worker's spares) and at the end hands its span to
//! a bounded queue and formats its log line into the log's buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Request, StatusCode};

use crate::accesslog::{AccessLog, AccessRecord, LogSink, ResponseFlags};
use crate::error::ProxyError;
use crate::reqid::{RequestId, RequestIds};
use crate::spares::Spares;
use crate::trace::export::SpanSink;
use crate::trace::{Host, Propagation, SpanKind, SpanRecord, TraceContext};

/// The running exporters' and log writers' queues a config compiles against (owned by
/// `app::Proxy`, restarted when their settings change).
#[derive(Default, Clone)]
pub struct Sinks {
    pub spans: Option<SpanSink>,
    pub logs: std::collections::HashMap<crate::accesslog::Output, LogSink>,
}

impl Observe {
    /// Compiles a listener's observability settings against the running sinks.
    pub fn compile(
        l: &crate::config::Listener,
        tracing: Option<&crate::config::TracingSpec>,
        sinks: &Sinks,
    ) -> Result<Self, String> {
        let request_ids = l.request_id.to_policy()?;
        let tracing = match (tracing, &sinks.spans) {
            (Some(t), Some(sink)) => Some(Tracing {
                propagation: l.tracing.to_propagation(t),
                kind: l.tracing.span_kind(),
                sink: sink.clone(),
            }),
            _ => None,
        };
        let access_log = match &l.access_log {
            Some(a) => match sinks.logs.get(&a.output()) {
                Some(sink) => Some(AccessLog::new(
                    a.to_format(&l.name)?,
                    a.sampling_ratio,
                    sink.clone(),
                )),
                None => None,
            },
            None => None,
        };
        Ok(Self {
            listener: Arc::from(l.name.as_str()),
            request_ids,
            tracing,
            access_log,
        })
    }
}

/// One listener's observability, compiled into its snapshot.
pub struct Observe {
    pub listener: Arc<str>,
    pub request_ids: RequestIds,
    pub tracing: Option<Tracing>,
    pub access_log: Option<AccessLog>,
}

pub struct Tracing {
    pub propagation: Propagation,
    pub kind: SpanKind,
    pub sink: SpanSink,
}

/// What the request path learned about one exchange, for the span and the log line.
#[derive(Debug, Default)]
pub struct ExchangeInfo {
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub attempts: u32,
    /// When the request arrived. A first try that starts at once (no fault delay) takes its
    /// start from here: one clock read fewer per request.
    pub arrived: Option<Instant>,
    /// When the first try was sent, and when the last try's headers came.
    pub upstream_start: Option<Instant>,
    pub upstream_end: Option<Instant>,
    pub error: Option<ProxyError>,
    /// Retries were allowed but ran out (attempts or budget) on a failed try.
    pub retries_exhausted: bool,
    pub fault_delayed: bool,
    /// Count the request body's bytes (the request is logged).
    pub count_body: bool,
    pub bytes_in: crate::http::body::BytesIn,
}

impl ExchangeInfo {
    pub fn upstream(&self) -> Option<Duration> {
        Some(
            self.upstream_end?
                .saturating_duration_since(self.upstream_start?),
        )
    }
}

/// A request's id and trace, decided before routing.
pub struct Started {
    pub request_id: RequestId,
    pub trace: Option<TraceContext>,
    pending: Option<Box<Pending>>,
}

/// The records finished at the end of the response.
pub struct Pending {
    start: Instant,
    span: Option<(SpanRecord, SpanSink)>,
    log: Option<(AccessRecord, LogSink)>,
    bytes_out: u64,
    bytes_in: crate::http::body::BytesIn,
}

impl Observe {
    /// Applies the request id and the trace context to `req`'s headers (which go upstream), and
    /// starts the records if this request is traced (sampled) or logged.
    pub fn start<B>(&self, req: &mut Request<B>, client: SocketAddr, start: Instant) -> Started {
        let request_id = self.request_ids.ensure(req.headers_mut());
        let trace = self
            .tracing
            .as_ref()
            .map(|t| t.propagation.start_and_inject(req.headers_mut()));
        let span_on = trace.as_ref().is_some_and(TraceContext::sampled);
        let log = self.access_log.as_ref().filter(|l| l.sample());
        if !span_on && log.is_none() {
            return Started {
                request_id,
                trace,
                pending: None,
            };
        }
        let wall = SystemTime::now();
        let host = Host::of(req.uri(), req.headers());
        let path = req.uri().path_and_query().cloned();
        // The records are built where they stay, in the box: about a kilobyte, not moved.
        let mut pending = Pending::boxed(start);
        if let (Some(ctx), Some(t)) = (&trace, &self.tracing)
            && span_on
        {
            let (s, _) = pending.span.insert((
                SpanRecord::new(
                    ctx.trace_id(),
                    ctx.span_id(),
                    ctx.parent_span_id(),
                    t.kind,
                    Arc::clone(&self.listener),
                    wall,
                ),
                t.sink.clone(),
            ));
            s.method = req.method().clone();
            s.path = path.clone();
            s.host = host.clone();
            s.version = req.version();
        }
        if let Some(l) = log {
            let (r, _) = pending.log.insert((l.record(wall), l.sink().clone()));
            r.request_headers = l.capture_request(req.headers());
            r.request_id = Some(request_id.clone());
            r.trace_id = trace.as_ref().map(TraceContext::trace_id);
            r.span_id = trace.as_ref().map(TraceContext::span_id);
            r.client = Some(client);
            r.method = req.method().clone();
            r.authority = host;
            r.path = path;
            r.version = req.version();
        }
        Started {
            request_id,
            trace,
            pending: Some(pending),
        }
    }

    /// On the response: echo the request id, capture the logged response headers, and fill
    /// the records with what the exchange learned. The records come back to be finished when
    /// the body ends.
    pub fn respond(
        &self,
        started: Started,
        headers: &mut HeaderMap,
        status: StatusCode,
        info: &ExchangeInfo,
    ) -> Option<Box<Pending>> {
        if self.request_ids.echo() {
            self.request_ids.echo_into(&started.request_id, headers);
        }
        let mut pending = started.pending?;
        if let Some((s, _)) = &mut pending.span {
            s.status = Some(status);
            s.route = info.route.clone();
            s.backend = info.backend.clone();
            s.endpoint = info.endpoint;
            s.retries = info.attempts.saturating_sub(1);
            s.error = info.error;
        }
        if let Some((r, _)) = &mut pending.log {
            if let Some(l) = &self.access_log {
                r.response_headers = l.capture_response(headers);
            }
            r.status = Some(status);
            r.route = info.route.clone();
            r.backend = info.backend.clone();
            r.endpoint = info.endpoint;
            r.attempts = info.attempts;
            r.upstream = info.upstream();
            pending.bytes_in = info.bytes_in.clone();
            if let Some(e) = info.error {
                r.flags.insert(ResponseFlags::from_error(e));
            }
            if info.retries_exhausted {
                r.flags.insert(ResponseFlags::RETRIES_EXHAUSTED);
            }
            if info.fault_delayed {
                r.flags.insert(ResponseFlags::DELAY_INJECTED);
            }
        }
        Some(pending)
    }
}

impl Started {
    /// Whether this request has an access-log line (so its body bytes are worth counting).
    pub fn logged(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.log.is_some())
    }
}

thread_local! {
    /// Boxes of finished records for the next traced or logged request (see `spares`). Every
    /// box here is empty: no span, no log record, nothing counted.
    static BOXES: Spares<Box<Pending>, 64> = const { Spares::new() };
}

impl Pending {
    /// An empty box for a request that started at `start`: a spare one if this thread has one.
    fn boxed(start: Instant) -> Box<Self> {
        match Spares::take(&BOXES) {
            Some(mut p) => {
                p.start = start;
                p
            }
            None => Box::new(Self {
                start,
                span: None,
                log: None,
                bytes_out: 0,
                bytes_in: crate::http::body::BytesIn::Unknown,
            }),
        }
    }

    /// Empties the box (its records are dropped here, on the thread that made them) and keeps
    /// it for the next request.
    fn recycle(mut self: Box<Self>) {
        self.span = None;
        self.log = None;
        self.bytes_out = 0;
        self.bytes_in = crate::http::body::BytesIn::Unknown;
        Spares::give(&BOXES, self);
    }

    pub fn add_bytes(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// The response is over: `complete` when its body was sent whole, else the client went
    /// away (DC) or the stream failed (`error`).
    pub fn finish(mut self: Box<Self>, complete: bool, error: Option<ProxyError>) {
        let elapsed = self.start.elapsed();
        if let Some((mut s, sink)) = self.span.take() {
            s.end = s.start + elapsed;
            if let Some(e) = error {
                s.error = Some(e);
            }
            if !complete && s.error.is_none() {
                s.status = None;
            }
            sink.submit(s);
        }
        // The log line is formatted from the record where it lies, in the box (about a
        // kilobyte, not moved out); the record is dropped with the box, on this thread.
        let bytes_out = self.bytes_out;
        if let Some((r, sink)) = &mut self.log {
            r.duration = elapsed;
            r.bytes_out = bytes_out;
            r.bytes_in = self.bytes_in.get();
            if let Some(e) = error {
                r.flags.insert(ResponseFlags::from_error(e));
            }
            if !complete && error.is_none() {
                r.flags.insert(ResponseFlags::DOWNSTREAM_DISCONNECT);
            }
            sink.submit(r);
        }
        self.recycle();
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("span", &self.span.is_some())
            .field("log", &self.log.is_some())
            .field("bytes_out", &self.bytes_out)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    /// Every logged request boxes its `Pending`. glibc serves allocations up to 1032 bytes from
    /// a per-thread cache (tcache: a few dozen instructions) and larger ones from its bins
    /// (hundreds, measured under callgrind): keep the records under that line.
    #[test]
    fn a_requests_records_fit_the_allocators_per_thread_cache() {
        let size = std::mem::size_of::<super::Pending>();
        assert!(size <= 1032, "Pending is {size} bytes");
    }

    /// A finished request's box serves the next request on the thread, emptied.
    #[test]
    fn a_finished_requests_box_is_reused_empty() {
        let t0 = std::time::Instant::now();
        let mut first = super::Pending::boxed(t0);
        first.add_bytes(10);
        let addr: *const super::Pending = &*first;
        first.finish(true, None);
        let t1 = t0 + std::time::Duration::from_millis(1);
        let second = super::Pending::boxed(t1);
        assert!(std::ptr::eq(&*second, addr), "the box was not reused");
        assert_eq!(second.start, t1);
        assert_eq!(second.bytes_out, 0);
        assert!(second.span.is_none() && second.log.is_none());
        assert!(matches!(
            second.bytes_in,
            crate::http::body::BytesIn::Unknown
        ));
    }
}
