-- commitq on Citus: the routed versions of the functions on the claim,
-- completion and enqueue paths, and the *_in calls that carry the queue.
-- Every statement in them names the queue, so Citus routes it to one shard.
--
-- Applied on EVERY node (coordinator and workers) with DDL propagation off,
-- before sql/citus/distribute.sql: a call delegated to a worker runs the
-- worker's copy of these functions, and Citus does not propagate a CREATE OR
-- REPLACE of an extension's function. dev/citus.sh createdb does both.
--
-- One file although it passes 600 lines: it is applied as a unit, and its
-- functions are the single-node ones with the queue named in every
-- statement, easiest to review side by side in this order.
\set ON_ERROR_STOP on
SET citus.enable_ddl_propagation = off;

-- Job ids: each node takes them from its own range, the node's Citus group
-- id in the top 16 bits (Citus does the same for sequences it distributes
-- itself; this one belongs to the extension, so it does it here). An id so
-- stays unique wherever a delegated enqueue ran, and tells which node
-- created it.
SELECT pg_catalog.setval('commitq.job_id_seq',
    greatest((SELECT s.last_value FROM commitq.job_id_seq s),
             (SELECT g.groupid::bigint << 48 FROM pg_dist_local_group g)) + 1, false);

-- The queue of a job, for the calls that take only a job id (complete,
-- fail, heartbeat, snooze, assert_lease). A job never changes queue, so this
-- lookup takes no lock: the routed statement that follows locks and checks
-- the row. It reads every shard (a fan-out without FOR UPDATE, which Citus
-- allows); commitq.complete_in and the other *_in calls skip it.
CREATE FUNCTION commitq._job_queue(p_job_id bigint) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queue text := nullif(pg_catalog.current_setting('commitq.route_' || p_job_id::text, true), '');
BEGIN
    -- PL/pgSQL, not SQL: Citus cannot plan a parameterised statement of an
    -- SQL function.
    IF v_queue IS NULL THEN
        SELECT j.queue INTO v_queue FROM commitq.jobs j WHERE j.id = p_job_id;
    END IF;
    IF v_queue IS NULL THEN
        SELECT f.queue INTO v_queue FROM commitq.finished_jobs f WHERE f.id = p_job_id;
    END IF;
    RETURN v_queue;
END
$$;

