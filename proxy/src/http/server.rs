//! Serves one downstream connection as HTTP/1.1 (our server, `h1`) or HTTP/2 (hyper's),
//! honouring the listener's limits and the drain signal (HTTP/1 finishes its exchange and
//! closes; HTTP/2 gets a GOAWAY).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;
use crate::detect::Prefixed;
use crate::http::proxy::{ConnCtx, handle};
use crate::snapshot::ListenerSnapshot;

pub mod h1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// Open requests of one connection and when it last had none: the `header_read_timeout` rule
/// for both protocols. A connection with no request open for that long (a client that sends
/// nothing, trickles a request head, or never finishes an HTTP/2 HEADERS block; or an idle
/// keep-alive connection) is closed. It costs two atomic operations and a clock read per
/// request, and one timer per connection that fires once per timeout (hyper armed a boxed
/// timer for every HTTP/1 head).
///
/// An HTTP/1 request stays open until its answer's last byte is written (the server drops the
/// body after its last write). Under HTTP/2 a body that has ended may still wait in hyper's
/// buffer for a slow reader to make room in the socket: `Watched` marks the connection busy
/// while a write waits, so its tail is not cut off.
pub struct Activity {
    open: AtomicUsize,
    /// The last write to the client found its socket full.
    write_blocked: AtomicBool,
    /// Milliseconds after `start` when the last stream ended.
    idle_since_ms: AtomicU64,
    start: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            write_blocked: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    pub fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }

    /// When the connection went idle, or `None` while a stream is open or a write waits.
    fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 || self.write_blocked.load(Ordering::Relaxed) {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.start + Duration::from_millis(ms))
    }
}

/// Counts one open stream until dropped (with its response body).
#[derive(Debug)]
pub struct StreamGuard(Arc<Activity>);

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Release);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one accepted connection: HTTP/1.1 with our own server, HTTP/2 with hyper's.
/// `prefix`: bytes already read from it (protocol detection).
pub async fn serve_tcp(
    stream: tokio::net::TcpStream,
    prefix: bytes::BytesMut,
    version: HttpVersion,
    settings: &HttpSettings,
    listener: Arc<ArcSwap<ListenerSnapshot>>,
    client: SocketAddr,
    drain: CancellationToken,
) {
    if version == HttpVersion::Http2 {
        let io = Prefixed::new(prefix, stream);
        // Boxed (once per connection): its state machine is not polled along with every
        // HTTP/1.1 request's, which then touches fewer code lines (`instructions --cache-sim`).
        return Box::pin(serve_h2(io, settings, listener, client, drain)).await;
    }
    let activity = Arc::new(Activity::new());
    let ctx = Arc::new(ConnCtx {
        listener,
        client,
        activity: Arc::clone(&activity),
    });
    let limits = h1::Limits {
        max_head_bytes: settings.max_header_bytes,
        max_headers: settings.max_headers,
    };
    let idle_limit = settings.header_read_timeout;
    let conn = h1::serve(stream, prefix, limits, ctx, drain.clone());
    tokio::pin!(conn);
    let watch = watch(&drain, &activity, idle_limit);
    tokio::pin!(watch);
    match Gated::new(conn.as_mut(), watch).await {
        Ended::Conn(()) => {}
        // Draining with a request open: the server closes once it is answered.
        Ended::Watch(Stop::Drain) if activity.idle_since().is_none() => conn.await,
        Ended::Watch(Stop::Drain) => {}
        Ended::Watch(Stop::Idle) => {
            tracing::debug!(%client, "closing a connection idle for header_read_timeout");
        }
    }
}

/// Serves HTTP/2 on any byte stream (hyper's server). A drain sends GOAWAY and lets the open
/// streams finish; an idle connection gets GOAWAY and little time.
pub async fn serve_h2<I>(
    io: I,
    settings: &HttpSettings,
    listener: Arc<ArcSwap<ListenerSnapshot>>,
    client: SocketAddr,
    drain: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let ctx = Arc::new(ConnCtx {
        listener,
        client,
        activity: Arc::clone(&activity),
    });
    let svc = service_fn(move |req| handle(req, Arc::clone(&ctx)));
    let (io, polls) = super::h2io::writer(Watched {
        io,
        activity: Arc::clone(&activity),
    });
    let idle_limit = settings.header_read_timeout;
    let watch = watch(&drain, &activity, idle_limit);
    tokio::pin!(watch);
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(2 << 20);
    let conn = polls.count(b.serve_connection(TokioIo::new(io), svc));
    tokio::pin!(conn);
    let result = match Gated::new(conn.as_mut(), watch).await {
        Ended::Conn(r) => r,
        Ended::Watch(Stop::Drain) => {
            conn.as_mut().inner().graceful_shutdown();
            conn.await
        }
        Ended::Watch(Stop::Idle) => {
            tracing::debug!(%client, "closing an HTTP/2 connection idle for header_read_timeout");
            conn.as_mut().inner().graceful_shutdown();
            // GOAWAY waits for the client's PING ack; a stalled client never sends one, and no
            // stream is open: don't wait long.
            tokio::time::timeout(idle_limit, conn)
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "downstream connection ended with an error");
    }
}

/// Resolves when the connection must end from our side: the listener drains, or no request
/// has been open for `idle_limit`.
async fn watch(drain: &CancellationToken, activity: &Activity, idle_limit: Duration) -> Stop {
    tokio::select! {
        biased;
        () = drain.cancelled() => Stop::Drain,
        () = until_idle_too_long(activity, idle_limit) => Stop::Idle,
    }
}

/// What ends a connection from our side.
enum Stop {
    /// The listener is draining (shutdown, or removed by a reload).
    Drain,
    /// No request open for `header_read_timeout`.
    Idle,
}

