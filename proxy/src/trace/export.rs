//! Span export: a bounded hand-off from the request path, and OTLP export in batches on the
//! control runtime.
//!
//! # Model
//!
//! ```text
//! workers: SpanSink::submit ──try_send──> [ queue: queue_size records ]
//!                                              │  exporter task (control runtime), woken
//!                                              │  every batch_delay, or once when a batch
//!                                              │  is waiting
//!                                              v
//!                      batches of batch_size, encoded (otlp.rs) ──> OTLP gRPC (tonic) / HTTP
//! ```
//!
//! - **The request path never waits.** [`SpanSink::submit`] is a `try_send` on a bounded
//!   tokio channel of fixed-size records (a few atomics; the channel allocates its slots in
//!   blocks of 32, reused). When the queue is full the record is dropped and counted
//!   ([`ExportStats::dropped_queue_full`]): the one place spans are dropped under pressure.
//! - **No wake-up per span.** The exporter sleeps on a timer, not on the queue, so a submit
//!   does not wake it (a futex wake and a context switch each, which on a proxy pinned to one
//!   CPU cost more than the span). The submit that makes a full batch wait kicks it, once per
//!   batch (a flag keeps the others from repeating the kick).
//! - **One export at a time**, each bounded by the export timeout. A slow or absent collector
//!   therefore backs spans up into the queue, where the drops are counted. Failed exports are
//!   counted too ([`ExportStats::export_failed`]), with spans the collector rejected in a
//!   partial success. [`ExportStats::dropped`] is their sum.
//! - **Encoding** (module `otlp`) writes OTLP protobuf straight from the records, with
//!   prost's primitives; the transport is tonic's gRPC client (a codec passes the encoded
//!   request through) or a hyper client posting to `/v1/traces`. The OpenTelemetry SDK's batch
//!   processor and the `opentelemetry-otlp` exporter did this before, at ≈ 33k instructions
//!   per span for the conversion alone (see benches/results/BASELINE.md).
//! - **Shutdown** ([`SpanExport::shutdown`], on drain): stop taking records, export the ones
//!   queued, within the caller's timeout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::SpanRecord;
use super::otlp::Envelope;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies, `POST {endpoint}/v1/traces` (default port 4318).
    HttpProtobuf,
}

/// The export settings, compiled from config.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// Base URL of the collector, `http://host:port` (TLS is not supported yet).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Deadline of one export.
    pub timeout: Duration,
    /// Sent with every export (gRPC metadata or HTTP headers), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Capacity of the queue between the request path and the exporter.
    pub queue_size: usize,
    /// Spans per export request.
    pub batch_size: usize,
    /// Longest time a span waits for its batch to fill.
    pub batch_delay: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4317".to_owned(),
            protocol: Protocol::Grpc,
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            service_name: "tern-proxy".to_owned(),
            queue_size: 2048,
            batch_size: 512,
            batch_delay: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid OTLP export setting: {0}")]
    Config(String),
    #[error("span export shutdown: {0}")]
    Shutdown(String),
}

/// Counters of the export pipeline, shared by every sink and the exporter.
#[derive(Debug, Default)]
pub struct ExportStats {
    dropped_queue_full: AtomicU64,
    received: AtomicU64,
    exported: AtomicU64,
    export_failed: AtomicU64,
}

impl ExportStats {
    /// Records refused by the request path's queue (full, or export shut down).
    pub fn dropped_queue_full(&self) -> u64 {
        self.dropped_queue_full.load(Relaxed)
    }

    /// Records taken from the queue into an export.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Relaxed)
    }

    /// Spans in exports that failed (collector down, timeout, refused) or that the collector
    /// rejected.
    pub fn export_failed(&self) -> u64 {
        self.export_failed.load(Relaxed)
    }

    /// Every span lost: refused by the queue or in a failed export.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full() + self.export_failed()
    }
}

/// Wakes the exporter once a batch is waiting, once per batch.
#[derive(Debug)]
struct Kick {
    batch_size: usize,
    sent: AtomicBool,
    notify: Notify,
}

/// The request path's handle: cheap to clone, one per worker.
#[derive(Debug, Clone)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
    kick: Arc<Kick>,
    stats: Arc<ExportStats>,
}

