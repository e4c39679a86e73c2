//! The engine: with `shared_preload_libraries = 'pg_commitq'`, background
//! workers call `commitq.maintain()` in every database that has the
//! extension, every `commitq.engine_interval`, so expired leases are rescued
//! and scheduled jobs become available with no client running maintain.
//!
//! Design: one static launcher and short-lived per-database workers.
//!
//! - The launcher is connected to no database: it reads the shared catalog
//!   `pg_database` directly (as PostgreSQL's autovacuum launcher does), so it
//!   never holds a connection that would block `DROP DATABASE` or
//!   `CREATE DATABASE ... TEMPLATE` of any database.
//! - Each tick it starts one dynamic worker per database (at most
//!   `commitq.engine_max_workers` at once, never two for one database). The
//!   worker connects, checks `pg_extension` and `commitq.engine_enabled` (a
//!   per-database setting is applied at connection, so `ALTER DATABASE ...
//!   SET` takes effect at the next tick without a reload), runs maintain in
//!   one transaction and exits. A worker lives for milliseconds, so a plain
//!   `DROP DATABASE` (which waits up to 5 s for other sessions to leave) and
//!   `DROP EXTENSION` (which waits for maintain's locks) go through within a
//!   tick; a worker starting during a drop waits for it on the database
//!   lock and then exits because the database is gone.
//! - Long-lived per-database workers (TimescaleDB's scheduler) would save a
//!   process start per tick, but they hold a connection, so they would have
//!   to watch for drops; with no state to keep between ticks (everything
//!   lives in the tables, and concurrent maintain calls already split the
//!   work with SKIP LOCKED) the short-lived worker is the simpler choice.
//! - A failing maintain raises in its worker: the error is recorded in shared
//!   memory, logged, and the worker exits; the launcher starts the next one
//!   a tick later, never sooner, so a persistent failure is one log line per
//!   tick, not a crash loop. `lock_timeout` is set to the interval, so a tick
//!   never waits on a table lock for longer than that.
//! - Databases without the extension, or with the engine disabled, are
//!   checked again only every `RECHECK_TICKS` ticks, which bounds the cost
//!   of a cluster with many such databases to a process start per database
//!   every few seconds.
//!
//! Shared memory holds, per database, the last tick, its duration and the
//! last error: `commitq._engine_status()` reads it (the view
//! `commitq.engine_status`, sql/engine.sql). Without the preload line
//! nothing here is registered and the view says the engine is not loaded.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgTryBuilder};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Time between two ticks of a database, in milliseconds.
pub static ENGINE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Off for a database (`ALTER DATABASE ... SET`) or the cluster.
pub static ENGINE_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Per-database workers running at the same time.
pub static ENGINE_MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);

/// A database without the extension, or with the engine off, is looked at
/// again after this many ticks.
const RECHECK_TICKS: u32 = 5;
/// Databases whose status shared memory keeps (the least recently ticked
/// one gives up its slot when more have the extension).
const SLOTS: usize = 256;
const ERROR_BYTES: usize = 256;

/// Set in the postmaster when the library is preloaded; inherited by every
/// backend it forks. Shared memory exists only then.
static LOADED: AtomicBool = AtomicBool::new(false);

#[derive(Copy, Clone)]
pub struct Slot {
    db: u32,
    /// What the last visit found: 1 ticked, 2 extension absent, 3 engine disabled.
    seen: u8,
    ticks: i64,
    errors: i64,
    /// PostgreSQL timestamps (microseconds since 2000-01-01), 0 for never.
    last_tick_at: i64,
    last_ok_at: i64,
    last_error_at: i64,
    last_duration_us: i64,
    error_len: u16,
    error: [u8; ERROR_BYTES],
}

const EMPTY: Slot = Slot {
    db: 0,
    seen: 0,
    ticks: 0,
    errors: 0,
    last_tick_at: 0,
    last_ok_at: 0,
    last_error_at: 0,
    last_duration_us: 0,
    error_len: 0,
    error: [0; ERROR_BYTES],
};

const SEEN_TICKED: u8 = 1;
const SEEN_ABSENT: u8 = 2;
const SEEN_DISABLED: u8 = 3;

#[derive(Copy, Clone)]
pub struct Status {
    slots: [Slot; SLOTS],
}

