#!/usr/bin/env bash
# Runs the isolation specs (specs/NAME.spec, expected/NAME.out) with
# PostgreSQL's pg_isolation_regress against the project-local cluster, in a
# fresh database with pg_commitq installed. Extra arguments name specs to run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
eval "$("$root/dev/cluster.sh" env)"
. "$root/dev/pg-env.sh"
regress=$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress
out=$root/target/isolation
db=commitq_isolation
if [ "${COMMITQ_TEST_INSTALL:-}" = sql-only ]; then
    # commitq loaded from target/sql-only/commitq.sql instead of CREATE
    # EXTENSION (tests/sql_only/run.sh), as COMMITQ_TEST_INSTALL_AS if set.
    out=$root/target/isolation-sqlonly db=commitq_isolation_sqlonly
fi
rm -rf "$out" && mkdir -p "$out"

if [ "${COMMITQ_TEST_INSTALL:-}" = sql-only ]; then
    psql=("$("$PG_CONFIG" --bindir)/psql" -qX -v ON_ERROR_STOP=1)
    PGOPTIONS="-c client_min_messages=warning" "${psql[@]}" -d postgres \
        -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
        -c "CREATE DATABASE $db OWNER ${COMMITQ_TEST_INSTALL_AS:-postgres}"
    "${psql[@]}" -U "${COMMITQ_TEST_INSTALL_AS:-postgres}" -d "$db" -f "$root/target/sql-only/commitq.sql"
else
    "$root/dev/cluster.sh" createdb "$db"
    # The specs call maintain() at chosen steps: the engine (preloaded in the
    # project cluster) must not run it between them.
    "$("$PG_CONFIG" --bindir)/psql" -qX -v ON_ERROR_STOP=1 -d postgres \
        -c "ALTER DATABASE $db SET commitq.engine_enabled = off"
fi
if [ $# -gt 0 ]; then specs=("$@"); else
    specs=(); for f in "$here"/specs/*.spec; do specs+=("$(basename "$f" .spec)"); done
fi
if ! "$regress" --inputdir="$here" --outputdir="$out" --host="$PGHOST" --port="$PGPORT" \
        --user=postgres --use-existing --dbname="$db" "${specs[@]}"; then
    echo "isolation: differences in $out/regression.diffs:" >&2
    head -200 "$out/regression.diffs" >&2 || true
    exit 1
fi