impl SpanSink {
    /// Queues a finished span for export, or drops and counts it if the queue is full. Never
    /// waits. Returns whether it was queued.
    pub fn submit(&self, record: SpanRecord) -> bool {
        if self.tx.try_send(record).is_err() {
            self.stats.dropped_queue_full.fetch_add(1, Relaxed);
            return false;
        }
        let queued = self.tx.max_capacity() - self.tx.capacity();
        if queued >= self.kick.batch_size
            && !self.kick.sent.load(Relaxed)
            && !self.kick.sent.swap(true, Relaxed)
        {
            self.kick.notify.notify_one();
        }
        true
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }
}

/// Sends one encoded `ExportTraceServiceRequest`; answers how many of its spans the collector
/// rejected (OTLP partial success).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, request: Bytes) -> impl Future<Output = Result<u64, String>> + Send;
}

/// The running export pipeline.
#[derive(Debug)]
pub struct SpanExport {
    sink: SpanSink,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl SpanExport {
    /// A sink for a worker (or a snapshot): clones share the queue.
    pub fn sink(&self) -> SpanSink {
        self.sink.clone()
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.sink.stats
    }

    /// Retires an exporter a new config replaced. Requests begun under the old config still
    /// hold its sink and submit their spans when they end: it waits until none does (or
    /// `grace` has passed), then exports what it has and stops within `timeout`.
    pub async fn retire(self, grace: Duration, timeout: Duration) -> Result<(), ExportError> {
        // Every sink holds a sender; this one's own aside, they are snapshots or spans.
        crate::snapshot::until_released(|| self.sink.tx.strong_count() > 1, grace).await;
        self.shutdown(timeout).await
    }

    /// Stops taking spans and exports the ones queued, within `timeout`. Later submits are
    /// dropped (and counted).
    pub async fn shutdown(self, timeout: Duration) -> Result<(), ExportError> {
        self.stop.cancel();
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ExportError::Shutdown(format!("exporter: {e}"))),
            Err(_) => Err(ExportError::Shutdown(format!(
                "not done within {timeout:?}"
            ))),
        }
    }
}

/// OTLP/HTTP posts traces to `{base}/v1/traces`.
pub fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// Starts the export pipeline for `config` on `runtime` (the control runtime).
pub fn start(config: &ExportConfig, runtime: &Handle) -> Result<SpanExport, ExportError> {
    let _entered = runtime.enter();
    match config.protocol {
        Protocol::Grpc => start_with(Grpc::new(config)?, config, runtime),
        Protocol::HttpProtobuf => start_with(Http::new(config)?, config, runtime),
    }
}

/// [`start`] with any transport (tests pass one that records, stalls or fails).
pub fn start_with<T: Transport>(
    transport: T,
    config: &ExportConfig,
    runtime: &Handle,
) -> Result<SpanExport, ExportError> {
    if config.queue_size == 0 || config.batch_size == 0 {
        return Err(ExportError::Config(
            "queue_size and batch_size must be at least 1".to_owned(),
        ));
    }
    let batch_size = config.batch_size.min(config.queue_size);
    let stats = Arc::new(ExportStats::default());
    let kick = Arc::new(Kick {
        batch_size,
        sent: AtomicBool::new(false),
        notify: Notify::new(),
    });
    let (tx, rx) = mpsc::channel(config.queue_size);
    let stop = CancellationToken::new();
    let exporter = Exporter {
        rx,
        transport,
        envelope: Envelope::new(&config.service_name),
        batch_size,
        timeout: config.timeout,
        kick: Arc::clone(&kick),
        stats: Arc::clone(&stats),
        batch: Vec::with_capacity(batch_size),
        body: Vec::new(),
        failing: false,
    };
    let task = runtime.spawn(exporter.run(config.batch_delay, stop.clone()));
    Ok(SpanExport {
        sink: SpanSink { tx, kick, stats },
        stop,
        task,
    })
}

struct Exporter<T> {
    rx: mpsc::Receiver<SpanRecord>,
    transport: T,
    envelope: Envelope,
    batch_size: usize,
    timeout: Duration,
    kick: Arc<Kick>,
    stats: Arc<ExportStats>,
    batch: Vec<SpanRecord>,
    body: Vec<u8>,
    failing: bool,
}

