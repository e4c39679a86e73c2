-- PL/pgSQL equivalent of the single-job commitq.enqueue written in C
-- (extension/src/enqueue.rs), for the install without a library (`make
-- sql-only`). It replaces the LANGUAGE c declaration in sql/enqueue.sql and
-- does what the C function does, step by step: check every job (so that bad
-- input is always CQ001 raised here), hand jobs with an idempotency key,
-- after_xact, depends_on or on_duplicate to commitq._enqueue_keyed, and insert the others with one
-- statement that also says whether a worker waits for the queue.
--
-- The C function needs no SET search_path (its statements qualify every
-- name, operators included); this one is ordinary PL/pgSQL and pins it like
-- every other SECURITY DEFINER function of commitq.
CREATE FUNCTION commitq.enqueue(
    queue text,
    kind text,
    args jsonb DEFAULT '{}',
    priority integer DEFAULT 0,
    run_at timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT 25,
    idempotency_key text DEFAULT NULL,
    concurrency_key text DEFAULT NULL,
    after_xact xid8 DEFAULT NULL,
    depends_on bigint[] DEFAULT NULL,
    on_duplicate text DEFAULT NULL,
    OUT job_id bigint,
    OUT inserted boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    -- NULL run_at means now(), the transaction's start.
    v_run_at timestamptz := coalesce(enqueue.run_at, now());
    v_wake boolean;
BEGIN
    PERFORM commitq._check(commitq._job_problem(
        enqueue.queue, enqueue.kind, jsonb_typeof(enqueue.args), pg_column_size(enqueue.args),
        enqueue.priority, enqueue.max_attempts, isfinite(v_run_at),
        enqueue.idempotency_key, enqueue.concurrency_key));

    IF enqueue.idempotency_key IS NOT NULL OR enqueue.after_xact IS NOT NULL
       OR enqueue.depends_on IS NOT NULL OR enqueue.on_duplicate IS NOT NULL THEN
        SELECT k.job_id, k.inserted INTO enqueue.job_id, enqueue.inserted
          FROM commitq._enqueue_keyed(enqueue.queue, enqueue.kind, enqueue.args, enqueue.priority,
                                      enqueue.run_at, enqueue.max_attempts, enqueue.idempotency_key,
                                      enqueue.concurrency_key, enqueue.after_xact,
                                      enqueue.depends_on, enqueue.on_duplicate) AS k;
        RETURN;
    END IF;

    INSERT INTO commitq.jobs AS j (queue, kind, args, state, priority, run_at, max_attempts,
                                   concurrency_key)
    VALUES (enqueue.queue, enqueue.kind, enqueue.args,
            CASE WHEN v_run_at > now() THEN 'scheduled' ELSE 'available' END::commitq.job_state,
            enqueue.priority, v_run_at, enqueue.max_attempts, enqueue.concurrency_key)
    RETURNING j.id,
              j.run_at <= now()
              AND EXISTS (SELECT FROM commitq.waiting_workers w WHERE w.queue = enqueue.queue)
         INTO enqueue.job_id, v_wake;
    enqueue.inserted := true;

    IF v_wake THEN
        PERFORM pg_notify('commitq:' || enqueue.queue, '');
    END IF;
END
$$;
