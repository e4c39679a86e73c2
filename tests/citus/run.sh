#!/usr/bin/env bash
# The contract checks on a distributed commitq: a coordinator and two workers
# (dev/citus.sh), a fresh database distributed by sql/citus/*.sql, then
#   router       EXPLAIN of each hot statement is a router plan (one task)
#   spread       queues land on both workers
#   ids          job ids unique across nodes (each node its own range)
#   visibility   a job is claimable only once its enqueue commits; never
#                after a rollback
#   once         8 concurrent claimers per queue, 2 queues (one per worker):
#                every job handed out exactly once
#   idempotency  8 concurrent enqueues of one key leave one job
#   rescue       maintain() rescues an expired lease; the job runs again
#   fencing      a stale lease token is refused (CQ102) and changes nothing
#   retry        fail() with attempts left makes the job claimable again;
#                snooze and heartbeat with the current token
#   bad_input    bad queue, args and batch sizes raise CQ001
#   crash        a worker stopped with -m immediate mid-drain: the other
#                worker's queue drains; after its restart nothing is lost
#                or duplicated
# Exits non-zero if any check fails. Not part of `make test` (see
# docs/citus.md: it builds Citus and runs three servers); `make test-citus`.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
. dev/pg-env.sh
bindir=$("$PG_CONFIG" --bindir)
dev/citus.sh start || exit 1
eval "$(dev/citus.sh env)"
db=commitq_citus_test
dev/citus.sh createdb "$db" || exit 1
IFS=, read -r p_coord p_w1 p_w2 <<<"$COMMITQ_CITUS_PORTS"

q() { "$bindir/psql" -h "$COMMITQ_CITUS_SOCKDIR" -p "$p_coord" -U postgres -d "$db" -qAtX -v ON_ERROR_STOP=1 "$@"; }

failed=()
check() {
    local name=$1 got=$2 want=$3
    if [ "$got" = "$want" ]; then
        echo "ok   $name"
    else
        echo "FAIL $name: got '$got', want '$want'"
        failed+=("$name")
    fi
}

# Two queue names whose shards sit on different workers.
node_of() {
    q -c "SELECT nodeport FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid)
           WHERE s.logicalrelid = 'commitq.jobs'::regclass
             AND s.shardid = get_shard_id_for_distribution_column('commitq.jobs', '$1')"
}
qa=""; qb=""
for i in $(seq 1 40); do
    n=$(node_of "q$i")
    if [ "$n" = "$p_w1" ] && [ -z "$qa" ]; then qa=q$i; fi
    if [ "$n" = "$p_w2" ] && [ -z "$qb" ]; then qb=q$i; fi
done
check spread "$( [ -n "$qa" ] && [ -n "$qb" ] && echo both)" both

# --- router: each hot statement of claim, completion and enqueue, with the
# queue given, is planned as one task.
router() {
    local name=$1 sql=$2
    local tasks
    tasks=$(q -c "EXPLAIN (COSTS OFF) $sql" | sed -n 's/.*Task Count: \([0-9]*\).*/\1/p' | head -1)
    check "router $name" "$tasks" 1
}
router enqueue "INSERT INTO commitq.jobs (id, queue, kind, args, state, max_attempts) VALUES (1, '$qa', 'k', '{}', 'available', 3)"
router claim_pick "WITH picked AS (SELECT c.id FROM commitq.jobs c WHERE c.queue = '$qa' AND c.state = 'available' ORDER BY c.priority, c.run_at, c.id LIMIT 10 FOR UPDATE SKIP LOCKED) UPDATE commitq.jobs j SET state = 'running', lease_token = j.lease_token + 1 WHERE j.queue = '$qa' AND j.id IN (SELECT picked.id FROM picked) RETURNING j.id"
router promote "UPDATE commitq.jobs j SET state = 'available' WHERE j.queue = '$qa' AND j.id IN (SELECT s.id FROM commitq.jobs s WHERE s.state = 'scheduled' AND s.run_at <= now() AND s.queue = '$qa' ORDER BY s.run_at LIMIT 1000 FOR UPDATE SKIP LOCKED)"
router lease "SELECT * FROM commitq.jobs WHERE queue = '$qa' AND id = 5 AND lease_token = 1 FOR UPDATE"
router complete "DELETE FROM commitq.jobs j WHERE j.queue = '$qa' AND j.id = ANY ('{5,6}') AND (j.id, j.lease_token) IN (SELECT * FROM unnest('{5,6}'::bigint[], '{1,1}'::bigint[])) RETURNING j.id"
router idempotency "INSERT INTO commitq.idempotency_keys (queue, key, job_id) VALUES ('$qa', 'k', 1) ON CONFLICT (queue, key) DO NOTHING"
router claim_call "SELECT * FROM commitq.claim('$qa', 'w', 1)"
router enqueue_call "SELECT * FROM commitq.enqueue('$qa', 'k', '{}')"
q -c "DELETE FROM commitq.jobs" >/dev/null

