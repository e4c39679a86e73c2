-- Per-key mutual exclusion: jobs enqueued with the same concurrency_key
-- ('account:42') never run at the same time, or at most max_running of them
-- when a limit says so (commitq.set_concurrency_limit). Keys are global: the
-- same key in two queues is one key.
--
-- How it holds under any number of claimers:
--   * a key's slots live in its commitq.concurrency_keys row, and every
--     change to `running` happens under that row's lock, in the transaction
--     that claims the job or ends its run (complete, fail, snooze, lease
--     rescue). The count is as transactional as the jobs themselves.
--   * claim takes key rows with SKIP LOCKED: a key busy in another
--     transaction is passed over, never waited for, so one hot key cannot
--     stall claimers of other keys.
--   * a job whose key is full is parked in state 'blocked', outside the claim
--     index, so claim does not walk past it again and again (no starvation of
--     other keys by a long backlog of one). Each slot given back promotes the
--     next blocked job of its key, under the same row lock that parking
--     takes, so no wake-up is lost between a claimer parking a job and a
--     worker freeing the slot.
--   * the slot is given back when the job stops running for any reason:
--     complete, fail (retry, discard, cancel), snooze, lease expiry. A worker
--     whose lease expired loses its slot with its lease, exactly like its
--     right to complete the job: its late writes are fenced (assert_lease),
--     and its key may already run its next job.

-- The limit of a key: an exact entry of concurrency_limits, else the longest
-- matching prefix entry, else 1.
CREATE FUNCTION commitq._key_limit(p_key text) RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce(
        (SELECT l.max_running FROM commitq.concurrency_limits l
          WHERE l.pattern = p_key
             OR (pg_catalog.right(l.pattern, 1) = '*'
                 AND pg_catalog.starts_with(p_key, pg_catalog.left(l.pattern, -1)))
          ORDER BY l.pattern = p_key DESC, pg_catalog.length(l.pattern) DESC
          LIMIT 1),
        1);
END
$$;

-- The first half of the advisory lock taken while creating a key's row:
-- constant, so that commitq's locks keep out of the application's way unless
-- it happens to use the same number.
CREATE FUNCTION commitq._key_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1668377457 $$;  -- 'cqkq' in ASCII

