//! Per-worker-thread spares of request-path objects (header maps kept for replays, logged
//! requests' record boxes, captured-header lists): a request takes one that already has room
//! instead of allocating, and gives it back emptied when it is done.
//!
//! Why not leave it to the allocator: under load a worker has dozens of requests in flight,
//! more than glibc's per-thread cache kept per size class, so each allocation and free of
//! these took the allocator's slow path. Under mimalloc (the binary's allocator since session
//! 7) the pools still save ≈ 500 instructions per traced, logged or retried request (measured
//! with every pool's `MAX` set to 0), and an emptied object keeps its capacity, which an
//! allocator cannot. Every task of a worker runs on its one thread, so a thread-local
//! `RefCell<Vec<_>>` needs no lock.
//!
//! A pool is declared where its objects live:
//!
//! ```ignore
//! thread_local! {
//!     static MAPS: Spares<HeaderMap, 64> = const { Spares::new() };
//! }
//! let map = Spares::take(&MAPS).unwrap_or_default();
//! Spares::give(&MAPS, map); // emptied by the caller
//! ```

use std::cell::RefCell;
use std::thread::LocalKey;

/// At most `MAX` spare objects of one kind, on one thread.
pub(crate) struct Spares<T, const MAX: usize>(RefCell<Vec<T>>);

impl<T, const MAX: usize> Spares<T, MAX> {
    pub(crate) const fn new() -> Self {
        Self(RefCell::new(Vec::new()))
    }

    /// A spare, if this thread has one (none while the thread is being torn down).
    pub(crate) fn take(key: &'static LocalKey<Self>) -> Option<T> {
        key.try_with(|s| s.0.borrow_mut().pop()).ok().flatten()
    }

    /// Keeps `spare` for the next taker, unless `MAX` are kept already (then it is dropped).
    pub(crate) fn give(key: &'static LocalKey<Self>, spare: T) {
        let _ = key.try_with(|s| {
            let mut s = s.0.borrow_mut();
            if s.len() < MAX {
                s.push(spare);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Spares;

    thread_local! {
        static TWO: Spares<Vec<u8>, 2> = const { Spares::new() };
    }

    /// Last given, first taken (the warmest), and never more than `MAX` kept.
    #[test]
    fn keeps_at_most_max_and_hands_back_the_last_given() {
        assert!(Spares::take(&TWO).is_none());
        for n in 1..=3 {
            Spares::give(&TWO, Vec::with_capacity(n));
        }
        assert_eq!(Spares::take(&TWO).map(|v| v.capacity()), Some(2));
        assert_eq!(Spares::take(&TWO).map(|v| v.capacity()), Some(1));
        assert!(Spares::take(&TWO).is_none());
    }
}
