-- The effect ledger: a job's named side effects ("charge_card",
-- "send_receipt") recorded per job, so a retried job skips what an earlier
-- attempt finished, and every attempt hands the external API the same
-- idempotency key for the same effect.
--
--   SELECT * FROM commitq.effect_begin(job_id, lease_token, 'charge_card');
--     -> done = false, idempotency_key = 'commitq-17-charge_card'
--   ... call the payment API with that key ...
--   SELECT commitq.effect_done(job_id, lease_token, 'charge_card', '{"charge": "ch_1"}');
--
-- Both raise CQ102/CQ103 unless the lease is current, so an attempt whose
-- lease moved on cannot record an effect; call effect_done in the same
-- transaction as the job's other writes where there are any.

CREATE TABLE commitq.job_effects (
    job_id           bigint NOT NULL,
    effect           text NOT NULL,
    idempotency_key  text NOT NULL,
    begun_attempt    integer NOT NULL,
    done_attempt     integer,
    done_at          timestamptz,
    result           jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, effect)
);

SELECT pg_catalog.pg_extension_config_dump('commitq.job_effects', '');

-- Pruning by age (maintain()): without it every call read the whole table.
CREATE INDEX job_effects_created_at_idx ON commitq.job_effects (created_at);

-- Before doing effect `effect` of a job: whether an earlier attempt already
-- did it (with its recorded result), and the idempotency key to give the
-- external API, the same for every attempt of this job.
CREATE FUNCTION commitq.effect_begin(job_id bigint, lease_token bigint, effect text,
                                     OUT done boolean, OUT idempotency_key text, OUT result jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j commitq.jobs;
BEGIN
    PERFORM commitq._check(CASE WHEN effect_begin.effect IS NULL THEN 'effect must not be NULL'
                                WHEN effect_begin.effect = ''
                                  OR octet_length(effect_begin.effect) > 255
                                THEN 'effect must be 1 to 255 bytes' END);
    j := commitq._locked_lease(effect_begin.job_id, effect_begin.lease_token);
    INSERT INTO commitq.job_effects AS e (job_id, effect, idempotency_key, begun_attempt)
    VALUES (j.id, effect_begin.effect, format('commitq-%s-%s', j.id, effect_begin.effect), j.attempt)
    ON CONFLICT (job_id, effect) DO NOTHING;
    SELECT e.done_at IS NOT NULL, e.idempotency_key, e.result
      INTO effect_begin.done, effect_begin.idempotency_key, effect_begin.result
      FROM commitq.job_effects e
     WHERE e.job_id = j.id AND e.effect = effect_begin.effect;
END
$$;

-- Record effect `effect` of a job as done, with an optional result. Doing
-- it twice keeps the first record.
CREATE FUNCTION commitq.effect_done(job_id bigint, lease_token bigint, effect text, result jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j commitq.jobs;
BEGIN
    PERFORM commitq._check(CASE WHEN effect_done.effect IS NULL THEN 'effect must not be NULL' END);
    j := commitq._locked_lease(effect_done.job_id, effect_done.lease_token);
    UPDATE commitq.job_effects e
       SET done_at = now(), done_attempt = j.attempt, result = effect_done.result
     WHERE e.job_id = j.id AND e.effect = effect_done.effect AND e.done_at IS NULL;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM commitq.job_effects e
                                  WHERE e.job_id = j.id AND e.effect = effect_done.effect) THEN
        RAISE EXCEPTION 'commitq: effect % of job % was not begun', effect_done.effect, j.id
            USING ERRCODE = 'CQ001', HINT = 'call commitq.effect_begin first';
    END IF;
END
$$;
