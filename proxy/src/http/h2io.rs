//! What an HTTP/2 connection (either side) writes through: its frames gathered into one
//! write per poll of the connection, not one per frame.
//!
//! `h2` copies small frames into its own buffer, but hands a DATA payload of 256 bytes or
//! more to the socket as a `writev` of its own (its "chain" threshold with vectored I/O), and
//! flushes after each one. A connection answering ten 1 KiB responses made ten system calls:
//! over h2c, one `writev` per request, where HAProxy made 0.42 `sendto`.
//!
//! [`Writer`] buffers what `h2` writes (tokio's `BufWriter`, 16 KiB: a full default-size
//! DATA frame bypasses it) and decides when a flush writes:
//! - a lone frame goes at once, so a connection carrying one request at a time pays nothing
//!   but the copy;
//! - when frames come together (a second write in the same poll, or already in the last poll
//!   that wrote), the flush is put off: the writer wakes the connection's task and reports the
//!   flush done, and every later flush in that poll is put off too. The next poll (the task
//!   runs again after the tasks already queued, which may queue more frames) writes it all,
//!   and `h2` flushes at the end of every poll that has nothing left to do.
//!
//! So data waits at most one turn of the runtime's queue, and a batch of responses goes out
//! in one write. [`Counted`] tells the writer which poll it is in: the connection's future,
//! counting its polls.
//!
//! Shutdown writes everything out first (`BufWriter`). The buffer is allocated with the
//! connection; its pages are touched only as far as one batch ever fills it.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// A full default-size DATA frame (16 KiB payload plus its 9-byte head) bypasses the buffer.
const CAPACITY: usize = 16 << 10;

/// `io` buffered for `h2`, and the counter its connection's future must be wrapped with
/// ([`Polls::count`]).
pub fn writer<W: AsyncWrite>(io: W) -> (Writer<W>, Polls) {
    let polls = Arc::new(AtomicU64::new(0));
    let writer = Writer {
        io: BufWriter::with_capacity(CAPACITY, io),
        polls: Arc::clone(&polls),
        deferred_at: None,
        batch: Batch::default(),
    };
    (writer, Polls(polls))
}

pin_project! {
    /// See the module docs.
    pub struct Writer<W> {
        #[pin]
        io: BufWriter<W>,
        polls: Arc<AtomicU64>,
        // The poll in which a flush was put off (the task has been woken since).
        deferred_at: Option<u64>,
        batch: Batch,
    }
}

/// Whether frames come together: the writes `h2` made in the last poll that made any (one
/// per chained DATA frame, one for its own buffer), and whether the writing poll before that
/// made more than one.
#[derive(Debug, Default)]
struct Batch {
    poll: u64,
    writes: u32,
    busy: bool,
}

impl Batch {
    fn wrote(&mut self, now: u64) {
        if self.poll != now {
            self.busy = self.writes > 1;
            self.poll = now;
            self.writes = 0;
        }
        self.writes += 1;
    }

    /// Frames came together in this poll, or in the last poll that wrote: worth waiting a
    /// turn for more.
    fn together(&self, now: u64) -> bool {
        self.poll == now && (self.busy || self.writes > 1)
    }
}

/// The poll counter of one connection.
pub struct Polls(Arc<AtomicU64>);

impl Polls {
    /// Wraps the connection's future, which must own the [`Writer`] this came with.
    pub fn count<F: Future>(self, fut: F) -> Counted<F> {
        Counted { fut, polls: self.0 }
    }
}

pin_project! {
    /// A connection's future counting its polls for its [`Writer`].
    pub struct Counted<F> {
        #[pin]
        fut: F,
        polls: Arc<AtomicU64>,
    }
}

impl<F> Counted<F> {
    pub fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().fut
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let me = self.project();
        // Only this task writes it; the writer reads it from inside this same poll.
        let n = me.polls.load(Ordering::Relaxed).wrapping_add(1);
        me.polls.store(n, Ordering::Relaxed);
        me.fut.poll(cx)
    }
}

