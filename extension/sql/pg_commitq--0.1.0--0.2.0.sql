-- pg_commitq upgrade 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_commitq UPDATE.
--
-- Every change to a SQL object between the two versions (in sql/*.sql, which
-- a fresh CREATE EXTENSION at 0.2.0 runs) is repeated here, so that a
-- database upgraded from 0.1.0 ends with the same objects, grants and
-- comments as a fresh install: tests/upgrade/run.sh compares the two
-- catalogs and names any difference. (It is long because it repeats every
-- new object of the release whole; it is one file because ALTER EXTENSION
-- runs one script per version step.)
--
-- Rules (docs/upgrading.md): within a major version objects are only added
-- or compatibly replaced, never dropped or changed incompatibly, because
-- clients of 0.1.0 keep calling them. Use CREATE OR REPLACE for functions
-- whose signature stays the same, CREATE ... / ALTER TABLE ... ADD for new
-- objects, and repeat the GRANTs of sql/security.sql for anything new. The
-- script runs in one transaction as the extension's owner, with search_path
-- set to the extension's schema; name objects with their schema anyway, as
-- sql/*.sql does.
--

-- ===== 0.2.0: per-database grants (sql/security.sql) =====
-- The functions below, as sql/security.sql creates them; new functions are
-- executable by PUBLIC until revoked, as security.sql does for all of them.

-- What each role may do, listed once: the GRANTs below give it to the
-- cluster roles at install, and commitq.grant_producer and friends give it
-- to a role inside one database. commitq_operator is also a member of the
-- other two, so its rows are only what it adds to them.
CREATE FUNCTION commitq._role_privileges()
RETURNS TABLE (kind text, privilege text, object text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.kind, v.privilege, v.object FROM (VALUES
        ('producer', 'USAGE', 'SCHEMA commitq'),
        ('producer', 'USAGE', 'TYPE commitq.job_state'),
        ('producer', 'USAGE', 'TYPE commitq.claimed_job'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[])'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(jsonb)'),
        -- Named leases are for application code and workers alike.
        ('producer', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('worker', 'USAGE', 'SCHEMA commitq'),
        ('worker', 'USAGE', 'TYPE commitq.job_state'),
        ('worker', 'USAGE', 'TYPE commitq.claimed_job'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.claim(text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_many(bigint[], bigint[])'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_claim(bigint[], bigint[], text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_take(bigint[], bigint[], text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.stop_waiting(text, text)'),
        -- The waiting claim (sql/claim_wait.sql, sql/wakeup.sql).
        ('worker', 'EXECUTE', 'PROCEDURE commitq.claim_wait(text, text, integer, interval, interval, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.start_waiting(text, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.wait_supported()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.fail(bigint, bigint, text, interval, boolean)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.heartbeat(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.snooze(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_lease(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_begin(bigint, bigint, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_done(bigint, bigint, text, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.maintain()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('operator', 'USAGE', 'SCHEMA commitq'),
        ('operator', 'USAGE', 'TYPE commitq.job_state'),
        ('operator', 'USAGE', 'TYPE commitq.claimed_job'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.cancel(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.retry(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_concurrency_limit(text, integer)'),
        -- Cron schedules (sql/schedule.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.schedule(text, text, text, text, jsonb, text, integer, integer, text, interval, boolean, boolean)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.unschedule(text)'),
        -- The engine's state (sql/engine.sql): the view calls the function
        -- with the reader's privileges.
        ('operator', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        ('operator', 'SELECT', 'TABLE commitq.engine_status'),
        -- Operators read every table and change only the settings.
        ('operator', 'SELECT', 'ALL TABLES IN SCHEMA commitq'),
        ('operator', 'UPDATE', 'TABLE commitq.config')
    ) v(kind, privilege, object)
$$;

-- Grant (p_grant) or revoke a kind of commitq privileges to a role inside
-- this database only: function, schema and table privileges belong to a
-- database, where role membership belongs to the cluster. Called by the
-- SECURITY DEFINER grant_* and revoke_* functions, so it runs as commitq's
-- owner; it decides itself whether the caller may.
--
-- The caller is the role the session acts as (SET ROLE counts), since a
-- function running as its owner cannot see the role that called it: it
-- must own the current database, or be a member of its owner (superusers
-- are members of every role). A kind granted to a role is operator as a
-- whole (producer, worker and its own rows) or producer or worker; a revoke
-- takes back the kind's rows, then gives back the rows of every other kind
-- the role still holds a function of (revoking producer from a role that
-- is also a worker keeps the named-lease functions and schema they share).
CREATE FUNCTION commitq._grant_in_database(p_role regrole, p_kind text, p_grant boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller text := coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user);
    v_target name;
    v_priv record;
    v_kind text;
BEGIN
    IF NOT pg_catalog.pg_has_role(v_caller,
            (SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()),
            'MEMBER') THEN
        RAISE EXCEPTION 'commitq: only the owner of database % or a superuser may grant or revoke commitq privileges in it',
            pg_catalog.current_database() USING ERRCODE = '42501';
    END IF;
    IF p_kind IS NULL OR p_kind NOT IN ('producer', 'worker', 'operator') THEN
        RAISE EXCEPTION 'commitq: unknown kind of privileges %', p_kind USING ERRCODE = 'CQ001';
    END IF;
    SELECT r.rolname INTO v_target FROM pg_catalog.pg_roles r WHERE r.oid = p_role;
    IF v_target IS NULL THEN
        RAISE EXCEPTION 'commitq: role must not be NULL' USING ERRCODE = 'CQ001';
    END IF;
    -- Not the cluster roles (a revoke would take their install grants away),
    -- nor predefined roles, nor commitq's owner (who holds everything).
    IF v_target IN ('commitq_producer', 'commitq_worker', 'commitq_operator') OR v_target LIKE 'pg\_%'
       OR p_role = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'commitq') THEN
        RAISE EXCEPTION 'commitq: cannot grant or revoke commitq privileges to role %: it is commitq''s owner, '
            'a commitq cluster role or a predefined role', v_target USING ERRCODE = 'CQ001';
    END IF;

    FOR v_priv IN SELECT * FROM commitq._role_privileges() r
              WHERE r.kind = p_kind
                 OR (p_kind = 'operator' AND r.kind IN ('producer', 'worker')) LOOP
        EXECUTE pg_catalog.format(CASE WHEN p_grant THEN 'GRANT %s ON %s TO %I' ELSE 'REVOKE %s ON %s FROM %I' END,
                                  v_priv.privilege, v_priv.object, v_target);
    END LOOP;
    IF p_grant THEN
        RETURN;
    END IF;
    FOREACH v_kind IN ARRAY ARRAY['producer', 'worker', 'operator'] LOOP
        CONTINUE WHEN v_kind = p_kind;
        IF EXISTS (SELECT FROM commitq._role_privileges() r, pg_catalog.pg_proc f,
                          pg_catalog.aclexplode(f.proacl) a
                    WHERE r.kind = v_kind AND r.privilege = 'EXECUTE'
                      -- 'FUNCTION f(...)' or 'PROCEDURE p(...)'
                      AND f.oid = pg_catalog.substr(r.object, pg_catalog.strpos(r.object, ' ') + 1)::regprocedure
                      AND a.grantee = p_role AND a.privilege_type = 'EXECUTE') THEN
            PERFORM commitq._grant_in_database(p_role, v_kind, true);
        END IF;
    END LOOP;
END
$$;

-- Grant or revoke, inside the current database only, the privileges the
-- cluster role commitq_producer, commitq_worker or commitq_operator has:
-- for a role that is to use commitq in this database and no other one.
-- For the database's owner or a superuser (docs/operations.md, Roles).
CREATE FUNCTION commitq.grant_producer(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'producer', true) $$;

CREATE FUNCTION commitq.grant_worker(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'worker', true) $$;

CREATE FUNCTION commitq.grant_operator(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'operator', true) $$;

CREATE FUNCTION commitq.revoke_producer(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'producer', false) $$;

CREATE FUNCTION commitq.revoke_worker(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'worker', false) $$;

CREATE FUNCTION commitq.revoke_operator(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'operator', false) $$;

REVOKE ALL ON FUNCTION
    commitq._role_privileges(), commitq._grant_in_database(regrole, text, boolean),
    commitq.grant_producer(regrole), commitq.grant_worker(regrole), commitq.grant_operator(regrole),
    commitq.revoke_producer(regrole), commitq.revoke_worker(regrole), commitq.revoke_operator(regrole)
    FROM PUBLIC;

-- The per-database grant functions (and the schema, to reach them) are for
-- the database's owner and superusers. pg_database_owner stands for whoever
-- owns the current database, so the privilege follows ALTER DATABASE ...
-- OWNER TO, and a role that does not own this database is refused before
-- the function runs. PostgreSQL 13 has no pg_database_owner: there they go
-- to PUBLIC and the check inside commitq._grant_in_database is the guard.
DO $$
DECLARE
    grantee text := CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pg_database_owner')
                         THEN 'pg_database_owner' ELSE 'PUBLIC' END;
BEGIN
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA commitq TO %s', grantee);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION commitq.grant_producer(regrole), commitq.grant_worker(regrole),
             commitq.grant_operator(regrole), commitq.revoke_producer(regrole),
             commitq.revoke_worker(regrole), commitq.revoke_operator(regrole) TO %s', grantee);
END
$$;

-- ===== 0.2.0: cron schedules (sql/schedule.sql, sql/maintain.sql) =====
-- sql/schedule.sql as it is:

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
-- were enqueued. Schedules are taken in name order and each one's ticks in
-- time order, so concurrent evaluators that wait on each other's tick rows
-- wait in one order. A schedule whose job cannot be enqueued (its queue's
-- rules changed) is reported with a warning and does not stop the others.
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
    FOR s IN SELECT * FROM commitq.cron_schedules x WHERE x.evaluated_until < p_now ORDER BY x.name LOOP
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
    -- schedule always (the view shows it, skip_while_running reads it).
    DELETE FROM commitq.schedule_ticks t
     WHERE t.fired_at < now() - (SELECT c.finished_retention FROM commitq.config c)
       AND t.tick < (SELECT max(l.tick) FROM commitq.schedule_ticks l WHERE l.schedule = t.schedule);
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


-- maintain() gains the OUT column scheduled: its result type changes, so it
-- is dropped and created again (clients of 0.1.0 call SELECT
-- commitq.maintain() and read nothing of it). Whoever could execute it
-- before still can: its privileges are noted first and given back after.
SELECT pg_catalog.set_config('pg_commitq_upgrade.maintain_acl',
       coalesce((SELECT p.proacl::text FROM pg_catalog.pg_proc p
                  WHERE p.oid = 'commitq.maintain()'::pg_catalog.regprocedure), ''), true);
DROP FUNCTION commitq.maintain();

-- Housekeeping: call commitq.maintain() every few seconds from any number of
-- places (a worker loop, pg_cron). Every step takes its rows with SKIP LOCKED
-- and at most commitq.config.maintain_batch of them, so concurrent calls
-- split the work instead of waiting on each other.

-- Rescue jobs whose lease expired (their worker died or stalled): retry them
-- with backoff, or discard them after max_attempts, or cancel them if that
-- was requested, giving back their concurrency keys' slots; make due
-- scheduled jobs available, and blocked jobs whose key has a free slot
-- (after a limit was raised); forget idle concurrency keys; prune finished jobs past
-- commitq.config.finished_retention and idempotency keys past
-- commitq.config.idempotency_window; fire the due ticks of cron schedules
-- (sql/schedule.sql). Returns how many rows each step touched.
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

    WITH due AS (
        UPDATE commitq.jobs u SET state = 'available'
         WHERE u.id IN (SELECT s.id FROM commitq.jobs s
                         WHERE s.state = 'scheduled' AND s.run_at <= now()
                           AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                         ORDER BY s.run_at
                         LIMIT c.maintain_batch
                           FOR UPDATE SKIP LOCKED)
        RETURNING u.queue
    ), woken AS (
        SELECT commitq._wake(q.queue) FROM (SELECT DISTINCT due.queue FROM due) q
    )
    SELECT (SELECT count(*) FROM due), (SELECT count(*) FROM woken) INTO promoted, v_woken;

    WITH gone AS (
        DELETE FROM commitq.finished_jobs f
         WHERE f.id IN (SELECT o.id FROM commitq.finished_jobs o
                         WHERE o.finished_at < now() - c.finished_retention
                         ORDER BY o.finished_at
                         LIMIT c.maintain_batch
                           FOR UPDATE SKIP LOCKED)
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

    -- Effects of jobs that are gone (completed and deleted, or pruned).
    DELETE FROM commitq.job_effects e
     WHERE e.created_at < now() - c.finished_retention
       AND NOT EXISTS (SELECT 1 FROM commitq.jobs x WHERE x.id = e.job_id)
       AND NOT EXISTS (SELECT 1 FROM commitq.finished_jobs f WHERE f.id = e.job_id);

    -- A worker that stopped without claiming again stays registered as
    -- waiting; forget it after a while (it only costs needless NOTIFYs).
    DELETE FROM commitq.waiting_workers w WHERE w.since < now() - interval '10 minutes';

    scheduled := commitq._run_schedules(now());
END
$$;
REVOKE ALL ON FUNCTION commitq.maintain() FROM PUBLIC;
DO $$
DECLARE
    a record;
BEGIN
    FOR a IN SELECT x.grantee, x.is_grantable
               FROM pg_catalog.aclexplode(NULLIF(
                        pg_catalog.current_setting('pg_commitq_upgrade.maintain_acl'), '')::pg_catalog.aclitem[]) x
              WHERE x.privilege_type = 'EXECUTE' AND x.grantee <> x.grantor
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION commitq.maintain() TO %s%s',
            CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
            CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

REVOKE ALL ON TABLE commitq.cron_schedules, commitq.schedule_ticks, commitq.schedules FROM PUBLIC;
REVOKE ALL ON TYPE commitq.cron_schedules, commitq.schedule_ticks, commitq.schedules FROM PUBLIC;
REVOKE ALL ON FUNCTION commitq._cron_problem(text, text),
    commitq._cron_due(text, text, timestamptz, timestamptz, interval),
    commitq._cron_next(text, text, timestamptz),
    commitq.schedule(text, text, text, text, jsonb, text, integer, integer, text, interval, boolean, boolean),
    commitq.unschedule(text), commitq._run_schedules(timestamptz)
    FROM PUBLIC;
GRANT SELECT ON TABLE commitq.cron_schedules, commitq.schedule_ticks, commitq.schedules TO commitq_operator;
GRANT EXECUTE ON FUNCTION
    commitq.schedule(text, text, text, text, jsonb, text, integer, integer, text, interval, boolean, boolean),
    commitq.unschedule(text)
    TO commitq_operator;

-- ===== 0.2.0: the engine's state (sql/engine.sql) =====

-- The engine's state in this database, from the server's shared memory
-- (nothing is stored in tables: it restarts empty with the server).
-- Timestamps are PostgreSQL's microseconds since 2000-01-01; the view below
-- is the interface.
CREATE FUNCTION commitq._engine_status(
    OUT engine_loaded boolean,
    OUT ticks bigint,
    OUT errors bigint,
    OUT last_tick_us bigint,
    OUT last_duration_us bigint,
    OUT last_ok_us bigint,
    OUT last_error_us bigint,
    OUT last_error text)
RETURNS SETOF record
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'engine_status_wrapper';

-- One row for this database: whether the engine runs at all (the library
-- preloaded and commitq.engine_enabled on here), how many ticks ran and how
-- many failed since the server started, the start and duration of the last
-- tick, the last one that succeeded, and the last error with its time. A
-- last_ok_at later than last_error_at means the engine recovered.
CREATE VIEW commitq.engine_status AS
SELECT pg_catalog.current_database() AS database,
       s.engine_loaded,
       s.engine_loaded
           AND coalesce(pg_catalog.current_setting('commitq.engine_enabled', true), 'on') = 'on' AS enabled,
       s.ticks,
       s.errors,
       timestamptz '2000-01-01 00:00:00+00' + s.last_tick_us * interval '1 microsecond' AS last_tick_at,
       s.last_duration_us * interval '1 microsecond' AS last_tick_duration,
       timestamptz '2000-01-01 00:00:00+00' + s.last_ok_us * interval '1 microsecond' AS last_ok_at,
       timestamptz '2000-01-01 00:00:00+00' + s.last_error_us * interval '1 microsecond' AS last_error_at,
       s.last_error
  FROM commitq._engine_status() s;

REVOKE ALL ON FUNCTION commitq._engine_status() FROM PUBLIC;
REVOKE ALL ON commitq.engine_status FROM PUBLIC;
-- Its row type too, as for every table (sql/security.sql).
REVOKE ALL ON TYPE commitq.engine_status FROM PUBLIC;
GRANT EXECUTE ON FUNCTION commitq._engine_status() TO commitq_operator;
GRANT SELECT ON commitq.engine_status TO commitq_operator;

-- ===== 0.2.0: monitoring views, outcome counters, pause/resume, the reader role (sql/monitoring.sql, sql/pause.sql) =====

-- The reader role, beside the other three (sql/security.sql).
DO $$
BEGIN
    FOR attempt IN 1..5 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'commitq_reader');
        BEGIN
            CREATE ROLE commitq_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- The partial indexes carry the queue, for queue_stats (sql/schema.sql).
DROP INDEX commitq.jobs_blocked_idx;
CREATE INDEX jobs_blocked_idx ON commitq.jobs (concurrency_key, priority, run_at, id) INCLUDE (queue)
    WITH (deduplicate_items = off)
    WHERE state = 'blocked';

DROP INDEX commitq.jobs_scheduled_idx;
CREATE INDEX jobs_scheduled_idx ON commitq.jobs (run_at) INCLUDE (queue)
    WHERE state = 'scheduled';

DROP INDEX commitq.jobs_lease_idx;
CREATE INDEX jobs_lease_idx ON commitq.jobs (lease_expires_at) INCLUDE (queue)
    WHERE state = 'running';

-- sql/pause.sql
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

-- sql/monitoring.sql
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

-- The paused check on every claim path (sql/claim.sql, sql/concurrency_keys.sql).
CREATE OR REPLACE FUNCTION commitq.claim(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes')
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Plan once per session: the default re-plans these statements on every
-- call for a while, which cost more than running them (measured: claim of 4
-- jobs 0.48 ms -> 0.30 ms).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_claimed commitq.claimed_job[];
    v_picked integer;
    v_keyed_ids bigint[];
    v_keyed_keys text[];
    v_got integer := 0;
    v_keyed integer;
BEGIN
    PERFORM commitq._check(coalesce(
        commitq._queue_problem(claim.queue),
        commitq._worker_lease_problem(claim.worker, claim.lease),
        CASE WHEN claim.max_jobs IS NULL OR claim.max_jobs NOT BETWEEN 1 AND 10000
            THEN format('max_jobs %s out of range 1..10000', coalesce(claim.max_jobs::text, 'NULL'))
        END));

    -- Scheduled jobs that have come due become available. SKIP LOCKED: a row
    -- another claimer is promoting right now is theirs to promote.
    UPDATE commitq.jobs j
       SET state = 'available'
     WHERE j.id IN (SELECT s.id FROM commitq.jobs s
                     WHERE s.state = 'scheduled' AND s.run_at <= now() AND s.queue = claim.queue
                       AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                     ORDER BY s.run_at
                     LIMIT 1000
                       FOR UPDATE SKIP LOCKED);

    -- One statement claims the jobs without a concurrency key among the
    -- next max_jobs in claim order. Keyed ones among them stay locked by us
    -- and go to _claim_keyed (concurrency_keys.sql), which also needs a slot of
    -- their key.
    WITH picked AS (
        -- A job handed its key's slot already holds it: it is claimed like
        -- a job without a key.
        SELECT c.id, CASE WHEN NOT c.slot_held THEN c.concurrency_key END AS ck,
               c.priority, c.run_at FROM commitq.jobs c
         WHERE c.queue = claim.queue AND c.state = 'available'
           -- A paused queue hands out nothing (pause.sql). Tested in this
           -- statement, under the snapshot that picks the jobs.
           AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = claim.queue)
         ORDER BY c.priority, c.run_at, c.id
         LIMIT claim.max_jobs
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        -- The same SET list is written out in _claim_keyed and in
        -- _promote_blocked's take path (concurrency_keys.sql); a test
        -- (every_claim_path_writes_the_same_bookkeeping) checks they agree.
        UPDATE commitq.jobs j
           SET state = 'running',
               attempt = j.attempt + 1,
               lease_token = j.lease_token + 1,
               lease_expires_at = now() + claim.lease,
               lease_interval = claim.lease,
               worker = claim.worker,
               claimed_at = now(),
               slot_held = false
         -- `= ANY (ARRAY(...))`: an index lookup in any plan, where a join
         -- could be planned as a scan of the whole table (the plan is made
         -- once, not knowing how many jobs a call wants).
         WHERE j.id = ANY (ARRAY(SELECT picked.id FROM picked WHERE picked.ck IS NULL))
        RETURNING commitq._claimed_row(j) AS r
    )
    SELECT (SELECT array_agg(claimed.r) FROM claimed),
           (SELECT count(*) FROM picked),
           (SELECT array_agg(picked.id ORDER BY picked.priority, picked.run_at, picked.id)
              FROM picked WHERE picked.ck IS NOT NULL),
           (SELECT array_agg(picked.ck ORDER BY picked.priority, picked.run_at, picked.id)
              FROM picked WHERE picked.ck IS NOT NULL)
      INTO v_claimed, v_picked, v_keyed_ids, v_keyed_keys;

    IF v_claimed IS NOT NULL THEN
        RETURN QUERY SELECT * FROM unnest(v_claimed);
        v_got := cardinality(v_claimed);
    END IF;
    IF v_keyed_ids IS NOT NULL THEN
        RETURN QUERY SELECT * FROM commitq._claim_keyed(
            claim.queue, claim.worker, claim.lease, v_keyed_ids, v_keyed_keys,
            -- room left in the batch, and whether the queue may hold more
            claim.max_jobs - v_got, v_picked = claim.max_jobs);
        GET DIAGNOSTICS v_keyed = ROW_COUNT;
        v_got := v_got + v_keyed;
    END IF;

    -- A claim that found nothing registers the worker as waiting, so that
    -- enqueues to this queue send it a NOTIFY; one that found work clears it.
    IF v_got > 0 THEN
        DELETE FROM commitq.waiting_workers w WHERE w.queue = claim.queue AND w.worker = claim.worker;
    ELSE
        INSERT INTO commitq.waiting_workers AS w (queue, worker) VALUES (claim.queue, claim.worker)
        ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION commitq._claim_keyed(
    p_queue text, p_worker text, p_lease interval,
    p_ids bigint[], p_keys text[], p_want integer, p_more boolean)
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_ids bigint[] := p_ids;
    v_keys text[] := p_keys;
    -- Jobs of ours that a pick must not return: the caller's, until round 1
    -- has them, then those of keys busy elsewhere (v_passed).
    v_skip bigint[] := p_ids;
    v_passed bigint[] := '{}';
    -- Jobs to pick from the queue this round: round 1 has the caller's.
    v_pick integer := CASE WHEN p_more THEN p_want / 4 ELSE 0 END;
    v_picked integer;
    v_claimed commitq.claimed_job[];
    v_left_ids bigint[];
    v_left_keys text[];
    v_missing text[];
    v_created text[];
BEGIN
    FOR round IN 1..4 LOOP
        WITH picked AS (
            -- A job handed its key's slot goes as one without a key (see commitq.claim).
            SELECT x.id, CASE WHEN NOT x.slot_held THEN x.concurrency_key END AS ck,
                   x.priority, x.run_at FROM commitq.jobs x
             WHERE x.queue = p_queue AND x.state = 'available' AND x.id <> ALL (v_skip)
               -- Paused since the caller's pick (pause.sql): no more rounds.
               AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = p_queue)
             ORDER BY x.priority, x.run_at, x.id
             LIMIT v_pick
               FOR UPDATE SKIP LOCKED
        ), cand AS (
            SELECT t.id, t.ck, t.ord FROM unnest(v_ids, v_keys) WITH ORDINALITY AS t(id, ck, ord)
            UNION ALL
            SELECT picked.id, picked.ck,
                   coalesce(cardinality(v_ids), 0)
                   + row_number() OVER (ORDER BY picked.priority, picked.run_at, picked.id)
              FROM picked
        ), keys AS (
            SELECT k.key, k.max_running - k.running AS free
              FROM commitq.concurrency_keys k
             -- `= ANY (ARRAY(...))` here and below: an index lookup in any
             -- plan (see commitq.claim).
             WHERE k.key = ANY (ARRAY(SELECT cand.ck FROM cand WHERE cand.ck IS NOT NULL))
               FOR UPDATE SKIP LOCKED
        ), ranked AS (
            SELECT cand.id, cand.ck, cand.ord,
                   row_number() OVER (PARTITION BY cand.ck ORDER BY cand.ord) <= keys.free AS fits
              FROM cand JOIN keys ON keys.key = cand.ck
        ), chosen AS (
            -- The first p_want candidates that may run now, in claim order.
            SELECT e.id, e.ck FROM (
                    SELECT cand.id, NULL::text AS ck, cand.ord FROM cand WHERE cand.ck IS NULL
                    UNION ALL
                    SELECT ranked.id, ranked.ck, ranked.ord FROM ranked WHERE ranked.fits) e
             ORDER BY e.ord
             LIMIT p_want
        ), per_key AS (
            -- Counted once per key: a count per key row, as a subquery in
            -- SET, would scan the whole batch for every key.
            SELECT s.ck, count(*) FILTER (WHERE s.runs) AS run, count(*) FILTER (WHERE NOT s.runs) AS park
              FROM (SELECT chosen.ck, true AS runs FROM chosen WHERE chosen.ck IS NOT NULL
                    UNION ALL
                    SELECT ranked.ck, false FROM ranked WHERE NOT ranked.fits) s
             GROUP BY s.ck
        ), counted AS (
            UPDATE commitq.concurrency_keys k
               SET running = k.running + per_key.run,
                   blocked = k.blocked + per_key.park
              FROM per_key
             WHERE k.key = ANY (ARRAY(SELECT per_key.ck FROM per_key))
               AND k.key = per_key.ck
        ), parked AS (
            UPDATE commitq.jobs j SET state = 'blocked'
             WHERE j.id = ANY (ARRAY(SELECT ranked.id FROM ranked WHERE NOT ranked.fits))
        ), claimed AS (
            UPDATE commitq.jobs j
               SET state = 'running',
                   attempt = j.attempt + 1,
                   lease_token = j.lease_token + 1,
                   lease_expires_at = now() + p_lease,
                   lease_interval = p_lease,
                   worker = p_worker,
                   claimed_at = now(),
                   slot_held = false
             WHERE j.id = ANY (ARRAY(SELECT chosen.id FROM chosen))
            RETURNING commitq._claimed_row(j) AS r
        ), left_over AS (
            -- Keyed candidates whose key row was busy, or missing.
            SELECT cand.id, cand.ck, cand.ord FROM cand
             WHERE cand.ck IS NOT NULL AND cand.id <> ALL (ARRAY(SELECT ranked.id FROM ranked))
        )
        SELECT (SELECT array_agg(claimed.r) FROM claimed),
               (SELECT count(*) FROM picked),
               (SELECT array_agg(left_over.id ORDER BY left_over.ord) FROM left_over),
               (SELECT array_agg(left_over.ck ORDER BY left_over.ord) FROM left_over)
          INTO v_claimed, v_picked, v_left_ids, v_left_keys;

        IF v_claimed IS NOT NULL THEN
            RETURN QUERY SELECT * FROM unnest(v_claimed);
            p_want := p_want - cardinality(v_claimed);
        END IF;
        EXIT WHEN p_want <= 0;
        IF v_pick > 0 THEN
            p_more := v_picked = v_pick;
        END IF;

        -- First claim of a key: create its row; the next round picks its
        -- jobs again (they stay locked by us meanwhile). Jobs of keys busy
        -- elsewhere are passed over until we commit.
        v_created := NULL;
        IF v_left_keys IS NOT NULL THEN
            SELECT array_agg(DISTINCT k) INTO v_missing FROM unnest(v_left_keys) k
             WHERE k <> ALL (ARRAY(SELECT c.key FROM commitq.concurrency_keys c
                                    WHERE c.key = ANY (v_left_keys)));
            IF v_missing IS NOT NULL THEN
                v_created := commitq._create_keys(v_missing);
            END IF;
            v_passed := v_passed || coalesce(
                (SELECT array_agg(t.id) FROM unnest(v_left_ids, v_left_keys) AS t(id, ck)
                  WHERE t.ck <> ALL (coalesce(v_created, '{}'))), '{}');
        END IF;
        -- More of the queue only when it may hold more: the next jobs in
        -- claim order, keyed or not, and the margin again.
        EXIT WHEN v_created IS NULL AND NOT p_more;
        v_ids := NULL;
        v_keys := NULL;
        v_skip := v_passed;
        v_pick := p_want + p_want / 4;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION commitq._promote_blocked(
    p_keys text[], p_counts integer[],
    p_take_queues text[] DEFAULT NULL, p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL,
    OUT promoted integer, OUT taken commitq.claimed_job[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queues text[];
BEGIN
    WITH next AS (
        -- A job of a paused queue (pause.sql) is made available, not taken.
        SELECT b.id, p_worker IS NOT NULL AND b.queue = f.take_queue
                     AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = b.queue) AS take
          FROM unnest(p_keys, p_counts, p_take_queues) AS f(key, n, take_queue)
          CROSS JOIN LATERAL (
                SELECT x.id, x.queue FROM commitq.jobs x
                 WHERE x.concurrency_key = f.key AND x.state = 'blocked'
                 ORDER BY x.priority, x.run_at, x.id
                 LIMIT greatest(f.n, 0)) b
    ), handed AS (
        -- A blocked job an operator is cancelling right now is waited for,
        -- and skipped if it is gone. The state test is a CASE so that the
        -- plan looks the jobs up by primary key, never by a scan of
        -- jobs_blocked_idx (see _locked_lease).
        UPDATE commitq.jobs j SET state = 'available', slot_held = true
         WHERE j.id = ANY (ARRAY(SELECT next.id FROM next WHERE NOT next.take))
           AND CASE WHEN j.state = 'blocked' THEN true END
        RETURNING j.queue, j.concurrency_key
    ), claimed AS (
        -- The same claim as commitq.claim's, for the jobs taken.
        UPDATE commitq.jobs j
           SET state = 'running',
               attempt = j.attempt + 1,
               lease_token = j.lease_token + 1,
               lease_expires_at = now() + p_lease,
               lease_interval = p_lease,
               worker = p_worker,
               claimed_at = now(),
               slot_held = false
         WHERE j.id = ANY (ARRAY(SELECT next.id FROM next WHERE next.take))
           AND CASE WHEN j.state = 'blocked' THEN true END
        RETURNING j.concurrency_key, commitq._claimed_row(j) AS r
    ), per_key AS (
        SELECT s.key, count(*) AS n
          FROM (SELECT handed.concurrency_key AS key FROM handed
                UNION ALL
                SELECT claimed.concurrency_key FROM claimed) s
         GROUP BY s.key
    ), counted AS (
        UPDATE commitq.concurrency_keys c
           SET blocked = c.blocked - per_key.n,
               running = c.running + per_key.n
          FROM per_key
         WHERE c.key = ANY (ARRAY(SELECT per_key.key FROM per_key))
           AND c.key = per_key.key
    )
    SELECT (SELECT array_agg(DISTINCT handed.queue) FROM handed),
           (SELECT count(*) FROM handed) + (SELECT count(*) FROM claimed),
           (SELECT array_agg(claimed.r ORDER BY (claimed.r).priority, (claimed.r).run_at, (claimed.r).job_id)
              FROM claimed)
      INTO v_queues, promoted, taken;
    IF v_queues IS NOT NULL THEN
        PERFORM commitq._wake(q) FROM unnest(v_queues) q;
    END IF;
END
$$;

-- Outcome counters (sql/finish.sql, sql/maintain.sql).
CREATE OR REPLACE FUNCTION commitq._move_to_finished(p_ids bigint[], p_state commitq.job_state)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_queues text[];
BEGIN
    WITH moved AS (
        DELETE FROM commitq.jobs WHERE id = ANY (p_ids) RETURNING *
    ), ins AS (
        INSERT INTO commitq.finished_jobs
            (id, queue, kind, args, state, priority, run_at, attempt, max_attempts, lease_token,
             worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, finished_at)
        SELECT id, queue, kind, args, p_state, priority, run_at, attempt, max_attempts, lease_token,
               worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, pg_catalog.now()
          FROM moved
        RETURNING id, queue
    )
    SELECT array_agg(ins.id), array_agg(ins.queue) INTO v_ids, v_queues FROM ins;
    -- Discards and cancellations count here, whichever path finishes the
    -- job; completions count in _complete_leased, kept or not.
    IF p_state <> 'completed' AND v_queues IS NOT NULL THEN
        PERFORM commitq._count_outcome(v_queues, p_state::text);
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END
$$;

CREATE OR REPLACE FUNCTION commitq._complete_leased(
    p_ids bigint[], p_tokens bigint[], p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL,
    OUT done bigint[], OUT done_keys text[], OUT done_queues text[],
    OUT taken commitq.claimed_job[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT c.keep_completed FROM commitq.config c) THEN
        -- Lock in id order so that two overlapping batches cannot deadlock.
        SELECT coalesce(array_agg(l.id), '{}'), array_agg(l.concurrency_key), array_agg(l.queue)
          INTO done, done_keys, done_queues
          FROM (SELECT j.id, j.concurrency_key, j.queue
                  FROM commitq.jobs j
                 WHERE j.id = ANY (p_ids)
                   AND (j.id, j.lease_token) IN (SELECT * FROM unnest(p_ids, p_tokens))
                   -- CASE: looked up by primary key (see _locked_lease)
                   AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > clock_timestamp() END
                 ORDER BY j.id
                   FOR UPDATE OF j) l;
        PERFORM commitq._move_to_finished(done, 'completed');
    ELSE
        -- One statement: the lease check and the delete. `id = ANY` and the
        -- lease test as a CASE, so the plan looks the batch up by primary key
        -- whatever the statistics say about running jobs (see _locked_lease).
        WITH gone AS (
            DELETE FROM commitq.jobs j
             WHERE j.id = ANY (p_ids)
               AND (j.id, j.lease_token) IN (SELECT * FROM unnest(p_ids, p_tokens))
               AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > clock_timestamp() END
            RETURNING j.id, j.concurrency_key, j.queue
        )
        SELECT coalesce(array_agg(gone.id), '{}'), array_agg(gone.concurrency_key),
               array_agg(gone.queue)
          INTO done, done_keys, done_queues
          FROM gone;
    END IF;
    -- Throughput counters (monitoring.sql): one statement per batch.
    IF done_queues IS NOT NULL THEN
        PERFORM commitq._count_outcome(done_queues, 'completed');
    END IF;
    -- Only when some job had a key (_release_keys ignores the NULLs of the
    -- others): most completions skip the call.
    IF array_remove(done_keys, NULL) <> '{}' THEN
        taken := commitq._release_keys(done_keys, done_queues, p_worker, p_lease);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION commitq.fail(
    job_id bigint,
    lease_token bigint,
    error text,
    retry_in interval DEFAULT NULL,
    discard boolean DEFAULT false,
    OUT state commitq.job_state,
    OUT run_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j commitq.jobs;
    v_errors jsonb;
BEGIN
    PERFORM commitq._check(CASE
        WHEN fail.error IS NULL THEN 'error must not be NULL'
        WHEN fail.discard IS NULL THEN 'discard must not be NULL'
        WHEN fail.retry_in < interval '0' OR NOT isfinite(now() + fail.retry_in)
            THEN 'retry_in must be a finite interval >= 0' END);
    j := commitq._locked_lease(fail.job_id, fail.lease_token);
    v_errors := commitq._push_error(j.errors, j.attempt, j.worker, fail.error);

    IF fail.discard OR j.cancel_requested OR j.attempt >= j.max_attempts THEN
        fail.state := CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'discarded' END;
        fail.run_at := j.run_at;
        UPDATE commitq.jobs SET errors = v_errors WHERE id = j.id;
        PERFORM commitq._move_to_finished(ARRAY[j.id], fail.state);
        PERFORM commitq._release_keys(ARRAY[j.concurrency_key]);
        RETURN;
    END IF;

    fail.run_at := now() + coalesce(fail.retry_in, commitq._backoff(j.attempt));
    fail.state := CASE WHEN fail.run_at <= now() THEN 'available' ELSE 'scheduled' END;
    UPDATE commitq.jobs
       SET state = fail.state, run_at = fail.run_at, errors = v_errors,
           lease_expires_at = NULL
     WHERE id = j.id;
    PERFORM commitq._release_keys(ARRAY[j.concurrency_key]);
    PERFORM commitq._count_outcome(ARRAY[j.queue], 'failed');
    IF fail.state = 'available' THEN
        PERFORM commitq._wake(j.queue);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION commitq.maintain(
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

    WITH due AS (
        UPDATE commitq.jobs u SET state = 'available'
         WHERE u.id IN (SELECT s.id FROM commitq.jobs s
                         WHERE s.state = 'scheduled' AND s.run_at <= now()
                           AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                         ORDER BY s.run_at
                         LIMIT c.maintain_batch
                           FOR UPDATE SKIP LOCKED)
        RETURNING u.queue
    ), woken AS (
        SELECT commitq._wake(q.queue) FROM (SELECT DISTINCT due.queue FROM due) q
    )
    SELECT (SELECT count(*) FROM due), (SELECT count(*) FROM woken) INTO promoted, v_woken;

    WITH gone AS (
        DELETE FROM commitq.finished_jobs f
         WHERE f.id IN (SELECT o.id FROM commitq.finished_jobs o
                         WHERE o.finished_at < now() - c.finished_retention
                         ORDER BY o.finished_at
                         LIMIT c.maintain_batch
                           FOR UPDATE SKIP LOCKED)
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

    -- Effects of jobs that are gone (completed and deleted, or pruned).
    DELETE FROM commitq.job_effects e
     WHERE e.created_at < now() - c.finished_retention
       AND NOT EXISTS (SELECT 1 FROM commitq.jobs x WHERE x.id = e.job_id)
       AND NOT EXISTS (SELECT 1 FROM commitq.finished_jobs f WHERE f.id = e.job_id);

    -- A worker that stopped without claiming again stays registered as
    -- waiting; forget it after a while (it only costs needless NOTIFYs).
    DELETE FROM commitq.waiting_workers w WHERE w.since < now() - interval '10 minutes';

    -- Outcome counters past the monitoring views' hour (monitoring.sql).
    PERFORM commitq._prune_counters(c.maintain_batch);

    scheduled := commitq._run_schedules(now());
END
$$;

-- The reader kind (sql/security.sql).
CREATE OR REPLACE FUNCTION commitq._role_privileges()
RETURNS TABLE (kind text, privilege text, object text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.kind, v.privilege, v.object FROM (VALUES
        ('producer', 'USAGE', 'SCHEMA commitq'),
        ('producer', 'USAGE', 'TYPE commitq.job_state'),
        ('producer', 'USAGE', 'TYPE commitq.claimed_job'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[])'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(jsonb)'),
        -- Named leases are for application code and workers alike.
        ('producer', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('worker', 'USAGE', 'SCHEMA commitq'),
        ('worker', 'USAGE', 'TYPE commitq.job_state'),
        ('worker', 'USAGE', 'TYPE commitq.claimed_job'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.claim(text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_many(bigint[], bigint[])'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_claim(bigint[], bigint[], text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_take(bigint[], bigint[], text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.stop_waiting(text, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.fail(bigint, bigint, text, interval, boolean)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.heartbeat(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.snooze(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_lease(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_begin(bigint, bigint, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_done(bigint, bigint, text, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.maintain()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('operator', 'USAGE', 'SCHEMA commitq'),
        ('operator', 'USAGE', 'TYPE commitq.job_state'),
        ('operator', 'USAGE', 'TYPE commitq.claimed_job'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.cancel(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.retry(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_concurrency_limit(text, integer)'),
        -- Cron schedules (sql/schedule.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.schedule(text, text, text, text, jsonb, text, integer, integer, text, interval, boolean, boolean)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.unschedule(text)'),
        -- Pausing queues (sql/pause.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.pause(text)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.resume(text)'),
        -- The engine's state (sql/engine.sql): the view calls the function
        -- with the reader's privileges.
        ('operator', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        ('operator', 'SELECT', 'TABLE commitq.engine_status'),
        -- Operators read every table and change only the settings.
        ('operator', 'SELECT', 'ALL TABLES IN SCHEMA commitq'),
        ('operator', 'UPDATE', 'TABLE commitq.config'),
        -- Dashboards and exporters: the views and nothing else. The view
        -- engine_status calls _engine_status with the reader's privileges.
        -- (A revoke finds the kinds a role still holds by their functions:
        -- _engine_status is the reader's.)
        ('reader', 'USAGE', 'SCHEMA commitq'),
        ('reader', 'USAGE', 'TYPE commitq.job_state'),
        ('reader', 'SELECT', 'TABLE commitq.queue_stats'),
        ('reader', 'SELECT', 'TABLE commitq.throughput'),
        ('reader', 'SELECT', 'TABLE commitq.job_list'),
        ('reader', 'SELECT', 'TABLE commitq.concurrency_key_stats'),
        ('reader', 'SELECT', 'TABLE commitq.named_lease_holders'),
        ('reader', 'SELECT', 'TABLE commitq.schedules'),
        ('reader', 'SELECT', 'TABLE commitq.engine_status'),
        ('reader', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        -- queue_stats calls it as its reader, like engine_status.
        ('reader', 'EXECUTE', 'FUNCTION commitq._available_by_queue()'),
        ('operator', 'EXECUTE', 'FUNCTION commitq._available_by_queue()')
    ) v(kind, privilege, object)
$$;

CREATE OR REPLACE FUNCTION commitq._grant_in_database(p_role regrole, p_kind text, p_grant boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller text := coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user);
    v_target name;
    v_priv record;
    v_kind text;
BEGIN
    IF NOT pg_catalog.pg_has_role(v_caller,
            (SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()),
            'MEMBER') THEN
        RAISE EXCEPTION 'commitq: only the owner of database % or a superuser may grant or revoke commitq privileges in it',
            pg_catalog.current_database() USING ERRCODE = '42501';
    END IF;
    IF p_kind IS NULL OR p_kind NOT IN ('producer', 'worker', 'operator', 'reader') THEN
        RAISE EXCEPTION 'commitq: unknown kind of privileges %', p_kind USING ERRCODE = 'CQ001';
    END IF;
    SELECT r.rolname INTO v_target FROM pg_catalog.pg_roles r WHERE r.oid = p_role;
    IF v_target IS NULL THEN
        RAISE EXCEPTION 'commitq: role must not be NULL' USING ERRCODE = 'CQ001';
    END IF;
    -- Not the cluster roles (a revoke would take their install grants away),
    -- nor predefined roles, nor commitq's owner (who holds everything).
    IF v_target IN ('commitq_producer', 'commitq_worker', 'commitq_operator', 'commitq_reader') OR v_target LIKE 'pg\_%'
       OR p_role = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'commitq') THEN
        RAISE EXCEPTION 'commitq: cannot grant or revoke commitq privileges to role %: it is commitq''s owner, '
            'a commitq cluster role or a predefined role', v_target USING ERRCODE = 'CQ001';
    END IF;

    FOR v_priv IN SELECT * FROM commitq._role_privileges() r
              WHERE r.kind = p_kind
                 OR (p_kind = 'operator' AND r.kind IN ('producer', 'worker')) LOOP
        EXECUTE pg_catalog.format(CASE WHEN p_grant THEN 'GRANT %s ON %s TO %I' ELSE 'REVOKE %s ON %s FROM %I' END,
                                  v_priv.privilege, v_priv.object, v_target);
    END LOOP;
    IF p_grant THEN
        RETURN;
    END IF;
    FOREACH v_kind IN ARRAY ARRAY['producer', 'worker', 'operator', 'reader'] LOOP
        CONTINUE WHEN v_kind = p_kind;
        IF EXISTS (SELECT FROM commitq._role_privileges() r, pg_catalog.pg_proc f,
                          pg_catalog.aclexplode(f.proacl) a
                    WHERE r.kind = v_kind AND r.privilege = 'EXECUTE'
                      AND f.oid = pg_catalog.substr(r.object, 10)::regprocedure
                      AND a.grantee = p_role AND a.privilege_type = 'EXECUTE') THEN
            PERFORM commitq._grant_in_database(p_role, v_kind, true);
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION commitq.grant_reader(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'reader', true) $$;

CREATE OR REPLACE FUNCTION commitq.revoke_reader(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'reader', false) $$;

REVOKE ALL ON TABLE commitq.paused_queues, commitq.queue_counters, commitq.queue_stats,
    commitq.throughput, commitq.job_list, commitq.concurrency_key_stats,
    commitq.named_lease_holders FROM PUBLIC;
REVOKE ALL ON TYPE commitq.paused_queues, commitq.queue_counters, commitq.queue_stats,
    commitq.throughput, commitq.job_list, commitq.concurrency_key_stats,
    commitq.named_lease_holders FROM PUBLIC;
REVOKE ALL ON FUNCTION commitq.pause(text), commitq.resume(text), commitq._available_by_queue(),
    commitq._count_outcome(text[], text), commitq._prune_counters(integer),
    commitq.grant_reader(regrole), commitq.revoke_reader(regrole) FROM PUBLIC;
-- The schema's ACL lists the database owner's USAGE after the four roles'
-- in a fresh install: taken back here and given again below, after the
-- reader's, so that an upgraded catalog is the same.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pg_database_owner') THEN
        REVOKE USAGE ON SCHEMA commitq FROM pg_database_owner;
    END IF;
END
$$;
-- Every row of _role_privileges again, in its order (GRANT of a privilege
-- held changes nothing): the new objects get the grants a fresh install
-- gives them.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM commitq._role_privileges() LOOP
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %I', p.privilege, p.object, 'commitq_' || p.kind);
    END LOOP;
END
$$;
DO $$
DECLARE
    grantee text := CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pg_database_owner')
                         THEN 'pg_database_owner' ELSE 'PUBLIC' END;
BEGIN
    IF grantee <> 'PUBLIC' THEN
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA commitq TO %s', grantee);
    END IF;
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION commitq.grant_reader(regrole), commitq.revoke_reader(regrole) TO %s', grantee);
END
$$;

-- ===== 0.2.0: maintain() bounded in every step (sql/maintain.sql, sql/schedule.sql, sql/effect_ledger.sql) =====

-- Pruning by age (maintain()): without it every call read the whole table.
CREATE INDEX job_effects_created_at_idx ON commitq.job_effects (created_at);

-- Pruning by age (maintain()).
CREATE INDEX schedule_ticks_fired_at_idx ON commitq.schedule_ticks (fired_at);

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
CREATE OR REPLACE FUNCTION commitq._run_schedules(p_now timestamptz) RETURNS bigint
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
CREATE OR REPLACE FUNCTION commitq.maintain(
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

    WITH due AS (
        UPDATE commitq.jobs u SET state = 'available'
         WHERE u.id IN (SELECT s.id FROM commitq.jobs s
                         WHERE s.state = 'scheduled' AND s.run_at <= now()
                           AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                         ORDER BY s.run_at
                         LIMIT c.maintain_batch
                           FOR UPDATE SKIP LOCKED)
        RETURNING u.queue
    ), woken AS (
        SELECT commitq._wake(q.queue) FROM (SELECT DISTINCT due.queue FROM due) q
    )
    SELECT (SELECT count(*) FROM due), (SELECT count(*) FROM woken) INTO promoted, v_woken;

    WITH gone AS (
        DELETE FROM commitq.finished_jobs f
         WHERE f.id IN (SELECT o.id FROM commitq.finished_jobs o
                         WHERE o.finished_at < now() - c.finished_retention
                         ORDER BY o.finished_at
                         LIMIT c.maintain_batch
                           FOR UPDATE SKIP LOCKED)
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

    scheduled := commitq._run_schedules(now());
END
$$;

-- ===== 0.2.0: claim floor while vacuum is held back (sql/claim.sql) =====

-- Claim up to max_jobs due jobs of a queue, in priority, run_at, id order.
-- Each claimed job gets a lease until now() + lease and a lease token larger
-- than any earlier token of that job; pass both to complete/fail/heartbeat.
CREATE OR REPLACE FUNCTION commitq.claim(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes')
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Plan once per session: the default re-plans these statements on every
-- call for a while, which cost more than running them (measured: claim of 4
-- jobs 0.48 ms -> 0.30 ms).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_claimed commitq.claimed_job[];
    v_picked integer;
    v_keyed_ids bigint[];
    v_keyed_keys text[];
    v_got integer := 0;
    v_keyed integer;
    -- The session's claim floor (see below): until (microseconds since the
    -- epoch, clock time), queue, priority, run_at (microseconds), id.
    v_floor text[] := pg_catalog.string_to_array(pg_catalog.current_setting('commitq.claim_floor', true), '|');
    v_now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    v_until bigint;
    v_fp smallint := -32768;
    v_fr timestamptz := '-infinity';
    v_fi bigint := -9223372036854775807;
    v_first_p smallint;
    v_first_r timestamptz;
    v_first_i bigint;
    v_crossed bigint;
BEGIN
    PERFORM commitq._check(coalesce(
        commitq._queue_problem(claim.queue),
        commitq._worker_lease_problem(claim.worker, claim.lease),
        CASE WHEN claim.max_jobs IS NULL OR claim.max_jobs NOT BETWEEN 1 AND 10000
            THEN format('max_jobs %s out of range 1..10000', coalesce(claim.max_jobs::text, 'NULL'))
        END));

    -- Scheduled jobs that have come due become available. SKIP LOCKED: a row
    -- another claimer is promoting right now is theirs to promote.
    UPDATE commitq.jobs j
       SET state = 'available'
     WHERE j.id IN (SELECT s.id FROM commitq.jobs s
                     WHERE s.state = 'scheduled' AND s.run_at <= now() AND s.queue = claim.queue
                       AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                     ORDER BY s.run_at
                     LIMIT 1000
                       FOR UPDATE SKIP LOCKED);

    -- The claim floor. While a transaction older than the queue's recent
    -- claims stays open, vacuum may not remove the claim-index entries of
    -- claimed and finished jobs, and a pick from the start of the queue
    -- visits each of them and its heap row (measured with a transaction held
    -- open: a claim of 100 after 70,000 claims crossed 70,100 entries). A
    -- session whose full pick crossed more than 10,000 entries beyond those
    -- it returned starts its next picks of that queue at the first job that
    -- pick claimed, its floor, kept in the session setting
    -- commitq.claim_floor, for one second; then, or as soon as a pick from
    -- the floor comes back short (same call), it picks from the start again.
    -- A job that becomes available below a floor (a higher priority, an older
    -- run_at) is so claimed at most a second late, and only while vacuum is
    -- held back (a long transaction; also a long ANALYZE, for its duration):
    -- otherwise no floor is ever set and the order is exact. The
    -- setting affects only the session's own claims; one that does not parse
    -- or lies more than a second ahead is ignored.
    IF pg_catalog.array_to_string(v_floor, '|')
           ~ '^[0-9]{1,17}\|[a-z0-9_.-]+\|-?[0-9]{1,5}\|-?[0-9]{1,17}\|-?[0-9]{1,18}$'
       AND v_floor[2] = claim.queue
       AND v_floor[1]::bigint BETWEEN v_now_us AND v_now_us + 1000000
       AND v_floor[3]::integer BETWEEN -32768 AND 32767 THEN
        v_until := v_floor[1]::bigint;
        v_fp := v_floor[3]::smallint;
        v_fr := timestamptz 'epoch' + v_floor[4]::bigint * interval '1 microsecond';
        v_fi := v_floor[5]::bigint;
    END IF;

    FOR v_pass IN 1..2 LOOP
        v_crossed := pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass);
        -- One statement claims the jobs without a concurrency key among the
        -- next max_jobs in claim order. Keyed ones among them stay locked by us
        -- and go to _claim_keyed (concurrency_keys.sql), which also needs a slot of
        -- their key.
        WITH picked AS (
            -- A job handed its key's slot already holds it: it is claimed like
            -- a job without a key.
            SELECT c.id, CASE WHEN NOT c.slot_held THEN c.concurrency_key END AS ck,
                   c.priority, c.run_at FROM commitq.jobs c
             WHERE c.queue = claim.queue AND c.state = 'available'
               AND (c.priority, c.run_at, c.id) >= (v_fp, v_fr, v_fi)
               -- A paused queue hands out nothing (pause.sql). Tested in this
               -- statement, under the snapshot that picks the jobs.
               AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = claim.queue)
             ORDER BY c.priority, c.run_at, c.id
             LIMIT claim.max_jobs - coalesce(v_picked, 0)
               FOR UPDATE SKIP LOCKED
        ), claimed AS (
            -- The same SET list is written out in _claim_keyed and in
            -- _promote_blocked's take path (concurrency_keys.sql); a test
            -- (every_claim_path_writes_the_same_bookkeeping) checks they agree.
            UPDATE commitq.jobs j
               SET state = 'running',
                   attempt = j.attempt + 1,
                   lease_token = j.lease_token + 1,
                   lease_expires_at = now() + claim.lease,
                   lease_interval = claim.lease,
                   worker = claim.worker,
                   claimed_at = now(),
                   slot_held = false
             -- `= ANY (ARRAY(...))`: an index lookup in any plan, where a join
             -- could be planned as a scan of the whole table (the plan is made
             -- once, not knowing how many jobs a call wants).
             WHERE j.id = ANY (ARRAY(SELECT picked.id FROM picked WHERE picked.ck IS NULL))
            RETURNING commitq._claimed_row(j) AS r
        )
        SELECT v_claimed || (SELECT array_agg(claimed.r) FROM claimed),
               coalesce(v_picked, 0) + (SELECT count(*) FROM picked),
               v_keyed_ids || (SELECT array_agg(picked.id ORDER BY picked.priority, picked.run_at, picked.id)
                  FROM picked WHERE picked.ck IS NOT NULL),
               v_keyed_keys || (SELECT array_agg(picked.ck ORDER BY picked.priority, picked.run_at, picked.id)
                  FROM picked WHERE picked.ck IS NOT NULL),
               f.priority, f.run_at, f.id
          INTO v_claimed, v_picked, v_keyed_ids, v_keyed_keys, v_first_p, v_first_r, v_first_i
          FROM (SELECT 1) one
          LEFT JOIN LATERAL (SELECT picked.priority, picked.run_at, picked.id FROM picked
                              ORDER BY picked.priority, picked.run_at, picked.id LIMIT 1) f ON true;
        v_crossed := pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass) - v_crossed;

        IF v_until IS NULL THEN
            -- A full pick: set a floor when it crossed many entries it could
            -- not use (with track_counts off the count stays 0: no floor).
            IF v_crossed - v_picked > 10000 AND v_first_i IS NOT NULL THEN
                PERFORM pg_catalog.set_config('commitq.claim_floor', pg_catalog.format('%s|%s|%s|%s|%s',
                    v_now_us + 1000000, claim.queue, v_first_p,
                    (extract(epoch FROM v_first_r) * 1000000)::bigint, v_first_i), false);
            ELSIF v_floor IS NOT NULL AND v_floor <> '{}' THEN
                PERFORM pg_catalog.set_config('commitq.claim_floor', '', false);
            END IF;
            EXIT;
        ELSIF v_picked = claim.max_jobs THEN
            -- A floor pick that found max_jobs: the floor moves up to the
            -- first of them.
            PERFORM pg_catalog.set_config('commitq.claim_floor', pg_catalog.format('%s|%s|%s|%s|%s',
                v_until, claim.queue, v_first_p,
                (extract(epoch FROM v_first_r) * 1000000)::bigint, v_first_i), false);
            EXIT;
        END IF;
        -- A floor pick that came back short: jobs may wait below the floor.
        v_until := NULL;
        v_fp := -32768;
        v_fr := '-infinity';
        v_fi := -9223372036854775807;
    END LOOP;

    IF v_claimed IS NOT NULL THEN
        RETURN QUERY SELECT * FROM unnest(v_claimed);
        v_got := cardinality(v_claimed);
    END IF;
    IF v_keyed_ids IS NOT NULL THEN
        RETURN QUERY SELECT * FROM commitq._claim_keyed(
            claim.queue, claim.worker, claim.lease, v_keyed_ids, v_keyed_keys,
            -- room left in the batch, and whether the queue may hold more
            claim.max_jobs - v_got, v_picked = claim.max_jobs);
        GET DIAGNOSTICS v_keyed = ROW_COUNT;
        v_got := v_got + v_keyed;
    END IF;

    -- A claim that found nothing registers the worker as waiting, so that
    -- enqueues to this queue send it a NOTIFY; one that found work clears it.
    IF v_got > 0 THEN
        DELETE FROM commitq.waiting_workers w WHERE w.queue = claim.queue AND w.worker = claim.worker;
    ELSE
        INSERT INTO commitq.waiting_workers AS w (queue, worker) VALUES (claim.queue, claim.worker)
        ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
    END IF;
END
$$;

-- ===== 0.2.0: the waiting claim (sql/claim_wait.sql, sql/wakeup.sql, sql/claim.sql, sql/enqueue.sql) =====

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
CREATE OR REPLACE FUNCTION commitq._wake(p_queue text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._wake_at_commit(p_queue);
    PERFORM pg_catalog.pg_notify('commitq:' || p_queue, '')
      WHERE EXISTS (SELECT 1 FROM commitq.waiting_workers w WHERE w.queue = p_queue);
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

-- The waiting claim: claim, and when the queue is empty wait in the same
-- statement for a commit that makes one of its jobs available. For workers
-- in any stack, through PgBouncer's transaction pooling too (no LISTEN).
--
--   CALL commitq.claim_wait('mail', 'worker-1', 10, '5 minutes', '30 seconds');
--
-- returns one row, jobs: a JSON array of the claimed jobs (the columns of
-- commitq.claimed_job, as commitq.claim returns them), '[]' when the wait
-- ended with nothing. It returns as soon as it claimed something.
--
-- A procedure in C (extension/src/claim_wait.rs), not a claim(..., wait)
-- function: a SELECT that waits keeps its snapshot, and so holds back VACUUM
-- of the whole database, for as long as it waits. The procedure commits after
-- each empty claim and then waits holding no snapshot (backend_xmin NULL in
-- pg_stat_activity); each claim runs in a transaction of its own, at any
-- default_transaction_isolation.
--
-- - Woken at commit through shared memory (extension/src/wait_slots.rs) when
--   shared_preload_libraries loads pg_commitq; without it, it claims again
--   every 100 ms (commitq.wait_supported() says which).
-- - Must be a CALL of its own: inside a transaction block (BEGIN ... CALL) or
--   from a function it raises SQLSTATE 2D000, since it cannot commit there.
-- - Cancel (pg_cancel_backend) and statement_timeout end it with an error,
--   like any statement; nothing stays registered.
-- - SECURITY INVOKER and no SET search_path: a procedure with either cannot
--   commit. It runs one statement, commitq.claim (SECURITY DEFINER, so the
--   caller needs the worker role), with every name schema-qualified.
CREATE PROCEDURE commitq.claim_wait(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes',
    wait interval DEFAULT '30 seconds',
    INOUT jobs jsonb DEFAULT NULL)
LANGUAGE c
AS 'MODULE_PATHNAME', 'commitq_claim_wait';

-- Claim up to max_jobs due jobs of a queue, in priority, run_at, id order.
-- Each claimed job gets a lease until now() + lease and a lease token larger
-- than any earlier token of that job; pass both to complete/fail/heartbeat.
CREATE OR REPLACE FUNCTION commitq.claim(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes')
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Plan once per session: the default re-plans these statements on every
-- call for a while, which cost more than running them (measured: claim of 4
-- jobs 0.48 ms -> 0.30 ms).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_claimed commitq.claimed_job[];
    v_picked integer;
    v_keyed_ids bigint[];
    v_keyed_keys text[];
    v_got integer := 0;
    v_keyed integer;
    -- The session's claim floor (see below): until (microseconds since the
    -- epoch, clock time), queue, priority, run_at (microseconds), id.
    v_floor text[] := pg_catalog.string_to_array(pg_catalog.current_setting('commitq.claim_floor', true), '|');
    v_now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    v_until bigint;
    v_fp smallint := -32768;
    v_fr timestamptz := '-infinity';
    v_fi bigint := -9223372036854775807;
    v_first_p smallint;
    v_first_r timestamptz;
    v_first_i bigint;
    v_crossed bigint;
BEGIN
    PERFORM commitq._check(coalesce(
        commitq._queue_problem(claim.queue),
        commitq._worker_lease_problem(claim.worker, claim.lease),
        CASE WHEN claim.max_jobs IS NULL OR claim.max_jobs NOT BETWEEN 1 AND 10000
            THEN format('max_jobs %s out of range 1..10000', coalesce(claim.max_jobs::text, 'NULL'))
        END));

    -- Scheduled jobs that have come due become available. SKIP LOCKED: a row
    -- another claimer is promoting right now is theirs to promote.
    UPDATE commitq.jobs j
       SET state = 'available'
     WHERE j.id IN (SELECT s.id FROM commitq.jobs s
                     WHERE s.state = 'scheduled' AND s.run_at <= now() AND s.queue = claim.queue
                       AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                     ORDER BY s.run_at
                     LIMIT 1000
                       FOR UPDATE SKIP LOCKED);
    -- Others waiting on the queue may take what this claim leaves.
    IF FOUND THEN
        PERFORM commitq._wake(claim.queue);
    END IF;

    -- The claim floor. While a transaction older than the queue's recent
    -- claims stays open, vacuum may not remove the claim-index entries of
    -- claimed and finished jobs, and a pick from the start of the queue
    -- visits each of them and its heap row (measured with a transaction held
    -- open: a claim of 100 after 70,000 claims crossed 70,100 entries). A
    -- session whose full pick crossed more than 10,000 entries beyond those
    -- it returned starts its next picks of that queue at the first job that
    -- pick claimed, its floor, kept in the session setting
    -- commitq.claim_floor, for one second; then, or as soon as a pick from
    -- the floor comes back short (same call), it picks from the start again.
    -- A job that becomes available below a floor (a higher priority, an older
    -- run_at) is so claimed at most a second late, and only while vacuum is
    -- held back (a long transaction; also a long ANALYZE, for its duration):
    -- otherwise no floor is ever set and the order is exact. The
    -- setting affects only the session's own claims; one that does not parse
    -- or lies more than a second ahead is ignored.
    IF pg_catalog.array_to_string(v_floor, '|')
           ~ '^[0-9]{1,17}\|[a-z0-9_.-]+\|-?[0-9]{1,5}\|-?[0-9]{1,17}\|-?[0-9]{1,18}$'
       AND v_floor[2] = claim.queue
       AND v_floor[1]::bigint BETWEEN v_now_us AND v_now_us + 1000000
       AND v_floor[3]::integer BETWEEN -32768 AND 32767 THEN
        v_until := v_floor[1]::bigint;
        v_fp := v_floor[3]::smallint;
        v_fr := timestamptz 'epoch' + v_floor[4]::bigint * interval '1 microsecond';
        v_fi := v_floor[5]::bigint;
    END IF;

    FOR v_pass IN 1..2 LOOP
        v_crossed := pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass);
        -- One statement claims the jobs without a concurrency key among the
        -- next max_jobs in claim order. Keyed ones among them stay locked by us
        -- and go to _claim_keyed (concurrency_keys.sql), which also needs a slot of
        -- their key.
        WITH picked AS (
            -- A job handed its key's slot already holds it: it is claimed like
            -- a job without a key.
            SELECT c.id, CASE WHEN NOT c.slot_held THEN c.concurrency_key END AS ck,
                   c.priority, c.run_at FROM commitq.jobs c
             WHERE c.queue = claim.queue AND c.state = 'available'
               AND (c.priority, c.run_at, c.id) >= (v_fp, v_fr, v_fi)
               -- A paused queue hands out nothing (pause.sql). Tested in this
               -- statement, under the snapshot that picks the jobs.
               AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = claim.queue)
             ORDER BY c.priority, c.run_at, c.id
             LIMIT claim.max_jobs - coalesce(v_picked, 0)
               FOR UPDATE SKIP LOCKED
        ), claimed AS (
            -- The same SET list is written out in _claim_keyed and in
            -- _promote_blocked's take path (concurrency_keys.sql); a test
            -- (every_claim_path_writes_the_same_bookkeeping) checks they agree.
            UPDATE commitq.jobs j
               SET state = 'running',
                   attempt = j.attempt + 1,
                   lease_token = j.lease_token + 1,
                   lease_expires_at = now() + claim.lease,
                   lease_interval = claim.lease,
                   worker = claim.worker,
                   claimed_at = now(),
                   slot_held = false
             -- `= ANY (ARRAY(...))`: an index lookup in any plan, where a join
             -- could be planned as a scan of the whole table (the plan is made
             -- once, not knowing how many jobs a call wants).
             WHERE j.id = ANY (ARRAY(SELECT picked.id FROM picked WHERE picked.ck IS NULL))
            RETURNING commitq._claimed_row(j) AS r
        )
        SELECT v_claimed || (SELECT array_agg(claimed.r) FROM claimed),
               coalesce(v_picked, 0) + (SELECT count(*) FROM picked),
               v_keyed_ids || (SELECT array_agg(picked.id ORDER BY picked.priority, picked.run_at, picked.id)
                  FROM picked WHERE picked.ck IS NOT NULL),
               v_keyed_keys || (SELECT array_agg(picked.ck ORDER BY picked.priority, picked.run_at, picked.id)
                  FROM picked WHERE picked.ck IS NOT NULL),
               f.priority, f.run_at, f.id
          INTO v_claimed, v_picked, v_keyed_ids, v_keyed_keys, v_first_p, v_first_r, v_first_i
          FROM (SELECT 1) one
          LEFT JOIN LATERAL (SELECT picked.priority, picked.run_at, picked.id FROM picked
                              ORDER BY picked.priority, picked.run_at, picked.id LIMIT 1) f ON true;
        v_crossed := pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass) - v_crossed;

        IF v_until IS NULL THEN
            -- A full pick: set a floor when it crossed many entries it could
            -- not use (with track_counts off the count stays 0: no floor).
            IF v_crossed - v_picked > 10000 AND v_first_i IS NOT NULL THEN
                PERFORM pg_catalog.set_config('commitq.claim_floor', pg_catalog.format('%s|%s|%s|%s|%s',
                    v_now_us + 1000000, claim.queue, v_first_p,
                    (extract(epoch FROM v_first_r) * 1000000)::bigint, v_first_i), false);
            ELSIF v_floor IS NOT NULL AND v_floor <> '{}' THEN
                PERFORM pg_catalog.set_config('commitq.claim_floor', '', false);
            END IF;
            EXIT;
        ELSIF v_picked = claim.max_jobs THEN
            -- A floor pick that found max_jobs: the floor moves up to the
            -- first of them.
            PERFORM pg_catalog.set_config('commitq.claim_floor', pg_catalog.format('%s|%s|%s|%s|%s',
                v_until, claim.queue, v_first_p,
                (extract(epoch FROM v_first_r) * 1000000)::bigint, v_first_i), false);
            EXIT;
        END IF;
        -- A floor pick that came back short: jobs may wait below the floor.
        v_until := NULL;
        v_fp := -32768;
        v_fr := '-infinity';
        v_fi := -9223372036854775807;
    END LOOP;

    IF v_claimed IS NOT NULL THEN
        RETURN QUERY SELECT * FROM unnest(v_claimed);
        v_got := cardinality(v_claimed);
    END IF;
    IF v_keyed_ids IS NOT NULL THEN
        RETURN QUERY SELECT * FROM commitq._claim_keyed(
            claim.queue, claim.worker, claim.lease, v_keyed_ids, v_keyed_keys,
            -- room left in the batch, and whether the queue may hold more
            claim.max_jobs - v_got, v_picked = claim.max_jobs);
        GET DIAGNOSTICS v_keyed = ROW_COUNT;
        v_got := v_got + v_keyed;
    END IF;

    -- A claim that found nothing registers the worker as waiting, so that
    -- enqueues to this queue send it a NOTIFY, but only when this session
    -- LISTENs on the queue's channel: a polling worker, or one waiting in
    -- commitq.claim_wait, would make every producer pay a NOTIFY for
    -- nothing. (A worker that LISTENs on another connection calls
    -- commitq.start_waiting.) A claim that found work clears it.
    IF v_got > 0 THEN
        DELETE FROM commitq.waiting_workers w WHERE w.queue = claim.queue AND w.worker = claim.worker;
    ELSIF 'commitq:' || claim.queue IN (SELECT pg_listening_channels()) THEN
        INSERT INTO commitq.waiting_workers AS w (queue, worker) VALUES (claim.queue, claim.worker)
        ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
    END IF;
END
$$;

-- commitq.enqueue of a job with an idempotency key or after_xact; called by
-- it (and by enqueue_many) as the extension's owner, so not granted. The
-- callers have checked the job.
CREATE OR REPLACE FUNCTION commitq._enqueue_keyed(
    queue text,
    kind text,
    args jsonb,
    priority integer,
    run_at timestamptz,
    max_attempts integer,
    idempotency_key text,
    concurrency_key text,
    after_xact xid8,
    OUT job_id bigint,
    OUT inserted boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_run_at timestamptz := coalesce(_enqueue_keyed.run_at, now());
    v_window interval;
    v_wake boolean;
    v_gated boolean := false;
BEGIN
    IF _enqueue_keyed.after_xact IS NOT NULL THEN
        -- Raises for a transaction id from the future; a gated job waits in
        -- 'scheduled' until claim or maintain sees its transaction commit.
        PERFORM pg_xact_status(_enqueue_keyed.after_xact);
        v_gated := true;
    END IF;

    _enqueue_keyed.inserted := true;
    IF _enqueue_keyed.idempotency_key IS NOT NULL THEN
        SELECT c.idempotency_window INTO v_window FROM commitq.config c;
        _enqueue_keyed.job_id := nextval('commitq.job_id_seq');
        LOOP
            -- The primary key of idempotency_keys decides. A concurrent enqueue
            -- of the same key waits here until the other transaction commits
            -- (we return its job) or rolls back (we insert). A key whose job has
            -- finished and whose window has passed is taken over.
            INSERT INTO commitq.idempotency_keys AS k (queue, key, job_id)
            VALUES (_enqueue_keyed.queue, _enqueue_keyed.idempotency_key, _enqueue_keyed.job_id)
            ON CONFLICT (queue, key) DO UPDATE
               SET job_id = excluded.job_id, created_at = excluded.created_at
             WHERE k.created_at < now() - v_window
               AND NOT EXISTS (SELECT 1 FROM commitq.jobs j WHERE j.id = k.job_id);
            EXIT WHEN FOUND;

            SELECT k.job_id INTO _enqueue_keyed.job_id
              FROM commitq.idempotency_keys k
             WHERE k.queue = _enqueue_keyed.queue AND k.key = _enqueue_keyed.idempotency_key;
            IF FOUND THEN
                _enqueue_keyed.inserted := false;
                RETURN;
            END IF;
            -- maintain() pruned the key between the two statements: go again.
        END LOOP;
    END IF;

    -- The insert also tells whether a worker waits for this queue (one
    -- statement, as in enqueue.rs).
    INSERT INTO commitq.jobs AS j (id, queue, kind, args, state, priority, run_at, max_attempts,
                                   idempotency_key, concurrency_key, after_xact)
    VALUES (coalesce(_enqueue_keyed.job_id, nextval('commitq.job_id_seq')),
            _enqueue_keyed.queue, _enqueue_keyed.kind, _enqueue_keyed.args,
            CASE WHEN v_run_at > now() OR v_gated THEN 'scheduled' ELSE 'available' END::commitq.job_state,
            _enqueue_keyed.priority, v_run_at, _enqueue_keyed.max_attempts,
            _enqueue_keyed.idempotency_key, _enqueue_keyed.concurrency_key, _enqueue_keyed.after_xact)
    RETURNING j.id,
              v_run_at <= now() AND NOT v_gated
              AND EXISTS (SELECT 1 FROM commitq.waiting_workers w WHERE w.queue = _enqueue_keyed.queue)
         INTO _enqueue_keyed.job_id, v_wake;

    -- What commitq._wake does, inlined: v_wake already says a worker waits.
    IF v_wake THEN
        PERFORM pg_notify('commitq:' || _enqueue_keyed.queue, '');
    END IF;
    IF v_run_at <= now() AND NOT v_gated THEN
        PERFORM commitq._wake_at_commit(_enqueue_keyed.queue);
    END IF;
END
$$;

-- What each role may do, listed once: the GRANTs below give it to the
-- cluster roles at install, and commitq.grant_producer and friends give it
-- to a role inside one database. commitq_operator is also a member of the
-- other two, so its rows are only what it adds to them.
CREATE OR REPLACE FUNCTION commitq._role_privileges()
RETURNS TABLE (kind text, privilege text, object text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.kind, v.privilege, v.object FROM (VALUES
        ('producer', 'USAGE', 'SCHEMA commitq'),
        ('producer', 'USAGE', 'TYPE commitq.job_state'),
        ('producer', 'USAGE', 'TYPE commitq.claimed_job'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[])'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(jsonb)'),
        -- Named leases are for application code and workers alike.
        ('producer', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('worker', 'USAGE', 'SCHEMA commitq'),
        ('worker', 'USAGE', 'TYPE commitq.job_state'),
        ('worker', 'USAGE', 'TYPE commitq.claimed_job'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.claim(text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_many(bigint[], bigint[])'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_claim(bigint[], bigint[], text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_take(bigint[], bigint[], text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.stop_waiting(text, text)'),
        -- The waiting claim (sql/claim_wait.sql, sql/wakeup.sql).
        ('worker', 'EXECUTE', 'PROCEDURE commitq.claim_wait(text, text, integer, interval, interval, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.start_waiting(text, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.wait_supported()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.fail(bigint, bigint, text, interval, boolean)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.heartbeat(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.snooze(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_lease(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_begin(bigint, bigint, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_done(bigint, bigint, text, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.maintain()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('operator', 'USAGE', 'SCHEMA commitq'),
        ('operator', 'USAGE', 'TYPE commitq.job_state'),
        ('operator', 'USAGE', 'TYPE commitq.claimed_job'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.cancel(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.retry(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_concurrency_limit(text, integer)'),
        -- Cron schedules (sql/schedule.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.schedule(text, text, text, text, jsonb, text, integer, integer, text, interval, boolean, boolean)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.unschedule(text)'),
        -- Pausing queues (sql/pause.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.pause(text)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.resume(text)'),
        -- The engine's state (sql/engine.sql): the view calls the function
        -- with the reader's privileges.
        ('operator', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        ('operator', 'SELECT', 'TABLE commitq.engine_status'),
        -- Operators read every table and change only the settings.
        ('operator', 'SELECT', 'ALL TABLES IN SCHEMA commitq'),
        ('operator', 'UPDATE', 'TABLE commitq.config'),
        -- Dashboards and exporters: the views and nothing else. The view
        -- engine_status calls _engine_status with the reader's privileges.
        -- (A revoke finds the kinds a role still holds by their functions:
        -- _engine_status is the reader's.)
        ('reader', 'USAGE', 'SCHEMA commitq'),
        ('reader', 'USAGE', 'TYPE commitq.job_state'),
        ('reader', 'SELECT', 'TABLE commitq.queue_stats'),
        ('reader', 'SELECT', 'TABLE commitq.throughput'),
        ('reader', 'SELECT', 'TABLE commitq.job_list'),
        ('reader', 'SELECT', 'TABLE commitq.concurrency_key_stats'),
        ('reader', 'SELECT', 'TABLE commitq.named_lease_holders'),
        ('reader', 'SELECT', 'TABLE commitq.schedules'),
        ('reader', 'SELECT', 'TABLE commitq.engine_status'),
        ('reader', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        -- queue_stats calls it as its reader, like engine_status.
        ('reader', 'EXECUTE', 'FUNCTION commitq._available_by_queue()'),
        ('operator', 'EXECUTE', 'FUNCTION commitq._available_by_queue()')
    ) v(kind, privilege, object)
$$;

-- Grant (p_grant) or revoke a kind of commitq privileges to a role inside
-- this database only: function, schema and table privileges belong to a
-- database, where role membership belongs to the cluster. Called by the
-- SECURITY DEFINER grant_* and revoke_* functions, so it runs as commitq's
-- owner; it decides itself whether the caller may.
--
-- The caller is the role the session acts as (SET ROLE counts), since a
-- function running as its owner cannot see the role that called it: it
-- must own the current database, or be a member of its owner (superusers
-- are members of every role). A kind granted to a role is operator as a
-- whole (producer, worker and its own rows) or producer or worker; a revoke
-- takes back the kind's rows, then gives back the rows of every other kind
-- the role still holds a function of (revoking producer from a role that
-- is also a worker keeps the named-lease functions and schema they share).
CREATE OR REPLACE FUNCTION commitq._grant_in_database(p_role regrole, p_kind text, p_grant boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller text := coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user);
    v_target name;
    v_priv record;
    v_kind text;
BEGIN
    IF NOT pg_catalog.pg_has_role(v_caller,
            (SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()),
            'MEMBER') THEN
        RAISE EXCEPTION 'commitq: only the owner of database % or a superuser may grant or revoke commitq privileges in it',
            pg_catalog.current_database() USING ERRCODE = '42501';
    END IF;
    IF p_kind IS NULL OR p_kind NOT IN ('producer', 'worker', 'operator', 'reader') THEN
        RAISE EXCEPTION 'commitq: unknown kind of privileges %', p_kind USING ERRCODE = 'CQ001';
    END IF;
    SELECT r.rolname INTO v_target FROM pg_catalog.pg_roles r WHERE r.oid = p_role;
    IF v_target IS NULL THEN
        RAISE EXCEPTION 'commitq: role must not be NULL' USING ERRCODE = 'CQ001';
    END IF;
    -- Not the cluster roles (a revoke would take their install grants away),
    -- nor predefined roles, nor commitq's owner (who holds everything).
    IF v_target IN ('commitq_producer', 'commitq_worker', 'commitq_operator', 'commitq_reader') OR v_target LIKE 'pg\_%'
       OR p_role = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'commitq') THEN
        RAISE EXCEPTION 'commitq: cannot grant or revoke commitq privileges to role %: it is commitq''s owner, '
            'a commitq cluster role or a predefined role', v_target USING ERRCODE = 'CQ001';
    END IF;

    FOR v_priv IN SELECT * FROM commitq._role_privileges() r
              WHERE r.kind = p_kind
                 OR (p_kind = 'operator' AND r.kind IN ('producer', 'worker')) LOOP
        EXECUTE pg_catalog.format(CASE WHEN p_grant THEN 'GRANT %s ON %s TO %I' ELSE 'REVOKE %s ON %s FROM %I' END,
                                  v_priv.privilege, v_priv.object, v_target);
    END LOOP;
    IF p_grant THEN
        RETURN;
    END IF;
    FOREACH v_kind IN ARRAY ARRAY['producer', 'worker', 'operator', 'reader'] LOOP
        CONTINUE WHEN v_kind = p_kind;
        IF EXISTS (SELECT FROM commitq._role_privileges() r, pg_catalog.pg_proc f,
                          pg_catalog.aclexplode(f.proacl) a
                    WHERE r.kind = v_kind AND r.privilege = 'EXECUTE'
                      -- 'FUNCTION f(...)' or 'PROCEDURE p(...)'
                      AND f.oid = pg_catalog.substr(r.object, pg_catalog.strpos(r.object, ' ') + 1)::regprocedure
                      AND a.grantee = p_role AND a.privilege_type = 'EXECUTE') THEN
            PERFORM commitq._grant_in_database(p_role, v_kind, true);
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION commitq._wake_at_commit(text), commitq.wait_supported(),
    commitq.start_waiting(text, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE commitq.claim_wait(text, text, integer, interval, interval, jsonb) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE commitq.claim_wait(text, text, integer, interval, interval, jsonb) TO commitq_worker;
GRANT EXECUTE ON FUNCTION commitq.start_waiting(text, text), commitq.wait_supported() TO commitq_worker;

-- Finished jobs listed by state (schema.sql).
CREATE INDEX finished_jobs_state_idx ON commitq.finished_jobs (state, id);

-- Flow control: rate limits and fair queues (sql/flow_control.sql, sql/flow_claim.sql).

-- Flow control: rate limits on queues and concurrency keys, and fair
-- claiming across the keys of a prefix. Both are enforced by every path that
-- hands out a job (claim, and so complete_and_claim and claim_wait; the take
-- path of complete_and_take hands the next job of a key out through a claim
-- instead while any rule exists), inside the database where no worker can
-- bypass them.
--
-- Rate limits are a sliding window: a limit of max_jobs per `per` lets at
-- most max_jobs jobs of the queue (or key) start in ANY window of that
-- length, with no burst beyond it. A job "starts" when a claim hands it out;
-- its start time is the claim's transaction time, now(), which is also the
-- job's claimed_at, so the guarantee can be checked on the jobs themselves.
-- Jobs over the limit stay available, spend no attempt, and are handed out
-- by a later claim once the window has room.
--
-- How it holds under any number of claimers: each limited queue or key has
-- a row in commitq.rate_windows with the starts of its current window. A
-- claim takes that row's lock (FOR UPDATE SKIP LOCKED: a claimer holding it
-- is passed over, never waited for), counts the starts in the window, hands
-- out at most the room left, appends its own starts, and keeps the lock until
-- it commits. A claim whose transaction time is older than the window's
-- latest start hands out none of it, so starts are appended in time order
-- and no claimer can squeeze an old start into a window others already
-- filled. tests/isolation/specs/rate-limit.spec holds the interleavings.
--
-- Unlimited queues pay one lookup: commitq.claim tests whether any rule
-- exists (an empty table and a primary-key probe) and takes its usual path
-- when none does.

-- Rate limits. `pattern` is 'queue:NAME' for a queue, or a concurrency key
-- ('account:42'), or a key prefix ending in '*' ('tenant:*', '*' for every
-- key): each key it covers gets its own window. For a key an exact pattern
-- wins over prefixes, and a longer prefix over a shorter one, as in
-- commitq.concurrency_limits.
CREATE TABLE commitq.rate_limits (
    pattern   text PRIMARY KEY,
    max_jobs  integer NOT NULL CHECK (max_jobs BETWEEN 1 AND 100000),
    per       interval NOT NULL CHECK (per BETWEEN interval '1 millisecond' AND interval '1 day')
);

-- The window of each limited queue ('queue:NAME') or key ('key:KEY'): claim
-- times in ascending order, and how many jobs each claim started. Only
-- starts younger than the limit's `per` are kept. Its row lock serializes
-- the claims of one queue or key.
CREATE TABLE commitq.rate_windows (
    bucket  text PRIMARY KEY,
    starts  timestamptz[] NOT NULL DEFAULT '{}',
    counts  integer[] NOT NULL DEFAULT '{}'
) WITH (
    -- Rewritten by every claim of its queue or key: room for HOT updates.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Fair queues: a claim takes jobs round-robin across the concurrency keys
-- that start with key_prefix ('' for every key).
CREATE TABLE commitq.fair_queues (
    queue       text PRIMARY KEY,
    key_prefix  text NOT NULL
);

SELECT pg_catalog.pg_extension_config_dump('commitq.rate_limits', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.fair_queues', '');

-- The fair pick: the distinct keys of a queue's available jobs, one index
-- descent each, and each key's jobs in claim order. COLLATE "C" so that the
-- keys of a prefix are one range of the index under any database collation.
-- Partial on keyed jobs: jobs without a key never enter it.
CREATE INDEX jobs_fair_idx ON commitq.jobs (queue, concurrency_key COLLATE "C", priority, run_at, id)
    WITH (deduplicate_items = off)
    WHERE state = 'available' AND concurrency_key IS NOT NULL;

-- The first half of the advisory lock taken while creating a window's row
-- (see _rate_room); 'cqrw' in ASCII.
CREATE FUNCTION commitq._rate_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1668379255 $$;

-- How many more jobs the window of p_bucket lets start now, under a limit
-- of p_max per p_per, taking the window's row lock for the rest of the
-- transaction. 0 when another transaction holds the row (or is creating
-- it), and when the window's latest start is later than our now().
CREATE FUNCTION commitq._rate_room(p_bucket text, p_max integer, p_per interval) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_starts timestamptz[];
    v_counts integer[];
    v_room integer;
    v_free_in interval;
BEGIN
    SELECT w.starts, w.counts INTO v_starts, v_counts
      FROM commitq.rate_windows w WHERE w.bucket = p_bucket
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        -- A row we cannot see (not yet created, or created by a transaction
        -- still running) is created under an advisory lock, so that two
        -- claimers never wait for each other's INSERT; one we can see is
        -- locked by another claimer.
        IF EXISTS (SELECT 1 FROM commitq.rate_windows w WHERE w.bucket = p_bucket) THEN
            PERFORM commitq._flow_retry_in(interval '10 milliseconds');
            RETURN 0;
        END IF;
        INSERT INTO commitq.rate_windows AS w (bucket)
        SELECT p_bucket WHERE pg_try_advisory_xact_lock(commitq._rate_lock_space(), hashtext(p_bucket))
        ON CONFLICT (bucket) DO NOTHING
        RETURNING w.starts, w.counts INTO v_starts, v_counts;
        IF NOT FOUND THEN
            RETURN 0;
        END IF;
    END IF;
    IF v_starts[cardinality(v_starts)] > now() THEN
        PERFORM commitq._flow_retry_in(interval '10 milliseconds');
        RETURN 0;
    END IF;
    SELECT greatest(p_max - coalesce(sum(t.c), 0), 0), min(t.s) + p_per - clock_timestamp()
      INTO v_room, v_free_in
      FROM unnest(v_starts, v_counts) AS t(s, c) WHERE t.s > now() - p_per;
    IF v_room = 0 THEN
        PERFORM commitq._flow_retry_in(v_free_in);
    END IF;
    RETURN v_room;
END
$$;

-- A claim that hands out nothing because a window is full leaves, in the
-- session setting commitq.flow_retry_ms, how soon the earliest such window
-- has room: commitq.claim_wait, which otherwise sleeps until a commit wakes
-- it, claims again then (no commit marks a window's room coming back).
-- commitq._claim_flow clears it at its start.
CREATE FUNCTION commitq._flow_retry_in(p_in interval) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ms bigint := greatest(ceil(extract(epoch FROM p_in) * 1000), 1)::bigint;
    v_was text := pg_catalog.current_setting('commitq.flow_retry_ms', true);
BEGIN
    IF v_was IS NULL OR v_was !~ '^[0-9]{1,12}$' OR v_was::bigint > v_ms THEN
        PERFORM pg_catalog.set_config('commitq.flow_retry_ms', v_ms::text, false);
    END IF;
END
$$;

-- Record p_n jobs started now in the window of p_bucket, whose row lock
-- _rate_room took, and forget starts older than p_per. A window holds at
-- most 256 claims: beyond that the two oldest are counted as one at the later
-- time, which only ever lets fewer jobs start.
CREATE FUNCTION commitq._rate_record(p_bucket text, p_per interval, p_n integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_starts timestamptz[];
    v_counts integer[];
    v_last integer;
BEGIN
    SELECT coalesce(array_agg(t.s ORDER BY t.o), '{}'), coalesce(array_agg(t.c ORDER BY t.o), '{}')
      INTO v_starts, v_counts
      FROM commitq.rate_windows w,
           unnest(w.starts, w.counts) WITH ORDINALITY AS t(s, c, o)
     WHERE w.bucket = p_bucket AND t.s > now() - p_per;
    v_last := cardinality(v_starts);
    IF v_last > 0 AND v_starts[v_last] = now() THEN
        v_counts[v_last] := v_counts[v_last] + p_n;
    ELSE
        v_starts := v_starts || now();
        v_counts := v_counts || p_n;
    END IF;
    IF cardinality(v_starts) > 256 THEN
        v_counts[2] := v_counts[1] + v_counts[2];
        v_starts := v_starts[2:];
        v_counts := v_counts[2:];
    END IF;
    UPDATE commitq.rate_windows w SET starts = v_starts, counts = v_counts WHERE w.bucket = p_bucket;
END
$$;

-- The rate limit of a concurrency key: an exact entry, else the longest
-- matching prefix entry; none when no entry covers it. 'queue:' entries are
-- queues', never a key's.
CREATE FUNCTION commitq._key_rate_limit(p_key text, OUT max_jobs integer, OUT per interval)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.max_jobs, l.per FROM commitq.rate_limits l
     WHERE NOT pg_catalog.starts_with(l.pattern, 'queue:')
       AND (l.pattern = p_key
            OR (pg_catalog.right(l.pattern, 1) = '*'
                AND pg_catalog.starts_with(p_key, pg_catalog.left(l.pattern, -1))))
     ORDER BY l.pattern = p_key DESC, pg_catalog.length(l.pattern) DESC
     LIMIT 1
$$;

-- Set or remove (max_jobs NULL) a rate limit: at most max_jobs jobs of the
-- queue ('queue:NAME') or of each key the pattern covers start in any window
-- of length `per`. Applies to the next claim; starts recorded under the
-- previous limit keep counting for as long as they are younger than its
-- `per`. Returns true when a limit was there before.
CREATE FUNCTION commitq.set_rate_limit(pattern text, max_jobs integer, per interval DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_queue text := CASE WHEN starts_with(set_rate_limit.pattern, 'queue:')
                         THEN substr(set_rate_limit.pattern, 7) END;
    v_had boolean;
BEGIN
    PERFORM commitq._check(CASE
        WHEN set_rate_limit.pattern IS NULL THEN 'pattern must not be NULL'
        WHEN set_rate_limit.max_jobs NOT BETWEEN 1 AND 100000
            THEN format('max_jobs %s out of range 1..100000', set_rate_limit.max_jobs)
        WHEN set_rate_limit.max_jobs IS NOT NULL AND set_rate_limit.per IS NULL
            THEN 'per must not be NULL when max_jobs is set'
        WHEN set_rate_limit.max_jobs IS NOT NULL
             AND set_rate_limit.per NOT BETWEEN interval '1 millisecond' AND interval '1 day'
            THEN format('per %s out of range 1 millisecond..1 day', set_rate_limit.per)
        END);
    IF v_queue IS NOT NULL THEN
        PERFORM commitq._check(commitq._queue_problem(v_queue));
    ELSE
        PERFORM commitq._check(commitq._job_problem('q', 'k', 'object', 0, 0, 1, true, NULL,
                                                    set_rate_limit.pattern));
    END IF;

    SELECT true INTO v_had FROM commitq.rate_limits l WHERE l.pattern = set_rate_limit.pattern;
    IF set_rate_limit.max_jobs IS NULL THEN
        DELETE FROM commitq.rate_limits l WHERE l.pattern = set_rate_limit.pattern;
    ELSE
        INSERT INTO commitq.rate_limits AS l (pattern, max_jobs, per)
        VALUES (set_rate_limit.pattern, set_rate_limit.max_jobs, set_rate_limit.per)
        ON CONFLICT (pattern) DO UPDATE SET max_jobs = excluded.max_jobs, per = excluded.per;
        IF v_queue IS NOT NULL THEN
            INSERT INTO commitq.rate_windows (bucket) VALUES (set_rate_limit.pattern)
            ON CONFLICT (bucket) DO NOTHING;
        END IF;
    END IF;
    RETURN coalesce(v_had, false);
END
$$;

-- Make a queue fair across the concurrency keys that start with key_prefix
-- ('tenant:'; '' for every key), or fair no more (key_prefix NULL). Returns
-- true when the queue was fair before.
CREATE FUNCTION commitq.set_fairness(queue text, key_prefix text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_had boolean;
BEGIN
    PERFORM commitq._check(commitq._queue_problem(set_fairness.queue));
    IF set_fairness.key_prefix IS NOT NULL AND set_fairness.key_prefix <> '' THEN
        PERFORM commitq._check(commitq._job_problem('q', 'k', 'object', 0, 0, 1, true, NULL,
                                                    set_fairness.key_prefix));
    END IF;
    SELECT true INTO v_had FROM commitq.fair_queues f WHERE f.queue = set_fairness.queue;
    IF set_fairness.key_prefix IS NULL THEN
        DELETE FROM commitq.fair_queues f WHERE f.queue = set_fairness.queue;
    ELSE
        INSERT INTO commitq.fair_queues AS f (queue, key_prefix)
        VALUES (set_fairness.queue, set_fairness.key_prefix)
        ON CONFLICT (queue) DO UPDATE SET key_prefix = excluded.key_prefix;
    END IF;
    RETURN coalesce(v_had, false);
END
$$;

-- Monitoring: every rule, and for rate limits how full the busiest window
-- it covers is now (the queue's, or that of the busiest key in use that the
-- pattern matches). Readers see this view, not the tables.
CREATE VIEW commitq.flow_control AS
SELECT 'rate_limit'::text AS rule, l.pattern AS target, l.max_jobs, l.per, NULL::text AS key_prefix,
       coalesce((SELECT max((SELECT coalesce(sum(t.c), 0) FROM unnest(w.starts, w.counts) AS t(s, c)
                              WHERE t.s > pg_catalog.now() - l.per))
                   FROM commitq.rate_windows w
                  WHERE w.bucket = l.pattern
                     OR (NOT pg_catalog.starts_with(l.pattern, 'queue:')
                         AND (w.bucket = 'key:' || l.pattern
                              OR (pg_catalog.right(l.pattern, 1) = '*'
                                  AND pg_catalog.starts_with(w.bucket, 'key:' || pg_catalog.left(l.pattern, -1)))))),
                0)::bigint AS started_in_window
  FROM commitq.rate_limits l
UNION ALL
SELECT 'fairness', 'queue:' || f.queue, NULL, NULL, f.key_prefix, NULL
  FROM commitq.fair_queues f;

-- The claim of a queue under flow control (rules in flow_control.sql):
-- commitq.claim hands its work here when any rate limit exists or the queue
-- is fair. Paused queues, concurrency keys and their slots work as in the
-- usual claim; the keyed jobs go through _claim_keyed (concurrency_keys.sql)
-- with their key rows already locked, so that it claims exactly the jobs
-- chosen here and picks none of its own.

-- The jobs of a fair queue to hand out next, locked, in hand-out order: the
-- first job of each key, then the second of each, and so on (each round in
-- claim order), over up to p_want keys with the prefix. So a key with a
-- long backlog takes one place per round, and a key with one job waits at
-- most one claim behind it. Which keys a claim visits rotates: the session
-- keeps the last key it visited (setting commitq.fair_cursor, 'queue key')
-- and its next claim starts after it, wrapping round, so with more keys than
-- a claim takes every key is visited in turn. The setting only orders the
-- session's own claims.
CREATE FUNCTION commitq._fair_pick(p_queue text, p_prefix text, p_want integer) RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor text := pg_catalog.current_setting('commitq.fair_cursor', true);
    v_after text;
    v_keys text[];
    v_wrap text[];
    v_ids bigint[];
BEGIN
    IF starts_with(v_cursor, p_queue || ' ') THEN
        v_after := substr(v_cursor, length(p_queue) + 2);
    END IF;
    -- Up to p_want keys after the cursor, one index descent each...
    v_keys := commitq._fair_keys(p_queue, p_prefix, coalesce(v_after, p_prefix), v_after IS NOT NULL, p_want);
    -- ...and from the first key of the prefix when that was not enough.
    IF v_after IS NOT NULL AND coalesce(cardinality(v_keys), 0) < p_want THEN
        v_wrap := commitq._fair_keys(p_queue, p_prefix, p_prefix, false,
                                     p_want - coalesce(cardinality(v_keys), 0));
        v_keys := coalesce(v_keys, '{}') || coalesce(
            (SELECT array_agg(k ORDER BY o) FROM unnest(v_wrap) WITH ORDINALITY AS w(k, o)
              WHERE k <> ALL (coalesce(v_keys, '{}'))), '{}');
    END IF;
    IF v_keys IS NULL OR v_keys = '{}' THEN
        RETURN '{}';
    END IF;
    PERFORM pg_catalog.set_config('commitq.fair_cursor',
        CASE WHEN cardinality(v_keys) >= p_want THEN p_queue || ' ' || v_keys[cardinality(v_keys)] ELSE '' END,
        false);

    -- Each key's first jobs, as many as a fair share of the claim, then
    -- round by round; locked in that order, passing over jobs others hold.
    WITH per_key AS (
        SELECT x.id, x.rnd, x.priority, x.run_at
          FROM unnest(v_keys) AS k(key)
          CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at,
                       row_number() OVER (ORDER BY j.priority, j.run_at, j.id) AS rnd
                  FROM commitq.jobs j
                 WHERE j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                   AND j.concurrency_key COLLATE "C" = k.key
                 ORDER BY j.priority, j.run_at, j.id
                 LIMIT (p_want + cardinality(v_keys) - 1) / cardinality(v_keys)) x
    ), chosen AS (
        SELECT per_key.id, row_number() OVER (ORDER BY per_key.rnd, per_key.priority, per_key.run_at, per_key.id) AS ord
          FROM per_key
    ), locked AS (
        SELECT j.id FROM commitq.jobs j
         WHERE j.id = ANY (ARRAY(SELECT chosen.id FROM chosen)) AND j.state = 'available'
           FOR UPDATE SKIP LOCKED
    )
    SELECT array_agg(chosen.id ORDER BY chosen.ord) INTO v_ids
      FROM chosen WHERE chosen.id IN (SELECT locked.id FROM locked) AND chosen.ord <= p_want;
    RETURN coalesce(v_ids, '{}');
END
$$;

-- Up to p_n distinct keys with the prefix among the queue's available jobs,
-- in key order from p_from (excluded when p_strict): a recursive walk of
-- jobs_fair_idx, one descent per key.
CREATE FUNCTION commitq._fair_keys(p_queue text, p_prefix text, p_from text, p_strict boolean, p_n integer)
RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE k(key, n) AS (
        (SELECT j.concurrency_key COLLATE "C", 1 FROM commitq.jobs j
          WHERE j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
            AND j.concurrency_key COLLATE "C" >= p_from COLLATE "C"
            AND (NOT p_strict OR j.concurrency_key COLLATE "C" > p_from COLLATE "C")
          ORDER BY j.concurrency_key COLLATE "C"
          LIMIT 1)
        UNION ALL
        SELECT (SELECT j.concurrency_key COLLATE "C" FROM commitq.jobs j
                 WHERE j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                   AND j.concurrency_key COLLATE "C" > k.key
                 ORDER BY j.concurrency_key COLLATE "C"
                 LIMIT 1), k.n + 1
          FROM k
         WHERE k.key IS NOT NULL AND pg_catalog.starts_with(k.key, p_prefix) AND k.n < p_n
    )
    SELECT array_agg(k.key ORDER BY k.n) FROM k
     WHERE k.key IS NOT NULL AND pg_catalog.starts_with(k.key, p_prefix)
$$;

-- commitq.claim under flow control: the same arguments, checked by claim.
CREATE FUNCTION commitq._claim_flow(p_queue text, p_worker text, p_max integer, p_lease interval)
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_want integer := p_max;
    v_room integer;
    v_limit record;
    v_prefix text;
    v_ids bigint[] := '{}';
    v_more bigint[];
    -- The candidates' keys, and whether each needs a slot of its key.
    v_keys text[];
    v_slots boolean[];
    v_extra integer;
    v_key_limits boolean := EXISTS (SELECT 1 FROM commitq.rate_limits l
                                     WHERE NOT starts_with(l.pattern, 'queue:'));
    -- Windows this claim holds: bucket, per, room.
    v_buckets text[] := '{}';
    v_pers interval[] := '{}';
    v_rooms integer[] := '{}';
    v_plain bigint[];
    v_slot_ids bigint[];
    v_slot_keys text[];
    v_missing text[];
    v_held text[];
    v_claimed commitq.claimed_job[];
    v_n integer;
BEGIN
    IF pg_catalog.current_setting('commitq.flow_retry_ms', true) <> '' THEN
        PERFORM pg_catalog.set_config('commitq.flow_retry_ms', '', false);
    END IF;
    IF EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = p_queue) THEN
        RETURN;
    END IF;

    -- The queue's own limit caps the whole claim.
    SELECT l.max_jobs, l.per INTO v_limit FROM commitq.rate_limits l WHERE l.pattern = 'queue:' || p_queue;
    IF FOUND THEN
        v_room := commitq._rate_room('queue:' || p_queue, v_limit.max_jobs, v_limit.per);
        IF v_room <= 0 THEN
            RETURN;
        END IF;
        v_want := least(v_want, v_room);
        v_buckets := ARRAY['queue:' || p_queue];
        v_pers := ARRAY[v_limit.per];
        v_rooms := ARRAY[v_room];
    END IF;

    SELECT f.key_prefix INTO v_prefix FROM commitq.fair_queues f WHERE f.queue = p_queue;
    IF FOUND THEN
        v_ids := commitq._fair_pick(p_queue, v_prefix, v_want);
    END IF;
    -- Then the next jobs in claim order: what the fair pick left of the
    -- claim, and under key limits as many again, so that jobs of keys whose
    -- window is full leave room for others.
    v_extra := CASE WHEN v_key_limits THEN 2 * v_want ELSE v_want END - cardinality(v_ids);
    IF v_extra > 0 THEN
        SELECT array_agg(s.id ORDER BY s.priority, s.run_at, s.id) INTO v_more
          FROM (SELECT c.id, c.priority, c.run_at FROM commitq.jobs c
                 WHERE c.queue = p_queue AND c.state = 'available' AND c.id <> ALL (v_ids)
                 ORDER BY c.priority, c.run_at, c.id
                 LIMIT v_extra
                   FOR UPDATE SKIP LOCKED) s;
        v_ids := v_ids || coalesce(v_more, '{}');
    END IF;
    IF v_ids = '{}' THEN
        RETURN;
    END IF;

    SELECT array_agg(j.concurrency_key ORDER BY t.ord),
           array_agg(j.concurrency_key IS NOT NULL AND NOT j.slot_held ORDER BY t.ord)
      INTO v_keys, v_slots
      FROM unnest(v_ids) WITH ORDINALITY AS t(id, ord) JOIN commitq.jobs j ON j.id = t.id;

    -- Each limited key among the candidates: its window's room (locked).
    IF v_key_limits THEN
        FOR v_limit IN
            SELECT k.ck, r.max_jobs, r.per
              FROM (SELECT DISTINCT c.ck FROM unnest(v_keys) AS c(ck) WHERE c.ck IS NOT NULL) k
              CROSS JOIN LATERAL commitq._key_rate_limit(k.ck) r
             WHERE r.max_jobs IS NOT NULL
             ORDER BY k.ck
        LOOP
            v_buckets := v_buckets || ('key:' || v_limit.ck);
            v_pers := v_pers || v_limit.per;
            v_rooms := v_rooms || commitq._rate_room('key:' || v_limit.ck, v_limit.max_jobs, v_limit.per);
        END LOOP;
    END IF;

    -- The first v_want candidates that their key's window lets start.
    SELECT array_agg(a.id ORDER BY a.ord) FILTER (WHERE NOT a.slot),
           array_agg(a.id ORDER BY a.ord) FILTER (WHERE a.slot),
           array_agg(a.ck ORDER BY a.ord) FILTER (WHERE a.slot)
      INTO v_plain, v_slot_ids, v_slot_keys
      FROM (SELECT c.id, c.ck, c.slot, c.ord
              FROM (SELECT c.*, row_number() OVER (PARTITION BY c.ck ORDER BY c.ord) AS rnk
                      FROM unnest(v_ids, v_keys, v_slots) WITH ORDINALITY AS c(id, ck, slot, ord)) c
              LEFT JOIN unnest(v_buckets, v_rooms) AS b(bucket, room) ON b.bucket = 'key:' || c.ck
             WHERE b.bucket IS NULL OR c.rnk <= b.room
             ORDER BY c.ord
             LIMIT v_want) a;

    -- Jobs without a key, or already holding their key's slot.
    WITH claimed AS (
        -- The same SET list as commitq.claim's.
        UPDATE commitq.jobs j
           SET state = 'running',
               attempt = j.attempt + 1,
               lease_token = j.lease_token + 1,
               lease_expires_at = now() + p_lease,
               lease_interval = p_lease,
               worker = p_worker,
               claimed_at = now(),
               slot_held = false
         WHERE j.id = ANY (coalesce(v_plain, '{}'))
        RETURNING commitq._claimed_row(j) AS r
    )
    SELECT array_agg(claimed.r) INTO v_claimed FROM claimed;

    -- Jobs that need a slot of their key: lock their key rows (creating the
    -- missing ones) and keep the jobs whose rows we hold, so that
    -- _claim_keyed finds every key row and picks nothing more itself.
    IF v_slot_ids IS NOT NULL THEN
        SELECT array_agg(DISTINCT k) INTO v_missing FROM unnest(v_slot_keys) k
         WHERE NOT EXISTS (SELECT 1 FROM commitq.concurrency_keys c WHERE c.key = k);
        IF v_missing IS NOT NULL THEN
            PERFORM commitq._create_keys(v_missing);
        END IF;
        SELECT array_agg(h.key) INTO v_held
          FROM (SELECT c.key FROM commitq.concurrency_keys c
                 WHERE c.key = ANY (v_slot_keys)
                   FOR UPDATE SKIP LOCKED) h;
        SELECT array_agg(t.id ORDER BY t.o), array_agg(t.ck ORDER BY t.o) INTO v_slot_ids, v_slot_keys
          FROM unnest(v_slot_ids, v_slot_keys) WITH ORDINALITY AS t(id, ck, o)
         WHERE t.ck = ANY (coalesce(v_held, '{}'));
        IF v_slot_ids IS NOT NULL THEN
            v_claimed := coalesce(v_claimed, '{}') || coalesce(
                (SELECT array_agg(k) FROM commitq._claim_keyed(p_queue, p_worker, p_lease, v_slot_ids,
                                                               v_slot_keys, cardinality(v_slot_ids), false) k),
                '{}');
        END IF;
    END IF;

    -- Count what started in each window held.
    FOR i IN 1..cardinality(v_buckets) LOOP
        SELECT count(*) INTO v_n FROM unnest(v_claimed) c
         WHERE v_buckets[i] = 'queue:' || p_queue OR 'key:' || c.concurrency_key = v_buckets[i];
        IF v_n > 0 THEN
            PERFORM commitq._rate_record(v_buckets[i], v_pers[i], v_n);
        END IF;
    END LOOP;
    IF v_claimed IS NOT NULL THEN
        RETURN QUERY SELECT * FROM unnest(v_claimed);
    END IF;
END
$$;

-- What commitq.claim does with its waiting_workers entry at its end, for a
-- claim under flow control: a claim that found work clears it; one that
-- found nothing registers the worker if its session LISTENs on the queue.
CREATE FUNCTION commitq._note_waiting(p_queue text, p_worker text, p_got boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_got THEN
        DELETE FROM commitq.waiting_workers w WHERE w.queue = p_queue AND w.worker = p_worker;
    ELSIF 'commitq:' || p_queue IN (SELECT pg_listening_channels()) THEN
        INSERT INTO commitq.waiting_workers AS w (queue, worker) VALUES (p_queue, p_worker)
        ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
    END IF;
END
$$;

-- claim hands work to _claim_flow under flow control (sql/claim.sql).
-- Claim up to max_jobs due jobs of a queue, in priority, run_at, id order.
-- Each claimed job gets a lease until now() + lease and a lease token larger
-- than any earlier token of that job; pass both to complete/fail/heartbeat.
CREATE OR REPLACE FUNCTION commitq.claim(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes')
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Plan once per session: the default re-plans these statements on every
-- call for a while, which cost more than running them (measured: claim of 4
-- jobs 0.48 ms -> 0.30 ms).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_claimed commitq.claimed_job[];
    v_picked integer;
    v_keyed_ids bigint[];
    v_keyed_keys text[];
    v_got integer := 0;
    v_keyed integer;
    -- The session's claim floor (see below): until (microseconds since the
    -- epoch, clock time), queue, priority, run_at (microseconds), id.
    v_floor text[] := pg_catalog.string_to_array(pg_catalog.current_setting('commitq.claim_floor', true), '|');
    v_now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    v_until bigint;
    v_fp smallint := -32768;
    v_fr timestamptz := '-infinity';
    v_fi bigint := -9223372036854775807;
    v_first_p smallint;
    v_first_r timestamptz;
    v_first_i bigint;
    v_crossed bigint;
BEGIN
    PERFORM commitq._check(coalesce(
        commitq._queue_problem(claim.queue),
        commitq._worker_lease_problem(claim.worker, claim.lease),
        CASE WHEN claim.max_jobs IS NULL OR claim.max_jobs NOT BETWEEN 1 AND 10000
            THEN format('max_jobs %s out of range 1..10000', coalesce(claim.max_jobs::text, 'NULL'))
        END));

    -- Scheduled jobs that have come due become available. SKIP LOCKED: a row
    -- another claimer is promoting right now is theirs to promote.
    UPDATE commitq.jobs j
       SET state = 'available'
     WHERE j.id IN (SELECT s.id FROM commitq.jobs s
                     WHERE s.state = 'scheduled' AND s.run_at <= now() AND s.queue = claim.queue
                       AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                     ORDER BY s.run_at
                     LIMIT 1000
                       FOR UPDATE SKIP LOCKED);
    -- Others waiting on the queue may take what this claim leaves.
    IF FOUND THEN
        PERFORM commitq._wake(claim.queue);
    END IF;

    -- Under a rate limit of this queue or of keys (keys are global), or in
    -- a fair queue (flow_control.sql), the claim takes its own path; without
    -- any, this one lookup is all flow control costs.
    IF EXISTS (SELECT 1 FROM commitq.rate_limits l
                WHERE l.pattern = 'queue:' || claim.queue OR NOT starts_with(l.pattern, 'queue:'))
       OR EXISTS (SELECT 1 FROM commitq.fair_queues f WHERE f.queue = claim.queue) THEN
        RETURN QUERY SELECT * FROM commitq._claim_flow(claim.queue, claim.worker, claim.max_jobs, claim.lease);
        GET DIAGNOSTICS v_got = ROW_COUNT;
        PERFORM commitq._note_waiting(claim.queue, claim.worker, v_got > 0);
        RETURN;
    END IF;

    -- The claim floor. While a transaction older than the queue's recent
    -- claims stays open, vacuum may not remove the claim-index entries of
    -- claimed and finished jobs, and a pick from the start of the queue
    -- visits each of them and its heap row (measured with a transaction held
    -- open: a claim of 100 after 70,000 claims crossed 70,100 entries). A
    -- session whose full pick crossed more than 10,000 entries beyond those
    -- it returned starts its next picks of that queue at the first job that
    -- pick claimed, its floor, kept in the session setting
    -- commitq.claim_floor, for one second; then, or as soon as a pick from
    -- the floor comes back short (same call), it picks from the start again.
    -- A job that becomes available below a floor (a higher priority, an older
    -- run_at) is so claimed at most a second late, and only while vacuum is
    -- held back (a long transaction; also a long ANALYZE, for its duration):
    -- otherwise no floor is ever set and the order is exact. The
    -- setting affects only the session's own claims; one that does not parse
    -- or lies more than a second ahead is ignored.
    IF pg_catalog.array_to_string(v_floor, '|')
           ~ '^[0-9]{1,17}\|[a-z0-9_.-]+\|-?[0-9]{1,5}\|-?[0-9]{1,17}\|-?[0-9]{1,18}$'
       AND v_floor[2] = claim.queue
       AND v_floor[1]::bigint BETWEEN v_now_us AND v_now_us + 1000000
       AND v_floor[3]::integer BETWEEN -32768 AND 32767 THEN
        v_until := v_floor[1]::bigint;
        v_fp := v_floor[3]::smallint;
        v_fr := timestamptz 'epoch' + v_floor[4]::bigint * interval '1 microsecond';
        v_fi := v_floor[5]::bigint;
    END IF;

    FOR v_pass IN 1..2 LOOP
        v_crossed := pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass);
        -- One statement claims the jobs without a concurrency key among the
        -- next max_jobs in claim order. Keyed ones among them stay locked by us
        -- and go to _claim_keyed (concurrency_keys.sql), which also needs a slot of
        -- their key.
        WITH picked AS (
            -- A job handed its key's slot already holds it: it is claimed like
            -- a job without a key.
            SELECT c.id, CASE WHEN NOT c.slot_held THEN c.concurrency_key END AS ck,
                   c.priority, c.run_at FROM commitq.jobs c
             WHERE c.queue = claim.queue AND c.state = 'available'
               AND (c.priority, c.run_at, c.id) >= (v_fp, v_fr, v_fi)
               -- A paused queue hands out nothing (pause.sql). Tested in this
               -- statement, under the snapshot that picks the jobs.
               AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = claim.queue)
             ORDER BY c.priority, c.run_at, c.id
             LIMIT claim.max_jobs - coalesce(v_picked, 0)
               FOR UPDATE SKIP LOCKED
        ), claimed AS (
            -- The same SET list is written out in _claim_keyed and in
            -- _promote_blocked's take path (concurrency_keys.sql); a test
            -- (every_claim_path_writes_the_same_bookkeeping) checks they agree.
            UPDATE commitq.jobs j
               SET state = 'running',
                   attempt = j.attempt + 1,
                   lease_token = j.lease_token + 1,
                   lease_expires_at = now() + claim.lease,
                   lease_interval = claim.lease,
                   worker = claim.worker,
                   claimed_at = now(),
                   slot_held = false
             -- `= ANY (ARRAY(...))`: an index lookup in any plan, where a join
             -- could be planned as a scan of the whole table (the plan is made
             -- once, not knowing how many jobs a call wants).
             WHERE j.id = ANY (ARRAY(SELECT picked.id FROM picked WHERE picked.ck IS NULL))
            RETURNING commitq._claimed_row(j) AS r
        )
        SELECT v_claimed || (SELECT array_agg(claimed.r) FROM claimed),
               coalesce(v_picked, 0) + (SELECT count(*) FROM picked),
               v_keyed_ids || (SELECT array_agg(picked.id ORDER BY picked.priority, picked.run_at, picked.id)
                  FROM picked WHERE picked.ck IS NOT NULL),
               v_keyed_keys || (SELECT array_agg(picked.ck ORDER BY picked.priority, picked.run_at, picked.id)
                  FROM picked WHERE picked.ck IS NOT NULL),
               f.priority, f.run_at, f.id
          INTO v_claimed, v_picked, v_keyed_ids, v_keyed_keys, v_first_p, v_first_r, v_first_i
          FROM (SELECT 1) one
          LEFT JOIN LATERAL (SELECT picked.priority, picked.run_at, picked.id FROM picked
                              ORDER BY picked.priority, picked.run_at, picked.id LIMIT 1) f ON true;
        v_crossed := pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass) - v_crossed;

        IF v_until IS NULL THEN
            -- A full pick: set a floor when it crossed many entries it could
            -- not use (with track_counts off the count stays 0: no floor).
            IF v_crossed - v_picked > 10000 AND v_first_i IS NOT NULL THEN
                PERFORM pg_catalog.set_config('commitq.claim_floor', pg_catalog.format('%s|%s|%s|%s|%s',
                    v_now_us + 1000000, claim.queue, v_first_p,
                    (extract(epoch FROM v_first_r) * 1000000)::bigint, v_first_i), false);
            ELSIF v_floor IS NOT NULL AND v_floor <> '{}' THEN
                PERFORM pg_catalog.set_config('commitq.claim_floor', '', false);
            END IF;
            EXIT;
        ELSIF v_picked = claim.max_jobs THEN
            -- A floor pick that found max_jobs: the floor moves up to the
            -- first of them.
            PERFORM pg_catalog.set_config('commitq.claim_floor', pg_catalog.format('%s|%s|%s|%s|%s',
                v_until, claim.queue, v_first_p,
                (extract(epoch FROM v_first_r) * 1000000)::bigint, v_first_i), false);
            EXIT;
        END IF;
        -- A floor pick that came back short: jobs may wait below the floor.
        v_until := NULL;
        v_fp := -32768;
        v_fr := '-infinity';
        v_fi := -9223372036854775807;
    END LOOP;

    IF v_claimed IS NOT NULL THEN
        RETURN QUERY SELECT * FROM unnest(v_claimed);
        v_got := cardinality(v_claimed);
    END IF;
    IF v_keyed_ids IS NOT NULL THEN
        RETURN QUERY SELECT * FROM commitq._claim_keyed(
            claim.queue, claim.worker, claim.lease, v_keyed_ids, v_keyed_keys,
            -- room left in the batch, and whether the queue may hold more
            claim.max_jobs - v_got, v_picked = claim.max_jobs);
        GET DIAGNOSTICS v_keyed = ROW_COUNT;
        v_got := v_got + v_keyed;
    END IF;

    -- A claim that found nothing registers the worker as waiting, so that
    -- enqueues to this queue send it a NOTIFY, but only when this session
    -- LISTENs on the queue's channel: a polling worker, or one waiting in
    -- commitq.claim_wait, would make every producer pay a NOTIFY for
    -- nothing. (A worker that LISTENs on another connection calls
    -- commitq.start_waiting.) A claim that found work clears it.
    IF v_got > 0 THEN
        DELETE FROM commitq.waiting_workers w WHERE w.queue = claim.queue AND w.worker = claim.worker;
    ELSIF 'commitq:' || claim.queue IN (SELECT pg_listening_channels()) THEN
        INSERT INTO commitq.waiting_workers AS w (queue, worker) VALUES (claim.queue, claim.worker)
        ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
    END IF;
END
$$;

-- The take path leaves jobs under flow control to a claim (sql/concurrency_keys.sql).
-- Make up to p_counts[i] blocked jobs of key p_keys[i] available, in claim
-- order, each holding one of the key's free slots (slot_held, counted in
-- `running`), and wake their queues. Handing the slot over here, rather than
-- freeing it for whichever claimer comes first, means the promoted job is
-- claimed like a job without a key (no key row to lock or write) and cannot
-- lose its turn to a later job of the key, only to be parked again. The
-- caller holds the keys' row locks, and calls this in a statement of its own
-- after taking them, so that at READ COMMITTED it sees the jobs a claimer
-- parked while the caller waited for a lock.
--
-- With p_worker, a promoted job whose queue is p_take_queues[i] is claimed
-- for p_worker under a new lease of p_lease instead (see complete_and_take):
-- it goes straight from blocked to running, one write instead of two, and
-- comes back in `taken`. Returns how many jobs got a slot, taken ones
-- included.
CREATE OR REPLACE FUNCTION commitq._promote_blocked(
    p_keys text[], p_counts integer[],
    p_take_queues text[] DEFAULT NULL, p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL,
    OUT promoted integer, OUT taken commitq.claimed_job[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queues text[];
BEGIN
    WITH next AS (
        -- A job of a paused queue (pause.sql) is made available, not taken;
        -- so is one under flow control (a rate limit of its queue or of
        -- keys, or a fair queue: flow_control.sql), for a claim to hand out
        -- under the rules.
        SELECT b.id, p_worker IS NOT NULL AND b.queue = f.take_queue
                     AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = b.queue)
                     AND NOT EXISTS (SELECT 1 FROM commitq.rate_limits l
                                      WHERE l.pattern = 'queue:' || b.queue
                                         OR NOT starts_with(l.pattern, 'queue:'))
                     AND NOT EXISTS (SELECT 1 FROM commitq.fair_queues fq WHERE fq.queue = b.queue) AS take
          FROM unnest(p_keys, p_counts, p_take_queues) AS f(key, n, take_queue)
          CROSS JOIN LATERAL (
                SELECT x.id, x.queue FROM commitq.jobs x
                 WHERE x.concurrency_key = f.key AND x.state = 'blocked'
                 ORDER BY x.priority, x.run_at, x.id
                 LIMIT greatest(f.n, 0)) b
    ), handed AS (
        -- A blocked job an operator is cancelling right now is waited for,
        -- and skipped if it is gone. The state test is a CASE so that the
        -- plan looks the jobs up by primary key, never by a scan of
        -- jobs_blocked_idx (see _locked_lease).
        UPDATE commitq.jobs j SET state = 'available', slot_held = true
         WHERE j.id = ANY (ARRAY(SELECT next.id FROM next WHERE NOT next.take))
           AND CASE WHEN j.state = 'blocked' THEN true END
        RETURNING j.queue, j.concurrency_key
    ), claimed AS (
        -- The same claim as commitq.claim's, for the jobs taken.
        UPDATE commitq.jobs j
           SET state = 'running',
               attempt = j.attempt + 1,
               lease_token = j.lease_token + 1,
               lease_expires_at = now() + p_lease,
               lease_interval = p_lease,
               worker = p_worker,
               claimed_at = now(),
               slot_held = false
         WHERE j.id = ANY (ARRAY(SELECT next.id FROM next WHERE next.take))
           AND CASE WHEN j.state = 'blocked' THEN true END
        RETURNING j.concurrency_key, commitq._claimed_row(j) AS r
    ), per_key AS (
        SELECT s.key, count(*) AS n
          FROM (SELECT handed.concurrency_key AS key FROM handed
                UNION ALL
                SELECT claimed.concurrency_key FROM claimed) s
         GROUP BY s.key
    ), counted AS (
        UPDATE commitq.concurrency_keys c
           SET blocked = c.blocked - per_key.n,
               running = c.running + per_key.n
          FROM per_key
         WHERE c.key = ANY (ARRAY(SELECT per_key.key FROM per_key))
           AND c.key = per_key.key
    )
    SELECT (SELECT array_agg(DISTINCT handed.queue) FROM handed),
           (SELECT count(*) FROM handed) + (SELECT count(*) FROM claimed),
           (SELECT array_agg(claimed.r ORDER BY (claimed.r).priority, (claimed.r).run_at, (claimed.r).job_id)
              FROM claimed)
      INTO v_queues, promoted, taken;
    IF v_queues IS NOT NULL THEN
        PERFORM commitq._wake(q) FROM unnest(v_queues) q;
    END IF;
END
$$;

-- The operator and reader rows of flow control (sql/security.sql).
-- What each role may do, listed once: the GRANTs below give it to the
-- cluster roles at install, and commitq.grant_producer and friends give it
-- to a role inside one database. commitq_operator is also a member of the
-- other two, so its rows are only what it adds to them.
CREATE OR REPLACE FUNCTION commitq._role_privileges()
RETURNS TABLE (kind text, privilege text, object text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.kind, v.privilege, v.object FROM (VALUES
        ('producer', 'USAGE', 'SCHEMA commitq'),
        ('producer', 'USAGE', 'TYPE commitq.job_state'),
        ('producer', 'USAGE', 'TYPE commitq.claimed_job'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[])'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(jsonb)'),
        -- Named leases are for application code and workers alike.
        ('producer', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('worker', 'USAGE', 'SCHEMA commitq'),
        ('worker', 'USAGE', 'TYPE commitq.job_state'),
        ('worker', 'USAGE', 'TYPE commitq.claimed_job'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.claim(text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_many(bigint[], bigint[])'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_claim(bigint[], bigint[], text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_take(bigint[], bigint[], text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.stop_waiting(text, text)'),
        -- The waiting claim (sql/claim_wait.sql, sql/wakeup.sql).
        ('worker', 'EXECUTE', 'PROCEDURE commitq.claim_wait(text, text, integer, interval, interval, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.start_waiting(text, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.wait_supported()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.fail(bigint, bigint, text, interval, boolean)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.heartbeat(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.snooze(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_lease(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_begin(bigint, bigint, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_done(bigint, bigint, text, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.maintain()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('operator', 'USAGE', 'SCHEMA commitq'),
        ('operator', 'USAGE', 'TYPE commitq.job_state'),
        ('operator', 'USAGE', 'TYPE commitq.claimed_job'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.cancel(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.retry(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_concurrency_limit(text, integer)'),
        -- Cron schedules (sql/schedule.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.schedule(text, text, text, text, jsonb, text, integer, integer, text, interval, boolean, boolean)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.unschedule(text)'),
        -- Pausing queues (sql/pause.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.pause(text)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.resume(text)'),
        -- Rate limits and fair queues (sql/flow_control.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_rate_limit(text, integer, interval)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_fairness(text, text)'),
        -- The engine's state (sql/engine.sql): the view calls the function
        -- with the reader's privileges.
        ('operator', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        ('operator', 'SELECT', 'TABLE commitq.engine_status'),
        -- Operators read every table and change only the settings.
        ('operator', 'SELECT', 'ALL TABLES IN SCHEMA commitq'),
        ('operator', 'UPDATE', 'TABLE commitq.config'),
        -- Dashboards and exporters: the views and nothing else. The view
        -- engine_status calls _engine_status with the reader's privileges.
        -- (A revoke finds the kinds a role still holds by their functions:
        -- _engine_status is the reader's.)
        ('reader', 'USAGE', 'SCHEMA commitq'),
        ('reader', 'USAGE', 'TYPE commitq.job_state'),
        ('reader', 'SELECT', 'TABLE commitq.queue_stats'),
        ('reader', 'SELECT', 'TABLE commitq.throughput'),
        ('reader', 'SELECT', 'TABLE commitq.job_list'),
        ('reader', 'SELECT', 'TABLE commitq.concurrency_key_stats'),
        ('reader', 'SELECT', 'TABLE commitq.named_lease_holders'),
        ('reader', 'SELECT', 'TABLE commitq.schedules'),
        ('reader', 'SELECT', 'TABLE commitq.engine_status'),
        ('reader', 'SELECT', 'TABLE commitq.flow_control'),
        ('reader', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        -- queue_stats calls it as its reader, like engine_status.
        ('reader', 'EXECUTE', 'FUNCTION commitq._available_by_queue()'),
        ('operator', 'EXECUTE', 'FUNCTION commitq._available_by_queue()')
    ) v(kind, privilege, object)
$$;

REVOKE ALL ON TABLE commitq.rate_limits, commitq.rate_windows, commitq.fair_queues, commitq.flow_control FROM PUBLIC;
REVOKE ALL ON TYPE commitq.rate_limits, commitq.rate_windows, commitq.fair_queues, commitq.flow_control FROM PUBLIC;
REVOKE ALL ON FUNCTION commitq._rate_lock_space(), commitq._rate_room(text, integer, interval),
    commitq._rate_record(text, interval, integer), commitq._key_rate_limit(text),
    commitq.set_rate_limit(text, integer, interval), commitq.set_fairness(text, text),
    commitq._fair_pick(text, text, integer), commitq._fair_keys(text, text, text, boolean, integer),
    commitq._claim_flow(text, text, integer, interval), commitq._note_waiting(text, text, boolean),
    commitq._flow_retry_in(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION commitq.set_rate_limit(text, integer, interval), commitq.set_fairness(text, text)
    TO commitq_operator;
GRANT SELECT ON TABLE commitq.rate_limits, commitq.rate_windows, commitq.fair_queues, commitq.flow_control
    TO commitq_operator;
GRANT SELECT ON TABLE commitq.flow_control TO commitq_reader;

-- ===== 0.2.0: dependencies and results, replace and debounce (sql/dependencies.sql, sql/replace.sql, sql/enqueue.sql, sql/finish.sql, sql/claim.sql, sql/maintain.sql, sql/schema.sql) =====
-- The new state, columns and claimed_job attribute go last, where a fresh
-- install (sql/schema.sql, sql/claim.sql) also puts them. The new value of
-- job_state cannot be used in this transaction: nothing below names it
-- outside a PL/pgSQL body.
ALTER TYPE commitq.job_state ADD VALUE 'waiting';
ALTER TABLE commitq.jobs
    ADD COLUMN depends_on bigint[],
    ADD COLUMN deps_pending integer NOT NULL DEFAULT 0,
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;
ALTER TYPE commitq.claimed_job ADD ATTRIBUTE dependency_results jsonb;

-- sql/dependencies.sql as it is:
-- Dependencies and results: enqueue(..., depends_on => ARRAY[...]) makes a
-- job wait, in state 'waiting', until every job it depends on has completed;
-- complete(job_id, lease_token, result) keeps a result that its dependents
-- read when they are claimed (claimed_job.dependency_results).
--
-- How it holds under concurrency:
--   * the dependent's row counts the dependencies it still waits for
--     (jobs.deps_pending), and only an UPDATE of that row changes the count:
--     two dependencies completing at once in two transactions both decrement
--     it (the second waits for the first's row lock and reads its result),
--     so a fan-in job leaves 'waiting' exactly once, after the last one.
--   * an enqueue locks the live dependencies' rows (FOR NO KEY UPDATE) and
--     sets their has_dependents flag. A completion deletes or moves the row,
--     which waits for that lock: the completion then sees the flag and, in
--     its next statement, the new dependent's edge. An enqueue that comes
--     second finds the row gone: a job it saw live a moment before and that
--     is not in finished_jobs was completed (completion is the only path
--     that deletes a live job without moving it), so it counts as done.
--   * a dependency that is discarded or cancelled cancels its waiting
--     dependents, level by level (transitively), each with "dependency N was
--     discarded/cancelled" in its error history.

CREATE TABLE commitq.job_dependencies (
    depends_on   bigint NOT NULL,   -- a live job
    job_id       bigint NOT NULL,   -- waits for it
    -- The dependent runs whatever the outcome (a follow-up of replace or
    -- debounce behind a running job, sql/replace.sql); otherwise a discard
    -- or cancel of depends_on cancels job_id.
    any_outcome  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (depends_on, job_id)
);

-- Results of completed jobs (complete(..., result)), kept for the longer of
-- commitq.config.idempotency_window and finished_retention whether or not
-- completed jobs are kept: a dependent enqueued later still counts the job
-- as completed and reads its result.
CREATE TABLE commitq.job_results (
    job_id        bigint PRIMARY KEY,
    result        jsonb NOT NULL,
    completed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_results_completed_at_idx ON commitq.job_results (completed_at);

SELECT pg_catalog.pg_extension_config_dump('commitq.job_dependencies', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.job_results', '');

-- What is wrong with enqueue's depends_on and on_duplicate, or NULL.
CREATE FUNCTION commitq._dependency_problem(p_depends_on bigint[], p_on_duplicate text, p_idempotency_key text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN CASE
        WHEN pg_catalog.array_position(p_depends_on, NULL) IS NOT NULL
            THEN 'depends_on must not contain NULL'
        WHEN pg_catalog.cardinality(p_depends_on) > 10000
            THEN pg_catalog.format('depends_on has %s jobs, limit is 10000', pg_catalog.cardinality(p_depends_on))
        WHEN p_on_duplicate NOT IN ('return', 'replace', 'debounce')
            THEN pg_catalog.format('on_duplicate must be return, replace or debounce, not %s',
                                   pg_catalog.quote_literal(p_on_duplicate))
        WHEN p_on_duplicate IN ('replace', 'debounce') AND p_idempotency_key IS NULL
            THEN 'on_duplicate ' || p_on_duplicate || ' needs an idempotency_key'
        END;
END
$$;

-- A job's result: any JSON value no larger than args may be.
CREATE FUNCTION commitq._result_problem(p_result jsonb) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max integer := commitq._max_args_bytes();
BEGIN
    IF pg_catalog.pg_column_size(p_result) > v_max THEN
        RETURN pg_catalog.format('result too large: %s bytes, limit is %s (setting commitq.max_args_bytes)',
                                 pg_catalog.pg_column_size(p_result), v_max);
    END IF;
    RETURN NULL;
END
$$;

-- The results of a claimed job's dependencies: {"<job id>": result, ...},
-- null for a dependency completed without one. Called by _claimed_row only
-- for jobs enqueued with depends_on.
CREATE FUNCTION commitq._dependency_results(p_depends_on bigint[]) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT pg_catalog.jsonb_object_agg(d.id::text, r.result ORDER BY d.ord)
              FROM unnest(p_depends_on) WITH ORDINALITY AS d(id, ord)
              LEFT JOIN commitq.job_results r ON r.job_id = d.id);
END
$$;

-- The dependencies of a job being enqueued (deduplicated): lock the live
-- ones and flag them, and sort the others out. `live` are the ones to wait
-- for; `failed` names the first dependency that was discarded or cancelled
-- (then the new job is cancelled at once), except p_any_outcome, which
-- counts as done whatever its outcome. An id that is neither live nor
-- remembered as finished raises CQ101.
CREATE FUNCTION commitq._resolve_dependencies(
    p_deps bigint[], p_any_outcome bigint, OUT live bigint[], OUT failed text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seen bigint[];
    v_state commitq.job_state;
    d bigint;
BEGIN
    -- Live in this statement's snapshot...
    v_seen := ARRAY(SELECT j.id FROM commitq.jobs j WHERE j.id = ANY (p_deps));
    -- ...and still live once locked (in id order, so two enqueues cannot
    -- deadlock): a job that a transaction is finishing right now is waited
    -- for, and is gone if that transaction commits.
    live := ARRAY(SELECT j.id FROM commitq.jobs j WHERE j.id = ANY (v_seen)
                   ORDER BY j.id FOR NO KEY UPDATE);
    UPDATE commitq.jobs j SET has_dependents = true WHERE j.id = ANY (live) AND NOT j.has_dependents;

    FOR d IN SELECT x FROM unnest(p_deps) x WHERE x <> ALL (live) ORDER BY x LOOP
        SELECT f.state INTO v_state FROM commitq.finished_jobs f WHERE f.id = d;
        IF FOUND THEN
            IF v_state <> 'completed' AND d IS DISTINCT FROM p_any_outcome AND failed IS NULL THEN
                failed := pg_catalog.format('dependency %s was %s', d, v_state);
            END IF;
        ELSIF d = ANY (v_seen) THEN
            -- Completed (and deleted) while we looked: see the top of the file.
            NULL;
        ELSIF NOT EXISTS (SELECT 1 FROM commitq.job_results r WHERE r.job_id = d) THEN
            RAISE EXCEPTION 'commitq: dependency % not found', d
                USING ERRCODE = 'CQ101',
                      HINT = 'No such job, or it completed without a result while commitq.config.keep_completed '
                             'was off, so nothing remembers it: see depends_on in docs/features.md.';
        END IF;
    END LOOP;
END
$$;

-- Count `p_counts[i]` more completed dependencies of waiting job
-- `p_ids[i]`; a job that has none left becomes available (or scheduled, for
-- a later run_at or an after_xact gate) and its queue is woken.
CREATE FUNCTION commitq._dependencies_done(p_ids bigint[], p_counts bigint[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queues text[];
BEGIN
    -- Locked in id order first: two completions releasing overlapping
    -- dependents cannot deadlock.
    PERFORM 1 FROM commitq.jobs j WHERE j.id = ANY (p_ids) ORDER BY j.id FOR NO KEY UPDATE;
    WITH u AS (
        UPDATE commitq.jobs j
           SET deps_pending = j.deps_pending - c.n,
               state = CASE WHEN j.deps_pending - c.n > 0 THEN 'waiting'
                            WHEN j.run_at > now() OR j.after_xact IS NOT NULL THEN 'scheduled'
                            ELSE 'available' END::commitq.job_state
          FROM (SELECT t.id, sum(t.n) AS n FROM unnest(p_ids, p_counts) AS t(id, n) GROUP BY t.id) c
         WHERE j.id = ANY (p_ids) AND j.id = c.id AND j.state = 'waiting'
        RETURNING j.queue, j.state
    )
    SELECT array_agg(DISTINCT u.queue) INTO v_queues FROM u WHERE u.state = 'available';
    PERFORM commitq._wake(q) FROM unnest(v_queues) q;
END
$$;

-- Jobs p_done completed and had dependents: count them done for each.
CREATE FUNCTION commitq._release_dependents(p_done bigint[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_counts bigint[];
BEGIN
    -- A statement of its own, after the caller's delete: at READ COMMITTED
    -- it sees the edges of an enqueue that the delete waited for.
    WITH e AS (
        DELETE FROM commitq.job_dependencies d WHERE d.depends_on = ANY (p_done) RETURNING d.job_id
    )
    SELECT array_agg(g.job_id), array_agg(g.n) INTO v_ids, v_counts
      FROM (SELECT e.job_id, count(*) AS n FROM e GROUP BY e.job_id) g;
    IF v_ids IS NOT NULL THEN
        PERFORM commitq._dependencies_done(v_ids, v_counts);
    END IF;
END
$$;

-- Jobs p_ids were discarded or cancelled (p_state) and had dependents:
-- cancel the waiting ones, then theirs, level by level (a loop, not
-- recursion, so a long chain cannot exhaust the stack). Dependents that
-- run whatever the outcome (any_outcome) count the dependency as done.
CREATE FUNCTION commitq._cancel_dependents(p_ids bigint[], p_state commitq.job_state) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_frontier bigint[] := p_ids;
    v_state commitq.job_state := p_state;
    v_cancel bigint[];
    v_reason text[];
    v_next bigint[];
    v_done_ids bigint[];
    v_done_counts bigint[];
BEGIN
    WHILE v_frontier IS NOT NULL AND v_frontier <> '{}' LOOP
        WITH e AS (
            DELETE FROM commitq.job_dependencies d WHERE d.depends_on = ANY (v_frontier)
            RETURNING d.depends_on, d.job_id, d.any_outcome
        )
        SELECT (SELECT array_agg(e.job_id ORDER BY e.job_id) FROM e WHERE NOT e.any_outcome),
               (SELECT array_agg(pg_catalog.format('dependency %s was %s', e.depends_on, v_state) ORDER BY e.job_id)
                  FROM e WHERE NOT e.any_outcome),
               (SELECT array_agg(g.job_id) FROM (SELECT e.job_id FROM e WHERE e.any_outcome GROUP BY e.job_id) g),
               (SELECT array_agg(g.n) FROM (SELECT count(*) AS n, e.job_id FROM e WHERE e.any_outcome
                                             GROUP BY e.job_id) g)
          INTO v_cancel, v_reason, v_done_ids, v_done_counts;
        IF v_done_ids IS NOT NULL THEN
            PERFORM commitq._dependencies_done(v_done_ids, v_done_counts);
        END IF;
        EXIT WHEN v_cancel IS NULL;

        -- Waiting dependents only (a job depending on two failed ones is
        -- named twice: its first reason is kept). Their own dependents are
        -- the next level; clearing the flag keeps _move_to_finished from
        -- starting a cascade of its own.
        v_next := ARRAY(SELECT j.id FROM commitq.jobs j
                         WHERE j.id = ANY (v_cancel) AND j.state = 'waiting' AND j.has_dependents
                         ORDER BY j.id FOR NO KEY UPDATE);
        UPDATE commitq.jobs j
           SET errors = commitq._push_error(j.errors, j.attempt, NULL, r.reason),
               has_dependents = false
          FROM (SELECT DISTINCT ON (t.id) t.id, t.reason FROM unnest(v_cancel, v_reason) AS t(id, reason)
                 ORDER BY t.id) r
         WHERE j.id = ANY (v_cancel) AND j.id = r.id AND j.state = 'waiting';
        PERFORM commitq._move_to_finished(
            ARRAY(SELECT j.id FROM commitq.jobs j WHERE j.id = ANY (v_cancel) AND j.state = 'waiting'),
            'cancelled');
        v_frontier := v_next;
        v_state := 'cancelled';
    END LOOP;
END
$$;

-- Finish a job successfully, as complete(job_id, lease_token) does, and keep
-- `result` (any JSON value up to commitq.max_args_bytes; NULL: none) for
-- the jobs that depend on it: they read it in dependency_results when
-- claimed. A new overload, so that two-argument calls stay as they are.
CREATE FUNCTION commitq.complete(job_id bigint, lease_token bigint, result jsonb)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._check(coalesce(
        CASE WHEN complete.job_id IS NULL THEN 'job_id must not be NULL'
             WHEN complete.lease_token IS NULL THEN 'lease_token must not be NULL' END,
        commitq._result_problem(complete.result)));
    IF cardinality((commitq._complete_leased(ARRAY[complete.job_id], ARRAY[complete.lease_token])).done) = 0 THEN
        PERFORM commitq._lease_error(complete.job_id, complete.lease_token);
    END IF;
    IF complete.result IS NOT NULL THEN
        INSERT INTO commitq.job_results AS r (job_id, result) VALUES (complete.job_id, complete.result)
        ON CONFLICT ON CONSTRAINT job_results_pkey
        DO UPDATE SET result = excluded.result, completed_at = excluded.completed_at;
    END IF;
END
$$;

-- maintain()'s part: forget results past the longer of the idempotency
-- window and finished_retention. Returns how many.
CREATE FUNCTION commitq._prune_results(p_batch integer) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n bigint;
BEGIN
    WITH gone AS (
        DELETE FROM commitq.job_results r
         WHERE r.job_id = ANY (ARRAY(SELECT o.job_id FROM commitq.job_results o, commitq.config c
                                      WHERE o.completed_at < now() - greatest(c.idempotency_window, c.finished_retention)
                                      ORDER BY o.completed_at
                                      LIMIT p_batch
                                        FOR UPDATE OF o SKIP LOCKED))
        RETURNING 1
    )
    SELECT count(*) INTO v_n FROM gone;
    RETURN v_n;
END
$$;

-- sql/replace.sql as it is:
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

-- enqueue, _enqueue_keyed, _enqueue_arrays and the arrays form of
-- enqueue_many gain trailing arguments: dropped and created again (a second
-- overload would make every existing call ambiguous). Nothing depends on
-- them but their grants, given again below, and the per-database grants of
-- commitq.grant_producer, carried over here.
SELECT pg_catalog.set_config('commitq.upgrade_enqueue_grants', coalesce(pg_catalog.string_agg(
           pg_catalog.format('%s=%s', p.proname, pg_catalog.quote_ident(a.grantee::regrole::text)), ','), ''), true)
  FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
 WHERE p.pronamespace = 'commitq'::regnamespace AND p.proname IN ('enqueue', 'enqueue_many')
   AND p.pronargs > 1 AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0
   AND a.grantee <> p.proowner
   AND a.grantee::regrole::text NOT IN ('commitq_producer', 'commitq_worker', 'commitq_operator', 'commitq_reader');
DROP FUNCTION commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8);
DROP FUNCTION commitq._enqueue_keyed(text, text, jsonb, integer, timestamptz, integer, text, text, xid8);
DROP FUNCTION commitq._enqueue_arrays(text[], text[], jsonb[], integer[], timestamptz[], integer[], text[], text[]);
DROP FUNCTION commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[]);

-- Insert one job. With an idempotency key that already names a job of this
-- queue (live, or enqueued within commitq.config.idempotency_window), insert
-- nothing and return that job with inserted = false, or with on_duplicate
-- 'replace' or 'debounce' update it while it waits (replace.sql). With
-- after_xact (a pg_current_xact_id() of another connection's transaction)
-- the job waits until that transaction commits, and is cancelled if it
-- aborts. With depends_on it waits until those jobs have completed
-- (dependencies.sql).
--
-- In C (extension/src/enqueue.rs): it is the hot path of every producer. A
-- job without an idempotency key, after_xact, depends_on or on_duplicate is
-- checked and inserted there by one prepared statement; the others go to
-- commitq._enqueue_keyed below.
-- It has no SET search_path because it resolves nothing on the path: its
-- statements schema-qualify every name, operators included (see enqueue.rs).
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
LANGUAGE c VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'commitq_enqueue';

-- commitq.enqueue of a job with an idempotency key, after_xact, depends_on
-- or on_duplicate; called by it (and by enqueue_many) as the extension's
-- owner, so not granted. The callers have checked the job's other fields.
CREATE FUNCTION commitq._enqueue_keyed(
    queue text,
    kind text,
    args jsonb,
    priority integer,
    run_at timestamptz,
    max_attempts integer,
    idempotency_key text,
    concurrency_key text,
    after_xact xid8,
    depends_on bigint[],
    on_duplicate text,
    OUT job_id bigint,
    OUT inserted boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_run_at timestamptz := coalesce(_enqueue_keyed.run_at, now());
    v_window interval;
    v_wake boolean;
    v_gated boolean := false;
    v_deps bigint[];
    v_after bigint;
    v_live bigint[];
    v_failed text;
    v_action text;
    v_state commitq.job_state;
BEGIN
    PERFORM commitq._check(commitq._dependency_problem(
        _enqueue_keyed.depends_on, _enqueue_keyed.on_duplicate, _enqueue_keyed.idempotency_key));
    IF _enqueue_keyed.after_xact IS NOT NULL THEN
        -- Raises for a transaction id from the future; a gated job waits in
        -- 'scheduled' until claim or maintain sees its transaction commit.
        PERFORM pg_xact_status(_enqueue_keyed.after_xact);
        v_gated := true;
    END IF;

    _enqueue_keyed.inserted := true;
    IF _enqueue_keyed.idempotency_key IS NOT NULL THEN
        SELECT c.idempotency_window INTO v_window FROM commitq.config c;
        _enqueue_keyed.job_id := nextval('commitq.job_id_seq');
        LOOP
            -- The primary key of idempotency_keys decides. A concurrent enqueue
            -- of the same key waits here until the other transaction commits
            -- (we return its job) or rolls back (we insert). A key whose job has
            -- finished and whose window has passed is taken over. When the key
            -- is taken, the row stays locked by us (ON CONFLICT locks it even
            -- when its WHERE is false): replace and debounce rely on that.
            INSERT INTO commitq.idempotency_keys AS k (queue, key, job_id)
            VALUES (_enqueue_keyed.queue, _enqueue_keyed.idempotency_key, _enqueue_keyed.job_id)
            ON CONFLICT (queue, key) DO UPDATE
               SET job_id = excluded.job_id, created_at = excluded.created_at
             WHERE k.created_at < now() - v_window
               AND NOT EXISTS (SELECT 1 FROM commitq.jobs j WHERE j.id = k.job_id);
            EXIT WHEN FOUND;

            SELECT k.job_id INTO v_after
              FROM commitq.idempotency_keys k
             WHERE k.queue = _enqueue_keyed.queue AND k.key = _enqueue_keyed.idempotency_key;
            IF FOUND THEN
                IF coalesce(_enqueue_keyed.on_duplicate, 'return') = 'return' THEN
                    _enqueue_keyed.job_id := v_after;
                    _enqueue_keyed.inserted := false;
                    RETURN;
                END IF;
                v_action := commitq._enqueue_replace(v_after, _enqueue_keyed.args, _enqueue_keyed.priority,
                                                     _enqueue_keyed.run_at, _enqueue_keyed.max_attempts,
                                                     _enqueue_keyed.on_duplicate);
                IF v_action = 'updated' THEN
                    _enqueue_keyed.job_id := v_after;
                    _enqueue_keyed.inserted := false;
                    RETURN;
                END IF;
                -- Running ('after': the new job follows it) or finished
                -- ('new'): a new job takes over the key.
                IF v_action = 'new' THEN
                    v_after := NULL;
                END IF;
                UPDATE commitq.idempotency_keys k SET job_id = _enqueue_keyed.job_id, created_at = now()
                 WHERE k.queue = _enqueue_keyed.queue AND k.key = _enqueue_keyed.idempotency_key;
                EXIT;
            END IF;
            -- maintain() pruned the key between the two statements: go again.
        END LOOP;
    END IF;

    -- Dependencies (dependencies.sql): the follow-up of a running job
    -- waits for it whatever its outcome.
    v_deps := ARRAY(SELECT DISTINCT d FROM unnest(_enqueue_keyed.depends_on) d
                    UNION SELECT v_after WHERE v_after IS NOT NULL ORDER BY 1);
    IF v_deps <> '{}' THEN
        SELECT r.live, r.failed INTO v_live, v_failed FROM commitq._resolve_dependencies(v_deps, v_after) r;
    END IF;
    v_state := CASE WHEN cardinality(v_live) > 0 AND v_failed IS NULL THEN 'waiting'
                    WHEN v_run_at > now() OR v_gated THEN 'scheduled'
                    ELSE 'available' END;

    -- The insert also tells whether a worker waits for this queue (one
    -- statement, as in enqueue.rs).
    INSERT INTO commitq.jobs AS j (id, queue, kind, args, state, priority, run_at, max_attempts,
                                   idempotency_key, concurrency_key, after_xact, depends_on, deps_pending)
    VALUES (coalesce(_enqueue_keyed.job_id, nextval('commitq.job_id_seq')),
            _enqueue_keyed.queue, _enqueue_keyed.kind, _enqueue_keyed.args,
            v_state, _enqueue_keyed.priority, v_run_at, _enqueue_keyed.max_attempts,
            _enqueue_keyed.idempotency_key, _enqueue_keyed.concurrency_key, _enqueue_keyed.after_xact,
            nullif(_enqueue_keyed.depends_on, '{}'), coalesce(cardinality(v_live), 0))
    RETURNING j.id,
              v_state = 'available'
              AND EXISTS (SELECT 1 FROM commitq.waiting_workers w WHERE w.queue = _enqueue_keyed.queue)
         INTO _enqueue_keyed.job_id, v_wake;

    IF v_failed IS NOT NULL THEN
        -- A dependency was discarded or cancelled before this job came:
        -- it is cancelled at once, as it would have been after.
        UPDATE commitq.jobs j SET errors = commitq._push_error(j.errors, 0, NULL, v_failed)
         WHERE j.id = _enqueue_keyed.job_id;
        PERFORM commitq._move_to_finished(ARRAY[_enqueue_keyed.job_id], 'cancelled');
        RETURN;
    END IF;
    IF v_state = 'waiting' THEN
        INSERT INTO commitq.job_dependencies (depends_on, job_id, any_outcome)
        SELECT d, _enqueue_keyed.job_id, d IS NOT DISTINCT FROM v_after FROM unnest(v_live) d;
    END IF;

    -- What commitq._wake does, inlined: v_wake already says a worker waits.
    IF v_wake THEN
        PERFORM pg_notify('commitq:' || _enqueue_keyed.queue, '');
    END IF;
    IF v_state = 'available' THEN
        PERFORM commitq._wake_at_commit(_enqueue_keyed.queue);
    END IF;
END
$$;

-- Insert many jobs given as parallel arrays (one element per job), in one
-- statement for the jobs without an idempotency key, dependencies or
-- on_duplicate. p_depends holds each job's depends_on as a JSON array of
-- ids (NULL: none). Returns one row per job, in input order.
CREATE FUNCTION commitq._enqueue_arrays(
    p_queues text[], p_kinds text[], p_args jsonb[], p_priorities integer[],
    p_run_ats timestamptz[], p_max_attempts integer[], p_ikeys text[], p_ckeys text[],
    p_depends jsonb[], p_on_dups text[])
RETURNS TABLE (job_id bigint, inserted boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ords bigint[];
    v_ids bigint[];
    v_inserted boolean[];
    r record;
    e record;
BEGIN
    -- Validate every job before writing any, so a bad one changes nothing.
    PERFORM commitq._batch_job_ok(t.ord, t.q, t.k, t.a, t.p, coalesce(t.r, now()), t.m, t.ik, t.ck)
       FROM unnest(p_queues, p_kinds, p_args, p_priorities, p_run_ats, p_max_attempts, p_ikeys, p_ckeys)
            WITH ORDINALITY AS t(q, k, a, p, r, m, ik, ck, ord);

    -- Jobs without an idempotency key (or dependencies, or on_duplicate):
    -- one INSERT.
    WITH input AS MATERIALIZED (
        SELECT nextval('commitq.job_id_seq') AS id, t.*
          FROM unnest(p_queues, p_kinds, p_args, p_priorities, p_run_ats, p_max_attempts, p_ckeys, p_ikeys,
                      p_depends, p_on_dups)
               WITH ORDINALITY AS t(q, k, a, p, r, m, ck, ik, dep, od, ord)
         WHERE t.ik IS NULL AND t.dep IS NULL AND t.od IS NULL
    ), ins AS (
        INSERT INTO commitq.jobs (id, queue, kind, args, state, priority, run_at, max_attempts,
                                  concurrency_key)
        SELECT i.id, i.q, i.k, i.a,
               CASE WHEN coalesce(i.r, now()) > now() THEN 'scheduled' ELSE 'available' END::commitq.job_state,
               i.p, coalesce(i.r, now()), i.m, i.ck
          FROM input i
         ORDER BY i.ord
    )
    SELECT coalesce(array_agg(i.ord ORDER BY i.ord), '{}'),
           coalesce(array_agg(i.id ORDER BY i.ord), '{}'),
           coalesce(array_agg(true ORDER BY i.ord), '{}')
      INTO v_ords, v_ids, v_inserted
      FROM input i;

    PERFORM commitq._wake(q)
       FROM (SELECT DISTINCT t.q
               FROM unnest(p_queues, p_run_ats, p_ikeys, p_depends, p_on_dups) AS t(q, r, ik, dep, od)
              WHERE t.ik IS NULL AND t.dep IS NULL AND t.od IS NULL AND coalesce(t.r, now()) <= now()) s;

    -- Jobs with an idempotency key, dependencies or on_duplicate: each goes
    -- the way of a single enqueue, in input order (so a key repeated in the
    -- batch dedups, and a job may depend on an earlier one's id).
    IF p_ikeys IS NOT NULL OR p_depends IS NOT NULL OR p_on_dups IS NOT NULL THEN
        FOR r IN
            SELECT t.*
              FROM unnest(p_queues, p_kinds, p_args, p_priorities, p_run_ats, p_max_attempts, p_ikeys, p_ckeys,
                          p_depends, p_on_dups)
                   WITH ORDINALITY AS t(q, k, a, p, r, m, ik, ck, dep, od, ord)
             WHERE t.ik IS NOT NULL OR t.dep IS NOT NULL OR t.od IS NOT NULL
             ORDER BY t.ord
        LOOP
            SELECT * INTO e FROM commitq._enqueue_keyed(r.q, r.k, r.a, r.p, r.r, r.m, r.ik, r.ck, NULL,
                                                        commitq._depends_from_json(r.ord, r.dep), r.od);
            v_ords := v_ords || r.ord;
            v_ids := v_ids || e.job_id;
            v_inserted := v_inserted || e.inserted;
        END LOOP;
    END IF;

    RETURN QUERY
        SELECT t.id, t.ins FROM unnest(v_ords, v_ids, v_inserted) AS t(ord, id, ins) ORDER BY t.ord;
END
$$;

-- Insert many jobs of one queue and kind: args[i] is job i's args; the keys
-- arrays, when given, hold job i's keys (NULL elements for none). Returns
-- (job_id, inserted) per job, in input order. Without idempotency keys it is
-- one INSERT ... SELECT, the fastest way into the queue.
CREATE FUNCTION commitq.enqueue_many(
    queue text,
    kind text,
    args jsonb[],
    priority integer DEFAULT 0,
    run_at timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT 25,
    idempotency_keys text[] DEFAULT NULL,
    concurrency_keys text[] DEFAULT NULL,
    depends_on bigint[] DEFAULT NULL,
    on_duplicate text DEFAULT NULL)
RETURNS TABLE (job_id bigint, inserted boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(enqueue_many.args), 0);
    v_run_at timestamptz := coalesce(enqueue_many.run_at, now());
    v_problem text;
    v_max integer;
BEGIN
    PERFORM commitq._check(CASE
        WHEN enqueue_many.args IS NULL THEN 'args must not be NULL'
        WHEN cardinality(enqueue_many.idempotency_keys) <> n
            THEN 'idempotency_keys must have one element per job'
        WHEN cardinality(enqueue_many.concurrency_keys) <> n
            THEN 'concurrency_keys must have one element per job' END);

    IF enqueue_many.idempotency_keys IS NOT NULL OR enqueue_many.depends_on IS NOT NULL
       OR enqueue_many.on_duplicate IS NOT NULL THEN
        -- Every job of the batch depends on all of depends_on (fan-out).
        PERFORM commitq._check(commitq._dependency_problem(enqueue_many.depends_on, enqueue_many.on_duplicate,
                                                           CASE WHEN enqueue_many.idempotency_keys IS NOT NULL
                                                                THEN '' END));
        RETURN QUERY SELECT * FROM commitq._enqueue_arrays(
            array_fill(enqueue_many.queue, ARRAY[n]),
            array_fill(enqueue_many.kind, ARRAY[n]),
            enqueue_many.args,
            array_fill(enqueue_many.priority, ARRAY[n]),
            array_fill(enqueue_many.run_at, ARRAY[n]),
            array_fill(enqueue_many.max_attempts, ARRAY[n]),
            enqueue_many.idempotency_keys,
            enqueue_many.concurrency_keys,
            array_fill(to_jsonb(enqueue_many.depends_on), ARRAY[n]),
            array_fill(enqueue_many.on_duplicate, ARRAY[n]));
        RETURN;
    END IF;

    -- What is the same for every job is checked once...
    v_problem := commitq._job_problem(enqueue_many.queue, enqueue_many.kind, 'object', 0,
                                      enqueue_many.priority, enqueue_many.max_attempts,
                                      isfinite(v_run_at), NULL, NULL);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'commitq: %', v_problem USING ERRCODE = 'CQ001';
    END IF;
    v_max := commitq._max_args_bytes();

    -- ...and each job's args inline; a row that fails the inline check gets
    -- the full check, which raises and so rejects the whole statement.
    RETURN QUERY
    INSERT INTO commitq.jobs AS j (queue, kind, args, state, priority, run_at, max_attempts,
                                   concurrency_key)
    SELECT enqueue_many.queue, enqueue_many.kind, t.a,
           CASE WHEN v_run_at > now() THEN 'scheduled' ELSE 'available' END::commitq.job_state,
           enqueue_many.priority, v_run_at, enqueue_many.max_attempts, t.ck
      FROM unnest(enqueue_many.args, enqueue_many.concurrency_keys) WITH ORDINALITY AS t(a, ck, ord)
     WHERE CASE WHEN jsonb_typeof(t.a) = 'object' AND pg_column_size(t.a) <= v_max
                     -- printable ASCII keys pass inline; any other gets the full check
                     AND (t.ck IS NULL OR t.ck ~ '^[ -~]{1,255}$')
                THEN true
                ELSE commitq._batch_job_ok(t.ord, enqueue_many.queue, enqueue_many.kind, t.a,
                                           enqueue_many.priority, v_run_at, enqueue_many.max_attempts,
                                           NULL, t.ck) END
    -- No ORDER BY: the rows come from one scan of the array, in array order,
    -- and are inserted and returned in that order; sorting 100,000 rows would
    -- cost a tenth of the statement. A test checks the order.
    RETURNING j.id, true;

    IF n > 0 AND v_run_at <= now() THEN
        PERFORM commitq._wake(enqueue_many.queue);
    END IF;
END
$$;

-- Insert many jobs given as a JSON array of objects, each with "queue",
-- "kind" and optionally "args", "priority", "run_at", "max_attempts",
-- "idempotency_key", "concurrency_key", "depends_on" (an array of job ids),
-- "on_duplicate". Same rules as enqueue, per job; all or nothing. Returns
-- (job_id, inserted) per job, in input order.
CREATE OR REPLACE FUNCTION commitq.enqueue_many(jobs jsonb)
RETURNS TABLE (job_id bigint, inserted boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_bad text;
BEGIN
    PERFORM commitq._check(CASE WHEN enqueue_many.jobs IS NULL THEN 'jobs must not be NULL'
                                WHEN jsonb_typeof(enqueue_many.jobs) <> 'array'
                                THEN 'jobs must be a JSON array of job objects' END);
    SELECT format('job %s: %s', e.i,
                  CASE WHEN jsonb_typeof(e.j) <> 'object' THEN 'must be a JSON object'
                       ELSE 'unknown field ' || quote_ident(f.key) END)
      INTO v_bad
      FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)
      LEFT JOIN LATERAL jsonb_object_keys(CASE WHEN jsonb_typeof(e.j) = 'object' THEN e.j END) AS f(key) ON true
     WHERE jsonb_typeof(e.j) <> 'object'
        OR f.key NOT IN ('queue', 'kind', 'args', 'priority', 'run_at', 'max_attempts',
                         'idempotency_key', 'concurrency_key', 'depends_on', 'on_duplicate')
     ORDER BY e.i
     LIMIT 1;
    PERFORM commitq._check(v_bad);

    RETURN QUERY SELECT * FROM commitq._enqueue_arrays(
        (SELECT array_agg(j->>'queue' ORDER BY i) FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(j->>'kind' ORDER BY i) FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(CASE WHEN j ? 'args' THEN j->'args' ELSE '{}'::jsonb END ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(coalesce((j->>'priority')::integer, 0) ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg((j->>'run_at')::timestamptz ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(coalesce((j->>'max_attempts')::integer, 25) ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(j->>'idempotency_key' ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(j->>'concurrency_key' ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(nullif(j->'depends_on', 'null') ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)),
        (SELECT array_agg(j->>'on_duplicate' ORDER BY i)
           FROM jsonb_array_elements(enqueue_many.jobs) WITH ORDINALITY AS e(j, i)));
END
$$;

-- Job `p_ord` of a batch: its depends_on, given as a JSON array of job ids,
-- as bigint[] (NULL for none); CQ001 for anything else.
CREATE FUNCTION commitq._depends_from_json(p_ord bigint, p_depends jsonb) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_depends IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_depends) <> 'array'
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(p_depends) x
                   WHERE jsonb_typeof(x) <> 'number' OR x::text !~ '^-?[0-9]{1,18}$') THEN
        RAISE EXCEPTION 'commitq: job % of the batch: depends_on must be a JSON array of job ids', p_ord
            USING ERRCODE = 'CQ001', DETAIL = 'nothing in the batch was enqueued';
    END IF;
    RETURN ARRAY(SELECT x::text::bigint FROM jsonb_array_elements(p_depends) x);
END
$$;

-- sql/finish.sql: completions and moves to finished_jobs release or cancel dependents.
-- Move jobs from the live table to finished_jobs in one statement.
CREATE OR REPLACE FUNCTION commitq._move_to_finished(p_ids bigint[], p_state commitq.job_state)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_queues text[];
    v_parents bigint[];
BEGIN
    WITH moved AS (
        DELETE FROM commitq.jobs WHERE id = ANY (p_ids) RETURNING *
    ), ins AS (
        INSERT INTO commitq.finished_jobs
            (id, queue, kind, args, state, priority, run_at, attempt, max_attempts, lease_token,
             worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, finished_at)
        SELECT id, queue, kind, args, p_state, priority, run_at, attempt, max_attempts, lease_token,
               worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, pg_catalog.now()
          FROM moved
        RETURNING id, queue
    )
    SELECT array_agg(ins.id), array_agg(ins.queue),
           (SELECT array_agg(moved.id) FROM moved WHERE moved.has_dependents)
      INTO v_ids, v_queues, v_parents FROM ins;
    -- Jobs that others wait for (dependencies.sql): completed ones count as
    -- done for them, discarded or cancelled ones cancel them.
    IF v_parents IS NOT NULL THEN
        IF p_state = 'completed' THEN
            PERFORM commitq._release_dependents(v_parents);
        ELSE
            PERFORM commitq._cancel_dependents(v_parents, p_state);
        END IF;
    END IF;
    -- Discards and cancellations count here, whichever path finishes the
    -- job; completions count in _complete_leased, kept or not.
    IF p_state <> 'completed' AND v_queues IS NOT NULL THEN
        PERFORM commitq._count_outcome(v_queues, p_state::text);
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END
$$;

-- Complete every job of the batch whose (job_id, lease_token) is its
-- current, live lease; `done` holds the ids completed, `done_keys` and
-- `done_queues` their concurrency keys (NULL for none) and queues. Completed
-- jobs are deleted, or moved to finished_jobs when commitq.config.keep_completed is
-- on; their concurrency keys' slots are given back in the same transaction.
-- With p_worker, the slots go to the next jobs of the keys in the same
-- queues, claimed for p_worker under a lease of p_lease and returned in
-- `taken` (see complete_and_take).
CREATE OR REPLACE FUNCTION commitq._complete_leased(
    p_ids bigint[], p_tokens bigint[], p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL,
    OUT done bigint[], OUT done_keys text[], OUT done_queues text[],
    OUT taken commitq.claimed_job[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_parents bigint[];
BEGIN
    IF (SELECT c.keep_completed FROM commitq.config c) THEN
        -- Lock in id order so that two overlapping batches cannot deadlock.
        SELECT coalesce(array_agg(l.id), '{}'), array_agg(l.concurrency_key), array_agg(l.queue)
          INTO done, done_keys, done_queues
          FROM (SELECT j.id, j.concurrency_key, j.queue
                  FROM commitq.jobs j
                 WHERE j.id = ANY (p_ids)
                   AND (j.id, j.lease_token) IN (SELECT * FROM unnest(p_ids, p_tokens))
                   -- CASE: looked up by primary key (see _locked_lease)
                   AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > clock_timestamp() END
                 ORDER BY j.id
                   FOR UPDATE OF j) l;
        PERFORM commitq._move_to_finished(done, 'completed');
    ELSE
        -- One statement: the lease check and the delete. `id = ANY` and the
        -- lease test as a CASE, so the plan looks the batch up by primary key
        -- whatever the statistics say about running jobs (see _locked_lease).
        WITH gone AS (
            DELETE FROM commitq.jobs j
             WHERE j.id = ANY (p_ids)
               AND (j.id, j.lease_token) IN (SELECT * FROM unnest(p_ids, p_tokens))
               AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > clock_timestamp() END
            RETURNING j.id, j.concurrency_key, j.queue, j.has_dependents
        )
        SELECT coalesce(array_agg(gone.id), '{}'), array_agg(gone.concurrency_key),
               array_agg(gone.queue), array_agg(gone.id) FILTER (WHERE gone.has_dependents)
          INTO done, done_keys, done_queues, v_parents
          FROM gone;
        -- Jobs that others wait for (dependencies.sql), in a statement of
        -- its own (see _release_dependents).
        IF v_parents IS NOT NULL THEN
            PERFORM commitq._release_dependents(v_parents);
        END IF;
    END IF;
    -- Throughput counters (monitoring.sql): one statement per batch.
    IF done_queues IS NOT NULL THEN
        PERFORM commitq._count_outcome(done_queues, 'completed');
    END IF;
    -- Only when some job had a key (_release_keys ignores the NULLs of the
    -- others): most completions skip the call.
    IF array_remove(done_keys, NULL) <> '{}' THEN
        taken := commitq._release_keys(done_keys, done_queues, p_worker, p_lease);
    END IF;
END
$$;

-- sql/claim.sql: the claimed row carries the dependencies' results.
-- The claimed_job row of a job: what every claim path returns (claim, the
-- keyed claim in concurrency_keys.sql, the take path of complete_and_take).
-- Plain SQL without a SET clause so that the planner inlines it into the
-- calling statement; a test (claimed_row_is_inlined) checks that it does.
-- It resolves nothing on the search_path: a row constructor, a cast to a
-- qualified type and a qualified function. STABLE, not IMMUTABLE: the
-- dependencies' results are read from a table, and the planner inlines a
-- function only into what its volatility allows.
CREATE OR REPLACE FUNCTION commitq._claimed_row(j commitq.jobs) RETURNS commitq.claimed_job
LANGUAGE sql STABLE
AS $$
    SELECT ROW(j.id, j.queue, j.kind, j.args, j.attempt, j.max_attempts, j.lease_token,
               j.lease_expires_at, j.priority, j.run_at, j.enqueued_at, j.concurrency_key,
               j.idempotency_key, j.errors,
               CASE WHEN j.depends_on IS NOT NULL
                    THEN commitq._dependency_results(j.depends_on) END)::commitq.claimed_job
$$;

-- sql/maintain.sql: maintain() prunes old results.
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
CREATE OR REPLACE FUNCTION commitq.maintain(
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

-- sql/security.sql: the new signatures and complete(..., result).
-- What each role may do, listed once: the GRANTs below give it to the
-- cluster roles at install, and commitq.grant_producer and friends give it
-- to a role inside one database. commitq_operator is also a member of the
-- other two, so its rows are only what it adds to them.
CREATE OR REPLACE FUNCTION commitq._role_privileges()
RETURNS TABLE (kind text, privilege text, object text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.kind, v.privilege, v.object FROM (VALUES
        ('producer', 'USAGE', 'SCHEMA commitq'),
        ('producer', 'USAGE', 'TYPE commitq.job_state'),
        ('producer', 'USAGE', 'TYPE commitq.claimed_job'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8, bigint[], text)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[], bigint[], text)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.enqueue_many(jsonb)'),
        -- Named leases are for application code and workers alike.
        ('producer', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('producer', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('worker', 'USAGE', 'SCHEMA commitq'),
        ('worker', 'USAGE', 'TYPE commitq.job_state'),
        ('worker', 'USAGE', 'TYPE commitq.claimed_job'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.claim(text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete(bigint, bigint)'),
        -- Completion with a result (sql/dependencies.sql).
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete(bigint, bigint, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_many(bigint[], bigint[])'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_claim(bigint[], bigint[], text, text, integer, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.complete_and_take(bigint[], bigint[], text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.stop_waiting(text, text)'),
        -- The waiting claim (sql/claim_wait.sql, sql/wakeup.sql).
        ('worker', 'EXECUTE', 'PROCEDURE commitq.claim_wait(text, text, integer, interval, interval, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.start_waiting(text, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.wait_supported()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.fail(bigint, bigint, text, interval, boolean)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.heartbeat(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.snooze(bigint, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_lease(bigint, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_begin(bigint, bigint, text)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.effect_done(bigint, bigint, text, jsonb)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.maintain()'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.try_acquire_lease(text, text, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.acquire_lease(text, text, interval, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.renew_lease(text, bigint, interval)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.release_lease(text, bigint)'),
        ('worker', 'EXECUTE', 'FUNCTION commitq.assert_fencing_token(text, bigint)'),
        ('operator', 'USAGE', 'SCHEMA commitq'),
        ('operator', 'USAGE', 'TYPE commitq.job_state'),
        ('operator', 'USAGE', 'TYPE commitq.claimed_job'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.cancel(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.retry(bigint)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_concurrency_limit(text, integer)'),
        -- Cron schedules (sql/schedule.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.schedule(text, text, text, text, jsonb, text, integer, integer, text, interval, boolean, boolean)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.unschedule(text)'),
        -- Pausing queues (sql/pause.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.pause(text)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.resume(text)'),
        -- Rate limits and fair queues (sql/flow_control.sql).
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_rate_limit(text, integer, interval)'),
        ('operator', 'EXECUTE', 'FUNCTION commitq.set_fairness(text, text)'),
        -- The engine's state (sql/engine.sql): the view calls the function
        -- with the reader's privileges.
        ('operator', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        ('operator', 'SELECT', 'TABLE commitq.engine_status'),
        -- Operators read every table and change only the settings.
        ('operator', 'SELECT', 'ALL TABLES IN SCHEMA commitq'),
        ('operator', 'UPDATE', 'TABLE commitq.config'),
        -- Dashboards and exporters: the views and nothing else. The view
        -- engine_status calls _engine_status with the reader's privileges.
        -- (A revoke finds the kinds a role still holds by their functions:
        -- _engine_status is the reader's.)
        ('reader', 'USAGE', 'SCHEMA commitq'),
        ('reader', 'USAGE', 'TYPE commitq.job_state'),
        ('reader', 'SELECT', 'TABLE commitq.queue_stats'),
        ('reader', 'SELECT', 'TABLE commitq.throughput'),
        ('reader', 'SELECT', 'TABLE commitq.job_list'),
        ('reader', 'SELECT', 'TABLE commitq.concurrency_key_stats'),
        ('reader', 'SELECT', 'TABLE commitq.named_lease_holders'),
        ('reader', 'SELECT', 'TABLE commitq.schedules'),
        ('reader', 'SELECT', 'TABLE commitq.engine_status'),
        ('reader', 'SELECT', 'TABLE commitq.flow_control'),
        ('reader', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        -- queue_stats calls it as its reader, like engine_status.
        ('reader', 'EXECUTE', 'FUNCTION commitq._available_by_queue()'),
        ('operator', 'EXECUTE', 'FUNCTION commitq._available_by_queue()')
    ) v(kind, privilege, object)
$$;

REVOKE ALL ON TABLE commitq.job_dependencies, commitq.job_results FROM PUBLIC;
REVOKE ALL ON TYPE commitq.job_dependencies, commitq.job_results FROM PUBLIC;
REVOKE ALL ON FUNCTION
    commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8, bigint[], text),
    commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[], bigint[], text),
    commitq._enqueue_keyed(text, text, jsonb, integer, timestamptz, integer, text, text, xid8, bigint[], text),
    commitq._enqueue_arrays(text[], text[], jsonb[], integer[], timestamptz[], integer[], text[], text[], jsonb[], text[]),
    commitq._depends_from_json(bigint, jsonb),
    commitq._dependency_problem(bigint[], text, text),
    commitq._result_problem(jsonb),
    commitq._dependency_results(bigint[]),
    commitq._resolve_dependencies(bigint[], bigint),
    commitq._dependencies_done(bigint[], bigint[]),
    commitq._release_dependents(bigint[]),
    commitq._cancel_dependents(bigint[], commitq.job_state),
    commitq.complete(bigint, bigint, jsonb),
    commitq._prune_results(integer),
    commitq._enqueue_replace(bigint, jsonb, integer, timestamptz, integer, text)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8, bigint[], text),
    commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[], bigint[], text)
  TO commitq_producer;
GRANT EXECUTE ON FUNCTION commitq.complete(bigint, bigint, jsonb) TO commitq_worker;
-- Operators read every table (security.sql: ALL TABLES IN SCHEMA commitq).
GRANT SELECT ON TABLE commitq.job_dependencies, commitq.job_results TO commitq_operator;
-- Roles given producer rights in this database (commitq.grant_producer)
-- keep them on the new signatures; those with worker rights get
-- complete(..., result).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT pg_catalog.split_part(g, '=', 1) AS fn, pg_catalog.split_part(g, '=', 2) AS grantee
               FROM pg_catalog.unnest(pg_catalog.string_to_array(
                        pg_catalog.current_setting('commitq.upgrade_enqueue_grants'), ',')) g
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s',
            CASE r.fn WHEN 'enqueue'
                 THEN 'commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8, bigint[], text)'
                 ELSE 'commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[], bigint[], text)'
            END, r.grantee);
    END LOOP;
    FOR r IN SELECT DISTINCT a.grantee::regrole::text AS grantee
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = 'commitq.complete(bigint, bigint)'::regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
                AND a.grantee::regrole::text NOT IN ('commitq_producer', 'commitq_worker', 'commitq_operator', 'commitq_reader')
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION commitq.complete(bigint, bigint, jsonb) TO %s', r.grantee);
    END LOOP;
    FOR r IN SELECT DISTINCT a.grantee::regrole::text AS grantee
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid = 'commitq.jobs'::regclass
                AND a.privilege_type = 'SELECT' AND a.grantee <> 0 AND a.grantee <> c.relowner
                AND a.grantee::regrole::text NOT IN ('commitq_producer', 'commitq_worker', 'commitq_operator', 'commitq_reader')
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON TABLE commitq.job_dependencies, commitq.job_results TO %s', r.grantee);
    END LOOP;
END
$$;

-- ===== 0.2.0: fair claiming, faster (sql/flow_claim.sql) =====

-- _fair_pick walks the keys itself.
DROP FUNCTION commitq._fair_keys(text, text, text, boolean, integer);

-- The jobs of a fair queue to hand out next, locked, in hand-out order: the
-- first job of each key, then the second of each, and so on (each round in
-- claim order), over up to p_want keys with the prefix. So a key with a
-- long backlog takes one place per round, and a key with one job waits at
-- most one claim behind it. Which keys a claim visits rotates: the session
-- keeps the last key it visited (setting commitq.fair_cursor, 'queue key')
-- and its next claim starts after it, wrapping round, so with more keys than
-- a claim takes every key is visited in turn. The setting only orders the
-- session's own claims.
--
-- The keys are found by a walk of jobs_fair_idx, one descent per key, and
-- each descent lands on its key's first job in claim order (the index is in
-- that order within a key), so when there are at least as many keys as the
-- claim wants (one job per key) the walk itself is the pick. Only with
-- fewer keys is each key's share looked up on its own. The walk is written
-- here rather than in an SQL function so that its plan is cached with this
-- function's; it starts strictly after the cursor's key as an index bound,
-- never by filtering out that key's (possibly long) run of entries.
CREATE OR REPLACE FUNCTION commitq._fair_pick(p_queue text, p_prefix text, p_want integer) RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor text := pg_catalog.current_setting('commitq.fair_cursor', true);
    v_after text;
    v_n integer;
    -- The keys visited, in visiting order, and each one's first job.
    v_keys text[] := '{}';
    v_firsts bigint[] := '{}';
    v_share integer;
    v_ids bigint[];
BEGIN
    IF starts_with(v_cursor, p_queue || ' ') THEN
        v_after := substr(v_cursor, length(p_queue) + 2);
    END IF;
    -- Up to p_want keys after the cursor, then from the first key of the
    -- prefix when that was not enough (the second pass, v_after NULL).
    FOR pass IN 1..2 LOOP
        v_n := p_want - cardinality(v_keys);
        EXIT WHEN v_n <= 0 OR (pass = 2 AND v_after IS NULL);
        IF pass = 2 THEN
            v_after := NULL;
        END IF;
        SELECT v_keys || coalesce(array_agg(w.key ORDER BY w.n), '{}'),
               v_firsts || coalesce(array_agg(w.id ORDER BY w.n), '{}')
          INTO v_keys, v_firsts
          FROM (
            WITH RECURSIVE k(key, id, n) AS (
                -- From the first key of the prefix...
                (SELECT j.concurrency_key COLLATE "C", j.id, 1 FROM commitq.jobs j
                  WHERE v_after IS NULL
                    AND j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                    AND j.concurrency_key COLLATE "C" >= p_prefix COLLATE "C"
                  ORDER BY j.concurrency_key COLLATE "C", j.priority, j.run_at, j.id
                  LIMIT 1)
                UNION ALL
                -- ...or from the cursor's key, itself not visited.
                SELECT v_after COLLATE "C", NULL::bigint, 0 WHERE v_after IS NOT NULL
                UNION ALL
                SELECT x.key, x.id, k.n + 1
                  FROM k CROSS JOIN LATERAL (
                        SELECT j.concurrency_key COLLATE "C" AS key, j.id FROM commitq.jobs j
                         WHERE j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                           AND j.concurrency_key COLLATE "C" > k.key
                         ORDER BY j.concurrency_key COLLATE "C", j.priority, j.run_at, j.id
                         LIMIT 1) x
                 WHERE k.n < v_n AND (k.n = 0 OR pg_catalog.starts_with(k.key, p_prefix))
            )
            SELECT k.key, k.id, k.n FROM k
             WHERE k.n > 0 AND pg_catalog.starts_with(k.key, p_prefix)
               AND k.key <> ALL (v_keys)) w;
    END LOOP;
    IF v_keys = '{}' THEN
        RETURN '{}';
    END IF;
    PERFORM pg_catalog.set_config('commitq.fair_cursor',
        CASE WHEN cardinality(v_keys) >= p_want THEN p_queue || ' ' || v_keys[cardinality(v_keys)] ELSE '' END,
        false);

    v_share := (p_want + cardinality(v_keys) - 1) / cardinality(v_keys);
    IF v_share = 1 THEN
        -- One round: the keys' first jobs, in claim order, passing over
        -- jobs others hold.
        SELECT array_agg(l.id ORDER BY l.priority, l.run_at, l.id) INTO v_ids
          FROM (SELECT j.id, j.priority, j.run_at FROM commitq.jobs j
                 WHERE j.id = ANY (v_firsts) AND j.state = 'available'
                   FOR UPDATE SKIP LOCKED) l;
        RETURN coalesce(v_ids, '{}');
    END IF;

    -- Each key's first jobs, as many as a fair share of the claim, then
    -- round by round; locked in that order, passing over jobs others hold.
    WITH per_key AS (
        SELECT x.id, x.rnd, x.priority, x.run_at
          FROM unnest(v_keys) AS k(key)
          CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at,
                       row_number() OVER (ORDER BY j.priority, j.run_at, j.id) AS rnd
                  FROM commitq.jobs j
                 WHERE j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                   AND j.concurrency_key COLLATE "C" = k.key
                 ORDER BY j.priority, j.run_at, j.id
                 LIMIT v_share) x
    ), chosen AS (
        SELECT per_key.id, row_number() OVER (ORDER BY per_key.rnd, per_key.priority, per_key.run_at, per_key.id) AS ord
          FROM per_key
    ), locked AS (
        SELECT j.id FROM commitq.jobs j
         WHERE j.id = ANY (ARRAY(SELECT chosen.id FROM chosen)) AND j.state = 'available'
           FOR UPDATE SKIP LOCKED
    )
    SELECT array_agg(chosen.id ORDER BY chosen.ord) INTO v_ids
      FROM chosen WHERE chosen.id IN (SELECT locked.id FROM locked) AND chosen.ord <= p_want;
    RETURN coalesce(v_ids, '{}');
END
$$;

-- ===== 0.2.0: maintain prunes at most maintain_batch idle concurrency keys (sql/concurrency_keys.sql) =====

CREATE OR REPLACE FUNCTION commitq._maintain_keys(p_batch integer, OUT promoted bigint, OUT pruned bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    promoted := 0;
    FOR r IN
        SELECT c.key, c.max_running - c.running AS free
          FROM commitq.concurrency_keys c
         WHERE c.running < c.max_running AND c.blocked > 0
           -- Blocked while another job of the key is available to claim is
           -- normal: that job will take the slot.
           AND NOT EXISTS (SELECT 1 FROM commitq.jobs a
                            WHERE a.concurrency_key = c.key AND a.state = 'available')
         ORDER BY c.key
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    LOOP
        promoted := promoted + (commitq._promote_blocked(ARRAY[r.key], ARRAY[r.free])).promoted;
    END LOOP;

    -- ARRAY(...) runs the pick once: as an IN (...) semi-join the planner
    -- may run it again per row, and LIMIT then bounds each run, not the step.
    WITH gone AS (
        DELETE FROM commitq.concurrency_keys c
         WHERE c.key = ANY (ARRAY(SELECT o.key FROM commitq.concurrency_keys o
                                   WHERE o.running = 0 AND o.blocked = 0
                                     AND NOT EXISTS (SELECT 1 FROM commitq.jobs b
                                                      WHERE b.concurrency_key = o.key AND b.state = 'blocked')
                                   LIMIT p_batch
                                     FOR UPDATE SKIP LOCKED))
        RETURNING 1
    )
    SELECT count(*) INTO pruned FROM gone;
END
$$;
