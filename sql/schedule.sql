-- Cron schedules: a schedule enqueues one job per tick of its cron
-- expression, in its time zone. Ticks are evaluated by commitq.maintain()
-- (docs/features.md, Schedules), so schedules run wherever maintain runs: the
-- engine's background worker, the Rust pool, pg_cron, any loop.
--
-- There is no leader. Any number of evaluators may look at a schedule at
-- once, and each can only try to insert the same (schedule, tick) row into
-- commitq.schedule_ticks in the transaction that enqueues the tick's job:
-- its primary key lets one of them win, the others insert nothing (waiting,
-- if need be, for the winner's transaction to end). Exactly one job per
-- tick is a property of the data, whoever evaluates and however often.
--
-- Tick times are computed in Rust (extension/src/cron.rs) and declared here
-- by hand, as the checks of sql/checks.sql are.

CREATE TABLE commitq.cron_schedules (
    name               text PRIMARY KEY,
    cron               text NOT NULL,
    timezone           text NOT NULL,
    queue              text NOT NULL,
    kind               text NOT NULL,
    args               jsonb NOT NULL,
    priority           integer NOT NULL,
    max_attempts       integer NOT NULL,
    concurrency_key    text,
    -- Missed ticks no older than this run too (NULL: only the latest).
    backfill           interval,
    paused             boolean NOT NULL,
    -- Skip a tick while the job of the schedule's previous tick is still
    -- waiting or running.
    skip_while_running boolean NOT NULL,
    -- The evaluation cursor: every tick up to this instant was handled
    -- (fired, skipped or missed). Only moves forward.
    evaluated_until    timestamptz NOT NULL,
    -- The first tick after the cursor, kept with it (the view shows it
    -- without calling into the extension).
    next_tick          timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- One row per tick that fired: the row that makes it fire once.
CREATE TABLE commitq.schedule_ticks (
    schedule   text NOT NULL REFERENCES commitq.cron_schedules (name) ON DELETE CASCADE,
    tick       timestamptz NOT NULL,
    -- The job enqueued for the tick; NULL when the tick was skipped.
    job_id     bigint,
    -- true when the tick ran late, as part of a backfill window, because a
    -- later tick was already due.
    backfilled boolean NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('enqueued', 'skipped_running')),
    fired_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedule_ticks_pkey PRIMARY KEY (schedule, tick)
);

-- Pruning by age (maintain()).
CREATE INDEX schedule_ticks_fired_at_idx ON commitq.schedule_ticks (fired_at);

SELECT pg_catalog.pg_extension_config_dump('commitq.cron_schedules', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.schedule_ticks', '');

-- What is wrong with a cron expression (5 fields, 6 with seconds first, or
-- @yearly @annually @monthly @weekly @daily @midnight @hourly) and an IANA
-- time zone name, or NULL.
CREATE FUNCTION commitq._cron_problem(cron text, timezone text) RETURNS text
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'cron_problem_wrapper';

-- The ticks of a schedule due at "until" when those up to "after" were
-- handled, ascending: the latest tick in (after, until], and every tick in
-- it no older than until - backfill. Daylight-saving days follow croner's
-- rules (docs/features.md): a time that does not exist runs at the first
-- valid time after the gap; a time that exists twice runs once, the first.
CREATE FUNCTION commitq._cron_due(cron text, timezone text, after timestamptz,
                                  until timestamptz, backfill interval)
RETURNS timestamptz[]
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'cron_due_wrapper';

-- The first tick of a schedule after "after".
CREATE FUNCTION commitq._cron_next(cron text, timezone text, after timestamptz) RETURNS timestamptz
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'cron_next_wrapper';

-- Create a schedule, or replace the one of that name. Replacing keeps the
-- cursor when the cron expression and time zone stay the same (missed ticks
-- are still caught up); otherwise the new expression's ticks start now.
-- Returns the next tick (its first tick after now, for a new schedule).
CREATE FUNCTION commitq.schedule(
    name text,
    cron text,
    queue text,
    kind text,
    args jsonb DEFAULT '{}',
    timezone text DEFAULT 'UTC',
    priority integer DEFAULT 0,
    max_attempts integer DEFAULT 25,
    concurrency_key text DEFAULT NULL,
    backfill interval DEFAULT NULL,
    paused boolean DEFAULT false,
    skip_while_running boolean DEFAULT false)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_next timestamptz;
BEGIN
    PERFORM commitq._check(CASE
        WHEN name IS NULL THEN 'schedule name must not be NULL'
        WHEN name !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
            format('invalid schedule name %s: use 1 to 100 of A-Z a-z 0-9 _ . : - starting with a letter or digit',
                   quote_literal(name))
        WHEN args IS NULL OR jsonb_typeof(args) <> 'object' THEN 'args must be a JSON object'
        WHEN args ? '_schedule' THEN 'args must not have the key _schedule: the job gets it from its schedule'
        WHEN paused IS NULL THEN 'paused must not be NULL'
        WHEN skip_while_running IS NULL THEN 'skip_while_running must not be NULL'
        WHEN backfill IS NOT NULL AND NOT (backfill > interval '0' AND backfill <= interval '1 year') THEN
            format('backfill %s out of range: NULL, or more than 0 and at most 1 year', backfill)
        ELSE coalesce(commitq._cron_problem(cron, timezone),
                      commitq._job_problem(queue, kind, 'object', pg_column_size(args) + 128,
                                           priority, max_attempts, true, NULL, concurrency_key))
    END);
    INSERT INTO commitq.cron_schedules AS s
        (name, cron, timezone, queue, kind, args, priority, max_attempts, concurrency_key,
         backfill, paused, skip_while_running, evaluated_until, next_tick)
    VALUES (name, cron, timezone, queue, kind, args, priority, max_attempts, concurrency_key,
            backfill, paused, skip_while_running, now(), commitq._cron_next(cron, timezone, now()))
    ON CONFLICT ON CONSTRAINT cron_schedules_pkey DO UPDATE
       SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, queue = EXCLUDED.queue,
           kind = EXCLUDED.kind, args = EXCLUDED.args, priority = EXCLUDED.priority,
           max_attempts = EXCLUDED.max_attempts, concurrency_key = EXCLUDED.concurrency_key,
           backfill = EXCLUDED.backfill, paused = EXCLUDED.paused,
           skip_while_running = EXCLUDED.skip_while_running, updated_at = now(),
           evaluated_until = CASE WHEN s.cron = EXCLUDED.cron AND s.timezone = EXCLUDED.timezone
                                  THEN s.evaluated_until
                                  ELSE greatest(s.evaluated_until, EXCLUDED.evaluated_until) END,
           next_tick = CASE WHEN s.cron = EXCLUDED.cron AND s.timezone = EXCLUDED.timezone
                            THEN s.next_tick ELSE EXCLUDED.next_tick END
    RETURNING s.next_tick INTO v_next;
    RETURN v_next;
END
$$;

-- Delete a schedule and its tick history; its jobs already enqueued stay.
-- Returns whether it existed.
CREATE FUNCTION commitq.unschedule(name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._check(CASE WHEN name IS NULL THEN 'schedule name must not be NULL' END);
    DELETE FROM commitq.cron_schedules s WHERE s.name = unschedule.name;
    RETURN FOUND;
END
$$;

-- maintain()'s part (and the tests', with an instant of their choosing):
-- fire the due ticks of every schedule as of p_now. Returns how many jobs
-- were enqueued. Each schedule is evaluated under its row's lock, taken with
-- SKIP LOCKED: a concurrent evaluator skips a schedule another one is
-- evaluating (its ticks are that one's to fire) instead of waiting for its
-- transaction to end; the tick's primary key still decides between
-- evaluators that do not see each other's lock (one committed just before).
-- Schedules are taken in name order and each one's ticks in time order. A
-- schedule whose job cannot be enqueued (its queue's rules changed) is
-- reported with a warning and does not stop the others.
CREATE FUNCTION commitq._run_schedules(p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s commitq.cron_schedules;
    v_ticks timestamptz[];
    v_tick timestamptz;
    v_last timestamptz;
    v_prev bigint;
    v_job bigint;
    v_count bigint := 0;
BEGIN
    FOR s IN SELECT * FROM commitq.cron_schedules x WHERE x.evaluated_until < p_now ORDER BY x.name
                FOR UPDATE SKIP LOCKED LOOP
        -- A paused schedule's ticks pass unfired: resuming it does not
        -- catch them up.
        v_ticks := CASE WHEN s.paused THEN '{}'
                        ELSE commitq._cron_due(s.cron, s.timezone, s.evaluated_until, p_now, s.backfill) END;
        IF cardinality(v_ticks) > 0 THEN
            v_last := v_ticks[cardinality(v_ticks)];
            BEGIN
                FOREACH v_tick IN ARRAY v_ticks LOOP
                    -- The primary key decides who fires the tick.
                    INSERT INTO commitq.schedule_ticks (schedule, tick, backfilled, outcome)
                    VALUES (s.name, v_tick, v_tick < v_last, 'enqueued')
                    ON CONFLICT DO NOTHING;
                    CONTINUE WHEN NOT FOUND;
                    IF s.skip_while_running THEN
                        SELECT t.job_id INTO v_prev FROM commitq.schedule_ticks t
                         WHERE t.schedule = s.name AND t.tick < v_tick AND t.job_id IS NOT NULL
                         ORDER BY t.tick DESC LIMIT 1;
                        IF EXISTS (SELECT 1 FROM commitq.jobs j WHERE j.id = v_prev) THEN
                            UPDATE commitq.schedule_ticks t SET outcome = 'skipped_running'
                             WHERE t.schedule = s.name AND t.tick = v_tick;
                            CONTINUE;
                        END IF;
                    END IF;
                    SELECT e.job_id INTO v_job
                      FROM commitq.enqueue(s.queue, s.kind,
                               s.args || jsonb_build_object('_schedule', jsonb_build_object(
                                   'name', s.name,
                                   'tick', to_char(v_tick AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                   'backfilled', v_tick < v_last)),
                               s.priority, NULL, s.max_attempts, NULL, s.concurrency_key) e;
                    UPDATE commitq.schedule_ticks t SET job_id = v_job
                     WHERE t.schedule = s.name AND t.tick = v_tick;
                    v_count := v_count + 1;
                END LOOP;
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'commitq: schedule % not evaluated, will retry: %', s.name, SQLERRM;
                CONTINUE;
            END;
        END IF;
        UPDATE commitq.cron_schedules x
           SET evaluated_until = p_now, next_tick = commitq._cron_next(s.cron, s.timezone, p_now)
         WHERE x.name = s.name AND x.evaluated_until < p_now;
    END LOOP;
    -- Tick rows are kept as long as finished jobs, and the latest of each
    -- schedule always (the view shows it, skip_while_running reads it); at
    -- most maintain_batch a call, oldest first by schedule_ticks_fired_at_idx.
    DELETE FROM commitq.schedule_ticks t
     WHERE (t.schedule, t.tick) IN (
            SELECT o.schedule, o.tick FROM commitq.schedule_ticks o
             WHERE o.fired_at < now() - (SELECT c.finished_retention FROM commitq.config c)
               AND o.tick < (SELECT max(l.tick) FROM commitq.schedule_ticks l WHERE l.schedule = o.schedule)
             ORDER BY o.fired_at
             LIMIT (SELECT c.maintain_batch FROM commitq.config c)
               FOR UPDATE SKIP LOCKED);
    RETURN v_count;
END
$$;

-- Schedules with their next tick to handle (in the past when evaluation is
-- behind) and the last tick that fired.
CREATE VIEW commitq.schedules AS
SELECT s.name, s.cron, s.timezone, s.queue, s.kind, s.args, s.priority, s.max_attempts,
       s.concurrency_key, s.backfill, s.paused, s.skip_while_running,
       CASE WHEN NOT s.paused THEN s.next_tick END AS next_tick,
       l.tick AS last_tick, l.job_id AS last_job_id, l.outcome AS last_outcome,
       s.evaluated_until, s.created_at, s.updated_at
  FROM commitq.cron_schedules s
  LEFT JOIN LATERAL (SELECT t.tick, t.job_id, t.outcome FROM commitq.schedule_ticks t
                      WHERE t.schedule = s.name ORDER BY t.tick DESC LIMIT 1) l ON true;
