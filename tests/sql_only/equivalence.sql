-- Run in a database with pg_commitq and in one loaded from the SQL-only file;
-- tests/sql_only/run.sh compares the two outputs, which must be the same
-- (the one difference allowed: where the args limit is set, named in the
-- message "args too large").

\pset format unaligned
\pset tuples_only on

-- Every check's answer, or the error it raises, for each case.
CREATE FUNCTION pg_temp.outcome(expr text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    EXECUTE 'SELECT (' || expr || ')::text' INTO v;
    RETURN coalesce(v, 'NULL');
EXCEPTION WHEN OTHERS THEN
    RETURN 'ERROR ' || SQLSTATE || ' ' || SQLERRM;
END
$$;

CREATE TEMP TABLE cases (n serial, expr text);
INSERT INTO cases (expr) VALUES
  ($$commitq._check(NULL)$$),
  ($$commitq._check('x is wrong')$$),
  ($$commitq._queue_problem(NULL)$$), ($$commitq._queue_problem('')$$), ($$commitq._queue_problem('emails')$$),
  ($$commitq._queue_problem('Emails')$$), ($$commitq._queue_problem('_q')$$), ($$commitq._queue_problem('9.a_b-c')$$),
  ($$commitq._queue_problem(repeat('q', 48))$$), ($$commitq._queue_problem(repeat('q', 49))$$),
  ($$commitq._queue_problem(E'a b\t"\\'''\n\r\u200b\u0301é😀')$$),
  ($$commitq._worker_lease_problem(NULL, '1 minute')$$), ($$commitq._worker_lease_problem('', '1 minute')$$),
  ($$commitq._worker_lease_problem(repeat('é', 200), '1 minute')$$), ($$commitq._worker_lease_problem(repeat('w', 201), '1 minute')$$),
  ($$commitq._worker_lease_problem('w', NULL)$$), ($$commitq._worker_lease_problem('w', '0.999999 seconds')$$),
  ($$commitq._worker_lease_problem('w', '1 second')$$), ($$commitq._worker_lease_problem('w', '7 days')$$),
  ($$commitq._worker_lease_problem('w', '7 days 00:00:00.000001')$$), ($$commitq._worker_lease_problem('w', '1 month')$$),
  ($$commitq._worker_lease_problem('w', '-1 hour')$$), ($$commitq._worker_lease_problem('w', '1 mon -25 days')$$),
  ($$commitq._worker_lease_problem('w', '168 hours')$$), ($$commitq._worker_lease_problem('w', '1 year 2 mons 3 days 04:05:06')$$),
  ($$commitq._batch_problem(NULL, '{}')$$), ($$commitq._batch_problem('{}', NULL)$$), ($$commitq._batch_problem('{}', '{}')$$),
  ($$commitq._batch_problem('{1,2}', '{1}')$$), ($$commitq._batch_problem('{{1,2},{3,4}}', '{1,2,3,4}')$$),
  ($$commitq._lease_args_problem(NULL, NULL, NULL)$$), ($$commitq._lease_args_problem('n', NULL, NULL)$$),
  ($$commitq._lease_args_problem('n', 'o', NULL)$$), ($$commitq._lease_args_problem('', 'o', '1 minute')$$),
  ($$commitq._lease_args_problem(repeat('é', 127), 'o', '1 minute')$$), ($$commitq._lease_args_problem(repeat('é', 128), 'o', '1 minute')$$),
  ($$commitq._lease_args_problem('n', '', '1 minute')$$), ($$commitq._lease_args_problem('n', E'\t', '1 minute')$$),
  ($$commitq._lease_args_problem('n', repeat('o', 256), '1 minute')$$), ($$commitq._lease_args_problem('n', 'o', '1 month')$$),
  ($$commitq._lease_args_problem('', '', '0 seconds')$$),
  ($$commitq._max_args_bytes()$$);

-- _job_problem: every argument alone at a bad value, then in pairs, so the
-- order in which problems are named is compared too.
CREATE TEMP TABLE job_args (pos int, good text, bad text[]);
INSERT INTO job_args VALUES
  (1, $$'emails'$$, ARRAY[$$NULL$$, $$'Bad Queue'$$, $$''$$]),
  (2, $$'Billing::Charge'$$, ARRAY[$$NULL$$, $$'a b'$$, $$repeat('k', 129)$$, $$'.k'$$, $$E'k\u00e9'$$]),
  (3, $$'object'$$, ARRAY[$$NULL$$, $$'array'$$, $$'null'$$]),
  (4, $$10$$, ARRAY[$$NULL$$, $$1048577$$, $$1048576$$]),
  (5, $$0$$, ARRAY[$$NULL$$, $$32768$$, $$-32769$$, $$-32768$$]),
  (6, $$25$$, ARRAY[$$NULL$$, $$0$$, $$1001$$, $$1000$$]),
  (7, $$true$$, ARRAY[$$NULL$$, $$false$$]),
  (8, $$'order-1'$$, ARRAY[$$NULL$$, $$''$$, $$repeat('i', 256)$$, $$E'a\u200bb'$$, $$E'a\u2028'$$, $$E'\u00a0'$$]),
  (9, $$'account:42'$$, ARRAY[$$NULL$$, $$''$$, $$E'a\tb'$$, $$E'\U000E0041'$$, $$E'\u0085'$$, $$'ünï 🙂'$$]);
INSERT INTO cases (expr)
SELECT format('commitq._job_problem(%s)',
              (SELECT string_agg(CASE WHEN a.pos = b1.pos THEN b1.v WHEN a.pos = b2.pos THEN b2.v ELSE a.good END,
                                 ', ' ORDER BY a.pos) FROM job_args a))
  FROM (SELECT pos, unnest(bad) v FROM job_args) b1
  JOIN (SELECT pos, unnest(bad) v FROM job_args UNION ALL SELECT 0, NULL) b2 ON b2.pos = 0 OR b2.pos > b1.pos;

-- The public functions that take these arguments, for their errors.
INSERT INTO cases (expr) VALUES
  ($$(SELECT inserted FROM commitq.enqueue('q', 'k', '{}'))$$),
  ($$(SELECT inserted FROM commitq.enqueue('q', 'k', '{}', idempotency_key => 'i1'))$$),
  ($$(SELECT inserted FROM commitq.enqueue('q', 'k', '{}', idempotency_key => 'i1'))$$),
  ($$(SELECT job_id FROM commitq.enqueue('Q', 'k', '{}'))$$),
  ($$(SELECT job_id FROM commitq.enqueue('q', 'k', '[]'))$$),
  ($$(SELECT job_id FROM commitq.enqueue('q', 'k', NULL))$$),
  ($$(SELECT job_id FROM commitq.enqueue('q', 'k', '{}', run_at => 'infinity'))$$),
  ($$(SELECT job_id FROM commitq.enqueue('q', 'k', '{}', priority => NULL))$$),
  ($$(SELECT job_id FROM commitq.enqueue('q', 'k', '{}', idempotency_key => E'\u200b'))$$),
  ($$(SELECT job_id FROM commitq.enqueue('q', 'k', '{}', concurrency_key => ''))$$),
  ($$(SELECT job_id FROM commitq.enqueue('q', 'k', jsonb_build_object('b', repeat('x', 2000000))))$$),
  ($$(SELECT count(*) FROM commitq.enqueue_many('q', 'k', ARRAY['{}', '[]']::jsonb[]))$$),
  ($$(SELECT count(*) FROM commitq.enqueue_many('[{"queue": "q", "kind": "a b"}]'))$$),
  ($$(SELECT count(*) FROM commitq.claim('q', '', 1, '1 minute'))$$),
  ($$(SELECT count(*) FROM commitq.claim('q', 'w', 1, '8 days'))$$),
  ($$(SELECT count(*) FROM commitq.complete_many('{1}', '{}'))$$),
  ($$commitq.try_acquire_lease(E'a\nb', 'me', '1 minute')$$);

SELECT n || ' ' || expr || ' => ' || pg_temp.outcome(expr) FROM cases ORDER BY n;

-- With a limit of 100 bytes, set where each install keeps it.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_commitq') THEN
        PERFORM set_config('commitq.max_args_bytes', '100', false);
    ELSE
        UPDATE commitq.config SET max_args_bytes = 100;
    END IF;
END
$$;
SELECT 'limit 100: ' || expr || ' => ' || pg_temp.outcome(expr) FROM (VALUES
  ($$commitq._max_args_bytes()$$),
  ($$(SELECT inserted FROM commitq.enqueue('q', 'k', jsonb_build_object('b', repeat('x', 80))))$$),
  ($$(SELECT inserted FROM commitq.enqueue('q', 'k', jsonb_build_object('b', repeat('x', 90))))$$),
  ($$(SELECT count(*) FROM commitq.enqueue_many('q', 'k', ARRAY[jsonb_build_object('b', repeat('x', 90))]))$$),
  ($$commitq._job_problem('q', 'k', 'object', 101, 0, 25, true, NULL, NULL)$$)) AS c(expr);

-- Every code point (but the surrogates) in a queue name's message, which
-- shows the name as Rust's {:?} does, 200 code points a name.
SELECT 'queue names: ' || md5(string_agg(commitq._queue_problem(s), E'\n' ORDER BY g)) FROM (
    SELECT c / 200 AS g, string_agg(chr(c), '' ORDER BY c) AS s
      FROM generate_series(1, 1114111) c WHERE c NOT BETWEEN 55296 AND 57343 GROUP BY 1) t;

-- Every code point that a key or lease name refuses (rules::is_unprintable):
-- 60 at a time (at most 240 bytes), then one by one in the groups refused.
SELECT 'unprintable: ' || string_agg(c::text, ',' ORDER BY c) FROM (
    SELECT unnest(cs) AS c FROM (
        SELECT array_agg(c ORDER BY c) AS cs, string_agg(chr(c), '' ORDER BY c) AS s
          FROM generate_series(1, 1114111) c WHERE c NOT BETWEEN 55296 AND 57343 GROUP BY c / 60) g
     WHERE commitq._lease_args_problem(s, 'o', '1 minute') IS NOT NULL) t
 WHERE commitq._lease_args_problem(chr(c), 'o', '1 minute') IS NOT NULL
   AND commitq._job_problem('q', 'k', 'object', 2, 0, 25, true, NULL, chr(c)) IS NOT NULL;
