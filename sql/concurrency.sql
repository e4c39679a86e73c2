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
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT l.max_running FROM commitq.concurrency_limits l
          WHERE l.pattern = p_key
             OR (pg_catalog.right(l.pattern, 1) = '*'
                 AND pg_catalog.starts_with(p_key, pg_catalog.left(l.pattern, -1)))
          ORDER BY l.pattern = p_key DESC, pg_catalog.length(l.pattern) DESC
          LIMIT 1),
        1)
$$;

-- The first half of the advisory lock taken while creating a key's row:
-- constant, so that commitq's locks keep out of the application's way unless
-- it happens to use the same number.
CREATE FUNCTION commitq._key_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1668377457 $$;  -- 'cqkq' in ASCII

-- Make up to p_n blocked jobs of a key available, in claim order, and wake
-- their queues. The caller holds the key's row lock.
CREATE FUNCTION commitq._promote_blocked(p_key text, p_n integer) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queues text[];
    v_n integer;
BEGIN
    IF p_n <= 0 THEN
        RETURN 0;
    END IF;
    WITH next AS (
        SELECT b.id FROM commitq.jobs b
         WHERE b.concurrency_key = p_key AND b.state = 'blocked'
         ORDER BY b.priority, b.run_at, b.id
         LIMIT p_n
           FOR UPDATE SKIP LOCKED
    ), promoted AS (
        UPDATE commitq.jobs j SET state = 'available'
          FROM next WHERE j.id = next.id
        RETURNING j.queue
    )
    SELECT array_agg(DISTINCT promoted.queue), count(*) INTO v_queues, v_n FROM promoted;
    IF v_n > 0 THEN
        PERFORM commitq._wake(q) FROM unnest(v_queues) q;
    END IF;
    RETURN v_n;
END
$$;

