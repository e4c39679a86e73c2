-- Monitoring: views that any dashboard, exporter or psql session can read
-- (the role commitq_reader may read them and nothing else), and the outcome
-- counters behind the throughput figures.
--
-- Completed jobs are deleted at completion (unless keep_completed), so how
-- many completed per minute cannot be counted from the tables afterwards:
-- the finishing statements count outcomes into commitq.queue_counters.
-- The counts by state come from the partial indexes of commitq.jobs, never
-- from a scan of the whole table (docs/operations.md has the plans and
-- timings on 1,000,000 jobs).

-- Outcomes per queue and clock minute. Each row is split over a few
-- buckets, picked by the writer's backend pid: a row is locked from the
-- counting statement to the commit, and one row per queue and minute would
-- make the completions of all workers of a queue commit one after another.
-- Written once per completion batch (_complete_leased), per failed attempt
-- (fail, lease rescue) and per discarded or cancelled job
-- (_move_to_finished); pruned by maintain() after two hours.
--   completed  jobs completed
--   failed     failed attempts whose job will run again (fail() with
--              attempts left, a lease that expired with attempts left)
--   discarded  jobs discarded (attempts used up, or failed permanently)
--   cancelled  jobs cancelled (by an operator, or gated on a transaction
--              that aborted)
CREATE TABLE commitq.queue_counters (
    queue      text NOT NULL,
    minute     timestamptz NOT NULL,
    bucket     smallint NOT NULL,
    completed  bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,
    discarded  bigint NOT NULL DEFAULT 0,
    cancelled  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, minute, bucket)
) WITH (
    -- Every completion batch rewrites a row: room on the page keeps the
    -- updates HOT (no indexed column changes).
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The views' time windows and maintain's pruning.
CREATE INDEX queue_counters_minute_idx ON commitq.queue_counters (minute);

-- Count jobs of p_queues (one element per job) as p_outcome ('completed',
-- 'failed', 'discarded' or 'cancelled') in this minute. Rows are written in
-- queue order, so two batches of several queues cannot deadlock.
CREATE FUNCTION commitq._count_outcome(p_queues text[], p_outcome text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO commitq.queue_counters AS c (queue, minute, bucket, completed, failed, discarded, cancelled)
    SELECT q, date_trunc('minute', now()), (pg_backend_pid() % 8)::smallint,
           count(*) FILTER (WHERE p_outcome = 'completed'),
           count(*) FILTER (WHERE p_outcome = 'failed'),
           count(*) FILTER (WHERE p_outcome = 'discarded'),
           count(*) FILTER (WHERE p_outcome = 'cancelled')
      FROM unnest(p_queues) q
     WHERE q IS NOT NULL
     GROUP BY q
     ORDER BY q
    ON CONFLICT (queue, minute, bucket) DO UPDATE
       SET completed = c.completed + excluded.completed,
           failed = c.failed + excluded.failed,
           discarded = c.discarded + excluded.discarded,
           cancelled = c.cancelled + excluded.cancelled;
END
$$;

-- maintain()'s part: forget counters older than two hours (the views show
-- one), at most p_batch rows a call. Returns how many it deleted.
CREATE FUNCTION commitq._prune_counters(p_batch integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pruned bigint;
BEGIN
    WITH gone AS (
        DELETE FROM commitq.queue_counters c
         WHERE (c.queue, c.minute, c.bucket) IN (
                SELECT o.queue, o.minute, o.bucket FROM commitq.queue_counters o
                 WHERE o.minute < now() - interval '2 hours'
                 ORDER BY o.minute
                 LIMIT p_batch
                   FOR UPDATE SKIP LOCKED)
        RETURNING 1
    )
    SELECT count(*) INTO v_pruned FROM gone;
    RETURN v_pruned;
END
$$;

-- Per-queue counts by state for the other states come from index-only
-- scans of their partial indexes, which carry the queue (schema.sql); and
-- the planner's estimate of a big backlog (_available_by_queue) from these
-- statistics of how queue and state go together.
CREATE STATISTICS commitq.jobs_queue_state (mcv) ON queue, state FROM commitq.jobs;

-- Available jobs per queue and the oldest one's run_at, without counting a
-- big backlog job by job: queues are found by a loose index scan of
-- jobs_claim_idx (one descent per queue), a queue's jobs are counted up to
-- 10,000, and a queue with more gets the planner's estimate instead
-- (`exact` false; from the statistics of the last ANALYZE, which autovacuum
-- runs on commitq.jobs after 5% of it changed). The oldest run_at is the
-- first of each priority, again one descent per priority. SECURITY
-- DEFINER: the view queue_stats calls it as its reader. VOLATILE, as
-- EXPLAIN requires.
CREATE FUNCTION commitq._available_by_queue(
    OUT queue text, OUT available bigint, OUT exact boolean, OUT oldest timestamptz)
RETURNS SETOF record
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cap constant integer := 10000;
    v_queue text;
    v_prio smallint;
    v_plan jsonb;
BEGIN
    v_queue := (SELECT j.queue FROM commitq.jobs j WHERE j.state = 'available' ORDER BY j.queue LIMIT 1);
    WHILE v_queue IS NOT NULL LOOP
        _available_by_queue.queue := v_queue;
        SELECT count(*) INTO _available_by_queue.available
          FROM (SELECT 1 FROM commitq.jobs j
                 WHERE j.queue = v_queue AND j.state = 'available' LIMIT v_cap + 1) x;
        _available_by_queue.exact := _available_by_queue.available <= v_cap;
        IF NOT _available_by_queue.exact THEN
            EXECUTE pg_catalog.format(
                'EXPLAIN (FORMAT JSON) SELECT 1 FROM commitq.jobs WHERE queue = %L AND state = %L',
                v_queue, 'available') INTO v_plan;
            _available_by_queue.available :=
                greatest((v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric::bigint, v_cap + 1);
        END IF;
        _available_by_queue.oldest := NULL;
        v_prio := (SELECT j.priority FROM commitq.jobs j
                    WHERE j.queue = v_queue AND j.state = 'available' ORDER BY j.priority LIMIT 1);
        WHILE v_prio IS NOT NULL LOOP
            _available_by_queue.oldest := least(_available_by_queue.oldest,
                (SELECT j.run_at FROM commitq.jobs j
                  WHERE j.queue = v_queue AND j.state = 'available' AND j.priority = v_prio
                  ORDER BY j.run_at LIMIT 1));
            v_prio := (SELECT j.priority FROM commitq.jobs j
                        WHERE j.queue = v_queue AND j.state = 'available' AND j.priority > v_prio
                        ORDER BY j.priority LIMIT 1);
        END LOOP;
        RETURN NEXT;
        v_queue := (SELECT j.queue FROM commitq.jobs j
                     WHERE j.state = 'available' AND j.queue > v_queue ORDER BY j.queue LIMIT 1);
    END LOOP;
END
$$;

-- One row per queue that has live jobs, outcomes in the last hour, or a
-- pause. Counts come from the partial index of each state, never from a
-- scan of the table: `available` is exact up to 10,000 and estimated above
-- (available_exact false; see _available_by_queue), the others are exact
-- (index-only scans, as long as the jobs in those states).
--   latency_seconds  how long the oldest available job has been due (0 when
--                    none is available): how far behind the workers are
--   *_last_minute    the last complete clock minute
--   *_last_hour      the current clock minute and the 59 before it
CREATE VIEW commitq.queue_stats AS
WITH available AS (
    SELECT a.queue, a.available AS n, a.exact, a.oldest FROM commitq._available_by_queue() a
), waiting AS (
    -- One arm per state, so that each arm can use its state's partial index.
    SELECT s.queue, count(*) FILTER (WHERE s.st = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE s.st = 'running') AS running,
           count(*) FILTER (WHERE s.st = 'blocked') AS blocked
      FROM (SELECT j.queue, 'scheduled' AS st FROM commitq.jobs j WHERE j.state = 'scheduled'
            UNION ALL
            SELECT j.queue, 'running' FROM commitq.jobs j WHERE j.state = 'running'
            UNION ALL
            SELECT j.queue, 'blocked' FROM commitq.jobs j WHERE j.state = 'blocked') s
     GROUP BY s.queue
), outcomes AS (
    SELECT c.queue,
           sum(c.completed) FILTER (WHERE c.minute = date_trunc('minute', now()) - interval '1 minute') AS completed_last_minute,
           sum(c.completed) AS completed_last_hour,
           sum(c.failed) AS failed_last_hour,
           sum(c.discarded) AS discarded_last_hour,
           sum(c.cancelled) AS cancelled_last_hour
      FROM commitq.queue_counters c
     WHERE c.minute >= date_trunc('minute', now()) - interval '59 minutes'
     GROUP BY c.queue
), queues AS (
    SELECT available.queue FROM available
    UNION SELECT waiting.queue FROM waiting
    UNION SELECT outcomes.queue FROM outcomes
    UNION SELECT p.queue FROM commitq.paused_queues p
)
SELECT q.queue,
       p.queue IS NOT NULL AS paused,
       coalesce(a.n, 0) AS available,
       coalesce(w.scheduled, 0) AS scheduled,
       coalesce(w.running, 0) AS running,
       coalesce(w.blocked, 0) AS blocked,
       coalesce(greatest(extract(epoch FROM now() - a.oldest), 0), 0)::double precision AS latency_seconds,
       coalesce(o.completed_last_minute, 0)::bigint AS completed_last_minute,
       coalesce(o.completed_last_hour, 0)::bigint AS completed_last_hour,
       coalesce(o.failed_last_hour, 0)::bigint AS failed_last_hour,
       coalesce(o.discarded_last_hour, 0)::bigint AS discarded_last_hour,
       coalesce(o.cancelled_last_hour, 0)::bigint AS cancelled_last_hour,
       coalesce(a.exact, true) AS available_exact
  FROM queues q
  LEFT JOIN available a ON a.queue = q.queue
  LEFT JOIN waiting w ON w.queue = q.queue
  LEFT JOIN outcomes o ON o.queue = q.queue
  LEFT JOIN commitq.paused_queues p ON p.queue = q.queue;

-- Outcomes per queue and minute, for the last 60 clock minutes (the current
-- one included, so far); minutes without any outcome have no row.
CREATE VIEW commitq.throughput AS
SELECT c.queue, c.minute,
       sum(c.completed)::bigint AS completed,
       sum(c.failed)::bigint AS failed,
       sum(c.discarded)::bigint AS discarded,
       sum(c.cancelled)::bigint AS cancelled
  FROM commitq.queue_counters c
 WHERE c.minute >= date_trunc('minute', now()) - interval '59 minutes'
 GROUP BY c.queue, c.minute;

-- Every job, live and finished, with what both tables hold. Filter on
-- state, queue, kind or id and page by id: the conditions reach both arms,
-- and `ORDER BY id DESC LIMIT n` merges two backward scans of the primary
-- keys, e.g.
--   SELECT * FROM commitq.job_list WHERE finished AND state = 'discarded'
--      AND id < $last ORDER BY id DESC LIMIT 50;
-- `finished` is a constant of each arm: a filter on it drops the other arm
-- at planning, so a page of finished jobs does not walk every live one to
-- find none (and a page of live jobs skips finished_jobs, whose CHECK on
-- state does that already for a filter on a live state).
-- lease_expires_at is NULL for finished jobs, finished_at for live ones.
CREATE VIEW commitq.job_list AS
SELECT j.id, j.queue, j.kind, j.args, j.state, j.priority, j.run_at, j.attempt, j.max_attempts,
       j.worker, j.concurrency_key, j.idempotency_key, j.errors, j.enqueued_at, j.claimed_at,
       j.lease_expires_at, NULL::timestamptz AS finished_at, j.lease_token, j.cancel_requested,
       false AS finished
  FROM commitq.jobs j
UNION ALL
SELECT f.id, f.queue, f.kind, f.args, f.state, f.priority, f.run_at, f.attempt, f.max_attempts,
       f.worker, f.concurrency_key, f.idempotency_key, f.errors, f.enqueued_at, f.claimed_at,
       NULL::timestamptz, f.finished_at, f.lease_token, false, true
  FROM commitq.finished_jobs f;

-- Concurrency keys in use (a key's row lives from its first claim until
-- maintain() finds it idle): slots in use, jobs waiting for one, the limit.
CREATE VIEW commitq.concurrency_key_stats AS
SELECT k.key, k.running, k.blocked, k.max_running, k.running >= k.max_running AS at_limit
  FROM commitq.concurrency_keys k;

-- Named leases (named_lease.sql) and who holds them. A lease past its
-- expiry is free for the next acquirer but keeps its row until then:
-- `held` says whether it is still in force.
CREATE VIEW commitq.named_lease_holders AS
SELECT l.name, l.owner, l.token, l.expires_at, l.expires_at > clock_timestamp() AS held
  FROM commitq.named_leases l;
