\set VERBOSITY terse
\pset footer off
\echo
\echo '1. A request enqueues a job in its own transaction, together with its data:'
BEGIN;
CREATE TABLE public.purchases (id bigint PRIMARY KEY, course text NOT NULL);
INSERT INTO public.purchases VALUES (1, 'Postgres for job queues');
SELECT * FROM commitq.enqueue('billing', 'charge_and_deliver', '{"purchase_id": 1}',
                              idempotency_key => 'purchase-1');
\echo '   Before COMMIT, a worker claims nothing: the job is not visible yet.'
\! psql -X -q -d commitq_demo -c "SELECT count(*) AS claimable_from_another_session FROM commitq.jobs WHERE state = 'available'"
COMMIT;
\echo '2. The same request sent twice enqueues nothing new (same idempotency key):'
SELECT * FROM commitq.enqueue('billing', 'charge_and_deliver', '{"purchase_id": 1}',
                              idempotency_key => 'purchase-1');
\echo '3. A worker claims it under a 30-second lease and gets a fencing token:'
SELECT job_id, kind, args, attempt, lease_token FROM commitq.claim('billing', 'worker-1', 10, '30 seconds') \gset
SELECT :job_id AS job_id, :'kind' AS kind, :'args' AS args, :attempt AS attempt, :lease_token AS lease_token;
\echo '4. The worker completes it in the transaction of its own writes:'
BEGIN;
UPDATE public.purchases SET course = course || ' (delivered)' WHERE id = 1;
SELECT commitq.complete(:job_id, :lease_token);
COMMIT;
SELECT (SELECT count(*) FROM commitq.jobs) AS jobs_left_in_queue,
       (SELECT course FROM public.purchases WHERE id = 1) AS purchase;
\echo '5. A late call with the same (now stale) lease token is refused:'
\set ON_ERROR_STOP 0
SELECT commitq.complete(:job_id, :lease_token);
