//! The export pipeline: accounting (every span submitted is exported or counted as dropped),
//! the request path never waiting, flush on shutdown, and real OTLP over gRPC and HTTP to
//! in-process receivers.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc};

use crate::trace::export::*;
use crate::trace::{SpanId, SpanKind, SpanRecord, TraceId};

/// A transport that keeps the spans of what it is sent; it can wait at a gate, hang, fail, or
/// have the collector reject some.
#[derive(Debug, Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<usize>>,
    gate: Option<Arc<Semaphore>>,
    hang: bool,
    fail: bool,
    reject: u64,
}

impl Recorder {
    fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (
            Self {
                gate: Some(Arc::clone(&gate)),
                ..Self::default()
            },
            gate,
        )
    }

    fn count(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

impl Transport for Recorder {
    fn send(&self, request: Bytes) -> impl Future<Output = Result<u64, String>> + Send {
        let this = self.clone();
        async move {
            if let Some(gate) = &this.gate {
                drop(gate.acquire().await);
            }
            if this.hang {
                std::future::pending::<()>().await;
            }
            if this.fail {
                return Err("collector down".to_owned());
            }
            let req = ExportTraceServiceRequest::decode(request).map_err(|e| e.to_string())?;
            *this.requests.lock().unwrap() += 1;
            let mut spans = this.spans.lock().unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
            Ok(this.reject)
        }
    }
}

fn config(queue: usize, batch: usize, delay: Duration) -> ExportConfig {
    ExportConfig {
        queue_size: queue,
        batch_size: batch,
        batch_delay: delay,
        timeout: Duration::from_secs(2),
        service_name: "test-proxy".to_owned(),
        ..ExportConfig::default()
    }
}

fn record(n: u64) -> SpanRecord {
    let mut r = SpanRecord::new(
        TraceId::from_u128(0x1000 + u128::from(n)),
        SpanId::from_u64(0x2000 + n),
        Some(SpanId::from_u64(0x3000 + n)),
        SpanKind::Server,
        Arc::from("inbound"),
        SystemTime::now(),
    );
    r.route = Some(Arc::from("orders"));
    r.status = Some(http::StatusCode::OK);
    r
}

/// An export to `rec` with a queue of `queue` and batches of `batch` every `delay`.
fn running(rec: Recorder, queue: usize, batch: usize, delay: Duration) -> SpanExport {
    start_with(rec, &config(queue, batch, delay), &Handle::current()).unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn spans_are_exported_in_batches_and_counted() {
    let rec = Recorder::default();
    let export = running(rec.clone(), 64, 4, Duration::from_millis(20));
    let sink = export.sink();
    for n in 0..10 {
        assert!(sink.submit(record(n)));
    }
    eventually("10 spans exported", || rec.count() == 10).await;
    let stats = Arc::clone(export.stats());
    assert_eq!(
        (stats.received(), stats.exported(), stats.dropped()),
        (10, 10, 0)
    );
    let spans = rec.spans.lock().unwrap().clone();
    let mut ids: Vec<u64> = spans
        .iter()
        .map(|s| {
            let id: [u8; 8] = s.span_id.as_slice().try_into().unwrap();
            u64::from_be_bytes(id) - 0x2000
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!(spans[0].name, "GET orders");
    assert!(
        *rec.requests.lock().unwrap() >= 3,
        "batches of at most 4 spans"
    );
    export.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_stalled_collector_backs_up_into_the_counted_queue_and_nothing_waits() {
    let (rec, gate) = Recorder::gated();
    let export = running(rec.clone(), 4, 2, Duration::from_millis(5));
    let sink = export.sink();
    let stats = Arc::clone(export.stats());
    let mut accepted = 0u64;
    for n in 0..50 {
        let t = Instant::now();
        if sink.submit(record(n)) {
            accepted += 1;
        }
        assert!(t.elapsed() < Duration::from_millis(50), "submit waited");
        // Let the exporter run, so it takes a batch and waits at the gate with it.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The queue (4) + the batch being exported (1 or 2: the timer may take one alone).
    assert!((5..=6).contains(&accepted), "accepted {accepted}");
    assert_eq!(stats.dropped_queue_full(), 50 - accepted);
    assert_eq!(stats.export_failed(), 0);

    // A burst with no pause at all: every call returns at once.
    let t = Instant::now();
    for n in 0..10_000 {
        sink.submit(record(n));
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "10k refused submits took {:?}",
        t.elapsed()
    );
    let accepted = 50 + 10_000 - stats.dropped_queue_full();

    // The collector comes back: everything accepted is exported, nothing else.
    gate.add_permits(1_000_000);
    export.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.exported(), accepted);
    assert_eq!(rec.count() as u64, accepted);
    assert_eq!(stats.received(), accepted);
}

#[tokio::test]
async fn a_full_batch_goes_at_once_and_a_partial_one_waits_for_the_delay() {
    let rec = Recorder::default();
    let export = running(rec.clone(), 64, 4, Duration::from_secs(3600));
    let sink = export.sink();
    for n in 0..3 {
        assert!(sink.submit(record(n)));
    }
    // Three spans wait for the batch delay (an hour): the exporter is not woken per span.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rec.count(), 0, "exported before the batch was full");
    // The fourth fills the batch and kicks the exporter.
    assert!(sink.submit(record(3)));
    eventually("the full batch exported", || rec.count() == 4).await;
    for n in 4..12 {
        assert!(sink.submit(record(n)));
    }
    eventually("two more batches", || rec.count() == 12).await;
    assert_eq!(*rec.requests.lock().unwrap(), 3);
    export.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn spans_the_collector_rejects_are_counted_as_failed() {
    let rec = Recorder {
        reject: 1,
        ..Recorder::default()
    };
    let export = running(rec, 64, 2, Duration::from_millis(5));
    let stats = Arc::clone(export.stats());
    for n in 0..2 {
        export.sink().submit(record(n));
    }
    eventually("the batch answered", || {
        stats.received() == 2 && stats.exported() + stats.export_failed() == 2
    })
    .await;
    assert_eq!((stats.exported(), stats.export_failed()), (1, 1));
    export.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn failed_exports_count_as_dropped() {
    let rec = Recorder {
        fail: true,
        ..Recorder::default()
    };
    let export = running(rec, 64, 2, Duration::from_millis(5));
    let stats = Arc::clone(export.stats());
    for n in 0..6 {
        export.sink().submit(record(n));
    }
    eventually("6 failed", || stats.export_failed() == 6).await;
    assert_eq!((stats.exported(), stats.dropped()), (0, 6));
    export.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_black_holing_collector_is_cut_off_by_the_deadline() {
    let rec = Recorder {
        hang: true,
        ..Recorder::default()
    };
    let mut cfg = config(64, 2, Duration::from_millis(5));
    cfg.timeout = Duration::from_millis(100);
    let export = start_with(rec, &cfg, &Handle::current()).unwrap();
    let stats = Arc::clone(export.stats());
    export.sink().submit(record(1));
    export.sink().submit(record(2));
    // Cut off by the 100 ms export timeout.
    eventually("the hung export to fail", || stats.export_failed() == 2).await;
    export.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued_and_later_submits_are_dropped() {
    let rec = Recorder::default();
    let export = running(rec.clone(), 64, 512, Duration::from_secs(3600));
    let sink = export.sink();
    for n in 0..3 {
        sink.submit(record(n));
    }
    let stats = Arc::clone(export.stats());
    export.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(rec.count(), 3, "flushed without waiting an hour");
    assert_eq!(stats.exported(), 3);
    assert!(!sink.submit(record(9)));
    assert_eq!(stats.dropped_queue_full(), 1);
}

#[test]
fn empty_queues_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = start_with(
        Recorder::default(),
        &config(0, 1, Duration::from_secs(1)),
        rt.handle(),
    );
    assert!(matches!(r, Err(ExportError::Config(_))));
    assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    assert_eq!(
        traces_url("http://c:4318/otlp"),
        "http://c:4318/otlp/v1/traces"
    );
}

/// A gRPC OTLP receiver on 127.0.0.1:0 that forwards every request to a channel.
struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn grpc_receiver() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        TraceServiceServer::new(Receiver(tx)),
        tonic::transport::server::TcpIncoming::from(listener),
    ));
    (format!("http://{addr}"), rx)
}

/// An OTLP/HTTP receiver (protobuf bodies at /v1/traces) on 127.0.0.1:0.
async fn http_receiver() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            assert_eq!(req.headers()["x-api-key"], "sesame");
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send(ExportTraceServiceRequest::decode(body).unwrap());
                            let reply = ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec();
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(reply)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), rx)
}

/// Every span of the requests received, with the resource's `service.name`.
async fn received(
    rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    want: usize,
) -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
    let mut spans = Vec::new();
    while spans.len() < want {
        let req = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the receiver got nothing")
            .unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            let service = match service {
                Some(any_value::Value::StringValue(s)) => s,
                other => panic!("no service.name: {other:?}"),
            };
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }
    spans
}

fn string_attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

async fn round_trip(endpoint: String, protocol: Protocol) {
    let cfg = ExportConfig {
        endpoint,
        protocol,
        headers: vec![("x-api-key".to_owned(), "sesame".to_owned())],
        ..config(64, 8, Duration::from_millis(20))
    };
    let export = start(&cfg, &Handle::current()).unwrap();
    let parent = record(1);
    let mut child = record(2);
    child.trace_id = parent.trace_id;
    child.parent_span_id = Some(parent.span_id);
    child.kind = SpanKind::Client;
    child.backend = Some(Arc::from("orders-v2"));
    export.sink().submit(parent);
    export.sink().submit(child);
    let stats = Arc::clone(export.stats());
    export.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!((stats.exported(), stats.dropped()), (2, 0));
}

fn check_two_spans(spans: &[(String, opentelemetry_proto::tonic::trace::v1::Span)]) {
    assert_eq!(spans.len(), 2);
    let by_id = |n: u64| {
        spans
            .iter()
            .find(|(_, s)| s.span_id == SpanId::from_u64(0x2000 + n).to_bytes())
            .unwrap_or_else(|| panic!("span {n} missing"))
    };
    let (service, parent) = by_id(1);
    let (_, child) = by_id(2);
    assert_eq!(service, "test-proxy");
    assert_eq!(parent.trace_id, TraceId::from_u128(0x1001).to_bytes());
    assert_eq!(child.trace_id, parent.trace_id, "one trace");
    assert_eq!(child.parent_span_id, parent.span_id, "child of the parent");
    assert_eq!(parent.kind, 2, "SERVER");
    assert_eq!(child.kind, 3, "CLIENT");
    assert_eq!(parent.name, "GET orders");
    assert_eq!(
        string_attr(parent, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        string_attr(child, "tern.backend").as_deref(),
        Some("orders-v2")
    );
}

#[tokio::test]
async fn otlp_grpc_reaches_a_real_receiver() {
    let (endpoint, mut rx) = grpc_receiver().await;
    round_trip(endpoint, Protocol::Grpc).await;
    check_two_spans(&received(&mut rx, 2).await);
}

#[tokio::test]
async fn otlp_http_protobuf_reaches_a_real_receiver() {
    let (endpoint, mut rx) = http_receiver().await;
    round_trip(endpoint, Protocol::HttpProtobuf).await;
    check_two_spans(&received(&mut rx, 2).await);
}

#[tokio::test]
async fn a_collector_that_is_down_costs_counted_spans_only() {
    // A port nobody listens on: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let cfg = ExportConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            protocol,
            timeout: Duration::from_millis(300),
            ..config(64, 8, Duration::from_millis(10))
        };
        let export = start(&cfg, &Handle::current()).unwrap();
        let stats = Arc::clone(export.stats());
        for n in 0..3 {
            assert!(export.sink().submit(record(n)));
        }
        eventually("the exports to fail", || stats.export_failed() == 3).await;
        assert_eq!(stats.exported(), 0, "{protocol:?}");
        export.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