-- The keyed half of commitq.claim. p_ids are available jobs with a
-- concurrency key, in claim order, already locked by the caller (p_keys
-- their keys); p_want is the room left in the batch, and p_more says whether
-- the queue may hold more jobs (the caller's pick was full).
--
-- Each round is one statement: pick more jobs of the queue, lock the key
-- rows of all candidates that we can (SKIP LOCKED) to see their free slots,
-- claim the first p_want candidates that fit, park the jobs of full keys as
-- 'blocked' (outside the claim index), and count both in the key rows. Jobs
-- of a key busy in another transaction are passed over until we commit; a
-- key without a row gets one and its jobs are tried again.
--
-- Rounds pick a few jobs more than they need: in a queue of keyed jobs a
-- batch usually holds a job whose key is running, or two jobs of one key,
-- and without the margin nearly every claim needed a second round, and
-- often a third, to fill its batch. Candidates that fit but are beyond
-- p_want are left available (locked by us until we commit).
CREATE FUNCTION commitq._claim_keyed(
    p_queue text, p_worker text, p_lease interval,
    p_ids bigint[], p_keys text[], p_want integer, p_more boolean)
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_ids bigint[] := p_ids;
    v_keys text[] := p_keys;
    -- Jobs of ours that a pick must not return: the caller's, until round 1
    -- has them, then those of keys busy elsewhere (v_passed).
    v_skip bigint[] := p_ids;
    v_passed bigint[] := '{}';
    -- Jobs to pick from the queue this round: round 1 has the caller's.
    v_pick integer := CASE WHEN p_more THEN p_want / 4 ELSE 0 END;
    v_picked integer;
    v_claimed commitq.claimed_job[];
    v_left_ids bigint[];
    v_left_keys text[];
    v_missing text[];
    v_created text[];
BEGIN
    FOR round IN 1..4 LOOP
        WITH picked AS (
            -- A job handed its key's slot goes as one without a key (see commitq.claim).
            SELECT x.id, CASE WHEN NOT x.slot_held THEN x.concurrency_key END AS ck,
                   x.priority, x.run_at FROM commitq.jobs x
             WHERE x.queue = p_queue AND x.state = 'available' AND x.id <> ALL (v_skip)
               -- Paused since the caller's pick (pause.sql): no more rounds.
               AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = p_queue)
             ORDER BY x.priority, x.run_at, x.id
             LIMIT v_pick
               FOR UPDATE SKIP LOCKED
        ), cand AS (
            SELECT t.id, t.ck, t.ord FROM unnest(v_ids, v_keys) WITH ORDINALITY AS t(id, ck, ord)
            UNION ALL
            SELECT picked.id, picked.ck,
                   coalesce(cardinality(v_ids), 0)
                   + row_number() OVER (ORDER BY picked.priority, picked.run_at, picked.id)
              FROM picked
        ), keys AS (
            SELECT k.key, k.max_running - k.running AS free
              FROM commitq.concurrency_keys k
             -- `= ANY (ARRAY(...))` here and below: an index lookup in any
             -- plan (see commitq.claim).
             WHERE k.key = ANY (ARRAY(SELECT cand.ck FROM cand WHERE cand.ck IS NOT NULL))
               FOR UPDATE SKIP LOCKED
        ), ranked AS (
            SELECT cand.id, cand.ck, cand.ord,
                   row_number() OVER (PARTITION BY cand.ck ORDER BY cand.ord) <= keys.free AS fits
              FROM cand JOIN keys ON keys.key = cand.ck
        ), chosen AS (
            -- The first p_want candidates that may run now, in claim order.
            SELECT e.id, e.ck FROM (
                    SELECT cand.id, NULL::text AS ck, cand.ord FROM cand WHERE cand.ck IS NULL
                    UNION ALL
                    SELECT ranked.id, ranked.ck, ranked.ord FROM ranked WHERE ranked.fits) e
             ORDER BY e.ord
             LIMIT p_want
        ), per_key AS (
            -- Counted once per key: a count per key row, as a subquery in
            -- SET, would scan the whole batch for every key.
            SELECT s.ck, count(*) FILTER (WHERE s.runs) AS run, count(*) FILTER (WHERE NOT s.runs) AS park
              FROM (SELECT chosen.ck, true AS runs FROM chosen WHERE chosen.ck IS NOT NULL
                    UNION ALL
                    SELECT ranked.ck, false FROM ranked WHERE NOT ranked.fits) s
             GROUP BY s.ck
        ), counted AS (
            UPDATE commitq.concurrency_keys k
               SET running = k.running + per_key.run,
                   blocked = k.blocked + per_key.park
              FROM per_key
             WHERE k.key = ANY (ARRAY(SELECT per_key.ck FROM per_key))
               AND k.key = per_key.ck
        ), parked AS (
            UPDATE commitq.jobs j SET state = 'blocked'
             WHERE j.id = ANY (ARRAY(SELECT ranked.id FROM ranked WHERE NOT ranked.fits))
        ), claimed AS (
            UPDATE commitq.jobs j
               SET state = 'running',
                   attempt = j.attempt + 1,
                   lease_token = j.lease_token + 1,
                   lease_expires_at = now() + p_lease,
                   lease_interval = p_lease,
                   worker = p_worker,
                   claimed_at = now(),
                   slot_held = false
             WHERE j.id = ANY (ARRAY(SELECT chosen.id FROM chosen))
            RETURNING commitq._claimed_row(j) AS r
        ), left_over AS (
            -- Keyed candidates whose key row was busy, or missing.
            SELECT cand.id, cand.ck, cand.ord FROM cand
             WHERE cand.ck IS NOT NULL AND cand.id <> ALL (ARRAY(SELECT ranked.id FROM ranked))
        )
        SELECT (SELECT array_agg(claimed.r) FROM claimed),
               (SELECT count(*) FROM picked),
               (SELECT array_agg(left_over.id ORDER BY left_over.ord) FROM left_over),
               (SELECT array_agg(left_over.ck ORDER BY left_over.ord) FROM left_over)
          INTO v_claimed, v_picked, v_left_ids, v_left_keys;

        IF v_claimed IS NOT NULL THEN
            RETURN QUERY SELECT * FROM unnest(v_claimed);
            p_want := p_want - cardinality(v_claimed);
        END IF;
        EXIT WHEN p_want <= 0;
        IF v_pick > 0 THEN
            p_more := v_picked = v_pick;
        END IF;

        -- First claim of a key: create its row; the next round picks its
        -- jobs again (they stay locked by us meanwhile). Jobs of keys busy
        -- elsewhere are passed over until we commit.
        v_created := NULL;
        IF v_left_keys IS NOT NULL THEN
            SELECT array_agg(DISTINCT k) INTO v_missing FROM unnest(v_left_keys) k
             WHERE k <> ALL (ARRAY(SELECT c.key FROM commitq.concurrency_keys c
                                    WHERE c.key = ANY (v_left_keys)));
            IF v_missing IS NOT NULL THEN
                v_created := commitq._create_keys(v_missing);
            END IF;
            v_passed := v_passed || coalesce(
                (SELECT array_agg(t.id) FROM unnest(v_left_ids, v_left_keys) AS t(id, ck)
                  WHERE t.ck <> ALL (coalesce(v_created, '{}'))), '{}');
        END IF;
        -- More of the queue only when it may hold more: the next jobs in
        -- claim order, keyed or not, and the margin again.
        EXIT WHEN v_created IS NULL AND NOT p_more;
        v_ids := NULL;
        v_keys := NULL;
        v_skip := v_passed;
        v_pick := p_want + p_want / 4;
    END LOOP;
