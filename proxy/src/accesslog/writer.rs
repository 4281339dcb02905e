//! The writers: request workers format their lines into a shared buffer split in per-thread
//! shards; a writer task per output sweeps the shards and writes what they hold.
//!
//! ```text
//! worker thread: LogSink::submit ──write_json──> [ its shard: Mutex<Chunk { buf, lines }> ] ×SHARDS
//!                                                      │  writer task (control runtime): after
//!                                                      │  each linger (20 ms), at once when a
//!                                                      │  shard passes KICK_BYTES, or woken by
//!                                                      │  the first line after a quiet spell
//!                                                      v
//!                        swap each shard's buffer with a spare ──> write_all + flush per buffer
//! ```
//!
//! A file or stdout is written by a blocking task that is handed the swept buffer itself (and
//! hands it back), not through `tokio::fs::File`, which would copy every line once more into a
//! buffer of its own before its own blocking write.
//!
//! Envoy does the same: workers append formatted lines to a buffer, a flush thread writes it.
//!
//! # Why format on the worker
//!
//! Handing each record to the writer through a channel (as this module did before) cost a move
//! of a record of about a kilobyte into the channel and out again, the channel's atomics, and
//! the record's drop on the writer's thread, where its reference counts (last touched by the
//! worker) are cache misses. Formatting the line where the record was built costs the worker
//! the formatting (≈ 600 ns with an HMAC), and saves the rest; the record is dropped where it
//! was made.
//!
//! # Why shards behind a lock, and not a buffer per thread
//!
//! Each shard is a `std::sync::Mutex<Chunk>`, on cache lines of its own. A thread picks its
//! shard once (a thread-local index taken from a global counter, modulo [`SHARDS`]), so request
//! workers, one thread each, never share a shard while there are at most [`SHARDS`] of them, and
//! the only other party to a shard's lock is the writer, which holds it for a swap of two
//! buffers. So the lock is uncontended by construction: a compare-and-swap to take it, a swap to
//! release it. (With more workers than shards, threads share shards and may wait for one line's
//! formatting when they log at the same instant.)
//!
//! A buffer per thread with no lock at all would leave its lines with the thread: each worker
//! would need a flush timer of its own (so an idle worker's last lines still go out), and the
//! drains of those buffers would need an order with respect to the output, shutdown and reload.
//! One shared buffer with a writer that sweeps it keeps all of that in one task.
//!
//! # The writer
//!
//! - **Idle**, it is *parked*: no timer, so an idle proxy's writer does not wake 50 times a
//!   second. The first line after a quiet spell wakes it (the submit that sees the `parked` flag
//!   clears it and notifies), and is written at once.
//! - **After a write** it *lingers* ([`LogWriter::LINGER`], 20 ms) before it sweeps again.
//!   Workers do not wake a lingering writer, so on a busy proxy a line costs no wake-up (futex
//!   wake, context switch): the writer wakes about 50 times a second, and each sweep writes
//!   everything formatted meanwhile. A lone line waits at most one linger.
//! - **A shard past [`KICK_BYTES`]** cuts the linger short, once per sweep (a flag keeps the
//!   other submits from repeating the notify), so a burst is written while it comes, not when
//!   the linger ends.
//! - **A sweep that finds nothing** parks the writer: it sets `parked`, then sweeps once more (a
//!   line may have been added before its worker could see the flag), and only then waits.
//! - **Stop** interrupts the linger (or the park): the writer marks the sink closed, so later
//!   submits are refused, sweeps a last time and writes it (see [`LogWriter::shutdown`]).
//!
//! Every line a submit accepted is counted once: written, or lost to a failed write. A refused
//! line (shard full, writer stopped) is counted as dropped.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{AccessRecord, format};

/// Shards of an output's buffer: up to this many request workers log without sharing one.
pub(super) const SHARDS: usize = 8;

/// A shard holding this many bytes wakes a lingering writer (once per sweep): a burst is
/// written while it comes rather than after the linger, and buffers stay small.
pub(super) const KICK_BYTES: usize = 256 * 1024;

