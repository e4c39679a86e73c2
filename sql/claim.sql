-- Claim: hand due jobs to a worker under a lease, never blocking on jobs that
-- other claimers hold.

-- What claim returns for each job. A type rather than OUT parameters so that
-- claim's own parameters can keep the names queue and worker.
CREATE TYPE commitq.claimed_job AS (
    job_id bigint,
    queue text,
    kind text,
    args jsonb,
    attempt integer,
    max_attempts integer,
    lease_token bigint,
    lease_expires_at timestamptz,
    priority smallint,
    run_at timestamptz,
    enqueued_at timestamptz,
    concurrency_key text,
    idempotency_key text,
    errors jsonb,
    -- {"<job id>": result} of the jobs it was enqueued to wait for
    -- (depends_on, dependencies.sql); NULL for a job without dependencies.
    dependency_results jsonb
);

-- The claimed_job row of a job: what every claim path returns (claim, the
-- keyed claim in concurrency_keys.sql, the take path of complete_and_take).
-- Plain SQL without a SET clause so that the planner inlines it into the
-- calling statement; a test (claimed_row_is_inlined) checks that it does.
-- It resolves nothing on the search_path: a row constructor, a cast to a
-- qualified type and a qualified function. STABLE, not IMMUTABLE: the
-- dependencies' results are read from a table, and the planner inlines a
-- function only into what its volatility allows.
CREATE FUNCTION commitq._claimed_row(j commitq.jobs) RETURNS commitq.claimed_job
LANGUAGE sql STABLE
AS $$
    SELECT ROW(j.id, j.queue, j.kind, j.args, j.attempt, j.max_attempts, j.lease_token,
               j.lease_expires_at, j.priority, j.run_at, j.enqueued_at, j.concurrency_key,
               j.idempotency_key, j.errors,
               CASE WHEN j.depends_on IS NOT NULL
                    THEN commitq._dependency_results(j.depends_on) END)::commitq.claimed_job
$$;

-- Claim up to max_jobs due jobs of a queue, in priority, run_at, id order.
-- Each claimed job gets a lease until now() + lease and a lease token larger
-- than any earlier token of that job; pass both to complete/fail/heartbeat.
CREATE FUNCTION commitq.claim(
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
