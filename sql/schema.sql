-- commitq schema: types, tables, indexes and settings.
--
-- Layout, and why:
--   commitq.jobs           live jobs only (scheduled, available, running). It is
--                          the hot table: every enqueue inserts here and every
--                          claim and completion touches it, so it is kept small.
--   commitq.finished_jobs  completed, discarded and cancelled jobs, moved here
--                          by the same statement that finishes them and pruned
--                          by commitq.maintain() after a retention period. It is
--                          append-mostly and never on the claim path.
--   commitq.idempotency_keys  one row per (queue, key); its primary key is the
--                          unique index that makes duplicate enqueues
--                          impossible, for live jobs and for a retention window
--                          after they finish.
--   commitq.concurrency_keys  one row per concurrency key in use: how many of
--                          its jobs run and how many may. Its row lock is
--                          what serializes claims and releases of one key.
--   commitq.concurrency_limits  limits other than 1, per key or key prefix.
--   commitq.waiting_workers  workers whose last claim found nothing: only
--                          queues with a waiting worker get a NOTIFY.
--   commitq.config         one row of settings an operator may change. The
--                          one setting of the enqueue hot path is the server
--                          setting commitq.max_args_bytes instead.

CREATE TYPE commitq.job_state AS ENUM (
    'scheduled',  -- waiting for run_at (new with a future run_at, retried, snoozed)
    'available',  -- due: claim hands these out
    'blocked',    -- due, but its concurrency key is at its limit: waits outside
                  -- the claim index until a job of that key stops running
    'running',    -- claimed under a lease
    'completed',  -- finished successfully (finished_jobs only)
    'discarded',  -- failed max_attempts times, or failed permanently (finished_jobs only)
    'cancelled',  -- cancelled by an operator, or because a job it depends on
                  -- was discarded or cancelled (finished_jobs only)
    'waiting'     -- enqueued with depends_on: waits outside the claim index
                  -- until every job it depends on has completed
                  -- (dependencies.sql). Last, so that an upgraded database
                  -- (ALTER TYPE ... ADD VALUE appends) orders it the same.
);

CREATE SEQUENCE commitq.job_id_seq AS bigint;