/// A buffer that a burst grew beyond this is shrunk back to it once written. Under steady load a
/// shard's buffer holds what one worker formats in a linger, or [`KICK_BYTES`] and a little more.
const KEEP_BUFFER: usize = 512 * 1024;

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

/// Counters of one output, for the metrics page. Every line submitted is counted once, in one of
/// them (lines accepted but not yet written are in none).
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

    /// Lines refused because the submitting thread's shard was full (the output is slower than
    /// the traffic), or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Lines lost to a failed write (disk full, closed stdout).
    pub fn write_failed(&self) -> u64 {
        self.write_failed.load(Relaxed)
    }
}

/// The lines one shard holds, formatted, until the writer takes them.
#[derive(Debug, Default)]
struct Chunk {
    buf: Vec<u8>,
    lines: u64,
}

/// A shard on cache lines of its own (two: the adjacent-line prefetcher pairs them), so workers
/// writing to neighbouring shards do not pass a cache line back and forth.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<Chunk>);

impl Shard {
    /// Locks the shard. A thread that panicked while holding it (formatting a line) poisoned it:
    /// the partial line it left is cut off, the whole lines before it are kept.
    fn lock(&self) -> MutexGuard<'_, Chunk> {
        self.0.lock().unwrap_or_else(|poisoned| {
            let mut chunk = poisoned.into_inner();
            let whole = chunk
                .buf
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            chunk.buf.truncate(whole);
            self.0.clear_poison();
            chunk
        })
    }
}

/// Which shard this thread writes to: taken once per thread, in the order threads first log.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

/// What the sinks of an output and its writer share.
#[derive(Debug)]
struct Shared {
    shards: [Shard; SHARDS],
    /// Lines a shard holds before it refuses more.
    capacity: u64,
    /// The writer stopped (or is taking its last sweep): submits are refused. Read under the
    /// shard's lock, set before the last sweep takes the locks: that orders it with each
    /// shard's lines (see [`run`]).
    closed: AtomicBool,
    /// The writer waits with no timer; the next submit clears this and notifies.
    parked: AtomicBool,
    /// A shard passed [`KICK_BYTES`] and the writer was notified; cleared when it wakes.
    kicked: AtomicBool,
    notify: Notify,
    stats: Arc<LogStats>,
    /// Times the writer woke (tests check that an idle writer stays asleep).
    #[cfg(test)]
    wakes: AtomicU64,
}

impl Shared {
    fn new(capacity: u64) -> Self {
        Self {
            shards: Default::default(),
            capacity,
            closed: AtomicBool::new(false),
            // The writer starts idle, so the first line wakes it.
            parked: AtomicBool::new(true),
            kicked: AtomicBool::new(false),
            notify: Notify::new(),
            stats: Arc::default(),
            #[cfg(test)]
            wakes: AtomicU64::new(0),
        }
    }
}

/// The request path's handle to an output. Cheap to clone (a reference count); shared by every
/// worker thread that logs to the output.
#[derive(Debug, Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

impl LogSink {
    /// Formats `record` as a line into this thread's shard, or drops and counts it when the
    /// shard is full or the writer stopped. Never waits (but for the writer's swap of this
    /// shard's buffer, if it happens at that instant). Returns whether the line was taken.
    pub fn submit(&self, record: &AccessRecord) -> bool {
        let shared = &*self.shared;
        let shard = SHARD.try_with(|&i| i).unwrap_or(0);
        let mut chunk = shared.shards[shard].lock();
        if shared.closed.load(Relaxed) || chunk.lines >= shared.capacity {
            drop(chunk);
            shared.stats.dropped.fetch_add(1, Relaxed);
            return false;
        }
        format::write_json(record, &mut chunk.buf);
        chunk.lines += 1;
        let kick = chunk.buf.len() >= KICK_BYTES;
        drop(chunk);
        // Loaded after taking the shard's lock: a writer that set `parked` and then swept this
        // shard before us is seen parked here (`run` explains why that is enough).
        if (kick && !shared.kicked.load(Relaxed) && !shared.kicked.swap(true, Relaxed))
            || (shared.parked.load(Relaxed) && shared.parked.swap(false, Relaxed))
        {
            // Keeps a permit if the writer is not waiting yet: no wake is lost.
            shared.notify.notify_one();
        }
        true
    }

