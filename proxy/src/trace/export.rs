//! Span export: a bounded hand-off from the request path, conversion and OTLP export on the
//! control runtime through the OpenTelemetry SDK's batch span processor.
//!
//! # Model
//!
//! ```text
//! workers: SpanSink::submit ──try_send──> [ queue: queue_size records ]
//!                                              │  forwarder task (control runtime):
//!                                              │  SpanRecord -> SpanData, waits for room
//!                                              v
//!                      BatchSpanProcessor [ queue: queue_size spans ] (its own thread)
//!                                              │  batches of batch_size, every batch_delay
//!                                              v
//!                      Exporter (counts) ──spawned on the control runtime──> OTLP gRPC / HTTP
//! ```
//!
//! - **The request path never waits.** [`SpanSink::submit`] is a `try_send` on a bounded
//!   tokio channel of fixed-size records (a few atomics; the channel allocates its slots in
//!   blocks of 32, reused). When the queue is full the record is dropped and counted.
//! - **One place where spans are dropped under pressure**: that first queue. The SDK's
//!   processor drops silently (it only logs a total at shutdown), so the forwarder never lets
//!   it overflow: it tracks how many spans the processor holds (handed over minus taken by an
//!   export) and waits while that reaches the processor's capacity. A slow or absent collector
//!   therefore backs spans up into our queue, where the drops are counted
//!   ([`ExportStats::dropped_queue_full`]).
//! - **Failed exports are counted too** ([`ExportStats::export_failed`]): when the collector
//!   is down, every batch fails after the exporter's timeout and its spans are lost. Both
//!   counters are meant for the metrics page; [`ExportStats::dropped`] is their sum.
//! - **The export runs on the control runtime.** The SDK's processor calls the exporter from a
//!   plain thread; tonic's channel and the hyper client need a tokio runtime, so the exporter
//!   wrapper spawns each export there and waits for it, with a deadline (the export timeout
//!   plus up to a second: a black-holing collector cannot hold the processor forever).
//! - **Shutdown** ([`SpanExport::shutdown`], on drain): stop taking records, hand the queued
//!   ones over, then shut the processor down, which exports what it holds (flush). The
//!   processor's shutdown blocks its caller, so it runs on tokio's blocking pool: the control
//!   runtime must keep running while it does (never call it from a blocking context there).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{SpanRecord, ToSpanData};

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
    /// Deadline of one export, retries included.
    pub timeout: Duration,
    /// Sent with every export (gRPC metadata or HTTP headers), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Capacity of each of the two queues (see the module docs).
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
    #[error("cannot build the OTLP exporter: {0}")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
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

    /// Records taken from the queue and handed to the processor.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Relaxed)
    }

    /// Spans in exports that failed (collector down, timeout, refused).
    pub fn export_failed(&self) -> u64 {
        self.export_failed.load(Relaxed)
    }

    /// Every span lost: refused by the queue or in a failed export.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full() + self.export_failed()
    }
}

/// The request path's handle: cheap to clone, one per worker.
#[derive(Debug)]
pub struct SpanSink<R = SpanRecord> {
    tx: mpsc::Sender<R>,
    stats: Arc<ExportStats>,
}

impl<R> Clone for SpanSink<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<R> SpanSink<R> {
    /// Queues a finished span for export, or drops and counts it if the queue is full. Never
    /// waits. Returns whether it was queued.
    pub fn submit(&self, record: R) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped_queue_full.fetch_add(1, Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }
}

/// The running export pipeline.
#[derive(Debug)]
pub struct SpanExport<R = SpanRecord> {
    sink: SpanSink<R>,
    stop: CancellationToken,
    forwarder: JoinHandle<()>,
    processor: Arc<BatchSpanProcessor>,
}

impl<R> SpanExport<R> {
    /// A sink for a worker (or a snapshot): clones share the queue.
    pub fn sink(&self) -> SpanSink<R> {
        self.sink.clone()
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.sink.stats
    }

    /// Stops taking spans, exports the ones queued, and shuts the exporter down, within
    /// `timeout`. Later submits are dropped (and counted).
    pub async fn shutdown(self, timeout: Duration) -> Result<(), ExportError> {
        self.stop.cancel();
        let processor = self.processor;
        let work = async move {
            self.forwarder
                .await
                .map_err(|e| ExportError::Shutdown(format!("forwarder: {e}")))?;
            tokio::task::spawn_blocking(move || processor.shutdown_with_timeout(timeout))
                .await
                .map_err(|e| ExportError::Shutdown(format!("processor: {e}")))?
                .map_err(|e| ExportError::Shutdown(e.to_string()))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ExportError::Shutdown(format!("not done within {timeout:?}")))?
    }
}

