//! `commitq.enqueue`, the call every producer makes, in C.
//!
//! It was PL/pgSQL; measured with pgbench (8 clients, one enqueue a
//! transaction), the interpreter and the `SET search_path` of a PL/pgSQL
//! SECURITY DEFINER function cost about half of an enqueue. Here the common
//! job (no idempotency key, no `after_xact`) is checked in Rust and inserted
//! by one statement prepared once per session. Jobs with an idempotency key,
//! `after_xact`, `depends_on` or `on_duplicate` go to
//! `commitq._enqueue_keyed` (sql/enqueue.sql), whose
//! retry loop is clearer in PL/pgSQL and costs little next to its extra
//! writes.
//!
//! Why it needs no `SET search_path` although it is SECURITY DEFINER: it
//! looks nothing up on the caller's path. Its statements name every table,
//! type, function and operator with its schema, and its parameters are typed
//! by OID. A plan is re-made when the caller's search_path changes, and
//! resolves to the same objects. `tests/tests/search_path.rs` plants
//! look-alikes of all of them and checks that enqueue is unmoved.

use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::CStr;
use std::ptr;

use pgrx::prelude::*;
use pgrx::{pg_getarg, pg_getarg_datum_raw, pg_sys, IntoDatum};

use crate::errors::raise_cq001;
use crate::rules::job_problem;

// Both statements take the eleven arguments of commitq.enqueue, in order.

/// The common job: insert it, and say whether a worker waits for the queue
/// (then it gets a NOTIFY, see commitq.waiting_workers). $5 is never NULL
/// here; $7, $9, $10 and $11 (idempotency_key, after_xact, depends_on,
/// on_duplicate) always are, and unused.
const INSERT: &CStr = c"
    INSERT INTO commitq.jobs AS j (queue, kind, args, state, priority, run_at, max_attempts,
                                   concurrency_key)
    VALUES ($1, $2, $3,
            CASE WHEN $5 OPERATOR(pg_catalog.>) pg_catalog.now()
                 THEN 'scheduled'::commitq.job_state ELSE 'available'::commitq.job_state END,
            $4, $5, $6, $8)
    RETURNING j.id,
              j.run_at OPERATOR(pg_catalog.<=) pg_catalog.now()
              AND EXISTS (SELECT FROM commitq.waiting_workers w
                           WHERE w.queue OPERATOR(pg_catalog.=) $1)";

/// Jobs with an idempotency key, after_xact, depends_on or on_duplicate: to
/// the PL/pgSQL implementation, which also checks the last two.
const KEYED: &CStr = c"
    SELECT k.job_id, k.inserted
      FROM commitq._enqueue_keyed($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS k";

/// KEYED in a database still at 0.1.0, whose _enqueue_keyed has nine
/// arguments (the extension is updated after its library is replaced).
const KEYED_0_1: &CStr = c"
    SELECT k.job_id, k.inserted
      FROM commitq._enqueue_keyed($1, $2, $3, $4, $5, $6, $7, $8, $9) AS k";

/// The types of commitq.enqueue's arguments.
const ARG_TYPES: [pg_sys::Oid; 11] = [
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::JSONBOID,
    pg_sys::INT4OID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::INT4OID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::XID8OID,
    pg_sys::INT8ARRAYOID,
    pg_sys::TEXTOID,
];

/// The arguments of commitq.enqueue, in order.
const QUEUE: usize = 0;
const KIND: usize = 1;
const ARGS: usize = 2;
const PRIORITY: usize = 3;
const RUN_AT: usize = 4;
const MAX_ATTEMPTS: usize = 5;
const IDEMPOTENCY_KEY: usize = 6;
const CONCURRENCY_KEY: usize = 7;
const AFTER_XACT: usize = 8;
const DEPENDS_ON: usize = 9;
const ON_DUPLICATE: usize = 10;

thread_local! {
    // Plans kept for the session (SPI_keepplan): a backend is one thread.
    static INSERT_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(ptr::null_mut()) };
    static KEYED_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(ptr::null_mut()) };
    static KEYED_0_1_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(ptr::null_mut()) };
    // The blessed descriptor of the (job_id, inserted) result.
    static RESULT_DESC: Cell<pg_sys::TupleDesc> = const { Cell::new(ptr::null_mut()) };
}

