//! The free-space reserve on the data directory's filesystem (`daemon.min_free`, like
//! Postfix's `queue_minfree`): the engine must never reach ENOSPC, because a storage engine
//! that runs out of space mid-write may leave a batch half-applied and stop working.
//!
//! A monitor thread measures the filesystem (`statvfs`) every [`REFRESH`], or sooner when a
//! send finds the estimate short, and publishes the result in atomics. Accept reads those
//! atomics — never a system call per send — and charges each message's estimated on-disk
//! cost against the last measurement, so a burst between two measurements cannot run past
//! the reserve. Three levels follow from a measurement ([`level_of`]):
//!
//! - **ok** — everything goes.
//! - **low** — below `min_free`: new messages are refused (`storage_full`); deliveries,
//!   cancels, webhooks and bookkeeping go on (they rewrite what is stored rather than add
//!   to it). Accepting resumes once free space is back above `min_free` plus a tenth
//!   ([`resume_at`]), so a send that frees a few kilobytes does not make it flap.
//! - **critical** — below half of `min_free`: the dispatcher stops claiming too (messages
//!   stay queued), and only the outcomes of deliveries already in flight are written. The
//!   half kept back is the room those outcomes, webhooks already accepted and the engine's
//!   own log housekeeping need.
//!
//! Which write is allowed at which level is decided in one place, `commit::refusal`.
//! [`announce`] turns a change of level into a log line and a `storage_low` /
//! `storage_ok` event.
//!
//! Owns: measuring, the levels and their arithmetic, the per-send estimate, the storage
//! events. Must not: decide which writes are admitted (commit), or write except its own
//! events through the committer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_plugin_api::EventKind;
use tokio::sync::watch;

use crate::commit::Committer;
use crate::store::Op;

/// How often the filesystem is measured.
pub const REFRESH: Duration = Duration::from_millis(250);

/// The shortest gap between two measurements, however often sends ask for one.
const MIN_GAP: Duration = Duration::from_millis(20);

/// Bytes a stored message is estimated to take per encoded byte, and per message. Measured
/// on sled with 16 KiB emails (the record, its events, the schedule and idempotency entries,
/// and sled's log framing); see `tests/e2e/diskfull.rs`. Deliberately on the high side: an
/// over-estimate only refuses a send a quarter of a second early.
const COST_PER_BYTE: u64 = 2;
const COST_PER_MESSAGE: u64 = 2048;

/// When opening the store fails with less than this free (or less than the reserve), the
/// filesystem is reported full: the engine writes a little on every open.
pub const OPEN_MIN: u64 = 1 << 20;

/// `daemon.min_free`: how much of the data directory's filesystem stays free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    /// Hundredths of a percent of the filesystem's size (`"5%"` is 500).
    BasisPoints(u32),
}

impl MinFree {
    /// 256 MiB: the reserve has to hold what the daemon still writes after it stops
    /// accepting — the outcomes of deliveries in flight (up to `daemon.concurrency` records
    /// rewritten, 256 × 256 KiB = 64 MiB at the default limits), webhook updates, and the
    /// engine's log segments (512 KiB each) and housekeeping. That need does not grow with
    /// the disk, so the default is a size, not a percentage.
    pub const DEFAULT: MinFree = MinFree::Bytes(256 << 20);

    /// The reserve in bytes on a filesystem of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(n) => n,
            MinFree::BasisPoints(bp) => (u128::from(total) * u128::from(bp) / 10_000) as u64,
        }
    }

    /// Parses `"5%"` or `"2.5%"` (a percentage below 100, at most two decimals).
    pub fn parse_percent(s: &str) -> Result<MinFree, String> {
        let bad = || {
            format!(
                "{s:?} is not a percentage below 100 like \"5%\" or \"2.5%\" (at most two decimals)"
            )
        };
        let num = s.trim().strip_suffix('%').ok_or_else(bad)?.trim();
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty()
            || frac.len() > 2
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        let bp = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(bad)?;
        if bp >= 10_000 {
            return Err(bad());
        }
        Ok(MinFree::BasisPoints(bp))
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Bytes(n) => f.write_str(&human(*n)),
            MinFree::BasisPoints(bp) => write!(f, "{}.{:02}%", bp / 100, bp % 100),
        }
    }
}

/// How much room there is, from the daemon's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Level {
    Ok = 0,
    Low = 1,
    Critical = 2,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            1 => Level::Low,
            2 => Level::Critical,
            _ => Level::Ok,
        }
    }
}

