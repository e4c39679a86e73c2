-- Argument checks, and the errors commitq raises.
--
-- The check functions are written in Rust (extension/src/checks.rs, which
-- applies the rules of extension/src/rules.rs) and declared here by hand, so
-- that sql/ shows the signature of every function commitq has. They run on
-- every enqueue, claim and completion: as C they cost next to nothing, where
-- PL/pgSQL or SQL helpers with their own pinned search_path cost about
-- 0.07 ms a call (a GUC save and restore and a function set-up per call,
-- measured with pg_stat_statements). None runs SQL, so none depends on a
-- search_path. None is granted to anyone: they run only inside commitq's own
-- SECURITY DEFINER functions. Each _..._problem returns what is wrong with
-- its arguments, or NULL; _check raises it.
--
-- SQLSTATEs raised by commitq (docs/sql-reference.md lists them):
--   CQ001  invalid argument (NULL, bad name, bad args, out of range)
--   CQ101  job not found
--   CQ102  stale lease: the job is no longer running under this lease token
--   CQ103  lease expired: the token is current but its lease ran out
--   CQ104  invalid state for an operator action
--
-- The internal helpers of the other files that run SQL are PL/pgSQL, not
-- LANGUAGE sql: a SQL function with a SET clause is never inlined, and is
-- parsed and planned again each time the statement that calls it starts,
-- where PL/pgSQL keeps its plans for the session (measured: _wake called
-- from PL/pgSQL, 23 us a call as SQL, 5 us as PL/pgSQL). Two stay SQL on
-- purpose: _key_lock_space, IMMUTABLE with no arguments, which the planner
-- folds into a constant once per plan, and _claimed_row, which has no SET
-- clause so that the planner inlines it.

-- Raise CQ001 with "commitq: <problem>" when problem is not NULL.
CREATE FUNCTION commitq._check(problem text) RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'commitq_check';

-- A queue name: 1 to 48 of a-z 0-9 _ . -, starting with a letter or digit
-- ('commitq:' || queue must fit a NOTIFY channel).
CREATE FUNCTION commitq._queue_problem(queue text) RETURNS text
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'queue_problem_sql_wrapper';

-- Everything that can be wrong with one job to enqueue: names, args (type
-- and size against the setting commitq.max_args_bytes), priority,
-- max_attempts, run_at, idempotency and concurrency keys.
CREATE FUNCTION commitq._job_problem(
    queue text,
    kind text,
    args_type text,
    args_bytes integer,
    priority integer,
    max_attempts integer,
    run_at_finite boolean,
    idempotency_key text,
    concurrency_key text)
RETURNS text
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'job_problem_wrapper';

-- The worker name (1 to 200 characters) and lease (1 second..7 days) of a
-- claim.
CREATE FUNCTION commitq._worker_lease_problem(worker text, lease interval) RETURNS text
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'worker_lease_problem_wrapper';

-- A batch of (job_id, lease_token) pairs: two arrays of the same length.
CREATE FUNCTION commitq._batch_problem(ids bigint[], tokens bigint[]) RETURNS text
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'batch_problem_wrapper';

-- The name (printable, 1 to 255 bytes), owner and ttl (1 second..7 days) of
-- a named lease.
CREATE FUNCTION commitq._lease_args_problem(name text, owner text, ttl interval) RETURNS text
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'lease_args_problem_wrapper';

-- The setting commitq.max_args_bytes as a number of bytes (current_setting
-- would give it with a unit, such as 1MB).
CREATE FUNCTION commitq._max_args_bytes() RETURNS integer
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'max_args_bytes_wrapper';
