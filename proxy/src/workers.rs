//! Worker threads: each runs a single-threaded tokio runtime (thread-per-core, as nginx and
//! Envoy do) with its own listening sockets and its own upstream connection pool.

use std::cell::Cell;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::listener::{self, Accept};

/// Handles to the worker threads: commands go in, nothing comes back.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Accept>>,
}

impl Workers {
    pub fn spawn(n: usize) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            thread::Builder::new()
                .name(format!("tern-worker-{i}"))
                .spawn(move || {
                    WORKER.set(i);
                    rt.block_on(run(rx))
                })?;
            senders.push(tx);
        }
        Ok(Self { senders })
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Hands worker `i` a listener to accept on.
    pub fn listen(&self, i: usize, accept: Accept) {
        if let Some(tx) = self.senders.get(i)
            && tx.send(accept).is_err()
        {
            tracing::error!(worker = i, "worker is gone; listener not started");
        }
    }
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker number (0 outside workers).
pub fn current() -> usize {
    WORKER.get()
}

async fn run(mut rx: mpsc::UnboundedReceiver<Accept>) {
    // Idle upstream connections past their timeout are closed even if never checked out again.
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            crate::http::pool::sweep();
        }
    });
    while let Some(accept) = rx.recv().await {
        tokio::spawn(listener::accept_loop(accept));
    }
    // All senders dropped: the process is exiting; keep serving until it does.
    std::future::pending::<()>().await;
}

/// The CPUs this process may use: honours affinity masks and cgroup CPU quotas.
pub fn available_cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}
