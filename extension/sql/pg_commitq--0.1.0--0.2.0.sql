-- pg_commitq upgrade 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_commitq UPDATE.
--
-- Every change to a SQL object between the two versions (in sql/*.sql, which
-- a fresh CREATE EXTENSION at 0.2.0 runs) is repeated here, so that a
-- database upgraded from 0.1.0 ends with the same objects, grants and
-- comments as a fresh install: tests/upgrade/run.sh compares the two
-- catalogs and names any difference.
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
        -- The engine's state (sql/engine.sql): the view calls the function
        -- with the reader's privileges.
        ('operator', 'EXECUTE', 'FUNCTION commitq._engine_status()'),
        ('operator', 'SELECT', 'TABLE commitq.engine_status'),
        -- Operators read every table and change only the settings.
        ('operator', 'SELECT', 'ALL TABLES IN SCHEMA commitq'),
        ('operator', 'UPDATE', 'TABLE commitq.config')
    ) v(kind, privilege, object)
$$;

-- Grant (grant_it) or revoke a kind of commitq privileges to a role inside
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
CREATE FUNCTION commitq._grant_in_database(target_role regrole, kind text, grant_it boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller text := coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user);
    target name;
    p record;
    k text;
BEGIN
    IF NOT pg_catalog.pg_has_role(caller,
            (SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()),
            'MEMBER') THEN
        RAISE EXCEPTION 'commitq: only the owner of database % or a superuser may grant or revoke commitq privileges in it',
            pg_catalog.current_database() USING ERRCODE = '42501';
    END IF;
    IF kind IS NULL OR kind NOT IN ('producer', 'worker', 'operator') THEN
        RAISE EXCEPTION 'commitq: unknown kind of privileges %', kind USING ERRCODE = 'CQ001';
    END IF;
    SELECT r.rolname INTO target FROM pg_catalog.pg_roles r WHERE r.oid = target_role;
    IF target IS NULL THEN
        RAISE EXCEPTION 'commitq: role must not be NULL' USING ERRCODE = 'CQ001';
    END IF;
    -- Not the cluster roles (a revoke would take their install grants away),
    -- nor predefined roles, nor commitq's owner (who holds everything).
    IF target IN ('commitq_producer', 'commitq_worker', 'commitq_operator') OR target LIKE 'pg\_%'
       OR target_role = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'commitq') THEN
        RAISE EXCEPTION 'commitq: cannot grant or revoke commitq privileges to role %: it is commitq''s owner, '
            'a commitq cluster role or a predefined role', target USING ERRCODE = 'CQ001';
    END IF;

    FOR p IN SELECT * FROM commitq._role_privileges() r
              WHERE r.kind = _grant_in_database.kind
                 OR (_grant_in_database.kind = 'operator' AND r.kind IN ('producer', 'worker')) LOOP
        EXECUTE pg_catalog.format(CASE WHEN grant_it THEN 'GRANT %s ON %s TO %I' ELSE 'REVOKE %s ON %s FROM %I' END,
                                  p.privilege, p.object, target);
    END LOOP;
    IF grant_it THEN
        RETURN;
    END IF;
    FOREACH k IN ARRAY ARRAY['producer', 'worker', 'operator'] LOOP
        CONTINUE WHEN k = _grant_in_database.kind;
        IF EXISTS (SELECT FROM commitq._role_privileges() r, pg_catalog.pg_proc f,
                          pg_catalog.aclexplode(f.proacl) a
                    WHERE r.kind = k AND r.privilege = 'EXECUTE'
                      AND f.oid = pg_catalog.substr(r.object, 10)::regprocedure
                      AND a.grantee = target_role AND a.privilege_type = 'EXECUTE') THEN
            PERFORM commitq._grant_in_database(target_role, k, true);
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
