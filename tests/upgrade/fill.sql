-- Fills a database created at an old pg_commitq version with jobs in every
-- state and every kind of side table row, before ALTER EXTENSION ... UPDATE.
-- Only SQL functions of 0.1.0 are called. The ids and lease tokens that
-- check.sql needs go to public.upgrade_fixture (outside the commitq schema,
-- so the catalog comparison does not see it).
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

CREATE TABLE public.upgrade_fixture (name text PRIMARY KEY, job_id bigint, token bigint);

UPDATE commitq.config SET keep_completed = true, finished_retention = '30 days';
SELECT commitq.set_concurrency_limit('tenant:*', 2);
SELECT commitq.set_concurrency_limit('acct:vip', 3);

-- available, and one with an idempotency key
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'available', job_id FROM commitq.enqueue('mail', 'welcome', '{"user": 1}');
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'keyed_idem', job_id FROM commitq.enqueue('mail', 'welcome', '{"user": 2}', idempotency_key => 'signup-2');

-- scheduled for later, and one created through enqueue_many
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'scheduled', job_id FROM commitq.enqueue('report', 'nightly', '{}', run_at => now() + interval '1 day');
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'many_' || ord, job_id
  FROM commitq.enqueue_many('bulk', 'resize', ARRAY['{"img": 1}', '{"img": 2}']::jsonb[],
                            idempotency_keys => ARRAY['img-1', 'img-2']) WITH ORDINALITY AS m(job_id, inserted, ord);

-- running under a lease that outlives the upgrade, with effects: one done
-- (its result is kept), one begun and not done
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'running', job_id FROM commitq.enqueue('pay', 'charge', '{"cents": 500}', idempotency_key => 'order-7');
INSERT INTO public.upgrade_fixture (name, job_id, token)
SELECT 'running_lease', job_id, lease_token FROM commitq.claim('pay', 'worker-old', 1, '1 hour');
SELECT commitq.effect_begin(f.job_id, f.token, 'charge_card') FROM public.upgrade_fixture f WHERE name = 'running_lease';
SELECT commitq.effect_done(f.job_id, f.token, 'charge_card', '{"charge": "ch_1"}') FROM public.upgrade_fixture f WHERE name = 'running_lease';
SELECT commitq.effect_begin(f.job_id, f.token, 'send_receipt') FROM public.upgrade_fixture f WHERE name = 'running_lease';

-- a concurrency key at its limit (1): one job running, one blocked behind it;
-- and a prefix limit of 2 with three jobs: two running, one blocked
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'key_first', job_id FROM commitq.enqueue('sync', 'pull', '{"n": 1}', concurrency_key => 'acct:42');
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'key_blocked', job_id FROM commitq.enqueue('sync', 'pull', '{"n": 2}', concurrency_key => 'acct:42');
SELECT commitq.enqueue('tenant', 'pull', jsonb_build_object('n', i), concurrency_key => 'tenant:9')
  FROM generate_series(1, 3) i;
INSERT INTO public.upgrade_fixture (name, job_id, token)
SELECT 'key_running', job_id, lease_token FROM commitq.claim('sync', 'worker-old', 10, '1 hour');
INSERT INTO public.upgrade_fixture (name, job_id, token)
SELECT 'tenant_running_' || row_number() OVER (ORDER BY job_id), job_id, lease_token
  FROM commitq.claim('tenant', 'worker-old', 10, '1 hour');

-- completed (kept: keep_completed), discarded, cancelled, and a failure
-- waiting for its retry (scheduled, with an error in its history)
SELECT commitq.enqueue('done', 'ok', '{}', idempotency_key => 'done-1');
SELECT commitq.enqueue('done', 'bad', '{}');
SELECT commitq.enqueue('done', 'flaky', '{}');
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM commitq.claim('done', 'worker-old', 10, '1 minute') LOOP
        CASE c.kind
            WHEN 'ok' THEN PERFORM commitq.complete(c.job_id, c.lease_token);
            WHEN 'bad' THEN PERFORM commitq.fail(c.job_id, c.lease_token, 'card declined', discard => true);
            WHEN 'flaky' THEN PERFORM commitq.fail(c.job_id, c.lease_token, 'timeout', retry_in => '1 day');
        END CASE;
        INSERT INTO public.upgrade_fixture (name, job_id) VALUES (c.kind, c.job_id);
    END LOOP;
END
$$;
INSERT INTO public.upgrade_fixture (name, job_id)
SELECT 'cancelled', job_id FROM commitq.enqueue('mail', 'spam', '{}');
SELECT commitq.cancel(job_id) FROM public.upgrade_fixture WHERE name = 'cancelled';

-- a named lease held across the upgrade
INSERT INTO public.upgrade_fixture (name, token)
SELECT 'named_lease', commitq.try_acquire_lease('nightly-report', 'host-1', '1 hour');

-- Every state is present before the upgrade.
DO $$
DECLARE
    missing text[];
BEGIN
    SELECT array_agg(s) INTO missing
      FROM unnest(enum_range(NULL::commitq.job_state)) s
     WHERE s NOT IN (SELECT state FROM commitq.jobs UNION SELECT state FROM commitq.finished_jobs);
    ASSERT missing IS NULL, format('states missing before the upgrade: %s', missing);
END
$$;
