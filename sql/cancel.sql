-- Cancelling a job: an operator action (commitq.retry, the other one, is in
-- retry.sql).

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
        UPDATE commitq.concurrency_keys k SET blocked = k.blocked - 1
         WHERE k.key = j.concurrency_key;
    ELSIF j.slot_held THEN
        PERFORM commitq._release_keys(ARRAY[j.concurrency_key]);
    END IF;
    RETURN 'cancelled';
END
$$;
