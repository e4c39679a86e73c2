#!/usr/bin/env bash
# Builds pg_commitq from this checkout (release) and installs it into the
# system's PostgreSQL (PG_CONFIG, see dev/pg-env.sh), which the project-local cluster runs. Quiet unless
# it fails. Beside the working version's generated script and the upgrade
# scripts (extension/sql/), it installs the frozen install scripts of released
# versions (extension/releases/), so CREATE EXTENSION pg_commitq VERSION
# '0.1.0' works and such a database can be upgraded with ALTER EXTENSION.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/dev/pg-env.sh"
mkdir -p "$root/target"
log=$root/target/install-extension.log
sudo=()
[ "$(id -u)" = 0 ] || sudo=(--sudo)
# cargo pgrx install overwrites the library in place, and a running server
# that has it mapped (the engine launcher, every backend) then crashes with
# SIGSEGV. Moving a copy over it first leaves the running processes their own
# file and gives the overwrite a new one.
lib="$("$PG_CONFIG" --pkglibdir)/pg_commitq.so"
if [ -f "$lib" ]; then
    as_root_cp=()
    [ "$(id -u)" = 0 ] || as_root_cp=(sudo)
    "${as_root_cp[@]}" cp -p "$lib" "$lib.new" && "${as_root_cp[@]}" mv -f "$lib.new" "$lib"
fi
if ! (cd "$root/extension" && cargo pgrx install --release --pg-config "$PG_CONFIG" "${sudo[@]}") >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing the extension failed (log: $log)" >&2
    exit 1
fi

# The released install scripts, unchanged (their recorded hashes must match).
if ! (cd "$root/extension/releases" && sha256sum --quiet -c SHA256SUMS) >&2; then
    echo "a released install script in extension/releases differs from its recorded hash" >&2
    exit 1
fi
extdir="$("$PG_CONFIG" --sharedir)/extension"
as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo)
"${as_root[@]}" install -m 644 "$root"/extension/releases/pg_commitq--*.sql "$extdir/"