# --- ids: a delegated enqueue takes its id on the queue's node, from that
# node's own range, so ids never collide across nodes.
ida=$(q -c "SELECT job_id FROM commitq.enqueue('$qa', 'ids', '{}')")
idb=$(q -c "SELECT job_id FROM commitq.enqueue('$qb', 'ids', '{}')")
check "ids: unique across nodes" "$( [ -n "$ida" ] && [ "$ida" != "$idb" ] && echo distinct)" distinct
check "ids: carry the node's group" "$(q -c "SELECT ($ida >> 48) = groupid FROM pg_dist_node WHERE nodeport = $p_w1")" t
q -c "DELETE FROM commitq.jobs" >/dev/null

# --- visibility
q -c "BEGIN; SELECT commitq.enqueue('$qa', 'vis', '{}'); SELECT pg_sleep(3); COMMIT;" >/dev/null &
sleep 1.5
before=$(q -c "SELECT count(*) FROM commitq.claim('$qa', 'w', 10)")
wait
after=$(q -c "SELECT count(*) FROM commitq.claim('$qa', 'w', 10)")
check "visibility before commit" "$before" 0
check "visibility after commit" "$after" 1
q -c "BEGIN; SELECT commitq.enqueue('$qa', 'vis', '{}'); ROLLBACK;" >/dev/null
check "visibility after rollback" "$(q -c "SELECT count(*) FROM commitq.claim('$qa', 'w', 10)")" 0
q -c "DELETE FROM commitq.jobs" >/dev/null

# --- once: 8 claimers per queue; each logs what it claimed in a table of
# the coordinator, then completes it with the queue (complete_in).
jobs=300
q -c "CREATE TABLE claim_log (job_id bigint, attempt int, worker text)" \
  -c "SELECT citus_add_local_table_to_metadata('claim_log')" >/dev/null
q -c "SELECT count(commitq.enqueue('$qa', 'once', jsonb_build_object('i', i))) FROM generate_series(1, $jobs) i" \
  -c "SELECT count(commitq.enqueue('$qb', 'once', jsonb_build_object('i', i))) FROM generate_series(1, $jobs) i" >/dev/null
drain() {
    local queue=$1 worker=$2
    q -c "DO \$\$
DECLARE r record; n int;
BEGIN
  LOOP
    n := 0;
    FOR r IN SELECT * FROM commitq.claim('$queue', '$worker', 5) LOOP
      INSERT INTO claim_log VALUES (r.job_id, r.attempt, '$worker');
      PERFORM commitq.complete_in('$queue', r.job_id, r.lease_token);
      n := n + 1;
    END LOOP;
    COMMIT;
    EXIT WHEN n = 0;
  END LOOP;
END \$\$" >/dev/null
}
# A claimer whose job was also handed to another sees its completion
# refused (stale lease) and stops with an error: counted here.
pids=()
for w in 1 2 3 4 5 6 7 8; do
    drain "$qa" "a$w" & pids+=($!)
    drain "$qb" "b$w" & pids+=($!)
