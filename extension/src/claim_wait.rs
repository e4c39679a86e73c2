//! `CALL commitq.claim_wait(queue, worker, max_jobs, lease, wait, jobs)`:
//! claim, and when nothing is there wait for a commit that makes a job of
//! the queue available, in one statement that any stack can send, through
//! PgBouncer's transaction pooling too.
//!
//! Why a procedure in C, not `commitq.claim(..., wait => ...)`: a SELECT
//! keeps its statement's snapshot (so the session's xmin, which holds back
//! VACUUM of every table in the database) for as long as it runs, and a
//! PL/pgSQL procedure that commits takes a new snapshot for any statement it
//! runs after, the sleep included. Called by a top-level CALL (non-atomic),
//! a C procedure can connect SPI in non-atomic mode, commit after an empty
//! claim (SPI_commit forgets the portal's snapshots) and then wait on shared
//! memory without running any statement, so `backend_xmin` stays NULL while
//! it waits.
//!
//! The loop: read the queue slot's generation (wait_slots.rs), claim in a
//! transaction whose snapshot is taken after that read, return what was
//! claimed, or commit and sleep until the generation moves or the wait
//! ends. Without the preload line there is no generation to wait on: it
//! claims again every POLL, committing between attempts (still no xmin while
//! it sleeps).

use std::cell::Cell;
use std::ffi::CStr;
use std::ptr;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::{pg_getarg, pg_sys, IntoDatum};

use crate::errors::raise_cq001;
use crate::wait_slots;

crate::errors::finfo_v1!(pg_finfo_commitq_claim_wait);

/// The claim, its rows as one JSON array (NULL when it claimed nothing).
/// Every name is qualified: the procedure cannot pin search_path (a
/// procedure with a SET clause may not commit).
const CLAIM: &CStr = c"
    SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(c))
      FROM commitq.claim($1, $2, $3, $4) AS c";

const ARG_TYPES: [pg_sys::Oid; 4] = [
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::INT4OID,
    pg_sys::INTERVALOID,
];

/// Without shared memory: time between two claims.
const POLL: Duration = Duration::from_millis(100);

/// The longest wait accepted, in microseconds (one day).
const MAX_WAIT_US: i64 = 86_400_000_000;

thread_local! {
    static PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(ptr::null_mut()) };
}

/// # Safety
/// Called by PostgreSQL's function manager for the procedure declared in
/// sql/claim_wait.sql.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn commitq_claim_wait(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        // Checked first, while this frame owns nothing that raise_cq001's
        // jump would leak.
        let wait: Option<Interval> = pg_getarg(fcinfo, 4);
        let wait_us = wait.map(|w| w.as_micros().clamp(-1, i64::MAX as i128) as i64);
        match wait_us {
            None => raise_cq001("wait must not be NULL".to_owned()),
            Some(us) if !(0..=MAX_WAIT_US).contains(&us) => {
                raise_cq001("wait out of range 0..1 day".to_owned())
            }
            Some(_) => {}
        }
        let context = (*fcinfo).context.cast::<pg_sys::CallContext>();
        let nonatomic = !context.is_null()
            && (*context).type_ == pg_sys::NodeTag::T_CallContext
            && !(*context).atomic;
        if !nonatomic {
            ereport!(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_TERMINATION,
                "commitq: claim_wait must run as a CALL of its own, outside a transaction block",
                "It commits between claims. Inside a transaction use SELECT * FROM commitq.claim(...)."
            );
        }

        let queue: Option<String> = pg_getarg::<&str>(fcinfo, 0).map(str::to_owned);
        let worker: Option<String> = pg_getarg::<&str>(fcinfo, 1).map(str::to_owned);
        let max_jobs: Option<i32> = pg_getarg(fcinfo, 2);
        let lease: Option<Interval> = pg_getarg(fcinfo, 3);
        let deadline = Instant::now() + Duration::from_micros(wait_us.unwrap_or(0) as u64);

        let attached = wait_slots::attached();
        let slot = wait_slots::slot_of(queue.as_deref().unwrap_or_default().as_bytes());
        // In REPEATABLE READ or SERIALIZABLE (default_transaction_isolation:
        // a CALL of its own cannot set another) the snapshot of the CALL's
        // transaction, taken before the first generation read, would serve
        // the first claim: that claim runs in a transaction of its own.
        let xact_snapshot = pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32;

        if pg_sys::SPI_connect_ext(pg_sys::SPI_OPT_NONATOMIC as i32)
            != pg_sys::SPI_OK_CONNECT as i32
        {
            error!("commitq: SPI_connect_ext failed");
        }
        let mut first = true;
        let claimed = loop {
            let seen = if attached {
                wait_slots::generation(slot)
            } else {
                0
            };
            if first && xact_snapshot {
                commit();
            }
            first = false;
            if let Some(jobs) = claim(&queue, &worker, max_jobs, lease) {
                break Some(jobs);
            }
            if Instant::now() >= deadline {
                break None;
            }
            // A claim that held jobs back under a rate limit says when the
            // window has room again: no commit will wake us then.
            let retry = flow_retry().map(|d| Instant::now() + d);
            // The empty claim's transaction ends, and with it every
            // snapshot: nothing below runs a statement until the next claim.
            commit();
            if attached {
                let until = retry.map_or(deadline, |r| r.min(deadline));
                if !wait_slots::sleep_while(slot, seen, until) && until == deadline {
                    // The wait ended and nothing was committed for the queue.
                    break None;
                }
            } else {
                poll_sleep(deadline);
            }
        };
        pg_sys::SPI_finish();
        result(fcinfo, claimed)
    }
}