impl Default for Status {
    fn default() -> Self {
        Status {
            slots: [EMPTY; SLOTS],
        }
    }
}

// SAFETY: plain data, no pointers.
unsafe impl PGRXSharedMemory for Status {}

static STATUS: PgLwLock<Status> = unsafe { PgLwLock::new(c"commitq_engine_status") };

pub fn define_settings() {
    GucRegistry::define_int_guc(
        c"commitq.engine_interval",
        c"Time between two maintain() runs of the engine in each database.",
        c"Needs shared_preload_libraries = 'pg_commitq'; reloaded on SIGHUP.",
        &ENGINE_INTERVAL,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"commitq.engine_enabled",
        c"Whether the engine maintains this database (or, set in postgresql.conf, any).",
        c"Set per database with ALTER DATABASE ... SET commitq.engine_enabled = off.",
        &ENGINE_ENABLED,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"commitq.engine_max_workers",
        c"Largest number of per-database engine workers running at once.",
        c"Each takes a max_worker_processes slot for the few milliseconds of a tick.",
        &ENGINE_MAX_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// From `_PG_init`: the launcher and shared memory, only while the server
/// preloads libraries (a static worker cannot be registered later).
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    pg_shmem_init!(STATUS);
    LOADED.store(true, Ordering::Relaxed);
    BackgroundWorkerBuilder::new("commitq engine launcher")
        .set_type("commitq engine launcher")
        .set_library("pg_commitq")
        .set_function("commitq_engine_launcher")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn interval() -> Duration {
    Duration::from_millis(ENGINE_INTERVAL.get().max(10) as u64)
}

/// A dynamic worker the launcher started, with the raw handle (pgrx's
/// wrapper never frees it, and the launcher starts one per database per tick).
struct Running {
    handle: *mut pg_sys::BackgroundWorkerHandle,
}

impl Running {
    fn stopped(&self) -> bool {
        let mut pid: pg_sys::pid_t = 0;
        let status = unsafe { pg_sys::GetBackgroundWorkerPid(self.handle, &mut pid) };
        status == pg_sys::BgwHandleStatus::BGWH_STOPPED
            || status == pg_sys::BgwHandleStatus::BGWH_POSTMASTER_DIED
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { pg_sys::pfree(self.handle.cast()) }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn commitq_engine_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(
        pgrx::bgworkers::SignalWakeFlags::SIGHUP | pgrx::bgworkers::SignalWakeFlags::SIGTERM,
    );
    // No database: only shared catalogs can be read, which is all it needs.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let workers = unsafe { pg_sys::max_worker_processes };
    if workers <= ENGINE_MAX_WORKERS.get() {
        warning!(
            "commitq engine: max_worker_processes = {workers} leaves too few slots for the launcher and \
             commitq.engine_max_workers = {}: raise max_worker_processes",
            ENGINE_MAX_WORKERS.get()
        );
    }
    log!("commitq engine launcher started");

    let mut running: HashMap<u32, Running> = HashMap::new();
    // When each database's next tick is due: an interval after the start
    // of its last one, or RECHECK_TICKS intervals after a worker found no
    // extension or the engine off there.
    let mut due: HashMap<u32, Instant> = HashMap::new();
    let mut dbs: Vec<(u32, String)> = Vec::new();
    let mut next_scan = Instant::now();
    // After a failed start (no free slot), nothing is tried before then.
    let mut blocked_until = Instant::now();
    let mut warned_at: Option<Instant> = None;

    loop {
        // Sleep until the next due tick, or until a worker ends (the
        // postmaster signals the launcher, bgw_notify_pid, which sets its
        // latch) when every slot is taken.
        let now = Instant::now();
        let max = ENGINE_MAX_WORKERS.get().max(1) as usize;
        let mut wake = next_scan.max(now);
        if running.len() < max && ENGINE_ENABLED.get() {
            for (db, _) in &dbs {
                if !running.contains_key(db) {
                    wake = wake.min(due.get(db).copied().unwrap_or(now));
                }
            }
            wake = wake.max(blocked_until);
        }
        if !BackgroundWorker::wait_latch(Some(wake.saturating_duration_since(now))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            // A shorter interval applies now, not once the longer one
            // that set these deadlines has run out.
            let soonest = Instant::now() + interval();
            due.values_mut().for_each(|at| *at = (*at).min(soonest));
            next_scan = next_scan.min(soonest);
        }
        // Workers that ended: learn what they found.
        let ended: Vec<u32> = running
            .iter()
            .filter(|(_, w)| w.stopped())
            .map(|(db, _)| *db)
            .collect();
        for db in ended {
            running.remove(&db);
            if matches!(seen(db), SEEN_ABSENT | SEEN_DISABLED) {
                due.insert(db, Instant::now() + interval() * RECHECK_TICKS);
            }
        }
        let now = Instant::now();
        if now >= next_scan {
            dbs = databases();
            next_scan = now + interval();
            let oids: Vec<u32> = dbs.iter().map(|(db, _)| *db).collect();
            due.retain(|db, _| oids.contains(db));
            forget_dropped(&oids);
        }
        if !ENGINE_ENABLED.get() || now < blocked_until {
            continue;
        }
        // The most overdue first, so that with more databases than
        // workers each still gets its turn.
        let mut ready: Vec<(Instant, u32, &str)> = dbs
            .iter()
            .filter(|(db, _)| !running.contains_key(db))
            .map(|(db, name)| (due.get(db).copied().unwrap_or(now), *db, name.as_str()))
            .filter(|(at, _, _)| *at <= now)
            .collect();
        ready.sort();
        for (_, db, name) in ready {
            if running.len() >= max {
                break;
            }
            match start_worker(db, name) {
                Some(w) => {
                    running.insert(db, w);
                    due.insert(db, now + interval());
                }
                None => {
                    if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warning!(
                            "commitq engine: no free background worker slot for a database's tick \
                             (max_worker_processes = {}, commitq.engine_max_workers = {max}): raise \
                             max_worker_processes; ticks are retried next interval",
                            unsafe { pg_sys::max_worker_processes }
                        );
                        warned_at = Some(Instant::now());
                    }
                    blocked_until = now + interval();
                    break;
                }
            }
        }
    }
    log!("commitq engine launcher stopping");
}

fn start_worker(db: u32, name: &str) -> Option<Running> {
    let builder = BackgroundWorkerBuilder::new(&format!("commitq engine tick of database {db}"))
        .set_type("commitq engine")
        .set_library("pg_commitq")
        .set_function("commitq_engine_worker")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .set_extra(name)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    let mut bgw: pg_sys::BackgroundWorker = (&builder).into();
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // The handle is allocated in the current context: the top one, outside
    // any transaction, freed by Running's Drop.
    let ok = unsafe { pg_sys::RegisterDynamicBackgroundWorker(&mut bgw, &mut handle) };
    // Lazily: then_some would build a Running even when no slot was free,
    // and its drop would free a null handle.
    ok.then(|| Running { handle })
}

/// Oids of the databases that accept connections and are not templates,
/// read from the shared catalog without a database connection.
fn databases() -> Vec<(u32, String)> {
    BackgroundWorker::transaction(|| unsafe {
        let mut out = Vec::new();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if (*form).datallowconn && !(*form).datistemplate {
                let name = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr());
                out.push(((*form).oid.to_u32(), name.to_string_lossy().into_owned()));
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
        out
    })
}

fn seen(db: u32) -> u8 {
    let status = STATUS.share();
    status
        .slots
        .iter()
        .find(|s| s.db == db)
        .map_or(0, |s| s.seen)
}

fn forget_dropped(dbs: &[u32]) {
    let mut status = STATUS.exclusive();
    for slot in status.slots.iter_mut() {
        if slot.db != 0 && !dbs.contains(&slot.db) {
            *slot = EMPTY;
        }
    }
}

/// Run `f` on the status slot of `db`, taking a free or the least recently
/// ticked slot if it has none.
fn with_slot(db: u32, f: impl FnOnce(&mut Slot)) {
    let mut status = STATUS.exclusive();
    let slots = &mut status.slots;
    let i = match slots.iter().position(|s| s.db == db) {
        Some(i) => i,
        None => {
            let i = slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| if s.db == 0 { i64::MIN } else { s.last_tick_at })
                .map_or(0, |(i, _)| i);
            slots[i] = Slot { db, ..EMPTY };
            i
        }
    };
    f(&mut slots[i]);
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn commitq_engine_worker(arg: pg_sys::Datum) {
    let db = arg.value() as u32;
    unsafe {
        // A normal backend's SIGTERM handling: the running statement stops
        // at its next interrupt check (pg_terminate_backend, shutdown).
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    // A database dropped meanwhile ends this worker here (FATAL).
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    if !ENGINE_ENABLED.get() {
        with_slot(db, |s| s.seen = SEEN_DISABLED);
        return;
    }
    let started = unsafe { pg_sys::GetCurrentTimestamp() };
    let clock = Instant::now();
    let present = BackgroundWorker::transaction(|| {
        PgTryBuilder::new(tick)
            .catch_others(|e| {
                let message = match &e {
                    pg_sys::panic::CaughtError::PostgresError(r)
                    | pg_sys::panic::CaughtError::ErrorReport(r)
                    | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                        r.message().to_string()
                    }
                };
                let duration = clock.elapsed().as_micros() as i64;
                with_slot(db, |s| {
                    s.seen = SEEN_TICKED;
                    s.ticks += 1;
                    s.errors += 1;
                    s.last_tick_at = started;
                    s.last_error_at = started;
                    s.last_duration_us = duration;
                    let bytes = truncate(&message, ERROR_BYTES);
                    s.error[..bytes.len()].copy_from_slice(bytes);
                    s.error_len = bytes.len() as u16;
                });
                // Logged as this worker's error, which ends it; the
                // launcher starts the next tick after the interval.
                log!(
                    "commitq engine: maintain() failed in database \"{}\", retried next tick",
                    BackgroundWorker::get_extra()
                );
                e.rethrow()
            })
            .execute()
    });
    let duration = clock.elapsed().as_micros() as i64;
    with_slot(db, |s| {
        if present {
            s.seen = SEEN_TICKED;
            s.ticks += 1;
            s.last_tick_at = started;
            s.last_ok_at = started;
            s.last_duration_us = duration;
        } else {
            s.seen = SEEN_ABSENT;
        }
    });
}

/// PostgreSQL's own SIGTERM handler of a backend (sets ProcDiePending).
unsafe extern "C-unwind" fn die(signal: i32) {
    unsafe { pg_sys::die(signal) }
}

/// One tick in the worker's transaction: false when the database has no
/// commitq.
fn tick() -> bool {
    let present = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_commitq')",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !present {
        return false;
    }
    let activity = CString::new("SELECT commitq.maintain()").unwrap();
    unsafe {
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, activity.as_ptr());
    }
    Spi::run(&format!(
        "SET LOCAL lock_timeout = {}",
        ENGINE_INTERVAL.get().max(10)
    ))
    .unwrap_or_else(|e| error!("commitq engine: {e}"));
    Spi::run("SELECT commitq.maintain()").unwrap_or_else(|e| error!("commitq engine: {e}"));
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null()) };
    true
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

