#!/usr/bin/env bash
# The SQL-only install (make sql-only, docs/managed-postgres.md), tested as
# the extension is: generate target/sql-only/commitq.sql, load it as a role
# that is not a superuser (CREATEROLE, as a managed service's admin user),
# then
#   1. equivalence: every check answers as the library's on a table of
#      cases and on every code point, and commitq's catalog (functions,
#      signatures, grants, tables, indexes) is the extension's;
#   2. the contract and integration tests, on databases installed from the
#      file (COMMITQ_TEST_INSTALL=sql-only, see tests/src/sql_only.rs);
#   3. the isolation specs, likewise.
# Uses the project cluster, already running with the extension installed
# (the reference the equivalence step compares with).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
eval "$(dev/cluster.sh env)"
. dev/pg-env.sh
bindir=$("$PG_CONFIG" --bindir)
psql=("$bindir/psql" -qX -v ON_ERROR_STOP=1)
out=$root/target/sql-only-test
rm -rf "$out" && mkdir -p "$out"
owner=commitq_sql_only_owner

step() { printf '\n-- sql-only: %s\n' "$*"; }

step "generate"
dev/sql-only.sh

# The owner: what a managed service gives its admin user, and no more.
"${psql[@]}" -d postgres -c "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$owner') THEN
        CREATE ROLE $owner LOGIN CREATEROLE NOSUPERUSER;
    END IF; END \$\$"

fresh_db() { # name: an empty database owned by $owner
    PGOPTIONS="-c client_min_messages=warning" "${psql[@]}" -d postgres \
        -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\" OWNER $owner"
}

step "equivalence with the extension"
fresh_db commitq_sqlonly_ref
# The extension at the version of these sources (the cluster's
# pg_commitq, installed from this checkout, has older releases beside it).
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
"${psql[@]}" -d commitq_sqlonly_ref -c "CREATE EXTENSION pg_commitq VERSION '$version'"
fresh_db commitq_sqlonly_eq
"${psql[@]}" -U "$owner" -d commitq_sqlonly_eq -f target/sql-only/commitq.sql
for db in commitq_sqlonly_ref commitq_sqlonly_eq; do
    "${psql[@]}" -d "$db" -f "$here/catalog.sql" > "$out/catalog.$db"
    # The one message that differs: where the args limit is set.
    "${psql[@]}" -d "$db" -f "$here/equivalence.sql" \
        | sed 's/(setting commitq.max_args_bytes)/(commitq.config.max_args_bytes)/' > "$out/checks.$db"
done
failed=0
for what in catalog checks; do
    if ! diff -u "$out/$what.commitq_sqlonly_ref" "$out/$what.commitq_sqlonly_eq" > "$out/$what.diff"; then
        echo "sql-only: $what differs from the extension's (- extension, + sql-only):" >&2
        head -60 "$out/$what.diff" >&2
        failed=1
    fi
done
[ "$failed" = 0 ] || exit 1
echo "same catalog ($(wc -l < "$out/catalog.commitq_sqlonly_eq") objects) and same answers" \
     "($(wc -l < "$out/checks.commitq_sqlonly_eq") checks) as the extension"

step "contract and integration tests"
# Test files that need the extension itself are left out:
#   lease_crashes, race_helper: the fault suite's workers on a cluster of
#     their own, not the install; covered by the tests below.
#   schedule_restart: cron schedules are unavailable in this mode (no cron
#     parser; dev/sql-only.sh, UNAVAILABLE), and it runs a cluster of its
#     own. schedule runs, and skips all but the test of that error.
# and single tests:
#   every_security_definer_function_pins_its_search_path: it expects
#     commitq.enqueue in C; here catalog.sql checks every function's
#     SET clause against the extension's, and this mode's enqueue pins it.
# A role of one test that owns objects in a database stops that test from
# dropping the role in another: search_path.rs's cq_m_mallory owns objects in
# the extension layer's t_sec_hostile, and would in this layer's
# t_sec_hostile_sqlonly. So that database goes first, and this layer's
# databases go when it ends.
drop_test_dbs() {
    "${psql[@]}" -Atd postgres -c "SELECT datname FROM pg_database WHERE datname LIKE '%\_sqlonly'" |
        while read -r db; do "${psql[@]}" -d postgres -c "DROP DATABASE \"$db\" WITH (FORCE)"; done
}
trap drop_test_dbs EXIT
"${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS t_sec_hostile WITH (FORCE)"
export COMMITQ_TEST_INSTALL=sql-only COMMITQ_TEST_INSTALL_AS=$owner
tests=(foundation enqueue claim finish bad_input argument_rules job_lease wakeup retry
       concurrency_keys concurrency_key_slots maintain named_lease effect_ledger operator
       security search_path worker_pool pool_shutdown schedule)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo test --quiet -p commitq-tests "${args[@]}" -- \
    --skip every_security_definer_function_pins_its_search_path

step "isolation specs"
tests/isolation/run.sh