    pub fn stats(&self) -> &Arc<LogStats> {
        &self.shared.stats
    }
}

/// A running writer. Dropping it stops the writer as [`shutdown`](Self::shutdown) does, without
/// waiting for it.
#[derive(Debug)]
pub struct LogWriter {
    sink: LogSink,
    stop: DropGuard,
    task: JoinHandle<()>,
    /// The file this writer created (it did not exist before): a refused config removes it
    /// again if nothing was written to it.
    created: Option<std::path::PathBuf>,
}

impl LogWriter {
    /// How long the writer rests after a write before it sweeps again, so that lines formatted
    /// meanwhile share one write and workers do not wake it per line (module docs).
    pub const LINGER: Duration = Duration::from_millis(20);

    /// Starts a writer to `output` on `runtime` (the control runtime), taking up to `capacity`
    /// lines per worker thread (per shard) between two sweeps. Opens the file now, so a bad
    /// path is reported when the config is applied.
    pub fn start(output: &Output, capacity: usize, runtime: &Handle) -> io::Result<Self> {
        match output {
            Output::Stdout => Ok(Self::start_to(
                Blocking(Some(io::stdout())),
                capacity,
                Self::LINGER,
                runtime,
            )),
            Output::File(path) => {
                let (file, created) = match std::fs::OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(path)
                {
                    Ok(file) => (file, true),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        (std::fs::OpenOptions::new().append(true).open(path)?, false)
                    }
                    Err(e) => return Err(e),
                };
                let mut writer =
                    Self::start_to(Blocking(Some(file)), capacity, Self::LINGER, runtime);
                writer.created = created.then(|| path.clone());
                Ok(writer)
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
    /// zero sweeps again as soon as a write is done, until a sweep finds nothing (a wake-up per
    /// line when traffic is light).
    pub fn start_with_linger<W>(out: W, capacity: usize, linger: Duration, runtime: &Handle) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Self::start_to(Async(out), capacity, linger, runtime)
    }

    fn start_to(out: impl Dest, capacity: usize, linger: Duration, runtime: &Handle) -> Self {
        let shared = Arc::new(Shared::new(capacity.max(1) as u64));
        let stop = CancellationToken::new();
        let task = runtime.spawn(run(Arc::clone(&shared), out, stop.clone(), linger));
        Self {
            sink: LogSink { shared },
            stop: stop.drop_guard(),
            task,
            created: None,
        }
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    pub fn stats(&self) -> &Arc<LogStats> {
        self.sink.stats()
    }

    /// Retires a writer the serving config no longer names. Requests begun under an older
    /// config still hold its sink and log here when they end: it waits until none does (or
    /// `grace` has passed), then writes what it has and stops within `timeout`.
    pub async fn retire(self, grace: Duration, timeout: Duration) {
        // The writer task's handle and this one's sink: any more are snapshots or requests.
        const OWN: usize = 2;
        crate::snapshot::until_released(|| Arc::strong_count(&self.sink.shared) > OWN, grace).await;
        self.shutdown(timeout).await;
    }

    /// Stops a writer started for a config that was then refused: nothing was logged through
    /// it, and the file it created for that config (if it did) is removed while still empty, so
    /// a refused config leaves no trace on disk.
    pub async fn discard(mut self, timeout: Duration) {
        let created = self.created.take();
        self.shutdown(timeout).await;
        if let Some(path) = created
            && std::fs::metadata(&path).is_ok_and(|m| m.len() == 0)
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot remove an unused access log");
        }
    }

    /// Writes every line taken so far and stops, within `timeout` (a linger in progress is cut
    /// short). Later submits are dropped (and counted).
    pub async fn shutdown(self, timeout: Duration) {
        let Self {
            sink, stop, task, ..
        } = self;
        // Refuse lines from now on, even if the writer is stuck in a write and never gets to
        // its last sweep (it sets this itself before that sweep too).
        sink.shared.closed.store(true, Relaxed);
        stop.disarm().cancel();
        if tokio::time::timeout(timeout, task).await.is_err() {
            tracing::warn!("access log writer did not finish within {timeout:?}");
        }
    }
}

#[cfg(test)]
impl LogWriter {
    /// Times the writer woke from a wait.
    pub(super) fn wakes(&self) -> u64 {
        self.sink.shared.wakes.load(Relaxed)
    }

