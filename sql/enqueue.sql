-- Enqueue: jobs are rows inserted in the caller's own transaction, so a job
-- becomes claimable exactly when the caller's data commits, and vanishes with
-- it on rollback.

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

-- Raise CQ001 for job `ord` of a batch if it has a problem; true otherwise.
-- Called only for the rows the cheap inline checks of the bulk path cannot
-- clear, so the common row pays no PL/pgSQL call.
CREATE FUNCTION commitq._batch_job_ok(
    p_ord bigint, p_queue text, p_kind text, p_args jsonb, p_priority integer,
    p_run_at timestamptz, p_max_attempts integer, p_ikey text, p_ckey text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problem text := commitq._job_problem(p_queue, p_kind, jsonb_typeof(p_args), pg_column_size(p_args),
                                           p_priority, p_max_attempts, isfinite(p_run_at), p_ikey, p_ckey);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'commitq: job % of the batch: %', p_ord, v_problem
            USING ERRCODE = 'CQ001', DETAIL = 'nothing in the batch was enqueued';
    END IF;
    RETURN true;
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
CREATE FUNCTION commitq.enqueue_many(jobs jsonb)
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

-- Whether transaction `x` committed and is visible to a snapshot taken now:
-- the commit log can say "committed" a moment before a new snapshot stops
-- counting the transaction as running, and a job gated on it must see its
-- rows.
CREATE FUNCTION commitq._xact_committed(x xid8) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.pg_xact_status(x) = 'committed'
       AND pg_catalog.pg_visible_in_snapshot(x, pg_catalog.pg_current_snapshot());
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
