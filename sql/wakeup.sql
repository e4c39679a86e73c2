-- Wake-up: a claim that finds nothing registers its worker in
-- commitq.waiting_workers (see commitq.claim); whatever makes a job of that
-- queue available (enqueue, fail or snooze to now, retry, promotion of due
-- or blocked jobs) then sends a NOTIFY "commitq:<queue>", delivered at
-- commit. Producers pay for a NOTIFY only while a worker waits.

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