crate::errors::finfo_v1!(pg_finfo_commitq_enqueue);

/// `commitq.enqueue(queue, kind, args, priority, run_at, max_attempts,
/// idempotency_key, concurrency_key, after_xact, depends_on, on_duplicate)
/// -> (job_id, inserted)`.
///
/// # Safety
/// Called by PostgreSQL's function manager with the arguments declared in
/// sql/enqueue.sql.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn commitq_enqueue(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        // A database still at 0.1.0 (before ALTER EXTENSION ... UPDATE)
        // declares nine arguments: the missing ones are NULL.
        let nargs = (*fcinfo).nargs as usize;
        let raw = |n: usize| {
            (n < nargs && !pgrx::pg_arg_is_null(fcinfo, n)).then(|| pg_getarg_datum_raw(fcinfo, n))
        };
        // The statements' parameters: the arguments as they came (an array
        // of plain values, nothing to free if raise_cq001 jumps away).
        let mut params: [Option<pg_sys::Datum>; ARG_TYPES.len()] = std::array::from_fn(raw);
        let queue: Option<&str> = pg_getarg(fcinfo, QUEUE);
        let kind: Option<&str> = pg_getarg(fcinfo, KIND);
        let args = params[ARGS];
        // NULL run_at means now(), the transaction's start.
        let run_at = params[RUN_AT]
            .unwrap_or_else(|| pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp()));
        let finite = {
            let t = run_at.value() as i64;
            t != i64::MIN && t != i64::MAX
        };
        // Every job is checked here, also those _enqueue_keyed inserts, so
        // that bad input is always CQ001 raised by this function. (In a
        // block: no String may be alive when raise_cq001 jumps away.)
        let problem = {
            let (args_type, args_bytes) = match args {
                None => (None, None),
                Some(d) => (
                    Some(jsonb_type(d)),
                    Some(pg_sys::toast_datum_size(d) as i32),
                ),
            };
            job_problem(
                queue,
                kind,
                args_type.as_deref(),
                args_bytes,
                pg_getarg(fcinfo, PRIORITY),
                pg_getarg(fcinfo, MAX_ATTEMPTS),
                Some(finite),
                pg_getarg(fcinfo, IDEMPOTENCY_KEY),
                pg_getarg(fcinfo, CONCURRENCY_KEY),
                crate::settings::MAX_ARGS_BYTES.get(),
            )
        };
        if let Some(problem) = problem {
            raise_cq001(problem);
        }

        if params[IDEMPOTENCY_KEY].is_some()
            || params[AFTER_XACT].is_some()
            || params[DEPENDS_ON].is_some()
            || params[ON_DUPLICATE].is_some()
        {
            let (job_id, inserted) = if nargs < ARG_TYPES.len() {
                run(&KEYED_0_1_PLAN, KEYED_0_1, &params)
            } else {
                keyed_keeping_sqlstate(&params)
            };
            return result(fcinfo, job_id, inserted);
        }
        params[RUN_AT] = Some(run_at);
        let (job_id, wake) = run(&INSERT_PLAN, INSERT, &params);
        // Waiting claims: a slot number kept in memory until commit.
        if run_at.value() as i64 <= pg_sys::GetCurrentTransactionStartTimestamp() {
            crate::wait_slots::wake_at_commit(queue.unwrap_or_default().as_bytes());
        }
        if wake {
            let channel = format!("commitq:{}", queue.unwrap_or_default());
            pgrx::direct_function_call::<()>(
                pg_sys::pg_notify,
                &[channel.into_datum(), "".into_datum()],
            );
        }
        result(fcinfo, job_id, true)
    }
}

