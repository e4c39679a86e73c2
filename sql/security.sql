-- Roles and grants. Nothing is granted to PUBLIC: a role can use commitq
-- only through one of the three roles below.
--
--   commitq_producer  enqueue jobs
--   commitq_worker    claim jobs and report on them (and run maintain)
--   commitq_operator  both of the above, cancel and retry, and read every table
--
-- The public functions are SECURITY DEFINER, so producers and workers need no
-- rights on the tables themselves. Those in SQL and PL/pgSQL pin their
-- search_path; commitq.enqueue, in C, resolves nothing on the path (see
-- sql/enqueue.sql).
-- Roles belong to the cluster, not the database, so a second database that
-- installs commitq reuses them.

-- Two databases installing commitq at the same moment both see a role
-- missing and both create it: the loser waits, gets duplicate_object or
-- unique_violation, and looks again (if the winner rolled back, the role is
-- still missing and this transaction creates it).
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['commitq_producer', 'commitq_worker', 'commitq_operator'] LOOP
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

REVOKE ALL ON SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA commitq FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA commitq FROM PUBLIC;
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

GRANT USAGE ON SCHEMA commitq TO commitq_producer, commitq_worker, commitq_operator;
GRANT USAGE ON TYPE commitq.job_state, commitq.claimed_job
    TO commitq_producer, commitq_worker, commitq_operator;

GRANT EXECUTE ON FUNCTION
    commitq.enqueue(text, text, jsonb, integer, timestamptz, integer, text, text, xid8),
    commitq.enqueue_many(text, text, jsonb[], integer, timestamptz, integer, text[], text[]),
    commitq.enqueue_many(jsonb)
    TO commitq_producer;

GRANT EXECUTE ON FUNCTION
    commitq.claim(text, text, integer, interval),
    commitq.complete(bigint, bigint),
    commitq.complete_many(bigint[], bigint[]),
    commitq.complete_and_claim(bigint[], bigint[], text, text, integer, interval),
    commitq.complete_and_take(bigint[], bigint[], text, interval),
    commitq.stop_waiting(text, text),
    commitq.fail(bigint, bigint, text, interval, boolean),
    commitq.heartbeat(bigint, bigint, interval),
    commitq.snooze(bigint, bigint, interval),
    commitq.assert_lease(bigint, bigint),
    commitq.effect_begin(bigint, bigint, text),
    commitq.effect_done(bigint, bigint, text, jsonb),
    commitq.maintain()
    TO commitq_worker;

-- Named leases are for application code and workers alike.
GRANT EXECUTE ON FUNCTION
    commitq.try_acquire_lease(text, text, interval),
    commitq.acquire_lease(text, text, interval, interval),
    commitq.renew_lease(text, bigint, interval),
    commitq.release_lease(text, bigint),
    commitq.assert_fencing_token(text, bigint)
    TO commitq_producer, commitq_worker;

GRANT EXECUTE ON FUNCTION
    commitq.cancel(bigint),
    commitq.retry(bigint),
    commitq.set_concurrency_limit(text, integer)
    TO commitq_operator;

GRANT SELECT ON ALL TABLES IN SCHEMA commitq TO commitq_operator;
GRANT UPDATE ON commitq.config TO commitq_operator;
