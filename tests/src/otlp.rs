//! Test collectors for the proxy's span export: a real OTLP receiver (gRPC through tonic and
//! the `opentelemetry-proto` generated service, or HTTP/protobuf through hyper) that keeps
//! every span it gets, and two broken ones: a black hole (accepts connections, never
//! answers) and a down collector (a closed port).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
/// A span's kind, as OTLP carries it.
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
/// A span's status code, as OTLP carries it.
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::ports;

/// Which OTLP transport a receiver speaks: the proxy's `tracing.otlp.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    Grpc,
    /// OTLP/HTTP: protobuf bodies posted to `/v1/traces`.
    Http,
}

impl OtlpProtocol {
    /// The value of `tracing.otlp.protocol` in the proxy's config.
    pub fn yaml(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::Http => "http",
        }
    }
}

/// One span as the receiver got it, with the resource it came under.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`, if it had one.
    pub service_name: Option<String>,
    /// The span as decoded from the wire.
    pub span: Span,
}

impl ReceivedSpan {
    /// The trace id as 32 lower-case hex digits (the form `traceparent` carries).
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id as 16 hex digits; `None` for a root span (OTLP sends it empty).
    pub fn parent_span_id(&self) -> Option<String> {
        (!self.span.parent_span_id.is_empty()).then(|| hex(&self.span.parent_span_id))
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The kind; `Unspecified` for a value this version of the proto does not know.
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// The status code; `Unset` when the span has no status.
    pub fn status_code(&self) -> SpanStatusCode {
        self.span
            .status
            .as_ref()
            .and_then(|s: &Status| SpanStatusCode::try_from(s.code).ok())
            .unwrap_or(SpanStatusCode::Unset)
    }

    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&any_value::Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v: &AnyValue| v.value.as_ref())
    }

    /// A string attribute; `None` when absent or of another type.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute; `None` when absent or of another type.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    /// The attribute keys, in the order they came: for failure messages.
    pub fn attr_keys(&self) -> Vec<&str> {
        self.span
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect()
    }
}

/// What the receiver's tasks share with the test.
#[derive(Default)]
struct Collected {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Export requests received (each a batch of spans).
    requests: AtomicUsize,
}

impl Collected {
    fn add(&self, request: ExportTraceServiceRequest) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut spans = self
            .spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for resource_spans in request.resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                });
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
    }
}

/// A running OTLP receiver on `127.0.0.1:<kernel's choice>`, keeping every span it receives
/// and answering every export with success. Stopped when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    protocol: OtlpProtocol,
    collected: Arc<Collected>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// An OTLP/gRPC receiver.
    pub async fn grpc() -> OtlpReceiver {
        let listener = bind().await;
        let addr = listener
            .local_addr()
            .expect("local_addr of a bound listener");
        let collected = Arc::new(Collected::default());
        let service = TraceServiceServer::new(GrpcService(collected.clone()));
        let task = tokio::spawn(async move {
            // Ends only with an accept error the test cannot act on, or when aborted.
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(
                    service,
                    tonic::transport::server::TcpIncoming::from(listener),
                )
                .await;
        });
        OtlpReceiver {
            addr,
            protocol: OtlpProtocol::Grpc,
            collected,
            task,
        }
    }

    /// An OTLP/HTTP receiver (protobuf bodies at `/v1/traces`; anything else gets 404, a
    /// body that does not decode gets 400).
    pub async fn http() -> OtlpReceiver {
        let listener = bind().await;
        let addr = listener
            .local_addr()
            .expect("local_addr of a bound listener");
        let collected = Arc::new(Collected::default());
        let task = tokio::spawn(http_accept_loop(listener, collected.clone()));
        OtlpReceiver {
            addr,
            protocol: OtlpProtocol::Http,
            collected,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> OtlpProtocol {
        self.protocol
    }

    /// The collector's base URL for `tracing.otlp.endpoint`: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{endpoint: "...", protocol: ...}`: the `tracing.otlp` block in YAML flow style.
    pub fn yaml(&self) -> String {
        format!(
            "{{endpoint: \"{}\", protocol: {}}}",
            self.endpoint(),
            self.protocol.yaml()
        )
    }

    /// Export requests received so far.
    pub fn export_requests(&self) -> usize {
        self.collected.requests.load(Ordering::SeqCst)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collected
            .spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The spans received so far of the trace `trace_id` (32 hex digits).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace_id)
            .collect()
    }

    /// Waits until at least `n` spans arrived and returns them all; panics after `timeout`
    /// with what did arrive.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let what = format!("{n} span(s) at the OTLP receiver");
        self.wait(&what, timeout, async || {
            let spans = self.spans();
            (spans.len() >= n).then_some(spans)
        })
        .await
    }

    /// Waits until at least `n` spans of trace `trace_id` arrived and returns them.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let what = format!("{n} span(s) of trace {trace_id} at the OTLP receiver");
        self.wait(&what, timeout, async || {
            let spans = self.trace(trace_id);
            (spans.len() >= n).then_some(spans)
        })
        .await
    }

    /// Polls `probe` until it gives a value; panics after `timeout` showing what arrived.
    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        crate::wait::wait_for_value_explained(what, timeout, probe, || {
            let seen: Vec<(String, String, String)> = self
                .spans()
                .iter()
                .map(|s| (s.name().to_owned(), s.trace_id(), s.span_id()))
                .collect();
            format!(
                "; received {} export request(s) with these spans (name, trace id, span id): \
                 {seen:#?}",
                self.export_requests(),
            )
        })
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct GrpcService(Arc<Collected>);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn http_accept_loop(listener: TcpListener, collected: Arc<Collected>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let collected = collected.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| {
                            let collected = collected.clone();
                            async move { Ok::<_, Infallible>(http_export(&collected, req).await) }
                        });
                        // A peer that went away mid-request: nothing to report.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn http_export(collected: &Collected, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/v1/traces" {
        return reply(StatusCode::NOT_FOUND, Bytes::new());
    }
    let Ok(body) = req.into_body().collect().await else {
        return reply(StatusCode::BAD_REQUEST, Bytes::new());
    };
    match ExportTraceServiceRequest::decode(body.to_bytes()) {
        Ok(request) => {
            collected.add(request);
            let answer = ExportTraceServiceResponse {
                partial_success: None,
            };
            reply(StatusCode::OK, Bytes::from(answer.encode_to_vec()))
        }
        Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::new()),
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

