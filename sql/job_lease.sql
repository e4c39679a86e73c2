-- Job leases: a claimed job runs under a lease (an expiry and a lease
-- token). Every call a worker makes for a job presents (job_id,
-- lease_token) and is refused unless that is the job's current, live lease:
-- CQ102 (stale: the job moved on) or CQ103 (expired). assert_lease lets
-- application SQL fence its own writes the same way.

-- Raise the right lease error for a call that presented (job_id, lease_token)
-- and did not match a running job under a live lease.
CREATE FUNCTION commitq._lease_error(p_job_id bigint, p_lease_token bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j record;
    f commitq.job_state;
BEGIN
    PERFORM commitq._check(CASE WHEN p_job_id IS NULL THEN 'job_id must not be NULL'
                                WHEN p_lease_token IS NULL THEN 'lease_token must not be NULL' END);
    SELECT state, lease_token, lease_expires_at INTO j FROM commitq.jobs WHERE id = p_job_id;
    IF NOT FOUND THEN
        SELECT state INTO f FROM commitq.finished_jobs WHERE id = p_job_id;
        IF FOUND THEN
            RAISE EXCEPTION 'commitq: stale lease: job % is already %', p_job_id, f
                USING ERRCODE = 'CQ102';
        END IF;
        -- Completed jobs are deleted unless keep_completed is on: an id the
        -- sequence has handed out is a job that was, so its lease is stale.
        IF p_job_id <= (SELECT s.last_value FROM commitq.job_id_seq s) THEN
            RAISE EXCEPTION 'commitq: stale lease: job % is no longer live (completed, or finished and pruned)',
                p_job_id USING ERRCODE = 'CQ102';
        END IF;
        RAISE EXCEPTION 'commitq: job % not found', p_job_id USING ERRCODE = 'CQ101';
    END IF;
    IF j.state <> 'running' THEN
        RAISE EXCEPTION 'commitq: stale lease: job % is % now, no longer running under lease token %',
            p_job_id, j.state, p_lease_token
            USING ERRCODE = 'CQ102';
    END IF;
    IF j.lease_token <> p_lease_token THEN
        RAISE EXCEPTION 'commitq: stale lease: job % is running under lease token %, not %',
            p_job_id, j.lease_token, p_lease_token
            USING ERRCODE = 'CQ102';
    END IF;
    RAISE EXCEPTION 'commitq: lease expired: lease token % of job % ran out', p_lease_token, p_job_id
        USING ERRCODE = 'CQ103',
              DETAIL = format('The lease ran out at %s.', j.lease_expires_at),
              HINT = 'heartbeat before the lease runs out, or claim with a longer lease';
END
$$;

-- Lock the job and return it if (job_id, lease_token) holds its live lease;
-- raise the matching lease error otherwise. The row lock keeps maintain() and
-- other claimers off the job until the caller's transaction ends.
CREATE FUNCTION commitq._locked_lease(p_job_id bigint, p_lease_token bigint)
RETURNS commitq.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j commitq.jobs;
BEGIN
    -- The lease test is a CASE so that it does not imply jobs_lease_idx's
    -- predicate: written as `state = 'running' AND ...` the planner may scan
    -- that whole index (every running job) for this one row, whenever the
    -- statistics were taken with few jobs running (measured: a batch of 100
    -- completions 8.5 ms instead of 0.6 ms).
    SELECT * INTO j FROM commitq.jobs
     WHERE id = p_job_id AND lease_token = p_lease_token
       AND CASE WHEN state = 'running' THEN lease_expires_at > pg_catalog.clock_timestamp() END
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM commitq._lease_error(p_job_id, p_lease_token);
    END IF;
    RETURN j;
END
$$;

-- Raise CQ102/CQ103 unless (job_id, lease_token) is the job's current, live
-- lease, and hold the job's row lock until the caller's transaction ends, so
-- the lease cannot move on before the caller's own writes commit. Put it in
-- application SQL to fence writes made on behalf of a job.
CREATE FUNCTION commitq.assert_lease(job_id bigint, lease_token bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._locked_lease(assert_lease.job_id, assert_lease.lease_token);
END
$$;