-- Enqueue, in PL/pgSQL instead of the extension's C fast path: the C path's
-- INSERT asks in its RETURNING whether a worker waits, a subquery Citus
-- refuses in an INSERT. Concurrency keys are refused: their rows are
-- global (a reference table) and a claim delegated to a worker may not write
-- a reference table in the same statement as its shard (docs/citus.md).
-- Dependencies and on_duplicate are refused the same way: the signature
-- is the extension's (eleven arguments), so that this replaces it instead
-- of adding an overload.
CREATE OR REPLACE FUNCTION commitq.enqueue(
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
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF enqueue.depends_on IS NOT NULL OR enqueue.on_duplicate IS NOT NULL THEN
        RAISE EXCEPTION 'commitq: depends_on and on_duplicate are not supported on a distributed commitq yet'
            USING ERRCODE = '0A000', HINT = 'see docs/citus.md';
    END IF;
    PERFORM commitq._check(commitq._job_problem(
        enqueue.queue, enqueue.kind, jsonb_typeof(enqueue.args), pg_column_size(enqueue.args),
        enqueue.priority, enqueue.max_attempts, isfinite(coalesce(enqueue.run_at, now())),
        enqueue.idempotency_key, enqueue.concurrency_key));
    IF enqueue.concurrency_key IS NOT NULL THEN
        RAISE EXCEPTION 'commitq: concurrency keys are not supported on a distributed commitq yet'
            USING ERRCODE = '0A000', HINT = 'see docs/citus.md';
    END IF;
    SELECT k.job_id, k.inserted INTO enqueue.job_id, enqueue.inserted
      FROM commitq._enqueue_keyed(enqueue.queue, enqueue.kind, enqueue.args, enqueue.priority,
                                  enqueue.run_at, enqueue.max_attempts, enqueue.idempotency_key,
                                  NULL, enqueue.after_xact) k;
END
$$;

-- _enqueue_keyed with every statement routed by the queue: the
-- idempotency key's takeover test and the waiting-worker test move out of
-- the INSERTs into statements of their own.
CREATE OR REPLACE FUNCTION commitq._enqueue_keyed(
    queue text, kind text, args jsonb, priority integer, run_at timestamptz,
    max_attempts integer, idempotency_key text, concurrency_key text, after_xact xid8,
    OUT job_id bigint, OUT inserted boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_run_at timestamptz := coalesce(_enqueue_keyed.run_at, now());
    v_window interval;
    v_gated boolean := false;
    v_old bigint;
BEGIN
    IF _enqueue_keyed.after_xact IS NOT NULL THEN
        PERFORM pg_xact_status(_enqueue_keyed.after_xact);
        v_gated := true;
    END IF;
    _enqueue_keyed.inserted := true;
    _enqueue_keyed.job_id := nextval('commitq.job_id_seq');
    IF _enqueue_keyed.idempotency_key IS NOT NULL THEN
        SELECT c.idempotency_window INTO v_window FROM commitq.config c;
        LOOP
            -- The primary key of idempotency_keys decides, as on one node.
            INSERT INTO commitq.idempotency_keys AS k (queue, key, job_id)
            VALUES (_enqueue_keyed.queue, _enqueue_keyed.idempotency_key, _enqueue_keyed.job_id)
            ON CONFLICT (queue, key) DO NOTHING;
            EXIT WHEN FOUND;
            -- Taken: by a live job, or one whose window is still open (then
            -- it is that job), or else taken over, under the key row's lock.
            SELECT k.job_id INTO v_old
              FROM commitq.idempotency_keys k
             WHERE k.queue = _enqueue_keyed.queue AND k.key = _enqueue_keyed.idempotency_key
               FOR UPDATE;
            IF FOUND THEN
                IF EXISTS (SELECT 1 FROM commitq.idempotency_keys k
                            WHERE k.queue = _enqueue_keyed.queue AND k.key = _enqueue_keyed.idempotency_key
                              AND k.created_at >= now() - v_window)
                   OR EXISTS (SELECT 1 FROM commitq.jobs j
                               WHERE j.queue = _enqueue_keyed.queue AND j.id = v_old) THEN
                    _enqueue_keyed.job_id := v_old;
                    _enqueue_keyed.inserted := false;
                    RETURN;
                END IF;
                UPDATE commitq.idempotency_keys k
                   SET job_id = _enqueue_keyed.job_id, created_at = now()
                 WHERE k.queue = _enqueue_keyed.queue AND k.key = _enqueue_keyed.idempotency_key;
                EXIT;
            END IF;
            -- maintain() pruned the key between the two statements: go again.
        END LOOP;
    END IF;

    INSERT INTO commitq.jobs (id, queue, kind, args, state, priority, run_at, max_attempts,
                              idempotency_key, concurrency_key, after_xact)
    VALUES (_enqueue_keyed.job_id, _enqueue_keyed.queue, _enqueue_keyed.kind, _enqueue_keyed.args,
            CASE WHEN v_run_at > now() OR v_gated THEN 'scheduled' ELSE 'available' END::commitq.job_state,
            _enqueue_keyed.priority, v_run_at, _enqueue_keyed.max_attempts,
            _enqueue_keyed.idempotency_key, NULL, _enqueue_keyed.after_xact);

    IF v_run_at <= now() AND NOT v_gated THEN
        IF EXISTS (SELECT 1 FROM commitq.waiting_workers w WHERE w.queue = _enqueue_keyed.queue) THEN
            PERFORM pg_notify('commitq:' || _enqueue_keyed.queue, '');
        END IF;
        PERFORM commitq._wake_at_commit(_enqueue_keyed.queue);
    END IF;
END
$$;

-- Claim with each statement routed by the queue: the promotion of due
-- scheduled jobs, then one pick-and-lease statement. Custom plans (no
-- force_generic_plan as on one node): Citus cannot prune shards in a
-- generic plan of an UPDATE with a subquery. The claim floor of the
-- single-node claim is left out (it reads index statistics of the shell
-- table, which has none); keyed jobs do not exist here (enqueue refuses
-- them).
CREATE OR REPLACE FUNCTION commitq.claim(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes')
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_got integer;
BEGIN
    PERFORM commitq._check(coalesce(
        commitq._queue_problem(claim.queue),
        commitq._worker_lease_problem(claim.worker, claim.lease),
        CASE WHEN claim.max_jobs IS NULL OR claim.max_jobs NOT BETWEEN 1 AND 10000
            THEN format('max_jobs %s out of range 1..10000', coalesce(claim.max_jobs::text, 'NULL'))
        END));

    UPDATE commitq.jobs j
       SET state = 'available'
     WHERE j.queue = claim.queue
       AND j.id IN (SELECT s.id FROM commitq.jobs s
                     WHERE s.state = 'scheduled' AND s.run_at <= now() AND s.queue = claim.queue
                       AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                     ORDER BY s.run_at
                     LIMIT 1000
                       FOR UPDATE SKIP LOCKED);
    IF FOUND THEN
        PERFORM commitq._wake(claim.queue);
    END IF;

    IF EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = claim.queue) THEN
        RETURN;
    END IF;

    RETURN QUERY
        WITH picked AS (
            SELECT c.id FROM commitq.jobs c
             WHERE c.queue = claim.queue AND c.state = 'available'
             ORDER BY c.priority, c.run_at, c.id
             LIMIT claim.max_jobs
               FOR UPDATE SKIP LOCKED
        )
        UPDATE commitq.jobs j
           SET state = 'running',
               attempt = j.attempt + 1,
               lease_token = j.lease_token + 1,
               lease_expires_at = now() + claim.lease,
               lease_interval = claim.lease,
               worker = claim.worker,
               claimed_at = now(),
               slot_held = false
         WHERE j.queue = claim.queue AND j.id IN (SELECT picked.id FROM picked)
        RETURNING (commitq._claimed_row(j)).*;
    GET DIAGNOSTICS v_got = ROW_COUNT;

    IF v_got > 0 THEN
        DELETE FROM commitq.waiting_workers w WHERE w.queue = claim.queue AND w.worker = claim.worker;
    ELSIF 'commitq:' || claim.queue IN (SELECT pg_listening_channels()) THEN
        INSERT INTO commitq.waiting_workers AS w (queue, worker) VALUES (claim.queue, claim.worker)
        ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
    END IF;
END
$$;

-- Counters, one routed upsert per queue (Citus plans the single-node
-- version, an INSERT ... SELECT over unnest, through the coordinator).
CREATE OR REPLACE FUNCTION commitq._count_outcome(p_queues text[], p_outcome text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT q, count(*) AS n FROM unnest(p_queues) q WHERE q IS NOT NULL GROUP BY q ORDER BY q LOOP
        INSERT INTO commitq.queue_counters AS c (queue, minute, bucket, completed, failed, discarded, cancelled)
        VALUES (r.q, date_trunc('minute', now()), (pg_backend_pid() % 8)::smallint,
                CASE WHEN p_outcome = 'completed' THEN r.n ELSE 0 END,
                CASE WHEN p_outcome = 'failed' THEN r.n ELSE 0 END,
                CASE WHEN p_outcome = 'discarded' THEN r.n ELSE 0 END,
                CASE WHEN p_outcome = 'cancelled' THEN r.n ELSE 0 END)
        ON CONFLICT (queue, minute, bucket) DO UPDATE
           SET completed = c.completed + excluded.completed,
               failed = c.failed + excluded.failed,
               discarded = c.discarded + excluded.discarded,
               cancelled = c.cancelled + excluded.cancelled;
    END LOOP;
END
$$;

-- The lease check, routed: the job's queue first (_job_queue), then the
-- locking lookup by (id, queue).
CREATE OR REPLACE FUNCTION commitq._locked_lease(p_job_id bigint, p_lease_token bigint)
RETURNS commitq.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j commitq.jobs;
    v_queue text := commitq._job_queue(p_job_id);
    v_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
    SELECT * INTO j FROM commitq.jobs
     WHERE queue = v_queue AND id = p_job_id AND lease_token = p_lease_token
       AND CASE WHEN state = 'running' THEN lease_expires_at > v_now END
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM commitq._lease_error(p_job_id, p_lease_token);
    END IF;
    RETURN j;
END
$$;

-- Completion, routed per queue. Every job of a batch is looked up first
-- (one fan-out read for the batch), then each queue's jobs are deleted by
-- one routed statement.
CREATE OR REPLACE FUNCTION commitq._complete_leased(
    p_ids bigint[], p_tokens bigint[], p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL,
    OUT done bigint[], OUT done_keys text[], OUT done_queues text[],
    OUT taken commitq.claimed_job[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_keep boolean := (SELECT c.keep_completed FROM commitq.config c);
    v_ids bigint[];
    -- Citus allows no volatile function in a distributed UPDATE or DELETE.
    v_now timestamptz := clock_timestamp();
BEGIN
    done := '{}';
    FOR r IN SELECT commitq._job_queue(t.id) AS q, array_agg(t.id) AS ids, array_agg(t.tok) AS toks
               FROM unnest(p_ids, p_tokens) AS t(id, tok)
              GROUP BY 1 ORDER BY 1 LOOP
        CONTINUE WHEN r.q IS NULL;
        IF v_keep THEN
            SELECT coalesce(array_agg(l.id), '{}') INTO v_ids
              FROM (SELECT j.id FROM commitq.jobs j
                     WHERE j.queue = r.q AND j.id = ANY (r.ids)
                       AND (j.id, j.lease_token) IN (SELECT * FROM unnest(r.ids, r.toks))
                       AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > v_now END
                     ORDER BY j.id
                       FOR UPDATE OF j) l;
            PERFORM commitq._move_to_finished(v_ids, 'completed');
        ELSE
            WITH gone AS (
                DELETE FROM commitq.jobs j
                 WHERE j.queue = r.q AND j.id = ANY (r.ids)
                   AND (j.id, j.lease_token) IN (SELECT * FROM unnest(r.ids, r.toks))
                   AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > v_now END
                RETURNING j.id
            )
            SELECT coalesce(array_agg(gone.id), '{}') INTO v_ids FROM gone;
        END IF;
        done := done || v_ids;
        done_queues := done_queues || array_fill(r.q, ARRAY[cardinality(v_ids)]);
        done_keys := done_keys || array_fill(NULL::text, ARRAY[cardinality(v_ids)]);
    END LOOP;
    IF done_queues IS NOT NULL AND done_queues <> '{}' THEN
        PERFORM commitq._count_outcome(done_queues, 'completed');
    END IF;
END
$$;

-- Moving finished jobs, routed per queue.
CREATE OR REPLACE FUNCTION commitq._move_to_finished(p_ids bigint[], p_state commitq.job_state)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_n integer;
BEGIN
    FOR r IN SELECT commitq._job_queue(t.id) AS q, array_agg(t.id) AS ids
               FROM unnest(p_ids) AS t(id) GROUP BY 1 ORDER BY 1 LOOP
        CONTINUE WHEN r.q IS NULL;
        WITH moved AS (
            DELETE FROM commitq.jobs WHERE queue = r.q AND id = ANY (r.ids) RETURNING *
        )
        INSERT INTO commitq.finished_jobs
            (id, queue, kind, args, state, priority, run_at, attempt, max_attempts, lease_token,
             worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, finished_at)
        SELECT id, queue, kind, args, p_state, priority, run_at, attempt, max_attempts, lease_token,
               worker, idempotency_key, concurrency_key, errors, enqueued_at, claimed_at, pg_catalog.now()
          FROM moved;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF p_state <> 'completed' AND v_n > 0 THEN
            PERFORM commitq._count_outcome(array_fill(r.q, ARRAY[v_n]), p_state::text);
        END IF;
        RETURN QUERY SELECT unnest(r.ids);
    END LOOP;
END
$$;

-- The lease errors, routed. Ids are not ordered across nodes (each node
-- takes ids from its own range), so an id that was never handed out and one
-- whose completed job was deleted look alike: both are CQ102 here, never
-- CQ101.
CREATE OR REPLACE FUNCTION commitq._lease_error(p_job_id bigint, p_lease_token bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j record;
    f commitq.job_state;
    v_queue text;
BEGIN
    PERFORM commitq._check(CASE WHEN p_job_id IS NULL THEN 'job_id must not be NULL'
                                WHEN p_lease_token IS NULL THEN 'lease_token must not be NULL' END);
    v_queue := commitq._job_queue(p_job_id);
    SELECT state, lease_token, lease_expires_at INTO j FROM commitq.jobs
     WHERE queue = v_queue AND id = p_job_id;
    IF NOT FOUND THEN
        SELECT state INTO f FROM commitq.finished_jobs WHERE queue = v_queue AND id = p_job_id;
        IF FOUND THEN
            RAISE EXCEPTION 'commitq: stale lease: job % is already %', p_job_id, f
                USING ERRCODE = 'CQ102';
        END IF;
        RAISE EXCEPTION 'commitq: stale lease: job % is no longer live (completed, or finished and pruned)',
            p_job_id USING ERRCODE = 'CQ102';
    END IF;
    IF j.state <> 'running' THEN
        RAISE EXCEPTION 'commitq: stale lease: job % is % now, no longer running under lease token %',
            p_job_id, j.state, p_lease_token USING ERRCODE = 'CQ102';
    END IF;
    IF j.lease_token <> p_lease_token THEN
        RAISE EXCEPTION 'commitq: stale lease: job % is running under lease token %, not %',
            p_job_id, j.lease_token, p_lease_token USING ERRCODE = 'CQ102';
    END IF;
    RAISE EXCEPTION 'commitq: lease expired: lease token % of job % ran out', p_lease_token, p_job_id
        USING ERRCODE = 'CQ103',
              DETAIL = format('The lease ran out at %s.', j.lease_expires_at),
              HINT = 'heartbeat before the lease runs out, or claim with a longer lease';
END
$$;

-- The calls of a worker that knows its job's queue (every claimed job
-- carries it): the queue is handed to _job_queue for this transaction, so no
-- statement reads other shards. They run on the coordinator, each statement
-- routed to the queue's shard (not delegated yet: see docs/citus.md). The
-- calls that take only a job id keep working, at the price of the lookup.
CREATE FUNCTION commitq.complete_in(queue text, job_id bigint, lease_token bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._check(commitq._queue_problem(complete_in.queue));
    PERFORM pg_catalog.set_config('commitq.route_' || complete_in.job_id::text, complete_in.queue, true);
    PERFORM commitq.complete(complete_in.job_id, complete_in.lease_token);
END
$$;

CREATE FUNCTION commitq.fail_in(queue text, job_id bigint, lease_token bigint, error text,
                                retry_in interval DEFAULT NULL, discard boolean DEFAULT false,
                                OUT state commitq.job_state, OUT run_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._check(commitq._queue_problem(fail_in.queue));
    PERFORM pg_catalog.set_config('commitq.route_' || fail_in.job_id::text, fail_in.queue, true);
    SELECT f.state, f.run_at INTO fail_in.state, fail_in.run_at
      FROM commitq.fail(fail_in.job_id, fail_in.lease_token, fail_in.error,
                        fail_in.retry_in, fail_in.discard) f;
END
$$;

CREATE FUNCTION commitq.heartbeat_in(queue text, job_id bigint, lease_token bigint,
                                     extend interval DEFAULT NULL,
                                     OUT lease_expires_at timestamptz, OUT cancel_requested boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._check(commitq._queue_problem(heartbeat_in.queue));
    PERFORM pg_catalog.set_config('commitq.route_' || heartbeat_in.job_id::text, heartbeat_in.queue, true);
    SELECT h.lease_expires_at, h.cancel_requested INTO heartbeat_in.lease_expires_at, heartbeat_in.cancel_requested
      FROM commitq.heartbeat(heartbeat_in.job_id, heartbeat_in.lease_token, heartbeat_in.extend) h;
END
$$;

CREATE FUNCTION commitq.assert_lease_in(queue text, job_id bigint, lease_token bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._check(commitq._queue_problem(assert_lease_in.queue));
    PERFORM pg_catalog.set_config('commitq.route_' || assert_lease_in.job_id::text, assert_lease_in.queue, true);
    PERFORM commitq.assert_lease(assert_lease_in.job_id, assert_lease_in.lease_token);
END
$$;

-- Same grants as the single-node calls they stand for (security.sql's roles).
REVOKE ALL ON FUNCTION commitq._job_queue(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION commitq.complete_in(text, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION commitq.fail_in(text, bigint, bigint, text, interval, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION commitq.heartbeat_in(text, bigint, bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION commitq.assert_lease_in(text, bigint, bigint) FROM PUBLIC;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT a.grantee::regrole::text AS role, p.proname
               FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a
              WHERE p.pronamespace = 'commitq'::regnamespace
                AND p.proname IN ('complete', 'fail', 'heartbeat', 'assert_lease')
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION commitq.%I_in TO %I', r.proname, r.role);
    END LOOP;
END
$$;


-- Concurrency keys are refused at enqueue (see commitq.enqueue above), so
-- the release every fail and snooze makes has nothing to give back; the
-- single-node body's statement on the reference table would otherwise run
-- for nothing on every call.
CREATE OR REPLACE FUNCTION commitq._release_keys(
    p_keys text[], p_queues text[] DEFAULT NULL, p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL)
RETURNS commitq.claimed_job[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF array_remove(p_keys, NULL) <> '{}' THEN
        RAISE EXCEPTION 'commitq: concurrency keys are not supported on a distributed commitq yet'
            USING ERRCODE = '0A000';
    END IF;
    RETURN NULL;
END
$$;

-- heartbeat with the queue in its UPDATE and the new expiry computed first
-- (Citus allows no volatile function in a distributed UPDATE).
CREATE OR REPLACE FUNCTION commitq.heartbeat(
    job_id bigint,
    lease_token bigint,
    extend interval DEFAULT NULL,
    OUT lease_expires_at timestamptz,
    OUT cancel_requested boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j commitq.jobs;
    v_until timestamptz;
BEGIN
    PERFORM commitq._check(CASE
        WHEN heartbeat.extend < interval '1 second' OR heartbeat.extend > interval '7 days'
            THEN 'extend out of range 1 second..7 days' END);
    j := commitq._locked_lease(heartbeat.job_id, heartbeat.lease_token);
    v_until := clock_timestamp() + coalesce(heartbeat.extend, j.lease_interval);
    UPDATE commitq.jobs
       SET lease_expires_at = v_until
     WHERE queue = j.queue AND id = j.id
    RETURNING lease_expires_at, cancel_requested
      INTO heartbeat.lease_expires_at, heartbeat.cancel_requested;
END
$$;

-- maintain(), queue by queue: the queues with work are found by one plain
-- read over all shards (no lock), then each queue's rescue and promotion
-- run as routed statements with SKIP LOCKED, as on one node. Pruning is a
-- plain multi-shard DELETE per table (Citus allows no LIMIT or row locks
-- there), so a backlog is pruned in one call rather than in batches.
-- Concurrency keys are refused at enqueue and the effect ledger stays on
-- the coordinator unused, so their steps are left out. Run it from the
-- coordinator (the engine runs there only; see dev/citus.sh).
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
    q text;
    v_errors jsonb;
    v_final commitq.job_state;
    v_n bigint;
    v_now timestamptz := clock_timestamp();
    v_cutoff timestamptz;
    v_run_at timestamptz;
BEGIN
    SELECT * INTO c FROM commitq.config;
    rescued := 0;
    discarded := 0;
    promoted := 0;
    unblocked := 0;
    pruned_concurrency_keys := 0;

    FOR q IN SELECT DISTINCT x.queue FROM commitq.jobs x
              WHERE (x.state = 'running' AND x.lease_expires_at < v_now)
                 OR (x.state = 'scheduled' AND (x.run_at <= v_now OR x.after_xact IS NOT NULL))
              ORDER BY 1 LOOP
        FOR j IN
            SELECT * FROM commitq.jobs x
             WHERE x.queue = q AND x.state = 'running' AND x.lease_expires_at < v_now
             ORDER BY x.lease_expires_at
             LIMIT c.maintain_batch
               FOR UPDATE SKIP LOCKED
        LOOP
            v_errors := commitq._push_error(j.errors, j.attempt, j.worker,
                format('lease expired at %s: worker %s stopped without completing or failing the job',
                       j.lease_expires_at, j.worker));
            IF j.cancel_requested OR j.attempt >= j.max_attempts THEN
                v_final := CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'discarded' END;
                UPDATE commitq.jobs SET errors = v_errors WHERE queue = q AND id = j.id;
                PERFORM pg_catalog.set_config('commitq.route_' || j.id::text, q, true);
                PERFORM commitq._move_to_finished(ARRAY[j.id], v_final);
                discarded := discarded + 1;
            ELSE
                v_run_at := now() + commitq._backoff(j.attempt);
                UPDATE commitq.jobs
                   SET state = 'scheduled', run_at = v_run_at,
                       errors = v_errors, lease_expires_at = NULL
                 WHERE queue = q AND id = j.id;
                PERFORM commitq._count_outcome(ARRAY[q], 'failed');
                rescued := rescued + 1;
            END IF;
        END LOOP;

        -- Gated jobs whose transaction aborted (or is too old to know).
        FOR j IN
            SELECT * FROM commitq.jobs x
             WHERE x.queue = q AND x.state = 'scheduled' AND x.after_xact IS NOT NULL
               AND coalesce(pg_xact_status(x.after_xact), 'unknown') IN ('aborted', 'unknown')
             LIMIT c.maintain_batch
               FOR UPDATE SKIP LOCKED
        LOOP
            v_errors := commitq._push_error(j.errors, j.attempt, NULL,
                       format('gating transaction %s %s', j.after_xact,
                              coalesce(pg_xact_status(j.after_xact), 'is too old to know')));
            UPDATE commitq.jobs SET errors = v_errors WHERE queue = q AND id = j.id;
            PERFORM pg_catalog.set_config('commitq.route_' || j.id::text, q, true);
            PERFORM commitq._move_to_finished(ARRAY[j.id], 'cancelled');
            discarded := discarded + 1;
        END LOOP;

        UPDATE commitq.jobs u SET state = 'available'
         WHERE u.queue = q
           AND u.id IN (SELECT s.id FROM commitq.jobs s
                         WHERE s.queue = q AND s.state = 'scheduled' AND s.run_at <= now()
                           AND (s.after_xact IS NULL OR commitq._xact_committed(s.after_xact))
                         ORDER BY s.run_at
                         LIMIT c.maintain_batch
                           FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n > 0 THEN
            promoted := promoted + v_n;
            PERFORM commitq._wake(q);
        END IF;
    END LOOP;

    v_cutoff := now() - c.finished_retention;
    DELETE FROM commitq.finished_jobs f WHERE f.finished_at < v_cutoff;
    GET DIAGNOSTICS pruned_jobs = ROW_COUNT;

    -- A key past its window is kept while its job is live: a co-located
    -- join (same queue), so Citus runs it shard by shard.
    v_cutoff := now() - c.idempotency_window;
    DELETE FROM commitq.idempotency_keys k
     WHERE k.created_at < v_cutoff
       AND NOT EXISTS (SELECT 1 FROM commitq.jobs x WHERE x.queue = k.queue AND x.id = k.job_id);
    GET DIAGNOSTICS pruned_keys = ROW_COUNT;

    v_cutoff := now() - interval '10 minutes';
    DELETE FROM commitq.waiting_workers w WHERE w.since < v_cutoff;
    v_cutoff := now() - interval '2 hours';
    DELETE FROM commitq.queue_counters o WHERE o.minute < v_cutoff;

    -- Cron ticks: schedules live on the coordinator; each tick's job is
    -- enqueued to its queue's shard.
    scheduled := commitq._run_schedules(now());
END
$$;

-- fail and snooze with the queue in every statement: on one node they
-- update by id alone, which here would be a multi-shard UPDATE (every node
-- must be up, and each call would write to every shard).
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
    PERFORM pg_catalog.set_config('commitq.route_' || j.id::text, j.queue, true);
    v_errors := commitq._push_error(j.errors, j.attempt, j.worker, fail.error);

    IF fail.discard OR j.cancel_requested OR j.attempt >= j.max_attempts THEN
        fail.state := CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'discarded' END;
        fail.run_at := j.run_at;
        UPDATE commitq.jobs SET errors = v_errors WHERE queue = j.queue AND id = j.id;
        PERFORM commitq._move_to_finished(ARRAY[j.id], fail.state);
        RETURN;
    END IF;

    fail.run_at := now() + coalesce(fail.retry_in, commitq._backoff(j.attempt));
    fail.state := CASE WHEN fail.run_at <= now() THEN 'available' ELSE 'scheduled' END;
    UPDATE commitq.jobs
       SET state = fail.state, run_at = fail.run_at, errors = v_errors,
           lease_expires_at = NULL
     WHERE queue = j.queue AND id = j.id;
    PERFORM commitq._count_outcome(ARRAY[j.queue], 'failed');
    IF fail.state = 'available' THEN
        PERFORM commitq._wake(j.queue);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION commitq.snooze(job_id bigint, lease_token bigint, delay interval)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j commitq.jobs;
    v_run_at timestamptz;
    v_state commitq.job_state;
BEGIN
    PERFORM commitq._check(CASE
        WHEN snooze.delay IS NULL THEN 'delay must not be NULL'
        WHEN snooze.delay < interval '0' OR NOT isfinite(now() + snooze.delay)
            THEN 'delay must be a finite interval >= 0' END);
    j := commitq._locked_lease(snooze.job_id, snooze.lease_token);
    PERFORM pg_catalog.set_config('commitq.route_' || j.id::text, j.queue, true);
    IF j.cancel_requested THEN
        PERFORM commitq._move_to_finished(ARRAY[j.id], 'cancelled');
        RETURN NULL;
    END IF;
    v_run_at := now() + snooze.delay;
    v_state := CASE WHEN v_run_at <= now() THEN 'available' ELSE 'scheduled' END;
    UPDATE commitq.jobs
       SET state = v_state, run_at = v_run_at, attempt = attempt - 1, lease_expires_at = NULL
     WHERE queue = j.queue AND id = j.id;
    IF v_run_at <= now() THEN
        PERFORM commitq._wake(j.queue);
    END IF;
    RETURN v_run_at;
END
$$;
