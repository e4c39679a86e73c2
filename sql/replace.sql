-- Replace and debounce: enqueue(..., idempotency_key => k, on_duplicate =>
-- 'replace' | 'debounce') when k already names a job of the queue.
--
--   'replace'   a job still waiting (scheduled, available, blocked, waiting)
--               takes the new call's args, priority, run_at and max_attempts.
--   'debounce'  a job still waiting keeps its args and priority, and its
--               run_at moves to the later of its own and the new call's:
--               "run once, this long after the last call".
--   either      a running job is never changed: a follow-up job with the new
--               call's values takes over the key and waits (state 'waiting')
--               until the running one finishes, however it finishes; later
--               calls replace or debounce that follow-up, so a burst of calls
--               during a run adds one run, not one per call. A job that has
--               finished is not changed either: a new job takes the key.
--
-- graphile-worker's job_key modes are the model ('replace' there, and
-- 'preserve_run_at' close to debounce); a running job there gets a new job
-- beside it, which may run at the same time, where here it runs after.
--
-- Concurrency: the enqueue holds the lock of the key's row in
-- commitq.idempotency_keys (its INSERT ... ON CONFLICT locks it), so calls
-- with one key take turns; the job is then locked FOR NO KEY UPDATE, which
-- waits for a claim that is taking it right now (the claim's SKIP LOCKED
-- passes over a job being replaced), and reads the state the claim left.

-- The job `p_job_id` that the key names, for a call with on_duplicate
-- `p_mode`: 'updated' when it was still waiting and now has the new values,
-- 'after' when it is running (a follow-up must wait for it), 'new' when it
-- has finished (a new job takes the key).
CREATE FUNCTION commitq._enqueue_replace(
    p_job_id bigint, p_args jsonb, p_priority integer, p_run_at timestamptz,
    p_max_attempts integer, p_mode text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j commitq.jobs;
    v_run_at timestamptz;
    v_state commitq.job_state;
BEGIN
    SELECT * INTO j FROM commitq.jobs x WHERE x.id = p_job_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'new';
    ELSIF j.state = 'running' THEN
        RETURN 'after';
    END IF;
    v_run_at := CASE WHEN p_mode = 'debounce' THEN greatest(j.run_at, coalesce(p_run_at, now()))
                     ELSE coalesce(p_run_at, now()) END;
    -- Jobs parked for their concurrency key or their dependencies keep
    -- their state: they leave it when the key or the dependencies say so.
    v_state := CASE WHEN j.state IN ('available', 'scheduled') AND NOT j.slot_held
                    THEN CASE WHEN v_run_at > now() OR j.after_xact IS NOT NULL
                              THEN 'scheduled' ELSE 'available' END::commitq.job_state
                    ELSE j.state END;
    IF p_mode = 'replace' THEN
        UPDATE commitq.jobs x
           SET args = p_args, priority = p_priority, run_at = v_run_at,
               max_attempts = p_max_attempts, state = v_state
         WHERE x.id = j.id;
    ELSE
        UPDATE commitq.jobs x SET run_at = v_run_at, state = v_state WHERE x.id = j.id;
    END IF;
    IF v_state = 'available' THEN
        PERFORM commitq._wake(j.queue);
    END IF;
    RETURN 'updated';
END
$$;