/// KEYED, with the SQLSTATEs of _enqueue_keyed's own errors kept: pgrx
/// turns an error raised under SPI into a Rust panic and raises it again
/// with its text, but a SQLSTATE it does not know (commitq's CQnnn) as
/// XX000. Those errors all begin "commitq: ": an unknown dependency is
/// CQ101, any other is CQ001 (bad depends_on or on_duplicate).
unsafe fn keyed_keeping_sqlstate(params: &[Option<pg_sys::Datum>]) -> (i64, bool) {
    use pgrx::pg_sys::panic::CaughtError;
    use pgrx::PgTryBuilder;
    PgTryBuilder::new(|| unsafe { run(&KEYED_PLAN, KEYED, params) })
        .catch_others(|e| {
            let report = match &e {
                CaughtError::PostgresError(r) => r,
                _ => e.rethrow(),
            };
            let message = report.message();
            if report.sql_error_code() != pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR
                || !message.starts_with("commitq: ")
            {
                e.rethrow()
            }
            let code =
                if message.starts_with("commitq: dependency ") && message.ends_with(" not found") {
                    crate::errors::CQ101
                } else {
                    crate::errors::CQ001
                };
            let (message, hint) = (message.to_string(), report.hint().map(str::to_string));
            drop(e);
            unsafe { crate::errors::raise_with(code, message, hint) }
        })
        .execute()
}

/// "object" for a JSON object (read from the container header, no parsing),
/// else what jsonb_typeof says, for the error message.
unsafe fn jsonb_type(d: pg_sys::Datum) -> Cow<'static, str> {
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        let header = ptr::read_unaligned(pgrx::varlena::vardata_any(v).cast::<u32>());
        if header & pg_sys::JB_FOBJECT != 0 {
            return Cow::Borrowed("object");
        }
        let named = pgrx::direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(d)]);
        Cow::Owned(named.unwrap_or_default())
    }
}

/// Execute the kept plan (preparing it on first use) with `params` (None is
/// NULL) and read the first row's two columns: a bigint and a boolean.
unsafe fn run(
    plan: &'static std::thread::LocalKey<Cell<pg_sys::SPIPlanPtr>>,
    sql: &CStr,
    params: &[Option<pg_sys::Datum>],
) -> (i64, bool) {
    unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            error!("commitq: SPI_connect failed");
        }
        let mut p = plan.get();
        if p.is_null() {
            p = pg_sys::SPI_prepare(
                sql.as_ptr(),
                ARG_TYPES.len() as i32,
                ARG_TYPES.as_ptr().cast_mut(),
            );
            if p.is_null() || pg_sys::SPI_keepplan(p) != 0 {
                error!("commitq: could not prepare {sql:?}");
            }
            plan.set(p);
        }
        let mut values: Vec<pg_sys::Datum> = params
            .iter()
            .map(|d| d.unwrap_or(pg_sys::Datum::from(0)))
            .collect();
        let nulls: Vec<std::ffi::c_char> = params
            .iter()
            .map(|d| if d.is_some() { b' ' } else { b'n' } as std::ffi::c_char)
            .collect();
        let rc = pg_sys::SPI_execute_plan(p, values.as_mut_ptr(), nulls.as_ptr(), false, 1);
        if rc < 0 || pg_sys::SPI_processed != 1 {
            error!("commitq: enqueue statement returned {rc}");
        }
        let table = pg_sys::SPI_tuptable;
        let row = *(*table).vals;
        let mut null = false;
        let id = pg_sys::SPI_getbinval(row, (*table).tupdesc, 1, &mut null).value() as i64;
        let flag = pg_sys::SPI_getbinval(row, (*table).tupdesc, 2, &mut null).value() != 0 && !null;
        pg_sys::SPI_finish();
        (id, flag)
    }
}

/// The (job_id, inserted) record.
unsafe fn result(fcinfo: pg_sys::FunctionCallInfo, job_id: i64, inserted: bool) -> pg_sys::Datum {
    unsafe {
        let mut desc = RESULT_DESC.get();
        if desc.is_null() {
            let mut fresh: pg_sys::TupleDesc = ptr::null_mut();
            if pg_sys::get_call_result_type(fcinfo, ptr::null_mut(), &mut fresh)
                != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
            {
                error!("commitq.enqueue must return a record");
            }
            let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            desc = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(fresh));
            pg_sys::MemoryContextSwitchTo(old);
            RESULT_DESC.set(desc);
        }
        let mut values = [pg_sys::Datum::from(job_id), pg_sys::Datum::from(inserted)];
        let mut nulls = [false, false];
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}
