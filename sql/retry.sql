-- Retrying: a failed attempt (commitq.fail) or a lease that ran out
-- (commitq.maintain) is retried after an exponential backoff with jitter,
-- until the job has used max_attempts; every error is kept in the job's
-- bounded error history. An operator runs a job again with commitq.retry.

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

-- Run a job again now. A scheduled job becomes available at once; a
-- discarded, cancelled or completed job comes back from finished_jobs as
-- available with its attempts reset and its error history kept. A job that
-- is running, already available, or blocked behind its concurrency key is
-- left alone (CQ104). Returns the state.
CREATE FUNCTION commitq.retry(job_id bigint)
RETURNS commitq.job_state
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j commitq.jobs;
    f commitq.finished_jobs;
    v_holder bigint;
BEGIN
    PERFORM commitq._check(CASE WHEN retry.job_id IS NULL THEN 'job_id must not be NULL' END);
    SELECT * INTO j FROM commitq.jobs WHERE id = retry.job_id FOR UPDATE;
    IF FOUND THEN
        IF j.state <> 'scheduled' THEN
            RAISE EXCEPTION 'commitq: job % is %, it cannot be retried', j.id, j.state
                USING ERRCODE = 'CQ104';
        END IF;
        UPDATE commitq.jobs SET state = 'available', run_at = now() WHERE id = j.id;
        PERFORM commitq._wake(j.queue);
        RETURN 'available';
    END IF;

    SELECT * INTO f FROM commitq.finished_jobs WHERE id = retry.job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'commitq: job % not found', retry.job_id USING ERRCODE = 'CQ101';
    END IF;

    -- A retried job takes its idempotency key back, unless a newer live job
    -- of the same queue holds it now: two live jobs must never share a key.
    IF f.idempotency_key IS NOT NULL THEN
        INSERT INTO commitq.idempotency_keys AS k (queue, key, job_id)
        VALUES (f.queue, f.idempotency_key, f.id)
        ON CONFLICT (queue, key) DO UPDATE SET job_id = excluded.job_id, created_at = excluded.created_at
         WHERE k.job_id = excluded.job_id
            OR NOT EXISTS (SELECT 1 FROM commitq.jobs x WHERE x.id = k.job_id);
        IF NOT FOUND THEN
            SELECT k.job_id INTO v_holder FROM commitq.idempotency_keys k
             WHERE k.queue = f.queue AND k.key = f.idempotency_key;
            RAISE EXCEPTION 'commitq: job % cannot be retried: its idempotency key now belongs to live job %',
                f.id, v_holder USING ERRCODE = 'CQ104';
        END IF;
    END IF;

    DELETE FROM commitq.finished_jobs WHERE id = f.id;
    INSERT INTO commitq.jobs (id, queue, kind, args, state, priority, run_at, attempt, max_attempts,
                              lease_token, worker, idempotency_key, concurrency_key, errors,
                              enqueued_at, claimed_at)
    VALUES (f.id, f.queue, f.kind, f.args, 'available', f.priority, now(), 0, f.max_attempts,
            f.lease_token, f.worker, f.idempotency_key, f.concurrency_key, f.errors,
            f.enqueued_at, f.claimed_at);
    PERFORM commitq._wake(f.queue);
    RETURN 'available';
END
$$;
