//! Upstream connections, pooled per worker thread and indexed by endpoint slot. Every task of a
//! worker runs on the worker's one thread, so the pool is a thread-local `RefCell`: no lock, no
//! hashing, and checkout is a `Vec` pop. HTTP/1 connections (our own client, `client.rs`) are
//! held by one exchange at a time and come back when the response body has been read to its
//! end; an HTTP/2 connection (`h2client`) is shared by every request to its endpoint.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use crate::breaker::{Permit, Resource};
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::http::client::{Conn, Connection};
use crate::http::h2client::H2Conn;
use crate::snapshot::{BackendRt, EndpointRt};

#[derive(Default)]
struct Slot {
    /// Idle HTTP/1 connections with the instant each expires, most recently used last (LIFO
    /// keeps the hot ones warm).
    idle: Vec<(Conn, Instant)>,
    h2: Option<H2Conn>,
    /// An HTTP/2 connect in progress: a burst of requests to a cold endpoint waits for this
    /// one connection instead of opening one each (RFC 9113 §9.1).
    h2_connecting: Option<Arc<OnceCell<Result<H2Conn, ProxyError>>>>,
}

thread_local! {
    static POOL: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

fn with_slot<R>(slot: usize, f: impl FnOnce(&mut Slot) -> R) -> R {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() <= slot {
            p.resize_with(slot + 1, Slot::default);
        }
        f(&mut p[slot])
    })
}

/// A connection ready for one request.
pub enum Checkout {
    H1(Conn, Returner),
    H2(H2Conn),
}

/// Where an HTTP/1 connection goes back once its exchange is complete (a connection that is
/// never given back is closed when dropped: its exchange did not finish cleanly).
#[derive(Debug, Clone, Copy)]
pub struct Returner {
    slot: usize,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Returner {
    pub fn release(self, conn: Conn) {
        let expires = Instant::now() + self.idle_timeout;
        with_slot(self.slot, |slot| {
            if slot.idle.len() < self.max_idle {
                slot.idle.push((conn, expires));
            }
        });
    }
}

/// A connection to `ep`: pooled if one is idle and alive (and not past its idle deadline at
/// `now`), else a new one.
pub async fn checkout(
    backend: &BackendRt,
    ep: &EndpointRt,
    now: Instant,
) -> Result<Checkout, ProxyError> {
    let s = &backend.settings;
    match s.protocol {
        UpstreamProtocol::Http1 => {
            let returner = Returner {
                slot: ep.slot,
                max_idle: s.max_idle_per_endpoint,
                idle_timeout: s.idle_timeout,
            };
            while let Some((mut conn, expires)) = with_slot(ep.slot, |slot| slot.idle.pop()) {
                if conn.is_usable() && now <= expires {
                    return Ok(Checkout::H1(conn, returner));
                }
            }
            // Boxed: connecting is rare, and its future (socket, timeout) would otherwise
            // make every request's future larger, to be copied at each step.
            let conn = Box::pin(connect_fresh_h1(backend, ep)).await?;
            Ok(Checkout::H1(conn, returner))
        }
        UpstreamProtocol::Http2 => {
            if let Some(live) = live_h2(ep.slot) {
                return Ok(Checkout::H2(live));
            }
            // Boxed: connecting is rare (see above).
            Box::pin(h2(backend, ep)).await.map(Checkout::H2)
        }
    }
}

/// The endpoint's HTTP/2 connection if it is open.
fn live_h2(slot: usize) -> Option<H2Conn> {
    with_slot(slot, |slot| {
        slot.h2.as_ref().filter(|c| !c.is_closed()).cloned()
    })
}

/// The endpoint's shared HTTP/2 connection, opened if there is none (or it is closed).
pub async fn h2(backend: &BackendRt, ep: &EndpointRt) -> Result<H2Conn, ProxyError> {
    if let Some(live) = live_h2(ep.slot) {
        return Ok(live);
    }
    // No await since the check: no other task of this worker can have connected meanwhile.
    let cell = with_slot(ep.slot, |slot| {
        Arc::clone(
            slot.h2_connecting
                .get_or_insert_with(|| Arc::new(OnceCell::new())),
        )
    });
    let s = &backend.settings;
    let result = cell
        .get_or_init(|| {
            Box::pin(async {
                let permit = permits(backend)?;
                connect_h2(ep.addr, s.connect_timeout, permit).await
            })
        })
        .await
        .clone();
    with_slot(ep.slot, |slot| {
        // The first waiter to wake installs the connection and clears the marker; after a
        // failure the next request tries afresh.
        if slot
            .h2_connecting
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            slot.h2_connecting = None;
            if let Ok(conn) = &result {
                slot.h2 = Some(conn.clone());
            }
        }
    });
    result
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            return Err(ProxyError::ConnectFailed);
        }
        Err(_) => {
            tracing::debug!(%addr, ?timeout, "upstream connect timed out");
            return Err(ProxyError::ConnectFailed);
        }
    };
    // Small requests and responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The circuit-breaker permits a new connection needs: one for the connection (kept by its
/// task for its lifetime) and one for the request waiting on it (held only while connecting;
/// returned with the connection permit, the caller drops it once connected).
fn permits(backend: &BackendRt) -> Result<(Permit, Permit), ProxyError> {
    let (counters, limits) = (&backend.counters, &backend.limits);
    let Some(conn) = counters.try_acquire_connection(limits) else {
        backend.metrics.overflow(Resource::Connections);
        return Err(ProxyError::Overflow);
    };
    let Some(pending) = counters.try_acquire_pending(limits) else {
        backend.metrics.overflow(Resource::Pending);
        return Err(ProxyError::Overflow);
    };
    Ok((conn, pending))
}

async fn connect_h2(
    addr: SocketAddr,
    timeout: Duration,
    (conn_permit, pending): (Permit, Permit),
) -> Result<H2Conn, ProxyError> {
    let io = connect(addr, timeout).await?;
    let conn = crate::http::h2client::handshake(io, addr, conn_permit).await?;
    drop(pending);
    Ok(conn)
}

/// Closes this worker's idle connections past their idle timeout (run periodically per worker,
/// so connections to endpoints that are gone do not linger).
pub fn sweep() {
    let now = Instant::now();
    POOL.with(|p| {
        for slot in p.borrow_mut().iter_mut() {
            slot.idle
                .retain_mut(|(c, expires)| now <= *expires && c.is_usable());
            if slot.h2.as_ref().is_some_and(|s| s.is_closed()) {
                slot.h2 = None;
            }
        }
    });
}

/// Whether the most recently pooled idle connection of `slot` would be used (tests: to wait
/// until a close by the upstream has been seen).
#[cfg(test)]
pub fn last_idle_usable(slot: usize) -> Option<bool> {
    with_slot(slot, |s| s.idle.last_mut().map(|(c, _)| c.is_usable()))
}

/// A new HTTP/1 connection, bypassing the idle list (also used when a pooled one proved dead).
pub async fn connect_fresh_h1(backend: &BackendRt, ep: &EndpointRt) -> Result<Conn, ProxyError> {
    let (conn_permit, pending) = permits(backend)?;
    let io = connect(ep.addr, backend.settings.connect_timeout).await?;
    drop(pending);
    Ok(Connection::new(io, conn_permit))
}
