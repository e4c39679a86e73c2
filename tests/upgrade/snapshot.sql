-- Every row commitq keeps, in a stable order: run before and after ALTER
-- EXTENSION ... UPDATE, the two outputs must be identical (an upgrade must not
-- lose or change a job, a key, a lease or an effect).
\set ON_ERROR_STOP 1
-- Columns added since 0.1.0 are left out (the update adds them with their
-- defaults: no dependencies).
SELECT 'jobs', to_jsonb(j) - 'depends_on' - 'deps_pending' - 'has_dependents' FROM commitq.jobs j ORDER BY j.id;
SELECT 'finished_jobs', to_jsonb(f) FROM commitq.finished_jobs f ORDER BY f.id;
SELECT 'idempotency_keys', to_jsonb(k) FROM commitq.idempotency_keys k ORDER BY k.queue, k.key;
SELECT 'concurrency_keys', to_jsonb(k) FROM commitq.concurrency_keys k ORDER BY k.key;
SELECT 'concurrency_limits', to_jsonb(l) FROM commitq.concurrency_limits l ORDER BY l.pattern;
SELECT 'named_leases', to_jsonb(l) FROM commitq.named_leases l ORDER BY l.name;
SELECT 'job_effects', to_jsonb(e) FROM commitq.job_effects e ORDER BY e.job_id, e.effect;
SELECT 'config', to_jsonb(c) FROM commitq.config c;
SELECT 'job_id_seq', last_value FROM commitq.job_id_seq;
SELECT 'lease_token_seq', last_value FROM commitq.lease_token_seq;
