//! `pg_commitq`: the PostgreSQL extension behind commitq.
//!
//! The queue itself is plain SQL in `sql/` (one file per concern), loaded
//! here in dependency order so a DBA can read exactly what runs; every
//! function, those written in Rust included, is declared there. Rust is kept
//! for what SQL cannot do well or fast enough: the argument checks called on
//! every claim and completion (`checks`, applying the rules of `rules`), and
//! the single-job `commitq.enqueue` (`enqueue`), the call every producer
//! makes. `errors` raises commitq's own SQLSTATE from Rust. `engine` runs
//! maintain in every database when the library is preloaded. `wait_slots`
//! wakes waiting claims at commit through shared memory, and `claim_wait`
//! is the waiting claim.

use pgrx::prelude::*;

mod checks;
mod claim_wait;
mod cron;
mod engine;
mod enqueue;
mod errors;
mod rules;
mod settings;
mod wait_slots;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::define();
    engine::define_settings();
    engine::init();
    wait_slots::init();
}

// The SQL files, in the order the install script runs them. A file comes
// after those whose objects it uses at creation time (types, and the
// functions a LANGUAGE sql body names); PL/pgSQL bodies are resolved when
// they first run, so the order also follows the reading order of docs.
extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/checks.sql",
    name = "checks",
    requires = ["schema"]
);
extension_sql_file!(
    "../../sql/job_lease.sql",
    name = "job_lease",
    requires = ["checks"]
);
extension_sql_file!(
    "../../sql/wakeup.sql",
    name = "wakeup",
    requires = ["checks"]
);
extension_sql_file!(
    "../../sql/retry.sql",
    name = "retry",
    requires = ["job_lease", "wakeup"]
);
extension_sql_file!(
    "../../sql/enqueue.sql",
    name = "enqueue",
    requires = ["wakeup"]
);
extension_sql_file!(
    "../../sql/dependencies.sql",
    name = "dependencies",
    requires = ["enqueue", "retry"]
);
extension_sql_file!(
    "../../sql/replace.sql",
    name = "replace",
    requires = ["dependencies"]
);
extension_sql_file!(
    "../../sql/claim.sql",
    name = "claim",
    requires = ["enqueue", "wakeup", "dependencies"]
);
extension_sql_file!(
    "../../sql/claim_wait.sql",
    name = "claim_wait",
    requires = ["claim"]
);
extension_sql_file!(
    "../../sql/concurrency_keys.sql",
    name = "concurrency_keys",
    requires = ["claim"]
);
extension_sql_file!(
    "../../sql/finish.sql",
    name = "finish",
    requires = ["concurrency_keys", "retry"]
);
extension_sql_file!(
    "../../sql/cancel.sql",
    name = "cancel",
    requires = ["concurrency_keys"]
);
extension_sql_file!(
    "../../sql/schedule.sql",
    name = "schedule",
    requires = ["enqueue"]
);
extension_sql_file!(
    "../../sql/maintain.sql",
    name = "maintain",
    requires = ["finish", "schedule"]
);
extension_sql_file!(
    "../../sql/named_lease.sql",
    name = "named_lease",
    requires = ["checks"]
);
extension_sql_file!(
    "../../sql/effect_ledger.sql",
    name = "effect_ledger",
    requires = ["job_lease"]
);
extension_sql_file!(
    "../../sql/engine.sql",
    name = "engine",
    requires = ["maintain"]
);
extension_sql_file!("../../sql/pause.sql", name = "pause", requires = ["wakeup"]);
extension_sql_file!(
    "../../sql/monitoring.sql",
    name = "monitoring",
    requires = ["engine", "named_lease", "pause"]
);
extension_sql_file!(
    "../../sql/flow_control.sql",
    name = "flow_control",
    requires = ["checks"]
);
extension_sql_file!(
    "../../sql/flow_claim.sql",
    name = "flow_claim",
    requires = ["flow_control", "claim", "concurrency_keys"]
);
// Grants go last so they see every function the files above created.
extension_sql_file!("../../sql/security.sql", name = "security", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn scalar<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: returned NULL"))
    }

    /// One backend can run a job's whole life: enqueue, claim, complete. A
    /// completed job leaves the queue, and is archived only when asked to.
    #[pg_test]
    fn enqueue_claim_complete_in_one_backend() {
        for keep in [false, true] {
            Spi::run(&format!(
                "UPDATE commitq.config SET keep_completed = {keep}"
            ))
            .unwrap();
            let id: i64 =
                scalar("SELECT job_id FROM commitq.enqueue('mail', 'send', '{\"to\": 1}')");
            let (claimed, token): (Option<i64>, Option<i64>) = Spi::get_two(
                "SELECT job_id, lease_token FROM commitq.claim('mail', 'w1', 10, '1 minute')",
            )
            .unwrap();
            assert_eq!(claimed, Some(id));
            let token = token.unwrap();
            Spi::run(&format!("SELECT commitq.complete({id}, {token})")).unwrap();
            let live: i64 = scalar("SELECT count(*) FROM commitq.jobs");
            assert_eq!(live, 0);
            let archived: i64 = scalar(&format!(
                "SELECT count(*) FROM commitq.finished_jobs WHERE id = {id} AND state = 'completed'"
            ));
            assert_eq!(archived, i64::from(keep));
        }
    }

    /// A second claim hands out a larger lease token for the same job.
    #[pg_test]
    fn lease_token_grows_across_claims() {
        let id: i64 = scalar("SELECT job_id FROM commitq.enqueue('q', 'k', '{}')");
        let first: i64 = scalar("SELECT lease_token FROM commitq.claim('q', 'w1', 1, '1 minute')");
        Spi::run(&format!(
            "SELECT commitq.snooze({id}, {first}, '0 seconds')"
        ))
        .unwrap();
        let second: i64 = scalar("SELECT lease_token FROM commitq.claim('q', 'w2', 1, '1 minute')");
        assert!(second > first, "{second} should exceed {first}");
    }

    /// The claimed_job row is written once, in commitq._claimed_row, and the
    /// planner inlines it: the claim paths pay no function call per job. An
    /// UPDATE ... RETURNING of the same form as theirs must show the row
    /// constructor in its plan, not the function.
    #[pg_test]
    fn claimed_row_is_inlined() {
        // EXPLAIN is refused in a read-only SPI connection.
        let plan = Spi::connect_mut(|client| {
            client
                .update(
                    "EXPLAIN (VERBOSE, COSTS OFF)
                     UPDATE commitq.jobs j SET attempt = j.attempt + 1 WHERE j.id = 1
                     RETURNING commitq._claimed_row(j)",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| row.get::<String>(1).unwrap().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        });
        assert!(!plan.contains("_claimed_row"), "not inlined:\n{plan}");
        assert!(
            plan.contains("ROW(id, queue, kind"),
            "unexpected plan:\n{plan}"
        );
    }

    /// A key's slot given back twice is an error, not a count clamped at
    /// zero that would hide the fault from every "slots come back" check.
    #[pg_test(
        error = "new row for relation \"concurrency_keys\" violates check constraint \"concurrency_keys_running_check\""
    )]
    fn a_slot_given_back_twice_raises() {
        Spi::run("SELECT commitq.enqueue('q', 'k', '{}', concurrency_key => 'account:1')").unwrap();
        let claimed: i64 = scalar("SELECT count(*) FROM commitq.claim('q', 'w', 1, '1 minute')");
        assert_eq!(claimed, 1);
        Spi::run("SELECT commitq._release_keys(ARRAY['account:1'])").unwrap();
        Spi::run("SELECT commitq._release_keys(ARRAY['account:1'])").unwrap();
    }

    /// A malformed queue name is rejected with commitq's invalid-argument SQLSTATE.
    #[pg_test(
        error = "commitq: invalid queue name \"bad name\": use 1 to 48 of a-z 0-9 _ . - starting with a letter or digit"
    )]
    fn bad_queue_name_is_rejected() {
        Spi::run("SELECT commitq.enqueue('bad name', 'k', '{}')").unwrap();
    }

    /// The validation rules, case by case, as SQL sees them.
    #[pg_test]
    fn job_problem_accepts_good_jobs_and_names_each_bad_field() {
        let problem = |args: &str| -> Option<String> {
            Spi::get_one::<String>(&format!("SELECT commitq._job_problem({args})")).unwrap()
        };
        let ok = "'emails', 'Billing::Charge', 'object', 10, 0, 25, true, 'order-1', 'account:42'";
        assert_eq!(problem(ok), None);
        let cases = [
            (
                "NULL, 'k', 'object', 1, 0, 25, true, NULL, NULL",
                "queue must not be NULL",
            ),
            (
                "'Q', 'k', 'object', 1, 0, 25, true, NULL, NULL",
                "invalid queue name",
            ),
            (
                "'q', 'a b', 'object', 1, 0, 25, true, NULL, NULL",
                "invalid kind",
            ),
            (
                "'q', 'k', 'array', 1, 0, 25, true, NULL, NULL",
                "args must be a JSON object",
            ),
            (
                "'q', 'k', 'object', 2000000, 0, 25, true, NULL, NULL",
                "args too large",
            ),
            (
                "'q', 'k', 'object', 1, 32768, 25, true, NULL, NULL",
                "priority 32768 out of range",
            ),
            (
                "'q', 'k', 'object', 1, 0, 0, true, NULL, NULL",
                "max_attempts 0 out of range",
            ),
            (
                "'q', 'k', 'object', 1, 0, 25, false, NULL, NULL",
                "run_at must be a finite",
            ),
            (
                "'q', 'k', 'object', 1, 0, 25, true, '', NULL",
                "invalid idempotency_key",
            ),
            (
                "'q', 'k', 'object', 1, 0, 25, true, NULL, E'a\\tb'",
                "invalid concurrency_key",
            ),
        ];
        for (args, expected) in cases {
            let got = problem(args).unwrap_or_default();
            assert!(
                got.starts_with(expected),
                "{args}: got {got:?}, expected {expected:?}"
            );
        }
    }

    /// The named-lease argument rules, case by case, at their edges.
    #[pg_test]
    fn lease_args_problem_names_each_bad_argument() {
        let problem = |args: &str| -> Option<String> {
            Spi::get_one::<String>(&format!("SELECT commitq._lease_args_problem({args})")).unwrap()
        };
        for ok in [
            "'cron', 'me', '1 second'",
            "'build:42 ünïcode', 'me', '7 days'",
            "repeat('n', 255), repeat('o', 255), '1 week'",
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        let cases = [
            ("NULL, 'me', '1 minute'", "lease name must not be NULL"),
            ("'cron', NULL, '1 minute'", "owner must not be NULL"),
            ("'cron', 'me', NULL", "ttl must not be NULL"),
            ("'', 'me', '1 minute'", "lease name must be 1 to 255 bytes"),
            (
                "repeat('n', 256), 'me', '1 minute'",
                "lease name must be 1 to 255 bytes",
            ),
            (
                "E'a\\nb', 'me', '1 minute'",
                "lease name must be 1 to 255 bytes",
            ),
            ("'cron', '', '1 minute'", "owner must be 1 to 255 bytes"),
            (
                "'cron', repeat('o', 256), '1 minute'",
                "owner must be 1 to 255 bytes",
            ),
            ("'cron', 'me', '0.999 seconds'", "ttl out of range"),
            ("'cron', 'me', '7 days 1 microsecond'", "ttl out of range"),
            // A month counts as 30 days, as in any interval comparison.
            ("'cron', 'me', '1 month'", "ttl out of range"),
            ("'cron', 'me', '-1 minute'", "ttl out of range"),
        ];
        for (args, expected) in cases {
            let got = problem(args).unwrap_or_default();
            assert!(
                got.starts_with(expected),
                "{args}: got {got:?}, expected {expected:?}"
            );
        }
    }
}

/// Required by `cargo pgrx test`: it must sit at the crate root.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