    /// Whether the writer waits for a line with no timer.
    pub(super) fn parked(&self) -> bool {
        self.sink.shared.parked.load(Relaxed)
    }

    /// Poisons the calling thread's shard as a thread that panicked halfway through a line
    /// would: `partial` is appended under the lock, then the lock holder panics.
    pub(super) fn poison_own_shard(&self, partial: &[u8]) {
        let shared = &*self.sink.shared;
        let shard = &shared.shards[SHARD.with(|&i| i)];
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut chunk = shard.lock();
            chunk.buf.extend_from_slice(partial);
            panic!("formatting failed halfway");
        }));
        assert!(caught.is_err() && shard.0.is_poisoned());
    }
}

/// The writer. Waits (parked: for a line or stop; else for the linger, a kick or stop), sweeps,
/// writes; on stop, closes the sink, sweeps and writes a last time.
///
/// Why parking loses no line: a submit appends under its shard's lock, then reads `parked`.
/// The writer sets `parked`, then sweeps every shard under its lock. For any one shard, either
/// the writer's sweep took the lock after the submit (and found the line), or before it; then
/// the submit's lock came after the writer's unlock, which came after `parked` was set, so the
/// submit sees `parked` (or sees it cleared by another submit, which notified). The same
/// argument makes `closed` exact: set before the last sweep, read under the shard's lock.
async fn run<D: Dest>(shared: Arc<Shared>, mut out: D, stop: CancellationToken, linger: Duration) {
    let mut sweep = Sweep::default();
    let mut failing = false;
    // `Shared::new` set `parked`: the writer starts idle.
    let mut parked = true;
    loop {
        if parked {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = shared.notify.notified() => {}
            }
            // The submit that woke us cleared it already, unless a kick did.
            shared.parked.store(false, Relaxed);
            parked = false;
        } else if linger.is_zero() {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::task::yield_now() => {}
            }
        } else {
            // Not parked: submits do not notify (a shard past KICK_BYTES does).
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = shared.notify.notified() => {}
                () = tokio::time::sleep(linger) => {}
            }
        }
        #[cfg(test)]
        shared.wakes.fetch_add(1, Relaxed);
        shared.kicked.store(false, Relaxed);
        if sweep.take(&shared) == 0 {
            // Nothing came: park. Announce it first, then look once more (module docs).
            shared.parked.store(true, Relaxed);
            if sweep.take(&shared) == 0 {
                parked = true;
                continue;
            }
            shared.parked.store(false, Relaxed);
        }
        sweep.write(&mut out, &shared.stats, &mut failing).await;
    }
    // Set before the last sweep, read under each shard's lock: every line is in this sweep or
    // refused (and counted).
    shared.closed.store(true, Relaxed);
    if sweep.take(&shared) > 0 {
        sweep.write(&mut out, &shared.stats, &mut failing).await;
    }
}

/// The writer's side of the shards: a spare buffer per shard, swapped with the shard's at each
/// sweep, so that in steady state neither side allocates.
#[derive(Default)]
struct Sweep {
    bufs: [Vec<u8>; SHARDS],
    lines: [u64; SHARDS],
}

