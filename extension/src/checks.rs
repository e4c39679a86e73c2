//! Argument checks shared by the SQL functions, and the CQ001 error they
//! raise.
//!
//! They run on every claim and completion. As PL/pgSQL and SQL helpers,
//! each with its own pinned search_path, they cost about 0.07 ms a call (a
//! GUC save and restore and a function set-up per call, measured with
//! pg_stat_statements); as C they cost next to nothing. None runs SQL, so
//! none depends on a search_path.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr;

use pgrx::prelude::*;
use pgrx::{pg_getarg, pg_sys};

use crate::validate::{is_printable_key, MAX_KEY_LEN};

/// SQLSTATE CQ001, commitq's "invalid argument" (MAKE_SQLSTATE('C','Q','0','0','1')).
const CQ001: c_int =
    sixbit(b'C') | sixbit(b'Q') << 6 | sixbit(b'0') << 12 | sixbit(b'0') << 18 | sixbit(b'1') << 24;

const fn sixbit(c: u8) -> c_int {
    ((c - b'0') & 0x3F) as c_int
}

// PostgreSQL's error reporting, called directly: pgrx's own ereport knows
// only the standard SQLSTATEs and would report CQ001 as XX000.
unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// Raise CQ001 with "commitq: <problem>", the error of every commitq
/// function for bad input.
///
/// # Safety
/// ereport(ERROR) leaves by longjmp: the caller must hold no value with a
/// destructor in any Rust frame between here and PostgreSQL, since none of
/// them will run. `problem` itself is freed here before the jump.
pub unsafe fn raise_cq001(problem: String) -> ! {
    let message = CString::new(format!("commitq: {problem}")).unwrap_or_default();
    drop(problem);
    unsafe {
        if errstart(pgrx::PgLogLevel::ERROR as c_int, ptr::null()) {
            errcode(CQ001);
            // errmsg copies the text, so it can be freed before the jump.
            errmsg(c"%s".as_ptr(), message.as_ptr());
            drop(message);
            errfinish(
                c"checks.rs".as_ptr(),
                line!() as c_int,
                c"raise_cq001".as_ptr(),
            );
        }
    }
    unreachable!("ereport(ERROR) returned")
}

/// Define `pg_finfo_<name>`, the record PostgreSQL looks for beside a C
/// function declared in SQL as `LANGUAGE c AS 'MODULE_PATHNAME', '<name>'`
/// (PG_FUNCTION_INFO_V1).
macro_rules! finfo_v1 {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1: ::pgrx::pg_sys::Pg_finfo_record =
                ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}
pub(crate) use finfo_v1;

finfo_v1!(pg_finfo_commitq_check);

/// `commitq._check(problem text)`: raise CQ001 with the problem, if there is
/// one. Declared in sql/internal.sql.
///
/// # Safety
/// Called by PostgreSQL's function manager with one text argument.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn commitq_check(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let problem: Option<&str> = pg_getarg(fcinfo, 0);
        if let Some(problem) = problem {
            raise_cq001(problem.to_owned());
        }
        pg_sys::Datum::from(0)
    }
}

/// Whether a lease or ttl lies within 1 second..7 days, compared as a whole
/// interval, as PostgreSQL compares intervals (a month is 30 days).
fn lease_in_range(lease: Interval) -> bool {
    const SECOND: i128 = 1_000_000;
    (SECOND..=7 * 86_400 * SECOND).contains(&lease.as_micros())
}

/// What is wrong with the worker name and lease interval of a claim, or NULL.
#[pg_extern(immutable, parallel_safe, name = "_worker_lease_problem")]
pub fn worker_lease_problem(worker: Option<&str>, lease: Option<Interval>) -> Option<String> {
    let Some(worker) = worker else {
        return Some("worker must not be NULL".into());
    };
    if !(1..=200).contains(&worker.chars().count()) {
        return Some("worker must be 1 to 200 characters".into());
    }
    match lease {
        None => Some("lease NULL out of range 1 second..7 days".into()),
        Some(l) if !lease_in_range(l) => {
            // interval_out returns a C string, not text.
            let shown: Option<&CStr> =
                unsafe { pgrx::direct_function_call(pg_sys::interval_out, &[l.into_datum()]) };
            Some(format!(
                "lease {} out of range 1 second..7 days",
                shown.map(CStr::to_string_lossy).unwrap_or_default()
            ))
        }
        Some(_) => None,
    }
}

/// What is wrong with a batch of (job_id, lease_token) pairs, or NULL.
#[pg_extern(immutable, parallel_safe, name = "_batch_problem")]
pub fn batch_problem(ids: Option<Array<i64>>, tokens: Option<Array<i64>>) -> Option<String> {
    match (ids, tokens) {
        (Some(ids), Some(tokens)) if ids.len() == tokens.len() => None,
        (Some(_), Some(_)) => Some("job_ids and lease_tokens must have the same length".into()),
        _ => Some("job_ids and lease_tokens must not be NULL".into()),
    }
}

/// What is wrong with the name, owner and ttl of a named lease, or NULL.
/// Names follow the rule for keys (no control characters, whatever the
/// database's locale); a ttl the range of a claim's lease.
#[pg_extern(immutable, parallel_safe, name = "_lease_args_problem")]
pub fn lease_args_problem(
    name: Option<&str>,
    owner: Option<&str>,
    ttl: Option<Interval>,
) -> Option<String> {
    let problem = match (name, owner, ttl) {
        (None, _, _) => "lease name must not be NULL",
        (_, None, _) => "owner must not be NULL",
        (_, _, None) => "ttl must not be NULL",
        (Some(name), _, _) if !is_printable_key(name) => {
            "lease name must be 1 to 255 bytes of printable text"
        }
        (_, Some(owner), _) if owner.is_empty() || owner.len() > MAX_KEY_LEN => {
            "owner must be 1 to 255 bytes"
        }
        (_, _, Some(ttl)) if !lease_in_range(ttl) => "ttl out of range 1 second..7 days",
        _ => return None,
    };
    Some(problem.into())
}