impl<W: AsyncRead + AsyncWrite> AsyncRead for Writer<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<W: AsyncWrite> AsyncWrite for Writer<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.project();
        me.batch.wrote(me.polls.load(Ordering::Relaxed));
        me.io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.project();
        me.batch.wrote(me.polls.load(Ordering::Relaxed));
        me.io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.project();
        if !me.io.buffer().is_empty() {
            let now = me.polls.load(Ordering::Relaxed);
            match *me.deferred_at {
                // Put off in this poll already: the task will be polled again.
                Some(at) if at == now => return Poll::Ready(Ok(())),
                // Put off in an earlier poll: now it goes, with what came since.
                Some(_) => {}
                None if me.batch.together(now) => {
                    *me.deferred_at = Some(now);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
                // A lone frame goes at once.
                None => {}
            }
        }
        let flushed = me.io.poll_flush(cx);
        if flushed.is_ready() {
            *me.deferred_at = None;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    /// The socket's side: each write it is handed, whole. (What is under test is when the
    /// writer writes, which a real socket would not show.)
    #[derive(Default, Clone)]
    struct Writes(Arc<Mutex<Vec<usize>>>);

    impl Writes {
        fn take(&self) -> Vec<usize> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.0.lock().unwrap().push(n);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection as `h2` drives its socket: each poll writes `frames` frames of 1 KiB,
    /// flushing after each (as it does after a chained DATA payload) and once more at the end.
    struct Conn {
        io: Pin<Box<Writer<Writes>>>,
        frames: Vec<usize>,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let Some(frames) = self.frames.pop() else {
                return Poll::Ready(());
            };
            for _ in 0..frames {
                let frame = [0u8; 1024];
                let io = self.io.as_mut();
                assert!(matches!(io.poll_write(cx, &frame), Poll::Ready(Ok(1024))));
                assert!(self.io.as_mut().poll_flush(cx).is_ready());
            }
            assert!(self.io.as_mut().poll_flush(cx).is_ready());
            Poll::Pending
        }
    }

    /// Polls `frames` (frames per poll, in order) and returns the socket's writes per poll
    /// and the wakes the writer asked for.
    fn drive(frames: &[usize]) -> (Vec<Vec<usize>>, usize) {
        let socket = Writes::default();
        let (io, polls) = writer(socket.clone());
        let conn = Conn {
            io: Box::pin(io),
            frames: frames.iter().rev().copied().collect(),
        };
        let mut conn = Box::pin(polls.count(conn));
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut writes = Vec::new();
        while conn.as_mut().poll(&mut cx).is_pending() {
            writes.push(socket.take());
        }
        (writes, wakes.0.load(Ordering::Relaxed))
    }

    #[test]
    fn a_lone_frame_goes_at_once() {
        let (writes, wakes) = drive(&[1, 1, 1]);
        assert_eq!(writes, [vec![1024], vec![1024], vec![1024]]);
        assert_eq!(wakes, 0);
    }

    #[test]
    fn frames_that_come_together_go_out_together() {
        // Ten frames in one poll: the first goes, the other nine wait for the next poll,
        // which writes them in one. Frames came together, so the next poll that writes waits
        // from its first frame, and so does the one after (the poll before it had three).
        // After a poll with a lone frame, a lone frame goes at once again.
        let (writes, wakes) = drive(&[10, 0, 3, 0, 1, 0, 1, 1]);
        assert_eq!(
            writes,
            [
                vec![1024],
                vec![9 * 1024],
                vec![],
                vec![3 * 1024],
                vec![],
                vec![1024],
                vec![1024],
                vec![1024],
            ]
        );
        // Each put-off flush woke the task once, however many frames it held back.
        assert_eq!(wakes, 3);
    }

    #[tokio::test]
    async fn shutdown_writes_what_waits() -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let socket = Writes::default();
        let (io, polls) = writer(socket.clone());
        let mut io = Box::pin(io);
        polls
            .count(std::future::poll_fn(|cx| {
                for _ in 0..2 {
                    let _ = io.as_mut().poll_write(cx, &[0u8; 1024]);
                    let _ = io.as_mut().poll_flush(cx);
                }
                Poll::Ready(())
            }))
            .await;
        assert_eq!(socket.take(), [1024]);
        io.shutdown().await?;
        assert_eq!(socket.take(), [1024]);
        Ok(())
    }
}
