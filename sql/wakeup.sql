-- Wake-up: whatever makes a job of a queue available (enqueue, fail or
-- snooze to now, retry, promotion of due or blocked jobs, a key's slot handed
-- on) calls commitq._wake, which wakes workers two ways at commit:
--
-- - waiting claims (commitq.claim_wait, sql/claim_wait.sql), through shared
--   memory: commitq._wake_at_commit, nearly free, needs the preload line;
-- - LISTENing workers, through a NOTIFY "commitq:<queue>": a claim that finds
--   nothing in a session that LISTENs on that channel registers its worker
--   in commitq.waiting_workers (or the worker calls commitq.start_waiting),
--   and producers pay for a NOTIFY only while such a worker waits.

-- Wake the waiting claims of queue `p_queue` when the calling transaction
-- commits (forgotten if it or the subtransaction that called this aborts).
-- In C (extension/src/wait_slots.rs): it records a slot number in the
-- backend's memory; the commit bumps that slot's generation in shared
-- memory and wakes its waiters. Does nothing without the preload line.
CREATE FUNCTION commitq._wake_at_commit(p_queue text) RETURNS void
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'wake_at_commit_sql_wrapper';

-- Whether this server wakes waiting claims at commit: true when
-- shared_preload_libraries loads pg_commitq (then claim_wait sleeps until a
-- commit; else it polls). Clients ask it once to choose how to wait.
CREATE FUNCTION commitq.wait_supported() RETURNS boolean
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'wait_slots_attached_wrapper';

-- Wake workers waiting on a queue at commit: waiting claims always, and
-- NOTIFY "commitq:<queue>" when a LISTENing worker of that queue is waiting
-- (see waiting_workers in schema.sql). Postgres folds identical
-- notifications of one transaction.
CREATE FUNCTION commitq._wake(p_queue text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._wake_at_commit(p_queue);
    PERFORM pg_catalog.pg_notify('commitq:' || p_queue, '')
      WHERE EXISTS (SELECT 1 FROM commitq.waiting_workers w WHERE w.queue = p_queue);
END
$$;

-- A worker that stops claiming from a queue says so, so that enqueues stop
-- sending it NOTIFYs at once instead of until maintain() prunes its entry
-- (a notifying transaction commits alone: see waiting_workers).
CREATE FUNCTION commitq.stop_waiting(queue text, worker text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM commitq._check(coalesce(commitq._queue_problem(stop_waiting.queue), CASE
        WHEN stop_waiting.worker IS NULL THEN 'worker must not be NULL' END));
    DELETE FROM commitq.waiting_workers w
     WHERE w.queue = stop_waiting.queue AND w.worker = stop_waiting.worker;
END
$$;

-- Register a worker as waiting for NOTIFYs on a queue, for a worker that
-- LISTENs on one connection and claims on another (a claim registers its
-- worker only when its own session LISTENs on "commitq:<queue>", so that
-- polling workers cost producers no NOTIFY). Call it after an empty claim,
-- then claim once more before waiting: a job committed between the claim and
-- the registration sent no NOTIFY. The next claim that finds work clears it,
-- as does commitq.stop_waiting.
CREATE FUNCTION commitq.start_waiting(queue text, worker text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM commitq._check(coalesce(commitq._queue_problem(start_waiting.queue), CASE
        WHEN start_waiting.worker IS NULL THEN 'worker must not be NULL' END));
    INSERT INTO commitq.waiting_workers AS w (queue, worker)
    VALUES (start_waiting.queue, start_waiting.worker)
    ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
END
$$;
