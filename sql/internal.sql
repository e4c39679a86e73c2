-- Internal helpers shared by the public functions. None is granted to anyone:
-- they run only inside commitq's own SECURITY DEFINER functions.
--
-- SQLSTATEs raised by commitq (README.md, "Errors", lists them):
--   CQ001  invalid argument (NULL, bad name, bad args, out of range)
--   CQ101  job not found
--   CQ102  stale lease: the job is no longer running under this lease token
--   CQ103  lease expired: the token is current but its lease ran out
--   CQ104  invalid state for an operator action
--
-- The helpers that run SQL are PL/pgSQL, not LANGUAGE sql: a SQL function with
-- a SET clause is never inlined, and is parsed and planned again each time
-- the statement that calls it starts, where PL/pgSQL keeps its plans for the
-- session (measured: _wake called from PL/pgSQL, 23 us a call as SQL, 5 us as
-- PL/pgSQL). _key_lock_space stays SQL: it is IMMUTABLE with no arguments, so
-- the planner folds it into a constant once per plan.

-- Raise CQ001 when the message is not NULL. In C (extension/src/checks.rs),
-- as are the _..._problem checks: every claim and completion calls them.
CREATE FUNCTION commitq._check(problem text) RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'commitq_check';

-- Raise the right lease error for a call that presented (job_id, lease_token)
-- and did not match a running job under a live lease.
CREATE FUNCTION commitq._lease_error(p_job_id bigint, p_lease_token bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j record;
    f commitq.job_state;
BEGIN
    PERFORM commitq._check(CASE WHEN p_job_id IS NULL THEN 'job_id must not be NULL'
                                WHEN p_lease_token IS NULL THEN 'lease_token must not be NULL' END);
    SELECT state, lease_token, lease_expires_at INTO j FROM commitq.jobs WHERE id = p_job_id;
    IF NOT FOUND THEN
        SELECT state INTO f FROM commitq.finished_jobs WHERE id = p_job_id;
        IF FOUND THEN
            RAISE EXCEPTION 'commitq: stale lease: job % is already %', p_job_id, f
                USING ERRCODE = 'CQ102';
        END IF;
        -- Completed jobs are deleted unless keep_completed is on: an id the
        -- sequence has handed out is a job that was, so its lease is stale.
        IF p_job_id <= (SELECT s.last_value FROM commitq.job_id_seq s) THEN
            RAISE EXCEPTION 'commitq: stale lease: job % is no longer live (completed, or finished and pruned)',
                p_job_id USING ERRCODE = 'CQ102';
        END IF;
        RAISE EXCEPTION 'commitq: job % not found', p_job_id USING ERRCODE = 'CQ101';
    END IF;
    IF j.state <> 'running' THEN
        RAISE EXCEPTION 'commitq: stale lease: job % is % now, no longer running under lease token %',
            p_job_id, j.state, p_lease_token
            USING ERRCODE = 'CQ102';
    END IF;
    IF j.lease_token <> p_lease_token THEN
        RAISE EXCEPTION 'commitq: stale lease: job % is running under lease token %, not %',
            p_job_id, j.lease_token, p_lease_token
            USING ERRCODE = 'CQ102';
    END IF;
    RAISE EXCEPTION 'commitq: lease expired: lease token % of job % ran out', p_lease_token, p_job_id
        USING ERRCODE = 'CQ103',
              DETAIL = format('The lease ran out at %s.', j.lease_expires_at),
              HINT = 'heartbeat before the lease runs out, or claim with a longer lease';
END
$$;

-- Lock the job and return it if (job_id, lease_token) holds its live lease;
-- raise the matching lease error otherwise. The row lock keeps maintain() and
-- other claimers off the job until the caller's transaction ends.
CREATE FUNCTION commitq._locked_lease(p_job_id bigint, p_lease_token bigint)
RETURNS commitq.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j commitq.jobs;
BEGIN
    -- The lease test is a CASE so that it does not imply jobs_lease_idx's
    -- predicate: written as `state = 'running' AND ...` the planner may scan
    -- that whole index (every running job) for this one row, whenever the
    -- statistics were taken with few jobs running (measured: a batch of 100
    -- completions 8.5 ms instead of 0.6 ms).
    SELECT * INTO j FROM commitq.jobs
     WHERE id = p_job_id AND lease_token = p_lease_token
       AND CASE WHEN state = 'running' THEN lease_expires_at > pg_catalog.clock_timestamp() END
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM commitq._lease_error(p_job_id, p_lease_token);
    END IF;
    RETURN j;
END
$$;

-- Move jobs from the live table to finished_jobs in one statement.
CREATE FUNCTION commitq._move_to_finished(p_ids bigint[], p_state commitq.job_state)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    WITH moved AS (
        DELETE FROM commitq.jobs WHERE id = ANY (p_ids) RETURNING *
    )
    INSERT INTO commitq.finished_jobs
        (id, queue, kind, args, state, priority, run_at, attempt, max_attempts, lease_token,
         worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, finished_at)
    SELECT id, queue, kind, args, p_state, priority, run_at, attempt, max_attempts, lease_token,
           worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, pg_catalog.now()
      FROM moved
    RETURNING id;
END
$$;

-- Append one error to a job's bounded error history.
CREATE FUNCTION commitq._push_error(p_errors jsonb, p_attempt integer, p_worker text, p_error text)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (WITH appended AS (
        SELECT p_errors || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                   'attempt', p_attempt,
                   'at', pg_catalog.clock_timestamp(),
                   'worker', p_worker,
                   'error', pg_catalog.left(p_error, 10000))) AS e
    )
    SELECT CASE WHEN pg_catalog.jsonb_array_length(e) > c.error_history
                THEN (SELECT pg_catalog.jsonb_agg(x ORDER BY i)
                        FROM pg_catalog.jsonb_array_elements(e) WITH ORDINALITY AS t(x, i)
                       WHERE i > pg_catalog.jsonb_array_length(e) - c.error_history)
                ELSE e END
      FROM appended, commitq.config c);
END
$$;

-- Delay before retry number `attempt` + 1: exponential, capped, with "equal
-- jitter" (between half and all of the delay) so that jobs that failed
-- together do not all come back at the same instant.
CREATE FUNCTION commitq._backoff(p_attempt integer) RETURNS interval
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT d * (0.5 + 0.5 * pg_catalog.random())
              FROM (SELECT LEAST(c.backoff_cap,
                                 c.backoff_base * pg_catalog.power(2, LEAST(GREATEST(p_attempt, 1) - 1, 40))) AS d
                      FROM commitq.config c) s);
END
$$;

-- Wake workers waiting on a queue: NOTIFY "commitq:<queue>", delivered at
-- commit, when a worker of that queue is waiting (see waiting_workers in
-- schema.sql). Postgres folds identical notifications of one transaction.
CREATE FUNCTION commitq._wake(p_queue text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('commitq:' || p_queue, '')
      WHERE EXISTS (SELECT 1 FROM commitq.waiting_workers w WHERE w.queue = p_queue);
END
$$;

-- Whether transaction `x` committed and is visible to a snapshot taken now:
-- the commit log can say "committed" a moment before a new snapshot stops
-- counting the transaction as running, and a job gated on it must see its
-- rows.
CREATE FUNCTION commitq._xact_committed(x xid8) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.pg_xact_status(x) = 'committed'
       AND pg_catalog.pg_visible_in_snapshot(x, pg_catalog.pg_current_snapshot());
END
$$;