CREATE TABLE commitq.jobs (
    id                bigint PRIMARY KEY DEFAULT nextval('commitq.job_id_seq'),
    queue             text NOT NULL,
    kind              text NOT NULL,
    args              jsonb NOT NULL,
    state             commitq.job_state NOT NULL,
    priority          smallint NOT NULL DEFAULT 0,
    run_at            timestamptz NOT NULL DEFAULT now(),
    attempt           integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL,
    -- Fencing token: incremented by every claim, so a later claim always
    -- holds a larger token than any earlier one for the same job.
    lease_token       bigint NOT NULL DEFAULT 0,
    lease_expires_at  timestamptz,
    lease_interval    interval,
    worker            text,
    idempotency_key   text,
    concurrency_key   text,
    -- An available job that already holds a slot of its concurrency key: a
    -- running job of the key handed its slot on to this job when it stopped
    -- (see _promote_blocked), so claiming it takes no slot and no key lock.
    -- Cleared by every claim.
    slot_held         boolean NOT NULL DEFAULT false,
    cancel_requested  boolean NOT NULL DEFAULT false,
    -- Claimable only once this transaction has committed; cancelled if it
    -- aborted (see enqueue's after_xact).
    after_xact        xid8,
    -- The last few errors (commitq.config.error_history), oldest first.
    errors            jsonb NOT NULL DEFAULT '[]',
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    claimed_at        timestamptz,
    -- Dependencies (dependencies.sql), last because an upgrade adds them
    -- with ALTER TABLE: the jobs this one was enqueued to wait for (NULL:
    -- none), how many of them have not completed yet, and whether some
    -- live job waits for this one (its completion or failure then looks
    -- its dependents up; every other job skips that lookup).
    depends_on        bigint[],
    deps_pending      integer NOT NULL DEFAULT 0,
    has_dependents    boolean NOT NULL DEFAULT false
    -- Only scheduled, available, blocked, waiting and running jobs live
    -- here. No CHECK says so:
    -- the functions that write this table keep to it, and a CHECK constraint
    -- on the enum measurably slows every single-job enqueue.
) WITH (
    -- Claims and completions rewrite or delete most rows within seconds: free
    -- space on each page lets the new row version stay on the same page, and
    -- aggressive autovacuum keeps dead rows from piling up between runs.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim path: due jobs of one queue in claim order. Partial, so it holds
-- only what can be claimed now and stays small however many jobs are running
-- or waiting for a future run_at.
--
-- No deduplication, here and in jobs_blocked_idx: their keys end in the job
-- id, so no two entries are ever equal and the deduplication pass that a
-- full leaf page triggers before it splits could only scan the page and give
-- up (measured: a bulk enqueue of 100,000 jobs about 5% faster without it).
CREATE INDEX jobs_claim_idx ON commitq.jobs (queue, priority, run_at, id)
    WITH (deduplicate_items = off)
    WHERE state = 'available';

-- Jobs waiting for a slot of their key, in the order they get one. This
-- index and the next two carry the queue so that the monitoring view
-- queue_stats counts each state per queue by an index-only scan.
CREATE INDEX jobs_blocked_idx ON commitq.jobs (concurrency_key, priority, run_at, id) INCLUDE (queue)
    WITH (deduplicate_items = off)
    WHERE state = 'blocked';

-- Promotion of scheduled jobs that have come due.
CREATE INDEX jobs_scheduled_idx ON commitq.jobs (run_at) INCLUDE (queue)
    WHERE state = 'scheduled';

-- Rescue of expired leases by commitq.maintain().
CREATE INDEX jobs_lease_idx ON commitq.jobs (lease_expires_at) INCLUDE (queue)
    WHERE state = 'running';

CREATE TABLE commitq.finished_jobs (
    id                bigint PRIMARY KEY,
    queue             text NOT NULL,
    kind              text NOT NULL,
    args              jsonb NOT NULL,
    state             commitq.job_state NOT NULL,
    priority          smallint NOT NULL,
    run_at            timestamptz NOT NULL,
    attempt           integer NOT NULL,
    max_attempts      integer NOT NULL,
    lease_token       bigint NOT NULL,
    worker            text,
    idempotency_key   text,
    concurrency_key   text,
    errors            jsonb NOT NULL,
    enqueued_at       timestamptz NOT NULL,
    claimed_at        timestamptz,
    finished_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT finished_jobs_state CHECK (state IN ('completed', 'discarded', 'cancelled'))
) WITH (
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

-- Pruning by age.
CREATE INDEX finished_jobs_finished_at_idx ON commitq.finished_jobs (finished_at);

-- Lists of finished jobs by state, newest first (commitq.job_list, the
-- dashboard, `commitq jobs list --state discarded`): without it a filter
-- that matches nothing reads the whole table.
CREATE INDEX finished_jobs_state_idx ON commitq.finished_jobs (state, id);

CREATE TABLE commitq.idempotency_keys (
    queue       text NOT NULL,
    key         text NOT NULL,
    job_id      bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, key)
);

-- Why NOTIFY only when someone waits: in PostgreSQL 15 a transaction that
-- sends a notification holds a database-wide lock from just before its
-- commit until the commit is flushed, so notifying transactions commit one
-- at a time and lose group commit (measured: single-job enqueue throughput
-- halves). A worker that is busy claiming needs no wake-up; a worker whose
-- claim came back empty is registered here by commitq.claim() (when its
-- session LISTENs on the queue's channel) or commitq.start_waiting(), and
-- removed by its next successful claim. Unlogged: it is soft state, rebuilt by the next
-- empty claim after a crash, and writing it costs no WAL.
CREATE UNLOGGED TABLE commitq.waiting_workers (
    queue   text NOT NULL,
    worker  text NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, worker)
);

-- Per-key mutual exclusion. `running` counts the key's slots in use: its
-- jobs in state 'running', and its available jobs that were handed a slot
-- (slot_held); `blocked` counts those in state 'blocked'. Both change only under
-- the row's lock, in the transaction that changes such a job, so they are
-- exact (no separate counter to drift after a crash or a lost heartbeat).
-- Rows are created by the first claim of a key and pruned by maintain() once
-- the key is idle.
-- The counts are never clamped: a slot given back twice, or a blocked job
-- counted out twice, would take them below zero, and the CHECKs make that
-- an error (SQLSTATE 23514) in the transaction that does it, instead of a
-- count that reads 0 and hides the fault.
CREATE TABLE commitq.concurrency_keys (
    key          text PRIMARY KEY,
    running      integer NOT NULL DEFAULT 0 CHECK (running >= 0),
    blocked      integer NOT NULL DEFAULT 0 CHECK (blocked >= 0),
    max_running  integer NOT NULL
) WITH (
    -- Every claim and release of a keyed job rewrites its key's row: room on
    -- the page keeps those updates HOT.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- How many jobs of a key may run at once, when not 1. `pattern` is a key
-- ('account:42') or a prefix ending in '*' ('tenant:*'); an exact key wins
-- over prefixes, and a longer prefix over a shorter one. Set with
-- commitq.set_concurrency_limit().
CREATE TABLE commitq.concurrency_limits (
    pattern      text PRIMARY KEY,
    max_running  integer NOT NULL CHECK (max_running BETWEEN 1 AND 100000)
);

CREATE TABLE commitq.config (
    -- Exactly one row.
    singleton            boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Whether completed jobs are kept in finished_jobs (for finished_retention)
    -- or deleted at once. Off by default: moving every completed row to
    -- another table roughly doubles the writes of a completion. Discarded and
    -- cancelled jobs are always kept, with their errors.
    keep_completed       boolean NOT NULL DEFAULT false,
    -- How long finished jobs are kept.
    finished_retention   interval NOT NULL DEFAULT '7 days',
    -- An idempotency key stays taken for this long after its job was first
    -- enqueued, and in any case while the job is live.
    idempotency_window   interval NOT NULL DEFAULT '24 hours',
    -- Retry delay: backoff_base * 2^(attempt-1), capped at backoff_cap, then
    -- jittered to between half and all of that.
    backoff_base         interval NOT NULL DEFAULT '1 second',
    backoff_cap          interval NOT NULL DEFAULT '1 hour',
    -- How many errors a job keeps.
    error_history        integer NOT NULL DEFAULT 20 CHECK (error_history BETWEEN 1 AND 1000),
    -- How many rows one maintain() call handles per step, so it never holds
    -- many locks or runs long.
    maintain_batch       integer NOT NULL DEFAULT 10000 CHECK (maintain_batch BETWEEN 1 AND 1000000)
);
INSERT INTO commitq.config DEFAULT VALUES;

-- Operators' settings and the key table survive pg_dump of the extension.
SELECT pg_catalog.pg_extension_config_dump('commitq.config', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.finished_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.idempotency_keys', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.concurrency_keys', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.concurrency_limits', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.job_id_seq', '');

-- Pruning of idempotency keys whose window has passed.
CREATE INDEX idempotency_keys_created_at_idx ON commitq.idempotency_keys (created_at);
