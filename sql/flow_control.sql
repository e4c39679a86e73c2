-- Flow control: rate limits on queues and concurrency keys, and fair
-- claiming across the keys of a prefix. Both are enforced by every path that
-- hands out a job (claim, and so complete_and_claim and claim_wait; the take
-- path of complete_and_take hands the next job of a key out through a claim
-- instead while any rule exists), inside the database where no worker can
-- bypass them.
--
-- Rate limits are a sliding window: a limit of max_jobs per `per` lets at
-- most max_jobs jobs of the queue (or key) start in ANY window of that
-- length, with no burst beyond it. A job "starts" when a claim hands it out;
-- its start time is the claim's transaction time, now(), which is also the
-- job's claimed_at, so the guarantee can be checked on the jobs themselves.
-- Jobs over the limit stay available, spend no attempt, and are handed out
-- by a later claim once the window has room.
--
-- How it holds under any number of claimers: each limited queue or key has
-- a row in commitq.rate_windows with the starts of its current window. A
-- claim takes that row's lock (FOR UPDATE SKIP LOCKED: a claimer holding it
-- is passed over, never waited for), counts the starts in the window, hands
-- out at most the room left, appends its own starts, and keeps the lock until
-- it commits. A claim whose transaction time is older than the window's
-- latest start hands out none of it, so starts are appended in time order
-- and no claimer can squeeze an old start into a window others already
-- filled. tests/isolation/specs/rate-limit.spec holds the interleavings.
--
-- Unlimited queues pay one lookup: commitq.claim tests whether any rule
-- exists (an empty table and a primary-key probe) and takes its usual path
-- when none does.

-- Rate limits. `pattern` is 'queue:NAME' for a queue, or a concurrency key
-- ('account:42'), or a key prefix ending in '*' ('tenant:*', '*' for every
-- key): each key it covers gets its own window. For a key an exact pattern
-- wins over prefixes, and a longer prefix over a shorter one, as in
-- commitq.concurrency_limits.
CREATE TABLE commitq.rate_limits (
    pattern   text PRIMARY KEY,
    max_jobs  integer NOT NULL CHECK (max_jobs BETWEEN 1 AND 100000),
    per       interval NOT NULL CHECK (per BETWEEN interval '1 millisecond' AND interval '1 day')
);

