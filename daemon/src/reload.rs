//! Config reload: parse the file, build a complete new [`Routing`] (every plugin's `new`
//! must accept its config), and only then swap it in. A bad file leaves the running config
//! in place and emits `config_rejected` with the reason; a good one emits
//! `config_reloaded`. Settings that need a restart (paths, socket, listener) are kept and
//! named in the result.
//!
//! Triggers: SIGHUP and `herald reload` always reload; a change of the file (watched
//! through its parent directory, so editors that save by rename are seen) reloads after a
//! short debounce, and only if the content really changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_plugin_api::EventKind;

use crate::clock;
use crate::commit::Committer;
use crate::config::Config;
use crate::live::{Live, LiveCell};
use crate::plugin::Loader;
use crate::providers::Routing;
use crate::store::{Op, Store};

pub struct Reloader {
    pub path: Option<PathBuf>,
    pub live: Arc<LiveCell>,
    pub loader: Mutex<Loader>,
    pub committer: Committer,
    /// Read for the stored breaker state of providers the reload adds back.
    pub store: Arc<dyn Store>,
    /// The file content last tried (accepted or rejected), so a watcher event that did not
    /// change it does not reload again.
    pub last_text: Mutex<Option<String>>,
}

/// How long the watcher waits for a burst of file events to settle.
const DEBOUNCE: Duration = Duration::from_millis(300);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

impl Reloader {
    fn attempt(&self) -> Result<String, String> {
        let path = self.path.as_ref().ok_or_else(|| {
            "heraldd runs on the embedded default config; start it with --config FILE to reload"
                .to_string()
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        *self.last_text.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.clone());
        let mut config =
            Config::parse_at(&text, &path.display().to_string(), path.parent(), &|k| {
                std::env::var(k).ok()
            })
            .map_err(|e| e.to_string())?;
        let old = self.live.current();
        // Restart-only settings keep their running values.
        let mut kept = Vec::new();
        if config.daemon != old.config.daemon {
            let (n, o) = (&config.daemon, &old.config.daemon);
            for (name, changed) in [
                ("daemon.data_dir", n.data_dir != o.data_dir),
                ("daemon.socket", n.socket != o.socket),
                ("daemon.socket_mode", n.socket_mode != o.socket_mode),
                ("daemon.plugin_dir", n.plugin_dir != o.plugin_dir),
                (
                    "daemon.cache_capacity",
                    n.cache_capacity != o.cache_capacity,
                ),
                ("daemon.concurrency", n.concurrency != o.concurrency),
                ("daemon.max_frame", n.max_frame != o.max_frame),
                (
                    "daemon.storage_timeout",
                    n.storage_timeout_ms != o.storage_timeout_ms,
                ),
            ] {
                if changed {
                    kept.push(name);
                }
            }
            let max_queue = config.daemon.max_queue;
            let max_message = config.daemon.max_message;
            let retention = config.daemon.retention_ms;
            let window = config.daemon.idempotency_window_ms;
            let min_free = config.daemon.min_free;
            let max_connections = config.daemon.max_connections;
            let max_unread_bytes = config.daemon.max_unread_bytes;
            config.daemon = old.config.daemon.clone();
            config.daemon.min_free = min_free;
            config.daemon.max_connections = max_connections;
            config.daemon.max_unread_bytes = max_unread_bytes;
            config.daemon.max_queue = max_queue;
            config.daemon.max_message = max_message;
            config.daemon.retention_ms = retention;
            config.daemon.idempotency_window_ms = window;
        }
        if config.webhooks.as_ref().map(|w| w.listen)
            != old.config.webhooks.as_ref().map(|w| w.listen)
        {
            kept.push("webhooks.listen");
        }
        if config.webhooks.as_ref().map(|w| w.max_connections)
            != old.config.webhooks.as_ref().map(|w| w.max_connections)
        {
            kept.push("webhooks.max_connections");
        }
        // The admin listener is bound at start; [realtime] applies to new streams at once.
        if config.admin != old.config.admin {
            kept.push("admin");
            config.admin = old.config.admin.clone();
        }
        // The store is opened at start.
        if config.store != old.config.store {
            kept.push("store");
            config.store = old.config.store.clone();
        }
        // The store keyed its entries with the running rules at start.
        if config.recipients != old.config.recipients {
            kept.push("recipients.email_case");
            config.recipients = old.config.recipients;
        }
        let stored = self
            .store
            .breakers()
            .map_err(|e| format!("cannot read the stored breaker states: {e}"))?;
        let routing = {
            let mut loader = self.loader.lock().unwrap_or_else(|p| p.into_inner());
            Routing::build(
                &config,
                &mut loader,
                Some(&old.routing),
                &stored,
                clock::now_ms(),
            )?
        };
        let n = routing.providers.len();
        let summary = format!(
            "{n} provider{}, routes: {}",
            if n == 1 { "" } else { "s" },
            routing
                .routes
                .iter()
                .map(|(c, ps)| format!(
                    "{c} = [{}]",
                    ps.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        self.live.replace(Live { config, routing });
        Ok(if kept.is_empty() {
            summary
        } else {
            format!("{summary} (restart to apply {})", kept.join(", "))
        })
    }

    /// Reloads and records the outcome as an event.
    pub async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let this = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || this.attempt())
            .await
            .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
        let (kind, detail) = match &result {
            Ok(d) => {
                tracing::info!(detail = %d, "config reloaded");
                (EventKind::ConfigReloaded, d.clone())
            }
            Err(e) => {
                tracing::warn!(reason = %e, "config rejected; the running config stays");
                (EventKind::ConfigRejected, e.clone())
            }
        };
        if let Err(e) = self.committer.submit(Op::Note { kind, detail }).await {
            tracing::error!(error = %e, "could not record the reload event");
        }
        result
    }
}

impl Reloader {
    fn changed_on_disk(&self, path: &Path) -> bool {
        let now = std::fs::read_to_string(path).ok();
        let last = self.last_text.lock().unwrap_or_else(|p| p.into_inner());
        now.is_some() && *last != now
    }

    /// Watches the config file; returns the watcher, which must be kept alive.
    pub fn watch(self: &Arc<Self>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let path = self.path.clone()?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let name = path.file_name()?.to_os_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = match notify::recommended_watcher(
            move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == Some(name.as_os_str()))
                {
                    let _ = tx.try_send(());
                }
            },
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or `herald reload`");
                return None;
            }
        };
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP or `herald reload`");
            return None;
        }
        if let Ok(text) = std::fs::read_to_string(&path) {
            *self.last_text.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
        }
        // Weak: the watcher must not keep the reloader (and its committer) alive, or the
        // commit thread would wait for it at shutdown.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let a burst of events (truncate, write, rename) settle.
                while tokio::time::timeout(DEBOUNCE, rx.recv())
                    .await
                    .is_ok_and(|r| r.is_some())
                {}
                let Some(this) = weak.upgrade() else { return };
                if this.changed_on_disk(&path) {
                    tracing::info!(file = %path.display(), "config file changed: reloading");
                    let _ = this.reload().await;
                }
            }
        });
        Some(watcher)
    }
}
