-- Pausing a queue: an operator stops a queue from handing out jobs (a bad
-- deploy, a downstream outage) without stopping its producers or its
-- workers. While a queue is paused:
--   * every claim path hands out nothing for it: commitq.claim (and so
--     complete_and_claim and the keyed claim it calls), and the take path of
--     complete_and_take, which then makes the next job of a key available
--     instead of taking it;
--   * enqueues go on as usual, and so do maintain's promotions;
--   * running jobs are untouched: they complete, fail, snooze and heartbeat.
--
-- The guarantee, at READ COMMITTED (the default, and what the clients use):
-- once pause() has committed, a claim that starts afterwards hands out no
-- job of the queue. pause() waits for nothing; a claim already past its
-- check when pause() commits may still hand out the jobs it picked. In a
-- REPEATABLE READ or SERIALIZABLE transaction "starts" means the
-- transaction's snapshot. tests/isolation/specs/pause-queue.spec holds both
-- halves.

-- One row per paused queue. Claims look the queue up here: a primary-key
-- probe of a table that is empty or nearly so.
CREATE TABLE commitq.paused_queues (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    -- The role that paused it, for the dashboard and the audit trail.
    paused_by  text NOT NULL DEFAULT session_user
);

SELECT pg_catalog.pg_extension_config_dump('commitq.paused_queues', '');

-- Stop handing out jobs of a queue. Returns true if the queue was running,
-- false if it was already paused (the call then changes nothing).
CREATE FUNCTION commitq.pause(queue text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_new boolean;
BEGIN
    PERFORM commitq._check(commitq._queue_problem(pause.queue));
    -- session_user, not current_user: inside SECURITY DEFINER current_user
    -- is commitq's owner.
    INSERT INTO commitq.paused_queues AS p (queue, paused_by)
    VALUES (pause.queue, session_user)
    ON CONFLICT (queue) DO NOTHING
    RETURNING true INTO v_new;
    RETURN coalesce(v_new, false);
END
$$;

-- Hand out jobs of a paused queue again, and wake its waiting workers.
-- Returns true if the queue was paused, false if it was not.
CREATE FUNCTION commitq.resume(queue text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM commitq._check(commitq._queue_problem(resume.queue));
    DELETE FROM commitq.paused_queues p WHERE p.queue = resume.queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Workers whose claims came back empty while paused wait for a NOTIFY.
    PERFORM commitq._wake(resume.queue);
    RETURN true;
END
$$;
