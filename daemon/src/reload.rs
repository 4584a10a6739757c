//! Config reload: parse the file, build a complete new [`Routing`] (every plugin's `new`
//! must accept its config), and only then swap it in. A bad file leaves the running config
//! in place and emits `config_rejected` with the reason; a good one emits
//! `config_reloaded`. Settings that need a restart (paths, socket, listener) are kept and
//! named in the result.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use herald_plugin_api::EventKind;

use crate::clock;
use crate::commit::Committer;
use crate::config::Config;
use crate::live::Live;
use crate::plugin::Loader;
use crate::providers::Routing;
use crate::store::Op;

pub struct Reloader {
    pub path: Option<PathBuf>,
    pub live: Arc<RwLock<Arc<Live>>>,
    pub loader: Mutex<Loader>,
    pub committer: Committer,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

impl Reloader {
    fn current(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => Arc::clone(&l),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn attempt(&self) -> Result<String, String> {
        let path = self.path.as_ref().ok_or_else(|| {
            "heraldd runs on the embedded default config; start it with --config FILE to reload"
                .to_string()
        })?;
        let mut config = Config::load(path).map_err(|e| e.to_string())?;
        let old = self.current();
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
            ] {
                if changed {
                    kept.push(name);
                }
            }
            let max_queue = config.daemon.max_queue;
            let max_message = config.daemon.max_message;
            let retention = config.daemon.retention_ms;
            let window = config.daemon.idempotency_window_ms;
            config.daemon = old.config.daemon.clone();
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
        let routing = {
            let mut loader = self.loader.lock().unwrap_or_else(|p| p.into_inner());
            Routing::build(&config, &mut loader, Some(&old.routing), clock::now_ms())?
        };
        let summary = format!(
            "{} providers, routes: {}",
            routing.providers.len(),
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
        let new = Arc::new(Live { config, routing });
        match self.live.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
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
