//! How commitq's Rust functions report errors to PostgreSQL: SQLSTATE CQ001
//! raised directly, and the V1 call records of the functions written as
//! plain C entry points.

use std::ffi::{c_char, c_int, CString};
use std::ptr;

/// SQLSTATE CQ001, commitq's "invalid argument" (MAKE_SQLSTATE('C','Q','0','0','1')).
pub(crate) const CQ001: c_int = sqlstate(*b"CQ001");
/// SQLSTATE CQ101, "no job with this id".
pub(crate) const CQ101: c_int = sqlstate(*b"CQ101");

const fn sqlstate(c: [u8; 5]) -> c_int {
    sixbit(c[0]) | sixbit(c[1]) << 6 | sixbit(c[2]) << 12 | sixbit(c[3]) << 18 | sixbit(c[4]) << 24
}

const fn sixbit(c: u8) -> c_int {
    ((c - b'0') & 0x3F) as c_int
}

// PostgreSQL's error reporting, called directly: pgrx's own ereport knows
// only the standard SQLSTATEs and would report CQ001 as XX000.
unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
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
                c"errors.rs".as_ptr(),
                line!() as c_int,
                c"raise_cq001".as_ptr(),
            );
        }
    }
    unreachable!("ereport(ERROR) returned")
}

/// Raise `message` (already "commitq: ...") with SQLSTATE `code` and an
/// optional hint: for an error of commitq's PL/pgSQL that reached Rust
/// through SPI, where pgrx kept its text but not its SQLSTATE.
///
/// # Safety
/// As for [`raise_cq001`]; both strings are freed before the jump.
pub unsafe fn raise_with(code: c_int, message: String, hint: Option<String>) -> ! {
    let message = CString::new(message).unwrap_or_default();
    let hint = hint.map(|h| CString::new(h).unwrap_or_default());
    unsafe {
        if errstart(pgrx::PgLogLevel::ERROR as c_int, ptr::null()) {
            errcode(code);
            errmsg(c"%s".as_ptr(), message.as_ptr());
            if let Some(h) = &hint {
                errhint(c"%s".as_ptr(), h.as_ptr());
            }
            drop(message);
            drop(hint);
            errfinish(
                c"errors.rs".as_ptr(),
                line!() as c_int,
                c"raise_with".as_ptr(),
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
