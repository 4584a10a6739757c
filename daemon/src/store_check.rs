//! Running the store check ([`crate::store::check`]) and reporting it: at every start-up
//! before dispatch begins, on request (`check_store`, through the committer so it is
//! serialised with every other write), and offline (`heraldd --check-store`).
//!
//! A repair fixes at most [`crate::store::check::MAX_REPAIRS`] problems per pass (one
//! transaction); start-up and the offline check run passes until nothing is left or a pass
//! repairs nothing more. A check that repaired anything logs a warning with the report.
//!
//! Owns: when the check runs, and its logging. Must not: decide what is consistent (that
//! is `store::check`).

use std::path::PathBuf;

use herald_protocol::StoreCheck;

use crate::clock;
use crate::commit::{CommitError, Committer};
use crate::config::Config;
use crate::daemon;
use crate::ipc;
use crate::store::{Op, OpResult, SledStore, Store, StoreError};

/// Passes a start-up or offline check runs at most (each repairs up to `MAX_REPAIRS`).
const MAX_PASSES: usize = 64;

/// One check through the committer.
pub async fn online(committer: &Committer, repair: bool) -> Result<StoreCheck, CommitError> {
    let started = clock::now_ms();
    match committer.submit(Op::Check { repair }).await? {
        OpResult::Checked(report) => {
            let report = report.wire(clock::now_ms().saturating_sub(started));
            log(&report);
            Ok(report)
        }
        other => Err(CommitError::Store(format!(
            "unexpected result of a store check: {other:?}"
        ))),
    }
}

/// The start-up check: repairs, pass after pass, before the dispatcher starts.
pub async fn at_start(committer: &Committer) -> Result<StoreCheck, CommitError> {
    let mut first = online(committer, true).await?;
    for _ in 1..MAX_PASSES {
        if first.unrepaired() == 0 {
            break;
        }
        let next = online(committer, true).await?;
        if !merge(&mut first, &next) {
            break;
        }
    }
    Ok(first)
}

/// The offline check of a stopped daemon's store.
pub fn offline(store: &dyn Store) -> Result<StoreCheck, StoreError> {
    let pass = || -> Result<StoreCheck, StoreError> {
        let started = clock::now_ms();
        let committed = store.commit(started, &[Op::Check { repair: true }])?;
        store.flush()?;
        match committed.results.into_iter().next() {
            Some(OpResult::Checked(report)) => {
                Ok(report.wire(clock::now_ms().saturating_sub(started)))
            }
            other => Err(StoreError::Internal(format!(
                "unexpected result of a store check: {other:?}"
            ))),
        }
    };
    let mut first = pass()?;
    for _ in 1..MAX_PASSES {
        if first.unrepaired() == 0 {
            break;
        }
        if !merge(&mut first, &pass()?) {
            break;
        }
    }
    Ok(first)
}

/// Why `heraldd --check-store` could not check a store.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A daemon answers on the config's socket.
    #[error("{0}")]
    InUse(String),
    #[error("there is no store in {dir} (daemon.data_dir = {data_dir}): nothing to check")]
    NoStore { dir: PathBuf, data_dir: PathBuf },
    #[error("cannot open the store in {dir}: {source}")]
    Open { dir: PathBuf, source: StoreError },
    #[error("checking the store in {dir} failed: {source}")]
    Check { dir: PathBuf, source: StoreError },
    /// The PostgreSQL store (`url` redacted).
    #[error("cannot open the PostgreSQL store at {url}: {source}")]
    OpenShared { url: String, source: StoreError },
    #[error("checking the PostgreSQL store at {url} failed: {source}")]
    CheckShared { url: String, source: StoreError },
}

/// `heraldd --check-store`: opens the store of a stopped daemon, checks and repairs it.
/// Refuses when a daemon serves the config's socket or holds the store, and when there is
/// no store (it never creates one). On PostgreSQL (`[store] kind = "postgres"`) it checks the
/// shared database (creating the schema if missing, as a daemon's start would).
pub fn check_stopped(config: &Config) -> Result<StoreCheck, OfflineError> {
    let d = &config.daemon;
    ipc::refuse_if_served(&d.socket).map_err(OfflineError::InUse)?;
    if let crate::config::StoreConfig::Postgres { url, pool_size, .. } = &config.store {
        // A check runs in the same serialised transactions as every daemon's batches, so
        // other daemons on the database may keep running; this one's socket is free.
        let shown = crate::store::postgres::redact(url.expose());
        let store = crate::store::PgStore::open(url.expose(), *pool_size, config.recipients)
            .map_err(|source| OfflineError::OpenShared {
                url: shown.clone(),
                source,
            })?;
        return offline(&store).map_err(|source| OfflineError::CheckShared { url: shown, source });
    }
    let dir = daemon::store_dir(d);
    if !SledStore::exists(&dir) {
        return Err(OfflineError::NoStore {
            dir,
            data_dir: d.data_dir.clone(),
        });
    }
    let store = match SledStore::open_with(&dir, d.cache_capacity, config.recipients) {
        Ok(s) => s,
        Err(source) => return Err(OfflineError::Open { dir, source }),
    };
    offline(&store).map_err(|source| OfflineError::Check { dir, source })
}

/// Adds what a later pass repaired to the first pass's report; false when it repaired
/// nothing (more passes would not help).
fn merge(first: &mut StoreCheck, next: &StoreCheck) -> bool {
    let mut any = false;
    for n in &next.problems {
        if let Some(p) = first.problems.iter_mut().find(|p| p.kind == n.kind) {
            p.repaired = (p.repaired + n.repaired).min(p.found);
            any |= n.repaired > 0;
        }
    }
    first.took_ms += next.took_ms;
    any
}

fn log(report: &StoreCheck) {
    let repaired: u64 = report.problems.iter().map(|p| p.repaired).sum();
    if report.consistent() {
        tracing::info!(
            messages = report.messages,
            took_ms = report.took_ms,
            "store check: consistent"
        );
    } else if repaired > 0 {
        tracing::warn!(
            messages = report.messages,
            took_ms = report.took_ms,
            repaired,
            "store check repaired the store:\n{report}"
        );
    } else {
        tracing::warn!(
            messages = report.messages,
            took_ms = report.took_ms,
            "store check found problems:\n{report}"
        );
    }
}
