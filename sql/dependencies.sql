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
