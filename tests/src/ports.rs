//! Loopback ports for the proxy's listeners, which cannot bind port 0 yet.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, MutexGuard};

/// Ports handed to proxies by this test process. Tests run in parallel threads: without this
/// record, two tests could both be given a port the kernel freed in between, or a backend's
/// `bind(0)` could land on a port a proxy is about to bind.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn handed_out() -> MutexGuard<'static, Option<HashSet<u16>>> {
    // A test that panicked while holding the lock leaves a set that is still correct.
    HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loopback port that nothing listens on right now and that no other caller in this
/// process has been given. The kernel may still give it to another process (or to an
/// outgoing connection) before the proxy binds it: `Proxy::start` retries once on
/// "address in use" with fresh ports.
pub fn free_port() -> u16 {
    // Listeners that drew an already handed-out port stay bound until we are done, so the
    // kernel cannot offer the same port again on the next try.
    let mut held = Vec::new();
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        let mut guard = handed_out();
        let set = guard.get_or_insert_with(HashSet::new);
        if set.insert(port) {
            return port;
        }
        held.push(listener);
    }
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

/// Binds `127.0.0.1:0` for a test server, avoiding ports already promised to a proxy (the
/// proxy would then fail to bind them and the test would fail for no reason of its own).
pub(crate) fn bind_loopback() -> TcpListener {
    let mut held = Vec::new();
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding 127.0.0.1:0 for a test server");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        let promised = handed_out().as_ref().is_some_and(|set| set.contains(&port));
        if !promised {
            return listener;
        }
        held.push(listener);
    }
}