-- Give back the slots of jobs that stopped running: one element per job that
-- left state 'running' (NULLs, for jobs without a key, are ignored). Key rows
-- are locked in key order, so two releases of overlapping keys cannot
-- deadlock. Each slot given back promotes one blocked job of its key.
CREATE FUNCTION commitq._release_keys(p_keys text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_free integer;
BEGIN
    FOR r IN
        SELECT k AS key, count(*)::integer AS n
          FROM unnest(p_keys) k
         WHERE k IS NOT NULL
         GROUP BY k
         ORDER BY k
    LOOP
        UPDATE commitq.concurrency_keys c
           SET running = greatest(c.running - r.n, 0)
         WHERE c.key = r.key
        RETURNING least(r.n, c.max_running - c.running) INTO v_free;
        -- A separate statement, so that at READ COMMITTED it sees the jobs a
        -- claimer parked while we waited for the row lock. (Fewer than n
        -- when the limit was lowered while they ran.)
        IF FOUND THEN
            PERFORM commitq._promote_blocked(r.key, v_free);
        END IF;
    END LOOP;
END
$$;

-- The keyed half of claim: up to p_want available jobs of the queue that
-- have a concurrency key, each only if its key has a free slot. Jobs whose
-- key is full are parked as 'blocked'; jobs whose key another transaction is
-- claiming or releasing right now are left for the next claim.
CREATE FUNCTION commitq._claim_keyed(p_queue text, p_worker text, p_want integer, p_lease interval)
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_keys text[];
    v_grant bigint[];
    v_park bigint[];
    v_passed bigint[] := '{}';
    v_got integer;
BEGIN
    -- A few rounds: parked jobs leave the index, so each round sees new
    -- candidates; bounded, so a claim stays short whatever the backlog.
    FOR round IN 1..4 LOOP
        EXIT WHEN p_want <= 0;
        SELECT array_agg(c.id ORDER BY c.ord), array_agg(c.concurrency_key ORDER BY c.ord)
          INTO v_ids, v_keys
          FROM (SELECT j.id, j.concurrency_key,
                       row_number() OVER (ORDER BY j.priority, j.run_at, j.id) AS ord
                  FROM (SELECT x.id, x.concurrency_key, x.priority, x.run_at FROM commitq.jobs x
                         WHERE x.queue = p_queue AND x.state = 'available'
                           AND x.concurrency_key IS NOT NULL
                           AND x.id <> ALL (v_passed)
                         ORDER BY x.priority, x.run_at, x.id
                         LIMIT p_want
                           FOR UPDATE SKIP LOCKED) j) c;
        EXIT WHEN v_ids IS NULL;

        -- First claim of a key: create its row. Two claimers creating the
        -- same key would make the second wait for the first to commit, so
        -- creating a key takes a transaction-level advisory lock on it first
        -- (in commitq's own lock space), and a claimer that cannot get it
        -- passes the key over, as it does a locked key row.
        INSERT INTO commitq.concurrency_keys (key, max_running)
        SELECT n.k, commitq._key_limit(n.k)
          FROM (SELECT DISTINCT k FROM unnest(v_keys) k
                 WHERE NOT EXISTS (SELECT 1 FROM commitq.concurrency_keys c WHERE c.key = k)) n
         WHERE pg_try_advisory_xact_lock(commitq._key_lock_space(), hashtext(n.k))
        ON CONFLICT (key) DO NOTHING;

        -- The keys we can lock now, with their free slots; within a key the
        -- earliest jobs get the slots and the rest are parked; the earliest
        -- p_want jobs that got a slot are claimed.
        WITH keys AS (
            SELECT c.key, c.max_running - c.running AS free
              FROM commitq.concurrency_keys c
             WHERE c.key = ANY (v_keys)
               FOR UPDATE SKIP LOCKED
        ), ranked AS (
            SELECT t.id, t.ord, keys.free,
                   row_number() OVER (PARTITION BY t.key ORDER BY t.ord) AS rk
              FROM unnest(v_ids, v_keys) WITH ORDINALITY AS t(id, key, ord)
              JOIN keys ON keys.key = t.key
        ), granted AS (
            SELECT ranked.id, ranked.ord,
                   row_number() OVER (ORDER BY ranked.ord) AS n
              FROM ranked WHERE ranked.rk <= ranked.free
        )
        SELECT (SELECT array_agg(g.id ORDER BY g.ord) FROM granted g WHERE g.n <= p_want),
               (SELECT array_agg(r.id) FROM ranked r WHERE r.rk > r.free)
          INTO v_grant, v_park;

        IF v_park IS NOT NULL THEN
            UPDATE commitq.jobs SET state = 'blocked' WHERE id = ANY (v_park);
        END IF;
        -- Candidates not claimed or parked (their key is busy in another
        -- transaction, or the batch is full) stay available, locked by us
        -- until we commit: do not pick them again in the next round.
        v_passed := v_passed || v_ids;

        IF v_grant IS NOT NULL THEN
            UPDATE commitq.concurrency_keys c
               SET running = c.running + g.n
              FROM (SELECT j.concurrency_key AS key, count(*)::integer AS n
                      FROM commitq.jobs j WHERE j.id = ANY (v_grant)
                     GROUP BY j.concurrency_key) g
             WHERE c.key = g.key;

            RETURN QUERY
            UPDATE commitq.jobs j
               SET state = 'running',
                   attempt = j.attempt + 1,
                   lease_token = j.lease_token + 1,
                   lease_expires_at = now() + p_lease,
                   lease_interval = p_lease,
                   worker = p_worker,
                   claimed_at = now()
             WHERE j.id = ANY (v_grant)
            RETURNING j.id, j.queue, j.kind, j.args, j.attempt, j.max_attempts, j.lease_token,
                      j.lease_expires_at, j.priority, j.run_at, j.enqueued_at, j.concurrency_key,
                      j.idempotency_key, j.errors;
            GET DIAGNOSTICS v_got = ROW_COUNT;
            p_want := p_want - v_got;
        END IF;
    END LOOP;
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
            PERFORM commitq._promote_blocked(v_key, v_free);
        END IF;
    END LOOP;
    RETURN v_changed;
END
$$;

-- maintain()'s part: promote blocked jobs of keys that have free slots (a
-- limit was raised, or an available job of the key was cancelled and so
-- never used the slot it was promoted for), and forget idle keys.
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
         WHERE c.running < c.max_running
           AND EXISTS (SELECT 1 FROM commitq.jobs b
                        WHERE b.concurrency_key = c.key AND b.state = 'blocked')
           -- Blocked while another job of the key is available to claim is
           -- normal: that job will take the slot.
           AND NOT EXISTS (SELECT 1 FROM commitq.jobs a
                            WHERE a.concurrency_key = c.key AND a.state = 'available')
         ORDER BY c.key
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    LOOP
        promoted := promoted + commitq._promote_blocked(r.key, r.free);
    END LOOP;

    WITH gone AS (
        DELETE FROM commitq.concurrency_keys c
         WHERE c.key IN (SELECT o.key FROM commitq.concurrency_keys o
                          WHERE o.running = 0
                            AND NOT EXISTS (SELECT 1 FROM commitq.jobs b
                                             WHERE b.concurrency_key = o.key AND b.state = 'blocked')
                          LIMIT p_batch
                            FOR UPDATE SKIP LOCKED)
        RETURNING 1
    )
    SELECT count(*) INTO pruned FROM gone;
END
$$;