/// Below this, deliveries pause too.
pub fn critical_of(reserve: u64) -> u64 {
    reserve / 2
}

/// Accepting resumes once this much is free again.
pub fn resume_at(reserve: u64) -> u64 {
    reserve.saturating_add(reserve / 10)
}

/// The level for `free` bytes, given the level before: a level is left only a tenth of the
/// reserve above where it was entered, so a few kilobytes freed or written do not flap it.
pub fn level_of(free: u64, reserve: u64, before: Level) -> Level {
    let margin = reserve / 10;
    if reserve == 0 {
        Level::Ok
    } else if free < critical_of(reserve)
        || (before == Level::Critical && free < critical_of(reserve) + margin)
    {
        Level::Critical
    } else if free < reserve || (before != Level::Ok && free < resume_at(reserve)) {
        Level::Low
    } else {
        Level::Ok
    }
}

/// What a stored message of `size` encoded bytes is estimated to take on disk.
pub fn accept_cost(size: u64) -> u64 {
    size.saturating_mul(COST_PER_BYTE)
        .saturating_add(COST_PER_MESSAGE)
}

/// Bytes for people: `"512 B"`, `"64.0 KiB"`, `"11.3 MiB"`, `"1.50 GiB"`.
pub fn human(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let x = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if x < KIB * KIB {
        format!("{:.1} KiB", x / KIB)
    } else if x < KIB * KIB * KIB {
        format!("{:.1} MiB", x / (KIB * KIB))
    } else {
        format!("{:.2} GiB", x / (KIB * KIB * KIB))
    }
}

/// One measurement of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Bytes available to the daemon (`f_bavail`: not counting blocks kept for root).
    pub free: u64,
    pub total: u64,
}

/// Measures the filesystem holding `dir`.
pub fn measure(dir: &Path) -> std::io::Result<Measured> {
    let s = rustix::fs::statvfs(dir)?;
    let unit = if s.f_frsize > 0 {
        s.f_frsize
    } else {
        s.f_bsize
    };
    Ok(Measured {
        free: s.f_bavail.saturating_mul(unit),
        total: s.f_blocks.saturating_mul(unit),
    })
}

/// The start-up check: refuses to open the store on a filesystem below the reserve, with a
/// message that says where, how much, and what to do.
pub fn check_room(dir: &Path, min_free: MinFree) -> Result<Measured, String> {
    let m = measure(dir).map_err(|e| {
        format!(
            "cannot measure the free space of data_dir {}: {e}",
            dir.display()
        )
    })?;
    let reserve = min_free.bytes_of(m.total);
    if m.free < reserve {
        return Err(full_at_start(dir, m, reserve, None));
    }
    Ok(m)
}

/// The message for a start on a full filesystem. `cause` is the engine's own error, when
/// opening the store is what found it full.
pub fn full_at_start(dir: &Path, m: Measured, reserve: u64, cause: Option<&str>) -> String {
    let mut s = format!(
        "the filesystem holding data_dir {} is full: {} free of {}, and heraldd needs at least {} free (daemon.min_free) to start. \
         Free space on that filesystem (or grow it), move daemon.data_dir to a larger one, or lower daemon.min_free; then start heraldd again. \
         Nothing stored is lost: acknowledged messages are still in the store",
        dir.display(),
        human(m.free),
        human(m.total),
        human(reserve.max(1)),
    );
    if let Some(cause) = cause {
        s.push_str(&format!(" (opening the store failed: {cause})"));
    }
    s
}

/// What `stats` and `/readyz` report about space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub level: Level,
    pub free: u64,
    pub total: u64,
    pub reserve: u64,
}

impl Snapshot {
    /// Why sends are refused, for the `storage_full` error and the logs.
    pub fn refusal(&self, dir: &Path) -> String {
        format!(
            "{} free on the filesystem of {} (daemon.min_free is {}): new messages are refused until {} are free; retry later",
            human(self.free),
            dir.display(),
            human(self.reserve),
            human(resume_at(self.reserve)),
        )
    }

    /// Why claiming is paused.
    pub fn critical(&self, dir: &Path) -> String {
        format!(
            "{} free on the filesystem of {}, below the critical level {} (half of daemon.min_free): deliveries are paused, messages stay queued",
            human(self.free),
            dir.display(),
            human(critical_of(self.reserve)),
        )
    }
}

