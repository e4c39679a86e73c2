#!/usr/bin/env bash
# Builds pg_commitq from this checkout (release) and installs it into the
# system's PostgreSQL (PG_CONFIG, see dev/pg-env.sh), which the project-local cluster runs. Quiet unless
# it fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/dev/pg-env.sh"
mkdir -p "$root/target"
log=$root/target/install-extension.log
sudo=()
[ "$(id -u)" = 0 ] || sudo=(--sudo)
if ! (cd "$root/extension" && cargo pgrx install --release --pg-config "$PG_CONFIG" "${sudo[@]}") >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing the extension failed (log: $log)" >&2
    exit 1
fi