END
$$;

-- Make up to p_counts[i] blocked jobs of key p_keys[i] available, in claim
-- order, each holding one of the key's free slots (slot_held, counted in
-- `running`), and wake their queues. Handing the slot over here, rather than
-- freeing it for whichever claimer comes first, means the promoted job is
-- claimed like a job without a key (no key row to lock or write) and cannot
-- lose its turn to a later job of the key, only to be parked again. The
-- caller holds the keys' row locks, and calls this in a statement of its own
-- after taking them, so that at READ COMMITTED it sees the jobs a claimer
-- parked while the caller waited for a lock.
--
-- With p_worker, a promoted job whose queue is p_take_queues[i] is claimed
-- for p_worker under a new lease of p_lease instead (see complete_and_take):
-- it goes straight from blocked to running, one write instead of two, and
-- comes back in `taken`. Returns how many jobs got a slot, taken ones
-- included.
CREATE FUNCTION commitq._promote_blocked(
    p_keys text[], p_counts integer[],
    p_take_queues text[] DEFAULT NULL, p_worker text DEFAULT NULL, p_lease interval DEFAULT NULL,
    OUT promoted integer, OUT taken commitq.claimed_job[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queues text[];
BEGIN
    WITH next AS (
        -- A job of a paused queue (pause.sql) is made available, not taken;
        -- so is one under flow control (a rate limit of its queue or of
        -- keys, or a fair queue: flow_control.sql), for a claim to hand out
        -- under the rules.
        SELECT b.id, p_worker IS NOT NULL AND b.queue = f.take_queue
                     AND NOT EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = b.queue)
                     AND NOT EXISTS (SELECT 1 FROM commitq.rate_limits l
                                      WHERE l.pattern = 'queue:' || b.queue
                                         OR NOT starts_with(l.pattern, 'queue:'))
                     AND NOT EXISTS (SELECT 1 FROM commitq.fair_queues fq WHERE fq.queue = b.queue) AS take
          FROM unnest(p_keys, p_counts, p_take_queues) AS f(key, n, take_queue)
          CROSS JOIN LATERAL (
                SELECT x.id, x.queue FROM commitq.jobs x
                 WHERE x.concurrency_key = f.key AND x.state = 'blocked'
                 ORDER BY x.priority, x.run_at, x.id
                 LIMIT greatest(f.n, 0)) b
    ), handed AS (
        -- A blocked job an operator is cancelling right now is waited for,
        -- and skipped if it is gone. The state test is a CASE so that the
        -- plan looks the jobs up by primary key, never by a scan of
        -- jobs_blocked_idx (see _locked_lease).
        UPDATE commitq.jobs j SET state = 'available', slot_held = true
         WHERE j.id = ANY (ARRAY(SELECT next.id FROM next WHERE NOT next.take))
           AND CASE WHEN j.state = 'blocked' THEN true END
        RETURNING j.queue, j.concurrency_key
    ), claimed AS (
        -- The same claim as commitq.claim's, for the jobs taken.
        UPDATE commitq.jobs j
           SET state = 'running',
               attempt = j.attempt + 1,
               lease_token = j.lease_token + 1,
               lease_expires_at = now() + p_lease,
               lease_interval = p_lease,
               worker = p_worker,
               claimed_at = now(),
               slot_held = false
         WHERE j.id = ANY (ARRAY(SELECT next.id FROM next WHERE next.take))
           AND CASE WHEN j.state = 'blocked' THEN true END
        RETURNING j.concurrency_key, commitq._claimed_row(j) AS r
    ), per_key AS (
        SELECT s.key, count(*) AS n
          FROM (SELECT handed.concurrency_key AS key FROM handed
                UNION ALL
                SELECT claimed.concurrency_key FROM claimed) s
         GROUP BY s.key
    ), counted AS (
        UPDATE commitq.concurrency_keys c
           SET blocked = c.blocked - per_key.n,
               running = c.running + per_key.n
          FROM per_key
         WHERE c.key = ANY (ARRAY(SELECT per_key.key FROM per_key))
           AND c.key = per_key.key
    )
    SELECT (SELECT array_agg(DISTINCT handed.queue) FROM handed),
           (SELECT count(*) FROM handed) + (SELECT count(*) FROM claimed),
           (SELECT array_agg(claimed.r ORDER BY (claimed.r).priority, (claimed.r).run_at, (claimed.r).job_id)
              FROM claimed)
      INTO v_queues, promoted, taken;
    IF v_queues IS NOT NULL THEN
        PERFORM commitq._wake(q) FROM unnest(v_queues) q;
    END IF;
END
$$;

-- Give back the slots of jobs that stopped running: one element per job that
-- left state 'running' (NULLs, for jobs without a key, are ignored), and
-- promote one blocked job of its key per slot given back. The common case,
-- no job of the key waiting, is the one UPDATE. With p_worker, p_queues[i]
-- is the queue of job i, and a promoted job of that queue is claimed for
-- p_worker (see _promote_blocked); returns the jobs so taken.
CREATE FUNCTION commitq._release_keys(
    p_keys text[], p_queues text[] DEFAULT NULL, p_worker text DEFAULT NULL,
    p_lease interval DEFAULT NULL)
RETURNS commitq.claimed_job[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_keys text[];
    v_free integer[];
    v_take_queues text[];
BEGIN
    -- The UPDATE waits for a claimer that is parking jobs of these keys
    -- right now, and then reads the row as that claimer left it: `blocked`
    -- counts the jobs it parked. (Two transactions can only both release the
    -- same two keys when their limits are above 1; in the rare case that
    -- they then deadlock, PostgreSQL aborts one, and its jobs run again after
    -- their leases expire.)
    WITH per_key AS (
        -- Counted once per key, not by a scan of p_keys for every key row.
        -- (Should one batch release a key from two queues, the next job of
        -- the key is taken only when it is in the first of them.)
        SELECT t.k AS key, count(*) AS n, min(t.q) AS take_queue
          FROM unnest(p_keys, p_queues) AS t(k, q)
         WHERE t.k IS NOT NULL
         GROUP BY t.k
    ), given AS (
        UPDATE commitq.concurrency_keys c
           SET running = c.running - per_key.n
          FROM per_key
         -- `= ANY`: an index lookup in any plan (see commitq.claim)
         WHERE c.key = ANY (p_keys) AND c.key = per_key.key
        RETURNING c.key, c.blocked, least(per_key.n, c.max_running - c.running) AS free,
                  per_key.take_queue
    )
    SELECT array_agg(given.key ORDER BY given.key), array_agg(given.free ORDER BY given.key),
           array_agg(given.take_queue ORDER BY given.key)
      INTO v_keys, v_free, v_take_queues
      FROM given WHERE given.blocked > 0 AND given.free > 0;
    -- Most releases find no job waiting, and stop here.
    IF v_keys IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (commitq._promote_blocked(v_keys, v_free, v_take_queues, p_worker, p_lease)).taken;
END
$$;

-- Create the rows of keys claimed for the first time; returns the keys
-- created. Two claimers creating the same key would make the second wait
-- for the first to commit, so creating a key takes a transaction-level
-- advisory lock on it first (in commitq's own lock space), and a claimer that
-- cannot get it passes the key over, as it does a locked key row.
CREATE FUNCTION commitq._create_keys(p_keys text[]) RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_created text[];
BEGIN
    WITH created AS (
        INSERT INTO commitq.concurrency_keys (key, max_running)
        SELECT k, commitq._key_limit(k) FROM unnest(p_keys) k
         WHERE pg_try_advisory_xact_lock(commitq._key_lock_space(), hashtext(k))
        ON CONFLICT (key) DO NOTHING
        RETURNING key
    )
    SELECT array_agg(created.key) INTO v_created FROM created;
    RETURN v_created;
END
$$;

-- Let up to max_running jobs of a key, or of every key starting with a
-- prefix (pattern 'tenant:*'; '*' alone sets the default), run at once; NULL max_running removes the
-- entry (back to the default of 1). Applies at once to keys in use: a raised
-- limit promotes blocked jobs; a lowered one lets running jobs finish and
-- holds the next ones back. Returns how many keys in use it changed.
CREATE FUNCTION commitq.set_concurrency_limit(pattern text, max_running integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_prefix text := CASE WHEN right(set_concurrency_limit.pattern, 1) = '*'
                          THEN left(set_concurrency_limit.pattern, -1) END;
    v_key text;
    v_free integer;
    v_changed integer := 0;
BEGIN
    PERFORM commitq._check(CASE
        WHEN set_concurrency_limit.pattern IS NULL THEN 'pattern must not be NULL'
        WHEN set_concurrency_limit.max_running NOT BETWEEN 1 AND 100000
            THEN format('max_running %s out of range 1..100000', set_concurrency_limit.max_running)
        END);
    PERFORM commitq._check(commitq._job_problem('q', 'k', 'object', 0, 0, 1, true, NULL,
                                                set_concurrency_limit.pattern));

    IF set_concurrency_limit.max_running IS NULL THEN
        DELETE FROM commitq.concurrency_limits l WHERE l.pattern = set_concurrency_limit.pattern;
    ELSE
        INSERT INTO commitq.concurrency_limits AS l (pattern, max_running)
        VALUES (set_concurrency_limit.pattern, set_concurrency_limit.max_running)
        ON CONFLICT (pattern) DO UPDATE SET max_running = excluded.max_running;
    END IF;

    -- Keys in use that the pattern covers, in key order (the lock order of
    -- _release_keys); each takes the limit that now applies to it.
    FOR v_key IN
        SELECT c.key FROM commitq.concurrency_keys c
         WHERE c.key = set_concurrency_limit.pattern
            OR (v_prefix IS NOT NULL AND starts_with(c.key, v_prefix))
         ORDER BY c.key
           FOR UPDATE
    LOOP
        UPDATE commitq.concurrency_keys c
           SET max_running = commitq._key_limit(c.key)
         WHERE c.key = v_key AND c.max_running <> commitq._key_limit(c.key)
        RETURNING c.max_running - c.running INTO v_free;
        IF FOUND THEN
            v_changed := v_changed + 1;
            PERFORM commitq._promote_blocked(ARRAY[v_key], ARRAY[v_free]);
        END IF;
    END LOOP;
    RETURN v_changed;
END
$$;

-- maintain()'s part: promote blocked jobs of keys that have free slots, and
-- forget idle keys. Releases, cancel and set_concurrency_limit hand free
-- slots on at once; this is the safety net for a slot none of them handed on.
CREATE FUNCTION commitq._maintain_keys(p_batch integer, OUT promoted bigint, OUT pruned bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    promoted := 0;
    FOR r IN
        SELECT c.key, c.max_running - c.running AS free
          FROM commitq.concurrency_keys c
         WHERE c.running < c.max_running AND c.blocked > 0
           -- Blocked while another job of the key is available to claim is
           -- normal: that job will take the slot.
           AND NOT EXISTS (SELECT 1 FROM commitq.jobs a
                            WHERE a.concurrency_key = c.key AND a.state = 'available')
         ORDER BY c.key
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    LOOP
        promoted := promoted + (commitq._promote_blocked(ARRAY[r.key], ARRAY[r.free])).promoted;
    END LOOP;

    -- ARRAY(...) runs the pick once: as an IN (...) semi-join the planner
    -- may run it again per row, and LIMIT then bounds each run, not the step.
    WITH gone AS (
        DELETE FROM commitq.concurrency_keys c
         WHERE c.key = ANY (ARRAY(SELECT o.key FROM commitq.concurrency_keys o
                                   WHERE o.running = 0 AND o.blocked = 0
                                     AND NOT EXISTS (SELECT 1 FROM commitq.jobs b
                                                      WHERE b.concurrency_key = o.key AND b.state = 'blocked')
                                   LIMIT p_batch
                                     FOR UPDATE SKIP LOCKED))
        RETURNING 1
    )
    SELECT count(*) INTO pruned FROM gone;
END
$$;