/// The shared view of the data directory's free space. Written by the monitor thread, read
/// everywhere else with plain atomic loads.
#[derive(Debug)]
pub struct Space {
    dir: PathBuf,
    free: AtomicU64,
    total: AtomicU64,
    reserve: AtomicU64,
    level: AtomicU8,
    /// Running total of the estimated cost of accepted messages.
    charged: AtomicU64,
    /// The part of `charged` the last measurement is assumed to include (what was charged
    /// before the measurement before it: a quarter of a second is ample for it to reach the
    /// disk, since accepts are acknowledged only after a flush).
    reflected: AtomicU64,
    wake: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    changed: watch::Sender<Level>,
}

impl Space {
    /// A view of `dir` starting from measurement `m` under `min_free`.
    pub fn new(dir: &Path, m: Measured, min_free: MinFree) -> Space {
        let reserve = min_free.bytes_of(m.total);
        let level = level_of(m.free, reserve, Level::Ok);
        Space {
            dir: dir.to_path_buf(),
            free: AtomicU64::new(m.free),
            total: AtomicU64::new(m.total),
            reserve: AtomicU64::new(reserve),
            level: AtomicU8::new(level as u8),
            charged: AtomicU64::new(0),
            reflected: AtomicU64::new(0),
            wake: Mutex::new(None),
            changed: watch::channel(level).0,
        }
    }

    /// Without a reserve, for tests and tools that never measure.
    pub fn unlimited(dir: &Path) -> Space {
        Space::new(
            dir,
            Measured {
                free: u64::MAX,
                total: u64::MAX,
            },
            MinFree::Bytes(0),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Acquire))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            level: self.level(),
            free: self.free.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            reserve: self.reserve.load(Ordering::Relaxed),
        }
    }

    /// Level changes, for the tasks that react to them.
    pub fn subscribe(&self) -> watch::Receiver<Level> {
        self.changed.subscribe()
    }

    /// Reserves room for new messages of `size` encoded bytes in total: `Err` with the
    /// reason when the level is not ok or the estimate (the last measurement less what was
    /// accepted since) is below the reserve. The message's own cost is charged, not
    /// checked: a send that starts above the reserve goes in, so the level always gets to
    /// see the reserve crossed rather than stopping a message short of it. Atomics only.
    pub fn try_accept(&self, size: u64) -> Result<(), String> {
        let snap = self.snapshot();
        if snap.level != Level::Ok {
            return Err(snap.refusal(&self.dir));
        }
        if snap.reserve == 0 {
            return Ok(());
        }
        let cost = accept_cost(size);
        let charged = self.charged.fetch_add(cost, Ordering::Relaxed);
        let unreflected = charged.saturating_sub(self.reflected.load(Ordering::Relaxed));
        if snap.free.saturating_sub(unreflected) < snap.reserve {
            self.charged.fetch_sub(cost, Ordering::Relaxed);
            self.wake();
            return Err(Snapshot {
                free: snap.free.saturating_sub(unreflected),
                ..snap
            }
            .refusal(&self.dir));
        }
        Ok(())
    }

    /// Asks the monitor for a measurement now.
    fn wake(&self) {
        if let Some(w) = self.wake.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = w.try_send(());
        }
    }

    /// Applies one measurement. `reflected` is the charge total the measurement is assumed
    /// to include.
    fn update(&self, m: Measured, min_free: MinFree, reflected: u64) -> Level {
        let reserve = min_free.bytes_of(m.total);
        let before = self.level();
        let level = level_of(m.free, reserve, before);
        self.free.store(m.free, Ordering::Relaxed);
        self.total.store(m.total, Ordering::Relaxed);
        self.reserve.store(reserve, Ordering::Relaxed);
        self.reflected.store(reflected, Ordering::Relaxed);
        self.level.store(level as u8, Ordering::Release);
        if level != before {
            self.changed.send_replace(level);
        }
        level
    }

    /// Starts the monitor thread. `min_free` is read at every measurement, so a reload
    /// applies a new reserve. The thread ends when the returned handle is dropped.
    pub fn start_monitor(
        self: &Arc<Self>,
        min_free: impl Fn() -> MinFree + Send + 'static,
    ) -> std::io::Result<Monitor> {
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(wake);
        let space = Arc::clone(self);
        std::thread::Builder::new()
            .name("herald-space".into())
            .spawn(move || {
                let mut failing = false;
                let mut before = space.charged.load(Ordering::Relaxed);
                loop {
                    let now = space.charged.load(Ordering::Relaxed);
                    match measure(&space.dir) {
                        Ok(m) => {
                            failing = false;
                            space.update(m, min_free(), before);
                            before = now;
                        }
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(dir = %space.dir.display(), error = %e, "cannot measure free space; keeping the last measurement");
                        }
                        Err(_) => {}
                    }
                    // Woken early by a send that found the estimate short (but not more
                    // often than every MIN_GAP); stopped when the monitor handle drops
                    // the sender.
                    match woken.recv_timeout(REFRESH) {
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                        Ok(()) => {
                            #[allow(clippy::disallowed_methods)] // a plain thread
                            std::thread::sleep(MIN_GAP);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    }
                }
            })?;
        Ok(Monitor {
            space: Arc::clone(self),
        })
    }
}