/// A collector that accepts TCP connections and never answers: every export hangs until the
/// exporter's own timeout. It reads and discards what arrives so the exporter's writes never
/// block on a full socket buffer (the hang is the missing answer, nothing else).
pub struct BlackHole {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = bind().await;
        let addr = listener
            .local_addr()
            .expect("local_addr of a bound listener");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((mut stream, _)) => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            conns.spawn(async move {
                                let mut sink = [0u8; 4096];
                                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        BlackHole {
            addr,
            accepted,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for `tracing.otlp.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far: proves the exporter did reach the black hole.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `http://127.0.0.1:<port>` of a port nothing listens on (and no other test of this process
/// is given): a collector that is down, where every connection is refused.
pub fn down_endpoint() -> String {
    format!("http://{}", ports::free_addr())
}

async fn bind() -> TcpListener {
    let listener = ports::bind_loopback();
    listener
        .set_nonblocking(true)
        .expect("setting a listener non-blocking");
    TcpListener::from_std(listener).expect("registering a listener with tokio")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn request() -> ExportTraceServiceRequest {
        let attr = |key: &str, value: any_value::Value| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        };
        let string =
            |key: &str, value: &str| attr(key, any_value::Value::StringValue(value.to_owned()));
        let span = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            parent_span_id: vec![0x02; 8],
            name: "GET r".to_owned(),
            kind: SpanKind::Server as i32,
            attributes: vec![
                string("url.path", "/x"),
                attr("http.response.status_code", any_value::Value::IntValue(200)),
            ],
            ..Span::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", "svc")],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    fn check(receiver: &OtlpReceiver, spans: &[ReceivedSpan]) {
        assert_eq!(receiver.export_requests(), 1);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.trace_id(), "ab".repeat(16));
        assert_eq!(span.span_id(), "0101010101010101");
        assert_eq!(span.parent_span_id().as_deref(), Some("0202020202020202"));
        assert_eq!(span.kind(), SpanKind::Server);
        assert_eq!(span.service_name.as_deref(), Some("svc"));
        assert_eq!(span.str_attr("url.path"), Some("/x"));
        assert_eq!(span.int_attr("http.response.status_code"), Some(200));
        assert_eq!(span.str_attr("http.response.status_code"), None);
        assert_eq!(span.status_code(), SpanStatusCode::Unset);
    }

    #[tokio::test]
    async fn the_grpc_receiver_keeps_what_it_gets() {
        let receiver = OtlpReceiver::grpc().await;
        let mut client = TraceServiceClient::connect(receiver.endpoint())
            .await
            .expect("connecting to the receiver");
        client.export(request()).await.expect("export");
        let spans = receiver
            .wait_for_trace(&"ab".repeat(16), 1, Duration::from_secs(5))
            .await;
        check(&receiver, &spans);
    }

    #[tokio::test]
    async fn the_http_receiver_keeps_what_it_gets() {
        let receiver = OtlpReceiver::http().await;
        let stream = tokio::net::TcpStream::connect(receiver.addr())
            .await
            .expect("connecting to the receiver");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let post = Request::post("/v1/traces")
            .header(http::header::HOST, receiver.addr().to_string())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(request().encode_to_vec())))
            .expect("request");
        let response = sender.send_request(post).await.expect("export");
        assert_eq!(response.status(), StatusCode::OK);
        let spans = receiver.wait_for_spans(1, Duration::from_secs(5)).await;
        check(&receiver, &spans);
    }

    #[tokio::test]
    async fn a_down_collector_refuses_connections() {
        let endpoint = down_endpoint();
        let addr = endpoint.trim_start_matches("http://");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
