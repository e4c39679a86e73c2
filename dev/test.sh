#!/usr/bin/env bash
# Runs every test layer of commitq and exits non-zero if any failed:
#   lint         cargo fmt --check, cargo clippy -D warnings
#   pg_test      #[pg_test] functions inside one backend (cargo pgrx test)
#   integration  tests/ crate: several real connections to the project cluster;
#                cli/ crate: the commitq binary, its dashboard over HTTP and
#                in headless chromium (chromedriver)
#   isolation    pg_isolation_regress specs for interleavings
#   stacks       the Python (psycopg 3) and Node (pg) examples in examples/,
#                tested with pytest and node --test against the project cluster
#   sql_only     commitq loaded from `make sql-only`'s file (no library): the
#                same answers and catalog as the extension, then contract,
#                integration and isolation tests on it
#   upgrade      each frozen release (extension/releases) filled with jobs and
#                upgraded by ALTER EXTENSION: jobs survive, the catalog equals a
#                fresh install, contract tests pass; the previous client release
#                against this extension
#   package      the Debian package (`make package`) installed with apt on the
#                system server, then CREATE EXTENSION and the SQL quick start
#   faults       the fault-injection suite, short mode (worker processes
#                killed, stopped, disconnected; PostgreSQL crashed), on a
#                cluster of its own
# Every layer runs even when an earlier one fails, so one run shows them all.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. dev/pg-env.sh

passed=()
failed=()
layer() {
    local name=$1; shift
    printf '\n\033[1m== %s ==\033[0m\n' "$name"
    local t0=$SECONDS
    if "$@"; then
        passed+=("$name"); echo "-- $name passed ($((SECONDS - t0)) s)"
    else
        failed+=("$name"); echo "-- $name FAILED ($((SECONDS - t0)) s)"
    fi
}

lint() {
    cargo fmt --all --check && cargo clippy --workspace --all-targets --quiet -- -D warnings
}

pg_test() {
    # pgrx runs its own throwaway server; as root it must run it as postgres,
    # with a data folder whose parent that user can write.
    local runas=()
    if [ "$(id -u)" = 0 ]; then
        local dir=$root/target/pgrx-test
        mkdir -p "$dir" && chown postgres "$dir"
        runas=(--runas postgres --pgdata "$dir/data")
    fi
    (cd extension && cargo pgrx test "$PGRX_PG" "${runas[@]}")
}

install_and_start() {
    # The extension built from this checkout, into the server the cluster runs.
    dev/install-extension.sh && dev/cluster.sh start
}

integration() {
    eval "$(dev/cluster.sh env)"
    cargo test -p commitq -p commitq-tests -p commitq-cli
}

isolation() {
    tests/isolation/run.sh
}

# A layer whose script is missing fails: a renamed script must not turn a
# layer into a silent pass.
script_layer() {
    local script=$1
    [ -x "$script" ] || { echo "missing $script" >&2; return 1; }
    "$script"
}

faults() {
    cargo run --quiet -p commitq-tests --bin faults -- --short
}

layer lint lint
layer pg_test pg_test
if install_and_start; then
    layer integration integration
    layer isolation isolation
    layer stacks script_layer tests/stacks/run.sh
    layer sql_only script_layer tests/sql_only/run.sh
    layer upgrade script_layer tests/upgrade/run.sh
    layer package script_layer tests/package/run.sh
    layer faults faults
else
    failed+=("install")
fi

echo
echo "layers passed: ${passed[*]:-none}"
echo "layers failed: ${failed[*]:-none}"
echo "layers: ${#passed[@]} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