/// Keeps the monitor thread running; dropping it stops the thread.
#[derive(Debug)]
pub struct Monitor {
    space: Arc<Space>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Without its wake-up sender the thread's next wait ends at once, and it returns.
        let wake = self
            .space
            .wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(wake);
    }
}

/// Logs every change of level and records `storage_low` when accepting stops and
/// `storage_ok` when it resumes. Events are written only while the level admits them (not
/// at critical): a stop first seen at critical is recorded once the level allows, before
/// the matching `storage_ok`, so subscribers always see the pair.
pub async fn announce(
    space: Arc<Space>,
    committer: Committer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = space.subscribe();
    let mut low_recorded = false;
    let mut pending_low: Option<String> = None;
    let mut last = Level::Ok;
    loop {
        let level = *changes.borrow_and_update();
        let snap = space.snapshot();
        if level != last {
            match level {
                Level::Ok => {
                    tracing::info!(free = %human(snap.free), min_free = %human(snap.reserve), "free space is back above the reserve: accepting and delivering")
                }
                Level::Low => {
                    tracing::warn!(free = %human(snap.free), min_free = %human(snap.reserve), "free space below daemon.min_free: new messages are refused with storage_full; deliveries go on")
                }
                Level::Critical => {
                    tracing::error!(free = %human(snap.free), critical = %human(critical_of(snap.reserve)), "free space below the critical level: deliveries are paused too (messages stay queued) until space is freed")
                }
            }
            if last == Level::Ok && !low_recorded && pending_low.is_none() {
                pending_low = Some(snap.refusal(space.dir()));
            }
            last = level;
        }
        if level != Level::Critical
            && let Some(detail) = pending_low.clone()
        {
            let note = Op::Note {
                kind: EventKind::StorageLow,
                detail,
            };
            match committer.submit(note).await {
                Ok(_) => {
                    pending_low = None;
                    low_recorded = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot record the storage_low event"),
            }
        }
        if level == Level::Ok && low_recorded {
            let detail = format!(
                "{} free on the filesystem of {} (daemon.min_free is {}): accepting again",
                human(snap.free),
                space.dir().display(),
                human(snap.reserve)
            );
            match committer
                .submit(Op::Note {
                    kind: EventKind::StorageOk,
                    detail,
                })
                .await
            {
                Ok(_) => low_recorded = false,
                Err(e) => tracing::warn!(error = %e, "cannot record the storage_ok event"),
            }
        }
        let retry = pending_low.is_some() || (level == Level::Ok && low_recorded);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn reserve_arithmetic() {
        assert_eq!(MinFree::Bytes(256 * MIB).bytes_of(10 * MIB), 256 * MIB);
        assert_eq!(MinFree::BasisPoints(500).bytes_of(1000 * MIB), 50 * MIB);
        assert_eq!(MinFree::BasisPoints(250).bytes_of(400), 10);
        // No overflow on huge filesystems.
        assert_eq!(
            MinFree::BasisPoints(9_999).bytes_of(u64::MAX),
            (u128::from(u64::MAX) * 9_999 / 10_000) as u64
        );
        assert_eq!(critical_of(256 * MIB), 128 * MIB);
        assert_eq!(resume_at(100 * MIB), 110 * MIB);
    }

    #[test]
    fn percentages() {
        assert_eq!(MinFree::parse_percent("5%"), Ok(MinFree::BasisPoints(500)));
        assert_eq!(
            MinFree::parse_percent("2.5%"),
            Ok(MinFree::BasisPoints(250))
        );
        assert_eq!(
            MinFree::parse_percent(" 0.25 %"),
            Ok(MinFree::BasisPoints(25))
        );
        assert_eq!(MinFree::parse_percent("0%"), Ok(MinFree::BasisPoints(0)));
        for bad in [
            "5", "100%", "150%", "-1%", "1.234%", ".5%", "five%", "5%%", "%",
        ] {
            let err = MinFree::parse_percent(bad).unwrap_err();
            assert!(err.contains("percentage"), "{bad}: {err}");
        }
        assert_eq!(MinFree::BasisPoints(250).to_string(), "2.50%");
        assert_eq!(MinFree::Bytes(256 * MIB).to_string(), "256.0 MiB");
    }

    #[test]
    fn levels_with_a_resume_margin() {
        let r = 100 * MIB;
        assert_eq!(level_of(200 * MIB, r, Level::Ok), Level::Ok);
        assert_eq!(level_of(r, r, Level::Ok), Level::Ok);
        assert_eq!(level_of(r - 1, r, Level::Ok), Level::Low);
        assert_eq!(level_of(50 * MIB, r, Level::Low), Level::Low);
        assert_eq!(level_of(50 * MIB - 1, r, Level::Low), Level::Critical);
        assert_eq!(level_of(0, r, Level::Ok), Level::Critical);
        // Coming back: each level is left a tenth of the reserve above its threshold.
        assert_eq!(level_of(55 * MIB, r, Level::Critical), Level::Critical);
        assert_eq!(level_of(60 * MIB, r, Level::Critical), Level::Low);
        assert_eq!(level_of(105 * MIB, r, Level::Critical), Level::Low);
        assert_eq!(level_of(105 * MIB, r, Level::Low), Level::Low);
        assert_eq!(level_of(110 * MIB, r, Level::Low), Level::Ok);
        // No reserve: never refuses.
        assert_eq!(level_of(0, 0, Level::Critical), Level::Ok);
    }

    #[test]
    fn sends_are_charged_until_the_next_measurement() {
        let dir = Path::new("/data");
        let m = |free| Measured {
            free,
            total: 1000 * MIB,
        };
        let space = Space::new(dir, m(20 * MIB), MinFree::Bytes(10 * MIB));
        // 16 KiB messages cost about 34 KiB each: roughly 300 fit above the reserve (the
        // last one starts above it).
        let mut accepted = 0;
        while space.try_accept(16 << 10).is_ok() {
            accepted += 1;
            assert!(accepted < 1000, "the estimate never ran out");
        }
        assert_eq!(accepted, (10 * MIB / accept_cost(16 << 10)) as usize + 1);
        let err = space.try_accept(16 << 10).unwrap_err();
        assert!(
            err.contains("daemon.min_free is 10.0 MiB") && err.contains("/data"),
            "{err}"
        );
        assert_eq!(
            space.level(),
            Level::Ok,
            "an estimate does not change the level"
        );
        // A measurement that does not include those charges yet keeps counting them...
        space.update(m(20 * MIB), MinFree::Bytes(10 * MIB), 0);
        assert!(space.try_accept(16 << 10).is_err());
        // ...one that does starts afresh.
        let charged = space.charged.load(Ordering::Relaxed);
        space.update(m(15 * MIB), MinFree::Bytes(10 * MIB), charged);
        assert!(space.try_accept(16 << 10).is_ok());
        // Below the reserve nothing is charged and the level says why.
        space.update(m(9 * MIB), MinFree::Bytes(10 * MIB), charged);
        assert_eq!(space.level(), Level::Low);
        assert!(space.try_accept(1).is_err());
        // A reload that lowers the reserve applies at the next measurement.
        space.update(m(9 * MIB), MinFree::Bytes(MIB), charged);
        assert_eq!(space.level(), Level::Ok);
        assert!(space.try_accept(1).is_ok());
        // No reserve: nothing is ever refused.
        let unlimited = Space::unlimited(dir);
        assert!(unlimited.try_accept(u64::MAX / 4).is_ok());
    }

    #[test]
    fn messages_say_where_how_much_and_what_to_do() {
        let m = Measured {
            free: 3 * MIB,
            total: 40 * MIB,
        };
        let msg = full_at_start(Path::new("/var/lib/herald"), m, 12 * MIB, None);
        for needle in [
            "/var/lib/herald",
            "3.0 MiB free of 40.0 MiB",
            "12.0 MiB",
            "daemon.min_free",
            "Free space",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing: {msg}");
        }
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 10), "64.0 KiB");
        assert_eq!(human(3 << 30), "3.00 GiB");
    }

    #[test]
    fn measures_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let m = measure(dir.path()).unwrap();
        assert!(m.total > 0 && m.free <= m.total, "{m:?}");
        assert!(check_room(dir.path(), MinFree::Bytes(0)).is_ok());
        let err = check_room(dir.path(), MinFree::Bytes(u64::MAX)).unwrap_err();
        assert!(err.contains("is full"), "{err}");
        assert!(measure(&dir.path().join("missing")).is_err());
    }
}