-- The window of each limited queue ('queue:NAME') or key ('key:KEY'): claim
-- times in ascending order, and how many jobs each claim started. Only
-- starts younger than the limit's `per` are kept. Its row lock serializes
-- the claims of one queue or key.
CREATE TABLE commitq.rate_windows (
    bucket  text PRIMARY KEY,
    starts  timestamptz[] NOT NULL DEFAULT '{}',
    counts  integer[] NOT NULL DEFAULT '{}'
) WITH (
    -- Rewritten by every claim of its queue or key: room for HOT updates.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Fair queues: a claim takes jobs round-robin across the concurrency keys
-- that start with key_prefix ('' for every key).
CREATE TABLE commitq.fair_queues (
    queue       text PRIMARY KEY,
    key_prefix  text NOT NULL
);

SELECT pg_catalog.pg_extension_config_dump('commitq.rate_limits', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.fair_queues', '');

-- The fair pick: the distinct keys of a queue's available jobs, one index
-- descent each, and each key's jobs in claim order. COLLATE "C" so that the
-- keys of a prefix are one range of the index under any database collation.
-- Partial on keyed jobs: jobs without a key never enter it.
CREATE INDEX jobs_fair_idx ON commitq.jobs (queue, concurrency_key COLLATE "C", priority, run_at, id)
    WITH (deduplicate_items = off)
    WHERE state = 'available' AND concurrency_key IS NOT NULL;

-- The first half of the advisory lock taken while creating a window's row
-- (see _rate_room); 'cqrw' in ASCII.
CREATE FUNCTION commitq._rate_lock_space() RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1668379255 $$;

-- How many more jobs the window of p_bucket lets start now, under a limit
-- of p_max per p_per, taking the window's row lock for the rest of the
-- transaction. 0 when another transaction holds the row (or is creating
-- it), and when the window's latest start is later than our now().
CREATE FUNCTION commitq._rate_room(p_bucket text, p_max integer, p_per interval) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_starts timestamptz[];
    v_counts integer[];
    v_room integer;
    v_free_in interval;
BEGIN
    SELECT w.starts, w.counts INTO v_starts, v_counts
      FROM commitq.rate_windows w WHERE w.bucket = p_bucket
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        -- A row we cannot see (not yet created, or created by a transaction
        -- still running) is created under an advisory lock, so that two
        -- claimers never wait for each other's INSERT; one we can see is
        -- locked by another claimer.
        IF EXISTS (SELECT 1 FROM commitq.rate_windows w WHERE w.bucket = p_bucket) THEN
            PERFORM commitq._flow_retry_in(interval '10 milliseconds');
            RETURN 0;
        END IF;
        INSERT INTO commitq.rate_windows AS w (bucket)
        SELECT p_bucket WHERE pg_try_advisory_xact_lock(commitq._rate_lock_space(), hashtext(p_bucket))
        ON CONFLICT (bucket) DO NOTHING
        RETURNING w.starts, w.counts INTO v_starts, v_counts;
        IF NOT FOUND THEN
            RETURN 0;
        END IF;
    END IF;
    IF v_starts[cardinality(v_starts)] > now() THEN
        PERFORM commitq._flow_retry_in(interval '10 milliseconds');
        RETURN 0;
    END IF;
    SELECT greatest(p_max - coalesce(sum(t.c), 0), 0), min(t.s) + p_per - clock_timestamp()
      INTO v_room, v_free_in
      FROM unnest(v_starts, v_counts) AS t(s, c) WHERE t.s > now() - p_per;
    IF v_room = 0 THEN
        PERFORM commitq._flow_retry_in(v_free_in);
    END IF;
    RETURN v_room;
END
$$;

-- A claim that hands out nothing because a window is full leaves, in the
-- session setting commitq.flow_retry_ms, how soon the earliest such window
-- has room: commitq.claim_wait, which otherwise sleeps until a commit wakes
-- it, claims again then (no commit marks a window's room coming back).
-- commitq._claim_flow clears it at its start.
CREATE FUNCTION commitq._flow_retry_in(p_in interval) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ms bigint := greatest(ceil(extract(epoch FROM p_in) * 1000), 1)::bigint;
    v_was text := pg_catalog.current_setting('commitq.flow_retry_ms', true);
BEGIN
    IF v_was IS NULL OR v_was !~ '^[0-9]{1,12}$' OR v_was::bigint > v_ms THEN
        PERFORM pg_catalog.set_config('commitq.flow_retry_ms', v_ms::text, false);
    END IF;
END
$$;

-- Record p_n jobs started now in the window of p_bucket, whose row lock
-- _rate_room took, and forget starts older than p_per. A window holds at
-- most 256 claims: beyond that the two oldest are counted as one at the later
-- time, which only ever lets fewer jobs start.
CREATE FUNCTION commitq._rate_record(p_bucket text, p_per interval, p_n integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_starts timestamptz[];
    v_counts integer[];
    v_last integer;
BEGIN
    SELECT coalesce(array_agg(t.s ORDER BY t.o), '{}'), coalesce(array_agg(t.c ORDER BY t.o), '{}')
      INTO v_starts, v_counts
      FROM commitq.rate_windows w,
           unnest(w.starts, w.counts) WITH ORDINALITY AS t(s, c, o)
     WHERE w.bucket = p_bucket AND t.s > now() - p_per;
    v_last := cardinality(v_starts);
    IF v_last > 0 AND v_starts[v_last] = now() THEN
        v_counts[v_last] := v_counts[v_last] + p_n;
    ELSE
        v_starts := v_starts || now();
        v_counts := v_counts || p_n;
    END IF;
    IF cardinality(v_starts) > 256 THEN
        v_counts[2] := v_counts[1] + v_counts[2];
        v_starts := v_starts[2:];
        v_counts := v_counts[2:];
    END IF;
    UPDATE commitq.rate_windows w SET starts = v_starts, counts = v_counts WHERE w.bucket = p_bucket;
END
$$;

-- The rate limit of a concurrency key: an exact entry, else the longest
-- matching prefix entry; none when no entry covers it. 'queue:' entries are
-- queues', never a key's.
CREATE FUNCTION commitq._key_rate_limit(p_key text, OUT max_jobs integer, OUT per interval)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.max_jobs, l.per FROM commitq.rate_limits l
     WHERE NOT pg_catalog.starts_with(l.pattern, 'queue:')
       AND (l.pattern = p_key
            OR (pg_catalog.right(l.pattern, 1) = '*'
                AND pg_catalog.starts_with(p_key, pg_catalog.left(l.pattern, -1))))
     ORDER BY l.pattern = p_key DESC, pg_catalog.length(l.pattern) DESC
     LIMIT 1
$$;

-- Set or remove (max_jobs NULL) a rate limit: at most max_jobs jobs of the
-- queue ('queue:NAME') or of each key the pattern covers start in any window
-- of length `per`. Applies to the next claim; starts recorded under the
-- previous limit keep counting for as long as they are younger than its
-- `per`. Returns true when a limit was there before.
CREATE FUNCTION commitq.set_rate_limit(pattern text, max_jobs integer, per interval DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_queue text := CASE WHEN starts_with(set_rate_limit.pattern, 'queue:')
                         THEN substr(set_rate_limit.pattern, 7) END;
    v_had boolean;
BEGIN
    PERFORM commitq._check(CASE
        WHEN set_rate_limit.pattern IS NULL THEN 'pattern must not be NULL'
        WHEN set_rate_limit.max_jobs NOT BETWEEN 1 AND 100000
            THEN format('max_jobs %s out of range 1..100000', set_rate_limit.max_jobs)
        WHEN set_rate_limit.max_jobs IS NOT NULL AND set_rate_limit.per IS NULL
            THEN 'per must not be NULL when max_jobs is set'
        WHEN set_rate_limit.max_jobs IS NOT NULL
             AND set_rate_limit.per NOT BETWEEN interval '1 millisecond' AND interval '1 day'
            THEN format('per %s out of range 1 millisecond..1 day', set_rate_limit.per)
        END);
    IF v_queue IS NOT NULL THEN
        PERFORM commitq._check(commitq._queue_problem(v_queue));
    ELSE
        PERFORM commitq._check(commitq._job_problem('q', 'k', 'object', 0, 0, 1, true, NULL,
                                                    set_rate_limit.pattern));
    END IF;

    SELECT true INTO v_had FROM commitq.rate_limits l WHERE l.pattern = set_rate_limit.pattern;
    IF set_rate_limit.max_jobs IS NULL THEN
        DELETE FROM commitq.rate_limits l WHERE l.pattern = set_rate_limit.pattern;
    ELSE
        INSERT INTO commitq.rate_limits AS l (pattern, max_jobs, per)
        VALUES (set_rate_limit.pattern, set_rate_limit.max_jobs, set_rate_limit.per)
        ON CONFLICT (pattern) DO UPDATE SET max_jobs = excluded.max_jobs, per = excluded.per;
        IF v_queue IS NOT NULL THEN
            INSERT INTO commitq.rate_windows (bucket) VALUES (set_rate_limit.pattern)
            ON CONFLICT (bucket) DO NOTHING;
        END IF;
    END IF;
    RETURN coalesce(v_had, false);
END
$$;

-- Make a queue fair across the concurrency keys that start with key_prefix
-- ('tenant:'; '' for every key), or fair no more (key_prefix NULL). Returns
-- true when the queue was fair before.
CREATE FUNCTION commitq.set_fairness(queue text, key_prefix text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_had boolean;
BEGIN
    PERFORM commitq._check(commitq._queue_problem(set_fairness.queue));
    IF set_fairness.key_prefix IS NOT NULL AND set_fairness.key_prefix <> '' THEN
        PERFORM commitq._check(commitq._job_problem('q', 'k', 'object', 0, 0, 1, true, NULL,
                                                    set_fairness.key_prefix));
    END IF;
    SELECT true INTO v_had FROM commitq.fair_queues f WHERE f.queue = set_fairness.queue;
    IF set_fairness.key_prefix IS NULL THEN
        DELETE FROM commitq.fair_queues f WHERE f.queue = set_fairness.queue;
    ELSE
        INSERT INTO commitq.fair_queues AS f (queue, key_prefix)
        VALUES (set_fairness.queue, set_fairness.key_prefix)
        ON CONFLICT (queue) DO UPDATE SET key_prefix = excluded.key_prefix;
    END IF;
    RETURN coalesce(v_had, false);
END
$$;

-- Monitoring: every rule, and for rate limits how full the busiest window
-- it covers is now (the queue's, or that of the busiest key in use that the
-- pattern matches). Readers see this view, not the tables.
CREATE VIEW commitq.flow_control AS
SELECT 'rate_limit'::text AS rule, l.pattern AS target, l.max_jobs, l.per, NULL::text AS key_prefix,
       coalesce((SELECT max((SELECT coalesce(sum(t.c), 0) FROM unnest(w.starts, w.counts) AS t(s, c)
                              WHERE t.s > pg_catalog.now() - l.per))
                   FROM commitq.rate_windows w
                  WHERE w.bucket = l.pattern
                     OR (NOT pg_catalog.starts_with(l.pattern, 'queue:')
                         AND (w.bucket = 'key:' || l.pattern
                              OR (pg_catalog.right(l.pattern, 1) = '*'
                                  AND pg_catalog.starts_with(w.bucket, 'key:' || pg_catalog.left(l.pattern, -1)))))),
                0)::bigint AS started_in_window
  FROM commitq.rate_limits l
UNION ALL
SELECT 'fairness', 'queue:' || f.queue, NULL, NULL, f.key_prefix, NULL
  FROM commitq.fair_queues f;