/// The OTLP exporter for `config`, with its resource set. Must run inside `runtime` (tonic
/// starts its connection task there).
fn otlp_exporter(
    config: &ExportConfig,
    runtime: &Handle,
) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let _entered = runtime.enter();
    let mut exporter = match config.protocol {
        Protocol::Grpc => {
            let mut metadata = http::HeaderMap::new();
            for (name, value) in &config.headers {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| ExportError::Config(format!("header {name:?}: {e}")))?;
                let value = http::HeaderValue::from_str(value)
                    .map_err(|e| ExportError::Config(format!("header {name:?}: {e}")))?;
                metadata.append(name, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(metadata),
                )
                .build()
        }
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(traces_url(&config.endpoint))
            .with_timeout(config.timeout)
            .with_headers(config.headers.iter().cloned().collect::<HashMap<_, _>>())
            .build(),
    }
    .map_err(ExportError::Build)?;
    exporter.set_resource(&resource(config));
    Ok(exporter)
}

/// OTLP/HTTP posts traces to `{base}/v1/traces`.
pub fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

fn resource(config: &ExportConfig) -> Resource {
    Resource::builder()
        .with_service_name(config.service_name.clone())
        .build()
}

/// Starts the export pipeline on `runtime` (the control runtime): an OTLP exporter for
/// `config`, the SDK's batch processor, and the forwarder task.
pub fn start(config: &ExportConfig, runtime: &Handle) -> Result<SpanExport, ExportError> {
    let exporter = otlp_exporter(config, runtime)?;
    start_with(exporter, config, runtime)
}

/// [`start`] with any exporter (tests pass one that records, stalls or fails). Its resource
/// is the caller's business.
pub fn start_with<R, E>(
    exporter: E,
    config: &ExportConfig,
    runtime: &Handle,
) -> Result<SpanExport<R>, ExportError>
where
    R: ToSpanData + Send + 'static,
    E: SpanExporter + 'static,
{
    if config.queue_size == 0 || config.batch_size == 0 {
        return Err(ExportError::Config(
            "queue_size and batch_size must be at least 1".to_owned(),
        ));
    }
    let stats = Arc::new(ExportStats::default());
    let room = Arc::new(Room {
        held: AtomicUsize::new(0),
        freed: Notify::new(),
    });
    let exporter = Counting {
        inner: Arc::new(exporter),
        runtime: runtime.clone(),
        // Let the exporter's own timeout fire first; this is the backstop.
        deadline: config.timeout + config.timeout.min(Duration::from_secs(1)),
        room: Arc::clone(&room),
        stats: Arc::clone(&stats),
    };
    let processor = Arc::new(
        BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(config.queue_size)
                    .with_max_export_batch_size(config.batch_size.min(config.queue_size))
                    .with_scheduled_delay(config.batch_delay)
                    .build(),
            )
            .build(),
    );
    let (tx, rx) = mpsc::channel(config.queue_size);
    let stop = CancellationToken::new();
    let forwarder = runtime.spawn(forward(
        rx,
        Arc::clone(&processor),
        room,
        config.queue_size,
        Arc::clone(&stats),
        stop.clone(),
    ));
    Ok(SpanExport {
        sink: SpanSink { tx, stats },
        stop,
        forwarder,
        processor,
    })
}

/// How many spans the processor holds, and a signal when an export takes some.
#[derive(Debug)]
struct Room {
    held: AtomicUsize,
    freed: Notify,
}

impl Room {
    async fn wait_below(&self, capacity: usize) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.held.load(Relaxed) < capacity {
                return;
            }
            freed.await;
        }
    }
}

async fn forward<R: ToSpanData>(
    mut rx: mpsc::Receiver<R>,
    processor: Arc<BatchSpanProcessor>,
    room: Arc<Room>,
    capacity: usize,
    stats: Arc<ExportStats>,
    stop: CancellationToken,
) {
    let scope = InstrumentationScope::builder("tern-proxy")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let hand_over = async |record: R| {
        room.wait_below(capacity).await;
        room.held.fetch_add(1, Relaxed);
        stats.received.fetch_add(1, Relaxed);
        processor.on_end(record.to_span_data(&scope));
    };
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            record = rx.recv() => match record {
                Some(record) => hand_over(record).await,
                None => return,
            },
        }
    }
    // Drain: refuse new records, hand over the queued ones.
    rx.close();
    while let Some(record) = rx.recv().await {
        hand_over(record).await;
    }
}

/// Wraps the real exporter: frees room as batches leave the processor's queue, counts the
/// outcome, and runs the export on the control runtime with a deadline.
#[derive(Debug)]
struct Counting<E> {
    inner: Arc<E>,
    runtime: Handle,
    deadline: Duration,
    room: Arc<Room>,
    stats: Arc<ExportStats>,
}

impl<E: SpanExporter + 'static> SpanExporter for Counting<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        // Only this subtracts, and only spans the forwarder added: never below zero, but
        // saturate rather than wrap should that ever be wrong.
        let _ = self
            .room
            .held
            .fetch_update(Relaxed, Relaxed, |held| Some(held.saturating_sub(n)));
        self.room.freed.notify_one();
        let inner = Arc::clone(&self.inner);
        let deadline = self.deadline;
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(deadline, inner.export(batch))
                .await
                .unwrap_or(Err(OTelSdkError::Timeout(deadline)))
        });
        let stats = Arc::clone(&self.stats);
        async move {
            let result = task
                .await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
            let counter = if result.is_ok() {
                &stats.exported
            } else {
                &stats.export_failed
            };
            counter.fetch_add(n as u64, Relaxed);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
}
