#!/usr/bin/env bash
# Per-node overhead of commitq on Citus (docs/citus.md, Capacity model),
# measured with pgbench on the dev/citus.sh cluster. Each figure is the
# median of ROUNDS runs of SECONDS seconds with CLIENTS clients; compare
# ratios within one run only (the machine is shared and noisy).
#
#   tests/citus/bench.sh            # ROUNDS=3 SECONDS=8 CLIENTS=4
#
# What is compared, for one queue whose shard is on worker 1:
#   enqueue      via the coordinator, delegated (autocommit call)
#                via the coordinator, statement by statement (the same call
#                inside BEGIN ... COMMIT, which Citus does not delegate)
#                directly on worker 1 (Citus runs it locally)
#                single node: a plain database on the coordinator's server
#   claim+complete (claim 1, complete_in), the same four ways
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
. dev/pg-env.sh
bindir=$("$PG_CONFIG" --bindir)
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-8}
clients=${CLIENTS:-4}
dev/citus.sh start >/dev/null 2>&1 || exit 1
eval "$(dev/citus.sh env)"
IFS=, read -r p_coord p_w1 _ <<<"$COMMITQ_CITUS_PORTS"
dev/citus.sh createdb commitq_citus_bench || exit 1
# The single-node baseline: a plain database (no citus extension in it) on
# the coordinator's server.
"$bindir/psql" -h "$COMMITQ_CITUS_SOCKDIR" -p "$p_coord" -U postgres -qAtX -d postgres \
    -c "DROP DATABASE IF EXISTS commitq_single_bench WITH (FORCE)" -c "CREATE DATABASE commitq_single_bench"
"$bindir/psql" -h "$COMMITQ_CITUS_SOCKDIR" -p "$p_coord" -U postgres -qAtX -d commitq_single_bench \
    -c "CREATE EXTENSION pg_commitq" || exit 1

q() { "$bindir/psql" -h "$COMMITQ_CITUS_SOCKDIR" -p "$1" -U postgres -d "$2" -qAtX -v ON_ERROR_STOP=1 -c "$3"; }
queue=""
for i in $(seq 1 40); do
    n=$(q "$p_coord" commitq_citus_bench "SELECT nodeport FROM pg_dist_shard_placement
        WHERE shardid = get_shard_id_for_distribution_column('commitq.jobs', 'b$i')")
    if [ "$n" = "$p_w1" ]; then queue=b$i; break; fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/enqueue.sql" <<EOF
SELECT commitq.enqueue('$queue', 'bench', '{}');
EOF
cat >"$tmp/enqueue_tx.sql" <<EOF
BEGIN;
SELECT commitq.enqueue('$queue', 'bench', '{}');
COMMIT;
EOF
cat >"$tmp/drain.sql" <<EOF
SELECT job_id, lease_token FROM commitq.claim('$queue', 'bench', 1) \gset
SELECT commitq.complete_in('$queue', :job_id, :lease_token);
EOF
cat >"$tmp/drain_tx.sql" <<EOF
BEGIN;
SELECT job_id, lease_token FROM commitq.claim('$queue', 'bench', 1) \gset
SELECT commitq.complete_in('$queue', :job_id, :lease_token);
COMMIT;
EOF
cat >"$tmp/drain_single.sql" <<EOF
SELECT job_id, lease_token FROM commitq.claim('$queue', 'bench', 1) \gset
SELECT commitq.complete(:job_id, :lease_token);
EOF

tps() {
    local port=$1 db=$2 script=$3
    "$bindir/pgbench" -h "$COMMITQ_CITUS_SOCKDIR" -p "$port" -U postgres -n -c "$clients" -j 2 \
        -T "$secs" -f "$script" "$db" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | cut -d. -f1
}
median() { sort -n | sed -n "$(( (rounds + 1) / 2 ))p"; }
fill() {
    local port=$1 db=$2
    q "$port" "$db" "INSERT INTO commitq.jobs (queue, kind, args, state, max_attempts)
        SELECT '$queue', 'bench', '{}', 'available', 25 FROM generate_series(1, 60000)" >/dev/null
}
row() {
    local name=$1 port=$2 db=$3 script=$4 prefill=${5:-}
    local runs=()
    for _ in $(seq 1 "$rounds"); do
        q "$p_coord" "$db" "DELETE FROM commitq.jobs" >/dev/null
        [ -n "$prefill" ] && fill "$p_coord" "$db"
        runs+=("$(tps "$port" "$db" "$script")")
    done
    printf '| %s | %s | %s |\n' "$name" "$(printf '%s\n' "${runs[@]}" | median)" "${runs[*]}"
}

echo "queue $queue on worker 1 (port $p_w1); $clients clients, $secs s, median of $rounds"
echo
echo "| path | per second (median) | runs |"
echo "|---|---|---|"
row "enqueue, single node" "$p_coord" commitq_single_bench "$tmp/enqueue.sql"
row "enqueue, coordinator, delegated" "$p_coord" commitq_citus_bench "$tmp/enqueue.sql"
row "enqueue, coordinator, statement by statement" "$p_coord" commitq_citus_bench "$tmp/enqueue_tx.sql"
row "enqueue, directly on the worker" "$p_w1" commitq_citus_bench "$tmp/enqueue.sql"
row "claim 1 + complete, single node" "$p_coord" commitq_single_bench "$tmp/drain_single.sql" fill
row "claim 1 + complete_in, coordinator (claim delegated)" "$p_coord" commitq_citus_bench "$tmp/drain.sql" fill
row "claim 1 + complete_in, coordinator, statement by statement" "$p_coord" commitq_citus_bench "$tmp/drain_tx.sql" fill
row "claim 1 + complete_in, directly on the worker" "$p_w1" commitq_citus_bench "$tmp/drain.sql" fill