impl Sweep {
    /// Takes every shard's lines (each under its lock, held for a swap); returns how many.
    /// The spares are empty here: each sweep that took lines is written before the next.
    fn take(&mut self, shared: &Shared) -> u64 {
        let mut total = 0;
        for ((shard, buf), lines) in shared
            .shards
            .iter()
            .zip(&mut self.bufs)
            .zip(&mut self.lines)
        {
            let mut chunk = shard.lock();
            if chunk.lines > 0 {
                std::mem::swap(&mut chunk.buf, buf);
                *lines = std::mem::take(&mut chunk.lines);
            }
            drop(chunk);
            total += *lines;
        }
        total
    }

    /// Writes each shard's lines with one `write_all` and a flush, so a failure is counted
    /// against the lines it lost; empties the spares for the next sweep.
    async fn write<D: Dest>(&mut self, out: &mut D, stats: &LogStats, failing: &mut bool) {
        for (buf, lines) in self.bufs.iter_mut().zip(&mut self.lines) {
            let n = std::mem::take(lines);
            if n == 0 {
                continue;
            }
            let (back, result) = out.write_buf(std::mem::take(buf)).await;
            *buf = back;
            match result {
                Ok(()) => {
                    stats.written.fetch_add(n, Relaxed);
                    if *failing {
                        *failing = false;
                        tracing::info!("access log writes work again");
                    }
                }
                Err(e) => {
                    stats.write_failed.fetch_add(n, Relaxed);
                    if !*failing {
                        *failing = true;
                        tracing::warn!(
                            "access log write failed, lines are lost until it recovers: {e}"
                        );
                    }
                }
            }
            buf.clear();
            if buf.capacity() > KEEP_BUFFER {
                buf.shrink_to(KEEP_BUFFER);
            }
        }
    }
}

/// Where a writer's lines go: each swept buffer is written whole and flushed, then handed back
/// (emptied by the writer) for the next sweep.
trait Dest: Send + 'static {
    fn write_buf(&mut self, buf: Vec<u8>)
    -> impl Future<Output = (Vec<u8>, io::Result<()>)> + Send;
}

/// A blocking writer (a file, stdout), written from tokio's blocking pool with the buffer moved
/// there and back: no copy. `None` only if a write task died (the writer is lost with it, and
/// every later write fails and is counted).
struct Blocking<W>(Option<W>);

impl<W: io::Write + Send + 'static> Dest for Blocking<W> {
    async fn write_buf(&mut self, buf: Vec<u8>) -> (Vec<u8>, io::Result<()>) {
        let Some(mut w) = self.0.take() else {
            return (
                buf,
                Err(io::Error::other("the access log's output was lost")),
            );
        };
        let task = tokio::task::spawn_blocking(move || {
            let result = w.write_all(&buf).and_then(|()| w.flush());
            (w, buf, result)
        });
        match task.await {
            Ok((w, buf, result)) => {
                self.0 = Some(w);
                (buf, result)
            }
            Err(e) => (Vec::new(), Err(io::Error::other(e))),
        }
    }
}

/// Any async writer (tests pass in-memory pipes).
struct Async<W>(W);

impl<W: AsyncWrite + Unpin + Send + 'static> Dest for Async<W> {
    async fn write_buf(&mut self, buf: Vec<u8>) -> (Vec<u8>, io::Result<()>) {
        let result = async {
            self.0.write_all(&buf).await?;
            self.0.flush().await
        }
        .await;
        (buf, result)
    }
}

/// One writer per output, kept across config changes: listeners that log to the same place
/// share a writer (lines never interleave), and a reload that keeps an output keeps its buffer.
#[derive(Debug)]
pub struct Writers {
    runtime: Handle,
    capacity: usize,
    writers: HashMap<Output, LogWriter>,
}

impl Writers {
    /// Writers on `runtime` (the control runtime), each taking up to `capacity` lines per
    /// worker thread (per shard) between two sweeps.
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

    /// Stops (after writing the lines they took) the writers of outputs not in `in_use`.
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

    /// Stops every writer after writing the lines it took (on drain).
    pub async fn shutdown(self, timeout: Duration) {
        for (_, w) in self.writers {
            w.shutdown(timeout).await;
        }
    }
}
