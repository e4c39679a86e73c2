//! The rules of what commitq accepts: queue names, kinds, keys, leases.
//! Plain Rust, with nothing of PostgreSQL, so that one definition serves
//! every caller: the SQL check functions (`checks.rs`) and the single-job
//! enqueue (`enqueue.rs`).

/// Longest queue name. `'commitq:' || queue` must fit a NOTIFY channel (63 bytes).
pub const MAX_QUEUE_LEN: usize = 48;
pub const MAX_KIND_LEN: usize = 128;
pub const MAX_KEY_LEN: usize = 255;
pub const MAX_ATTEMPTS_LIMIT: i32 = 1000;

/// Queue names: lower-case ASCII letters and digits, then also `_ . -`.
/// ASCII only, so look-alike Unicode names cannot pose as another queue.
pub fn queue_problem(queue: &str) -> Option<String> {
    let ok_first = queue
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = queue
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if queue.is_empty() || queue.len() > MAX_QUEUE_LEN || !ok_first || !ok_rest {
        return Some(format!(
            "invalid queue name {queue:?}: use 1 to {MAX_QUEUE_LEN} of a-z 0-9 _ . - starting with a letter or digit"
        ));
    }
    None
}

/// Job kinds: ASCII letters, digits and `_ . : / -`, so `Billing::Charge` and
/// `emails/send` both work.
pub fn kind_problem(kind: &str) -> Option<String> {
    let ok_first = kind
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let ok_rest = kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'));
    if kind.is_empty() || kind.len() > MAX_KIND_LEN || !ok_first || !ok_rest {
        return Some(format!(
            "invalid kind {kind:?}: use 1 to {MAX_KIND_LEN} of A-Z a-z 0-9 _ . : / - starting with a letter, digit or _"
        ));
    }
    None
}

/// 1 to `MAX_KEY_LEN` bytes of printable text: the rule for keys and for
/// named-lease names.
pub fn is_printable_key(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_KEY_LEN && !text.chars().any(is_unprintable)
}

/// Characters that are not printable text: controls (Unicode category Cc),
/// format characters (Cf) and the line and paragraph separators (Zl, Zp).
/// Format characters are invisible (zero-width spaces and joiners,
/// bidirectional marks and overrides, the byte order mark), so a key with
/// one looks like another key that it is not.
pub fn is_unprintable(c: char) -> bool {
    // Category Cf of Unicode 15, as ranges of code points; std has no
    // category table, and this one changes once in years.
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let code = c as u32;
    c.is_control()
        || code == 0x2028
        || code == 0x2029
        || FORMAT.iter().any(|&(from, to)| (from..=to).contains(&code))
}

/// Idempotency and concurrency keys are the caller's own strings (UUIDs,
/// `account:42`): any printable text up to 255 bytes.
pub fn key_problem(what: &str, key: &str) -> Option<String> {
    if !is_printable_key(key) {
        return Some(format!(
            "invalid {what}: use 1 to {MAX_KEY_LEN} bytes of printable text"
        ));
    }
    None
}

/// Everything that can be wrong with one job, as a message, or NULL when the
/// job may be enqueued, args larger than `max_args_bytes` included. The caller
/// raises SQLSTATE CQ001 with the message.
#[allow(clippy::too_many_arguments)]
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
    max_args_bytes: i32,
) -> Option<String> {
    let Some(queue) = queue else {
        return Some("queue must not be NULL".into());
    };
    let Some(kind) = kind else {
        return Some("kind must not be NULL".into());
    };
    if let Some(problem) = queue_problem(queue).or_else(|| kind_problem(kind)) {
        return Some(problem);
    }
    match args_type {
        None => return Some("args must not be NULL (use '{}' for none)".into()),
        Some("object") => {}
        Some(other) => return Some(format!("args must be a JSON object, not {other}")),
    }
    if let Some(bytes) = args_bytes.filter(|b| *b > max_args_bytes) {
        return Some(format!(
            "args too large: {bytes} bytes, limit is {max_args_bytes} (setting commitq.max_args_bytes)"
        ));
    }
    match priority {
        None => return Some("priority must not be NULL".into()),
        Some(p) if !(i16::MIN as i32..=i16::MAX as i32).contains(&p) => {
            return Some(format!(
                "priority {p} out of range {}..{}",
                i16::MIN,
                i16::MAX
            ))
        }
        Some(_) => {}
    }
    match max_attempts {
        None => return Some("max_attempts must not be NULL".into()),
        Some(n) if !(1..=MAX_ATTEMPTS_LIMIT).contains(&n) => {
            return Some(format!(
                "max_attempts {n} out of range 1..{MAX_ATTEMPTS_LIMIT}"
            ))
        }
        Some(_) => {}
    }
    if run_at_finite == Some(false) {
        return Some("run_at must be a finite timestamp".into());
    }
    idempotency_key
        .and_then(|k| key_problem("idempotency_key", k))
        .or_else(|| concurrency_key.and_then(|k| key_problem("concurrency_key", k)))
}

/// Whether a lease or ttl of `micros` microseconds lies within 1 second..7
/// days (an interval compared as a whole, as PostgreSQL compares intervals:
/// a month is 30 days).
pub fn lease_in_range(micros: i128) -> bool {
    const SECOND: i128 = 1_000_000;
    (SECOND..=7 * 86_400 * SECOND).contains(&micros)
}
