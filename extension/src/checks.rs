//! The argument checks that commitq's SQL functions call: each applies the
//! rules of `rules.rs` to SQL arguments and returns what is wrong, or NULL,
//! and `commitq._check` raises it as SQLSTATE CQ001.
//!
//! Their SQL declarations are written by hand in `sql/checks.sql` (hence
//! `sql = false`), so that sql/ shows every function's signature; there
//! too is why they are in Rust.

use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{pg_getarg, pg_sys};

use crate::errors::{finfo_v1, raise_cq001};
use crate::rules::{self, is_printable_key, lease_in_range, MAX_KEY_LEN};

finfo_v1!(pg_finfo_commitq_check);

/// `commitq._check(problem text)`: raise CQ001 with the problem, if there is
/// one. Declared in sql/checks.sql.
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

/// What is wrong with the worker name and lease interval of a claim, or NULL.
#[pg_extern(sql = false)]
pub fn worker_lease_problem(worker: Option<&str>, lease: Option<Interval>) -> Option<String> {
    let Some(worker) = worker else {
        return Some("worker must not be NULL".into());
    };
    if !(1..=200).contains(&worker.chars().count()) {
        return Some("worker must be 1 to 200 characters".into());
    }
    match lease {
        None => Some("lease NULL out of range 1 second..7 days".into()),
        Some(l) if !lease_in_range(l.as_micros()) => {
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
#[pg_extern(sql = false)]
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
#[pg_extern(sql = false)]
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
        (_, _, Some(ttl)) if !lease_in_range(ttl.as_micros()) => {
            "ttl out of range 1 second..7 days"
        }
        _ => return None,
    };
    Some(problem.into())
}

/// Everything that can be wrong with one job, with the args limit of the
/// setting `commitq.max_args_bytes`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
pub fn job_problem(
    queue: Option<&str>,
    kind: Option<&str>,
    args_type: Option<&str>,
    args_bytes: Option<i32>,
    priority: Option<i32>,
    max_attempts: Option<i32>,
    run_at_finite: Option<bool>,
    idempotency_key: Option<&str>,
    concurrency_key: Option<&str>,
) -> Option<String> {
    rules::job_problem(
        queue,
        kind,
        args_type,
        args_bytes,
        priority,
        max_attempts,
        run_at_finite,
        idempotency_key,
        concurrency_key,
        crate::settings::MAX_ARGS_BYTES.get(),
    )
}

/// The same check for queue names alone, for functions that take only a queue.
#[pg_extern(sql = false)]
pub fn queue_problem_sql(queue: Option<&str>) -> Option<String> {
    match queue {
        None => Some("queue must not be NULL".into()),
        Some(q) => rules::queue_problem(q),
    }
}
