//! Wake-ups at commit through shared memory, for `commitq.claim_wait`
//! (claim_wait.rs): no NOTIFY, no LISTEN, so it works through PgBouncer's
//! transaction pooling and costs producers no cluster-wide lock.
//!
//! Shared memory holds a fixed array of slots, each a generation counter and
//! a condition variable; a queue's slot is chosen by hashing (database oid,
//! queue name), so two queues may share a slot (their waiters then wake for
//! each other's jobs, claim nothing and sleep again: harmless).
//!
//! - A producer (every path that makes a job available: `commitq._wake`,
//!   `commitq.enqueue` in C) records the slot in backend-local memory; the
//!   transaction callback bumps each recorded slot's generation and
//!   broadcasts its condition variable at XACT_EVENT_COMMIT, which runs after
//!   the commit became visible to new snapshots (after
//!   ProcArrayEndTransaction). Abort forgets them; a subtransaction's abort
//!   forgets what was recorded inside it.
//! - A waiter reads the slot's generation before the snapshot of its claim,
//!   and after an empty claim and its commit sleeps until the generation
//!   differs: a commit that the claim could not see bumps the generation
//!   after the read, so no wake-up is missed.
//!
//! Needs `shared_preload_libraries = 'pg_commitq'`: without it nothing is
//! allocated, recording does nothing, and claim_wait polls.

use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pgrx::atomics::PgAtomic;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

/// Slots: enough that unrelated busy queues rarely share one; 64 KB.
pub const SLOTS: usize = 1024;

/// One slot, on its own cache line: producers of different queues bump
/// different lines.
#[repr(C, align(64))]
pub struct Slot {
    generation: AtomicU64,
    cv: UnsafeCell<pg_sys::ConditionVariable>,
}

#[repr(C)]
pub struct Slots {
    slots: [Slot; SLOTS],
}

// SAFETY: atomics and condition variables, which PostgreSQL shares between
// processes; no pointers.
unsafe impl PGRXSharedMemory for Slots {}

impl Default for Slots {
    fn default() -> Self {
        let slots = std::array::from_fn(|_| {
            let mut cv = pg_sys::ConditionVariable::default();
            // A plain value (a spinlock and two process numbers): valid
            // wherever it is copied to before anyone waits on it.
            unsafe { pg_sys::ConditionVariableInit(&mut cv) };
            Slot {
                generation: AtomicU64::new(0),
                cv: UnsafeCell::new(cv),
            }
        });
        Slots { slots }
    }
}

static SHARED: PgAtomic<Slots> = unsafe { PgAtomic::new(c"commitq_wait_slots") };

/// Set in the postmaster when the library is preloaded; inherited by every
/// backend it forks.
static ATTACHED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Slots to wake at commit, each with the subtransaction nesting level
    // that recorded it (a backend is one thread).
    static PENDING: RefCell<Vec<(u16, i32)>> = const { RefCell::new(Vec::new()) };
}

/// From `_PG_init`: shared memory and the transaction callbacks, only while
/// the server preloads libraries.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    pg_shmem_init!(SHARED);
    ATTACHED.store(true, Ordering::Relaxed);
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// Whether wake-ups at commit work in this server (library preloaded).
pub fn attached() -> bool {
    ATTACHED.load(Ordering::Relaxed)
}

/// The slot of `queue` in the current database: FNV-1a of the oid and name.
pub fn slot_of(queue: &[u8]) -> usize {
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in db.to_le_bytes().iter().chain(queue) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % SLOTS as u64) as usize
}

fn slot(i: usize) -> &'static Slot {
    &SHARED.get().slots[i]
}

/// The generation of slot `i` now. SeqCst: it must be read before the
/// claim that follows takes its snapshot.
pub fn generation(i: usize) -> u64 {
    slot(i).generation.load(Ordering::SeqCst)
}

/// Sleep until the generation of slot `i` differs from `seen`, or `ms`
/// milliseconds pass; true if it changed. A cancel or statement_timeout
/// raises from inside the sleep; the transaction's abort then takes this
/// process off the condition variable (AbortTransaction calls
/// ConditionVariableCancelSleep), so nothing stays registered.
pub fn sleep_while(i: usize, seen: u64, deadline: std::time::Instant) -> bool {
    let s = slot(i);
    let cv = s.cv.get();
    unsafe { pg_sys::ConditionVariablePrepareToSleep(cv) };
    let changed = loop {
        if s.generation.load(Ordering::SeqCst) != seen {
            break true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break false;
        }
        // Rounded up, so a wait never ends a millisecond early in a loop.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as std::ffi::c_long;
        unsafe { pg_sys::ConditionVariableTimedSleep(cv, ms, pg_sys::PG_WAIT_EXTENSION) };
    };
    unsafe { pg_sys::ConditionVariableCancelSleep() };
    changed
}

/// Record that the current transaction makes a job of `queue` available:
/// its slot is woken when the transaction commits. A few comparisons and no
/// shared memory until then, so the single enqueue pays next to nothing.
pub fn wake_at_commit(queue: &[u8]) {
    if !attached() {
        return;
    }
    let i = slot_of(queue) as u16;
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING.with_borrow_mut(|p| {
        // Already recorded at this level or an outer one: woken anyway
        // unless that outer level aborts, which aborts this one too.
        if !p.iter().any(|&(s, l)| s == i && l <= level) {
            p.push((i, level));
        }
    });
}

/// `commitq._wake_at_commit(queue text)`: wake the waiting claims of
/// `queue` when the calling transaction commits. Declared in
/// sql/wakeup.sql; called by commitq._wake.
#[pg_extern(sql = false)]
pub fn wake_at_commit_sql(queue: &str) {
    wake_at_commit(queue.as_bytes());
}

/// `commitq._wait_slots_attached()`: whether this server wakes waiting
/// claims at commit (the library is preloaded). Declared in sql/wakeup.sql.
#[pg_extern(sql = false)]
pub fn wait_slots_attached() -> bool {
    attached()
}

// Must not raise: an error at XACT_EVENT_COMMIT is a PANIC. Atomics, a
// spinlock and SetLatch cannot fail.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => PENDING.with_borrow_mut(|p| {
            for &(i, _) in p.iter() {
                let s = slot(i as usize);
                s.generation.fetch_add(1, Ordering::SeqCst);
                unsafe { pg_sys::ConditionVariableBroadcast(s.cv.get()) };
            }
            p.clear();
        }),
        // A prepared transaction commits later, in whichever session runs
        // COMMIT PREPARED, where this backend's list is not: its jobs are
        // found when the waits end (documented in docs/sql-reference.md).
        XACT_EVENT_ABORT | XACT_EVENT_PREPARE => PENDING.with_borrow_mut(Vec::clear),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    // Called while the subtransaction is still current: its level.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    match event {
        SUBXACT_EVENT_ABORT_SUB => PENDING.with_borrow_mut(|p| p.retain(|&(_, l)| l < level)),
        SUBXACT_EVENT_COMMIT_SUB => PENDING.with_borrow_mut(|p| {
            for e in p.iter_mut() {
                if e.1 >= level {
                    e.1 = level - 1;
                }
            }
        }),
        _ => {}
    }
}