done
bad=0
for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
check "once: no claimer failed" "$bad" 0
check "once: claims" "$(q -c "SELECT count(*) FROM claim_log")" $((2 * jobs))
check "once: distinct" "$(q -c "SELECT count(DISTINCT job_id) FROM claim_log")" $((2 * jobs))
check "once: left" "$(q -c "SELECT count(*) FROM commitq.jobs")" 0
check "once: both queues used 8 claimers" "$(q -c "SELECT count(DISTINCT worker) FROM claim_log")" 16

# --- once, delegated: the same with top-level calls, which Citus delegates
# to the queue's node (the loop above runs claim inside a DO block, where
# Citus routes each statement from the coordinator instead). 8 claimers
# each make 10 calls of claim(..., 5) for 300 jobs; leases of 5 minutes, so
# nothing is handed out twice unless two claims got the same job.
q -c "SELECT count(commitq.enqueue('$qa', 'once', jsonb_build_object('i', i))) FROM generate_series(1, $jobs) i" >/dev/null
tmp=$(mktemp -d)
for w in 1 2 3 4 5 6 7 8; do
    for _ in $(seq 1 10); do echo "SELECT job_id FROM commitq.claim('$qa', 'd$w', 5);"; done \
        | q -f - >"$tmp/claims.$w" &
done
wait
check "once delegated: claims" "$(cat "$tmp"/claims.* | grep -c .)" "$jobs"
check "once delegated: distinct" "$(cat "$tmp"/claims.* | sort -u | grep -c .)" "$jobs"
rm -rf "$tmp"
q -c "DELETE FROM commitq.jobs" >/dev/null

# --- idempotency: 8 concurrent enqueues of one key.
for i in 1 2 3 4 5 6 7 8; do
    q -c "BEGIN; SELECT commitq.enqueue('$qb', 'idem', '{}', idempotency_key => 'order-1'); SELECT pg_sleep(0.5); COMMIT;" >/dev/null &
done
wait
check "idempotency: one job" "$(q -c "SELECT count(*) FROM commitq.jobs WHERE idempotency_key = 'order-1'")" 1
q -c "DELETE FROM commitq.jobs" >/dev/null

# --- fencing, rescue and retry
id=$(q -c "SELECT job_id FROM commitq.enqueue('$qa', 'fence', '{}', max_attempts => 4)")
q -c "SELECT lease_token FROM commitq.claim('$qa', 'w1', 1, '1 second')" >/dev/null
sleep 1.5
# maintain() rescues the expired lease (the coordinator's engine may beat
# this call to it: either way the job is scheduled again, its error kept).
q -c "SELECT commitq.maintain()" >/dev/null
check "rescue: expired lease rescued" \
    "$(q -c "SELECT state || ':' || (errors->0->>'error' LIKE 'lease expired%') FROM commitq.jobs WHERE queue = '$qa' AND id = $id")" \
    "scheduled:true"