fn timestamp(t: i64) -> Option<i64> {
    (t != 0).then_some(t)
}

/// The engine's state in the current database, for the view
/// commitq.engine_status (sql/engine.sql): timestamps as PostgreSQL's
/// microseconds since 2000-01-01, which the view turns into timestamptz.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
pub fn engine_status() -> TableIterator<
    'static,
    (
        name!(engine_loaded, bool),
        name!(ticks, i64),
        name!(errors, i64),
        name!(last_tick_us, Option<i64>),
        name!(last_duration_us, Option<i64>),
        name!(last_ok_us, Option<i64>),
        name!(last_error_us, Option<i64>),
        name!(last_error, Option<String>),
    ),
> {
    if !LOADED.load(Ordering::Relaxed) {
        return TableIterator::once((false, 0, 0, None, None, None, None, None));
    }
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let slot = STATUS
        .share()
        .slots
        .iter()
        .find(|s| s.db == db)
        .copied()
        .unwrap_or(EMPTY);
    let error = (slot.error_len > 0)
        .then(|| String::from_utf8_lossy(&slot.error[..slot.error_len as usize]).into_owned());
    TableIterator::once((
        true,
        slot.ticks,
        slot.errors,
        timestamp(slot.last_tick_at),
        timestamp(slot.last_tick_at).map(|_| slot.last_duration_us),
        timestamp(slot.last_ok_at),
        timestamp(slot.last_error_at),
        error,
    ))
}
