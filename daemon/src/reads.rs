//! Store reads made to answer someone — a `get`, the dead-letter list, `stats`' lane depths,
//! a subscription's replay of the event log — run here: on the runtime's blocking pool, at
//! most [`MAX_READS`] at once, each answered within `daemon.storage_timeout`.
//!
//! Why: an engine's read can wait behind a write that does not finish. sled's transaction
//! holds its global concurrency lock while its log write waits for the disk, so on a frozen
//! or failing disk every sled read waits too; made on a runtime worker, one such read would
//! stop every connection that worker serves. Here a stuck read costs one blocking thread
//! (at most [`MAX_READS`] of them, however many clients ask) and its caller gets
//! [`ReadError::Stalled`] — `storage_unavailable` on the wire — instead of no answer.
//!
//! Owns: the read permits and the bound. Must not: write, or cache what it reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::store::{Store, StoreError};

/// Reads running at once; a stalled store holds at most this many blocking threads.
pub const MAX_READS: usize = 8;

/// Why a read has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The engine answered with an error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine did not answer within the bound (or the reads before it still hold every
    /// permit): the store is stalled.
    #[error(
        "the store did not answer a read within {0:?} (daemon.storage_timeout): it is stalled; retry later"
    )]
    Stalled(Duration),
}

impl ReadError {
    /// Whether the store may well answer the same read later: it is stalled, or out of
    /// reach for now (a shared engine's lost connection) — not broken.
    pub fn for_now(&self) -> bool {
        matches!(
            self,
            ReadError::Stalled(_) | ReadError::Store(StoreError::Unavailable(_))
        )
    }
}

/// Bounded reads of one store (cheap to clone: every clone shares the permits).
#[derive(Clone)]
pub struct Reads {
    store: Arc<dyn Store>,
    permits: Arc<Semaphore>,
    bound: Duration,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("available", &self.permits.available_permits())
            .field("bound", &self.bound)
            .finish()
    }
}

impl Reads {
    /// Reads of `store`, each answered within `bound` (`daemon.storage_timeout`).
    pub fn new(store: Arc<dyn Store>, bound: Duration) -> Reads {
        Reads {
            store,
            permits: Arc::new(Semaphore::new(MAX_READS)),
            bound,
        }
    }

    /// The store, for what engines answer from memory (`counts`, `last_seq`, `epoch`).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// `f` on the store, answered within the bound.
    pub async fn run<T, F>(&self, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_within(self.bound, f).await
    }

    /// `f` on the store, answered within `bound` (for a caller that has an answer without
    /// it, such as `stats` without its lane depths).
    pub async fn run_within<T, F>(&self, bound: Duration, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let read = async {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .expect("the read permits are never closed");
            let store = Arc::clone(&self.store);
            // The permit goes with the read: a read stuck in the engine keeps it.
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                f(store.as_ref())
            })
            .await
        };
        match tokio::time::timeout(bound, read).await {
            Ok(Ok(answer)) => answer.map_err(ReadError::Store),
            Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Ok(Err(_)) | Err(_) => Err(ReadError::Stalled(bound)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::Barrier;

    /// A store whose reads wait at a barrier: a stalled engine.
    fn stalled() -> (Arc<dyn Store>, Arc<Barrier>) {
        (
            Arc::new(MemoryStore::new()),
            Arc::new(Barrier::new(MAX_READS + 1)),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_read_is_answered_and_holds_at_most_the_permits() {
        let (store, release) = stalled();
        let reads = Reads::new(store, Duration::from_millis(200));
        // Every permit taken by a read that does not come back in time...
        let mut stuck = Vec::new();
        for _ in 0..MAX_READS {
            let reads = reads.clone();
            let release = Arc::clone(&release);
            stuck.push(tokio::spawn(async move {
                reads
                    .run(move |s| {
                        release.wait();
                        Ok(s.last_seq())
                    })
                    .await
            }));
        }
        for r in stuck {
            assert!(matches!(r.await.unwrap(), Err(ReadError::Stalled(_))));
        }
        // ...and one more read, which cannot even start, is answered too.
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let e = reads
            .run(move |_| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("storage_timeout"), "{e}");
        assert_eq!(
            reads.permits.available_permits(),
            0,
            "the stuck reads keep theirs"
        );
        // When the engine comes back, the permits do too and reads run again.
        release.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while reads.permits.available_permits() < MAX_READS {
            assert!(std::time::Instant::now() < deadline, "permits not returned");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "never started"
        );
        assert_eq!(reads.run(|s| Ok(s.last_seq())).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_engine_error_is_passed_on() {
        let reads = Reads::new(Arc::new(MemoryStore::new()), Duration::from_secs(5));
        let e = reads
            .run(|_| -> Result<(), _> { Err(StoreError::Corrupt("a record".into())) })
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReadError::Store(StoreError::Corrupt(_))),
            "{e:?}"
        );
    }
}
