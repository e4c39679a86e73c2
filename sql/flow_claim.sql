-- The claim of a queue under flow control (rules in flow_control.sql):
-- commitq.claim hands its work here when any rate limit exists or the queue
-- is fair. Paused queues, concurrency keys and their slots work as in the
-- usual claim; the keyed jobs go through _claim_keyed (concurrency_keys.sql)
-- with their key rows already locked, so that it claims exactly the jobs
-- chosen here and picks none of its own.

-- The jobs of a fair queue to hand out next, locked, in hand-out order: the
-- first job of each key, then the second of each, and so on (each round in
-- claim order), over up to p_want keys with the prefix. So a key with a
-- long backlog takes one place per round, and a key with one job waits at
-- most one claim behind it. Which keys a claim visits rotates: the session
-- keeps the last key it visited (setting commitq.fair_cursor, 'queue key')
-- and its next claim starts after it, wrapping round, so with more keys than
-- a claim takes every key is visited in turn. The setting only orders the
-- session's own claims.
--
-- The keys are found by a walk of jobs_fair_idx, one descent per key, and
-- each descent lands on its key's first job in claim order (the index is in
-- that order within a key), so when there are at least as many keys as the
-- claim wants (one job per key) the walk itself is the pick. Only with
-- fewer keys is each key's share looked up on its own. The walk is written
-- here rather than in an SQL function so that its plan is cached with this
-- function's; it starts strictly after the cursor's key as an index bound,
-- never by filtering out that key's (possibly long) run of entries.
CREATE FUNCTION commitq._fair_pick(p_queue text, p_prefix text, p_want integer) RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor text := pg_catalog.current_setting('commitq.fair_cursor', true);
    v_after text;
    v_n integer;
    -- The keys visited, in visiting order, and each one's first job.
    v_keys text[] := '{}';
    v_firsts bigint[] := '{}';
    v_share integer;
    v_ids bigint[];
BEGIN
    IF starts_with(v_cursor, p_queue || ' ') THEN
        v_after := substr(v_cursor, length(p_queue) + 2);
    END IF;
    -- Up to p_want keys after the cursor, then from the first key of the
    -- prefix when that was not enough (the second pass, v_after NULL).
    FOR pass IN 1..2 LOOP
        v_n := p_want - cardinality(v_keys);
        EXIT WHEN v_n <= 0 OR (pass = 2 AND v_after IS NULL);
        IF pass = 2 THEN
            v_after := NULL;
        END IF;
        SELECT v_keys || coalesce(array_agg(w.key ORDER BY w.n), '{}'),
               v_firsts || coalesce(array_agg(w.id ORDER BY w.n), '{}')
          INTO v_keys, v_firsts
          FROM (
            WITH RECURSIVE k(key, id, n) AS (
                -- From the first key of the prefix...
                (SELECT j.concurrency_key COLLATE "C", j.id, 1 FROM commitq.jobs j
                  WHERE v_after IS NULL
                    AND j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                    AND j.concurrency_key COLLATE "C" >= p_prefix COLLATE "C"
                  ORDER BY j.concurrency_key COLLATE "C", j.priority, j.run_at, j.id
                  LIMIT 1)
                UNION ALL
                -- ...or from the cursor's key, itself not visited.
                SELECT v_after COLLATE "C", NULL::bigint, 0 WHERE v_after IS NOT NULL
                UNION ALL
                SELECT x.key, x.id, k.n + 1
                  FROM k CROSS JOIN LATERAL (
                        SELECT j.concurrency_key COLLATE "C" AS key, j.id FROM commitq.jobs j
                         WHERE j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                           AND j.concurrency_key COLLATE "C" > k.key
                         ORDER BY j.concurrency_key COLLATE "C", j.priority, j.run_at, j.id
                         LIMIT 1) x
                 WHERE k.n < v_n AND (k.n = 0 OR pg_catalog.starts_with(k.key, p_prefix))
            )
            SELECT k.key, k.id, k.n FROM k
             WHERE k.n > 0 AND pg_catalog.starts_with(k.key, p_prefix)
               AND k.key <> ALL (v_keys)) w;
    END LOOP;
    IF v_keys = '{}' THEN
        RETURN '{}';
    END IF;
    PERFORM pg_catalog.set_config('commitq.fair_cursor',
        CASE WHEN cardinality(v_keys) >= p_want THEN p_queue || ' ' || v_keys[cardinality(v_keys)] ELSE '' END,
        false);

    v_share := (p_want + cardinality(v_keys) - 1) / cardinality(v_keys);
    IF v_share = 1 THEN
        -- One round: the keys' first jobs, in claim order, passing over
        -- jobs others hold.
        SELECT array_agg(l.id ORDER BY l.priority, l.run_at, l.id) INTO v_ids
          FROM (SELECT j.id, j.priority, j.run_at FROM commitq.jobs j
                 WHERE j.id = ANY (v_firsts) AND j.state = 'available'
                   FOR UPDATE SKIP LOCKED) l;
        RETURN coalesce(v_ids, '{}');
    END IF;

    -- Each key's first jobs, as many as a fair share of the claim, then
    -- round by round; locked in that order, passing over jobs others hold.
    WITH per_key AS (
        SELECT x.id, x.rnd, x.priority, x.run_at
          FROM unnest(v_keys) AS k(key)
          CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at,
                       row_number() OVER (ORDER BY j.priority, j.run_at, j.id) AS rnd
                  FROM commitq.jobs j
                 WHERE j.queue = p_queue AND j.state = 'available' AND j.concurrency_key IS NOT NULL
                   AND j.concurrency_key COLLATE "C" = k.key
                 ORDER BY j.priority, j.run_at, j.id
                 LIMIT v_share) x
    ), chosen AS (
        SELECT per_key.id, row_number() OVER (ORDER BY per_key.rnd, per_key.priority, per_key.run_at, per_key.id) AS ord
          FROM per_key
    ), locked AS (
        SELECT j.id FROM commitq.jobs j
         WHERE j.id = ANY (ARRAY(SELECT chosen.id FROM chosen)) AND j.state = 'available'
           FOR UPDATE SKIP LOCKED
    )
    SELECT array_agg(chosen.id ORDER BY chosen.ord) INTO v_ids
      FROM chosen WHERE chosen.id IN (SELECT locked.id FROM locked) AND chosen.ord <= p_want;
    RETURN coalesce(v_ids, '{}');
