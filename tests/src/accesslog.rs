//! Reading the proxy's access log: a file in a temp dir of its own, parsed as JSON lines,
//! with waits for lines that the proxy writes off the request path (so after the response).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::time::{Instant, sleep};

use crate::wait::POLL_INTERVAL;

/// An access-log file for one test: `access.log` in a fresh temp dir (removed on drop). The
/// proxy creates it on its first write; until then it reads as empty.
pub struct AccessLogFile {
    path: PathBuf,
    _dir: TempDir,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessLogFile {
    pub fn new() -> AccessLogFile {
        let dir = tempfile::Builder::new()
            .prefix("tern-e2e-log-")
            .tempdir()
            .expect("creating a temp dir for an access log");
        AccessLogFile {
            path: dir.path().join("access.log"),
            _dir: dir,
        }
    }

    /// The absolute path, for `access_log.path`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text so far (empty when the proxy has not created it yet).
    pub fn text(&self) -> String {
        match std::fs::read(&self.path) {
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_else(|e| {
                panic!(
                    "access log {} is not UTF-8 (every line must be JSON): {e}",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("reading access log {}: {e}", self.path.display()),
        }
    }

    /// Every complete line (ended by a newline) as JSON; a line still being written is left
    /// for the next call. Panics on a line that is not a JSON object: the format promises one
    /// object per line, whatever the request held.
    pub fn lines(&self) -> Vec<Value> {
        let text = self.text();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .split('\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"));
                assert!(
                    value.is_object(),
                    "access log line is not an object: {line}"
                );
                value
            })
            .collect()
    }

    /// Waits until at least `n` lines are there and returns them all.
    pub async fn wait_for_lines(&self, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait(&format!("{n} access log line(s)"), timeout, || {
            let lines = self.lines();
            (lines.len() >= n).then_some(lines)
        })
        .await
    }

    /// Waits for the line whose `request_id` is `request_id` and returns it; panics if two
    /// lines carry it (one line per request).
    pub async fn wait_for_request(&self, request_id: &str, timeout: Duration) -> Value {
        let what = format!("the access log line of request {request_id}");
        self.wait(&what, timeout, || {
            let mut matching: Vec<Value> = self
                .lines()
                .into_iter()
                .filter(|line| line["request_id"] == request_id)
                .collect();
            assert!(
                matching.len() <= 1,
                "{} access log lines for request {request_id}: {matching:#?}",
                matching.len()
            );
            matching.pop()
        })
        .await
    }

    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} in {}; the file holds:\n{}",
                    self.path.display(),
                    self.text()
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }
}