enum Ended<R> {
    Conn(R),
    Watch(Stop),
}

/// Polls the connection at every wake of its task, and the watch (drain signal, idle timer)
/// only when the watch's own waker fired. A connection's task wakes several times per
/// request; its watch a few times per connection. Polling both each time (`select!`) cost
/// about 250 instructions per wake: a notified future and a timer entry checked for nothing.
struct Gated<'a, C, W> {
    conn: Pin<&'a mut C>,
    watch: Pin<&'a mut W>,
    flag: Arc<WatchWake>,
    /// The waker the watch is polled with: it marks the flag, then wakes the task.
    waker: std::task::Waker,
}

struct WatchWake {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for WatchWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a, C, W> Gated<'a, C, W> {
    fn new(conn: Pin<&'a mut C>, watch: Pin<&'a mut W>) -> Self {
        // Woken to begin with: the first poll arms the watch's timer and signal.
        let flag = Arc::new(WatchWake {
            woken: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        });
        Self {
            conn,
            watch,
            waker: std::task::Waker::from(Arc::clone(&flag)),
            flag,
        }
    }
}

impl<C: Future, W: Future<Output = Stop>> Future for Gated<'_, C, W> {
    type Output = Ended<C::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.flag.task.register(cx.waker());
        if let Poll::Ready(r) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Ended::Conn(r));
        }
        if this.flag.woken.swap(false, Ordering::AcqRel) {
            let mut watch_cx = Context::from_waker(&this.waker);
            if let Poll::Ready(stop) = this.watch.as_mut().poll(&mut watch_cx) {
                return Poll::Ready(Ended::Watch(stop));
            }
        }
        Poll::Pending
    }
}

/// Resolves once the connection has had no request open for `limit`. Its timer fires once per
/// `limit` while requests come and go, not once per request.
async fn until_idle_too_long(activity: &Activity, limit: Duration) {
    let mut deadline = Instant::now() + limit;
    loop {
        tokio::time::sleep_until(deadline).await;
        match activity.idle_since() {
            Some(since) if since + limit <= Instant::now() => return,
            Some(since) => deadline = since + limit,
            None => deadline = Instant::now() + limit,
        }
    }
}

/// The client connection, noting in its `Activity` whether the last write waited for room.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    fn note<T>(&self, r: Poll<T>) -> Poll<T> {
        let blocked = r.is_pending();
        let flag = &self.activity.write_blocked;
        if flag.load(Ordering::Relaxed) != blocked {
            flag.store(blocked, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::Config;
    use crate::http::observe::Sinks;
    use crate::snapshot::{self, Shared};

    const BODY: usize = 4 << 20;

    /// The watch is polled once to arm it, then only when its own waker fires: a connection
    /// woken a hundred times polls it once; once the watch's signal fires, it ends the
    /// connection's wait at the next wake.
    #[tokio::test]
    async fn the_watch_is_polled_only_when_it_was_woken() {
        let wakes = std::sync::atomic::AtomicUsize::new(0);
        let conn = std::future::poll_fn(|cx| {
            if wakes.fetch_add(1, Ordering::Relaxed) < 100 {
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        });
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let drain = CancellationToken::new();
        let watch = async {
            let cancelled = drain.cancelled();
            tokio::pin!(cancelled);
            std::future::poll_fn(|cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                cancelled.as_mut().poll(cx).map(|()| Stop::Drain)
            })
            .await
        };
        tokio::pin!(conn);
        tokio::pin!(watch);
        let mut gated = Gated::new(conn.as_mut(), watch.as_mut());
        let woken_out = tokio::time::timeout(Duration::from_millis(200), &mut gated).await;
        assert!(woken_out.is_err(), "nothing ended the wait");
        assert!(wakes.load(Ordering::Relaxed) > 100);
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "the watch was polled on the connection's wakes"
        );
        drain.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), gated)
            .await
            .expect("the drain signal ends the wait");
        assert!(matches!(ended, Ended::Watch(Stop::Drain)));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    /// A backend answering every request with `BODY` bytes.
    async fn backend() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(vec![
                            7u8;
                            BODY
                        ]))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// The idle rule must not cut off a response still going out to a client that reads
    /// slowly: the request counts as open until its last byte is written, not when the
    /// upstream's body ends. The client's receive buffer is 16 KiB and it pauses for three
    /// idle limits with the 4 MiB answer mostly unsent.
    #[tokio::test]
    async fn a_response_still_going_out_keeps_its_connection_past_the_idle_limit() {
        let upstream = backend().await;
        let yaml = format!(
            "listeners:
  - name: l
    address: 127.0.0.1:0
    protocol: http1
    http: {{header_read_timeout: 200ms}}
    routes:
      - name: all
        backends: [{{name: b}}]
backends:
  - name: b
    endpoints: [{upstream}]
"
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let snap = snapshot::compile(config, None, &Shared::new(), 1, 1, &Sinks::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = Arc::clone(snap.listener("l").unwrap());
        let settings = listener.http.clone();
        let accept = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = accept.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (stream, peer) = accept.accept().await.unwrap();
            serve_tcp(
                stream,
                bytes::BytesMut::new(),
                HttpVersion::Http1,
                &settings,
                Arc::new(ArcSwap::new(listener)),
                peer,
                CancellationToken::new(),
            )
            .await;
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut client = socket.connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: l\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        let n = client.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the connection closes once idle")
            .unwrap();
        let mut all = first[..n].to_vec();
        all.extend_from_slice(&rest);
        let head = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            all.len() - head,
            BODY,
            "the response was cut off by the idle limit"
        );
        served.await.unwrap();
    }
}
