-- The waiting claim: claim, and when the queue is empty wait in the same
-- statement for a commit that makes one of its jobs available. For workers
-- in any stack, through PgBouncer's transaction pooling too (no LISTEN).
--
--   CALL commitq.claim_wait('mail', 'worker-1', 10, '5 minutes', '30 seconds');
--
-- returns one row, jobs: a JSON array of the claimed jobs (the columns of
-- commitq.claimed_job, as commitq.claim returns them), '[]' when the wait
-- ended with nothing. It returns as soon as it claimed something.
--
-- A procedure in C (extension/src/claim_wait.rs), not a claim(..., wait)
-- function: a SELECT that waits keeps its snapshot, and so holds back VACUUM
-- of the whole database, for as long as it waits. The procedure commits after
-- each empty claim and then waits holding no snapshot (backend_xmin NULL in
-- pg_stat_activity); each claim runs in a transaction of its own, at any
-- default_transaction_isolation.
--
-- - Woken at commit through shared memory (extension/src/wait_slots.rs) when
--   shared_preload_libraries loads pg_commitq; without it, it claims again
--   every 100 ms (commitq.wait_supported() says which).
-- - Must be a CALL of its own: inside a transaction block (BEGIN ... CALL) or
--   from a function it raises SQLSTATE 2D000, since it cannot commit there.
-- - Cancel (pg_cancel_backend) and statement_timeout end it with an error,
--   like any statement; nothing stays registered.
-- - SECURITY INVOKER and no SET search_path: a procedure with either cannot
--   commit. It runs one statement, commitq.claim (SECURITY DEFINER, so the
--   caller needs the worker role), with every name schema-qualified.
CREATE PROCEDURE commitq.claim_wait(
    queue text,
    worker text,
    max_jobs integer DEFAULT 1,
    lease interval DEFAULT '5 minutes',
    wait interval DEFAULT '30 seconds',
    INOUT jobs jsonb DEFAULT NULL)
LANGUAGE c
AS 'MODULE_PATHNAME', 'commitq_claim_wait';
