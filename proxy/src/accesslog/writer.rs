//! The writer task: a bounded queue in, batches of JSON lines out.
//!
//! Request workers `try_send` one record per request. A receiver parked on the channel is woken
//! by every send, and on a busy proxy the queue is empty most of the time, so a writer that goes
//! straight back to waiting wakes once per line: a futex wake and a context switch per request
//! (the control runtime is another thread, often on the same CPU), and a write of one or two
//! lines each time. So the writer batches by time instead:
//!
//! - **Idle** (the queue is empty), it waits on the channel: the first line after a quiet spell
//!   is written at once.
//! - **After a write** it *lingers* ([`LogWriter::LINGER`], 20 ms) before it looks at the queue
//!   again. A task sleeping on a timer is not registered with the channel, so senders do not wake
//!   it (their `try_send` costs no wake-up); what they queue meanwhile goes out in the next write.
//!   Under load the writer wakes about 50 times a second and writes hundreds of lines a write; a
//!   lone line waits at most one linger.
//! - **A full batch** (`BATCH` lines, or the queue's capacity if smaller) means more are waiting
//!   and the queue may be filling: the writer skips the linger and drains again at once, so a
//!   burst is not dropped merely because the writer was resting.
//! - **Stop** interrupts the linger; what is queued is then written (see [`LogWriter::shutdown`]).

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

/// Most records formatted per write (fewer when the queue is smaller). A batch this full skips
/// the linger.
const BATCH: usize = 1024;

/// The buffer is given back when a burst grew it beyond this (a full batch of typical lines,
/// a few hundred bytes each, fits).
const KEEP_BUFFER: usize = 1024 * 1024;

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
    /// How long the writer rests after a write before it takes the next batch, so that lines
    /// queued meanwhile share one write and senders do not wake it per line (module docs).
    pub const LINGER: Duration = Duration::from_millis(20);

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
        Self::start_with_linger(out, capacity, Self::LINGER, runtime)
    }

    /// [`start_with`](Self::start_with) with another linger than [`LINGER`](Self::LINGER);
    /// zero writes each batch as soon as it is queued (a wake-up per line when traffic is
    /// light).
    pub fn start_with_linger<W>(out: W, capacity: usize, linger: Duration, runtime: &Handle) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(LogStats::default());
        let stop = CancellationToken::new();
        let task = runtime.spawn(run(
            rx,
            out,
            Arc::clone(&stats),
            stop.clone(),
            linger,
            BATCH.min(capacity),
        ));
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

    /// Writes what is queued and stops, within `timeout` (a linger in progress is cut short).
    /// Later submits are dropped.
    pub async fn shutdown(self, timeout: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("access log writer did not finish within {timeout:?}");
        }
    }
}

/// The writer: waits for a batch of at most `limit` records, writes it, lingers (unless the
/// batch was full), and again; on stop, writes what is queued.
async fn run<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<AccessRecord>,
    mut out: W,
    stats: Arc<LogStats>,
    stop: CancellationToken,
    linger: Duration,
    limit: usize,
) {
    // Grows (up to `limit`) as batches need; records are large, most batches are small.
    let mut batch = Vec::new();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut failing = false;
    loop {
        // Returns at once with what is queued; parks on the channel (a send wakes it) only when
        // the queue is empty.
        let n = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            n = rx.recv_many(&mut batch, limit) => n,
        };
        if n == 0 {
            return;
        }
        write_batch(&mut batch, &mut buf, &mut out, &stats, &mut failing).await;
        if n < limit && !linger.is_zero() {
            // Not registered with the channel while asleep here: sends do not wake us.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep(linger) => {}
            }
        }
    }
    rx.close();
    while rx.recv_many(&mut batch, limit).await > 0 {
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