/// How long until a rate-limit window that held jobs back in the last claim
/// has room: the session setting commitq.flow_retry_ms, which the claim
/// sets (sql/flow_control.sql). Read without running a statement.
unsafe fn flow_retry() -> Option<Duration> {
    let value = unsafe { pg_sys::GetConfigOption(c"commitq.flow_retry_ms".as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    let ms: u64 = unsafe { CStr::from_ptr(value) }
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.max(1)))
}

/// Commit the current transaction through SPI (which starts the next one)
/// and drop the catalog snapshot, the one snapshot a commit may leave.
unsafe fn commit() {
    unsafe {
        pg_sys::SPI_commit();
        pg_sys::InvalidateCatalogSnapshot();
    }
}

/// Sleep POLL, or until the deadline, answering interrupts.
unsafe fn poll_sleep(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now()).min(POLL);
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            left.as_millis().max(1) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// One claim: the jobs as a jsonb array copied out of SPI's memory, or None.
unsafe fn claim(
    queue: &Option<String>,
    worker: &Option<String>,
    max_jobs: Option<i32>,
    lease: Option<Interval>,
) -> Option<pg_sys::Datum> {
    unsafe {
        let mut plan = PLAN.get();
        if plan.is_null() {
            plan = pg_sys::SPI_prepare(
                CLAIM.as_ptr(),
                ARG_TYPES.len() as i32,
                ARG_TYPES.as_ptr().cast_mut(),
            );
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                error!("commitq: could not prepare the claim of claim_wait");
            }
            PLAN.set(plan);
        }
        let params = [
            queue.as_deref().into_datum(),
            worker.as_deref().into_datum(),
            max_jobs.into_datum(),
            lease.into_datum(),
        ];
        let mut values: Vec<pg_sys::Datum> = params
            .iter()
            .map(|d| d.unwrap_or(pg_sys::Datum::from(0)))
            .collect();
        let nulls: Vec<std::ffi::c_char> = params
            .iter()
            .map(|d| if d.is_some() { b' ' } else { b'n' } as std::ffi::c_char)
            .collect();
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 1);
        if rc != pg_sys::SPI_OK_SELECT as i32 || pg_sys::SPI_processed != 1 {
            error!("commitq: claim of claim_wait returned {rc}");
        }
        let table = pg_sys::SPI_tuptable;
        let mut null = false;
        let d = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut null);
        // Into the caller's memory, which outlives SPI_finish.
        (!null).then(|| pg_sys::SPI_datumTransfer(d, false, -1))
    }
}

/// The procedure's output row: (jobs jsonb), '[]' when nothing was claimed.
unsafe fn result(fcinfo: pg_sys::FunctionCallInfo, jobs: Option<pg_sys::Datum>) -> pg_sys::Datum {
    unsafe {
        let jobs = jobs.unwrap_or_else(|| {
            pgrx::direct_function_call_as_datum(
                pg_sys::jsonb_in,
                &[Some(pg_sys::Datum::from(c"[]".as_ptr()))],
            )
            .expect("jsonb")
        });
        let mut desc: pg_sys::TupleDesc = ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, ptr::null_mut(), &mut desc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            error!("commitq.claim_wait must have an INOUT jobs parameter");
        }
        let desc = pg_sys::BlessTupleDesc(desc);
        let mut values = [jobs];
        let mut nulls = [false];
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}
