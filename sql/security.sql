-- Roles and grants. Nothing is granted to PUBLIC: a role can use commitq
-- only through one of the four roles below, or through the same privileges
-- granted inside one database by commitq.grant_producer and friends.
--
--   commitq_producer  enqueue jobs
--   commitq_worker    claim jobs and report on them (and run maintain)
--   commitq_operator  both of the above, cancel and retry, pause and resume,
--                     and read every table
--   commitq_reader    read the monitoring views (sql/monitoring.sql), the
--                     schedules and the engine's state; change nothing
--
-- The public functions are SECURITY DEFINER, so producers and workers need no
-- rights on the tables themselves. Those in SQL and PL/pgSQL pin their
-- search_path; commitq.enqueue, in C, resolves nothing on the path (see
-- sql/enqueue.sql).
-- Roles belong to the cluster, not the database, so a second database that
-- installs commitq reuses them, and a role granted commitq_producer may
-- enqueue in every database of the cluster that installs commitq. Function,
-- schema and table privileges belong to a database: commitq.grant_producer
-- and friends grant those directly, for one database only.

-- Two databases installing commitq at the same moment both see a role
-- missing and both create it: the loser waits, gets duplicate_object or
-- unique_violation, and looks again (if the winner rolled back, the role is
-- still missing and this transaction creates it).
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['commitq_producer', 'commitq_worker', 'commitq_operator', 'commitq_reader'] LOOP
        FOR attempt IN 1..5 LOOP
            EXIT WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r);
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END LOOP;
    END LOOP;
END
$$;

GRANT commitq_producer, commitq_worker TO commitq_operator;

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

CREATE FUNCTION commitq.grant_reader(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'reader', true) $$;

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

CREATE FUNCTION commitq.revoke_reader(role regrole) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT commitq._grant_in_database(role, 'reader', false) $$;

REVOKE ALL ON SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON TYPE commitq.job_state, commitq.claimed_job FROM PUBLIC;
-- Every table's row type too (array types follow their element type).
DO $$
DECLARE
    t regtype;
BEGIN
    FOR t IN SELECT ty.oid::regtype FROM pg_catalog.pg_type ty
              WHERE ty.typnamespace = 'commitq'::regnamespace AND ty.typrelid <> 0
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TYPE %s FROM PUBLIC', t);
    END LOOP;
END
$$;

-- The four roles get the privileges commitq._role_privileges lists.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM commitq._role_privileges() LOOP
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %I', p.privilege, p.object, 'commitq_' || p.kind);
    END LOOP;
END
$$;

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
             commitq.revoke_worker(regrole), commitq.revoke_operator(regrole),
             commitq.grant_reader(regrole), commitq.revoke_reader(regrole) TO %s', grantee);
END
$$;
