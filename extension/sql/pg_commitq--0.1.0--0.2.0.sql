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
                      AND f.oid = pg_catalog.substr(r.object, 10)::regprocedure
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
