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
rm -rf "$out" && mkdir -p "$out"

"$root/dev/cluster.sh" createdb commitq_isolation
if [ $# -gt 0 ]; then specs=("$@"); else
    specs=(); for f in "$here"/specs/*.spec; do specs+=("$(basename "$f" .spec)"); done
fi
if ! "$regress" --inputdir="$here" --outputdir="$out" --host="$PGHOST" --port="$PGPORT" \
        --user=postgres --use-existing --dbname=commitq_isolation "${specs[@]}"; then
    echo "isolation: differences in $out/regression.diffs:" >&2
    head -200 "$out/regression.diffs" >&2 || true
    exit 1
fi