END
$$;

-- commitq.claim under flow control: the same arguments, checked by claim.
CREATE FUNCTION commitq._claim_flow(p_queue text, p_worker text, p_max integer, p_lease interval)
RETURNS SETOF commitq.claimed_job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_want integer := p_max;
    v_room integer;
    v_limit record;
    v_prefix text;
    v_ids bigint[] := '{}';
    v_more bigint[];
    -- The candidates' keys, and whether each needs a slot of its key.
    v_keys text[];
    v_slots boolean[];
    v_extra integer;
    v_key_limits boolean := EXISTS (SELECT 1 FROM commitq.rate_limits l
                                     WHERE NOT starts_with(l.pattern, 'queue:'));
    -- Windows this claim holds: bucket, per, room.
    v_buckets text[] := '{}';
    v_pers interval[] := '{}';
    v_rooms integer[] := '{}';
    v_plain bigint[];
    v_slot_ids bigint[];
    v_slot_keys text[];
    v_missing text[];
    v_held text[];
    v_claimed commitq.claimed_job[];
    v_n integer;
BEGIN
    IF pg_catalog.current_setting('commitq.flow_retry_ms', true) <> '' THEN
        PERFORM pg_catalog.set_config('commitq.flow_retry_ms', '', false);
    END IF;
    IF EXISTS (SELECT 1 FROM commitq.paused_queues p WHERE p.queue = p_queue) THEN
        RETURN;
    END IF;

    -- The queue's own limit caps the whole claim.
    SELECT l.max_jobs, l.per INTO v_limit FROM commitq.rate_limits l WHERE l.pattern = 'queue:' || p_queue;
    IF FOUND THEN
        v_room := commitq._rate_room('queue:' || p_queue, v_limit.max_jobs, v_limit.per);
        IF v_room <= 0 THEN
            RETURN;
        END IF;
        v_want := least(v_want, v_room);
        v_buckets := ARRAY['queue:' || p_queue];
        v_pers := ARRAY[v_limit.per];
        v_rooms := ARRAY[v_room];
    END IF;

    SELECT f.key_prefix INTO v_prefix FROM commitq.fair_queues f WHERE f.queue = p_queue;
    IF FOUND THEN
        v_ids := commitq._fair_pick(p_queue, v_prefix, v_want);
    END IF;
    -- Then the next jobs in claim order: what the fair pick left of the
    -- claim, and under key limits as many again, so that jobs of keys whose
    -- window is full leave room for others.
    v_extra := CASE WHEN v_key_limits THEN 2 * v_want ELSE v_want END - cardinality(v_ids);
    IF v_extra > 0 THEN
        SELECT array_agg(s.id ORDER BY s.priority, s.run_at, s.id) INTO v_more
          FROM (SELECT c.id, c.priority, c.run_at FROM commitq.jobs c
                 WHERE c.queue = p_queue AND c.state = 'available' AND c.id <> ALL (v_ids)
                 ORDER BY c.priority, c.run_at, c.id
                 LIMIT v_extra
                   FOR UPDATE SKIP LOCKED) s;
        v_ids := v_ids || coalesce(v_more, '{}');
    END IF;
    IF v_ids = '{}' THEN
        RETURN;
    END IF;

    SELECT array_agg(j.concurrency_key ORDER BY t.ord),
           array_agg(j.concurrency_key IS NOT NULL AND NOT j.slot_held ORDER BY t.ord)
      INTO v_keys, v_slots
      FROM unnest(v_ids) WITH ORDINALITY AS t(id, ord) JOIN commitq.jobs j ON j.id = t.id;

    -- Each limited key among the candidates: its window's room (locked).
    IF v_key_limits THEN
        FOR v_limit IN
            SELECT k.ck, r.max_jobs, r.per
              FROM (SELECT DISTINCT c.ck FROM unnest(v_keys) AS c(ck) WHERE c.ck IS NOT NULL) k
              CROSS JOIN LATERAL commitq._key_rate_limit(k.ck) r
             WHERE r.max_jobs IS NOT NULL
             ORDER BY k.ck
        LOOP
            v_buckets := v_buckets || ('key:' || v_limit.ck);
            v_pers := v_pers || v_limit.per;
            v_rooms := v_rooms || commitq._rate_room('key:' || v_limit.ck, v_limit.max_jobs, v_limit.per);
        END LOOP;
    END IF;

    -- The first v_want candidates that their key's window lets start.
    SELECT array_agg(a.id ORDER BY a.ord) FILTER (WHERE NOT a.slot),
           array_agg(a.id ORDER BY a.ord) FILTER (WHERE a.slot),
           array_agg(a.ck ORDER BY a.ord) FILTER (WHERE a.slot)
      INTO v_plain, v_slot_ids, v_slot_keys
      FROM (SELECT c.id, c.ck, c.slot, c.ord
              FROM (SELECT c.*, row_number() OVER (PARTITION BY c.ck ORDER BY c.ord) AS rnk
                      FROM unnest(v_ids, v_keys, v_slots) WITH ORDINALITY AS c(id, ck, slot, ord)) c
              LEFT JOIN unnest(v_buckets, v_rooms) AS b(bucket, room) ON b.bucket = 'key:' || c.ck
             WHERE b.bucket IS NULL OR c.rnk <= b.room
             ORDER BY c.ord
             LIMIT v_want) a;

    -- Jobs without a key, or already holding their key's slot.
    WITH claimed AS (
        -- The same SET list as commitq.claim's.
        UPDATE commitq.jobs j
           SET state = 'running',
               attempt = j.attempt + 1,
               lease_token = j.lease_token + 1,
               lease_expires_at = now() + p_lease,
               lease_interval = p_lease,
               worker = p_worker,
               claimed_at = now(),
               slot_held = false
         WHERE j.id = ANY (coalesce(v_plain, '{}'))
        RETURNING commitq._claimed_row(j) AS r
    )
    SELECT array_agg(claimed.r) INTO v_claimed FROM claimed;

    -- Jobs that need a slot of their key: lock their key rows (creating the
    -- missing ones) and keep the jobs whose rows we hold, so that
    -- _claim_keyed finds every key row and picks nothing more itself.
    IF v_slot_ids IS NOT NULL THEN
        SELECT array_agg(DISTINCT k) INTO v_missing FROM unnest(v_slot_keys) k
         WHERE NOT EXISTS (SELECT 1 FROM commitq.concurrency_keys c WHERE c.key = k);
        IF v_missing IS NOT NULL THEN
            PERFORM commitq._create_keys(v_missing);
        END IF;
        SELECT array_agg(h.key) INTO v_held
          FROM (SELECT c.key FROM commitq.concurrency_keys c
                 WHERE c.key = ANY (v_slot_keys)
                   FOR UPDATE SKIP LOCKED) h;
        SELECT array_agg(t.id ORDER BY t.o), array_agg(t.ck ORDER BY t.o) INTO v_slot_ids, v_slot_keys
          FROM unnest(v_slot_ids, v_slot_keys) WITH ORDINALITY AS t(id, ck, o)
         WHERE t.ck = ANY (coalesce(v_held, '{}'));
        IF v_slot_ids IS NOT NULL THEN
            v_claimed := coalesce(v_claimed, '{}') || coalesce(
                (SELECT array_agg(k) FROM commitq._claim_keyed(p_queue, p_worker, p_lease, v_slot_ids,
                                                               v_slot_keys, cardinality(v_slot_ids), false) k),
                '{}');
        END IF;
    END IF;

    -- Count what started in each window held.
    FOR i IN 1..cardinality(v_buckets) LOOP
        SELECT count(*) INTO v_n FROM unnest(v_claimed) c
         WHERE v_buckets[i] = 'queue:' || p_queue OR 'key:' || c.concurrency_key = v_buckets[i];
        IF v_n > 0 THEN
            PERFORM commitq._rate_record(v_buckets[i], v_pers[i], v_n);
        END IF;
    END LOOP;
    IF v_claimed IS NOT NULL THEN
        RETURN QUERY SELECT * FROM unnest(v_claimed);
    END IF;
END
$$;

-- What commitq.claim does with its waiting_workers entry at its end, for a
-- claim under flow control: a claim that found work clears it; one that
-- found nothing registers the worker if its session LISTENs on the queue.
CREATE FUNCTION commitq._note_waiting(p_queue text, p_worker text, p_got boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_got THEN
        DELETE FROM commitq.waiting_workers w WHERE w.queue = p_queue AND w.worker = p_worker;
    ELSIF 'commitq:' || p_queue IN (SELECT pg_listening_channels()) THEN
        INSERT INTO commitq.waiting_workers AS w (queue, worker) VALUES (p_queue, p_worker)
        ON CONFLICT (queue, worker) DO UPDATE SET since = excluded.since;
    END IF;
END
$$;
