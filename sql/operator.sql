-- Operator actions on single jobs.

-- Cancel a job. A waiting job (scheduled, available, blocked) is cancelled at once;
-- a running one is flagged: its worker sees cancel_requested on its next
-- heartbeat, and the job ends as cancelled when the worker fails or snoozes
-- it, or when its lease expires. A worker that completes it anyway completes
-- it. Returns the job's state after the call; a finished job is left as is.
CREATE FUNCTION commitq.cancel(job_id bigint)
RETURNS commitq.job_state
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j commitq.jobs;
    f commitq.job_state;
BEGIN
    PERFORM commitq._check(CASE WHEN cancel.job_id IS NULL THEN 'job_id must not be NULL' END);
    SELECT * INTO j FROM commitq.jobs WHERE id = cancel.job_id FOR UPDATE;
    IF NOT FOUND THEN
        SELECT state INTO f FROM commitq.finished_jobs WHERE id = cancel.job_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'commitq: job % not found', cancel.job_id USING ERRCODE = 'CQ101';
        END IF;
        RETURN f;
    END IF;
    IF j.state = 'running' THEN
        UPDATE commitq.jobs SET cancel_requested = true WHERE id = j.id;
        RETURN 'running';
    END IF;
    PERFORM commitq._move_to_finished(ARRAY[j.id], 'cancelled');
    -- A blocked job leaves its key's count of blocked jobs. An available
    -- job that was handed a slot of its key gives it back, which passes it
    -- on to the next blocked job.
    IF j.state = 'blocked' THEN
        UPDATE commitq.concurrency_keys k SET blocked = greatest(k.blocked - 1, 0)
         WHERE k.key = j.concurrency_key;
    ELSIF j.slot_held THEN
        PERFORM commitq._release_keys(ARRAY[j.concurrency_key]);
    END IF;
    RETURN 'cancelled';
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