sleep 1.2  # the first backoff is at most backoff_base (1 s)
tok=$(q -c "SELECT lease_token FROM commitq.claim('$qa', 'w2', 1)")
check "rescue: claimable again with token 2" "$tok" 2
err=$(q -c "SELECT commitq.complete($id, 1)" 2>&1 | grep -o 'stale lease' | head -1)
check "fencing: stale token refused (id only)" "$err" "stale lease"
err=$(q -c "SELECT commitq.complete_in('$qa', $id, 1)" 2>&1 | grep -o 'stale lease' | head -1)
check "fencing: stale token refused (complete_in)" "$err" "stale lease"
err=$(q -c "SELECT commitq.heartbeat($id, 1)" 2>&1 | grep -o 'stale lease' | head -1)
check "fencing: stale heartbeat refused" "$err" "stale lease"
check "fencing: job untouched" "$(q -c "SELECT state || ':' || lease_token FROM commitq.jobs WHERE queue = '$qa' AND id = $id")" "running:2"
check "heartbeat: current token extends" "$(q -c "SELECT lease_expires_at > now() + interval '1 hour' FROM commitq.heartbeat_in('$qa', $id, 2, '2 hours')")" t
check "snooze: back without spending an attempt" "$(q -c "SELECT commitq.snooze($id, 2, '0s') IS NOT NULL")" t
check "snooze: next claim is attempt 2" "$(q -c "SELECT attempt || ':' || lease_token FROM commitq.claim('$qa', 'w3', 1)")" "2:3"
check "retry: fail with attempts left" "$(q -c "SELECT state FROM commitq.fail_in('$qa', $id, 3, 'boom', retry_in => '0s')")" available
check "retry: claimable again" "$(q -c "SELECT attempt FROM commitq.claim('$qa', 'w3', 1)")" 3
check "retry: discarded when told" "$(q -c "SELECT state FROM commitq.fail($id, 4, 'boom', discard => true)")" discarded
check "retry: in finished_jobs" "$(q -c "SELECT state FROM commitq.finished_jobs WHERE queue = '$qa' AND id = $id")" discarded
err=$(q -c "SELECT commitq.complete($id, 4)" 2>&1 | grep -o 'already discarded' | head -1)
check "fencing: finished job refused" "$err" "already discarded"

# --- bad input: CQ001, nothing enqueued.
sqlstate() { q -v VERBOSITY=sqlstate -c "$1" 2>&1 | grep -o 'CQ[0-9]*\|0A000' | head -1; }
check "bad input: empty queue" "$(sqlstate "SELECT commitq.enqueue('', 'k', '{}')")" CQ001
check "bad input: args not an object" "$(sqlstate "SELECT commitq.enqueue('$qa', 'k', '[1]')")" CQ001
check "bad input: NULL kind" "$(sqlstate "SELECT commitq.enqueue('$qa', NULL, '{}')")" CQ001
check "bad input: max_jobs 0" "$(sqlstate "SELECT commitq.claim('$qa', 'w', 0)")" CQ001
check "bad input: concurrency key refused" "$(sqlstate "SELECT commitq.enqueue('$qa', 'k', '{}', concurrency_key => 'a')")" 0A000
check "bad input: nothing enqueued" "$(q -c "SELECT count(*) FROM commitq.jobs")" 0

# --- crash: worker 2 (queue qb) stopped at once mid-drain.
q -c "TRUNCATE claim_log" >/dev/null
jobs=2000
q -c "SELECT count(commitq.enqueue('$qa', 'crash', '{}')) FROM generate_series(1, $jobs)" \
  -c "SELECT count(commitq.enqueue('$qb', 'crash', '{}')) FROM generate_series(1, $jobs)" >/dev/null
drain "$qa" ca1 & pa=$!
drain "$qb" cb1 2>/dev/null & pb=$!
sleep 1
dev/citus.sh crash w2
wait $pa
check "crash: other worker's queue drained" "$(q -c "SELECT count(*) FROM commitq.jobs WHERE queue = '$qa'")" 0
wait $pb
dev/citus.sh restart w2
# Each drained batch (claim, log, complete) is one transaction: the batch
# the crash cut off rolled back whole, so its jobs are available again.
check "crash: nothing left running" "$(q -c "SELECT count(*) FROM commitq.jobs WHERE state = 'running'")" 0
drain "$qb" cb2
check "crash: crashed queue drained after restart" "$(q -c "SELECT count(*) FROM commitq.jobs WHERE queue = '$qb'")" 0
check "crash: every job completed" "$(q -c "SELECT count(DISTINCT job_id) FROM claim_log")" $((2 * jobs))
check "crash: no job completed twice" "$(q -c "SELECT count(*) - count(DISTINCT job_id) FROM claim_log")" 0

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "citus: ${#failed[@]} checks failed: ${failed[*]} (nodes left running: dev/citus.sh stop)"
    exit 1
fi
echo "citus: all checks passed"
[ "${COMMITQ_CITUS_KEEP:-0}" = 1 ] || dev/citus.sh stop
