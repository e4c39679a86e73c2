-- Finishing a job, and the calls a worker makes while it runs one:
-- complete (alone, in batches, or with the next claim or the next job of a
-- key), fail, heartbeat and snooze. Each takes (job_id, lease_token) and
-- changes nothing but raises when that lease is not the job's current, live
-- lease (job_lease.sql).

-- Move jobs from the live table to finished_jobs in one statement.
CREATE FUNCTION commitq._move_to_finished(p_ids bigint[], p_state commitq.job_state)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_queues text[];
    v_parents bigint[];
BEGIN
    WITH moved AS (
        DELETE FROM commitq.jobs WHERE id = ANY (p_ids) RETURNING *
    ), ins AS (
        INSERT INTO commitq.finished_jobs
            (id, queue, kind, args, state, priority, run_at, attempt, max_attempts, lease_token,
             worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, finished_at)
        SELECT id, queue, kind, args, p_state, priority, run_at, attempt, max_attempts, lease_token,
               worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, pg_catalog.now()
          FROM moved
        RETURNING id, queue
    )
    SELECT array_agg(ins.id), array_agg(ins.queue),
           (SELECT array_agg(moved.id) FROM moved WHERE moved.has_dependents)
      INTO v_ids, v_queues, v_parents FROM ins;
    -- Jobs that others wait for (dependencies.sql): completed ones count as
    -- done for them, discarded or cancelled ones cancel them.
    IF v_parents IS NOT NULL THEN
        IF p_state = 'completed' THEN
            PERFORM commitq._release_dependents(v_parents);
        ELSE
            PERFORM commitq._cancel_dependents(v_parents, p_state);
        END IF;
    END IF;
    -- Discards and cancellations count here, whichever path finishes the
    -- job; completions count in _complete_leased, kept or not.
    IF p_state <> 'completed' AND v_queues IS NOT NULL THEN
        PERFORM commitq._count_outcome(v_queues, p_state::text);
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END
$$;