impl<T: Transport> Exporter<T> {
    async fn run(mut self, delay: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = self.kick.notify.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
            self.kick.sent.store(false, Relaxed);
            self.export_queued().await;
        }
        // Drain: refuse new records, export the queued ones.
        self.rx.close();
        self.export_queued().await;
    }

    /// Exports what is queued, a batch at a time.
    async fn export_queued(&mut self) {
        loop {
            while self.batch.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(record) => self.batch.push(record),
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                return;
            }
            let full = self.batch.len() == self.batch_size;
            self.export_batch().await;
            if !full {
                return;
            }
        }
    }

    async fn export_batch(&mut self) {
        let n = self.batch.len() as u64;
        self.stats.received.fetch_add(n, Relaxed);
        self.body.clear();
        self.envelope.encode(&self.batch, &mut self.body);
        self.batch.clear();
        let request = Bytes::copy_from_slice(&self.body);
        let outcome = tokio::time::timeout(self.timeout, self.transport.send(request))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        match outcome {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                self.stats.exported.fetch_add(n - rejected, Relaxed);
                self.stats.export_failed.fetch_add(rejected, Relaxed);
                if rejected > 0 {
                    tracing::warn!("the collector rejected {rejected} of {n} spans");
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!("span export works again");
                }
            }
            Err(e) => {
                self.stats.export_failed.fetch_add(n, Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!("span export failed, spans are lost until it recovers: {e}");
                }
            }
        }
    }
}

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

type ExportResponse = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

fn rejected_spans(response: &ExportResponse) -> u64 {
    response
        .partial_success
        .as_ref()
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

/// OTLP/gRPC through tonic's client; the channel connects lazily and reconnects by itself.
struct Grpc {
    client: tonic::client::Grpc<tonic::transport::Channel>,
    metadata: tonic::metadata::MetadataMap,
}

impl Grpc {
    fn new(config: &ExportConfig) -> Result<Self, ExportError> {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &config.headers {
            let (name, value) = header(name, value)?;
            headers.append(name, value);
        }
        let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| ExportError::Config(format!("endpoint {:?}: {e}", config.endpoint)))?
            .connect_timeout(config.timeout)
            .connect_lazy();
        Ok(Self {
            client: tonic::client::Grpc::new(channel),
            metadata: tonic::metadata::MetadataMap::from_headers(headers),
        })
    }
}

impl Transport for Grpc {
    async fn send(&self, request: Bytes) -> Result<u64, String> {
        let mut client = self.client.clone();
        client
            .ready()
            .await
            .map_err(|e| format!("collector not ready: {e}"))?;
        let request = tonic::Request::from_parts(
            self.metadata.clone(),
            tonic::Extensions::default(),
            request,
        );
        let response = client
            .unary(
                request,
                http::uri::PathAndQuery::from_static(GRPC_PATH),
                Encoded,
            )
            .await
            .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?;
        Ok(rejected_spans(response.get_ref()))
    }
}

/// Sends an already encoded request as is; decodes the response.
#[derive(Debug, Clone, Copy)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = ExportResponse;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = ExportResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        let response = ExportResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| tonic::Status::internal(format!("bad export response: {e}")))?;
        Ok(Some(response))
    }
}

/// OTLP/HTTP with protobuf bodies, through hyper's pooled client.
struct Http {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: http::Uri,
    headers: http::HeaderMap,
}

/// The most of a collector's answer read (a partial-success message is a few hundred bytes).
const MAX_RESPONSE: usize = 64 * 1024;

impl Http {
    fn new(config: &ExportConfig) -> Result<Self, ExportError> {
        let url = traces_url(&config.endpoint);
        let url: http::Uri = url
            .parse()
            .map_err(|e| ExportError::Config(format!("endpoint {url:?}: {e}")))?;
        if url.scheme_str() != Some("http") {
            return Err(ExportError::Config(format!(
                "endpoint {url}: only http:// is supported"
            )));
        }
        let mut headers = http::HeaderMap::new();
        for (name, value) in &config.headers {
            let (name, value) = header(name, value)?;
            headers.append(name, value);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Self {
            client,
            url,
            headers,
        })
    }
}

impl Transport for Http {
    async fn send(&self, request: Bytes) -> Result<u64, String> {
        let mut req = http::Request::new(Full::new(request));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.url.clone();
        *req.headers_mut() = self.headers.clone();
        let response = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("POST {}: reading the answer: {e}", self.url))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("POST {}: HTTP {status}", self.url));
        }
        // A body that is not an export response (some collectors answer empty) rejects nothing.
        Ok(ExportResponse::decode(body).map_or(0, |r| rejected_spans(&r)))
    }
}

fn header(name: &str, value: &str) -> Result<(http::HeaderName, http::HeaderValue), ExportError> {
    let n = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| ExportError::Config(format!("header {name:?}: {e}")))?;
    let v = http::HeaderValue::from_str(value)
        .map_err(|e| ExportError::Config(format!("header {name:?}: {e}")))?;
    Ok((n, v))
}
