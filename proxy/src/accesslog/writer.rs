//! The writer task: a bounded queue in, batches of JSON lines out.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{AccessRecord, format};

/// Records formatted per write.
const BATCH: usize = 256;

/// The buffer is given back when a burst grew it beyond this.
const KEEP_BUFFER: usize = 256 * 1024;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    Stdout,
    /// Appended to (created if absent). `O_APPEND` keeps lines whole even if another process
    /// appends too, and lets `logrotate`'s `copytruncate` work.
    File(PathBuf),
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Counters of one output, for the metrics page.
#[derive(Debug, Default)]
pub struct LogStats {
    written: AtomicU64,
    dropped: AtomicU64,
    write_failed: AtomicU64,
}

impl LogStats {
    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    /// Lines refused because the queue was full (or the writer stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Lines lost to a failed write (disk full, closed stdout).
    pub fn write_failed(&self) -> u64 {
        self.write_failed.load(Relaxed)
    }
}

/// The request path's handle to an output's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<AccessRecord>,
    stats: Arc<LogStats>,
}

impl LogSink {
    /// Queues a line, or drops and counts it when the queue is full. Never waits.
    pub fn submit(&self, record: AccessRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &Arc<LogStats> {
        &self.stats
    }
}

/// A running writer.
#[derive(Debug)]
pub struct LogWriter {
    sink: LogSink,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LogWriter {
    /// Starts a writer to `output` on `runtime` (the control runtime). Opens the file now, so
    /// a bad path is reported when the config is applied.
    pub fn start(output: &Output, capacity: usize, runtime: &Handle) -> io::Result<Self> {
        match output {
            Output::Stdout => Ok(Self::start_with(tokio::io::stdout(), capacity, runtime)),
            Output::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Ok(Self::start_with(
                    tokio::fs::File::from_std(file),
                    capacity,
                    runtime,
                ))
            }
        }
    }

    /// A writer to any byte sink (tests pass an in-memory pipe).
    pub fn start_with<W>(out: W, capacity: usize, runtime: &Handle) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(LogStats::default());
        let stop = CancellationToken::new();
        let task = runtime.spawn(run(rx, out, Arc::clone(&stats), stop.clone()));
        Self {
            sink: LogSink { tx, stats },
            stop,
            task,
        }
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    pub fn stats(&self) -> &Arc<LogStats> {
        &self.sink.stats
    }

    /// Writes what is queued and stops, within `timeout`. Later submits are dropped.
    pub async fn shutdown(self, timeout: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("access log writer did not finish within {timeout:?}");
        }
    }
}

async fn run<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<AccessRecord>,
    mut out: W,
    stats: Arc<LogStats>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut failing = false;
    loop {
        let n = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        write_batch(&mut batch, &mut buf, &mut out, &stats, &mut failing).await;
    }
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write_batch(&mut batch, &mut buf, &mut out, &stats, &mut failing).await;
    }
}

async fn write_batch<W: AsyncWrite + Unpin>(
    batch: &mut Vec<AccessRecord>,
    buf: &mut Vec<u8>,
    out: &mut W,
    stats: &LogStats,
    failing: &mut bool,
) {
    let lines = batch.len() as u64;
    buf.clear();
    for record in batch.drain(..) {
        format::write_json(&record, buf);
    }
    let result = async {
        out.write_all(buf).await?;
        out.flush().await
    }
    .await;
    match result {
        Ok(()) => {
            stats.written.fetch_add(lines, Relaxed);
            if *failing {
                *failing = false;
                tracing::info!("access log writes work again");
            }
        }
        Err(e) => {
            stats.write_failed.fetch_add(lines, Relaxed);
            if !*failing {
                *failing = true;
                tracing::warn!("access log write failed, lines are lost until it recovers: {e}");
            }
        }
    }
    if buf.capacity() > KEEP_BUFFER {
        buf.shrink_to(KEEP_BUFFER);
    }
}

/// One writer per output, kept across config changes: listeners that log to the same place
/// share a writer (lines never interleave), and a reload that keeps an output keeps its queue.
#[derive(Debug)]
pub struct Writers {
    runtime: Handle,
    capacity: usize,
    writers: HashMap<Output, LogWriter>,
}

impl Writers {
    pub fn new(runtime: Handle, capacity: usize) -> Self {
        Self {
            runtime,
            capacity,
            writers: HashMap::new(),
        }
    }

    /// The sink of `output`'s writer, started if it is not running yet.
    pub fn sink(&mut self, output: &Output) -> io::Result<LogSink> {
        if let Some(w) = self.writers.get(output) {
            return Ok(w.sink());
        }
        let writer = LogWriter::start(output, self.capacity, &self.runtime)?;
        let sink = writer.sink();
        self.writers.insert(output.clone(), writer);
        Ok(sink)
    }

    /// Stops (after writing what is queued) the writers of outputs not in `in_use`.
    pub async fn retain(&mut self, in_use: &[Output], timeout: Duration) {
        for w in self.take_unused(in_use) {
            w.shutdown(timeout).await;
        }
    }

    /// Removes the writers of outputs not in `in_use` and hands them over, for a caller that
    /// cannot wait here (it holds a lock) to shut them down elsewhere.
    pub fn take_unused(&mut self, in_use: &[Output]) -> Vec<LogWriter> {
        let gone: Vec<Output> = self
            .writers
            .keys()
            .filter(|o| !in_use.contains(o))
            .cloned()
            .collect();
        gone.iter().filter_map(|o| self.writers.remove(o)).collect()
    }

    /// The writers, for their stats.
    pub fn iter(&self) -> impl Iterator<Item = (&Output, &LogWriter)> {
        self.writers.iter()
    }

    /// Stops every writer after writing what is queued (on drain).
    pub async fn shutdown(self, timeout: Duration) {
        for (_, w) in self.writers {
            w.shutdown(timeout).await;
        }
    }
}
