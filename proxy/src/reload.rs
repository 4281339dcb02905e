//! Live config: the file is re-read on change (inotify, through `notify`) and on SIGHUP, then
//! applied; an invalid file is refused and the running config keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::app::{Proxy, read_config};

/// Editors and `kubectl`-style tools write in several steps; wait for the burst to end.
const SETTLE: Duration = Duration::from_millis(100);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    FileChanged,
    /// Forces a reload even when the file is unchanged.
    Sighup,
}

pub fn spawn(proxy: Arc<Proxy>, path: PathBuf, applied: String) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();

    // Watch the directory, not the file: an atomic rename replaces the file's inode.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let name = path.file_name().map(|n| n.to_os_string());
    let file_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = file_tx.send(Trigger::FileChanged);
        }
    });
    let watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config; SIGHUP still reloads");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; SIGHUP still reloads");
            None
        }
    };

    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    let _ = tx.send(Trigger::Sighup);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP"),
        }
    });

    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last = applied;
        while let Some(mut why) = rx.recv().await {
            // Coalesce the burst of events one save makes.
            while let Ok(Some(w)) = tokio::time::timeout(SETTLE, rx.recv()).await {
                if w == Trigger::Sighup {
                    why = w;
                }
            }
            let text = match read_config(&path) {
                Ok(t) => t,
                Err(e) => {
                    proxy.shared.metrics.reload(false);
                    tracing::error!("config refused, the running config keeps serving: {e}");
                    continue;
                }
            };
            // Unchanged content (a touch, a no-op save) is not a new version; SIGHUP forces one.
            if text == last && why != Trigger::Sighup {
                continue;
            }
            let source = format!("{} ({why:?})", path.display());
            if proxy.apply_yaml(&text, &source).is_ok() {
                last = text;
            }
        }
    });
}