-- Complete every job of the batch whose (job_id, lease_token) is its
-- current, live lease; `done` holds the ids completed, `done_keys` and
-- `done_queues` their concurrency keys (NULL for none) and queues. Completed
-- jobs are deleted, or moved to finished_jobs when commitq.config.keep_completed is
-- on; their concurrency keys' slots are given back in the same transaction.
-- With p_worker, the slots go to the next jobs of the keys in the same
-- queues, claimed for p_worker under a lease of p_lease and returned in
-- `taken` (see complete_and_take).
CREATE FUNCTION commitq._complete_leased(
    p_ids bigint[], p_tokens bigint[], p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL,
    OUT done bigint[], OUT done_keys text[], OUT done_queues text[],
    OUT taken commitq.claimed_job[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_parents bigint[];
BEGIN
    IF (SELECT c.keep_completed FROM commitq.config c) THEN
        -- Lock in id order so that two overlapping batches cannot deadlock.
        SELECT coalesce(array_agg(l.id), '{}'), array_agg(l.concurrency_key), array_agg(l.queue)
          INTO done, done_keys, done_queues
          FROM (SELECT j.id, j.concurrency_key, j.queue
                  FROM commitq.jobs j
                 WHERE j.id = ANY (p_ids)
                   AND (j.id, j.lease_token) IN (SELECT * FROM unnest(p_ids, p_tokens))
                   -- CASE: looked up by primary key (see _locked_lease)
                   AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > clock_timestamp() END
                 ORDER BY j.id
                   FOR UPDATE OF j) l;
        PERFORM commitq._move_to_finished(done, 'completed');
    ELSE
        -- One statement: the lease check and the delete. `id = ANY` and the
        -- lease test as a CASE, so the plan looks the batch up by primary key
        -- whatever the statistics say about running jobs (see _locked_lease).
        WITH gone AS (
            DELETE FROM commitq.jobs j
             WHERE j.id = ANY (p_ids)
               AND (j.id, j.lease_token) IN (SELECT * FROM unnest(p_ids, p_tokens))
               AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > clock_timestamp() END
            RETURNING j.id, j.concurrency_key, j.queue, j.has_dependents
        )
        SELECT coalesce(array_agg(gone.id), '{}'), array_agg(gone.concurrency_key),
               array_agg(gone.queue), array_agg(gone.id) FILTER (WHERE gone.has_dependents)
          INTO done, done_keys, done_queues, v_parents
          FROM gone;
        -- Jobs that others wait for (dependencies.sql), in a statement of
        -- its own (see _release_dependents).
        IF v_parents IS NOT NULL THEN
            PERFORM commitq._release_dependents(v_parents);
        END IF;
    END IF;
    -- Throughput counters (monitoring.sql): one statement per batch.
    IF done_queues IS NOT NULL THEN
        PERFORM commitq._count_outcome(done_queues, 'completed');
    END IF;
    -- Only when some job had a key (_release_keys ignores the NULLs of the
    -- others): most completions skip the call.
    IF array_remove(done_keys, NULL) <> '{}' THEN
        taken := commitq._release_keys(done_keys, done_queues, p_worker, p_lease);
    END IF;
END
$$;

-- Finish a job successfully. Call it in the transaction that makes the job's
-- own database writes: they commit together, or neither does.
CREATE FUNCTION commitq.complete(job_id bigint, lease_token bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF cardinality((commitq._complete_leased(ARRAY[complete.job_id], ARRAY[complete.lease_token])).done) = 0 THEN
        PERFORM commitq._lease_error(complete.job_id, complete.lease_token);
    END IF;
END
$$;

-- Finish many jobs in one statement. Jobs whose lease is stale or expired
-- are left alone and come back with completed = false (no error, so one lost
-- lease does not undo the rest of the batch).
CREATE FUNCTION commitq.complete_many(job_ids bigint[], lease_tokens bigint[])
RETURNS TABLE (job_id bigint, completed boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ok bigint[];
BEGIN
    PERFORM commitq._check(commitq._batch_problem(complete_many.job_ids, complete_many.lease_tokens));
    v_ok := (commitq._complete_leased(complete_many.job_ids, complete_many.lease_tokens)).done;
    RETURN QUERY
        SELECT t.id, t.id = ANY (v_ok)
          FROM unnest(complete_many.job_ids) WITH ORDINALITY AS t(id, ord)
         ORDER BY t.ord;
END
$$;

-- Finish a batch as complete_many does, and take over the slots of
-- concurrency keys it gives back: for each completed job with a key, the
-- next blocked job of that key, if it is in the same queue, is claimed for
-- `worker` under a lease of `lease` in the same statement, and comes back
-- in `next` of that job's row (NULL otherwise). A worker that drains keyed
-- jobs this way passes each key's slot straight from one job to the next:
-- no claim, no NOTIFY, one write for the next job instead of two. One row
-- per input job, in input order.
CREATE FUNCTION commitq.complete_and_take(
    job_ids bigint[],
    lease_tokens bigint[],
    worker text,
    lease interval DEFAULT '5 minutes')
RETURNS TABLE (job_id bigint, completed boolean, next commitq.claimed_job)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    PERFORM commitq._check(coalesce(
        commitq._batch_problem(complete_and_take.job_ids, complete_and_take.lease_tokens),
        commitq._worker_lease_problem(complete_and_take.worker, complete_and_take.lease)));
    SELECT * INTO r FROM commitq._complete_leased(
        complete_and_take.job_ids, complete_and_take.lease_tokens,
        complete_and_take.worker, complete_and_take.lease);
    IF r.taken IS NULL THEN
        -- The common case: no job of the keys was waiting.
        RETURN QUERY
            SELECT t.id, t.id = ANY (r.done), NULL::commitq.claimed_job
              FROM unnest(complete_and_take.job_ids) WITH ORDINALITY AS t(id, ord)
             ORDER BY t.ord;
        RETURN;
    END IF;
    -- The k-th completed job of a key and queue (in input order) gets the
    -- k-th job taken for that key and queue (in claim order): more than one
    -- only where a key's limit is above 1.
    RETURN QUERY
        WITH input AS (
            SELECT t.id, t.ord FROM unnest(complete_and_take.job_ids) WITH ORDINALITY AS t(id, ord)
        ), done AS (
            -- A job listed twice is paired at its first place only.
            SELECT min(input.ord) AS ord, d.key, d.queue,
                   row_number() OVER (PARTITION BY d.key, d.queue ORDER BY min(input.ord)) AS rk
              FROM unnest(r.done, r.done_keys, r.done_queues) AS d(id, key, queue)
              JOIN input ON input.id = d.id
             GROUP BY d.id, d.key, d.queue
        ), taken AS (
            SELECT t AS job,
                   row_number() OVER (PARTITION BY t.concurrency_key, t.queue
                                      ORDER BY t.priority, t.run_at, t.job_id) AS rk
              FROM unnest(r.taken) AS t
        )
        SELECT input.id, input.id = ANY (r.done), taken.job
          FROM input
          LEFT JOIN done ON done.ord = input.ord
          LEFT JOIN taken ON (taken.job).concurrency_key = done.key
                         AND (taken.job).queue = done.queue AND taken.rk = done.rk
         ORDER BY input.ord;
END
$$;

-- A worker's loop in one call and one transaction: complete the jobs it has
-- finished, then claim the next batch. Halves the commits of a busy worker.
-- Completions whose lease was lost are skipped with a WARNING (their jobs
-- run again elsewhere); use complete_many to see which.
CREATE FUNCTION commitq.complete_and_claim(
    job_ids bigint[],
    lease_tokens bigint[],
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes')
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lost integer;
BEGIN
    PERFORM commitq._check(commitq._batch_problem(complete_and_claim.job_ids, complete_and_claim.lease_tokens));
    v_lost := cardinality(complete_and_claim.job_ids)
            - cardinality((commitq._complete_leased(complete_and_claim.job_ids, complete_and_claim.lease_tokens)).done);
    IF v_lost > 0 THEN
        RAISE WARNING 'commitq: % of % completions refused: stale or expired lease',
            v_lost, cardinality(complete_and_claim.job_ids);
    END IF;
    RETURN QUERY SELECT * FROM commitq.claim(complete_and_claim.queue, complete_and_claim.worker,
                                             complete_and_claim.max_jobs, complete_and_claim.lease);
END
$$;

-- Record a failed attempt. The job is retried after an exponential backoff
-- with jitter (or after retry_in, when given), or discarded, with its error
-- history kept, once it has used max_attempts or when discard is true (a
-- failure that no retry can fix). A job whose cancellation was requested is
-- cancelled instead of retried. Returns the job's new state and run_at.
CREATE FUNCTION commitq.fail(
    job_id bigint,
    lease_token bigint,
    error text,
    retry_in interval DEFAULT NULL,
    discard boolean DEFAULT false,
    OUT state commitq.job_state,
    OUT run_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j commitq.jobs;
    v_errors jsonb;
BEGIN
    PERFORM commitq._check(CASE
        WHEN fail.error IS NULL THEN 'error must not be NULL'
        WHEN fail.discard IS NULL THEN 'discard must not be NULL'
        WHEN fail.retry_in < interval '0' OR NOT isfinite(now() + fail.retry_in)
            THEN 'retry_in must be a finite interval >= 0' END);
    j := commitq._locked_lease(fail.job_id, fail.lease_token);
    v_errors := commitq._push_error(j.errors, j.attempt, j.worker, fail.error);

    IF fail.discard OR j.cancel_requested OR j.attempt >= j.max_attempts THEN
        fail.state := CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'discarded' END;
        fail.run_at := j.run_at;
        UPDATE commitq.jobs SET errors = v_errors WHERE id = j.id;
        PERFORM commitq._move_to_finished(ARRAY[j.id], fail.state);
        PERFORM commitq._release_keys(ARRAY[j.concurrency_key]);
        RETURN;
    END IF;

    fail.run_at := now() + coalesce(fail.retry_in, commitq._backoff(j.attempt));
    fail.state := CASE WHEN fail.run_at <= now() THEN 'available' ELSE 'scheduled' END;
    UPDATE commitq.jobs
       SET state = fail.state, run_at = fail.run_at, errors = v_errors,
           lease_expires_at = NULL
     WHERE id = j.id;
    PERFORM commitq._release_keys(ARRAY[j.concurrency_key]);
    PERFORM commitq._count_outcome(ARRAY[j.queue], 'failed');
    IF fail.state = 'available' THEN
        PERFORM commitq._wake(j.queue);
    END IF;
END
$$;

-- Extend a running job's lease by `extend` (default: the lease it was
-- claimed with), from now. Returns the new expiry and whether an operator
-- asked for the job to be cancelled, in which case the worker should stop
-- and call fail (the job is then cancelled, not retried).
CREATE FUNCTION commitq.heartbeat(
    job_id bigint,
    lease_token bigint,
    extend interval DEFAULT NULL,
    OUT lease_expires_at timestamptz,
    OUT cancel_requested boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j commitq.jobs;
BEGIN
    PERFORM commitq._check(CASE
        WHEN heartbeat.extend < interval '1 second' OR heartbeat.extend > interval '7 days'
            THEN 'extend out of range 1 second..7 days' END);
    j := commitq._locked_lease(heartbeat.job_id, heartbeat.lease_token);
    UPDATE commitq.jobs
       SET lease_expires_at = clock_timestamp() + coalesce(heartbeat.extend, j.lease_interval)
     WHERE id = j.id
    RETURNING lease_expires_at, cancel_requested
      INTO heartbeat.lease_expires_at, heartbeat.cancel_requested;
END
$$;

-- Put a running job back for later (now + delay) without spending an
-- attempt: for "not yet" rather than "failed". Returns the new run_at.
CREATE FUNCTION commitq.snooze(job_id bigint, lease_token bigint, delay interval)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j commitq.jobs;
    v_run_at timestamptz;
BEGIN
    PERFORM commitq._check(CASE
        WHEN snooze.delay IS NULL THEN 'delay must not be NULL'
        WHEN snooze.delay < interval '0' OR NOT isfinite(now() + snooze.delay)
            THEN 'delay must be a finite interval >= 0' END);
    j := commitq._locked_lease(snooze.job_id, snooze.lease_token);
    PERFORM commitq._release_keys(ARRAY[j.concurrency_key]);
    IF j.cancel_requested THEN
        PERFORM commitq._move_to_finished(ARRAY[j.id], 'cancelled');
        RETURN NULL;
    END IF;
    v_run_at := now() + snooze.delay;
    UPDATE commitq.jobs
       SET state = CASE WHEN v_run_at <= now() THEN 'available' ELSE 'scheduled' END::commitq.job_state,
           run_at = v_run_at,
           attempt = attempt - 1,
           lease_expires_at = NULL
     WHERE id = j.id;
    IF v_run_at <= now() THEN
        PERFORM commitq._wake(j.queue);
    END IF;
    RETURN v_run_at;
END
$$;
