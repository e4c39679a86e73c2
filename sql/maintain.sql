-- Housekeeping: call commitq.maintain() every few seconds from any number of
-- places (a worker loop, pg_cron, the engine). Every step takes its rows with
-- SKIP LOCKED and at most commitq.config.maintain_batch of them (schedules: one
-- evaluator per schedule, the others skip it), so concurrent calls split the
-- work instead of waiting on each other, and one call never holds many locks
-- or runs long; a backlog larger than a batch is worked off by the next calls.

-- Rescue jobs whose lease expired (their worker died or stalled): retry them
-- with backoff, or discard them after max_attempts, or cancel them if that
-- was requested, giving back their concurrency keys' slots; make due
-- scheduled jobs available, and blocked jobs whose key has a free slot
-- (after a limit was raised); forget idle concurrency keys; prune finished jobs past
-- commitq.config.finished_retention and idempotency keys past
-- commitq.config.idempotency_window, effects of jobs gone past
-- finished_retention, and workers registered as waiting for 10 minutes; fire
-- the due ticks of cron schedules and prune their old tick rows
-- (sql/schedule.sql). Returns how many rows each step touched (not the
-- pruned effects, waiting workers and ticks).
CREATE FUNCTION commitq.maintain(
    OUT rescued bigint,
    OUT discarded bigint,
    OUT promoted bigint,
    OUT pruned_jobs bigint,
    OUT pruned_keys bigint,
    OUT unblocked bigint,
    OUT pruned_concurrency_keys bigint,
    OUT scheduled bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    c commitq.config;
    j commitq.jobs;
    v_errors jsonb;
    v_final commitq.job_state;
    v_run_at timestamptz;
    v_woken bigint;
    v_released text[] := '{}';
BEGIN
    SELECT * INTO c FROM commitq.config;
    rescued := 0;
    discarded := 0;

    FOR j IN
        SELECT * FROM commitq.jobs x
         WHERE x.state = 'running' AND x.lease_expires_at < clock_timestamp()
         ORDER BY x.lease_expires_at
         LIMIT c.maintain_batch
           FOR UPDATE SKIP LOCKED
    LOOP
        v_released := v_released || j.concurrency_key;
        v_errors := commitq._push_error(j.errors, j.attempt, j.worker,
            format('lease expired at %s: worker %s stopped without completing or failing the job',
                   j.lease_expires_at, j.worker));
        IF j.cancel_requested OR j.attempt >= j.max_attempts THEN
            v_final := CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'discarded' END;
            UPDATE commitq.jobs SET errors = v_errors WHERE id = j.id;
            PERFORM commitq._move_to_finished(ARRAY[j.id], v_final);
            discarded := discarded + 1;
        ELSE
            v_run_at := now() + commitq._backoff(j.attempt);
            UPDATE commitq.jobs
               SET state = 'scheduled', run_at = v_run_at, errors = v_errors, lease_expires_at = NULL
             WHERE id = j.id;
            PERFORM commitq._count_outcome(ARRAY[j.queue], 'failed');
            rescued := rescued + 1;
        END IF;
    END LOOP;
    -- The slots of the rescued jobs' keys: their workers lost them with
    -- their leases.
    PERFORM commitq._release_keys(v_released);

    -- Jobs gated on a transaction that aborted never run. A status of NULL
    -- means the transaction is too old for Postgres to remember (its commit
    -- log was truncated, after about two billion transactions): its job is
    -- cancelled too, with the reason in its errors, for an operator to retry.
    FOR j IN
        SELECT * FROM commitq.jobs x
         WHERE x.state = 'scheduled' AND x.after_xact IS NOT NULL
           AND coalesce(pg_xact_status(x.after_xact), 'unknown') IN ('aborted', 'unknown')
         LIMIT c.maintain_batch
           FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE commitq.jobs SET errors = commitq._push_error(j.errors, j.attempt, NULL,
                   format('gating transaction %s %s', j.after_xact,
                          coalesce(pg_xact_status(j.after_xact), 'is too old to know')))
         WHERE id = j.id;
        PERFORM commitq._move_to_finished(ARRAY[j.id], 'cancelled');
        discarded := discarded + 1;
    END LOOP;

    -- Each step's pick is an ARRAY(...): it runs once, so its LIMIT bounds
    -- the step; an IN (...) semi-join may run it again per row.
    WITH due AS (
        UPDATE commitq.jobs u SET state = 'available'
         WHERE u.id = ANY (ARRAY(SELECT s.id FROM commitq.jobs s
                                  WHERE s.state = 'scheduled' AND s.run_at <= now()
                                    AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                                  ORDER BY s.run_at
                                  LIMIT c.maintain_batch
                                    FOR UPDATE SKIP LOCKED))
        RETURNING u.queue
    ), woken AS (
        SELECT commitq._wake(q.queue) FROM (SELECT DISTINCT due.queue FROM due) q
    )
    SELECT (SELECT count(*) FROM due), (SELECT count(*) FROM woken) INTO promoted, v_woken;

    WITH gone AS (
        DELETE FROM commitq.finished_jobs f
         WHERE f.id = ANY (ARRAY(SELECT o.id FROM commitq.finished_jobs o
                                  WHERE o.finished_at < now() - c.finished_retention
                                  ORDER BY o.finished_at
                                  LIMIT c.maintain_batch
                                    FOR UPDATE SKIP LOCKED))
        RETURNING 1
    )
    SELECT count(*) INTO pruned_jobs FROM gone;

    WITH gone AS (
        DELETE FROM commitq.idempotency_keys k
         WHERE (k.queue, k.key) IN (
                SELECT o.queue, o.key FROM commitq.idempotency_keys o
                 WHERE o.created_at < now() - c.idempotency_window
                   AND NOT EXISTS (SELECT 1 FROM commitq.jobs x WHERE x.id = o.job_id)
                 ORDER BY o.created_at
                 LIMIT c.maintain_batch
                   FOR UPDATE SKIP LOCKED)
        RETURNING 1
    )
    SELECT count(*) INTO pruned_keys FROM gone;

    SELECT k.promoted, k.pruned INTO unblocked, pruned_concurrency_keys
      FROM commitq._maintain_keys(c.maintain_batch) k;

    -- Effects of jobs that are gone (completed and deleted, or pruned), oldest
    -- first by job_effects_created_at_idx.
    DELETE FROM commitq.job_effects e
     WHERE (e.job_id, e.effect) IN (
            SELECT o.job_id, o.effect FROM commitq.job_effects o
             WHERE o.created_at < now() - c.finished_retention
               AND NOT EXISTS (SELECT 1 FROM commitq.jobs x WHERE x.id = o.job_id)
               AND NOT EXISTS (SELECT 1 FROM commitq.finished_jobs f WHERE f.id = o.job_id)
             ORDER BY o.created_at
             LIMIT c.maintain_batch
               FOR UPDATE SKIP LOCKED);

    -- A worker that stopped without claiming again stays registered as
    -- waiting; forget it after a while (it only costs needless NOTIFYs). No
    -- index on `since`: the table holds a row per waiting worker, and every
    -- empty claim rewrites `since`, an update that stays HOT only while no
    -- index covers the column.
    DELETE FROM commitq.waiting_workers w
     WHERE (w.queue, w.worker) IN (
            SELECT o.queue, o.worker FROM commitq.waiting_workers o
             WHERE o.since < now() - interval '10 minutes'
             LIMIT c.maintain_batch
               FOR UPDATE SKIP LOCKED);

    -- Outcome counters past the monitoring views' hour (monitoring.sql).
    PERFORM commitq._prune_counters(c.maintain_batch);

    -- Results of completed jobs past their window (dependencies.sql).
    PERFORM commitq._prune_results(c.maintain_batch);

    scheduled := commitq._run_schedules(now());
END
$$;
