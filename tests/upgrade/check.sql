-- After ALTER EXTENSION pg_commitq UPDATE on the database fill.sql filled:
-- every live job can still be claimed and finished, the lease taken before
-- the upgrade still completes its job (and its effects still answer), keys
-- and named leases still work. Fails (ASSERT, or an error) otherwise.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

DO $$
DECLARE
    f record;
    e record;
    c record;
    n integer;
    id_of jsonb := (SELECT jsonb_object_agg(name, job_id) FROM public.upgrade_fixture WHERE job_id IS NOT NULL);
    v_ids bigint[];
    v_tokens bigint[];
    v_token bigint;
BEGIN
    ASSERT (SELECT extversion FROM pg_extension WHERE extname = 'pg_commitq')
         = (SELECT default_version FROM pg_available_extensions WHERE name = 'pg_commitq'),
           'the extension is not at the default version after the update';

    -- The lease taken before the upgrade: its effects answer, its heartbeat
    -- extends it, it completes.
    SELECT * INTO f FROM public.upgrade_fixture WHERE name = 'running_lease';
    SELECT * INTO e FROM commitq.effect_begin(f.job_id, f.token, 'charge_card');
    ASSERT e.done AND e.result = '{"charge": "ch_1"}', format('charge_card after the upgrade: %s', e);
    SELECT * INTO e FROM commitq.effect_begin(f.job_id, f.token, 'send_receipt');
    ASSERT NOT e.done AND e.idempotency_key IS NOT NULL, format('send_receipt after the upgrade: %s', e);
    PERFORM commitq.effect_done(f.job_id, f.token, 'send_receipt');
    PERFORM commitq.heartbeat(f.job_id, f.token, '10 minutes');
    PERFORM commitq.assert_lease(f.job_id, f.token);
    PERFORM commitq.complete(f.job_id, f.token);
    ASSERT (SELECT state FROM commitq.finished_jobs WHERE id = f.job_id) = 'completed', 'running job not completed';

    -- A key at its limit: finishing its running job promotes the blocked one.
    ASSERT (SELECT state FROM commitq.jobs WHERE id = (id_of->>'key_blocked')::bigint) = 'blocked', 'key_blocked lost its state';
    SELECT * INTO f FROM public.upgrade_fixture WHERE name = 'key_running';
    ASSERT f.job_id = (id_of->>'key_first')::bigint, 'the first keyed job was not the one running';
    PERFORM commitq.complete(f.job_id, f.token);
    SELECT array_agg(job_id), array_agg(lease_token) INTO v_ids, v_tokens FROM commitq.claim('sync', 'worker-new', 10, '1 minute');
    ASSERT v_ids = ARRAY[(id_of->>'key_blocked')::bigint], format('sync claimed %s', v_ids);
    PERFORM commitq.complete(v_ids[1], v_tokens[1]);

    -- A prefix limit of 2: two ran before the upgrade, the third was blocked.
    n := 0;
    FOR f IN SELECT * FROM public.upgrade_fixture WHERE name LIKE 'tenant_running_%' LOOP
        PERFORM commitq.complete(f.job_id, f.token);
        n := n + 1;
    END LOOP;
    ASSERT n = 2, format('%s tenant jobs ran before the upgrade, not 2', n);
    SELECT array_agg(job_id), array_agg(lease_token) INTO v_ids, v_tokens FROM commitq.claim('tenant', 'worker-new', 10, '1 minute');
    ASSERT cardinality(v_ids) = 1, format('tenant claimed %s', v_ids);
    PERFORM commitq.complete(v_ids[1], v_tokens[1]);

    -- Idempotency keys still deduplicate; the available jobs are claimed.
    SELECT * INTO c FROM commitq.enqueue('mail', 'welcome', '{"user": 2}', idempotency_key => 'signup-2');
    ASSERT c.job_id = (id_of->>'keyed_idem')::bigint AND NOT c.inserted, format('signup-2 enqueued again: %s', c);
    SELECT array_agg(job_id ORDER BY job_id), array_agg(lease_token ORDER BY job_id) INTO v_ids, v_tokens
      FROM commitq.claim('mail', 'worker-new', 10, '1 minute');
    ASSERT v_ids = ARRAY[(id_of->>'available')::bigint, (id_of->>'keyed_idem')::bigint], format('mail claimed %s', v_ids);
    ASSERT (SELECT bool_and(completed) FROM commitq.complete_many(v_ids, v_tokens)), 'mail jobs not completed';

    SELECT array_agg(job_id ORDER BY job_id), array_agg(lease_token ORDER BY job_id) INTO v_ids, v_tokens
      FROM commitq.claim('bulk', 'worker-new', 10, '1 minute');
    ASSERT v_ids = ARRAY[(id_of->>'many_1')::bigint, (id_of->>'many_2')::bigint], format('bulk claimed %s', v_ids);
    ASSERT (SELECT count(*) FROM commitq.complete_and_claim(v_ids, v_tokens, 'bulk', 'worker-new')) = 0, 'bulk not drained';

    -- Scheduled jobs (one new, one waiting for its retry) and a discarded
    -- one: an operator runs them now, a worker finishes them.
    ASSERT commitq.retry((id_of->>'scheduled')::bigint) = 'available', 'retry scheduled';
    ASSERT commitq.retry((id_of->>'flaky')::bigint) = 'available', 'retry flaky';
    ASSERT commitq.retry((id_of->>'bad')::bigint) = 'available', 'retry discarded';
    FOR c IN SELECT * FROM commitq.claim('report', 'worker-new', 10, '1 minute')
             UNION ALL SELECT * FROM commitq.claim('done', 'worker-new', 10, '1 minute') LOOP
        IF c.kind = 'flaky' THEN
            ASSERT c.attempt = 2 AND jsonb_array_length(c.errors) = 1 AND c.errors->0->>'error' = 'timeout',
                   format('flaky lost its history: attempt %s, errors %s', c.attempt, c.errors);
        END IF;
        PERFORM commitq.complete(c.job_id, c.lease_token);
    END LOOP;

    -- Finished jobs kept across the upgrade.
    ASSERT (SELECT state FROM commitq.finished_jobs WHERE id = (id_of->>'cancelled')::bigint) = 'cancelled', 'cancelled job lost';
    ASSERT (SELECT state FROM commitq.finished_jobs WHERE id = (id_of->>'ok')::bigint) = 'completed', 'completed job lost';

    -- The named lease held across the upgrade renews, fences, releases, and
    -- the next holder's token is higher.
    SELECT token INTO v_token FROM public.upgrade_fixture WHERE name = 'named_lease';
    PERFORM commitq.renew_lease('nightly-report', v_token, '1 hour');
    PERFORM commitq.assert_fencing_token('nightly-report', v_token);
    PERFORM commitq.release_lease('nightly-report', v_token);
    ASSERT commitq.try_acquire_lease('nightly-report', 'host-2', '1 minute') > v_token, 'fencing token went back';

    -- Nothing left to run, no slot held, and maintenance runs.
    ASSERT NOT EXISTS (SELECT 1 FROM commitq.jobs), format('jobs left: %s', (SELECT array_agg(id || ':' || state) FROM commitq.jobs));
    ASSERT NOT EXISTS (SELECT 1 FROM commitq.concurrency_keys WHERE running > 0 OR blocked > 0), 'slots still held';
    PERFORM commitq.maintain();

    -- A job enqueued after the upgrade runs too.
    SELECT * INTO c FROM commitq.enqueue('mail', 'welcome', '{"user": 3}', concurrency_key => 'acct:42');
    SELECT array_agg(job_id), array_agg(lease_token) INTO v_ids, v_tokens FROM commitq.claim('mail', 'worker-new');
    ASSERT v_ids = ARRAY[c.job_id], format('new job claimed as %s', v_ids);
    PERFORM commitq.complete(v_ids[1], v_tokens[1]);
END
$$;
