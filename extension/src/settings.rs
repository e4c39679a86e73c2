//! Settings read on the enqueue hot path, as server settings (GUCs) rather
//! than rows of `commitq.config`: reading a GUC costs nothing, reading the
//! config table costs a query per enqueue. Only superusers may change them
//! (`ALTER SYSTEM`, `ALTER DATABASE ... SET`), so a producer cannot raise its
//! own limits.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Largest accepted `args`, in bytes of the stored jsonb value.
pub static MAX_ARGS_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

pub fn define() {
    GucRegistry::define_int_guc(
        c"commitq.max_args_bytes",
        c"Largest job args accepted by commitq.enqueue, in bytes of stored jsonb.",
        c"Larger args are refused with SQLSTATE CQ001.",
        &MAX_ARGS_BYTES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
}

/// `commitq.max_args_bytes` as a number of bytes (`current_setting` would
/// give it with a unit, such as `1MB`).
#[pgrx::pg_extern(sql = false)]
pub fn max_args_bytes() -> i32 {
    MAX_ARGS_BYTES.get()
}
