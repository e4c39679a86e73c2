-- The waiting claim in PL/pgSQL: it claims, and when nothing is there
-- commits and claims again every 100 ms until the wait ends. A PL/pgSQL
-- procedure may COMMIT between attempts (so each claim sees new commits, at
-- any isolation level), but every statement it runs takes a snapshot, the
-- sleep included: the session's xmin is set during each 100 ms sleep and
-- moves on with the next one, so a long wait never pins the vacuum horizon,
-- but backend_xmin is not NULL while it waits as it is in the extension's C
-- version. It starts with a COMMIT so that, like the C version, it is
-- refused (SQLSTATE 2D000) inside a transaction block even when jobs are
-- there. No SET search_path (a procedure with one cannot commit): every
-- name and operator is schema-qualified.
CREATE PROCEDURE commitq.claim_wait(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes',
    wait interval DEFAULT '30 seconds',
    INOUT jobs jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_deadline timestamptz;
BEGIN
    IF claim_wait.wait IS NULL THEN
        RAISE EXCEPTION 'commitq: wait must not be NULL' USING ERRCODE = 'CQ001';
    END IF;
    IF claim_wait.wait OPERATOR(pg_catalog.<) '0'::pg_catalog.interval
       OR claim_wait.wait OPERATOR(pg_catalog.>) '1 day'::pg_catalog.interval THEN
        RAISE EXCEPTION 'commitq: wait out of range 0..1 day' USING ERRCODE = 'CQ001';
    END IF;
    v_deadline := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) claim_wait.wait;
    COMMIT;
    LOOP
        SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(c)), '[]'::pg_catalog.jsonb)
          INTO claim_wait.jobs
          FROM commitq.claim(claim_wait.queue, claim_wait.worker, claim_wait.max_jobs,
                             claim_wait.lease) AS c;
        EXIT WHEN pg_catalog.jsonb_array_length(claim_wait.jobs) OPERATOR(pg_catalog.>) 0
               OR pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_deadline;
        COMMIT;
        PERFORM pg_catalog.pg_sleep(LEAST(0.1, pg_catalog.date_part('epoch',
                    v_deadline OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp())));
    END LOOP;
END
$$;
