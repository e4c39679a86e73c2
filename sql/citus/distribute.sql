-- commitq on Citus: turns an installed commitq into a distributed one.
--
-- Run once, as a superuser, on the Citus coordinator of a database where
-- `CREATE EXTENSION citus`, the workers (citus_add_node) and then
-- `CREATE EXTENSION pg_commitq` are done, while no worker is running:
--
--   for each node: psql -v ON_ERROR_STOP=1 -d app -f sql/citus/routed.sql
--   psql -v ON_ERROR_STOP=1 -d app -f sql/citus/distribute.sql   # coordinator
--
-- First sql/citus/routed.sql on every node (see there), then this. It is
-- a pair of scripts of their own, not part of the extension, so a server that
-- never distributes commitq has not one object, grant or line of behaviour
-- more (the upgrade test compares catalogs, and single-node users pay
-- nothing). What it changes is in docs/citus.md; in short:
--
--   per queue, co-located (one shard holds everything of a queue):
--     jobs, finished_jobs, idempotency_keys, waiting_workers,
--     queue_counters, paused_queues
--   reference tables (a copy on every node, written with 2PC):
--     config, concurrency_limits, concurrency_keys, named_leases
--   coordinator only: cron_schedules, schedule_ticks (cron is evaluated
--     there), job_effects
--
-- and it replaces the bodies of the functions on the claim, completion and
-- enqueue paths by versions whose every statement names the queue, so Citus
-- routes each one to a single shard: `FOR UPDATE` and `SKIP LOCKED` work
-- only in such router queries. claim and enqueue are delegated to the node
-- of the queue's shard (create_distributed_function, queue as distribution
-- argument), so a claim costs one hop from the coordinator.
\set ON_ERROR_STOP on

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'commitq: distribute needs the citus extension in this database';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'commitq.jobs'::regclass) THEN
        RAISE EXCEPTION 'commitq: already distributed';
    END IF;
END
$$;

-- Citus needs every unique constraint to hold the distribution column. An id
-- is unique on its own (one sequence; on workers Citus hands each node its
-- own range of it), so (id, queue) is as strict as (id).
ALTER TABLE commitq.jobs DROP CONSTRAINT jobs_pkey,
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id, queue);
ALTER TABLE commitq.finished_jobs DROP CONSTRAINT finished_jobs_pkey,
    ADD CONSTRAINT finished_jobs_pkey PRIMARY KEY (id, queue);

SET client_min_messages = warning;
SELECT create_distributed_table('commitq.jobs', 'queue');
SELECT create_distributed_table('commitq.finished_jobs', 'queue', colocate_with => 'commitq.jobs');
SELECT create_distributed_table('commitq.idempotency_keys', 'queue', colocate_with => 'commitq.jobs');
SELECT create_distributed_table('commitq.waiting_workers', 'queue', colocate_with => 'commitq.jobs');
SELECT create_distributed_table('commitq.queue_counters', 'queue', colocate_with => 'commitq.jobs');
SELECT create_distributed_table('commitq.paused_queues', 'queue', colocate_with => 'commitq.jobs');
SELECT create_reference_table('commitq.config');
SELECT create_reference_table('commitq.concurrency_limits');
SELECT create_reference_table('commitq.concurrency_keys');
SELECT create_reference_table('commitq.named_leases');
RESET client_min_messages;

-- Delegation: a call from the coordinator runs on the node that holds the
-- queue's shard, where every statement of it is a local router query.
SET client_min_messages = warning;
SELECT create_distributed_function('commitq.claim(text,text,integer,interval)', 'queue',
                                   colocate_with := 'commitq.jobs');
SELECT create_distributed_function(
    'commitq.enqueue(text,text,jsonb,integer,timestamptz,integer,text,text,xid8)', 'queue',
    colocate_with := 'commitq.jobs');
RESET client_min_messages;
