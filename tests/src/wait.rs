//! Waiting on conditions with deadlines, so tests never sleep for luck.

use std::time::Duration;

use tokio::time::{Instant, sleep};

/// How often conditions are re-checked: short enough that tests finish soon after the
/// condition holds, long enough not to flood the proxy's admin port.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` every [`POLL_INTERVAL`] until it returns `true`; panics naming `what`
/// once `timeout` has passed. The condition is async so it can ask the proxy (metrics,
/// admin endpoints) as well as read local counters:
///
/// ```no_run
/// # async fn f(backend: tern_e2e::TestBackend) {
/// use std::time::Duration;
/// tern_e2e::wait_for("3 requests at backend a", Duration::from_secs(5), async || {
///     backend.requests() == 3
/// })
/// .await;
/// # }
/// ```
pub async fn wait_for(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    wait_for_value(what, timeout, async || condition().await.then_some(())).await
}

/// Like [`wait_for`], for conditions that produce the value the test goes on with (a metric
/// once it appears, a config once it changed): returns the first `Some`.
pub async fn wait_for_value<T>(
    what: &str,
    timeout: Duration,
    probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    wait_for_value_explained(what, timeout, probe, String::new).await
}

/// Like [`wait_for_value`], adding `explain()` (what was seen instead) to the timeout's panic.
pub async fn wait_for_value_explained<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what}{}",
                explain()
            );
        }
        sleep(POLL_INTERVAL).await;
    }
}
