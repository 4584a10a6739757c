//! Start-up, the running daemon's tasks, and graceful shutdown.
//!
//! Start: check the socket is not live, create the data dir (0700), refuse a filesystem
//! below `daemon.min_free` (naming it and what to do), open the store, start the
//! committer, check and repair the store (`store_check`), re-queue leases left by a crash,
//! load plugins, bind the socket.
//! Run: socket server, dispatcher, retention sweeper, free-space monitor and its events,
//! signals (SIGTERM/SIGINT stop, SIGHUP reloads). Stop: stop accepting, answer in-flight
//! requests, let deliveries in flight finish (bounded by `daemon.shutdown_grace`), flush,
//! remove the socket — all within `shutdown_grace` + 2 s: past that, whatever the storage
//! threads are doing, log what was not flushed (none of it acknowledged) and exit.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::admin;
use crate::clock;
use crate::commit::{CommitError, Committer};
use crate::config::{Config, DaemonConfig, StoreConfig};
use crate::dispatch::Dispatcher;
use crate::ipc::{self, ReloadRequest, Shared};
use crate::live::{Live, LiveCell};
use crate::metrics::Metrics;
use crate::plugin::Loader;
use crate::providers::Routing;
use crate::reads::Reads;
use crate::realtime;
use crate::reload::Reloader;
use crate::space::{self, Space};
use crate::store::{BreakerRecord, Op, OpResult, PgStore, SledStore, Store};
use crate::store_check;
use crate::transport::Transports;
use crate::webhooks::WebhookServer;

/// Time for the final flush after `daemon.shutdown_grace`, before exiting regardless.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// How often finished messages and old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))?;
    Ok(())
}

/// Loads plugins and instances for `config` (also what `--check` runs, with no `stored`
/// breaker states).
pub fn build_routing(
    config: &Config,
    loader: &mut Loader,
    stored: &BTreeMap<String, BreakerRecord>,
) -> Result<Routing> {
    Routing::build(config, loader, None, stored, clock::now_ms())
        .map_err(|e| anyhow!("{}: {e}", config.source_name))
}

/// Where the store lives in `daemon.data_dir`.
pub fn store_dir(d: &DaemonConfig) -> PathBuf {
    d.data_dir.join("db")
}

pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    let d = config.daemon.clone();
    // Refuse early, with a clear message, if another daemon serves this socket.
    ipc::refuse_if_served(&d.socket).map_err(|e| anyhow!(e))?;
    create_private_dir(&d.data_dir)?;
    // Refuse to start below the reserve, saying where, how much and what to do — rather
    // than let the engine find out with ENOSPC.
    let measured = space::check_room(&d.data_dir, d.min_free).map_err(|e| anyhow!(e))?;
    let db_dir = store_dir(&d);
    let cache = d.cache_capacity;
    let storage_timeout_ms = d.storage_timeout_ms;
    let rules = config.recipients;
    let store_config = config.store.clone();
    let lease_ms = store_config.lease_ms();
    let shared_store = matches!(store_config, StoreConfig::Postgres { .. });
    let opened = match store_config {
        StoreConfig::Sled => {
            tokio::task::spawn_blocking(move || {
                SledStore::open_with(&db_dir, cache, rules).map(|s| Arc::new(s) as Arc<dyn Store>)
            })
            .await?
        }
        StoreConfig::Postgres { url, pool_size, .. } => {
            let shown = crate::store::postgres::redact(url.expose());
            tracing::info!(url = %shown, pool_size, "opening the PostgreSQL store");
            let opened = tokio::task::spawn_blocking(move || {
                PgStore::open_bounded(
                    url.expose(),
                    pool_size,
                    rules,
                    Duration::from_millis(storage_timeout_ms),
                )
                .map(|s| Arc::new(s) as Arc<dyn Store>)
            })
            .await?;
            Ok(opened.with_context(|| format!("cannot open the PostgreSQL store at {shown}"))?)
        }
    };
    let store: Arc<dyn Store> = match opened {
        Ok(s) => s,
        Err(e) => {
            // Opening writes too: a filesystem that filled meanwhile gets the same message.
            if let Ok(m) = space::measure(&d.data_dir) {
                let needed = d.min_free.bytes_of(m.total).max(space::OPEN_MIN);
                if m.free < needed {
                    return Err(anyhow!(space::full_at_start(
                        &d.data_dir,
                        m,
                        needed,
                        Some(&e.to_string())
                    )));
                }
            }
            return Err(anyhow!(e))
                .with_context(|| format!("cannot open the store in {}", d.data_dir.display()));
        }
    };
    let space = Arc::new(Space::new(&d.data_dir, measured, d.min_free));
    let (committer, writer) = Committer::start(
        Arc::clone(&store),
        Arc::clone(&space),
        Duration::from_millis(d.storage_timeout_ms),
    )
    .context("cannot start the commit thread")?;
    let pending = committer.pending_probe();
    // Whatever the engine promised, no acknowledged message may be left where neither
    // dispatch nor recovery looks (a record `sending` without a lease, say).
    store_check::at_start(&committer)
        .await
        .map_err(|e| anyhow!("checking the store failed: {e}"))?;
    match committer.submit(Op::Recover).await {
        Ok(OpResult::Recovered(n)) if n > 0 => {
            tracing::warn!(
                requeued = n,
                "re-queued messages that were being sent when the daemon stopped"
            );
        }
        Ok(_) => {}
        Err(e) => return Err(anyhow!("recovering leased messages failed: {e}")),
    }

    let mut loader = Loader::new(&d.plugin_dir);
    let stored = store
        .breakers()
        .context("cannot read the stored breaker states")?;
    for (provider, b) in &stored {
        if let Some(opened_at) = b.opened_at {
            tracing::info!(%provider, opened_at, "circuit breaker was open when the daemon stopped");
        }
    }
    let routing = build_routing(&config, &mut loader, &stored)?;
    let webhooks_listen = config.webhooks.as_ref().map(|w| w.listen);
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let live = Arc::new(LiveCell::new(Live { config, routing }));
    let space_monitor = {
        let live = Arc::clone(&live);
        space
            .start_monitor(move || live.current().config.daemon.min_free)
            .context("cannot start the free-space monitor")?
    };
    let transports = Arc::new(Transports::new().map_err(|e| anyhow!(e))?);

    let webhook_listener =
        match &webhooks_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for webhooks on {addr} (webhooks.listen)")
            })?),
            None => None,
        };
    let admin_listener = match admin_listen {
        Some(addr) => Some(admin::bind(addr).await?),
        None => None,
    };
    // On a shared store, a breaker another daemon opened or closed is adopted here too: its
    // transition events arrive through the shared log.
    if shared_store {
        let mut rx = committer.events();
        let store = Arc::clone(&store);
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(batch) => {
                        if !batch.iter().any(|e| {
                            matches!(
                                e.kind,
                                herald_plugin_api::EventKind::ProviderOpened
                                    | herald_plugin_api::EventKind::ProviderClosed
                            )
                        }) {
                            continue;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                let stored = match store.breakers() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the shared breaker states");
                        continue;
                    }
                };
                for p in live.current().routing.providers.values() {
                    if let Some(r) = stored.get(&p.name)
                        && r.plugin == p.plugin
                        && p.breaker.adopt(crate::breaker::Transition {
                            generation: r.generation,
                            opened_at: r.opened_at,
                            trips: r.trips,
                        })
                    {
                        tracing::info!(
                            provider = %p.name,
                            open = r.opened_at.is_some(),
                            "adopted a breaker transition stored by another daemon"
                        );
                    }
                }
            }
        });
    }
    let listener = ipc::bind(&d.socket, d.socket_mode).map_err(|e| anyhow!(e))?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    // On a store several daemons share, a daemon that died leaves its leases behind: every
    // daemon returns expired ones to the queue, periodically (at start it did once).
    if shared_store {
        let committer = committer.clone();
        let mut shutdown = shutdown.clone();
        let every = Duration::from_millis((lease_ms / 4).clamp(500, 30_000));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
                match committer.submit(Op::Recover).await {
                    Ok(OpResult::Recovered(n)) if n > 0 => tracing::warn!(
                        requeued = n,
                        "re-queued messages whose lease expired (a daemon stopped while sending them)"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "returning expired leases failed"),
                }
            }
        });
    }
    let reads = Reads::new(
        Arc::clone(&store),
        Duration::from_millis(d.storage_timeout_ms),
    );
    let metrics = Arc::new(Metrics::default());
    let metrics_follower =
        tokio::spawn(Arc::clone(&metrics).follow(reads.clone(), committer.clone()));
    let stream_ctx = realtime::Context {
        store: Arc::clone(&store),
        reads: reads.clone(),
        committer: committer.clone(),
        metrics: Arc::clone(&metrics),
        fanout: crate::fanout::Fanout::start(&committer),
        shutdown: shutdown.clone(),
    };
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let shared = Arc::new(Shared {
        committer: committer.clone(),
        store: Arc::clone(&store),
        reads: reads.clone(),
        live: Arc::clone(&live),
        max_frame: d.max_frame,
        started_at: clock::now_ms(),
        connections: AtomicU64::new(0),
        reload: reload_tx.clone(),
        metrics: Arc::clone(&metrics),
    });
    let reloader = Arc::new(Reloader {
        path: config_path,
        live: Arc::clone(&live),
        loader: Mutex::new(loader),
        committer: committer.clone(),
        store: Arc::clone(&store),
        last_text: Mutex::new(None),
    });
    let watcher = reloader.watch();

    let server = tokio::spawn(ipc::serve(listener, Arc::clone(&shared), shutdown.clone()));
    let webhook_server = webhook_listener.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening for provider webhooks");
        }
        tokio::spawn(
            WebhookServer {
                committer: committer.clone(),
                live: Arc::clone(&live),
                streams: Arc::new(realtime::Streams {
                    ctx: stream_ctx.clone(),
                    live: Arc::clone(&live),
                }),
            }
            .serve(l, shutdown.clone()),
        )
    });
    let admin_server = admin_listener.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "admin listener: status page, /metrics, /healthz, /readyz");
        }
        tokio::spawn(
            admin::Admin {
                store: Arc::clone(&store),
                committer: committer.clone(),
                live: Arc::clone(&live),
                metrics: Arc::clone(&metrics),
                ctx: stream_ctx.clone(),
                started_at: clock::now_ms(),
            }
            .serve(l, shutdown.clone()),
        )
    });
    drop(stream_ctx);
    let dispatcher = tokio::spawn(
        Dispatcher {
            committer: committer.clone(),
            reads: reads.clone(),
            live: Arc::clone(&live),
            shared_store,
            transports,
            concurrency: d.concurrency,
            shutdown_grace: Duration::from_millis(d.shutdown_grace_ms),
            lease_ms,
            held: shared_store.then(Arc::default),
        }
        .run(shutdown.clone()),
    );
    let reloads = {
        let reloader = Arc::clone(&reloader);
        tokio::spawn(async move {
            while let Some(reply) = reload_rx.recv().await {
                let _ = reply.send(reloader.reload().await);
            }
        })
    };
    let pruner = {
        let committer = committer.clone();
        let live = Arc::clone(&live);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PRUNE_EVERY) => {}
                    _ = shutdown.changed() => return,
                }
                let retention = live.current().config.daemon.retention_ms;
                let before = clock::now_ms().saturating_sub(retention);
                match committer
                    .submit(Op::Prune {
                        before,
                        limit: 10_000,
                    })
                    .await
                {
                    Ok(OpResult::Pruned { messages, events }) if messages + events > 0 => {
                        tracing::info!(messages, events, "pruned past retention");
                    }
                    Ok(_) => {}
                    Err(CommitError::StorageFull(why)) => {
                        tracing::debug!(%why, "pruning waits for free space");
                    }
                    Err(e) => tracing::warn!(error = %e, "pruning failed"),
                }
            }
        })
    };

    let announcer = tokio::spawn(space::announce(
        Arc::clone(&space),
        committer.clone(),
        shutdown.clone(),
    ));

    tracing::info!(
        socket = %d.socket.display(),
        data_dir = %d.data_dir.display(),
        free = %space::human(measured.free),
        min_free = %d.min_free,
        "heraldd ready"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = reloader.reload().await;
            }
        }
    }

    let _ = shutdown_tx.send(true);
    let failure = committer.failure();
    // Everything below gets `shutdown_grace` (deliveries in flight) plus a margin for the
    // last flush, whatever the storage threads are doing.
    let grace = Duration::from_millis(d.shutdown_grace_ms);
    let stop = async {
        let _ = server.await;
        if let Some(w) = webhook_server {
            let _ = w.await;
        }
        if let Some(a) = admin_server {
            let _ = a.await;
        }
        let _ = dispatcher.await;
        drop(watcher);
        reloads.abort();
        let _ = reloads.await;
        let _ = pruner.await;
        let _ = announcer.await;
        drop(shared);
        drop(reloader);
        drop(reload_tx);
        drop(committer);
        // The metrics follower holds a committer handle: it ends with the daemon.
        metrics_follower.abort();
        let _ = metrics_follower.await;
        // The writer finishes queued jobs and flushes once every handle is gone.
        tokio::task::spawn_blocking(move || writer.join()).await
    };
    if tokio::time::timeout(grace + SHUTDOWN_MARGIN, stop)
        .await
        .is_err()
    {
        // Not even `std::process::exit`'s caller may wait on a stuck store (dropping it
        // would flush): exit now. Nothing pending was acknowledged, so nothing is lost.
        let p = pending.get();
        tracing::error!(
            queued = p.queued,
            unflushed_batches = p.unflushed_batches,
            unacknowledged = p.unflushed_answers,
            writer_busy_ms = p.writer_busy_ms,
            flusher_busy_ms = p.flusher_busy_ms,
            "the store did not finish within daemon.shutdown_grace; exiting without it. None of the pending writes was acknowledged; deliveries in flight are re-queued at the next start"
        );
        let _ = std::fs::remove_file(&d.socket);
        std::process::exit(1);
    }
    drop(space_monitor);
    let _ = std::fs::remove_file(&d.socket);
    if let Some(reason) = failure.or_else(|| pending.failure()) {
        // Closing a failed sled flushes again and may wait for ever: leave it to the
        // process exit. Everything acknowledged was flushed before the failure.
        std::mem::forget(store);
        tracing::error!(%reason, "heraldd stopped with a failed store");
        return Err(anyhow!("the store failed: {reason}"));
    }
    // Closing the store flushes once more: bounded like the rest.
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(store);
        let _ = closed_tx.send(());
    });
    if tokio::time::timeout(SHUTDOWN_MARGIN, closed).await.is_err() {
        tracing::error!("closing the store did not finish; exiting without it");
        std::process::exit(1);
    }
    tracing::info!("heraldd stopped");
    Ok(())
}
